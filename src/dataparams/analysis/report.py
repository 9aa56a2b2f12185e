"""A report over run directories: the learned curriculum, accuracy and noise detection.

:func:`build_report` reads run directories (never the training code), groups the seeds of each
setting, and writes into ``out_dir``:

* one PNG per figure of :mod:`dataparams.analysis.figures` that the runs support;
* ``report.html``, self-contained (figures embedded as base64 data URIs), with a table of final
  results (mean ± std over seeds), the figures, and the runs that were skipped and why.

The per-epoch label-error metrics (:func:`~dataparams.analysis.metrics.label_error_metrics`,
under the ``detection`` keys) stay where training wrote them, in each run's ``metrics.jsonl``.

Notation as in :mod:`.runs_io`: ``N`` samples, ``K`` classes, ``E`` epochs, ``R`` seeds.
"""

from __future__ import annotations

import base64
import html
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.analysis import figures
from dataparams.analysis.metrics import estimate_num_mislabeled, over_seeds
from dataparams.analysis.runs_io import (
    LoadedRun,
    RunGroup,
    discover_runs,
    group_runs,
    load_run_dataset,
    load_runs,
)
from dataparams.config import ConfigError
from dataparams.runs import RunDirError

__all__ = ["build_report"]

# Samples drawn into the histogram-over-time figure. The histogram's shape is already clear from
# this many, and it bounds the memory of reading E snapshots of a large dataset.
_HIST_MAX_SAMPLES = 20_000
_NUM_CLASSES_SHOWN = 4
_NUM_SAMPLES_SHOWN = 6


# ----------------------------------------------------------------------------------------------
# sample images and class names
# ----------------------------------------------------------------------------------------------
class _Datasets:
    """Loads each dataset once; a dataset that cannot be loaded becomes a note, never an error."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], tuple[Any, str | None]] = {}

    def get(self, config: dict[str, Any]) -> tuple[Any, str | None]:
        data = config.get("data", {})
        key = (data.get("dataset"), data.get("data_dir"), data.get("label_set"))
        if key not in self._cache:
            self._cache[key] = load_run_dataset(config)
        return self._cache[key]


def _class_names(ds: Any) -> list[str] | None:
    return None if ds is None else list(ds.train.classes)


def _sample_image(ds: Any, source_index: int) -> np.ndarray | None:
    split = ds.train
    if split.images is not None:
        return split.images[source_index]
    try:
        from PIL import Image

        with Image.open(split.paths[source_index]) as im:
            im = im.convert("RGB")
            im.thumbnail((96, 96))
            return np.asarray(im)
    except Exception:  # an unreadable file or no Pillow: draw the curve without its image
        return None


# ----------------------------------------------------------------------------------------------
# arrays out of runs
# ----------------------------------------------------------------------------------------------
def _metric_matrix(runs: Sequence[LoadedRun], *keys: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs (E,), values (R, E)) over the union of the runs' epochs, NaN where missing;
    None when no run logged the metric at all."""
    series = [r.metric_series(*keys) for r in runs]
    epochs = np.array(sorted({int(e) for ep, _ in series for e in ep}), dtype=np.int64)
    pos = {int(e): j for j, e in enumerate(epochs)}
    out = np.full((len(runs), len(epochs)), np.nan)
    for i, (ep, vals) in enumerate(series):
        for e, v in zip(ep, vals):
            out[i, pos[int(e)]] = v
    return None if np.all(np.isnan(out)) else (epochs, out)


def _snapshot_stack(runs: Sequence[LoadedRun], key: str) -> tuple[np.ndarray, np.ndarray, list[LoadedRun]]:
    """(epochs (E,), values (R', E, n), runs used) over the epochs every run with ``key`` has."""
    histories = [(r, *r.history(key)) for r in runs]
    histories = [h for h in histories if len(h[1])]
    if not histories:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0, 0)), []
    widths = {h[2].shape[1] for h in histories}
    if len(widths) > 1:  # cannot happen for equal configs; keep the first run's shape
        histories = [h for h in histories if h[2].shape[1] == histories[0][2].shape[1]]
    common = sorted(set.intersection(*[set(map(int, h[1])) for h in histories]))
    stacked = np.stack([h[2][np.isin(h[1], common)] for h in histories])
    return np.asarray(common, dtype=np.int64), stacked, [h[0] for h in histories]


def _num_classes(run: LoadedRun, ds: Any) -> int:
    k = 0 if ds is None else len(ds.train.classes)
    if run.labels is not None:
        k = max(k, int(run.labels["given"].max()) + 1, int(run.labels["clean"].max()) + 1)
    return k


# ----------------------------------------------------------------------------------------------
# the results table
# ----------------------------------------------------------------------------------------------
@dataclass
class _Column:
    key: str
    header: str
    digits: int


def _last_estimate(run: LoadedRun) -> dict[str, Any] | None:
    last = run.last_snapshot("instance_sigma")
    if last is None:
        return None
    epoch, snap = last
    sigma = np.asarray(snap["instance_sigma"], dtype=np.float64)
    if sigma.size == 0 or not np.all(np.isfinite(sigma)) or sigma.min() <= 0:
        return None
    est = estimate_num_mislabeled(sigma)
    return {"epoch": epoch, "n_estimated": est["n_estimated"], "threshold": est["threshold"], "note": est["note"]}


def _run_values(run: LoadedRun, estimate: dict[str, Any] | None) -> dict[str, float | None]:
    last = run.metrics[-1]
    det = last.get("detection") or (run.summary or {}).get("detection") or {}
    det_loss = last.get("detection_mean_loss") or (run.summary or {}).get("detection_mean_loss") or {}
    v: dict[str, float | None] = {
        "final_test_acc": run.final("final_test_acc"),
        "val_selected_test_acc": (run.summary or {}).get("val_selected_test_acc"),
        "final_train_acc": run.final("final_train_acc"),
        "train_acc_clean": last.get("train_acc_clean") if run.is_noisy else None,
        "det_auroc": det.get("auroc"),
        "det_ap": det.get("average_precision"),
        "det_precision_at_k": det.get("precision_at_k"),
        "det_top_fraction_purity": det.get("top_fraction_purity"),
        "loss_auroc": det_loss.get("auroc"),
        "n_estimated": None if estimate is None else estimate["n_estimated"],
        "n_true": int(run.is_corrupted.sum()) if run.knows_truth and run.is_corrupted is not None else None,
    }
    if run.noise == "random":
        # Every label is random: "corrupted" only means the draw missed the true class, which
        # no score is meant to find.
        for key in ("det_auroc", "det_ap", "det_precision_at_k", "det_top_fraction_purity", "loss_auroc",
                    "n_estimated", "n_true"):
            v[key] = None
    for e in run.config.get("report_epochs") or []:
        val = (run.summary or {}).get(f"test_acc_epoch_{e}")
        if val is None:
            val = next((r.get("test_acc") for r in run.metrics if r.get("epoch") == e), None)
        v[f"test_acc_epoch_{e}"] = val
    return v


def _columns(groups_values: list[list[dict[str, Any]]]) -> list[_Column]:
    report_epochs = sorted({int(k.rsplit("_", 1)[1]) for vals in groups_values for v in vals for k in v
                            if k.startswith("test_acc_epoch_")})
    cols = [
        _Column("final_test_acc", "final test acc (%)", 2),
        _Column("val_selected_test_acc", "val-selected test acc (%)", 2),
        *[_Column(f"test_acc_epoch_{e}", f"test acc @ epoch {e} (%)", 2) for e in report_epochs],
        _Column("final_train_acc", "train acc (%)", 2),
        _Column("train_acc_clean", "train acc, true labels (%)", 2),
        _Column("det_auroc", "σ AUROC", 4),
        _Column("det_ap", "σ AP", 4),
        _Column("det_precision_at_k", "σ precision@k", 4),
        _Column("det_top_fraction_purity", "σ top-k purity (%)", 2),
        _Column("loss_auroc", "small-loss AUROC", 4),
        _Column("n_estimated", "estimated # mislabeled", 0),
        _Column("n_true", "true # mislabeled", 0),
    ]
    return [c for c in cols if any(v.get(c.key) is not None for vals in groups_values for v in vals)]


def _fmt(agg: dict[str, Any], digits: int) -> str:
    if agg["mean"] is None:
        return "–"
    if agg["n"] == 1:
        return f"{agg['mean']:.{digits}f}"
    return f"{agg['mean']:.{digits}f} ± {agg['std']:.{digits}f}"


# ----------------------------------------------------------------------------------------------
# the plan: figures to draw
# ----------------------------------------------------------------------------------------------
@dataclass
class _Figure:
    section: str
    name: str
    caption: str
    draw: Callable[[Path], Path]


@dataclass
class _Plan:
    figures: list[_Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _resolve_classes(classes: Sequence[int | str] | None, k: int, names: list[str] | None,
                     rng: np.random.Generator, notes: list[str], label: str) -> list[int]:
    if classes is None:
        return sorted(int(c) for c in rng.choice(k, size=min(_NUM_CLASSES_SHOWN, k), replace=False))
    out = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            lowered = [n.lower() for n in names or []]
            if c.lower() in lowered:
                out.append(lowered.index(c.lower()))
            else:
                notes.append(f"{label}: no class named {c!r}; left out")
            continue
        ci = int(c)
        if 0 <= ci < k:
            out.append(ci)
        else:
            notes.append(f"{label}: class {ci} is outside [0, {k}); left out")
    return out


def _resolve_samples(samples: Sequence[int] | None, run: LoadedRun, rng: np.random.Generator,
                     notes: list[str], label: str) -> list[int]:
    n = run.num_samples or 0
    if samples is not None:
        bad = [int(i) for i in samples if not 0 <= int(i) < n]
        if bad:
            notes.append(f"{label}: sample(s) {', '.join(map(str, bad))} outside [0, {n}); left out")
        return [int(i) for i in samples if 0 <= int(i) < n]
    half = _NUM_SAMPLES_SHOWN // 2
    corrupted = run.is_corrupted
    if corrupted is not None and corrupted.any() and (~corrupted).any():
        clean_idx = np.flatnonzero(~corrupted)
        bad_idx = np.flatnonzero(corrupted)
        pick = [*rng.choice(clean_idx, size=min(half, len(clean_idx)), replace=False),
                *rng.choice(bad_idx, size=min(half, len(bad_idx)), replace=False)]
        return [int(i) for i in pick]
    return sorted(int(i) for i in rng.choice(n, size=min(_NUM_SAMPLES_SHOWN, n), replace=False))


def _instance_columns(run: LoadedRun, idx: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """epochs (E,), sigma of the chosen samples (E, M) and the median over all samples (E,),
    reading one snapshot at a time so that only M columns of the (E, N) history are kept."""
    epochs, chosen, median = [], [], []
    for epoch, snap in run.iter_snapshots("instance_sigma"):
        sig = np.asarray(snap["instance_sigma"], dtype=np.float64)
        epochs.append(epoch)
        chosen.append(sig[idx])
        median.append(float(np.median(sig)))
    if not epochs:
        raise RunDirError(f"no readable snapshot with instance_sigma in {run.path / 'snapshots'}")
    return np.asarray(epochs), np.stack(chosen), np.asarray(median)


def _plan_group(group: RunGroup, datasets: _Datasets, plan: _Plan, *,
                classes: Sequence[int | str] | None, samples: Sequence[int] | None, seed: int) -> None:
    first = group.runs[0]
    label, slug = group.label, group.slug
    ds, ds_note = datasets.get(first.config)
    names = _class_names(ds)

    if first.class_curriculum:
        def draw_class(p: Path) -> Path:
            epochs, sig, used = _snapshot_stack(group.runs, "class_sigma")
            if not len(epochs):
                raise RunDirError(f"no readable snapshot with class_sigma in {first.path / 'snapshots'}")
            chosen = _resolve_classes(classes, sig.shape[2], names, np.random.default_rng(seed), plan.notes, label)
            if not chosen:
                raise ConfigError("none of the requested classes exists")
            return figures.plot_class_sigma(epochs, sig, p, classes=chosen, class_names=names,
                                            title=f"{label}: class-level curriculum ({_seeds_text(used)})")

        plan.figures.append(_Figure(
            label, f"{slug}_class_sigma.png",
            f"{label}: class parameters σ of a few classes over training, mean ± std over seeds (paper Figure 1 "
            "left). A class whose σ rises is one the model finds hard (or whose labels are noisy): its "
            "gradient is damped. A narrow band means the curriculum is repeatable across seeds.",
            draw_class,
        ))

    if first.instance_curriculum and first.labels is not None:
        idx = _resolve_samples(samples, first, np.random.default_rng(seed), plan.notes, label)
        if idx:
            images = None
            if ds is None:
                plan.notes.append(f"{label}: sample images skipped: {ds_note}")
            elif getattr(ds.train, "images", None) is None and getattr(ds.train, "paths", None) is None:
                pass  # feature vectors: there is no image to show, and nothing failed
            else:
                src = first.labels["source_index"]
                images = [_sample_image(ds, int(src[i])) for i in idx]
                if any(im is None for im in images):
                    plan.notes.append(f"{label}: some sample images could not be read")
            given = first.labels["given"][idx]
            true = first.labels["clean"][idx] if first.knows_truth else None

            def draw_instance(p: Path) -> Path:
                epochs, chosen, median = _instance_columns(first, idx)
                return figures.plot_instance_sigma(
                    epochs, chosen, p, given=given, true=true, sample_ids=idx, class_names=names, images=images,
                    reference=median, title=f"{label} (seed {first.seed}): instance parameters of single samples")

            plan.figures.append(_Figure(
                label, f"{slug}_instance_sigma.png",
                f"{label}: instance parameters σ of single samples over training (seed {first.seed}; paper Figure "
                "1 right), each beside its image, titled with the label trained on and the true label. "
                "Corrupted samples (red) should rise above the median of all samples (dashed grey).",
                draw_instance,
            ))

    kinds = [(n, k) for n, k, on in (("class σ", "class_sigma", first.class_curriculum),
                                      ("instance σ", "instance_sigma", first.instance_curriculum)) if on]
    if kinds:
        def draw_hist(p: Path) -> Path:
            panels: dict[str, np.ndarray] = {}
            epochs: np.ndarray | None = None
            for name, key in kinds:
                cols = None
                n = first.num_samples or 0
                if key == "instance_sigma" and n > _HIST_MAX_SAMPLES:
                    cols = np.sort(np.random.default_rng(seed).choice(n, _HIST_MAX_SAMPLES, replace=False))
                    name = f"{name} ({_HIST_MAX_SAMPLES:,} random samples)"
                ep, values = first.history(key, columns=cols)
                if len(ep) == 0:
                    continue
                if epochs is not None and not np.array_equal(ep, epochs):
                    common = np.intersect1d(ep, epochs)
                    panels = {k: v[np.isin(epochs, common)] for k, v in panels.items()}
                    values, ep = values[np.isin(ep, common)], common
                epochs = ep
                panels[name] = values
            if epochs is None:
                raise RunDirError(f"no readable snapshot with sigma in {first.path / 'snapshots'}")
            return figures.plot_sigma_histograms(epochs, panels, p,
                                                 title=f"{label} (seed {first.seed}): σ over training")

        plan.figures.append(_Figure(
            label, f"{slug}_sigma_histograms.png",
            f"{label}: distribution of σ at every epoch (seed {first.seed}): x is the epoch, y the value of σ "
            "in log-spaced bins, colour the number of classes or samples in the bin (the released code's "
            "TensorBoard histograms, as a heatmap).",
            draw_hist,
        ))

    noisy = [r for r in group.runs if r.is_noisy and r.knows_truth]
    if first.instance_curriculum and noisy:
        _plan_clean_vs_corrupted(label, slug, noisy, plan)


def _plan_clean_vs_corrupted(label: str, slug: str, runs: list[LoadedRun], plan: _Plan) -> None:
    caption = (f"{label}: left, mean ± std of σ over clean and over corrupted samples (paper Figure 4 left); "
               "right, percentage of corrupted samples among the top-k by σ, k = number of corrupted samples "
               "(Figure 4 right; 100% is a perfect split).")
    keys = [("instance_sigma", "clean", "mean"), ("instance_sigma", "clean", "std"),
            ("instance_sigma", "corrupted", "mean"), ("instance_sigma", "corrupted", "std"),
            ("detection", "top_fraction_purity")]
    mats = [_metric_matrix(runs, *k) for k in keys]
    if all(m is not None for m in mats):
        # metrics.jsonl already holds these per epoch, over all N samples: no snapshot needed.
        epochs = mats[0][0]
        fraction = float(np.mean([r.is_corrupted.mean() for r in runs if r.is_corrupted is not None]))
        plan.figures.append(_Figure(
            label, f"{slug}_clean_vs_corrupted.png", caption,
            lambda p, m=mats, e=epochs, f=fraction: figures.plot_clean_vs_corrupted_stats(
                e, clean=(m[0][1], m[1][1]), corrupted=(m[2][1], m[3][1]), purity=m[4][1],
                corrupted_fraction=f, path=p, title=f"{label}: instance-level curriculum under label noise"),
        ))
        return

    def draw(p: Path) -> Path:
        epochs, sig, used = _snapshot_stack(runs, "instance_sigma")
        if not len(epochs):
            raise RunDirError(f"no readable snapshot with instance_sigma in {runs[0].path / 'snapshots'}")
        return figures.plot_clean_vs_corrupted(epochs, sig, np.stack([r.is_corrupted for r in used]), p,
                                               title=f"{label}: instance-level curriculum under label noise")

    plan.figures.append(_Figure(label, f"{slug}_clean_vs_corrupted.png", caption, draw))


def _seeds_text(runs: Sequence[LoadedRun]) -> str:
    seeds = [str(r.seed) for r in runs]
    return f"mean ± std over seeds {', '.join(seeds)}" if len(seeds) > 1 else f"seed {seeds[0]}"


def _plan_overview(groups: list[RunGroup], colors: dict[str, str], datasets: _Datasets, plan: _Plan) -> None:
    acc_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for g in groups:
        keys = ["train_acc", "test_acc", "val_acc"] + (["train_acc_clean"] if any(r.is_noisy for r in g.runs) else [])
        mats = {k: _metric_matrix(g.runs, k) for k in keys}
        acc_curves[g.label] = {k: m for k, m in mats.items() if m is not None}
    acc_curves = {k: v for k, v in acc_curves.items() if v}
    if acc_curves:
        plan.figures.append(_Figure(
            "Overview", "accuracy.png",
            "Accuracy over training, mean ± std over seeds: on the labels trained on, on the true labels "
            "(noisy runs: how much of the noise is memorised), and on the test set.",
            lambda p: figures.plot_accuracy(acc_curves, p, colors=colors),
        ))

    det_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    # With all-random labels "corrupted" means "the draw differed from the true label", which no
    # score can or should find: leave those groups out.
    for g in (g for g in groups if not g.is_random_labels):
        series = {}
        for key in ("auroc", "average_precision"):
            for block, name in (("detection", key), ("detection_mean_loss", f"{key}_loss")):
                m = _metric_matrix(g.runs, block, key)
                if m is not None:
                    series[name] = m
        if series:
            det_curves[g.label] = series
    if det_curves:
        plan.figures.append(_Figure(
            "Overview", "detection.png",
            "How well each score separates corrupted from clean labels at every epoch: AUROC and average "
            "precision of instance σ (solid) and of the mean training loss over the epochs so far, the small-loss "
            "criterion (dashed).",
            lambda p: figures.plot_detection(det_curves, p, colors=colors),
        ))

    train_acc = {g.label: _metric_matrix(g.runs, "train_acc") for g in groups if g.is_random_labels}
    rnd = [g for g in groups if train_acc.get(g.label) is not None]
    if rnd and any(g.has_curriculum for g in rnd) and any(not g.has_curriculum for g in rnd):
        ds, _ = datasets.get(rnd[0].config)
        k = _num_classes(rnd[0].runs[0], ds)
        curves = {g.label: train_acc[g.label] for g in rnd}
        plan.figures.append(_Figure(
            "Overview", "random_labels_train_acc.png",
            "All-random labels (sec. 3.5): train accuracy on the random labels. The baseline memorises them; "
            "the curriculum raises the class parameters and resists.",
            lambda p: figures.plot_random_label_accuracy(curves, p, chance=100.0 / k if k else None,
                                                         colors=colors),
        ))
    elif rnd:
        plan.notes.append("random-label runs found, but the random-label figure needs both a baseline and a "
                          "curriculum run with all-random labels")


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.skipped li, .notes li { font-family: ui-monospace, monospace; font-size: 0.85em; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def _table_rows(groups: list[RunGroup], results: list[dict[str, Any]], columns: list[_Column]) -> tuple[
        list[str], list[list[str]]]:
    header = ["group", "runs", "epochs", *[c.header for c in columns]]
    rows = []
    for g, res in zip(groups, results):
        epochs = sorted({len(r.metrics) for r in g.runs})
        rows.append([g.label, str(len(g.runs)), "/".join(map(str, epochs)),
                     *[_fmt(res[c.key], c.digits) for c in columns]])
    return header, rows


def _write_html(path: Path, *, title: str, header: list[str], rows: list[list[str]], groups: list[RunGroup],
                drawn: list[tuple[_Figure, Path]], skipped: list[tuple[Path, str]], notes: list[str],
                warnings: list[str]) -> None:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{sum(len(g.runs) for g in groups)} run(s) in {len(groups)} group(s); generated "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Values are mean ± std over seeds "
             "at the last epoch; detection metrics rank samples by their instance σ (k = number of corrupted "
             "samples); the estimated number of mislabeled samples comes from a two-component mixture on "
             "log σ, without knowing the noise rate.</p>", "<h2>Results</h2>", "<table><thead><tr>"]
    parts += [f"<th>{e(h)}</th>" for h in header] + ["</tr></thead><tbody>"]
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table>")
    parts.append("<h3>Runs</h3><ul>")
    for g in groups:
        paths = ", ".join(f"<code>{e(str(r.path))}</code> (seed {e(str(r.seed))})" for r in g.runs)
        parts.append(f"<li><b>{e(g.label)}</b>: {paths}</li>")
    parts.append("</ul>")
    if skipped:
        parts.append("<h3>Skipped runs</h3><ul class='skipped'>")
        parts += [f"<li><code>{e(str(p))}</code>: {e(reason)}</li>" for p, reason in skipped]
        parts.append("</ul>")
    if notes or warnings:
        parts.append("<h3>Notes</h3><ul class='notes'>")
        parts += [f"<li>{e(n)}</li>" for n in [*notes, *warnings]]
        parts.append("</ul>")
    section = None
    for fig, png in drawn:
        if fig.section != section:
            section = fig.section
            parts.append(f"<h2>{e(section)}</h2>")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(fig.name)}'>"
                     f"<figcaption>{e(fig.caption)} <code>{e(fig.name)}</code></figcaption></figure>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------
def build_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[int | str] | None = None,
    samples: Sequence[int] | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write the figures and ``report.html`` for some runs.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Run directories, or folders holding them (``train --seeds`` writes ``OUT/seedN``).
        Runs whose configs differ only in ``seed`` (and execution-only fields) form one group,
        reported as mean ± std.
    out_dir : path-like
        Where to write; created if needed.
    classes : sequence of int or str, optional
        Classes (indices or names) for the class-parameter figure; default: ``min(4, K)`` chosen
        at random with ``seed``, as in the paper's Figure 1.
    samples : sequence of int, optional
        Samples (positions ``0 <= i < N`` in the run) for the instance-parameter figure;
        default: 3 clean and 3 corrupted (or 6 of any kind) chosen with ``seed``.
    seed : int, default 0
        Seed of those random choices.
    quiet : bool, default False
        Do not print a progress line per figure (to stderr).

    Returns
    -------
    dict
        ``html`` (path), ``figures`` (list of paths), ``groups`` (list of ``{"label", "runs", "seeds", "results"}``, ``results`` mapping
        each table column to ``{"mean", "std", "n", "values"}``), ``skipped`` (list of
        ``{"path", "reason"}``), ``notes`` (list of str: figures not drawn and why, images skipped,
        and the warnings of each run, naming the file).

    Raises
    ------
    RunDirError
        If none of ``run_dirs`` holds a readable run (the message lists why each was skipped).
    """
    out = Path(out_dir)
    paths = discover_runs(run_dirs)
    runs, skipped = load_runs(paths)
    log = (lambda msg: None) if quiet else (lambda msg: print(f"report: {msg}", file=sys.stderr, flush=True))
    for p, reason in skipped:
        log(f"skipping {p}: {reason}")
    if not runs:
        reasons = "; ".join(reason for _, reason in skipped) or "no run directory given"
        raise RunDirError(f"no readable run to report on ({reasons})")
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    log(f"{len(runs)} run(s) in {len(groups)} group(s)")
    colors = {g.label: f"C{i % 10}" for i, g in enumerate(groups)}
    datasets = _Datasets()

    plan = _Plan()
    for g in groups:
        if len(set(g.seeds)) < len(g.seeds):
            plan.notes.append(f"{g.label}: several runs share a seed ({', '.join(str(r.path) for r in g.runs)}); "
                              "the ± std treats them as independent repeats")
    _plan_overview(groups, colors, datasets, plan)
    for g in groups:
        _plan_group(g, datasets, plan, classes=classes, samples=samples, seed=seed)

    drawn: list[tuple[_Figure, Path]] = []
    for i, fig in enumerate(plan.figures, 1):
        log(f"[{i}/{len(plan.figures)}] {fig.name}")
        try:
            drawn.append((fig, fig.draw(out / fig.name)))
        except ImportError:
            raise
        except Exception as e:  # one odd run must not cost the whole report; say what went wrong
            why = str(e) if isinstance(e, (RunDirError, ValueError)) else f"{type(e).__name__}: {e}"
            plan.notes.append(f"figure {fig.name} not drawn: {why}")
            log(f"  not drawn: {why}")

    results, per_group_values = [], []
    for g in groups:
        values = [_run_values(r, _last_estimate(r) if r.instance_curriculum else None) for r in g.runs]
        per_group_values.append(values)
    columns = _columns(per_group_values)
    for values in per_group_values:
        results.append({c.key: over_seeds([v.get(c.key) for v in values]) for c in columns})

    warnings = [w for r in runs for w in r.warnings]
    header, rows = _table_rows(groups, results, columns)
    title = "Data parameters: learned curriculum and noisy-label detection"
    kw = dict(title=title, header=header, rows=rows, groups=groups, drawn=drawn, skipped=skipped,
              notes=plan.notes, warnings=warnings)
    html_path = out / "report.html"
    _write_html(html_path, **kw)
    log(f"wrote {html_path}")
    return {
        "html": html_path,
        "figures": [p for _, p in drawn],
        "groups": [{"label": g.label, "runs": [str(r.path) for r in g.runs], "seeds": g.seeds, "results": res}
                   for g, res in zip(groups, results)],
        "skipped": [{"path": str(p), "reason": reason} for p, reason in skipped],
        "notes": [*plan.notes, *warnings],
    }
