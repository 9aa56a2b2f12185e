"""Feature vectors, e.g. embeddings from a pretrained model: checked as finite float32 and
measured for standardisation.

Notation: ``N`` samples, ``K`` classes, ``D`` features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dataparams.data.fingerprint import bytes_digest, classes_digest, fingerprint_choice, labels_digest
from dataparams.data.userdata import UserData, UserDataError

__all__ = ["features_data", "finite_float32", "standardization", "to_float32"]


def finite_float32(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int, str, int] | None]:
    """(N, D) numbers as contiguous float32, and the first entry that is not a finite float32
    (row, column, what it holds, number of bad rows), or None."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(out)
    if not bad.any():
        return out, None
    i, j = (int(v) for v in np.argwhere(bad)[0])
    v = x[i, j]
    what = "NaN" if np.isnan(v) else "an infinite value" if np.isinf(v) else f"{float(v):g}, too large for float32"
    return out, (i, j, what, int(bad.any(1).sum()))


def to_float32(x: np.ndarray, locate: Callable[[int, int], str]) -> np.ndarray:
    """(N, D) numbers as float32, refusing NaN, infinities and values float32 cannot hold."""
    out, bad = finite_float32(x)
    if bad is not None:
        i, j, what, rows = bad
        more = f"; {rows - 1:,} more rows hold NaN or infinite values" if rows > 1 else ""
        raise UserDataError(f"{locate(i, j)}: holds {what}{more}")
    return out


def standardization(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per-feature mean and std of (N, D) ``features`` (float32, measured in float64; std 1 where a
    feature is constant, which standardising then maps to 0), and the ``standardize`` choice that
    says so."""
    n = len(features)
    mean = features.mean(0, dtype=np.float64)
    std = features.std(0, dtype=np.float64)
    constant = std < 1e-12
    std[constant] = 1.0
    spread = std[~constant]
    ratio = f"; feature std ranges {spread.min():.3g}..{spread.max():.3g}" if len(spread) else ""
    const_note = f"; {int(constant.sum())} constant features become 0" if constant.any() else ""
    choice = {"value": True, "why": f"per-feature mean/std measured on the {n:,} rows{ratio}{const_note}"}
    return mean.astype(np.float32), std.astype(np.float32), choice


def features_data(
    source: str,
    features: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    ids: list[str],
    choices: dict[str, Any],
) -> UserData:
    """The :class:`~dataparams.data.userdata.UserData` of (N, D) float32 ``features``: their
    per-feature mean and std (:func:`standardization`), with the ``standardize`` and ``data``
    (fingerprint) choices added to ``choices``."""
    n = len(features)
    mean, std, choices["standardize"] = standardization(features)
    parts = {
        "labels": labels_digest(targets, ids),
        "features": f"{n:,} x {features.shape[1]}, {bytes_digest(features.tobytes())}",
        "classes": classes_digest(classes),
    }
    choices["data"] = fingerprint_choice(parts, "sha256 of the labels, the ids and the float32 features")
    return UserData(
        kind="features", targets=targets, classes=classes, ids=ids, source=source, features=features,
        mean=mean, std=std, choices=choices,
    )
