"""Figure 3 of the paper and its numbers, from detection run directories (sec. 3.3).

* :func:`plot_box_sigma_images` -- training images with their boxes drawn at a thickness
  proportional to sigma, at several epochs (Figure 3);
* :func:`plot_sigma_by_level` -- mean sigma over training per KITTI difficulty level and per
  occlusion level, mean ± std over seeds;
* :func:`plot_rank_correlation` -- Spearman's rho of sigma with the occlusion level and with the
  difficulty per epoch: positive means harder boxes are held back, i.e. the order is
  easy -> moderate -> hard;
* :func:`plot_flipped_auroc` -- on a corrupted set, the AUROC of sigma (and of the per-box loss)
  for the boxes whose class was flipped;
* :func:`plot_ap_over_epochs` -- KITTI AP|R40 at the evaluation epochs;
* :func:`object_detection_report` -- all of these for a list of run directories, with a Markdown
  and an HTML summary (mean ± std over seeds of the final AP per class and difficulty).

Figures follow the house style of :mod:`dataparams.analysis.plotting` (Agg canvas, no pyplot,
bands of one std over seeds). Notation: ``R`` runs (seeds), ``E`` epochs, ``N`` boxes,
``I`` images. Epochs are 1-based.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dataparams.analysis.metrics import over_seeds
from dataparams.analysis.plotting import (
    as_runs,
    cycle_color,
    format_epoch_axis,
    legend_below,
    new_figure,
    plot_band,
    save_figure,
)
from dataparams.detection.curriculum import OCCLUSION_NAMES, BoxTable
from dataparams.detection.kitti import DIFFICULTIES
from dataparams.runs import RunDir

__all__ = [
    "DetectionRun",
    "choose_figure_images",
    "is_detection_run",
    "load_detection_run",
    "object_detection_report",
    "plot_ap_over_epochs",
    "plot_box_sigma_images",
    "plot_flipped_auroc",
    "plot_rank_correlation",
    "plot_sigma_by_level",
]

Curve = tuple[ArrayLike, ArrayLike]  # epochs (E,), values (R, E)
_OCCLUSION_COLORS = ("tab:green", "tab:orange", "tab:red", "tab:purple")
_DIFFICULTY_LEVELS = {"easy": 0, "moderate": 1, "hard": 2, "none": -1}


# ----------------------------------------------------------------------------------------------
# Figure 3: boxes drawn at a thickness proportional to sigma
# ----------------------------------------------------------------------------------------------
def plot_box_sigma_images(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    sigma: Sequence[np.ndarray],
    epochs: Sequence[int],
    path: str | os.PathLike[str],
    *,
    occlusion: Sequence[np.ndarray] | None = None,
    title: str | None = None,
    max_linewidth: float = 7.0,
) -> Path:
    """Figure 3: each image at several epochs, each box's line width proportional to its sigma.

    Parameters
    ----------
    images : sequence of I arrays (H, W, 3) or (H, W), values in [0, 1] or uint8
    boxes : sequence of I arrays (M_i, 4)
        xyxy in the image's pixels.
    sigma : sequence of I arrays (E, M_i)
        The boxes' sigma at each of the ``E`` epochs.
    epochs : sequence of E ints
        The epochs, one column each.
    path : path-like
    occlusion : sequence of I int arrays (M_i,), optional
        KITTI occlusion levels, which colour the boxes (green visible, orange partly, red
        largely occluded, purple unknown).
    max_linewidth : float
        Line width (points) of the largest sigma shown; every width is ``max_linewidth * sigma /
        max(sigma)``, i.e. proportional to sigma as in the paper.

    Returns
    -------
    Path
    """
    if not (len(images) == len(boxes) == len(sigma)) or not images:
        raise ValueError("images, boxes and sigma must have the same, non-zero length")
    num_epochs = len(epochs)
    for i, s in enumerate(sigma):
        if np.asarray(s).shape != (num_epochs, np.asarray(boxes[i]).reshape(-1, 4).shape[0]):
            raise ValueError(f"sigma[{i}] must have shape (E, M_i) = ({num_epochs}, {len(boxes[i])}), "
                             f"got {np.asarray(s).shape}")
    top = max(float(np.max(s)) for s in sigma if np.size(s)) if any(np.size(s) for s in sigma) else 1.0
    h, w = np.asarray(images[0]).shape[:2]
    cell_w = 3.2
    fig = new_figure(cell_w * num_epochs, cell_w * h / w * len(images) + 0.9)
    axes = fig.subplots(len(images), num_epochs, squeeze=False)
    from matplotlib.patches import Rectangle

    for r, (image, bxs, sig) in enumerate(zip(images, boxes, sigma)):
        img = np.asarray(image)
        bxs = np.asarray(bxs, np.float64).reshape(-1, 4)
        sig = np.asarray(sig, np.float64)
        occ = np.asarray(occlusion[r]) if occlusion is not None else np.zeros(len(bxs), int)
        for c, epoch in enumerate(epochs):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            for k, (x1, y1, x2, y2) in enumerate(bxs):
                color = _OCCLUSION_COLORS[int(occ[k])] if 0 <= int(occ[k]) < 4 else "white"
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                       linewidth=max_linewidth * sig[c, k] / top))
                ax.text(x1 + 1, y1 + 1, f"{sig[c, k]:.2f}", color="white", fontsize=6, va="top",
                        bbox=dict(facecolor=color, alpha=0.8, pad=0.6, linewidth=0))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"epoch {epoch}", fontsize=10)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_OCCLUSION_COLORS[k], linewidth=2) for k in range(4)]
    legend_below(fig, handles, [f"occlusion {k}: {OCCLUSION_NAMES[k]}" for k in range(4)], ncol=4)
    fig.suptitle(title or "Box data parameters over training (line width ∝ σ)")
    return save_figure(fig, path)


def choose_figure_images(table: BoxTable, *, count: int = 3, min_height: float = 25.0) -> list[int]:
    """Images whose boxes show the curriculum best: most distinct occlusion levels, then 3-5 boxes.

    Only boxes at least ``min_height`` tall count (smaller ones are hard to see and in no KITTI
    level). Returns up to ``count`` image indices (positions in ``table.image_ids``), ties broken
    by image order, so the choice is deterministic.
    """
    tall = table.height >= min_height
    scores = []
    for image in np.unique(table.image_index[tall]):
        sel = tall & (table.image_index == image)
        levels = len(np.unique(table.occluded[sel]))
        # Three to five boxes read best: fewer show little, more overlap into a tangle.
        scores.append((-levels, abs(int(sel.sum()) - 4), int(image)))
    return [img for _, _, img in sorted(scores)[:count]]


# ----------------------------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------------------------
def plot_sigma_by_level(
    by_difficulty: Mapping[str, Curve],
    by_occlusion: Mapping[str, Curve],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Mean box sigma over training per difficulty level (left) and per occlusion level (right).

    Parameters
    ----------
    by_difficulty : mapping level name -> (epochs (E,), mean sigma (R, E))
        E.g. ``{"easy": ..., "moderate": ..., "hard": ..., "none": ...}``.
    by_occlusion : mapping level name -> (epochs (E,), mean sigma (R, E))
    path : path-like

    Returns
    -------
    Path
    """
    fig = new_figure(11.0, 4.3)
    axes = fig.subplots(1, 2)
    for ax, curves, name in ((axes[0], by_difficulty, "KITTI difficulty"), (axes[1], by_occlusion, "occlusion")):
        x_all = []
        for i, (label, (ep, vals)) in enumerate(curves.items()):
            x = np.asarray(ep)
            x_all.append(x)
            v = as_runs(vals, 2, f"{name} {label}")
            if np.all(np.isnan(v)):
                continue
            plot_band(ax, x, v, label=label, color=cycle_color(i))
        format_epoch_axis(ax, np.concatenate(x_all) if x_all else np.zeros(0))
        ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1.0)
        ax.set_ylabel("mean box σ")
        ax.set_title(f"by {name}")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "Box temperatures per level over training")
    return save_figure(fig, path)


def plot_rank_correlation(
    curves: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Spearman's rho of sigma with the occlusion level and with the difficulty, per epoch.

    Parameters
    ----------
    curves : mapping group -> {"occlusion": (epochs, rho (R, E)), "difficulty": (epochs, rho (R, E))}
    path : path-like

    Returns
    -------
    Path
    """
    fig = new_figure(11.0, 4.5)
    axes = fig.subplots(1, 2)
    handles: dict[str, Any] = {}
    for ax, key in zip(axes, ("occlusion", "difficulty")):
        x_all = []
        for i, (group, series) in enumerate(curves.items()):
            if key not in series:
                continue
            ep, vals = series[key]
            x = np.asarray(ep)
            x_all.append(x)
            v = as_runs(vals, 2, f"{group} {key}")
            plot_band(ax, x, v, label=f"{group} ({v.shape[0]} seed{'s' if v.shape[0] > 1 else ''})", color=cycle_color(i))
        format_epoch_axis(ax, np.concatenate(x_all) if x_all else np.zeros(0))
        ax.axhline(0.0, color="0.5", linestyle=":", linewidth=1.0)
        ax.set_ylabel(f"Spearman ρ(σ, {key} level)")
        ax.set_title(f"σ vs {key} (> 0: harder boxes held back)")
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    legend_below(fig, list(handles.values()), list(handles.keys()), ncol=min(3, max(1, len(handles))))
    fig.suptitle(title or "Is the learned order easy → moderate → hard?")
    return save_figure(fig, path)


def plot_flipped_auroc(
    curves: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """AUROC for the flipped boxes over training: by sigma (solid) and by per-box loss (dashed).

    Parameters
    ----------
    curves : mapping group -> {"auroc_sigma": (epochs, (R, E)), "auroc_loss": (epochs, (R, E))}
    path : path-like

    Returns
    -------
    Path
    """
    fig = new_figure(7.5, 4.6)
    ax = fig.add_subplot()
    x_all = []
    for i, (group, series) in enumerate(curves.items()):
        for key, style, what in (("auroc_sigma", "-", "σ"), ("auroc_loss", "--", "box loss")):
            if key not in series:
                continue
            ep, vals = series[key]
            v = as_runs(vals, 2, f"{group} {key}")
            if np.all(np.isnan(v)):
                continue
            x = np.asarray(ep)
            x_all.append(x)
            plot_band(ax, x, v, label=f"{group} · {what}", color=cycle_color(i), linestyle=style)
    format_epoch_axis(ax, np.concatenate(x_all) if x_all else np.zeros(0))
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1.0)
    ax.set_ylabel("AUROC, flipped vs clean boxes")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "Finding the boxes with a flipped class")
    return save_figure(fig, path)


def plot_ap_over_epochs(
    curves: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Mean AP|R40 over classes per difficulty at the evaluation epochs, one colour per group.

    Parameters
    ----------
    curves : mapping group -> {"easy" | "moderate" | "hard": (epochs, AP (R, E))}
    path : path-like

    Returns
    -------
    Path
    """
    fig = new_figure(13.0, 4.5)
    axes = fig.subplots(1, len(DIFFICULTIES))
    handles: dict[str, Any] = {}
    for ax, diff in zip(axes, DIFFICULTIES):
        x_all = []
        for i, (group, series) in enumerate(curves.items()):
            if diff not in series:
                continue
            ep, vals = series[diff]
            x = np.asarray(ep)
            x_all.append(x)
            plot_band(ax, x, as_runs(vals, 2, f"{group} {diff}"), label=group, color=cycle_color(i))
        format_epoch_axis(ax, np.concatenate(x_all) if x_all else np.zeros(0))
        ax.set_ylabel(f"mAP|R40, {diff} (%)")
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    legend_below(fig, list(handles.values()), list(handles.keys()), ncol=min(4, max(1, len(handles))))
    fig.suptitle(title or "KITTI AP on the validation split (mean over classes)")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# reading runs
# ----------------------------------------------------------------------------------------------
@dataclass
class DetectionRun:
    """One detection run directory, read.

    Attributes
    ----------
    path : Path
    config : dict
        ``config.json``.
    metrics : list of dict
        ``metrics.jsonl``, one record per epoch.
    table : BoxTable
        ``labels.npz``.
    summary : dict or None
        ``summary.json`` (None for an unfinished run).
    """

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    table: BoxTable
    summary: dict[str, Any] | None = None
    _run: RunDir | None = field(default=None, repr=False)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def curriculum(self) -> bool:
        return bool(self.config["curriculum"]["instance_curriculum"])

    def snapshot_epochs(self) -> list[int]:
        return RunDir(self.path).snapshot_epochs()

    def sigma(self, epoch: int) -> np.ndarray:
        """Box sigma (N,) after ``epoch``."""
        return RunDir(self.path).load_snapshot(epoch)["box_sigma"].astype(np.float64)

    def series(self, *keys: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of a metric nested under ``keys`` (NaN where an epoch lacks it)."""
        epochs, values = [], []
        for record in self.metrics:
            v: Any = record
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            epochs.append(record["epoch"])
            values.append(math.nan if v is None else float(v))
        return np.asarray(epochs), np.asarray(values, np.float64)


def is_detection_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a run of :func:`~dataparams.detection.train.train_detection`.

    Decided from ``config.json`` alone (a detection config has ``data.train_split`` and
    ``model.image_size``), so that ``dataparams report`` can route each run directory to this
    module or to the classification report without loading either.
    """
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (isinstance(config, dict) and isinstance(config.get("data"), dict) and "train_split" in config["data"]
            and isinstance(config.get("model"), dict) and "image_size" in config["model"])


def load_detection_run(path: str | os.PathLike[str]) -> DetectionRun:
    """Read a run directory written by :func:`~dataparams.detection.train.train_detection`."""
    run = RunDir(path)
    if not is_detection_run(path):
        raise ValueError(f"{path} is not a detection run (no config.json with data.train_split and model.image_size)")
    config = json.loads(run.config_file.read_text())
    table = BoxTable.from_arrays(run.load_arrays("labels.npz"))
    summary = run.read_json("summary.json") if (run.path / "summary.json").exists() else None
    return DetectionRun(Path(path), config, run.read_metrics(), table, summary)


def _group_key(config: dict[str, Any]) -> str:
    c = {k: v for k, v in config.items() if k not in ("seed", "notes")}
    c["data"] = {k: v for k, v in c.get("data", {}).items() if k not in ("workers", "eval_batch_size")}
    return json.dumps(c, sort_keys=True)


def _group_label(config: dict[str, Any], others: Sequence[dict[str, Any]]) -> str:
    label = str(config.get("preset", "custom"))
    if sum(1 for o in others if o.get("preset") == config.get("preset")) > 1 and len(
        {_group_key(o) for o in others if o.get("preset") == config.get("preset")}
    ) > 1:
        label += f" ({Path(config['data']['root']).name})"
    return label


def _stack(runs: Sequence[DetectionRun], *keys: str, evals_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Epochs (E,) common to the runs and the values (R, E)."""
    per_run = []
    for r in runs:
        ep, v = r.series(*keys)
        if evals_only:
            keep = np.array(["kitti" in m for m in r.metrics], bool)
            ep, v = ep[keep], v[keep]
        per_run.append(dict(zip(ep.tolist(), v.tolist())))
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    return np.asarray(common), np.asarray([[d[e] for e in common] for d in per_run], np.float64).reshape(
        len(per_run), len(common))


def _fmt(agg: dict[str, Any], digits: int = 1) -> str:
    if agg["n"] == 0 or agg["mean"] is None:
        return "n/a"
    return f"{agg['mean']:.{digits}f} ± {agg['std']:.{digits}f} ({agg['n']})"


def _figure3_images(runs: Sequence[DetectionRun], out: Path, slug: str, label: str) -> Path | None:
    """Figure 3 for the first run of a group; None when its data set cannot be read."""
    from dataparams.detection.kitti import KittiDetection

    run = runs[0]
    epochs_available = run.snapshot_epochs()
    if not epochs_available:
        return None
    data = run.config["data"]
    try:
        if data.get("format", "kitti") == "coco":  # as the trainer reads it (detection.train)
            from dataparams.detection.coco import CocoDetection

            dataset: Any = CocoDetection.from_split(
                data["root"], data["train_split"], classes=data["classes"] or None, ann_file=data["ann_file"],
                image_dir=data["image_dir"], invalid_boxes=data.get("invalid_boxes", "error"))
        else:
            dataset = KittiDetection(data["root"], data["train_split"], classes=data["classes"])
    except (FileNotFoundError, OSError, ValueError):
        return None
    if dataset.num_boxes != run.table.num_boxes:
        return None
    picks = np.unique(np.linspace(0, len(epochs_available) - 1, num=min(4, len(epochs_available))).round().astype(int))
    epochs = [epochs_available[i] for i in picks]
    sigmas = np.stack([run.sigma(e) for e in epochs])  # (E, N)
    images, boxes, sig, occ = [], [], [], []
    for image in choose_figure_images(run.table):
        sel = np.flatnonzero((run.table.image_index == image) & (run.table.height >= 25.0))
        img = dataset.load_image(int(image)).permute(1, 2, 0).numpy()
        images.append(img[..., 0] if img.shape[-1] == 1 else img)
        boxes.append(run.table.boxes[sel])
        sig.append(sigmas[:, sel])
        occ.append(run.table.occluded[sel])
    if not images:
        return None
    return plot_box_sigma_images(images, boxes, sig, epochs, out / f"{slug}_boxes.png", occlusion=occ,
                                 title=f"{label}, seed {run.seed}: box line width ∝ σ (colour: occlusion level)")


def _nanmean_rows(values: np.ndarray) -> list[float | None]:
    """Mean over seeds (axis 0) per epoch, None where every seed lacks the value (a baseline)."""
    out: list[float | None] = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        out.append(float(finite.mean()) if finite.size else None)
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_") or "run"


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
def object_detection_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    title: str = "Detection with box data parameters",
) -> dict[str, Any]:
    """Figures and a self-contained ``report.html`` for object-detection runs, grouped by config minus seed.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Run directories of :func:`~dataparams.detection.train.train_detection` (finished or not;
        an unfinished one contributes its curves, not its final AP).
    out_dir : path-like
        Created if needed; receives ``report.html`` (figures embedded) and the PNGs.
    title : str

    Returns
    -------
    dict
        ``groups``: per group its label, seeds, final AP|R40 and AP11 per class and difficulty
        (mean, std, n, values), the final rank correlations and flipped-box AUROCs; ``figures``:
        the PNG paths; ``html``: the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_detection_run(p) for p in run_dirs]
    if not runs:
        raise ValueError("no run directories given")
    groups: dict[str, list[DetectionRun]] = {}
    for r in runs:
        groups.setdefault(_group_key(r.config), []).append(r)
    configs = [g[0].config for g in groups.values()]
    labelled = {_group_label(g[0].config, configs): sorted(g, key=lambda r: r.seed) for g in groups.values()}

    figures: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    ap_curves: dict[str, dict[str, Curve]] = {}
    rho_curves: dict[str, dict[str, Curve]] = {}
    auroc_curves: dict[str, dict[str, Curve]] = {}
    for label, members in labelled.items():
        slug = _slug(label)
        finished = [r for r in members if r.summary is not None]
        classes = list(members[0].config["data"]["classes"])
        entry: dict[str, Any] = {"label": label, "seeds": [r.seed for r in members],
                                 "curriculum": members[0].curriculum, "finished": len(finished), "ap": {}}
        for cls in classes:
            for diff in DIFFICULTIES:
                for kind in ("ap40", "ap11"):
                    # A COCO-format run has pycocotools' numbers instead (entry["coco"]).
                    entry["ap"][f"{cls}/{diff}/{kind}"] = over_seeds(
                        r.summary["kitti"][cls][diff][kind] for r in finished if "kitti" in r.summary)
        for diff in DIFFICULTIES:
            for kind in ("ap40", "ap11"):
                entry["ap"][f"mean/{diff}/{kind}"] = over_seeds(r.summary.get(f"m{kind}_{diff}") for r in finished)
        coco_runs = [r for r in finished if "coco" in r.summary]
        if coco_runs:
            entry["coco"] = {k: over_seeds(None if r.summary["coco"].get(k) is None else 100 * r.summary["coco"][k]
                                           for r in coco_runs) for k in ("map", "map50", "map75")}
        last = [r.metrics[-1] for r in members if r.metrics]
        entry["spearman_occlusion"] = over_seeds(m.get("spearman_occlusion") for m in last)
        entry["spearman_difficulty"] = over_seeds(m.get("spearman_difficulty") for m in last)
        # sigma of a baseline is constant: its AUROC (0.5) says nothing, so it is left out.
        entry["auroc_sigma"] = over_seeds(m.get("flipped", {}).get("auroc_sigma") for m in last
                                          if entry["curriculum"])
        entry["auroc_loss"] = over_seeds(m.get("flipped", {}).get("auroc_loss") for m in last)
        entry["sigma_by_difficulty"] = {d: over_seeds(m.get("sigma_by_difficulty", {}).get(d) for m in last)
                                        for d in _DIFFICULTY_LEVELS}
        entry["sigma_by_occlusion"] = {str(k): over_seeds(m.get("sigma_by_occlusion", {}).get(str(k)) for m in last)
                                       for k in range(4)}
        rho_ep, rho_v = _stack(members, "spearman_difficulty")
        entry["spearman_difficulty_per_epoch"] = {"epochs": rho_ep.tolist(), "mean": _nanmean_rows(rho_v)}
        occ_ep, occ_v = _stack(members, "spearman_occlusion")
        entry["spearman_occlusion_per_epoch"] = {"epochs": occ_ep.tolist(), "mean": _nanmean_rows(occ_v)}
        results.append(entry)

        ap_curves[label] = {d: _stack(members, f"map40_{d}", evals_only=True) for d in DIFFICULTIES}
        if entry["curriculum"]:
            by_diff = {d: _stack(members, "sigma_by_difficulty", d) for d in _DIFFICULTY_LEVELS}
            by_occ = {f"{k}: {OCCLUSION_NAMES[k]}": _stack(members, "sigma_by_occlusion", str(k)) for k in range(4)}
            figures[f"{slug}_sigma_levels"] = str(plot_sigma_by_level(
                by_diff, by_occ, out / f"{slug}_sigma_levels.png",
                title=f"{label}: mean box σ per level ({len(members)} seed{'s' if len(members) > 1 else ''})"))
            rho_curves[label] = {"occlusion": (occ_ep, occ_v), "difficulty": (rho_ep, rho_v)}
            boxes_png = _figure3_images(members, out, slug, label)
            if boxes_png is not None:
                figures[f"{slug}_boxes"] = str(boxes_png)
        if any(r.table.is_flipped.any() for r in members):
            auroc_curves[label] = {"auroc_loss": _stack(members, "flipped", "auroc_loss")}
            if entry["curriculum"]:
                auroc_curves[label]["auroc_sigma"] = _stack(members, "flipped", "auroc_sigma")

    if any(np.size(c["moderate"][1]) for c in ap_curves.values()):
        figures["ap_over_epochs"] = str(plot_ap_over_epochs(ap_curves, out / "ap_over_epochs.png"))
    if rho_curves:
        figures["rank_correlation"] = str(plot_rank_correlation(rho_curves, out / "rank_correlation.png"))
    if auroc_curves:
        figures["flipped_auroc"] = str(plot_flipped_auroc(auroc_curves, out / "flipped_auroc.png"))

    # One format, as the classification report: a page users open, with the figures inside it.
    (out / "report.html").write_text(_html(title, _markdown(title, results, figures, out), out), encoding="utf-8")
    return {"groups": results, "figures": figures, "html": str(out / "report.html")}


def _markdown(title: str, results: list[dict[str, Any]], figures: dict[str, str], out: Path) -> str:
    lines = [f"# {title}", ""]
    if not results:
        return "\n".join(lines)
    classes = sorted({k.split("/")[0] for r in results for k in r["ap"]} - {"mean"},
                     key=lambda c: (c != "Car", c != "Pedestrian", c))
    for kind, name in (("ap40", "AP|R40"), ("ap11", "AP 11-point")):
        lines += [f"## KITTI {name} on the validation split, final epoch (mean ± std (n seeds))", ""]
        header = ["run"] + [f"{c} {d}" for c in [*classes, "mean"] for d in DIFFICULTIES]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in results:
            cells = [r["label"]] + [_fmt(r["ap"].get(f"{c}/{d}/{kind}", {"n": 0, "mean": None}))
                                    for c in [*classes, "mean"] for d in DIFFICULTIES]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    coco = [r for r in results if "coco" in r]
    if coco:
        lines += ["## COCO mAP (pycocotools) on the validation split, final epoch (mean ± std (n seeds))", "",
                  "| run | mAP@[.5:.95] | AP50 | AP75 |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | " + " | ".join(_fmt(r["coco"][k]) for k in ("map", "map50", "map75")) + " |"
                  for r in coco]
        lines.append("")
    lines += ["## What the box temperatures learned (last epoch)", "",
              "Spearman ρ of σ with the occlusion level (0-2) and with the KITTI difficulty (easy 0, moderate 1, "
              "hard 2): positive means harder boxes carry a higher temperature, i.e. are learned later. "
              "AUROC: σ (or the box's mean anchor loss) as a detector of boxes whose class was flipped.", "",
              "| run | ρ(σ, occlusion) | ρ(σ, difficulty) | σ easy | σ moderate | σ hard | AUROC σ (flipped) | AUROC loss (flipped) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| " + " | ".join([
            r["label"], _fmt(r["spearman_occlusion"], 3), _fmt(r["spearman_difficulty"], 3),
            _fmt(r["sigma_by_difficulty"]["easy"], 3), _fmt(r["sigma_by_difficulty"]["moderate"], 3),
            _fmt(r["sigma_by_difficulty"]["hard"], 3), _fmt(r["auroc_sigma"], 3), _fmt(r["auroc_loss"], 3),
        ]) + " |")
    lines.append("")
    for name, path in figures.items():
        rel = os.path.relpath(path, out)
        lines += [f"![{name}]({rel})", ""]
    return "\n".join(lines)


def _html(title: str, markdown: str, folder: Path) -> str:
    """A self-contained HTML page of the summary text (tables, and images embedded from ``folder``)."""
    body: list[str] = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            data = base64.b64encode((folder / src.rstrip(")")).read_bytes()).decode("ascii")
            body.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width:100%"></p>')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
