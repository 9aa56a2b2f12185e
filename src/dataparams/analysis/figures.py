"""Figures of the learned curriculum and of how well sigma finds corrupted labels.

Each function takes plain arrays, writes one PNG and returns its path; :mod:`.report` pulls the
arrays out of run directories. The figures follow the paper (Saxena, Tuzel & DeCoste, NeurIPS
2019):

* :func:`plot_class_sigma` -- class parameters over epochs, mean and std over seeds (Figure 1 left);
* :func:`plot_instance_sigma` -- the parameters of single samples, each beside its image
  (Figure 1 right);
* :func:`plot_sigma_histograms` -- the distribution of sigma at every epoch, as a heatmap (what the
  released code logs as TensorBoard histograms);
* :func:`plot_clean_vs_corrupted` -- sigma of clean and corrupted samples, and the percentage of
  corrupted samples among the highest sigma (Figure 4 left and right);
* :func:`plot_random_label_accuracy` -- train accuracy on random labels, baseline against
  curriculum (sec. 3.5);
* :func:`plot_accuracy` and :func:`plot_detection` -- accuracy and noise-detection metrics over
  epochs for several groups of runs;
* :func:`plot_method_comparison` -- the bench's test accuracies, every method in every noise
  setting, as bars.

Notation, fixed for this module: ``R`` runs (seeds) of one setting, ``E`` epochs, ``K`` classes,
``N`` training samples, ``M`` chosen samples. Epochs are 1-based. Bands are one standard
deviation over seeds unless a docstring says otherwise.

Matplotlib is an optional dependency (``pip install 'dataparams[report]'``). Figures are drawn on
``matplotlib.figure.Figure`` objects with the Agg canvas, never through ``pyplot``, so that making a
report changes no global matplotlib state and needs no display; the helpers that draw them in the
package's style (figure, save, bands over seeds, epoch axis, legend) are in
:mod:`dataparams.analysis.plotting`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dataparams.analysis.metrics import over_seeds, top_fraction_purity
from dataparams.analysis.plotting import (
    as_runs,
    cycle_color,
    format_epoch_axis,
    legend_below,
    mean_std,
    new_figure,
    plot_band,
    save_figure,
)

__all__ = [
    "plot_accuracy",
    "plot_class_sigma",
    "plot_clean_vs_corrupted",
    "plot_clean_vs_corrupted_stats",
    "plot_detection",
    "plot_instance_sigma",
    "plot_method_comparison",
    "plot_random_label_accuracy",
    "plot_sigma_histograms",
]

# One curve: epochs (E,) and values (R, E), one row per seed.
Curve = tuple[ArrayLike, ArrayLike]

_CLEAN_COLOR = "tab:blue"
_CORRUPTED_COLOR = "tab:red"


def _plain_formatter(*, minor: bool = False) -> Any:
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: Any) -> str:
        if minor:  # label 2 and 5 of each decade only, or the axis gets crowded
            mantissa = v / 10 ** math.floor(math.log10(v)) if v > 0 else 0
            if not any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (2.0, 5.0)):
                return ""
        return f"{v:.4g}"

    return FuncFormatter(fmt)


def _log_yaxis(ax: Any, lo: float, hi: float) -> None:
    """A log y axis with plain numbers (0.05, 1, 20) instead of 5 × 10^-2."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, NullLocator

    ax.set_yscale("log")
    axis = ax.yaxis
    if hi / lo < 10:
        # Within one decade a log locator has no major tick at all; place plain ones.
        axis.set_major_locator(MaxNLocator(nbins=6))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(_plain_formatter())
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(LogLocator(base=10))
        axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)))
        axis.set_major_formatter(_plain_formatter())
        axis.set_minor_formatter(_plain_formatter(minor=True) if hi / lo < 1000 else NullFormatter())


def _seeds_note(r: int) -> str:
    return f"mean ± std over {r} seeds" if r > 1 else "1 seed"


# ----------------------------------------------------------------------------------------------
# (a) class parameters, Figure 1 left
# ----------------------------------------------------------------------------------------------
def plot_class_sigma(
    epochs: ArrayLike,
    class_sigma: ArrayLike,
    path: str | os.PathLike[str],
    *,
    classes: Sequence[int],
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Class parameters of chosen classes over training, mean ± std over seeds.

    Parameters
    ----------
    epochs : array_like of shape (E,)
        1-based epochs of the snapshots.
    class_sigma : array_like of shape (R, E, K) or (E, K)
        Class temperature sigma at each epoch, one slice per seed.
    path : path-like
        Where to write the PNG.
    classes : sequence of int
        Which classes to draw (the paper picks four at random).
    class_names : sequence of str, optional
        Names of all ``K`` classes, for the legend.
    title : str, optional
        Figure title; a default names the seeds.

    Returns
    -------
    Path
        ``path``.
    """
    x = np.asarray(epochs)
    sig = as_runs(class_sigma, 3, "class_sigma")
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    for i, c in enumerate(classes):
        name = class_names[c] if class_names is not None else f"class {c}"
        plot_band(ax, x, sig[:, :, c], label=f"{name} ({c})", color=cycle_color(i), floor=0.0)
    format_epoch_axis(ax, x)
    ax.set_ylabel("class parameter σ (temperature)")
    ax.legend(title="class", fontsize=9, loc="best")
    ax.set_title(title or f"Class-level curriculum ({_seeds_note(sig.shape[0])})")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# (b) instance parameters beside their images, Figure 1 right
# ----------------------------------------------------------------------------------------------
def plot_instance_sigma(
    epochs: ArrayLike,
    instance_sigma: ArrayLike,
    path: str | os.PathLike[str],
    *,
    given: ArrayLike,
    true: ArrayLike | None = None,
    sample_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    images: Sequence[np.ndarray | None] | None = None,
    reference: ArrayLike | None = None,
    reference_label: str = "median, all samples",
    title: str | None = None,
    per_row: int = 3,
) -> Path:
    """The instance parameter of single samples over training, each beside its image.

    All curves share the y axis so the samples can be compared. Panel titles give the label
    trained on and, when ``true`` is given, the true label; corrupted samples are drawn in red.

    Parameters
    ----------
    epochs : array_like of shape (E,)
        1-based epochs of the snapshots.
    instance_sigma : array_like of shape (E, M)
        Instance temperature sigma of the ``M`` chosen samples at each epoch.
    path : path-like
        Where to write the PNG.
    given : array_like of shape (M,)
        Labels the run trained on.
    true : array_like of shape (M,), optional
        True labels, when known.
    sample_ids : sequence of int of length M, optional
        The samples' positions in the run, for the titles (default ``0..M-1``).
    class_names : sequence of str, optional
        Names of the ``K`` classes.
    images : sequence of length M of ndarray (H, W, C) or (H, W) uint8, or None, optional
        The samples' images; ``None`` (or a ``None`` entry) draws "no image".
    reference : array_like of shape (E,), optional
        A curve drawn dashed grey in every panel, e.g. the median sigma of all samples.
    reference_label : str
        Its legend entry.
    title : str, optional
        Figure title.
    per_row : int, default 3
        Samples per row of panels.

    Returns
    -------
    Path
        ``path``.
    """
    x = np.asarray(epochs)
    sig = np.asarray(instance_sigma, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] != len(x):
        raise ValueError(f"instance_sigma must have shape (E, M) with E = {len(x)}, got {sig.shape}")
    m = sig.shape[1]
    if m == 0:
        raise ValueError("instance_sigma holds no sample")
    given = np.asarray(given)
    true_arr = None if true is None else np.asarray(true)
    ids = list(range(m)) if sample_ids is None else [int(i) for i in sample_ids]
    for name_, arr in (("given", given), ("true", true_arr), ("sample_ids", ids), ("images", images)):
        if arr is not None and len(arr) != m:
            raise ValueError(f"{name_} must have length M = {m}, got {len(arr)}")
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)

    def name(c: int) -> str:
        return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)

    cols = max(1, min(per_row, m))
    rows = math.ceil(m / cols)
    fig = new_figure(4.8 * cols, 2.6 * rows + 0.6)
    grid = fig.add_gridspec(rows, 2 * cols, width_ratios=[1.0, 2.8] * cols)
    shown = sig if ref is None else np.concatenate([sig, ref[:, None]], axis=1)
    finite = shown[np.isfinite(shown)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
    first_curve = None
    for j in range(m):
        r, c = divmod(j, cols)
        ax_img = fig.add_subplot(grid[r, 2 * c])
        img = None if images is None else images[j]
        if img is None:
            ax_img.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, color="0.4",
                        transform=ax_img.transAxes)
        else:
            img = np.asarray(img)
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            ax_img.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_xlabel(f"#{ids[j]}", fontsize=8)
        ax = fig.add_subplot(grid[r, 2 * c + 1], sharey=first_curve)
        first_curve = first_curve or ax
        corrupted = true_arr is not None and int(true_arr[j]) != int(given[j])
        color = _CORRUPTED_COLOR if corrupted else _CLEAN_COLOR
        ax.plot(x, sig[:, j], color=color, linewidth=1.8, marker="o" if len(x) <= 12 else None, markersize=3,
                label="this sample")
        if ref is not None:
            ax.plot(x, ref, color="0.5", linestyle="--", linewidth=1.0, label=reference_label)
        format_epoch_axis(ax, x)
        ax.set_ylim(lo - pad, hi + pad)
        if c == 0:
            ax.set_ylabel("instance σ")
        head = f"#{ids[j]} given: {name(int(given[j]))}"
        if true_arr is not None:
            head += f"\ntrue: {name(int(true_arr[j]))}" + (" (corrupted)" if corrupted else " (clean)")
        ax.set_title(head, fontsize=9, color=color if true_arr is not None else "black", loc="left")
        if j == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "Instance-level curriculum of single samples")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# (c) histograms over time
# ----------------------------------------------------------------------------------------------
def plot_sigma_histograms(
    epochs: ArrayLike,
    panels: Mapping[str, ArrayLike],
    path: str | os.PathLike[str],
    *,
    bins: int = 40,
    title: str | None = None,
) -> Path:
    """The distribution of sigma at every epoch, one heatmap per parameter kind.

    x is the epoch, y the value of sigma in log-spaced bins on a log axis, colour the number of
    classes or samples in the bin (log colour scale; empty bins are white).

    Parameters
    ----------
    epochs : array_like of shape (E,)
        1-based epochs of the snapshots.
    panels : mapping of str to array_like of shape (E, n)
        E.g. ``{"class σ": (E, K), "instance σ": (E, N)}``; values must be positive.
    path : path-like
        Where to write the PNG.
    bins : int, default 40
        Number of sigma bins.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.colors import LogNorm

    x = np.asarray(epochs, dtype=np.float64)
    if not panels:
        raise ValueError("panels must hold at least one array")
    fig = new_figure(5.4 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    # Epoch edges halfway between snapshots, so each epoch is one column.
    if len(x) > 1:
        mids = (x[1:] + x[:-1]) / 2
        xedges = np.concatenate(([x[0] - (mids[0] - x[0])], mids, [x[-1] + (x[-1] - mids[-1])]))
    else:
        xedges = np.array([x[0] - 0.5, x[0] + 0.5]) if len(x) else np.array([0.5, 1.5])
    for ax, (label, values) in zip(axes, panels.items()):
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] != len(x):
            raise ValueError(f"panel {label!r} must have shape (E, n) with E = {len(x)}, got {v.shape}")
        pos = v[np.isfinite(v) & (v > 0)]
        if pos.size == 0:
            ax.text(0.5, 0.5, "no positive values", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label)
            continue
        lo, hi = float(pos.min()), float(pos.max())
        if hi / lo < 1.02:  # all (nearly) equal: give the single bin some height
            lo, hi = lo / 1.05, hi * 1.05
        # Fine bins even for a few values: with K classes each class then shows as its own track.
        yedges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1)
        counts = np.stack([np.histogram(row[np.isfinite(row) & (row > 0)], bins=yedges)[0] for row in v])
        masked = np.ma.masked_equal(counts.T, 0)
        mesh = ax.pcolormesh(xedges, yedges, masked, cmap="viridis",
                             norm=LogNorm(vmin=1, vmax=max(2, int(counts.max()))), shading="flat")
        _log_yaxis(ax, lo, hi)
        ax.set_ylim(yedges[0], yedges[-1])
        format_epoch_axis(ax, x)
        ax.grid(False)
        ax.set_ylabel(f"{label} (log scale)")
        ax.set_title(f"{label}: {v.shape[1]} values per epoch", fontsize=10)
        bar = fig.colorbar(mesh, ax=ax, label="count (log scale)")
        bar.ax.yaxis.set_major_formatter(_plain_formatter())
        bar.ax.yaxis.set_minor_formatter(_plain_formatter(minor=True))
    fig.suptitle(title or "Distribution of the data parameters over training")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# (d) clean against corrupted, Figure 4
# ----------------------------------------------------------------------------------------------
def plot_clean_vs_corrupted(
    epochs: ArrayLike,
    instance_sigma: ArrayLike,
    is_corrupted: ArrayLike,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Instance sigma of clean against corrupted samples, and the purity of the top sigma.

    Left (paper Figure 4 left): mean ± std of sigma over the clean and over the corrupted samples
    at each epoch. Right (Figure 4 right): the percentage of corrupted samples among the top
    ``k`` by sigma, where ``k`` is the number of corrupted samples (so 100% is a perfect split
    and the corrupted fraction is what a random order gets). With several seeds, each curve is
    averaged over seeds (see :func:`plot_clean_vs_corrupted_stats`).

    Parameters
    ----------
    epochs : array_like of shape (E,)
        1-based epochs of the snapshots.
    instance_sigma : array_like of shape (R, E, N) or (E, N)
        Instance temperature sigma, one slice per seed.
    is_corrupted : array_like of shape (R, N) or (N,)
        True where the run's label was corrupted (each seed may corrupt other samples).
    path : path-like
        Where to write the PNG.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    sig = as_runs(instance_sigma, 3, "instance_sigma")
    bad = np.asarray(is_corrupted, dtype=bool)
    if bad.ndim == 1:
        bad = np.broadcast_to(bad, (sig.shape[0], bad.shape[0]))
    if bad.shape != (sig.shape[0], sig.shape[2]):
        raise ValueError(f"is_corrupted must have shape (R, N) = {(sig.shape[0], sig.shape[2])}, got {bad.shape}")
    if not bad.any(axis=1).all() or bad.all(axis=1).any():
        raise ValueError("every run needs both clean and corrupted samples")
    stats = {}
    for kind, m in (("clean", ~bad), ("corrupted", bad)):
        members = [sig[r][:, m[r]] for r in range(sig.shape[0])]  # (E, n_r) per run
        stats[kind] = (np.stack([x.mean(axis=1) for x in members]), np.stack([x.std(axis=1) for x in members]))
    purity = np.array([[top_fraction_purity(sig[r, e], bad[r], float(bad[r].mean())) for e in range(sig.shape[1])]
                       for r in range(sig.shape[0])])
    return plot_clean_vs_corrupted_stats(epochs, clean=stats["clean"], corrupted=stats["corrupted"],
                                         purity=purity, corrupted_fraction=float(bad.mean()), path=path,
                                         title=title)


def plot_clean_vs_corrupted_stats(
    epochs: ArrayLike,
    *,
    clean: tuple[ArrayLike, ArrayLike],
    corrupted: tuple[ArrayLike, ArrayLike],
    purity: ArrayLike,
    corrupted_fraction: float,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """:func:`plot_clean_vs_corrupted` from per-epoch statistics (e.g. those in metrics.jsonl).

    Parameters
    ----------
    epochs : array_like of shape (E,)
        1-based epochs.
    clean, corrupted : (mean, std), each array_like of shape (R, E) or (E,)
        Mean and std of sigma over the clean (corrupted) samples of each run. The curve is the
        mean over seeds of the means, the band ± the mean over seeds of the stds (a spread over
        samples, as in the paper's Figure 4, not over seeds).
    purity : array_like of shape (R, E) or (E,)
        Percentage of corrupted samples among the top ``k`` by sigma, ``k`` = number corrupted.
    corrupted_fraction : float
        Fraction of corrupted samples, in ``[0, 1]`` (the purity of a random order).
    path : path-like
        Where to write the PNG.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    x = np.asarray(epochs)
    pct = 100.0 * float(corrupted_fraction)
    fig = new_figure(11.0, 4.2)
    left, right = fig.subplots(1, 2)
    r = 1
    for label, (mean, std), color in (("clean", clean, _CLEAN_COLOR), ("corrupted", corrupted, _CORRUPTED_COLOR)):
        m = as_runs(mean, 2, f"{label} mean")
        sd = as_runs(std, 2, f"{label} std")
        r = m.shape[0]
        mu, spread = mean_std(m)[0], mean_std(sd)[0]
        left.plot(x, mu, color=color, linewidth=1.8, label=label, marker="o" if len(x) <= 12 else None, markersize=3)
        left.fill_between(x, np.maximum(mu - spread, 0.0), mu + spread, color=color, alpha=0.2, linewidth=0)
    format_epoch_axis(left, x)
    left.set_ylabel("instance σ (mean ± std over samples)")
    left.set_title("Instance parameters of clean and corrupted samples", fontsize=10)
    left.legend(fontsize=9, loc="best")

    p = as_runs(purity, 2, "purity")
    plot_band(right, x, p, label=f"top {pct:.1f}% by σ ({_seeds_note(p.shape[0])})", color=_CORRUPTED_COLOR)
    right.axhline(pct, color="0.5", linestyle="--", linewidth=1.0, label=f"random order ({pct:.1f}%)")
    format_epoch_axis(right, x)
    right.set_ylim(0, 102)
    right.set_ylabel("corrupted among the top-k by σ (%)")
    right.set_title(f"Corrupted samples among the top {pct:.1f}% by σ", fontsize=10)
    right.legend(fontsize=9, loc="lower right")
    fig.suptitle(title or f"Instance-level curriculum under label noise ({_seeds_note(r)})")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# (e) random labels, sec. 3.5
# ----------------------------------------------------------------------------------------------
def plot_random_label_accuracy(
    curves: Mapping[str, Curve],
    path: str | os.PathLike[str],
    *,
    chance: float | None = None,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Train accuracy on all-random labels: does the model memorise them?

    Parameters
    ----------
    curves : mapping of str to (epochs (E,), train_acc (R, E) or (E,))
        One entry per setting, e.g. ``{"baseline": ..., "class curriculum": ...}``; accuracy in
        percent on the (random) labels trained on.
    path : path-like
        Where to write the PNG.
    chance : float, optional
        Chance accuracy in percent (``100 / K``), drawn as a dashed line.
    colors : mapping of str to colour, optional
        Colour per entry of ``curves``.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    xs = []
    for i, (label, (ep, acc)) in enumerate(curves.items()):
        x = np.asarray(ep)
        xs.append(x)
        vals = as_runs(acc, 2, f"curves[{label!r}]")
        color = (colors or {}).get(label, cycle_color(i))
        plot_band(ax, x, vals, label=f"{label} ({_seeds_note(vals.shape[0])})", color=color)
    if chance is not None:
        ax.axhline(chance, color="0.5", linestyle="--", linewidth=1.0, label=f"chance ({chance:.1f}%)")
    format_epoch_axis(ax, np.concatenate(xs) if xs else np.zeros(0))
    ax.set_ylim(0, 102)
    ax.set_ylabel("train accuracy on the random labels (%)")
    ax.legend(fontsize=9, loc="best")
    ax.set_title(title or "All-random labels: memorisation with and without the curriculum")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# (f) accuracy, (g) detection, several groups
# ----------------------------------------------------------------------------------------------
_ACC_PANELS = (
    ("train_acc", "train accuracy, labels trained on (%)"),
    ("train_acc_clean", "train accuracy, true labels (%)"),
    ("val_acc", "validation accuracy (%)"),
    ("test_acc", "test accuracy (%)"),
)


def _group_panels(
    fig: Any,
    curves: Mapping[str, Mapping[str, Curve]],
    panels: Sequence[tuple[str, str]],
    *,
    colors: Mapping[str, str] | None,
    styles: Mapping[str, tuple[str, str]] | None = None,
) -> list[Any]:
    subs = styles or {"": ("", "-")}
    present = [(k, lab) for k, lab in panels
               if any(f"{k}{sub}" in c for c in curves.values() for sub in subs)]
    if not present:
        raise ValueError(f"no curve holds any of {', '.join(k for k, _ in panels)}")
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    handles: dict[str, Any] = {}
    all_x = []
    for ax, (key, ylabel) in zip(axes, present):
        for i, (group, series) in enumerate(curves.items()):
            color = (colors or {}).get(group, cycle_color(i))
            for sub, (suffix, style) in subs.items():
                name = f"{key}{sub}"
                if name not in series:
                    continue
                ep, vals = series[name]
                x = np.asarray(ep)
                all_x.append(x)
                v = as_runs(vals, 2, f"curves[{group!r}][{name!r}]")
                label = f"{group}{suffix} ({_seeds_note(v.shape[0])})"
                plot_band(ax, x, v, label=label, color=color, linestyle=style)
        format_epoch_axis(ax, np.concatenate(all_x) if all_x else np.zeros(0))
        ax.set_ylabel(ylabel)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    # One legend for all panels, below them: the groups are the same in every panel.
    legend_below(fig, list(handles.values()), list(handles.keys()), ncol=min(3, len(handles)))
    return list(axes)


def plot_accuracy(
    curves: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike[str],
    *,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Train and test accuracy over epochs, one curve per group, mean ± std over seeds.

    Parameters
    ----------
    curves : mapping of str to mapping of str to (epochs (E,), values (R, E))
        ``curves[group][metric]`` with metric among ``train_acc`` (on the labels trained on),
        ``train_acc_clean`` (on the true labels), ``val_acc``, ``test_acc``; one panel per
        metric that any group has.
    path : path-like
        Where to write the PNG.
    colors : mapping of str to colour, optional
        Colour per group.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    n = sum(1 for k, _ in _ACC_PANELS if any(k in c for c in curves.values()))
    fig = new_figure(4.3 * max(n, 1), 4.3 + 0.25 * math.ceil(len(curves) / 3))
    _group_panels(fig, curves, _ACC_PANELS, colors=colors)
    fig.suptitle(title or "Accuracy over training")
    return save_figure(fig, path)


def plot_detection(
    curves: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike[str],
    *,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Noise-detection AUROC and average precision over epochs, one colour per group.

    Solid lines rank samples by instance sigma, dashed lines by their last training loss (the
    small-loss criterion, available for every method).

    Parameters
    ----------
    curves : mapping of str to mapping of str to (epochs (E,), values (R, E))
        ``curves[group][metric]`` with metric among ``auroc``, ``average_precision`` (ranked by
        sigma) and ``auroc_loss``, ``average_precision_loss`` (ranked by loss).
    path : path-like
        Where to write the PNG.
    colors : mapping of str to colour, optional
        Colour per group.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    panels = (("auroc", "AUROC of corrupted vs clean"), ("average_precision", "average precision"))
    styles = {"": (" · σ", "-"), "_loss": (" · loss", "--")}
    fig = new_figure(10.0, 4.3 + 0.25 * math.ceil(2 * len(curves) / 3))
    axes = _group_panels(fig, curves, panels, colors=colors, styles=styles)
    for ax in axes:
        lo, _ = ax.get_ylim()
        ax.set_ylim(min(lo, 0.45), 1.01)
    axes[0].axhline(0.5, color="0.5", linestyle=":", linewidth=1.0)
    fig.suptitle(title or "Finding the corrupted labels: σ (solid) against the small-loss criterion (dashed)")
    return save_figure(fig, path)


# One method in one noise setting: test accuracies (one per seed) at the final epoch and at the
# epoch chosen on the noisy validation split.
MethodScores = Mapping[str, Sequence[float]]


def method_comparison_figure(
    table: Mapping[str, Mapping[str, MethodScores]],
    *,
    highlight: Sequence[str] = (),
    reference: str | None = "baseline",
    title: str | None = None,
) -> Any:
    """The figure of :func:`plot_method_comparison`, returned unsaved (for tests and notebooks).

    One panel per noise setting; per method a bar for the final epoch and one for the
    validation-chosen epoch, at the mean over seeds, with one standard deviation as a whisker
    and every seed as a dot.
    """
    if not table:
        raise ValueError("table is empty: no noise setting to plot")
    methods: list[str] = []
    for per_method in table.values():
        methods += [m for m in per_method if m not in methods]
    kinds = (("final", "final epoch", 1.0), ("val", "epoch chosen on noisy validation", 0.45))
    height = 0.38
    fig = new_figure(3.3 * len(table) + 1.2, 0.42 * len(methods) + 1.6)
    axes = fig.subplots(1, len(table), squeeze=False, sharey=True)[0]
    y = np.arange(len(methods), dtype=np.float64)
    for ax, (setting, per_method) in zip(axes, table.items()):
        drawn = 0
        for (i, m), (j, (kind, _, alpha)) in itertools.product(enumerate(methods), enumerate(kinds)):
            agg = over_seeds(per_method.get(m, {}).get(kind) or ())
            if agg["n"] == 0:
                continue
            drawn += 1
            at = y[i] + (j - 0.5) * height
            ax.barh(at, agg["mean"], height=height, color="tab:red" if m in highlight else "0.45", alpha=alpha,
                    xerr=agg["std"] if agg["n"] > 1 else None, error_kw=dict(elinewidth=1.0, capsize=2),
                    gid=f"{m}|{kind}")
            ax.plot(agg["values"], np.full(agg["n"], at), "o", color="black", markersize=2.2)
        ref = over_seeds(per_method.get(reference, {}).get("final") or ()) if reference else None
        if ref and ref["n"]:
            ax.axvline(ref["mean"], color="0.3", linestyle="--", linewidth=1.0)
        if not drawn:  # a setting of a partial grid that no seed has reached yet
            ax.set_xlim(0, 100)
            ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_title(setting)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, methods)
    axes[0].invert_yaxis()
    # Legend: bar shade = which epoch; the dashed line = the reference method's final accuracy.
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color="0.45", alpha=a, label=lab) for _, lab, a in kinds]
    if highlight:
        handles.append(Patch(color="tab:red", label=", ".join(highlight)))
    if reference:
        handles.append(Line2D([], [], color="0.3", linestyle="--", label=f"{reference}, final epoch"))
    handles.append(Line2D([], [], marker="o", color="black", linestyle="", markersize=3, label="one seed"))
    legend_below(fig, handles, [h.get_label() for h in handles], ncol=len(handles))
    fig.suptitle(title or "Test accuracy by method and noise (mean ± std over seeds)")
    return fig


def plot_method_comparison(
    table: Mapping[str, Mapping[str, MethodScores]],
    path: str | os.PathLike[str],
    *,
    highlight: Sequence[str] = (),
    reference: str | None = "baseline",
    title: str | None = None,
) -> Path:
    """Test accuracy of every method in every noise setting, as bars (the bench's results table).

    Parameters
    ----------
    table : mapping of str to mapping of str to mapping of str to sequence of float
        ``table[setting][method] = {"final": [acc per seed], "val": [acc per seed]}``; missing
        or failed seeds are simply absent (``None`` and NaN are skipped).
    path : path-like
        Where to write the PNG.
    highlight : sequence of str
        Methods drawn in red (e.g. the data-parameter variants).
    reference : str or None
        Method whose mean final accuracy is marked by a dashed line in every panel.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    return save_figure(method_comparison_figure(table, highlight=highlight, reference=reference, title=title), path)
