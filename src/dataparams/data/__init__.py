"""Datasets that yield sample indices, loaders for the paper's on-disk formats, splits.

* :mod:`~dataparams.data.base` -- :class:`Split`, what every format loader returns;
* :mod:`~dataparams.data.idx` -- MNIST / Fashion-MNIST IDX files;
* :mod:`~dataparams.data.cifar` -- CIFAR-10/100 python pickles, CIFAR-10N/100N label files;
* :mod:`~dataparams.data.folders` -- ImageNet class folders, WebVision lists, CSV/TSV file lists;
* :mod:`~dataparams.data.indexed` -- :class:`WithIndex`, any map-style dataset + its index;
* :mod:`~dataparams.data.user` -- the user's own data (lists, class folders, feature arrays), checked
  and measured; :mod:`~dataparams.data.tables` -- the same from arrays, torch Datasets, DataFrames,
  parquet files and Hugging Face datasets (:mod:`~dataparams.data.arrays` reads the first two);
* what those two share: :mod:`~dataparams.data.userdata` (:class:`UserData`, :class:`UserDataError`),
  :mod:`~dataparams.data.labels` (labels into class indices), :mod:`~dataparams.data.images`
  (measuring and decoding a set of images), :mod:`~dataparams.data.decode` (one image file),
  :mod:`~dataparams.data.memory_images` (images held in memory, not as files),
  :mod:`~dataparams.data.features` (feature vectors), :mod:`~dataparams.data.fingerprint` (what
  identifies the data);
* :mod:`~dataparams.data.memory` -- :class:`InMemoryLoader` (tensors and augmentation on device),
  :class:`FeatureLoader`;
* :mod:`~dataparams.data.prepare` -- the labels of a run (subset, noise, splits, label files);
* :mod:`~dataparams.data.loaders` -- the loaders of a run;
* :mod:`~dataparams.data.splits` -- seeded held-out splits;
* :mod:`~dataparams.data.registry` -- datasets by name.
"""

from dataparams.data.base import DatasetNotFoundError, Split
from dataparams.data.cifar import load_cifar10, load_cifar100, load_cifar_n_labels
from dataparams.data.folders import (
    ImageFileDataset,
    imagenet_transforms,
    load_filelist,
    load_image_folder,
    load_imagenet,
    load_webvision,
)
from dataparams.data.idx import load_fashion_mnist, load_idx_file, load_mnist
from dataparams.data.indexed import WithIndex
from dataparams.data.memory import Augment, FeatureLoader, InMemoryLoader
from dataparams.data.registry import DATASETS, load_splits
from dataparams.data.splits import holdout_split
from dataparams.data.user import load_user_data
from dataparams.data.userdata import UserData, UserDataError

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetNotFoundError",
    "FeatureLoader",
    "ImageFileDataset",
    "InMemoryLoader",
    "Split",
    "UserData",
    "UserDataError",
    "WithIndex",
    "holdout_split",
    "imagenet_transforms",
    "load_cifar10",
    "load_cifar100",
    "load_cifar_n_labels",
    "load_fashion_mnist",
    "load_filelist",
    "load_idx_file",
    "load_image_folder",
    "load_imagenet",
    "load_mnist",
    "load_splits",
    "load_user_data",
    "load_webvision",
]
