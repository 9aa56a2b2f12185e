"""The house style of the package's figures, shared by every module that draws.

:mod:`dataparams.analysis.figures` (classification runs), :mod:`dataparams.analysis.issues_html`
(find-issues) and :mod:`dataparams.detection.figures` (detection runs) draw with these helpers, so
that their figures look alike: a ``matplotlib.figure.Figure`` with constrained layout on the Agg
canvas (never ``pyplot``, so drawing changes no global matplotlib state and needs no display),
saved as a PNG at :data:`DPI`; curves over epochs as the mean over seeds with a band of one
standard deviation.

Notation: ``R`` runs (seeds), ``E`` epochs. Epochs are 1-based.

Matplotlib is an optional dependency (``pip install 'dataparams[report]'``); it is imported only
when a figure is made.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DPI",
    "as_runs",
    "cycle_color",
    "format_epoch_axis",
    "legend_below",
    "mean_std",
    "new_figure",
    "plot_band",
    "save_figure",
]

#: Resolution of every saved PNG, in dots per inch.
DPI = 110


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches with constrained layout.

    Raises ``ImportError`` with the install command when matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "figures need matplotlib; install it with: pip install 'dataparams[report]'"
        ) from None
    # Constrained layout keeps titles, labels and colorbars inside the canvas.
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` to ``path`` (parent folders created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" on top of constrained layout catches a legend placed outside the axes.
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    return path


def cycle_color(i: int) -> str:
    """The ``i``-th colour of matplotlib's default cycle (``"C0"`` to ``"C9"``, then again)."""
    return f"C{i % 10}"


def as_runs(values: ArrayLike, ndim: int, name: str) -> np.ndarray:
    """``values`` as float with a leading seed axis: (E, ...) becomes (1, E, ...).

    ``ndim`` is the number of dimensions with the seed axis; ``values`` must have ``ndim`` or
    ``ndim - 1``, else ``ValueError`` names ``name`` and the shape.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == ndim - 1:
        arr = arr[None]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim - 1} or {ndim} dimensions, got shape {arr.shape}")
    return arr


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (``ddof=1``) over axis 0, ignoring NaN; std is 0 for a single run."""
    with warnings.catch_warnings():
        # An all-NaN column (an epoch lacking a metric in every seed) is a legitimate NaN.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    return mean, np.nan_to_num(std)


def plot_band(ax: Any, x: np.ndarray, values: np.ndarray, *, label: str, color: str, linestyle: str = "-",
              floor: float | None = None) -> None:
    """Draw on ``ax`` the mean over seeds of ``values`` (R, E) at ``x`` (E,), with a band of one std.

    Markers are drawn when there are at most 12 points; the band only for more than one run with
    some spread, and its lower edge is cut at ``floor`` when given.
    """
    mean, std = mean_std(values)
    ax.plot(x, mean, color=color, linestyle=linestyle, label=label, linewidth=1.8,
            marker="o" if len(x) <= 12 else None, markersize=3)
    if values.shape[0] > 1 and np.any(std > 0):
        lo = mean - std if floor is None else np.maximum(mean - std, floor)
        ax.fill_between(x, lo, mean + std, color=color, alpha=0.2, linewidth=0)


def format_epoch_axis(ax: Any, x: np.ndarray) -> None:
    """Label the x axis of ``ax`` "epoch", fit it to the epochs ``x`` with integer ticks, add a grid."""
    ax.set_xlabel("epoch")
    if len(x):
        ax.set_xlim(float(np.min(x)) - 0.5, float(np.max(x)) + 0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def legend_below(fig: Any, handles: list[Any], labels: list[str], *, ncol: int) -> None:
    """One legend under all panels of ``fig``, in ``ncol`` columns."""
    try:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9)
    except ValueError:  # matplotlib < 3.7 has no "outside"; bbox_inches="tight" keeps it in the PNG
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, fontsize=9)
