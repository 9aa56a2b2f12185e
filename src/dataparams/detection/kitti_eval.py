"""KITTI 2D bounding-box evaluation with the semantics of the official object devkit.

The paper evaluates its KITTI detector (Saxena, Tuzel & DeCoste, NeurIPS 2019, sec. 3.3,
Figure 2) with KITTI's easy / moderate / hard AP. This module reproduces the image-plane part of
the devkit's ``cpp/evaluate_object.cpp`` (``cleanData``, ``computeStatistics``,
``getThresholds``, ``eval_class``), which ``kitti_object_eval_python/eval.py`` (second.pytorch,
OpenPCDet) ports to python, rule for rule:

* Classes and IoU: Car 0.7, Pedestrian 0.5, Cyclist 0.5. IoU is ``inter / (a + b - inter)``
  on the raw coordinates (no ``+1``). Class names compare case-insensitively.
* Ground truth, per class ``c`` and difficulty ``d`` (``ignored_gt``): 0 (counted) when its type
  is ``c`` and it is not too hard; 1 (ignored: neither a true positive nor a miss, but it may
  absorb a detection) when it is the neighbouring class (Van for Car, Person_sitting for
  Pedestrian) or too hard, i.e. occlusion > ``MAX_OCCLUSION[d]``, truncation >
  ``MAX_TRUNCATION[d]`` or **height <= MIN_HEIGHT[d]** (the code is one pixel stricter than the
  published ">= 40 px"); -1 (skipped) for every other type.
* Detections (``ignored_det``): 1 (ignored) when ``|y2 - y1| < MIN_HEIGHT[d]``, *whatever their
  class*; 0 when their type is ``c``; -1 otherwise.
* A first pass over every image gives each non-skipped ground truth, in file order, the
  unassigned detection with IoU > the class threshold and the **highest score**; the scores of
  the resulting true positives (counted ground truth matched by a counted detection) are the
  candidate thresholds. ``getThresholds`` keeps about one per recall step of 1/40 (41 at most).
* For every threshold, a second pass ignores detections scoring below it and gives each
  ground truth the counted detection of **largest IoU** (an ignored, too-small detection only
  if no counted one overlaps). Unmatched counted ground truth is a false negative; an
  unassigned counted detection is a false positive unless ``inter / area(detection)`` with a
  DontCare box exceeds the class threshold.
* ``precision[i] = TP / (TP + FP)`` at threshold ``i`` (zero beyond the last threshold), then
  ``precision[i] = max(precision[i:])``. AP|R40 is ``mean(precision[1:41])``, the 11-point AP
  ``mean(precision[0:41:4])``, both in percent (the devkit's post-2019 and pre-2019 figures).

Because ``getThresholds`` steps the recall by 1/40 per *kept* threshold, the sampling only
means "recall i/40" when a class has more than 40 counted ground-truth boxes; with fewer, the
devkit's AP is not the area under the curve (40 boxes all found give AP|R40 = 97.5, 41 give
100). That is the devkit's behaviour and is kept.

Two deliberate differences, both for degenerate input: a threshold with no true and no false
positive has precision 0 (the devkit divides 0 by 0), and a class without detections reports
AP 0 (the devkit skips classes that were never detected).

Speed: the per-image greedy matching only ever couples ground truth and detections that
overlap above the class threshold, so the matching splits into independent components. The
common ones (one box, one detection; a lone detection; a lone box) are counted with numpy for
all thresholds at once; only components with several candidates run the devkit's loops, once per
distinct set of detections above a threshold. Thousands of images take about a second.

Notation: ``G`` ground-truth objects, ``E`` detections, ``T <= 41`` thresholds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataparams.detection.kitti import (
    DIFFICULTIES,
    MAX_OCCLUSION,
    MAX_TRUNCATION,
    MIN_HEIGHT,
    KittiFormatError,
    KittiObject,
    read_label_file,
    read_split_file,
)

__all__ = [
    "EVAL_CLASSES",
    "MIN_OVERLAP",
    "N_SAMPLE_PTS",
    "NEIGHBOUR_CLASSES",
    "ClassResult",
    "evaluate",
    "evaluate_detailed",
    "evaluate_dirs",
    "format_table",
    "kitti_eval_command",
    "load_label_dirs",
]

EVAL_CLASSES: tuple[str, ...] = ("Car", "Pedestrian", "Cyclist")
MIN_OVERLAP: dict[str, float] = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
NEIGHBOUR_CLASSES: dict[str, str] = {"car": "van", "pedestrian": "person_sitting"}
N_SAMPLE_PTS = 41
# The devkit's "no detection yet" score; a detection scoring at or below it is never matched
# in the first pass, exactly as in computeStatistics.
_NO_DETECTION = -10000.0


@dataclass(frozen=True)
class ClassResult:
    """The evaluation of one class at one difficulty.

    Attributes
    ----------
    ap40, ap11 : float
        AP|R40 and 11-point AP, percent.
    precision : ndarray (41,)
        The devkit's interpolated precision at sample ``i`` (``i / 40`` recall when ``num_gt``
        is large), what ``stats_<class>_detection.txt`` holds.
    recall : ndarray (41,)
        ``TP / (TP + FN)`` at each threshold (0 beyond the last).
    thresholds : ndarray (T,)
        The scores at which precision was sampled, descending.
    num_gt : int
        Counted ground-truth boxes (the recall denominator).
    """

    ap40: float
    ap11: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    num_gt: int


# ---------------------------------------------------------------------------------------------
# flat arrays
# ---------------------------------------------------------------------------------------------
@dataclass
class _Flat:
    image: np.ndarray  # (N,) int64, position of the image; non-decreasing
    boxes: np.ndarray  # (N, 4) float64
    types: np.ndarray  # (N,) str, lower case
    truncated: np.ndarray  # (N,) float64
    occluded: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64 (0 for ground truth)


def _flatten(per_image: Sequence[Sequence[KittiObject]], *, detections: bool, ids: Sequence[str]) -> _Flat:
    counts = np.array([len(objs) for objs in per_image], np.int64)
    objs = [o for group in per_image for o in group]
    if detections:
        for image_id, group in zip(ids, per_image):
            for k, o in enumerate(group):
                if o.score is None:
                    raise KittiFormatError(f"detection {k} of image {image_id} ({o.type}) has no score")
    return _Flat(
        image=np.repeat(np.arange(len(per_image), dtype=np.int64), counts),
        boxes=np.array([o.bbox for o in objs], np.float64).reshape(-1, 4),
        types=np.array([o.type.lower() for o in objs], dtype=str) if objs else np.zeros(0, dtype=str),
        truncated=np.array([o.truncated for o in objs], np.float64),
        occluded=np.array([o.occluded for o in objs], np.int64),
        score=np.array([o.score if o.score is not None else 0.0 for o in objs], np.float64),
    )


def _pairs_within_images(
    img_a: np.ndarray, img_b: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """All (a, b) position pairs whose images agree; ``img_b`` must be non-decreasing."""
    count_b = np.bincount(img_b, minlength=n_images)
    start_b = np.cumsum(count_b) - count_b
    reps = count_b[img_a]
    total = int(reps.sum())
    a = np.repeat(np.arange(len(img_a), dtype=np.int64), reps)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)
    b = start_b[img_a[a]] + within
    return a, b


def _overlap(det: np.ndarray, other: np.ndarray, *, criterion: int) -> np.ndarray:
    """The devkit's imageBoxOverlap for row pairs: -1 IoU, 0 intersection over ``det``'s area."""
    w = np.minimum(det[:, 2], other[:, 2]) - np.maximum(det[:, 0], other[:, 0])
    h = np.minimum(det[:, 3], other[:, 3]) - np.maximum(det[:, 1], other[:, 1])
    inter = w * h
    det_area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if criterion == -1:
            other_area = (other[:, 2] - other[:, 0]) * (other[:, 3] - other[:, 1])
            o = inter / (det_area + other_area - inter)
        else:
            o = inter / det_area
    return np.where((w > 0) & (h > 0), o, 0.0)


# ---------------------------------------------------------------------------------------------
# the devkit's loops
# ---------------------------------------------------------------------------------------------
def _get_thresholds(scores: np.ndarray, n_gt: int) -> np.ndarray:
    """getThresholds: the true-positive scores nearest to each recall step of 1/40."""
    v = np.sort(np.asarray(scores, np.float64))[::-1]
    kept: list[float] = []
    current = 0.0
    last = len(v) - 1
    step = 1.0 / (N_SAMPLE_PTS - 1.0)
    for i in range(len(v)):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < last else l_recall
        if (r_recall - current) < (current - l_recall) and i < last:
            continue
        kept.append(float(v[i]))
        current += step
    return np.array(kept, np.float64)


def _match(
    ignored_gt: Sequence[int],
    ignored_det: Sequence[int],
    scores: Sequence[float],
    overlap: Sequence[Sequence[float]],
    min_overlap: float,
    available: Sequence[bool],
    compute_fp: bool,
) -> tuple[int, int, list[float], list[bool]]:
    """computeStatistics' assignment loop on one component: (tp, fn, tp_scores, assigned)."""
    n_det = len(ignored_det)
    assigned = [False] * n_det
    tp = fn = 0
    tp_scores: list[float] = []
    for i, ig in enumerate(ignored_gt):
        det_idx = -1
        valid = _NO_DETECTION
        max_overlap = 0.0
        assigned_ignored = False
        for j in range(n_det):
            if ignored_det[j] == -1 or assigned[j] or not available[j]:
                continue
            o = overlap[i][j]
            if not compute_fp and o > min_overlap and scores[j] > valid:
                det_idx, valid = j, scores[j]
            elif (
                compute_fp
                and o > min_overlap
                and (o > max_overlap or assigned_ignored)
                and ignored_det[j] == 0
            ):
                max_overlap, det_idx, valid, assigned_ignored = o, j, 1.0, False
            elif compute_fp and o > min_overlap and valid == _NO_DETECTION and ignored_det[j] == 1:
                det_idx, valid, assigned_ignored = j, 1.0, True
        if valid == _NO_DETECTION and ig == 0:
            fn += 1
        elif valid != _NO_DETECTION and (ig == 1 or ignored_det[det_idx] == 1):
            assigned[det_idx] = True
        elif valid != _NO_DETECTION:
            tp += 1
            tp_scores.append(scores[det_idx])
            assigned[det_idx] = True
    return tp, fn, tp_scores, assigned


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T,) number of ``values`` >= each threshold."""
    v = np.sort(values)
    return len(v) - np.searchsorted(v, thresholds, side="left")


def _components(edge_g: np.ndarray, edge_d: np.ndarray) -> list[np.ndarray]:
    """Edge positions grouped by connected component of the (ground truth, detection) graph."""
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(x: tuple[int, int]) -> tuple[int, int]:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for g, d in zip(edge_g.tolist(), edge_d.tolist()):
        rg, rd = find((0, g)), find((1, d))
        if rg != rd:
            parent[rd] = rg
    groups: dict[tuple[int, int], list[int]] = {}
    for k, g in enumerate(edge_g.tolist()):
        groups.setdefault(find((0, g)), []).append(k)
    return [np.array(v, np.int64) for v in groups.values()]


# ---------------------------------------------------------------------------------------------
# one class
# ---------------------------------------------------------------------------------------------
def _eval_class(
    gt: _Flat, det: _Flat, n_images: int, name: str, min_overlap: float
) -> dict[str, ClassResult]:
    cls = name.lower()
    neighbour = NEIGHBOUR_CLASSES.get(cls)
    is_neighbour = gt.types == neighbour if neighbour is not None else np.zeros(len(gt.types), bool)
    valid_class = np.where(gt.types == cls, 1, np.where(is_neighbour, 0, -1))
    gt_sel = np.flatnonzero(valid_class != -1)
    det_height = np.abs(det.boxes[:, 3] - det.boxes[:, 1])
    det_is_cls = det.types == cls
    # Every detection that any difficulty can use: its class, or small enough to be "ignored".
    det_sel = np.flatnonzero(det_is_cls | (det_height < max(MIN_HEIGHT)))

    a, b = _pairs_within_images(gt.image[gt_sel], det.image[det_sel], n_images)
    iou = _overlap(det.boxes[det_sel[b]], gt.boxes[gt_sel[a]], criterion=-1)
    keep = iou > min_overlap
    cand_g, cand_d, cand_o = a[keep], b[keep], iou[keep]

    dc = np.flatnonzero(gt.types == "dontcare")
    in_dc = np.zeros(len(det_sel), bool)
    if len(dc):
        da, dd = _pairs_within_images(det.image[det_sel], gt.image[dc], n_images)
        hit = _overlap(det.boxes[det_sel[da]], gt.boxes[dc[dd]], criterion=0) > min_overlap
        in_dc[da[hit]] = True

    g_valid = valid_class[gt_sel]
    g_height = gt.boxes[gt_sel, 3] - gt.boxes[gt_sel, 1]
    d_score = det.score[det_sel]
    d_height = det_height[det_sel]
    d_is_cls = det_is_cls[det_sel]

    results = {}
    for level, difficulty in enumerate(DIFFICULTIES):
        too_hard = (
            (gt.occluded[gt_sel] > MAX_OCCLUSION[level])
            | (gt.truncated[gt_sel] > MAX_TRUNCATION[level])
            | (g_height <= MIN_HEIGHT[level])
        )
        ig = np.where((g_valid == 1) & ~too_hard, 0, 1)
        idet = np.where(d_height < MIN_HEIGHT[level], 1, np.where(d_is_cls, 0, -1))
        n_gt = int(np.sum(ig == 0))

        live = idet[cand_d] != -1
        eg, ed, eo = cand_g[live], cand_d[live], cand_o[live]
        g_deg = np.bincount(eg, minlength=len(gt_sel))
        d_deg = np.bincount(ed, minlength=len(det_sel))
        simple = (g_deg[eg] == 1) & (d_deg[ed] == 1)
        sg, sd = eg[simple], ed[simple]
        comps = _components(eg[~simple], ed[~simple]) if np.any(~simple) else []
        cg, cd, co = eg[~simple], ed[~simple], eo[~simple]

        # Pass 1: true-positive scores.
        s_tp = (ig[sg] == 0) & (idet[sd] == 0) & (d_score[sd] > _NO_DETECTION)
        tp_scores = [d_score[sd[s_tp]]]
        prepared = []
        for comp in comps:
            gs, g_local = np.unique(cg[comp], return_inverse=True)
            ds, d_local = np.unique(cd[comp], return_inverse=True)
            ov = np.zeros((len(gs), len(ds)))
            ov[g_local, d_local] = co[comp]
            args = (ig[gs].tolist(), idet[ds].tolist(), d_score[ds].tolist(), ov.tolist())
            prepared.append((ds, args))
            _, _, scores, _ = _match(*args, min_overlap, [True] * len(ds), False)
            tp_scores.append(np.array(scores, np.float64))
        thresholds = _get_thresholds(np.concatenate(tp_scores), n_gt) if n_gt else np.zeros(0)
        # The devkit writes one precision per threshold into 41 slots. getThresholds cannot keep
        # more (at the step of recall 1 only the last true positive qualifies, and it ends the
        # loop); the cap only guards the slots.
        thresholds = thresholds[:N_SAMPLE_PTS]

        # Pass 2: TP, FP, FN at every threshold.
        n_t = len(thresholds)
        lone_gt = (g_deg == 0) & (ig == 0)
        fn = np.full(n_t, int(lone_gt.sum()), np.int64)
        tp = _count_at_least(d_score[sd[(ig[sg] == 0) & (idet[sd] == 0)]], thresholds).astype(np.int64)
        # A counted box whose only candidate scores below the threshold is missed.
        only_candidate = d_score[sd[ig[sg] == 0]]
        fn += len(only_candidate) - _count_at_least(only_candidate, thresholds)
        lone_det = (d_deg == 0) & (idet == 0) & ~in_dc
        fp = _count_at_least(d_score[lone_det], thresholds).astype(np.int64)
        for ds, args in prepared:
            comp_scores = d_score[ds]
            available_count = _count_at_least(comp_scores, thresholds)
            for k in np.unique(available_count):
                at = available_count == k
                t = thresholds[np.argmax(at)]
                avail = (comp_scores >= t).tolist()
                c_tp, c_fn, _, assigned = _match(*args, min_overlap, avail, True)
                c_fp = sum(
                    1
                    for j in range(len(ds))
                    if not assigned[j] and args[1][j] == 0 and avail[j] and not in_dc[ds[j]]
                )
                tp[at] += c_tp
                fn[at] += c_fn
                fp[at] += c_fp

        precision = np.zeros(N_SAMPLE_PTS)
        recall = np.zeros(N_SAMPLE_PTS)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision[:n_t] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            recall[:n_t] = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        results[difficulty] = ClassResult(
            ap40=float(precision[1:].sum() / (N_SAMPLE_PTS - 1) * 100.0),
            ap11=float(precision[::4].sum() / 11 * 100.0),
            precision=precision,
            recall=recall,
            thresholds=thresholds,
            num_gt=n_gt,
        )
    return results


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _resolve_overlaps(classes: Sequence[str], min_overlap: Mapping[str, float] | None) -> dict[str, float]:
    table = {**MIN_OVERLAP, **(min_overlap or {})}
    lower = {k.lower(): v for k, v in table.items()}
    missing = [c for c in classes if c.lower() not in lower]
    if missing:
        raise ValueError(f"no IoU threshold for {missing}; pass min_overlap={{name: value}}")
    return {c: float(lower[c.lower()]) for c in classes}


def evaluate_detailed(
    gt: Mapping[str, Sequence[KittiObject]],
    dets: Mapping[str, Sequence[KittiObject]],
    classes: Sequence[str] = EVAL_CLASSES,
    *,
    min_overlap: Mapping[str, float] | None = None,
) -> dict[str, dict[str, ClassResult]]:
    """Like :func:`evaluate`, with precision curves, thresholds and box counts.

    Returns
    -------
    dict
        ``{class: {difficulty: ClassResult}}``.
    """
    extra = sorted(set(dets) - set(gt))
    if extra:
        raise ValueError(
            f"detections for {len(extra)} image(s) without ground truth, e.g. {extra[:5]}; "
            "pass the same image ids in both"
        )
    overlaps = _resolve_overlaps(classes, min_overlap)
    ids = sorted(gt)
    g = _flatten([gt[i] for i in ids], detections=False, ids=ids)
    d = _flatten([dets.get(i, ()) for i in ids], detections=True, ids=ids)
    return {c: _eval_class(g, d, len(ids), c, overlaps[c]) for c in classes}


def evaluate(
    gt: Mapping[str, Sequence[KittiObject]],
    dets: Mapping[str, Sequence[KittiObject]],
    classes: Sequence[str] = EVAL_CLASSES,
    *,
    min_overlap: Mapping[str, float] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """KITTI 2D AP per class and difficulty, with the official devkit's rules.

    Parameters
    ----------
    gt : mapping image id -> list of KittiObject
        Every evaluated image, with all its label lines (DontCare, Van, ... included: they
        change the result).
    dets : mapping image id -> list of KittiObject
        Detections with ``score``; a missing id means no detections for that image.
    classes : sequence of str
        Evaluated classes (case-insensitive), by default Car, Pedestrian, Cyclist.
    min_overlap : mapping class -> IoU, optional
        Overrides of the devkit's thresholds (Car 0.7, Pedestrian 0.5, Cyclist 0.5).

    Returns
    -------
    dict
        ``{class: {"easy" | "moderate" | "hard": {"ap40": float, "ap11": float}}}``, percent.

    Raises
    ------
    ValueError
        A detection without score, detections for an image absent from ``gt``, or a class
        without an IoU threshold.
    """
    detailed = evaluate_detailed(gt, dets, classes, min_overlap=min_overlap)
    return {
        c: {diff: {"ap40": r.ap40, "ap11": r.ap11} for diff, r in per.items()} for c, per in detailed.items()
    }


def load_label_dirs(
    gt_label_dir: str | os.PathLike,
    det_label_dir: str | os.PathLike,
    split_file: str | os.PathLike | None = None,
) -> tuple[dict[str, list[KittiObject]], dict[str, list[KittiObject]]]:
    """Read ground truth and detections for the images of ``split_file`` (default: all gt files).

    Returns
    -------
    gt, dets : dict image id -> list of KittiObject
        A detection file that does not exist means no detections for that image.

    Raises
    ------
    FileNotFoundError
        A missing folder or split file, or a split id without a ground-truth file.
    KittiFormatError
        Naming ``file:line`` of a malformed line, or a detection line without a score.
    """
    gt_dir, det_dir = Path(gt_label_dir), Path(det_label_dir)
    for kind, folder in (("ground-truth", gt_dir), ("detection", det_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{kind} label folder {folder} does not exist")
    if split_file is not None:
        if not Path(split_file).is_file():
            raise FileNotFoundError(f"split file {split_file} does not exist")
        ids = read_split_file(split_file)
    else:
        ids = sorted(p.stem for p in gt_dir.glob("*.txt"))
        if not ids:
            raise FileNotFoundError(f"no *.txt label files in {gt_dir}")
    gt: dict[str, list[KittiObject]] = {}
    dets: dict[str, list[KittiObject]] = {}
    for image_id in ids:
        path = gt_dir / f"{image_id}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ground truth of image {image_id} is missing")
        gt[image_id] = read_label_file(path)
        det_path = det_dir / f"{image_id}.txt"
        dets[image_id] = read_label_file(det_path, require_score=True) if det_path.is_file() else []
    return gt, dets


def evaluate_dirs(
    gt_label_dir: str | os.PathLike,
    det_label_dir: str | os.PathLike,
    split_file: str | os.PathLike | None = None,
    *,
    classes: Sequence[str] = EVAL_CLASSES,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`evaluate` on KITTI label folders (detections: label files with a 16th score column).

    See :func:`load_label_dirs` for which images are read and the errors raised.
    """
    gt, dets = load_label_dirs(gt_label_dir, det_label_dir, split_file)
    return evaluate(gt, dets, classes)


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A plain-text table: one row per class, AP|R40 and (11-point AP) per difficulty."""
    difficulties = list(DIFFICULTIES)
    head = f"{'class':<12}" + "".join(f"{d:>18}" for d in difficulties)
    lines = ["KITTI 2D detection AP (%): AP|R40 (11-point AP)", head, "-" * len(head)]
    for name, per in results.items():
        cells = []
        for d in difficulties:
            r = per.get(d)
            cells.append(f"{r['ap40']:8.2f} ({r['ap11']:6.2f})" if r is not None else f"{'-':>18}")
        lines.append(f"{name:<12}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def kitti_eval_command(
    gt_dir: str | os.PathLike,
    det_dir: str | os.PathLike,
    split: str | os.PathLike | None = None,
    json_out: str | os.PathLike | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], str]:
    """Everything ``dataparams kitti-eval GT_LABEL_DIR DET_LABEL_DIR [--split] [--json]`` does.

    Parameters
    ----------
    gt_dir, det_dir : path-like
        Label folders (``training/label_2`` and the detector's output).
    split : path-like, optional
        ImageSets file restricting the evaluated images.
    json_out : path-like, optional
        The results, shaped ``{"Car": {"easy": {"ap40": 92.1, "ap11": 90.3}, "moderate": {...},
        "hard": {...}}, ...}`` (percent).

    Returns
    -------
    results, table_text

    Raises
    ------
    FileNotFoundError, KittiFormatError
        With the path (and line) at fault; see :func:`load_label_dirs`.
    """
    gt, dets = load_label_dirs(gt_dir, det_dir, split)
    results = evaluate(gt, dets)
    table = format_table(results)
    table += f"\n{len(gt)} images, {sum(len(v) for v in dets.values())} detections"
    if json_out is not None:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results, table
