"""What the per-box temperatures learned: the numbers behind Figure 3 (sec. 3.3).

The paper shows (Figure 3) that the box parameters attend to "easier unoccluded instances first,
followed by partial occlusion, and in the end heavy occlusion". In sigma that reads: early in
training hard boxes carry a high temperature (their gradient is damped) and easy boxes a low
one. This module turns that into numbers per epoch:

* the mean sigma per KITTI difficulty level, per occlusion level and per class;
* the Spearman rank correlation of sigma with the occlusion level (0-2) and with the difficulty
  (0 easy, 1 moderate, 2 hard): positive means harder boxes are held back, i.e. the learned order
  is easy -> moderate -> hard;
* with a corrupted training set, the AUROC of sigma (and of the per-box loss) as a detector of
  the boxes whose class was flipped.

Notation: ``N`` box annotations of the training set (the data parameters), ``I`` images.
Occlusion level 3 is KITTI's "unknown" and is left out of the rank correlation (the synthetic set
writes 3 for objects more than 80% hidden, which the mean-per-level curves do show).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dataparams.analysis.metrics import auroc
from dataparams.detection.kitti import DIFFICULTIES, KittiDetection
from dataparams.detection.synthetic import box_error_kinds, read_truth

__all__ = [
    "DIFFICULTY_NAMES",
    "BoxTable",
    "OCCLUSION_NAMES",
    "curriculum_statistics",
    "mean_by_level",
    "rank_correlation",
]

#: KITTI's difficulty levels in order, and "none" for boxes in no level (too small, ...).
DIFFICULTY_NAMES: tuple[str, ...] = (*DIFFICULTIES, "none")
#: Names of KITTI's occlusion levels, as the curves label them.
OCCLUSION_NAMES: tuple[str, ...] = ("visible", "partly occluded", "largely occluded", "unknown")


def _midranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def rank_correlation(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation of two arrays of shape (N,) (ties get mid-ranks).

    Returns NaN for fewer than two pairs or when either array is constant (e.g. sigma of a
    baseline, all ones). Equals ``scipy.stats.spearmanr(x, y).statistic``.
    """
    a, b = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < 2:
        return math.nan
    ra, rb = _midranks(a), _midranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def mean_by_level(values: ArrayLike, levels: ArrayLike, names: dict[int, str]) -> dict[str, float]:
    """Mean of ``values`` (N,) over the entries of each level in ``names`` (NaN for an empty one)."""
    v, lv = np.asarray(values, np.float64), np.asarray(levels)
    out = {}
    for level, name in names.items():
        sel = lv == level
        out[name] = float(v[sel].mean()) if sel.any() else math.nan
    return out


@dataclass
class BoxTable:
    """Per-box facts of a training set, in the order of the data parameters (``box_index``).

    Attributes
    ----------
    labels : int64 (N,)
        Given class, 1..K.
    true_labels : int64 (N,)
        True class (equal to ``labels`` unless the set records corruption, as the synthetic
        sets do in ``training/truth.json``).
    is_flipped : bool (N,)
        ``labels != true_labels``.
    error_kind : str (N,)
        The box's injected annotation error, one of
        :data:`~dataparams.detection.synthetic.BOX_ERROR_KINDS` (``clean``, ``flip``, ``shift``,
        ``spurious``); all ``clean`` on a set without ``training/truth.json``. A run's
        ``labels.npz`` written before it existed reads as ``flip`` where ``is_flipped``.
    difficulty : int64 (N,)
        KITTI level 0 easy, 1 moderate, 2 hard, -1 none.
    occluded : int64 (N,)
        KITTI occlusion level 0-3.
    truncated, height : float32 (N,)
        As labelled.
    boxes : float32 (N, 4)
        xyxy in the original image.
    image_index, line_index : int64 (N,)
        The box's image (position in ``image_ids``) and its 0-based line in the label file.
    image_ids : str (I,)
    classes : str (K,)
    """

    labels: np.ndarray
    true_labels: np.ndarray
    is_flipped: np.ndarray
    difficulty: np.ndarray
    occluded: np.ndarray
    truncated: np.ndarray
    height: np.ndarray
    boxes: np.ndarray
    image_index: np.ndarray
    line_index: np.ndarray
    image_ids: np.ndarray
    classes: np.ndarray
    error_kind: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.error_kind is None:
            self.error_kind = np.where(np.asarray(self.is_flipped, bool), "flip", "clean").astype("<U8")

    @property
    def num_boxes(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_dataset(cls, dataset: KittiDetection) -> BoxTable:
        """Read the facts from the dataset's labels (no image is read) and, if the data set has
        a ``training/truth.json``, the true classes."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("occluded", "truncated", "height", "boxes")}
        for i in range(len(dataset)):
            t = dataset.get_target(i)
            for key, name in (("occluded", "occluded"), ("truncated", "truncated"), ("height", "height"),
                              ("boxes", "boxes")):
                parts[key].append(t[name].numpy())
        labels = np.asarray(dataset.box_labels, np.int64)
        true_labels = labels.copy()
        flipped = np.zeros(labels.shape[0], bool)
        kinds = np.full(labels.shape[0], "clean", dtype="<U8")
        truth_file = dataset.root / "training" / "truth.json"
        if truth_file.is_file():
            truth = read_truth(dataset.root)
            kinds = box_error_kinds(dataset, truth)
            flipped = kinds == "flip"
            index = {c: k + 1 for k, c in enumerate(dataset.classes)}
            for b in np.flatnonzero(flipped):
                image_id, line = dataset.box_source(int(b))
                true_type = truth["images"][image_id]["true_types"][line]
                # A box whose true class is not detected here keeps its given label as "true".
                true_labels[b] = index.get(true_type, labels[b])

        def cat(key: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
            return np.concatenate(parts[key]).astype(dtype) if parts[key] else np.zeros(shape, dtype)

        return cls(
            labels=labels,
            true_labels=true_labels,
            is_flipped=flipped,
            difficulty=np.asarray(dataset.box_difficulty, np.int64),
            occluded=cat("occluded", np.int64, (0,)),
            truncated=cat("truncated", np.float32, (0,)),
            height=cat("height", np.float32, (0,)),
            boxes=cat("boxes", np.float32, (0, 4)).reshape(-1, 4),
            image_index=np.asarray(dataset.box_image_index, np.int64),
            line_index=np.asarray(dataset.box_line_index, np.int64),
            image_ids=np.asarray(dataset.image_ids, dtype=str),
            classes=np.asarray(dataset.classes, dtype=str),
            error_kind=kinds,
        )

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The fields as named arrays (what a run's ``labels.npz`` holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BoxTable:
        # error_kind is derived from is_flipped when a run's labels.npz predates it.
        missing = [f.name for f in fields(cls) if f.name not in arrays and f.name != "error_kind"]
        if missing:
            raise KeyError(f"box table arrays lack {', '.join(missing)}")
        return cls(**{f.name: np.asarray(arrays[f.name]) for f in fields(cls) if f.name in arrays})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BoxTable:
        with np.load(path, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def curriculum_statistics(
    sigma: ArrayLike, table: BoxTable, *, box_loss: ArrayLike | None = None
) -> dict[str, Any]:
    """The per-epoch numbers of the box curriculum.

    Parameters
    ----------
    sigma : array (N,)
        The boxes' temperatures after an epoch.
    table : BoxTable
    box_loss : array (N,), optional
        The boxes' latest mean anchor loss (NaN where unknown), scored like sigma for flipped boxes.

    Returns
    -------
    dict
        ``box_sigma`` (mean, std, min, max), ``sigma_by_difficulty`` ({easy, moderate, hard,
        none}), ``sigma_by_occlusion`` ({"0".."3"}), ``sigma_by_class``, ``spearman_occlusion``
        (levels 0-2), ``spearman_difficulty`` (levels 0-2; None where undefined), and, when the
        table has flipped boxes, ``flipped`` with ``auroc_sigma``, ``auroc_loss``, the mean sigma
        of clean and flipped boxes and their numbers. When the table has shifted or spurious boxes,
        ``box_errors``: for each kind present (``flip``, ``shift``, ``spurious``) the AUROC of sigma
        and of the loss for those boxes against the clean ones (the other kinds left out), their
        mean sigma and number.
    """
    s = np.asarray(sigma, np.float64).reshape(-1)
    if s.shape[0] != table.num_boxes:
        raise ValueError(f"sigma has {s.shape[0]} entries for {table.num_boxes} boxes")
    out: dict[str, Any] = {}
    if s.size:
        out["box_sigma"] = {"mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
                            "max": float(s.max())}
    out["sigma_by_difficulty"] = mean_by_level(s, table.difficulty, {0: "easy", 1: "moderate", 2: "hard", -1: "none"})
    out["sigma_by_occlusion"] = mean_by_level(s, table.occluded, {k: str(k) for k in range(4)})
    out["sigma_by_class"] = mean_by_level(s, table.labels, {k + 1: str(c) for k, c in enumerate(table.classes)})
    occ = (table.occluded >= 0) & (table.occluded <= 2)
    out["spearman_occlusion"] = _finite(rank_correlation(s[occ], table.occluded[occ]))
    rated = table.difficulty >= 0
    out["spearman_difficulty"] = _finite(rank_correlation(s[rated], table.difficulty[rated]))
    if table.is_flipped.any():
        flipped = table.is_flipped
        report: dict[str, Any] = {
            "auroc_sigma": _finite(auroc(s, flipped)),
            "sigma_clean": float(s[~flipped].mean()),
            "sigma_flipped": float(s[flipped].mean()),
            "num_flipped": int(flipped.sum()),
            "num_clean": int((~flipped).sum()),
        }
        if box_loss is not None:
            loss = np.asarray(box_loss, np.float64).reshape(-1)
            known = np.isfinite(loss)
            report["auroc_loss"] = _finite(auroc(loss[known], flipped[known])) if known.any() else None
        out["flipped"] = report
    kinds = np.asarray(table.error_kind)
    if np.isin(kinds, ("shift", "spurious")).any():
        loss = None if box_loss is None else np.asarray(box_loss, np.float64).reshape(-1)
        clean = kinds == "clean"
        per_kind: dict[str, Any] = {"clean": {"num": int(clean.sum()),
                                              "sigma_mean": float(s[clean].mean()) if clean.any() else None}}
        for kind in ("flip", "shift", "spurious"):
            bad = kinds == kind
            if not bad.any():
                continue
            pair = clean | bad  # this kind against the clean boxes only
            entry = {"num": int(bad.sum()), "sigma_mean": float(s[bad].mean()),
                     "auroc_sigma": _finite(auroc(s[pair], bad[pair])) if clean.any() else None}
            if loss is not None:
                known = pair & np.isfinite(loss)
                entry["auroc_loss"] = (_finite(auroc(loss[known], bad[known]))
                                       if (known & bad).any() and (known & clean).any() else None)
            per_kind[kind] = entry
        out["box_errors"] = per_kind
    return out
