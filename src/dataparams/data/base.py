"""What a dataset loader returns: one split, its inputs and its clean labels.

Notation: ``N`` samples, ``K`` classes, ``D`` features. Loaders for in-memory formats (IDX,
CIFAR) fill ``images``; loaders for image-file formats (ImageNet folders, WebVision lists, CSV)
fill ``paths``; a user's feature vectors (:mod:`~dataparams.data.user`) fill ``features``.
Position ``i`` in a split is the sample's index for its whole life: data parameters, noise
masks, snapshots and exported suspects all refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DatasetFormatError", "DatasetNotFoundError", "Split"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where we looked and how to get them."""


class DatasetFormatError(ValueError):
    """A dataset's files are there but unusable: truncated, corrupt, not in their format, or
    inconsistent with each other; the message names the file (and line) and what is wrong."""


@dataclass
class Split:
    """One split (train, test, val) of a labelled image dataset.

    Attributes
    ----------
    targets : ndarray (N,) int64
        Labels in ``[0, K)`` as distributed with the dataset (the "clean" labels).
    classes : list of str
        Class names, ``len(classes) == K``.
    images : ndarray (N, H, W, C) uint8, optional
        Pixels, for datasets small enough to hold in memory.
    paths : list of str, optional
        One image file per sample, for datasets read from disk batch by batch.
    name : str
        E.g. ``"fashion-mnist/train"``, for messages and run metadata.
    features : ndarray (N, D) float32, optional
        One feature vector per sample (e.g. embeddings from a pretrained model) in place of
        images. Exactly one of ``images``, ``paths`` and ``features`` is given.
    """

    targets: np.ndarray
    classes: list[str]
    images: np.ndarray | None = None
    paths: list[str] | None = None
    name: str = ""
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if self.targets.ndim != 1:
            raise ValueError(f"{self.name}: targets must be 1-D, got shape {self.targets.shape}")
        given = [x is not None for x in (self.images, self.paths, self.features)]
        if sum(given) != 1:
            what = "images or paths" if self.features is None else "images, paths or features"
            raise ValueError(f"{self.name}: give exactly one of {what}")
        n = len(self.targets)
        if self.features is not None:
            if self.features.dtype != np.float32 or self.features.ndim != 2 or len(self.features) != n:
                raise ValueError(
                    f"{self.name}: features must be float32 (N, D) with N = {n}, got "
                    f"{self.features.dtype} {self.features.shape}"
                )
        elif self.images is not None:
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) != n:
                raise ValueError(
                    f"{self.name}: images must be uint8 (N, H, W, C) with N = {n}, got "
                    f"{self.images.dtype} {self.images.shape}"
                )
        elif len(self.paths) != n:  # type: ignore[arg-type]
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {n} targets")  # type: ignore[arg-type]
        if n and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            raise ValueError(f"{self.name}: labels must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, index: np.ndarray, name: str | None = None) -> Split:
        """The samples at ``index`` (in that order), re-indexed from 0."""
        index = np.asarray(index, dtype=np.int64)
        return Split(
            targets=self.targets[index],
            classes=list(self.classes),
            images=None if self.images is None else self.images[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            name=name or self.name,
            features=None if self.features is None else self.features[index],
        )
