"""Seeded holdout splits: carve a validation set out of a training set.

Notation: ``N`` samples. Indices refer to positions in the split being divided; apply them
with :meth:`dataparams.data.base.Split.subset` or to a noisy-label array alike, so the
validation samples carry the same (possibly corrupted) labels they had in the full set.
"""

from __future__ import annotations

import numpy as np

from dataparams.config import ConfigError

__all__ = ["holdout_count", "holdout_split"]


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even, which would make 2.5 and 3.5 samples round in
    # opposite directions; half-up is the rule a reader expects.
    return int(np.floor(x + 0.5))


def holdout_count(num_samples: int, fraction: float) -> int:
    """How many of ``num_samples`` an unstratified :func:`holdout_split` holds out."""
    return _round_half_up(float(fraction) * int(num_samples))


def holdout_split(
    num_samples: int,
    fraction: float,
    *,
    seed: int | np.random.Generator,
    stratify: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(N)`` into disjoint, sorted train and validation index arrays.

    Parameters
    ----------
    num_samples : int
        ``N``.
    fraction : float in [0, 1)
        Share of samples held out for validation, rounded to the nearest count (per class when
        stratified). 0 gives an empty validation set.
    seed : int or Generator
        Passed to ``np.random.default_rng``.
    stratify : ndarray (N,) int, optional
        Labels whose class proportions the two parts should keep. Each class holds out
        ``round(fraction * n_c)`` samples but always keeps at least one for training.

    Returns
    -------
    train_index : ndarray (N - M,) int64, sorted
    val_index : ndarray (M,) int64, sorted
        Together they cover ``range(N)`` exactly once.
    """
    n = int(num_samples)
    if n < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)

    if stratify is None:
        n_val = holdout_count(n, fraction)
        val = rng.permutation(n)[:n_val]
    else:
        labels = np.asarray(stratify)
        if labels.shape != (n,):
            raise ValueError(f"stratify must have shape ({n},), got {labels.shape}")
        parts = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            n_val_c = min(_round_half_up(fraction * len(members)), len(members) - 1)
            parts.append(members[rng.permutation(len(members))[:n_val_c]])
        val = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    train_index = np.flatnonzero(~is_val).astype(np.int64)
    val_index = np.flatnonzero(is_val).astype(np.int64)
    if n and not len(train_index):
        raise ConfigError(f"fraction {fraction} of {n} samples leaves no training samples")
    return train_index, val_index
