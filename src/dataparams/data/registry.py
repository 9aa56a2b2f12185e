"""Datasets by name: where their files are, how they are normalised, how they are loaded.

``load_splits(name, data_dir)`` returns the train and test :class:`~dataparams.data.base.Split`
of a dataset found on disk, plus the dataset's own noisy labels where it ships them (CIFAR-N).
The name ``user`` is the user's own data: a CSV list, a folder of class folders or an ``.npz``
(:mod:`dataparams.data.user`), or a table -- a ``.parquet`` file or a ``datasets`` ``save_to_disk``
folder (:mod:`dataparams.data.tables`); one set, no test split, its normalisation and input shape
measured when it is loaded. :func:`user_dataset` wraps data the caller loaded itself (arrays, a
DataFrame) the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.config import ConfigError
from dataparams.data.base import DatasetFormatError, DatasetNotFoundError, Split
from dataparams.data.folders import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DATASETS", "DATASET_NAMES", "TABLE_OPTIONS", "DatasetInfo", "LoadedDataset", "load_dataset",
           "load_splits", "user_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """Normalisation constants and the input shape the models are built for."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_channels: int
    image_size: int


_IMAGENET = DatasetInfo(IMAGENET_MEAN, IMAGENET_STD, 3, 224)
_CIFAR10 = DatasetInfo((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 3, 32)
_CIFAR100 = DatasetInfo((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 3, 32)

DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo((0.2860,), (0.3530,), 1, 28),
    "mnist": DatasetInfo((0.1307,), (0.3081,), 1, 28),
    "cifar10": _CIFAR10,
    "cifar100": _CIFAR100,
    # CIFAR-N relabels the CIFAR training images: same images, same statistics.
    "cifar10n": _CIFAR10,
    "cifar100n": _CIFAR100,
    "imagenet": _IMAGENET,
    "webvision": _IMAGENET,
    "webvision-mini": _IMAGENET,
    "filelist": _IMAGENET,
}
#: Every valid ``data.dataset``: the named datasets, and the user's own data.
DATASET_NAMES: tuple[str, ...] = (*DATASETS, "user")
#: How a table of user data is read (:func:`~dataparams.data.tables.load_table_data`'s arguments,
#: the ``data.*`` fields of the same names); None leaves each to the loader's default.
TABLE_OPTIONS = ("label_column", "image_column", "feature_columns", "id_column", "split")


@dataclass
class LoadedDataset:
    """``train`` and ``test`` splits (``test`` is None for user data), their normalisation, the
    labels shipped in place of the clean ones (CIFAR-N human labels), and, for ``user``, the
    measured :class:`~dataparams.data.userdata.UserData`."""

    train: Split
    test: Split | None
    info: DatasetInfo
    shipped_noisy_labels: np.ndarray | None = None
    user: Any = None


def _need_dir(name: str, data_dir: str | None) -> Path:
    if data_dir is None:
        raise DatasetNotFoundError(
            f"{name} needs data.data_dir: the folder that holds its files; it cannot "
            "be downloaded by this tool"
        )
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"{name}: data.data_dir {path} does not exist")
    return path


def _find_one(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise DatasetNotFoundError(f"{what}: expected one of {', '.join(names)} in {folder}")


def load_splits(name: str, data_dir: str | os.PathLike[str] | None = None, *, label_set: str | None = None,
                **user_options: Any) -> LoadedDataset:
    """Load the train and test splits of dataset ``name`` (see :data:`DATASET_NAMES`).

    ``data_dir`` is the dataset's folder (for ``user``: the list, folder or ``.npz``, or the
    ``.parquet`` file or ``save_to_disk`` folder); Fashion-MNIST and MNIST also look in their
    default places (``/usr/share/datasets/...``). ``label_set`` picks CIFAR-N's human label set.
    ``user_options`` go to :func:`~dataparams.data.user.load_user_data` (``image_size``,
    ``max_image_size``, ``channels``, ``memory_budget_bytes``, ``classes``, ``progress``), or for a
    table to :func:`~dataparams.data.tables.load_table_data`, which also takes the
    :data:`TABLE_OPTIONS`; those are refused for data that is not a table.
    """
    if name == "user":
        return _load_user(data_dir, **user_options)
    if name not in DATASETS:
        raise ValueError(f"unknown data.dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    info = DATASETS[name]
    d = None if data_dir is None else str(data_dir)
    if name in ("fashion-mnist", "mnist"):
        from dataparams.data.idx import load_fashion_mnist, load_mnist

        load = load_fashion_mnist if name == "fashion-mnist" else load_mnist
        return LoadedDataset(load(d, train=True), load(d, train=False), info)
    if name in ("cifar10", "cifar100", "cifar10n", "cifar100n"):
        from dataparams.data.cifar import load_cifar10, load_cifar100, load_cifar_n_labels

        root = _need_dir(name, d)
        load = load_cifar10 if name in ("cifar10", "cifar10n") else load_cifar100
        train, test = load(root, train=True), load(root, train=False)
        shipped = None
        if name.endswith("n"):
            label_file = _find_one(
                root,
                ("CIFAR-10_human.pt",) if name == "cifar10n" else ("CIFAR-100_human.pt",),
                f"{name} human labels",
            )
            default = "worst" if name == "cifar10n" else "noisy"
            shipped = load_cifar_n_labels(label_file, label_set=label_set or default, split=train)
        return LoadedDataset(train, test, info, shipped)
    from dataparams.data.folders import load_filelist, load_imagenet, load_webvision

    root = _need_dir(name, d)
    if name == "imagenet":
        return LoadedDataset(load_imagenet(root, train=True), load_imagenet(root, train=False), info)
    if name in ("webvision", "webvision-mini"):
        k = 50 if name == "webvision-mini" else 1000
        return LoadedDataset(
            load_webvision(root, train=True, num_classes=k), load_webvision(root, train=False, num_classes=k), info
        )
    # filelist: a folder with train.csv / test.csv (or .tsv)
    train_file = _find_one(root, ("train.csv", "train.tsv"), "filelist dataset")
    test_file = _find_one(root, ("test.csv", "test.tsv", "val.csv", "val.tsv"), "filelist dataset")
    train = load_filelist(train_file)
    test = load_filelist(test_file)
    if test.classes != train.classes:
        raise DatasetFormatError(f"{test_file} and {train_file} do not have the same classes")
    return LoadedDataset(train, test, info)


def _load_user(data_dir: str | os.PathLike[str] | None, **options: Any) -> LoadedDataset:
    from dataparams.data.tables import is_table_path, load_table_data
    from dataparams.data.user import load_user_data
    from dataparams.data.userdata import UserDataError

    if data_dir is None:
        raise DatasetNotFoundError("user data needs data.data_dir: a path,label list, a folder of class "
                                   "folders, an .npz of features, a .parquet file or a datasets save_to_disk "
                                   "folder")
    table = {k: options.pop(k) for k in TABLE_OPTIONS if k in options}
    if is_table_path(data_dir):
        if table.get("label_column") is None:
            table.pop("label_column", None)  # the loader's default column, "label"
        return user_dataset(load_table_data(data_dir, **table, **options))
    given = [k for k, v in table.items() if v is not None]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UserDataError(
            f"{data_dir}: {', '.join(given)} {verb} to a table (a .parquet file or a folder written by "
            "datasets' save_to_disk), not to a CSV list (columns path and label), a folder of class folders "
            "or an .npz"
        )
    return user_dataset(load_user_data(data_dir, **options))


def user_dataset(ud: Any) -> LoadedDataset:
    """The :class:`LoadedDataset` of a user's :class:`~dataparams.data.userdata.UserData`: its one
    split as ``train``, no test split, the measured normalisation, and ``user=ud``."""
    if ud.kind == "images":
        info = ud.info
    else:
        # Features: the loader standardises them; the "image" fields carry the feature count.
        info = DatasetInfo(tuple(float(v) for v in ud.mean), tuple(float(v) for v in ud.std), 0, 0)
    return LoadedDataset(ud.to_split(), None, info, user=ud)


def load_dataset(d: Any, *, progress: bool = False, **user_options: Any) -> LoadedDataset:
    """:func:`load_splits` for a :class:`~dataparams.config.DataConfig` (or its dict form, as in a
    run's config.json): the dataset with the options its config sets (for ``user``: the image
    options and the :data:`TABLE_OPTIONS`; a config written before those existed reads as None).
    ``user_options`` (e.g. ``classes``) are added to those for user data."""
    get = d.get if isinstance(d, dict) else (lambda k, default=None: getattr(d, k, default))
    options: dict[str, Any] = {}
    if get("dataset") == "user":
        budget = get("memory_budget_mb")
        options = dict(image_size=get("image_size"), max_image_size=get("max_image_size", 64),
                       channels=get("channels"), progress=progress,
                       memory_budget_bytes=None if budget is None else int(budget) << 20,
                       **{k: get(k) for k in TABLE_OPTIONS}, **user_options)
    elif user_options:
        raise ConfigError(f"{', '.join(user_options)}: options of user data, not of {get('dataset')}")
    return load_splits(get("dataset"), get("data_dir"), label_set=get("label_set"), **options)
