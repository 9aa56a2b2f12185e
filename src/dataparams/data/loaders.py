"""Loaders for a run: in-memory loaders for pixels and features, a seeded DataLoader for image files.

Every loader yields ``(inputs, targets, indices)`` and has ``set_epoch(epoch)``, so that the order
(and augmentation) of epoch ``e`` depends on ``(seed, e)`` only: a resumed run replays exactly the
batches an uninterrupted one would have seen. :func:`build_loaders` makes the four loaders a run
needs from its :class:`~dataparams.data.prepare.TrainingLabels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dataparams.config import DataConfig
from dataparams.data.base import Split
from dataparams.data.memory import Augment, FeatureLoader, InMemoryLoader
from dataparams.data.prepare import TrainingLabels
from dataparams.data.registry import DatasetInfo, LoadedDataset

__all__ = ["FileLoader", "RunLoaders", "build_loaders", "make_loader"]


class FileLoader:
    """A DataLoader over an image-file dataset whose shuffling depends on ``(seed, epoch)``."""

    def __init__(self, dataset: Any, *, batch_size: int, shuffle: bool, workers: int, seed: int,
                 device: torch.device) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.workers, self.seed, self.epoch = workers, seed, 0
        self.pin = device.type == "cuda"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(self.epoch))
        return iter(
            torch.utils.data.DataLoader(
                self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=g,
                num_workers=self.workers, pin_memory=self.pin, persistent_workers=False,
            )
        )


def make_loader(split: Split, targets: np.ndarray, d: DataConfig, info: DatasetInfo, device: torch.device, *,
                train: bool, batch_size: int, seed: int, user: Any = None) -> Any:
    """A loader over ``split`` with labels ``targets``; shuffled and augmented when ``train``.

    Features and decoded pixels live on the device; image files are decoded by DataLoader
    workers -- with the measured resize and normalisation for user data (``user``, a
    :class:`~dataparams.data.userdata.UserData`), with the ImageNet transforms otherwise.
    """
    if split.features is not None:
        return FeatureLoader(split.features, targets, batch_size=batch_size, shuffle=train, mean=info.mean,
                             std=info.std, device=device, seed=seed)
    if split.in_memory:
        augment = Augment(d.crop_padding, d.flip) if (train and d.augment) else None
        return InMemoryLoader(split.images, targets, batch_size=batch_size, shuffle=train, augment=augment,
                              mean=info.mean, std=info.std, device=device, seed=seed)
    if user is not None:
        from dataparams.data.decode import UserImageDataset

        ds: Any = UserImageDataset(split.paths, targets, image_size=user.image_size, channels=user.channels,
                                   mean=info.mean, std=info.std)
    else:
        from dataparams.data.folders import ImageFileDataset, imagenet_transforms

        ds = ImageFileDataset(split, imagenet_transforms(train and d.augment), targets=targets)
    return FileLoader(ds, batch_size=batch_size, shuffle=train, workers=d.workers, seed=seed, device=device)


@dataclass
class RunLoaders:
    """The loaders of one run. ``train`` shuffles and augments; ``train_eval`` is the same samples
    in order, for the final predictions; ``evaluate`` holds ``test`` and, with a validation split,
    ``val`` (noisy labels) -- user data has no test split --; ``heldout`` predicts the pool
    samples that ``keep_file`` left out."""

    train: Any
    train_eval: Any
    evaluate: dict[str, Any]
    heldout: Any = None


def pool_loader(dataset: LoadedDataset, labels: TrainingLabels, index: np.ndarray, d: DataConfig,
                device: torch.device, *, shuffle: bool, batch_size: int, seed: int) -> Any:
    """A loader over the training-pool samples ``index`` (source indices) with their run labels; it
    yields positions in ``index`` as sample indices."""
    return make_loader(dataset.train.subset(index), labels.labels[index], d, dataset.info, device, train=shuffle,
                       batch_size=batch_size, seed=seed, user=dataset.user)


def build_loaders(dataset: LoadedDataset, labels: TrainingLabels, d: DataConfig, device: torch.device, *,
                  seed: int) -> RunLoaders:
    """The loaders of a run over the dataset's ``train`` and ``test`` splits."""
    test, info = dataset.test, dataset.info

    def loader(index: np.ndarray, *, shuffle: bool, batch_size: int) -> Any:
        return pool_loader(dataset, labels, index, d, device, shuffle=shuffle, batch_size=batch_size, seed=seed)

    evaluate = {}
    if test is not None:
        evaluate["test"] = make_loader(test, test.targets, d, info, device, train=False,
                                       batch_size=d.eval_batch_size, seed=seed)
    if len(labels.val_index):
        # The held-out split keeps its noisy labels: it is carved from the training data a user has.
        evaluate["val"] = loader(labels.val_index, shuffle=False, batch_size=d.eval_batch_size)
    heldout = None
    if len(labels.heldout_index):
        heldout = loader(labels.heldout_index, shuffle=False, batch_size=d.eval_batch_size)
    return RunLoaders(
        train=loader(labels.train_index, shuffle=True, batch_size=d.batch_size),
        train_eval=loader(labels.train_index, shuffle=False, batch_size=d.eval_batch_size),
        evaluate=evaluate,
        heldout=heldout,
    )
