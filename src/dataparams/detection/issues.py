"""find-issues on detection runs: the box annotations whose class is likely wrong, ranked.

A detection run (:func:`~dataparams.detection.train.train_detection`) keeps, after every epoch,
each ground-truth box's temperature ``box_sigma`` and its training loss ``box_loss`` (the mean
unscaled cross-entropy of the anchors matched to it, NaN in an epoch where no anchor matched it)
in ``snapshots/epoch_NNNN.npz``, and in ``labels.npz`` where each box comes from (image, position
among its label file's objects, class, box). :func:`find_box_issues` turns that into

* ``box_issues.csv``: one row per box, most suspect first, keyed by the image id and the 1-based
  line of the box in its KITTI label file (and ``box_index``, the row of its data parameter);
* ``image_issues.csv``: one row per training image in the shape of cleanlab's object-detection
  output (``cleanlab.object_detection.rank.get_label_quality_scores``: a score per image in
  [0, 1], lower = more likely issues; ``cleanlab.object_detection.filter.find_label_issues``: a
  bool per image), here aggregated from the boxes (:func:`aggregate_image_scores`);
* ``label_issues_mask.npy`` / ``label_quality_scores.npy``: those two per-image arrays, in the
  order of the run's training images (``labels.npz`` ``image_ids``);
* ``summary.json`` (counts, the rule, the score, flagged boxes per class, and, when the data set
  records which boxes it corrupted, how good the ranking is) and ``report.html`` with the most
  suspect boxes drawn on their images.

**Score and flag rule.** The default ranking score is ``mean-loss``, each box's loss averaged
over the epochs that matched it, and the boxes are flagged by the ``class-mean`` rule of
:func:`dataparams.scores.flag_by_rule`: a box whose label quality (``exp(-mean loss)``, the
geometric mean over training of the probability its anchors gave its class) is below the mean
quality of boxes of its class. Why this rather than the mixture on sigma: on the synthetic KITTI
set with 20% of the boxes given another class, the box loss finds them with AUROC 0.88 and sigma
with 0.77 after 12 epochs (``benchmarks/results/detection_synth/results.md``): a box's sigma
mostly tracks how hard it is (occlusion, size, difficulty), so a mixture on sigma would flag the
hard boxes rather than the wrong ones. The mean over epochs rather than the last loss: on one
full ``kitti-synth/instance`` run on ``SYNTHETIC_DATA_FLIP20`` (seed 1, 3,622 boxes, 724 flipped;
not a committed table) it ranked the flipped boxes with AUROC 0.904, the last loss 0.885, sigma
0.775, sigma's geometric mean 0.749. The rule is per class because the classes' losses differ in
level (a class the detector finds hard would otherwise be flagged whole), and the loss exists in
baseline runs too, where sigma is 1. Both rules flag generously on detection boxes: on that run
``class-mean`` flagged 62% of the boxes (recall 0.97, precision 0.31) and the mixture on the log
mean loss 56% (0.97, 0.34), for 20% truly wrong; read the flags as a shortlist and the rank as
the result. ``--score sigma`` / ``sigma-mean`` rank by the temperature and flag by the
two-component mixture on its log, as classification does.

``label_score`` is always the quality implied by ``mean-loss`` (in [0, 1], high = clean), as
classification's ``issues.csv`` computes it; boxes never matched by an anchor have no loss, hence
no score, are ranked last and never flagged (their ``label_score`` is empty).

Notation: ``N`` training boxes (the data parameters, by ``box_index``), ``I`` training images,
``K`` classes, ``E`` snapshot epochs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.analysis.issues_html import BASE_CSS
from dataparams.analysis.metrics import auroc, average_precision
from dataparams.config import ConfigError
from dataparams.runs import RunDir, RunDirError
from dataparams.scores import flag_by_rule, label_quality_scores

__all__ = [
    "BOX_RULES",
    "BOX_SCORES",
    "DEFAULT_BOX_SCORE",
    "BoxIssueReport",
    "aggregate_image_scores",
    "find_box_issues",
]

#: Ranking scores of a box, larger = more suspect (the vocabulary of :data:`dataparams.scores.SCORE_NAMES`):
#: ``mean-loss`` its loss averaged over the epochs up to the chosen one (epochs where no anchor
#: matched it left out), ``last-loss`` its latest known loss, ``sigma`` its temperature at the
#: epoch, ``sigma-mean`` the geometric mean of its temperature over the epochs.
BOX_SCORES = ("mean-loss", "last-loss", "sigma", "sigma-mean")
DEFAULT_BOX_SCORE = "mean-loss"
#: The flag rules that apply to box scores (``bound`` needs a bounded loss, ``confident`` class
#: probabilities, neither of which a detection run keeps).
BOX_RULES = ("auto", "class-mean", "mixture")
_SIGMA_SCORES = ("sigma", "sigma-mean")
#: Boxes drawn in report.html.
REPORT_BOXES = 24
_BOX_TOLERANCE = 0.011  # labels.npz keeps the label's 2-decimal coordinates in float32


# ----------------------------------------------------------------------------------------------
# per-image aggregation
# ----------------------------------------------------------------------------------------------
def aggregate_image_scores(image_index: Any, label_score: Any, flagged: Any, num_images: int) -> dict[str, np.ndarray]:
    """Per-image label quality and issue flag from the boxes', as cleanlab's object-detection output.

    Aggregation: an image's ``label_score`` is the **minimum** of its boxes' ``label_score`` (an
    image is as suspect as its worst box; boxes without a score are left out, and an image with
    no scored box gets 1.0, nothing in it being suspect), and ``is_label_issue`` is true when
    **any** of its boxes is flagged.

    Parameters
    ----------
    image_index : array_like (N,) int in [0, I)
        Each box's image.
    label_score : array_like (N,) float
        Each box's label quality in [0, 1]; NaN where unknown.
    flagged : array_like (N,) bool
    num_images : int
        ``I``; images without boxes get score 1.0 and no issue.

    Returns
    -------
    dict of (I,) arrays
        ``label_score`` (float64), ``is_label_issue`` (bool), ``n_boxes``, ``n_flagged`` and
        ``n_scored`` (int64).
    """
    img = np.asarray(image_index, dtype=np.int64).reshape(-1)
    score = np.asarray(label_score, dtype=np.float64).reshape(-1)
    flag = np.asarray(flagged, dtype=bool).reshape(-1)
    if not (img.shape == score.shape == flag.shape):
        raise ValueError(f"image_index, label_score and flagged must have one entry per box, got "
                         f"{img.shape[0]}, {score.shape[0]} and {flag.shape[0]}")
    if img.size and (img.min() < 0 or img.max() >= num_images):
        raise ValueError(f"image_index must lie in [0, {num_images})")
    known = np.isfinite(score)
    quality = np.ones(int(num_images), dtype=np.float64)
    np.minimum.at(quality, img[known], score[known])
    n_flagged = np.bincount(img[flag], minlength=num_images).astype(np.int64)
    return {
        "label_score": quality,
        "is_label_issue": n_flagged > 0,
        "n_boxes": np.bincount(img, minlength=num_images).astype(np.int64),
        "n_flagged": n_flagged,
        "n_scored": np.bincount(img[known], minlength=num_images).astype(np.int64),
    }


def _ranks(order: np.ndarray) -> np.ndarray:
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(1, order.shape[0] + 1)
    return rank


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _num(values: np.ndarray) -> list[str]:
    return ["" if not math.isfinite(v) else f"{v:.6g}" for v in np.asarray(values, dtype=np.float64).tolist()]


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
@dataclass
class BoxIssueReport:
    """Every training box of a detection run, scored and ranked by how likely its class is wrong.

    Box arrays have shape ``(N,)`` (``boxes`` ``(N, 4)``) and are indexed by ``box_index``, the
    box's data parameter; image arrays ``(I,)`` by the image's position in ``image_ids``.

    Attributes
    ----------
    run_dir : Path
    score_name : str
        One of :data:`BOX_SCORES`.
    epoch : int
        The snapshot epoch of ``sigma`` (and the last one the means cover).
    epochs : list of int
        The snapshot epochs the means are over.
    score : ndarray of float
        The ranking score, larger = more suspect; NaN for a box with no loss (loss scores).
    rank : ndarray of int
        1 = most suspect. Ties go to the lower ``label_score``, then the lower ``box_index``;
        boxes without a score come last.
    is_flagged : ndarray of bool
        By the rule in ``estimate["rule"]`` (:func:`dataparams.scores.flag_by_rule`).
    label_score : ndarray of float
        ``exp(-mean_loss)`` in [0, 1], high = clean; NaN without a loss.
    sigma, sigma_mean : ndarray of float
        Box temperature at ``epoch`` and its geometric mean over ``epochs``.
    mean_loss, last_loss : ndarray of float
        Box loss averaged over the epochs that matched it, and its latest known value (NaN when
        never matched).
    loss_epochs : ndarray of int
        How many of ``epochs`` had a loss for the box.
    labels : ndarray of int
        Given class, ``0..K-1`` (position in ``classes``).
    classes : list of str
    boxes : ndarray (N, 4)
        ``x1, y1, x2, y2`` in pixels of the original image, as labelled.
    image_index : ndarray of int
    image_ids : list of str
    object_index : ndarray of int
        0-based position of the box among its label file's objects (``labels.npz`` ``line_index``).
    line : ndarray of int
        1-based line number of the box in ``label_dir/<image id>.txt`` (blank lines counted).
    difficulty, occluded : ndarray of int
        KITTI difficulty level (0 easy .. 2 hard, -1 none) and occlusion level.
    label_dir, image_dir : Path or None
        Where the label files and images were (``None`` when the data are gone; a COCO-format
        run has no label files).
    image_files : dict or None
        A COCO-format run's image file per image id (its instances file's ``file_name``), in
        ``image_dir``; None: KITTI's ``<image id>.png``.
    true_labels, is_flipped : ndarray or None
        The truth, when the data set records it (synthetic sets with ``flip_fraction``).
    estimate : dict
        ``rule``, ``threshold`` and what the rule estimated.
    notes : list of str
    """

    run_dir: Path
    score_name: str
    epoch: int
    epochs: list[int]
    score: np.ndarray
    rank: np.ndarray
    is_flagged: np.ndarray
    label_score: np.ndarray
    sigma: np.ndarray
    sigma_mean: np.ndarray
    mean_loss: np.ndarray
    last_loss: np.ndarray
    loss_epochs: np.ndarray
    labels: np.ndarray
    classes: list[str]
    boxes: np.ndarray
    image_index: np.ndarray
    image_ids: list[str]
    object_index: np.ndarray
    line: np.ndarray
    difficulty: np.ndarray
    occluded: np.ndarray
    label_dir: Path | None = None
    image_dir: Path | None = None
    image_files: dict[str, str] | None = None
    true_labels: np.ndarray | None = None
    is_flipped: np.ndarray | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.score.shape[0])

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def order(self) -> np.ndarray:
        """Box indices from the most to the least suspect, (N,)."""
        return np.argsort(self.rank, kind="stable")

    # -- images ----------------------------------------------------------------------------
    def images(self) -> dict[str, np.ndarray]:
        """Per-image arrays (I,): :func:`aggregate_image_scores` plus ``rank`` (1 = most suspect:
        lowest ``label_score``, then most flagged boxes, then image order), ``top_box`` (the box
        index of the image's most suspect box, -1 for none) and, with the truth, ``n_flipped``."""
        out = aggregate_image_scores(self.image_index, self.label_score, self.is_flagged, self.num_images)
        order = np.lexsort((np.arange(self.num_images), -out["n_flagged"], out["label_score"]))
        out["rank"] = _ranks(order)
        top = np.full(self.num_images, -1, dtype=np.int64)
        for b in self.order[::-1]:  # the last write per image is its best-ranked box
            top[self.image_index[b]] = b
        out["top_box"] = top
        if self.is_flipped is not None:
            out["n_flipped"] = np.bincount(self.image_index[self.is_flipped], minlength=self.num_images).astype(np.int64)
        return out

    # -- summary ----------------------------------------------------------------------------
    def per_class(self) -> list[dict[str, Any]]:
        """Per given class: ``class``, ``n`` boxes, ``n_flagged`` (and ``n_flipped`` with the truth)."""
        k = len(self.classes)
        n = np.bincount(self.labels, minlength=k)
        flagged = np.bincount(self.labels[self.is_flagged], minlength=k)
        rows = [{"class": self.classes[c], "n": int(n[c]), "n_flagged": int(flagged[c])} for c in range(k)]
        if self.is_flipped is not None:
            flipped = np.bincount(self.labels[self.is_flipped], minlength=k)
            for c, row in enumerate(rows):
                row["n_flipped"] = int(flipped[c])
        return rows

    def summary(self) -> dict[str, Any]:
        """Counts, rule, score, per-class flags and, with the truth, precision / recall / AUROC.

        ``auroc`` and ``average_precision`` are of the ranking score over the boxes that have one;
        ``auroc_sigma`` (sigma at ``epoch``) and ``auroc_mean_loss`` are given for comparison, and
        ``image_auroc`` of ``1 - label_score`` per image against "the image has a flipped box".
        """
        images = self.images()
        n_flagged = int(self.is_flagged.sum())
        out: dict[str, Any] = {
            "kind": "detection",
            "run_dir": str(self.run_dir),
            "score": self.score_name,
            "epoch": self.epoch,
            "epochs": len(self.epochs),
            "rule": self.estimate.get("rule"),
            "threshold": _finite_or_none(self.estimate.get("threshold")),
            "image_aggregation": "min of the boxes' label_score; is_label_issue = any box flagged",
            "n_boxes": self.n,
            "n_scored": int(np.isfinite(self.score).sum()),
            "n_flagged": n_flagged,
            "fraction_flagged": n_flagged / self.n if self.n else None,
            "n_images": self.num_images,
            "n_images_flagged": int(images["is_label_issue"].sum()),
            "per_class": self.per_class(),
        }
        if self.is_flipped is not None:
            bad = self.is_flipped
            tp = int((self.is_flagged & bad).sum())
            n_bad = int(bad.sum())
            known = np.isfinite(self.score)
            loss_known = np.isfinite(self.mean_loss)
            has_bad = images["n_flipped"] > 0
            out.update(
                n_corrupted=n_bad,
                precision=tp / n_flagged if n_flagged else None,
                recall=tp / n_bad if n_bad else None,
                auroc=_finite_or_none(auroc(self.score[known], bad[known])) if known.any() else None,
                average_precision=(_finite_or_none(average_precision(self.score[known], bad[known]))
                                   if known.any() else None),
                auroc_sigma=_finite_or_none(auroc(self.sigma, bad)),
                auroc_mean_loss=(_finite_or_none(auroc(self.mean_loss[loss_known], bad[loss_known]))
                                 if loss_known.any() else None),
                n_images_corrupted=int(has_bad.sum()),
                image_auroc=_finite_or_none(auroc(1.0 - images["label_score"], has_bad)),
            )
        return out

    # -- tables -----------------------------------------------------------------------------
    def box_columns(self) -> dict[str, list[Any]]:
        """``box_issues.csv`` as columns of text, most suspect first."""
        o = self.order
        names = self.classes
        cols: dict[str, list[Any]] = {
            "rank": self.rank[o].tolist(),
            "image_id": [self.image_ids[i] for i in self.image_index[o].tolist()],
            "line": self.line[o].tolist(),
            "box_index": o.tolist(),
            "object_index": self.object_index[o].tolist(),
            "given_label": [names[c] for c in self.labels[o].tolist()],
            "x1": _num(self.boxes[o, 0]), "y1": _num(self.boxes[o, 1]),
            "x2": _num(self.boxes[o, 2]), "y2": _num(self.boxes[o, 3]),
            "score": _num(self.score[o]),
            "sigma": _num(self.sigma[o]),
            "sigma_mean": _num(self.sigma_mean[o]),
            "mean_loss": _num(self.mean_loss[o]),
            "last_loss": _num(self.last_loss[o]),
            "loss_epochs": self.loss_epochs[o].tolist(),
            "label_score": _num(self.label_score[o]),
            "is_label_issue": self.is_flagged[o].tolist(),
            "flagged": self.is_flagged[o].tolist(),
            "difficulty": self.difficulty[o].tolist(),
            "occluded": self.occluded[o].tolist(),
        }
        if self.is_flipped is not None and self.true_labels is not None:
            cols["true_label"] = [names[c] for c in self.true_labels[o].tolist()]
            cols["is_corrupted"] = self.is_flipped[o].tolist()
        return cols

    def image_columns(self) -> dict[str, list[Any]]:
        """``image_issues.csv`` as columns of text, most suspect image first."""
        img = self.images()
        o = np.argsort(img["rank"], kind="stable")
        cols: dict[str, list[Any]] = {
            "rank": img["rank"][o].tolist(),
            "image_id": [self.image_ids[i] for i in o.tolist()],
            "image_index": o.tolist(),
            "label_score": _num(img["label_score"][o]),
            "is_label_issue": img["is_label_issue"][o].tolist(),
            "n_boxes": img["n_boxes"][o].tolist(),
            "n_flagged": img["n_flagged"][o].tolist(),
            "n_scored": img["n_scored"][o].tolist(),
            "top_box_rank": ["" if b < 0 else int(self.rank[b]) for b in img["top_box"][o].tolist()],
        }
        if "n_flipped" in img:
            cols["n_corrupted"] = img["n_flipped"][o].tolist()
        return cols

    @staticmethod
    def _write_columns(path: Path, columns: dict[str, list[Any]]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))
        return path

    def write_box_csv(self, path: str | os.PathLike[str]) -> Path:
        return self._write_columns(Path(path), self.box_columns())

    def write_image_csv(self, path: str | os.PathLike[str]) -> Path:
        return self._write_columns(Path(path), self.image_columns())

    def save(self, out_dir: str | os.PathLike[str], *, html_report: bool = True,
             top: int = REPORT_BOXES) -> dict[str, Path]:
        """Write ``box_issues.csv``, ``image_issues.csv``, ``label_issues_mask.npy`` and
        ``label_quality_scores.npy`` (per image, cleanlab's object-detection outputs),
        ``summary.json`` and ``report.html``; return the paths by name."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"box_issues_csv": self.write_box_csv(out / "box_issues.csv"),
                 "image_issues_csv": self.write_image_csv(out / "image_issues.csv")}
        images = self.images()
        np.save(out / "label_issues_mask.npy", images["is_label_issue"])
        np.save(out / "label_quality_scores.npy", images["label_score"])
        files["label_issues_mask"] = out / "label_issues_mask.npy"
        files["label_quality_scores"] = out / "label_quality_scores.npy"
        summary = {**self.summary(), "notes": self.notes}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        files["summary"] = out / "summary.json"
        if html_report:
            files["report_html"] = write_box_issues_html(self, out / "report.html", top=top)
        return files


# ----------------------------------------------------------------------------------------------
# reading a run
# ----------------------------------------------------------------------------------------------
def _coco_images(root: Path, data: dict[str, Any], notes: list[str]) -> tuple[Path | None, dict[str, str] | None]:
    """The training split's image folder and ``{image id: file_name}`` from its instances file."""
    import json

    split = str(data.get("train_split", "train"))
    ann = root / str(data.get("ann_file", "annotations/instances_{split}.json")).format(split=split)
    try:
        images = json.loads(ann.read_text()).get("images", [])
        files = {str(int(im["id"])): str(im["file_name"]) for im in images}
    except (OSError, ValueError, KeyError, TypeError) as e:
        notes.append(f"{ann} not readable ({e}): boxes listed without pictures")
        return None, None
    return root / str(data.get("image_dir", "{split}")).format(split=split), files


def _label_lines(label_dir: Path | None, image_ids: list[str], image_index: np.ndarray, object_index: np.ndarray,
                 labels: np.ndarray, classes: list[str], boxes: np.ndarray,
                 notes: list[str]) -> np.ndarray:
    """The 1-based file line of every box; checks the line still holds the box's class and box."""
    fallback = object_index.astype(np.int64) + 1
    if label_dir is None or not label_dir.is_dir():
        notes.append(f"label folder {label_dir} not found: line = object position + 1 (right unless the "
                     "label files have blank lines)")
        return fallback
    from dataparams.detection.kitti import KittiFormatError, parse_label_line

    line = fallback.copy()
    missing: list[str] = []
    changed = 0
    by_image = np.argsort(image_index, kind="stable")
    starts = np.searchsorted(image_index[by_image], np.arange(len(image_ids) + 1))
    for i in np.unique(image_index).tolist():
        path = label_dir / f"{image_ids[i]}.txt"
        try:
            text = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            missing.append(path.name)
            continue
        numbers = [k + 1 for k, t in enumerate(text) if t.strip()]
        for b in by_image[starts[i]:starts[i + 1]].tolist():
            j = int(object_index[b])
            if j >= len(numbers):
                changed += 1
                continue
            line[b] = numbers[j]
            try:
                obj = parse_label_line(text[numbers[j] - 1])
            except KittiFormatError:
                changed += 1
                continue
            if obj.type != classes[int(labels[b])] or not np.allclose(obj.bbox, boxes[b], atol=_BOX_TOLERANCE, rtol=0):
                changed += 1
    if missing:
        notes.append(f"{len(missing)} label file(s) missing from {label_dir} (e.g. {missing[0]}): their lines "
                     "are object position + 1")
    if changed:
        notes.append(f"{changed} box(es) no longer match their line in {label_dir}: the label files changed "
                     "since the run")
    return line


def find_box_issues(
    run_dir: str | os.PathLike[str],
    *,
    score: str = DEFAULT_BOX_SCORE,
    epoch: int | None = None,
    rule: str = "auto",
) -> BoxIssueReport:
    """Rank the training boxes of a detection run by how likely their class label is wrong.

    Parameters
    ----------
    run_dir : path-like
        A run directory written by :func:`~dataparams.detection.train.train_detection`.
    score : {"mean-loss", "last-loss", "sigma", "sigma-mean"}, default "mean-loss"
        See :data:`BOX_SCORES` and the module notes for the default.
    epoch : int, optional
        The (1-based) snapshot epoch; the means cover the epochs up to it. Default: the last.
    rule : {"auto", "class-mean", "mixture"}, default "auto"
        ``auto``: ``class-mean`` for the loss scores, ``mixture`` for the sigma scores.

    Returns
    -------
    BoxIssueReport

    Raises
    ------
    RunDirError
        Not a detection run, no snapshot (of ``epoch``), a sigma score on a run without the
        box curriculum, or no box with a loss.
    ValueError
        An unknown ``score`` or ``rule``.
    """
    from dataparams.detection.curriculum import BoxTable
    from dataparams.detection.figures import is_detection_run

    if score not in BOX_SCORES:
        raise ConfigError(f"score must be one of {', '.join(BOX_SCORES)}, got {score!r}")
    if rule not in BOX_RULES:
        raise ConfigError(f"rule must be one of {', '.join(BOX_RULES)} for a detection run, got {rule!r} (bound needs "
                         "a bounded loss and confident class probabilities; a detection run keeps neither)")
    path = Path(run_dir)
    if not is_detection_run(path):
        raise RunDirError(f"{path} is not a detection run (no config.json with data.train_split and model.image_size)")
    run = RunDir(path)
    config = run.read_json("config.json")
    try:
        table = BoxTable.from_arrays(run.load_arrays("labels.npz"))
    except KeyError as e:
        raise RunDirError(f"{path / 'labels.npz'}: {e.args[0]}") from None
    n = table.num_boxes
    notes: list[str] = []
    curriculum = bool(config.get("curriculum", {}).get("instance_curriculum", False))
    if score in _SIGMA_SCORES and not curriculum:
        raise RunDirError(f"{path} was trained without box data parameters (curriculum.instance_curriculum is false): "
                          "sigma is 1 for every box; rank by a loss score (mean-loss, last-loss)")

    available = run.snapshot_epochs()
    if not available:
        raise RunDirError(f"{run.snapshot_dir}: no snapshot (the run has not finished an epoch)")
    epoch = int(available[-1] if epoch is None else epoch)
    if epoch not in available:
        raise RunDirError(f"{run.snapshot_file(epoch)} is missing (snapshots: epochs {available[0]}-{available[-1]})")
    log_sigma_sum = np.zeros(n)
    loss_sum = np.zeros(n)
    loss_count = np.zeros(n, dtype=np.int64)
    last_loss = np.full(n, np.nan)
    sigma = None
    used: list[int] = []
    for e in (e for e in available if e <= epoch):
        try:
            snap = run.load_snapshot(e)
        except RunDirError as err:
            if e == epoch:
                raise
            notes.append(f"skipped: {err}")
            continue
        if "box_sigma" not in snap or "box_loss" not in snap or snap["box_sigma"].shape != (n,):
            raise RunDirError(f"{run.snapshot_file(e)} lacks box_sigma / box_loss of the {n} boxes of labels.npz")
        s = snap["box_sigma"].astype(np.float64)
        loss = snap["box_loss"].astype(np.float64)
        log_sigma_sum += np.log(np.maximum(s, 1e-12))
        seen = np.isfinite(loss)
        loss_sum[seen] += loss[seen]
        loss_count += seen
        last_loss[seen] = loss[seen]
        used.append(e)
        if e == epoch:
            sigma = s
    assert sigma is not None
    sigma_mean = np.exp(log_sigma_sum / len(used))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_loss = np.where(loss_count > 0, loss_sum / np.maximum(loss_count, 1), np.nan)
    values = {"mean-loss": mean_loss, "last-loss": last_loss, "sigma": sigma, "sigma-mean": sigma_mean}[score]
    known = np.isfinite(values)
    if not known.any():
        raise RunDirError(f"{run.snapshot_dir}: no box has a {score} up to epoch {epoch}")
    if (~known).any():
        notes.append(f"{int((~known).sum())} box(es) never matched by an anchor have no {score}: ranked last, "
                     "not flagged")
    label_score = np.full(n, np.nan)
    loss_known = np.isfinite(mean_loss)
    label_score[loss_known] = label_quality_scores(mean_loss[loss_known], loss="ce")

    labels = table.labels.astype(np.int64) - 1  # 1..K -> 0..K-1
    if rule == "auto":
        rule = "mixture" if score in _SIGMA_SCORES else "class-mean"
    flags = flag_by_rule(values[known], labels=labels[known], rule=rule, loss="ce")
    flagged = np.zeros(n, dtype=bool)
    flagged[known] = flags["mask"]
    est = {**flags["estimate"], "rule": flags["rule"], "threshold": flags["threshold"]}
    if est.get("note"):
        notes.append(f"mislabeled-count estimate: {est['note']}")

    # Most suspect first: score descending, then lower label quality, then box index.
    order = np.lexsort((np.arange(n), np.nan_to_num(label_score, nan=np.inf),
                        -np.where(known, values, -np.inf), ~known))
    classes = [str(c) for c in table.classes.tolist()]
    image_ids = [str(i) for i in table.image_ids.tolist()]
    data = config.get("data", {})
    root = Path(str(data.get("root", "")))
    image_files = None
    if data.get("format", "kitti") == "coco":
        # No label files: a box is its annotation, its "line" its position among the image's
        # annotations (+1); the images are named by the training split's instances file.
        label_dir = None
        image_dir, image_files = _coco_images(root, data, notes) if str(root) else (None, None)
        line = table.line_index.astype(np.int64) + 1
    else:
        label_dir = root / "training" / "label_2" if str(root) else None
        image_dir = root / "training" / "image_2" if str(root) else None
        line = _label_lines(label_dir, image_ids, table.image_index, table.line_index, labels, classes,
                            table.boxes.astype(np.float64), notes)
    knows_truth = bool(table.is_flipped.any()) or (str(root) != "" and (root / "training" / "truth.json").is_file())
    if len(used) < len(available[: available.index(epoch) + 1]):
        notes.append(f"means over {len(used)} readable snapshot(s) up to epoch {epoch}")
    return BoxIssueReport(
        run_dir=path,
        score_name=score,
        epoch=epoch,
        epochs=used,
        score=np.where(known, values, np.nan),
        rank=_ranks(order),
        is_flagged=flagged,
        label_score=label_score,
        sigma=sigma,
        sigma_mean=sigma_mean,
        mean_loss=mean_loss,
        last_loss=last_loss,
        loss_epochs=loss_count,
        labels=labels,
        classes=classes,
        boxes=table.boxes.astype(np.float64).reshape(-1, 4),
        image_index=table.image_index.astype(np.int64),
        image_ids=image_ids,
        object_index=table.line_index.astype(np.int64),
        line=line,
        difficulty=table.difficulty.astype(np.int64),
        occluded=table.occluded.astype(np.int64),
        label_dir=label_dir if label_dir is not None and label_dir.is_dir() else None,
        image_dir=image_dir if image_dir is not None and image_dir.is_dir() else None,
        image_files=image_files,
        true_labels=(table.true_labels.astype(np.int64) - 1) if knows_truth else None,
        is_flipped=table.is_flipped.astype(bool) if knows_truth else None,
        estimate=est,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# report.html
# ----------------------------------------------------------------------------------------------
_CSS = BASE_CSS + """
.card { width: 230px; border: 1px solid #ddd; padding: 6px; font-size: 0.8em; }
.card img { width: 218px; height: 160px; object-fit: contain; background: #f4f4f4; }
.flag { color: #b00; }
"""
_RULES = {"class-mean": "per-class rule (label quality below the mean of its class's boxes)",
          "mixture": "two-component mixture on the log of the score"}
_CROP_SIDE = 200  # pixels of the longer side of a drawn crop


def _box_crop(report: BoxIssueReport, b: int) -> str | None:
    """The box on its image (with context around it), outlined and labelled, as a PNG data URI."""
    if report.image_dir is None:
        return None
    from PIL import Image, ImageDraw

    image_id = report.image_ids[int(report.image_index[b])]
    name = f"{image_id}.png" if report.image_files is None else report.image_files.get(image_id)
    if name is None:
        return None
    path = report.image_dir / name
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except OSError:
        return None
    x1, y1, x2, y2 = (float(v) for v in report.boxes[b])
    pad = 0.5 * max(x2 - x1, y2 - y1) + 8.0
    left, top = max(0, int(math.floor(x1 - pad))), max(0, int(math.floor(y1 - pad)))
    right, bottom = min(image.width, int(math.ceil(x2 + pad))), min(image.height, int(math.ceil(y2 + pad)))
    if right <= left or bottom <= top:
        left, top, right, bottom = 0, 0, image.width, image.height
    crop = image.crop((left, top, right, bottom))
    f = _CROP_SIDE / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * f)), max(1, round(crop.height * f))), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(crop)
    color = (220, 0, 0) if report.is_flagged[b] else (255, 150, 0)
    draw.rectangle([(x1 - left) * f, (y1 - top) * f, (x2 - left) * f, (y2 - top) * f], outline=color, width=2)
    text = f"{report.classes[int(report.labels[b])]}, sigma={report.sigma[b]:.2f}"
    tx, ty = 2, 2
    bbox = draw.textbbox((tx, ty), text)
    draw.rectangle([bbox[0] - 1, bbox[1] - 1, bbox[2] + 1, bbox[3] + 1], fill=(0, 0, 0))
    draw.text((tx, ty), text, fill=color)
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_box_issues_html(report: BoxIssueReport, path: str | os.PathLike[str], *, top: int = REPORT_BOXES) -> Path:
    """A self-contained page: summary, per-class table, the most suspect images, and the ``top``
    most suspect boxes drawn on their images (crops embedded as PNG data URIs; cards without a
    picture when the images are gone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    e = html.escape
    s = report.summary()
    title = f"Box label issues: {report.run_dir.name}"
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    parts.append(f"<p>Ranked by <b>{e(report.score_name)}</b> (epoch {report.epoch}, means over "
                 f"{len(report.epochs)} epoch(s)); flagged {s['n_flagged']:,} of {s['n_boxes']:,} boxes "
                 f"({100 * (s['fraction_flagged'] or 0):.1f}%) by the {e(_RULES.get(s['rule'], str(s['rule'])))}, "
                 f"without knowing the noise rate; {s['n_images_flagged']:,} of {s['n_images']:,} images have a "
                 "flagged box (image label_score = min of its boxes').</p>")
    if "n_corrupted" in s:
        def fmt(v: float | None, pct: bool = False) -> str:
            return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.4f}")

        parts.append(f"<p>Known truth: {s['n_corrupted']:,} boxes with a wrong class; flagged precision "
                     f"{fmt(s['precision'], True)}, recall {fmt(s['recall'], True)}; AUROC {fmt(s['auroc'])} "
                     f"(sigma {fmt(s['auroc_sigma'])}, mean loss {fmt(s['auroc_mean_loss'])}), average precision "
                     f"{fmt(s['average_precision'])}; per image AUROC {fmt(s['image_auroc'])}.</p>")
    for note in report.notes:
        parts.append(f"<p class='id'>note: {e(note)}</p>")
    parts.append("<h2>Per class</h2><table><tr><th>given class</th><th>boxes</th><th>flagged</th><th>flagged %</th>"
                 + ("<th>truly wrong</th>" if report.is_flipped is not None else "") + "</tr>")
    for row in s["per_class"]:
        share = f"{100 * row['n_flagged'] / row['n']:.1f}%" if row["n"] else "n/a"
        extra = f"<td>{row['n_flipped']:,}</td>" if "n_flipped" in row else ""
        parts.append(f"<tr><td>{e(row['class'])}</td><td>{row['n']:,}</td><td>{row['n_flagged']:,}</td>"
                     f"<td>{share}</td>{extra}</tr>")
    parts.append("</table>")

    img = report.image_columns()
    shown = min(10, len(img["rank"]))
    parts.append(f"<h2>The {shown} most suspect images</h2><table><tr><th>rank</th><th>image</th>"
                 "<th>label_score</th><th>boxes</th><th>flagged</th></tr>")
    for r in range(shown):
        parts.append(f"<tr><td>{img['rank'][r]}</td><td>{e(img['image_id'][r])}</td><td>{img['label_score'][r]}</td>"
                     f"<td>{img['n_boxes'][r]}</td><td>{img['n_flagged'][r]}</td></tr>")
    parts.append("</table>")

    order = report.order[: max(0, int(top))]
    parts.append(f"<h2>The {len(order)} most suspect boxes</h2>")
    if report.image_dir is None:
        parts.append("<p>(images not found: boxes listed without pictures)</p>")
    parts.append("<div class='grid'>")
    for b in order.tolist():
        uri = _box_crop(report, b)
        image_id = report.image_ids[int(report.image_index[b])]
        given = report.classes[int(report.labels[b])]
        truth = ""
        if report.is_flipped is not None and report.true_labels is not None:
            truth = (f"<br><span class='flag'>truly {e(report.classes[int(report.true_labels[b])])}</span>"
                     if report.is_flipped[b] else "<br>truth: as given")
        ls = report.label_score[b]
        picture = f"<img src='{uri}' alt='box {b}'><br>" if uri else ""
        flag = "<span class='flag'>flagged</span>" if report.is_flagged[b] else "not flagged"
        # A COCO box is an annotation of its image, a KITTI box a line of the image's label file.
        where = (f"image {e(image_id)}, annotation {report.line[b]}" if report.image_files is not None
                 else f"{e(image_id)}.txt line {report.line[b]}")
        parts.append(
            f"<div class='card'>{picture}#{report.rank[b]} <span class='id'>{where}"
            f"</span><br>given: <b>{e(given)}</b>, {flag}<br>sigma {report.sigma[b]:.3g}, "
            f"mean loss {report.mean_loss[b]:.3g}, label_score {'n/a' if not math.isfinite(ls) else f'{ls:.3f}'}"
            f"{truth}</div>")
    parts.append("</div>")
    parts.append("<p>Every box in rank order: <code>box_issues.csv</code>; every image: "
                 "<code>image_issues.csv</code>.</p></body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
