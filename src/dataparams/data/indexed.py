"""Attach each sample's index to what a dataset yields.

Data parameters are looked up by sample index, so every training batch must carry the
indices of its samples. The index is the sample's position in the wrapped dataset; it is stable
across epochs, shuffling and workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["WithIndex"]


class WithIndex(Dataset):
    """Wrap a map-style dataset yielding ``(x, y)`` so that it yields ``(x, y, index)``.

    Parameters
    ----------
    dataset : map-style Dataset
        Item ``i`` is ``(x, y)``, e.g. a torchvision dataset.
    targets : ndarray (N,) int, optional
        Labels to use instead of the dataset's own, e.g. noisy labels from
        :mod:`dataparams.noise`; ``y`` becomes ``int(targets[index])``.
    """

    def __init__(self, dataset: Dataset, *, targets: np.ndarray | None = None) -> None:
        self.dataset = dataset
        if targets is not None:
            targets = np.asarray(targets)
            if targets.ndim != 1:
                raise ValueError(f"targets must be 1-D (N,), got shape {targets.shape}")
            if hasattr(dataset, "__len__") and len(targets) != len(dataset):  # type: ignore[arg-type]
                raise ValueError(f"{len(targets)} targets for a dataset of {len(dataset)} samples")  # type: ignore[arg-type]
        self.targets = targets

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index]
        if self.targets is not None:
            y = int(self.targets[index])
        return x, y, index
