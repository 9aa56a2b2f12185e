"""The method x noise x seed grid: data parameters next to the methods people use instead.

Every method trains the same model on the same data with the same epochs, augmentation and
optimizer (those of the base preset), and gets the same tuning budget: a few values of its main
hyper-parameter, chosen on the held-out *noisy* validation split (never the test set) by
:func:`tune`. A cell (method, noise model, rate, seed) is its own directory under
``OUT/cells``; a finished cell is skipped when the grid runs again, an interrupted one resumes,
and a crashing one is recorded as failed with its error while the grid continues.

Multi-stage methods:

* ``cleanlab`` (Northcutt, Jiang & Chuang, JAIR 2021, through the ``cleanlab`` package):
  out-of-sample predicted probabilities by K-fold cross-validation (K trainings), then
  ``cleanlab.filter.find_label_issues``, then a retraining on the kept samples.
* ``aum`` (Pleiss et al., NeurIPS 2020; margins by :mod:`dataparams.methods.aum`, which
  ``tests/test_objectives.py`` checks against the ``aum`` package): two trainings, each with a
  different set of N/(K+1) threshold samples relabelled to a fake class; AUM is read at the
  epoch where that training's noisy-validation accuracy peaked (the paper reads it before the
  first learning-rate drop, i.e. before memorisation); a sample is flagged when its AUM is below
  a percentile (99th in the paper, tuned here) of the threshold samples'; then a retraining on
  the kept samples.
* ``dp-filter`` and ``dp-gce-filter`` (beyond the paper): the library's filter pipeline
  (:func:`dataparams.methods.pipelines.run_filter_pipeline`): one training of a data-parameter
  method (``pipeline.first``: ``dp-instance`` or ``dp-gce``), its samples flagged from one
  ranking (``pipeline.score``) by the noise-rate-free mixture or, after ``dp-gce``, by a fixed
  fraction of the GCE loss bound (``pipeline.rule=bound``, ``pipeline.fraction``), then a
  retraining on the kept samples (``pipeline.retrain``; the setting's other entries apply to it).
  In a grid, the cell of the first method with the same config and seed is the first training.
"""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.analysis.metrics import over_seeds
from dataparams.config import ConfigError, TrainConfig, apply_overrides, config_to_dict
from dataparams.methods.pipelines import (
    FilterPipeline,
    PipelineLayout,
    first_methods,
    run_filter_pipeline,
    save_index_file,
    train_stage,
)
from dataparams.methods.registry import METHODS as REGISTRY
from dataparams.presets import get_preset
from dataparams.runs import RunDir, RunDirError, atomic_write_text

__all__ = ["METHODS", "BenchSpec", "Cell", "finished_sibling", "load_tuning", "parse_cell", "run_cell", "run_grid",
           "summarize", "tune", "tuning_grid", "TUNING", "main"]

# Method names, variants, trainings and scores come from the library's one registry; what each
# method is tuned over is the bench's.
METHODS = tuple(REGISTRY)


def _opts(**kw: Any) -> str:
    return f"method_options={json.dumps(kw)}"


#: The tuning budget: three settings per method, the paper's or the package's default first (a
#: grid cell runs the first when nothing was tuned). A setting is a list of config overrides;
#: ``pipeline.FIELD=VALUE`` entries set a field of a filter pipeline (its other entries are
#: overrides of its retraining), and ``@name=value`` entries are options of a method only the bench
#: runs or sets (co-teaching's forget rate as a multiple of the known noise rate, which its paper
#: uses at 1x; cleanlab's ``filter_by``; AUM's threshold percentile). Data parameters: the paper's
#: learning rates first, then a log-spaced step up (the small CNN's logits are smaller than
#: WRN-28-10's, so its temperatures need a larger step to move as far).
TUNING: dict[str, tuple[tuple[str, ...], ...]] = {
    "dp-class": (("curriculum.lr_class=0.1",), ("curriculum.lr_class=0.5",), ("curriculum.lr_class=2.5",)),
    "dp-instance": (("curriculum.lr_instance=0.2",), ("curriculum.lr_instance=1.0",), ("curriculum.lr_instance=5.0",)),
    "dp-joint": (("curriculum.lr_instance=0.2",), ("curriculum.lr_instance=1.0",), ("curriculum.lr_instance=5.0",)),
    "superloss": ((_opts(lam=1.0),), (_opts(lam=0.25),), (_opts(lam=4.0),)),
    "gce": ((_opts(q=0.7),), (_opts(q=0.4),), (_opts(q=0.9),)),
    "sce": ((_opts(alpha=0.1, beta=1.0),), (_opts(alpha=1.0, beta=1.0),), (_opts(alpha=0.5, beta=0.5),)),
    "coteaching": (("@forget=1.0",), ("@forget=0.5",), ("@forget=1.25",)),
    "dp-filter": (("pipeline.retrain=instance",), ("pipeline.retrain=baseline",),
                  ("pipeline.retrain=instance", "pipeline.score=sigma")),
    "dp-gce": (("curriculum.loss_q=0.7",), ("curriculum.loss_q=0.4",), ("curriculum.loss_q=0.9",)),
    "dp-gce-filter": (("pipeline.retrain=instance",), ("pipeline.retrain=baseline",),
                      ("pipeline.retrain=instance", "curriculum.loss=gce")),
    "dp-cm-filter": (("pipeline.retrain=baseline",), ("pipeline.retrain=instance",),
                     ("pipeline.retrain=instance", "curriculum.loss=gce")),
    "dp-gce-cm-filter": (("pipeline.retrain=baseline",), ("pipeline.retrain=instance",),
                         ("pipeline.retrain=instance", "curriculum.loss=gce")),
    "cleanlab": (("@filter_by=prune_by_noise_rate",), ("@filter_by=both",), ("@filter_by=confident_learning",)),
    "aum": (("@percentile=99",), ("@percentile=90",), ("@percentile=50",)),
}
PROTOCOL = (
    "Every method trains the base preset's model on its data with its schedule (for fmnist-noisy40: the small CNN, "
    "the first 10,000 Fashion-MNIST images, 40 epochs of SGD lr 0.05 x0.1 at epochs 20 and 30, momentum 0.9, wd "
    "5e-4, batch 128, no augmentation); 10% of the noisy training data is held out with its noisy labels and is the "
    "only data used to choose anything. Tuning: each method gets the same budget, the three settings of its "
    "entry in benchmarks/bench.py's TUNING (the paper's or package's default first), tried on one cell that is never reported (uniform "
    "40%, seed 100) and chosen by the noisy-validation accuracy at the epoch that accuracy picks. The grid: every "
    "noise setting with seeds 1, 2, 3 for every method (noise, split and initialisation follow the seed). Reported "
    "per cell: test accuracy at the final epoch and at the epoch chosen on the noisy validation split (mean ± std, "
    "n=3), wall time and the number of full trainings a method costs, and how well its per-sample score ranks "
    "the corrupted labels (AUROC, AP)."
)


@dataclass(frozen=True)
class Cell:
    method: str
    noise: str
    rate: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/{self.noise}{_percent(self.rate)}/seed{self.seed}"


def parse_cell(key: str) -> Cell:
    """The :class:`Cell` of a key such as ``dp-filter/pair40/seed2`` (what :attr:`Cell.key` writes)."""
    import re

    m = re.fullmatch(r"([\w-]+)/([a-z]+)(\d+)/seed(\d+)", key.strip())
    if m is None or m.group(1) not in REGISTRY:
        raise ConfigError(f"cell {key!r} must look like METHOD/NOISE_RATE/seedS, e.g. dp-filter/pair40/seed2, with "
                          f"METHOD one of {', '.join(REGISTRY)}")
    return Cell(m.group(1), m.group(2), int(m.group(3)) / 100, int(m.group(4)))


def _percent(rate: float) -> int:
    """A noise rate as the whole percentage used in cell names and table headers (0.29 -> 29)."""
    return int(round(rate * 100))


@dataclass
class BenchSpec:
    """What to run. ``overrides`` apply to every cell (after the preset); ``chosen`` holds the
    tuned setting of each method (a list of overrides, as in :func:`tuning_grid`); ``protocol``
    says in words how the comparison is kept fair (it is written into spec.json and results.md)."""

    base: str = "fmnist-noisy40"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    # (noise model, rate, seeds)
    grid: list[tuple[str, float, list[int]]] = field(
        default_factory=lambda: [(noise, rate, [1, 2, 3]) for noise, rate in
                                 (("uniform", 0.4), ("pair", 0.4), ("uniform", 0.2), ("uniform", 0.8))]
    )
    overrides: list[str] = field(default_factory=lambda: ["data.val_fraction=0.1"])
    chosen: dict[str, list[str]] = field(default_factory=dict)
    folds: int = 5
    protocol: str = PROTOCOL

    def cells(self) -> list[Cell]:
        return [Cell(m, noise, rate, s) for noise, rate, seeds in self.grid for s in seeds for m in self.methods]


# ----------------------------------------------------------------------------------------------
# one cell
# ----------------------------------------------------------------------------------------------
def tuning_grid(method: str) -> list[list[str]]:
    """The settings ``method`` is tuned over (:data:`TUNING`), as lists of overrides."""
    return [list(t) for t in TUNING.get(method, ())]


def _setting(spec: BenchSpec, method: str) -> list[str]:
    """The setting a grid cell of ``method`` runs with: the spec's (or tuning's) choice, else
    the first of its tuning grid (the paper's or the package's default)."""
    return list(spec.chosen.get(method, (tuning_grid(method) or [[]])[0]))


def _split_special(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate the options of a bench-only method (``@name=value``) from the other entries."""
    plain, special = [], {}
    for o in overrides:
        if o.startswith("@"):
            k, _, v = o[1:].partition("=")
            special[k] = v
        else:
            plain.append(o)
    return plain, special


def _cell_config(spec: BenchSpec, cell: Cell, variant: str, extra: list[str]) -> TrainConfig:
    cfg = get_preset(f"{spec.base}/{variant}")
    return apply_overrides(cfg, [*spec.overrides, f"data.noise={cell.noise}", f"data.noise_rate={cell.rate}",
                                 f"seed={cell.seed}", *extra])


def _train(cfg: TrainConfig, out: Path, device: str) -> dict[str, Any]:
    # A finished run is reused only if it was trained with this very config.
    return train_stage(cfg, out, resume=True, device=device, quiet=True, tensorboard=False)


def _index_file(folder: Path, name: str, index: np.ndarray) -> tuple[Path, str]:
    """Save ``index`` as ``folder/name_<hash>.npy``, named by content; return the path and the hash."""
    return save_index_file(folder, f"{name}_{{digest}}.npy", index)


def _label_error_summary(scores: np.ndarray, corrupted: np.ndarray) -> dict[str, float] | None:
    """AUROC, AP and precision@k with which ``scores`` rank the ``corrupted`` labels; None where undefined."""
    from dataparams.analysis.metrics import label_error_metrics

    if not corrupted.any() or corrupted.all() or not np.all(np.isfinite(scores)):
        return None
    rep = label_error_metrics(scores, corrupted)
    return {k: rep[k] for k in ("auroc", "average_precision", "precision_at_k")}


def _pool(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The training pool of ``cfg`` (after the validation split): source index, given labels,
    corruption mask and number of classes."""
    from dataparams.data.prepare import load_training_labels

    labels = load_training_labels(cfg)
    return labels.train_index, labels.given, labels.is_corrupted, labels.num_classes


def _result(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("final_test_acc", "val_selected_test_acc", "val_selected_epoch",
                                        "val_selected_val_acc", "best_test_acc")}


def _train_on(cfg: TrainConfig, folder: Path, name: str, keep: np.ndarray, run_name: str,
              device: str) -> dict[str, Any]:
    """Train ``cfg`` on the training samples ``keep`` only (source indices), in
    ``folder/<run_name>_<digest of keep>``; the summary gains ``run_dir``."""
    keep_file, digest = _index_file(folder, name, keep)
    run_dir = folder / f"{run_name}_{digest}"
    return {**_train(apply_overrides(cfg, [f"data.keep_file={keep_file}"]), run_dir, device), "run_dir": str(run_dir)}


def _cleanlab(spec: BenchSpec, cell: Cell, out: Path, stages: Path, special: dict[str, str], extra: list[str],
              device: str):
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ImportError("the cleanlab method needs the `cleanlab` package: pip install 'dataparams[bench]'") from None
    cfg = _cell_config(spec, cell, "baseline", extra)
    pool, given, corrupted, k = _pool(cfg)
    rng = np.random.default_rng(cell.seed)
    # Stratified folds by given label, as cleanlab's own cross-validation does.
    fold = np.empty(len(pool), dtype=np.int64)
    for c in range(k):
        members = rng.permutation(np.flatnonzero(given == c))
        fold[members] = np.arange(len(members)) % spec.folds
    oof = np.zeros((len(pool), k), dtype=np.float32)
    wall = 0.0
    pos = {s: i for i, s in enumerate(pool)}
    stages.mkdir(parents=True, exist_ok=True)
    for f in range(spec.folds):
        summary = _train_on(cfg, stages, f"keep_fold{f}", pool[fold != f], f"fold{f}", device)
        wall += summary["train_time_s"]
        held = RunDir(summary["run_dir"]).load_arrays("heldout_predictions.npz")
        oof[[pos[s] for s in held["source_index"]]] = held["probs"]
    # n_jobs=1: cleanlab's parallel path relies on fork-inherited globals and fails in the
    # spawned worker processes the bench uses.
    issues = find_label_issues(labels=given, pred_probs=oof, n_jobs=1,
                               filter_by=special.get("filter_by", "prune_by_noise_rate"))
    quality = get_label_quality_scores(given, oof)
    summary = _train_on(cfg, out, "keep_final", pool[~issues], "retrain", device)
    return {**_result(summary), "train_time_s": wall + summary["train_time_s"], "trainings": spec.folds + 1,
            "n_flagged": int(issues.sum()), "detection": _label_error_summary(1.0 - quality, corrupted)}


def _aum(spec: BenchSpec, cell: Cell, out: Path, stages: Path, special: dict[str, str], extra: list[str],
         device: str):
    cfg = _cell_config(spec, cell, "baseline", extra)
    pool, given, corrupted, k = _pool(cfg)
    rng = np.random.default_rng(cell.seed)
    perm = rng.permutation(len(pool))
    m = len(pool) // (k + 1)
    percentile = float(special.get("percentile", 99))
    aums, thresholds, wall = [], [], 0.0
    stages.mkdir(parents=True, exist_ok=True)
    for r in range(2):
        thr_pos = np.sort(perm[r * m : (r + 1) * m])
        thr_file, digest = _index_file(stages, f"threshold_{r}", pool[thr_pos])
        run_cfg = apply_overrides(cfg, ["method=aum", f"data.threshold_file={thr_file}"])
        summary = _train(run_cfg, stages / f"stage{r}_{digest}", device)
        wall += summary["train_time_s"]
        run = RunDir(stages / f"stage{r}_{digest}")
        # AUM is read where the noisy-validation accuracy peaked: the AUM paper stops at the
        # first learning-rate drop, before the network memorises; with a constant learning rate
        # the threshold samples are memorised later on and their margins stop being a reference.
        epoch = summary.get("val_selected_epoch") or run.snapshot_epochs()[-1]
        aum = run.load_snapshot(epoch)["aum"].astype(np.float64)
        src = run.load_arrays("labels.npz")["source_index"]
        if not np.array_equal(src, pool):
            raise RuntimeError(f"{run.path}: training pool differs from the cell's pool")
        is_thr = np.zeros(len(pool), dtype=bool)
        is_thr[thr_pos] = True
        thresholds.append(np.percentile(aum[is_thr], percentile))
        aums.append(np.where(is_thr, np.nan, aum))
    aum = np.nanmean(np.vstack(aums), axis=0)  # each sample is scored where it was not a threshold sample
    threshold = float(np.mean(thresholds))
    flagged = aum <= threshold
    summary = _train_on(cfg, out, "keep_final", pool[~flagged], "retrain", device)
    return {**_result(summary), "train_time_s": wall + summary["train_time_s"], "trainings": 3,
            "n_flagged": int(flagged.sum()), "detection": _label_error_summary(-aum, corrupted)}


def finished_sibling(out: Path, cell: Cell, method: str, cfg: TrainConfig) -> Path | None:
    """``method``'s cell of the same setting and seed in the same bench, when it is a finished
    run of exactly ``cfg``; else None.

    ``out`` is ``cell``'s own folder. A grid cell's folder is ``OUT/cells/<method>/<setting>/seed<S>``;
    any other folder (a tuning or screening one) has no sibling cells. A filter cell trains its first
    stage only when its first method has no such sibling."""
    if out.parts[-3:] != tuple(cell.key.split("/")):
        return None  # a tuning or screening folder: no sibling cells
    sibling = out.parents[2] / Cell(method, cell.noise, cell.rate, cell.seed).key
    if not (sibling / "summary.json").exists():
        return None
    try:
        with RunDir(sibling, defaults=config_to_dict(TrainConfig())).checked(config_to_dict(cfg)):  # checks only: the run exists
            pass
    except RunDirError:
        return None
    return sibling


# Settings written before the filter pipelines moved into the library spell their options as
# bench pseudo-options: @first=METHOD, @score=SCORE, @flag=mixture or @flag=FRACTION (of the GCE
# loss bound), @retrain=VARIANT, with dp-instance, sigma-mean, mixture and instance where absent
# (whatever the method). The committed spec.json and tuning.json files of benchmarks/results hold
# them; they are read as the pipeline fields they stand for, so that those results stay reproducible.
_LEGACY_KEYS = ("first", "score", "flag", "retrain")


def _translate_legacy(method: str, setting: list[str]) -> list[str]:
    """``setting`` of ``method`` with old ``@`` spellings of a filter pipeline's options written
    as ``pipeline.FIELD=VALUE`` entries (all of them: the old defaults were not the registry's)."""
    if not isinstance(REGISTRY[method].pipeline, FilterPipeline):
        return list(setting)
    legacy, rest = {}, []
    for o in setting:
        key, _, value = o[1:].partition("=")
        if o.startswith("@") and key in _LEGACY_KEYS:
            legacy[key] = value
        else:
            rest.append(o)
    if not legacy:
        return list(setting)
    first = legacy.get("first", "dp-instance")
    if first not in first_methods():
        raise ConfigError(f"@first must be a one-training method with instance data parameters "
                          f"({', '.join(first_methods())}), got {first!r}")
    flag = legacy.get("flag", "mixture")
    if flag == "mixture":
        rule = ["pipeline.rule=mixture", "pipeline.fraction=none"]
    else:
        try:
            float(flag)
        except ValueError:
            raise ConfigError(f"@flag must be 'mixture' or a fraction of the GCE loss bound, got {flag!r}") from None
        rule = ["pipeline.rule=bound", f"pipeline.fraction={flag}"]
    return [f"pipeline.first={first}", f"pipeline.score={legacy.get('score', 'sigma-mean')}", *rule,
            f"pipeline.retrain={legacy.get('retrain', 'instance')}", *rest]


def _filter_pipeline(method: str, setting: list[str]) -> FilterPipeline:
    """The registry's pipeline of ``method`` with ``setting`` applied: its ``pipeline.*`` entries
    set fields, its other entries (but ``@`` options) are overrides of the retraining."""
    base = REGISTRY[method].pipeline
    assert isinstance(base, FilterPipeline)
    pipeline, rest = base.with_options(_translate_legacy(method, setting))
    extra, _ = _split_special(rest)
    return dataclasses.replace(pipeline, retrain_overrides=(*pipeline.retrain_overrides, *extra))


def _setting_key(method: str, setting: list[str]) -> Any:
    """What ``setting`` of ``method`` means, for telling settings apart whatever their spelling."""
    if isinstance(REGISTRY[method].pipeline, FilterPipeline):
        try:
            return _filter_pipeline(method, setting)
        except ConfigError:
            pass
    return tuple(setting)


def _first_stage(cfg: TrainConfig, stages: Path, device: str) -> Path:
    """The first training of a filter, in ``stages/curriculum_<digest of cfg>``, trained unless finished."""
    stages.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    run_dir = stages / f"curriculum_{digest}"
    # Several settings (or, in a screen, several methods) may share this training: one trains
    # it, the others wait for it and reuse it.
    with open(stages / f"curriculum_{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _train(cfg, run_dir, device)
    return run_dir


def _dp_filter(spec: BenchSpec, cell: Cell, out: Path, stages: Path, special: dict[str, str], extra: list[str],
               device: str):
    """The library's filter pipeline (:func:`~dataparams.methods.pipelines.run_filter_pipeline`)
    with the setting's options (``extra``: its ``pipeline.*`` entries and the retraining's
    overrides). The first training is the one of ``pipeline.first`` with its setting as the spec
    chose it or, when the spec chose none, the preset's values (not the first tuning setting that
    an untuned cell of that method runs: dp-filter's first stage was tuned on the preset's instance
    curriculum). In a grid whose cell of that method for this setting and seed is a finished run
    of the same config, that run is used as it is instead of training it again."""
    pipeline = _filter_pipeline(cell.method, extra)
    first = pipeline.first_method()
    cfg_first = _cell_config(spec, cell, first.variant, [*first.overrides, *spec.chosen.get(pipeline.first, [])])
    pipeline.check(cfg_first)  # before anything trains
    cfg_retrain = _cell_config(spec, cell, pipeline.retrain, list(pipeline.retrain_overrides))
    first_run = finished_sibling(out, cell, pipeline.first, cfg_first) or _first_stage(cfg_first, stages, device)
    res = run_filter_pipeline(pipeline, cfg_first, cfg_retrain, out, method=cell.method, first_run=first_run,
                              layout=PipelineLayout(kept="keep_final_{digest}.npy", stage2="retrain_{digest}"),
                              resume=True, device=device, quiet=True, tensorboard=False)
    return {**_result(res["summary"]), "train_time_s": res["train_time_s"], "trainings": 2,
            "n_flagged": res["n_flagged"], "first_run": res["stages"]["stage1"]["run_dir"],
            "detection": res["detection"]}


def _single(spec: BenchSpec, cell: Cell, out: Path, stages: Path, special: dict[str, str], extra: list[str],
            device: str):
    method = REGISTRY[cell.method]
    extra = list(extra)
    if cell.method == "coteaching":
        factor = float(special.get("forget", 1.0))
        extra.append(f'method_options={{"forget_rate": {min(0.95, factor * cell.rate)}}}')
    cfg = _cell_config(spec, cell, method.variant, [*method.overrides, *extra])
    summary = _train(cfg, out, device)
    return {**_result(summary), "train_time_s": summary["train_time_s"], "trainings": method.trainings,
            **_single_detection(cell.method, out, summary)}


# Where each one-training score's detection numbers are logged in metrics.jsonl.
_SCORE_BLOCK = {"sigma": "detection", "superloss": "detection", "mean-loss": "detection_mean_loss",
                "sigma-mean": "detection_sigma_mean"}


def _single_detection(method: str, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Detection quality of a one-training method, at the last epoch and at the val-selected epoch.

    Read from the epoch records: data parameters and SuperLoss score by their per-sample
    parameter (sigma, confidence); the baseline and co-teaching by the small-loss criterion
    (``mean-loss``, the mean per-sample training loss over the epochs so far).
    """
    run = RunDir(out)
    history = run.read_metrics()
    final_epoch = history[-1]["epoch"] if history else None
    picked = summary.get("val_selected_epoch") or final_epoch
    res: dict[str, Any] = {"detection": None, "detection_valsel": None}
    block = _SCORE_BLOCK.get(REGISTRY[method].score or "")
    if block is None:
        return res
    # The method's own score, and, where the run has them, sigma integrated over training and the
    # loss under the learned temperatures averaged over training (other rankings of the same run).
    for prefix, blk in (("detection", block), ("detection_sigma_mean", "detection_sigma_mean"),
                        ("detection_mean_loss", "detection_mean_loss")):
        by_epoch = {r["epoch"]: r.get(blk) for r in history}
        for suffix, e in (("", final_epoch), ("_valsel", picked)):
            if by_epoch.get(e):
                res[prefix + suffix] = {k: by_epoch[e][k] for k in ("auroc", "average_precision", "precision_at_k")}
    return res


def run_cell(spec: BenchSpec, cell: Cell, root: Path, *, device: str = "cpu",
             setting: list[str] | None = None, stages: Path | None = None) -> dict[str, Any]:
    """Run one cell into ``root/cells/<key>`` (or reuse its result); never raises.

    With ``setting`` (tuning) the cell runs in ``root`` itself with that setting, and the
    trainings that do not depend on it (cleanlab's folds, AUM's threshold runs) go to
    ``stages`` so that the settings of one method share them.
    """
    # Absolute paths: the index files they name end up in configs, which must not depend on
    # the directory the bench was started from.
    root = Path(root).resolve()
    out = root / "cells" / cell.key if setting is None else root
    stages = out if stages is None else Path(stages).resolve()
    result_file = out / "result.json"
    if result_file.exists():
        res = json.loads(result_file.read_text())
        if res.get("status") == "ok":
            return res
    out.mkdir(parents=True, exist_ok=True)
    chosen = _setting(spec, cell.method) if setting is None else setting
    t0 = time.perf_counter()
    try:
        if cell.method not in METHODS:
            raise ConfigError(f"unknown bench method {cell.method!r}; choose from {', '.join(METHODS)}")
        extra, special = _split_special(_translate_legacy(cell.method, list(chosen)))
        kind = REGISTRY[cell.method].pipeline
        fn = _dp_filter if isinstance(kind, FilterPipeline) else {"cleanlab": _cleanlab, "aum": _aum}.get(
            kind or "", _single)
        res = {"status": "ok", **fn(spec, cell, out, stages, special, extra, device)}
    except Exception as e:  # recorded, and the grid goes on
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    res.update({"cell": dataclasses.asdict(cell), "setting": chosen, "wall_s": time.perf_counter() - t0})
    atomic_write_text(result_file, json.dumps(res, indent=2, allow_nan=True) + "\n")
    return res


def _worker(args: tuple[Any, ...]) -> dict[str, Any]:
    spec, cell, root, device, threads, setting, stages = args
    import torch

    torch.set_num_threads(threads)
    return run_cell(spec, cell, Path(root), device=device, setting=setting,
                    stages=None if stages is None else Path(stages))


def _tune_worker(args: tuple[Any, ...]) -> list[dict[str, Any]]:
    """All settings of one method, in turn: they share the setting-independent stages."""
    spec, cell, root, device, threads, settings = args
    return [_worker((spec, cell, str(Path(root) / f"{cell.method}_{i}"), device, threads, setting,
                     str(Path(root) / f"{cell.method}_stages"))) for i, setting in enumerate(settings)]


def _run_many(fn: Any, jobs: list[tuple[Any, ...]], n_jobs: int, desc: str, quiet: bool) -> list[Any]:
    """``fn(job)`` for every job, ``n_jobs`` at a time in separate processes, with a progress bar."""
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="job", file=sys.stderr, dynamic_ncols=True)
    results: list[Any] = []

    def done(job: tuple[Any, ...], res: Any) -> None:
        results.append(res)
        if bar:
            bar.update(1)
            status = res["status"] if isinstance(res, dict) else ",".join(r["status"] for r in res)
            bar.set_postfix_str(f"{job[1].key}: {status}")

    if n_jobs <= 1:
        for j in jobs:
            done(j, fn(j))
    else:
        ctx = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
            pending = {pool.submit(fn, j): j for j in jobs}
            for fut in futures.as_completed(pending):
                j = pending[fut]
                try:
                    res = fut.result()
                except Exception as e:  # a worker that died (e.g. out of memory)
                    res = {"status": "failed", "error": f"worker died: {e}", "cell": dataclasses.asdict(j[1])}
                done(j, res)
    if bar:
        bar.close()
    return results


def _threads(n_jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, n_jobs))


# ----------------------------------------------------------------------------------------------
# tuning and the grid
# ----------------------------------------------------------------------------------------------
def tune(spec: BenchSpec, root: Path, *, noise: str = "uniform", rate: float = 0.4, seed: int = 100,
         device: str = "cpu", jobs: int = 1, quiet: bool = False) -> dict[str, list[str]]:
    """Try each method's :func:`tuning_grid` settings on one noisy cell; keep the best by the
    noisy-validation accuracy at the validation-selected epoch. Writes ``root/tuning.{json,md}``."""
    root = Path(root).resolve()
    # One job per method (methods without hyper-parameters, baseline and oracle, have none).
    jobs_list = [(spec, Cell(m, noise, rate, seed), str(root / "tuning"), device, _threads(jobs), tuning_grid(m))
                 for m in spec.methods if tuning_grid(m)]
    results = [r for rs in _run_many(_tune_worker, jobs_list, jobs, "tuning", quiet)
               for r in (rs if isinstance(rs, list) else [rs])]
    chosen: dict[str, list[str]] = {}
    rows = ["| method | setting | val acc (val-selected epoch) | status |", "|---|---|---:|---|"]
    for method in spec.methods:
        best, best_val = None, -math.inf
        for r in [r for r in results if r.get("cell", {}).get("method") == method]:
            val = _val_acc(r)
            rows.append(f"| {method} | {' '.join(r.get('setting', []))} | "
                        f"{'n/a' if val is None else f'{val:.2f}'} | {r['status']} |")
            if val is not None and val > best_val:
                best, best_val = r["setting"], val
        if best is not None:
            chosen[method] = best
    (root / "tuning.json").write_text(json.dumps({"cell": [noise, rate, seed], "chosen": chosen}, indent=2) + "\n")
    (root / "tuning.md").write_text(
        f"Tuning on {noise} {rate:g} noise, seed {seed}, chosen by noisy-validation accuracy:\n\n" + "\n".join(rows)
        + "\n\nChosen: " + json.dumps(chosen) + "\n")
    return chosen


def _val_acc(res: dict[str, Any]) -> float | None:
    """Noisy-validation accuracy at the val-selected epoch of the run that produced ``res``."""
    if res.get("status") != "ok" or res.get("val_selected_epoch") is None:
        return None
    return res.get("val_selected_val_acc")


def run_grid(spec: BenchSpec, root: Path, *, device: str = "cpu", jobs: int = 1, quiet: bool = False) -> dict[str, Any]:
    """Run every cell of ``spec`` (skipping finished ones) and write the results tables."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    load_tuning(spec, root)
    # Filters run after every other cell, so that the cell of their first method (same setting
    # and seed) has finished and is used in place rather than trained a second time.
    late = {m for m in spec.methods if _reuses_a_cell(spec, m)}
    for batch in ([c for c in spec.cells() if c.method not in late], [c for c in spec.cells() if c.method in late]):
        if batch:
            _run_many(_worker, [(spec, c, str(root), device, _threads(jobs), None, None) for c in batch], jobs,
                      "bench", quiet)
    return summarize(spec, root)


def _reuses_a_cell(spec: BenchSpec, method: str) -> bool:
    """Whether ``method`` is a filter pipeline whose first method is in the grid too."""
    key = _setting_key(method, _setting(spec, method))
    return isinstance(key, FilterPipeline) and key.first in spec.methods


def _translated(chosen: dict[str, list[str]]) -> dict[str, list[str]]:
    """``chosen`` with the old ``@`` spellings of filter options translated (see _translate_legacy)."""
    return {m: _translate_legacy(m, list(s)) if m in REGISTRY else list(s) for m, s in chosen.items()}


def load_tuning(spec: BenchSpec, root: Path) -> None:
    """Settings chosen by an earlier ``tune`` stage in ``root``; the spec's own choices win."""
    tuning = root / "tuning.json"
    if tuning.exists():
        spec.chosen = {**_translated(json.loads(tuning.read_text())["chosen"]), **spec.chosen}


def summarize(spec: BenchSpec, root: Path) -> dict[str, Any]:
    """Collect every cell's result.json into ``results.json``, ``results.md`` and ``results.png``."""
    root = Path(root).resolve()
    load_tuning(spec, root)
    cells: dict[str, dict[str, Any]] = {}
    for c in spec.cells():
        f = root / "cells" / c.key / "result.json"
        cells[c.key] = json.loads(f.read_text()) if f.exists() else {"status": "missing", "cell": dataclasses.asdict(c)}
        res = cells[c.key]
        if res["status"] == "ok" and REGISTRY[c.method].pipeline is None and "detection_valsel" not in res:
            # results written before the val-selected detection was recorded
            res.update(_single_detection(c.method, root / "cells" / c.key, json.loads(
                (root / "cells" / c.key / "summary.json").read_text())))
    columns = [(noise, rate) for noise, rate, _ in spec.grid]

    def ms(vals: list[float], digits: int = 2) -> str:
        agg = over_seeds(vals)
        if agg["n"] == 0:
            return "n/a"
        if agg["n"] == 1:
            return f"{agg['mean']:.{digits}f} (n=1)"
        return f"{agg['mean']:.{digits}f} ± {agg['std']:.{digits}f} (n={agg['n']})"

    def group(method: str, noise: str, rate: float) -> list[dict[str, Any]]:
        seeds = next(s for n, r, s in spec.grid if n == noise and r == rate)
        return [cells[Cell(method, noise, rate, s).key] for s in seeds]

    def cell_text(rs: list[dict[str, Any]], key: str) -> str:
        # Seeds not run yet only lower n; a cell no seed has reached says so; failures are named.
        if all(r["status"] == "missing" for r in rs):
            return "not run"
        bad = [r for r in rs if r["status"] not in ("ok", "missing")]
        text = ms([r.get(key) for r in rs if r["status"] == "ok"])
        if bad:
            text += " / " + ", ".join(f"{r['status']}" + (f": {r.get('error', '')[:60]}" if r.get("error") else "")
                                      for r in bad)
        return text

    head = " | ".join(f"{n} {_percent(r)}%" for n, r in columns)
    lines = [f"# Bench: {spec.base}, methods x noise, test accuracy (%)", "",
             "Reproduce any single cell: `python benchmarks/bench.py --spec spec.json --out OUT --cell METHOD/NOISE_RATE/seedS` "
             "(e.g. `--cell dp-filter/pair40/seed2`; spec.json beside this file holds the grid, the overrides and the "
             "settings chosen by tuning); the whole grid: `python benchmarks/bench.py --spec spec.json --out OUT --stage grid "
             "--jobs 2`. Cells are `mean ± std (n=seeds)`.", "", f"Protocol: {spec.protocol}", ""]
    for title, key in (("Final epoch", "final_test_acc"), ("Epoch chosen on the noisy validation split",
                                                             "val_selected_test_acc")):
        lines += [f"## {title}", "", f"| method | {head} |", "|---|" + "---:|" * len(columns)]
        for m in spec.methods:
            lines.append(f"| {m} | " + " | ".join(cell_text(group(m, n, r), key) for n, r in columns) + " |")
        lines.append("")
    lines += ["## Wall time per run (s) and trainings per run", "", f"| method | {head} | trainings |",
              "|---|" + "---:|" * (len(columns) + 1)]
    for m in spec.methods:
        rs = [r for n, r in columns for r in group(m, n, r)]
        tr = next((r.get("trainings") for r in rs if r.get("trainings")), None)
        lines.append(f"| {m} | " + " | ".join(ms([x.get("train_time_s") for x in group(m, n, r)
                                                  if x["status"] == "ok"]) for n, r in columns) + f" | {tr} |")
    lines += ["", "## Noise detection: how well each method's per-sample score ranks the corrupted labels", "",
              "Scores: data parameters, instance sigma; SuperLoss, -log confidence; baseline and co-teaching, the "
              "small-loss criterion (mean training loss so far); cleanlab, 1 - label quality from K-fold out-of-sample "
              "probabilities; AUM, -AUM read at the noisy-validation peak; dp-filter, dp-gce-filter and dp-cm-filter, "
              "the score their first training flags by. Rows 'ranked by ...' rank the same runs by another score: sigma-mean (sigma "
              "integrated over training, the geometric mean over epochs) and mean-loss (each sample's loss under "
              "its learned temperature, averaged over the epochs). 'last' is the final epoch, 'val' the epoch "
              "chosen on the noisy validation split (cleanlab, AUM and the filters have one value).", ""]
    for n, r in columns:
        lines += [f"### {n} {_percent(r)}%", "", "| method | AUROC last | AUROC val | AP last | AP val | "
                  "precision at true count, val | trainings |", "|---|---:|---:|---:|---:|---:|---:|"]
        rows = [(m, m, "detection") for m in spec.methods]
        rows += [(f"{m}, ranked by {name}", m, block) for m in spec.methods if REGISTRY[m].score == "sigma"
                 for name, block in (("sigma-mean", "detection_sigma_mean"), ("mean-loss", "detection_mean_loss"))]
        for label, m, block in rows:
            rs = [x for x in group(m, n, r) if x["status"] == "ok" and x.get(block)]
            if not rs:
                continue

            def det(x: dict[str, Any], which: str, k: str, block: str = block) -> float:
                d = x.get(block + which) or x[block]
                return d[k]

            lines.append(f"| {label} | " + " | ".join(
                ms([det(x, w, k) for x in rs], 4) for w, k in (("", "auroc"), ("_valsel", "auroc"),
                                                           ("", "average_precision"),
                                                           ("_valsel", "average_precision"),
                                                           ("_valsel", "precision_at_k")))
                         + f" | {rs[0].get('trainings')} |")
        lines.append("")
    # The settings each cell actually ran with (recorded in its result), not what the spec in
    # hand would choose now: a summary rewritten later must describe the runs it summarises.
    used: dict[str, Any] = {}
    for m in spec.methods:
        seen = [r["setting"] for n, rt in columns for r in group(m, n, rt) if r["status"] == "ok" and "setting" in r]
        keys = [_setting_key(m, x) for x in seen]  # the same setting in old and new spellings is one
        distinct = [x for i, x in enumerate(seen) if keys[i] not in keys[:i]]
        used[m] = distinct[0] if len(distinct) == 1 else distinct or _setting(spec, m)
    lines += ["Settings (chosen on the noisy validation split; as run): " + json.dumps(used)]
    figure = _plot_results(spec, root, columns, group)
    if figure is not None:
        lines[2:2] = [f"![test accuracy by method and noise]({figure.name})", ""]
    text = "\n".join(lines) + "\n"
    (root / "results.md").write_text(text)
    out = {"spec": dataclasses.asdict(spec), "cells": {k: {kk: vv for kk, vv in v.items() if kk != "traceback"}
                                                       for k, v in cells.items()}}
    (root / "results.json").write_text(json.dumps(out, indent=2, allow_nan=True) + "\n")
    return out


def _plot_results(spec: BenchSpec, root: Path, columns: list[tuple[str, float]], group: Any) -> Path | None:
    """``results.png``: the accuracy tables as bars; skipped (None) without matplotlib."""
    table = {
        f"{noise} {_percent(rate)}%": {
            m: {"final": [r.get("final_test_acc") for r in group(m, noise, rate) if r["status"] == "ok"],
                "val": [r.get("val_selected_test_acc") for r in group(m, noise, rate) if r["status"] == "ok"]}
            for m in spec.methods
        }
        for noise, rate in columns
    }
    try:
        from dataparams.analysis.figures import plot_method_comparison

        return plot_method_comparison(table, root / "results.png",
                                      highlight=[m for m in spec.methods if m.startswith("dp-")],
                                      title=f"{spec.base}: test accuracy by method and noise (mean ± std over seeds)")
    except ImportError:
        return None


def load_spec(path: Path | None, **changes: Any) -> BenchSpec:
    spec = BenchSpec()
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read bench spec {path}: {e}") from None
        unknown = set(data) - {f.name for f in dataclasses.fields(BenchSpec)}
        if unknown:
            raise ConfigError(f"unknown bench spec keys: {', '.join(sorted(unknown))}")
        data["grid"] = [tuple(g) for g in data.get("grid", spec.grid)]
        # Spec files written before the filter pipelines moved into the library spell their
        # options with @ (e.g. benchmarks/results/fmnist_methods/spec.json): read as the pipeline
        # fields they stand for, so that their results stay reproducible.
        data["chosen"] = _translated(data.get("chosen", {}))
        spec = BenchSpec(**{**dataclasses.asdict(spec), **data})
    spec = dataclasses.replace(spec, **{k: v for k, v in changes.items() if v is not None})
    bad = [m for m in spec.methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown bench method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    get_preset(f"{spec.base}/baseline")  # fails early on a bad base
    return spec


# ----------------------------------------------------------------------------------------------
# the command line: python benchmarks/bench.py
# ----------------------------------------------------------------------------------------------
def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="python benchmarks/bench.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Data parameters vs peer methods: run every method on the same model, data and budget over a "
        "grid of noise models, rates and seeds. Each cell is its own run directory under OUT/cells; finished cells "
        "are skipped, interrupted ones resume, crashing ones are recorded as failed. Writes OUT/results.md and "
        "results.json (final epoch and noisy-validation-selected epoch, wall time, detection quality) and "
        "OUT/results.png (the accuracy tables as bars, when matplotlib is installed).\n\nmethods:\n"
        + "\n".join(f"  {m.name:<16} {m.summary} ({m.trainings} training{'s' if m.trainings > 1 else ''})"
                    for m in REGISTRY.values()))
    p.add_argument("--out", default="runs/bench", help="bench folder (default: %(default)s)")
    p.add_argument("--spec", help="a JSON file with BenchSpec fields (base, methods, grid, overrides, chosen, folds)")
    p.add_argument("--base", help="base experiment, default fmnist-noisy40 (its baseline preset sets model, data, "
                   "epochs and optimizer for every method)")
    p.add_argument("--methods", nargs="+", choices=list(REGISTRY), metavar="METHOD",
                   help="subset of the methods listed above, compared side by side (default: all)")
    p.add_argument("--set", dest="overrides", action="append", metavar="FIELD=VALUE",
                   help="config override for every cell (replaces the default data.val_fraction=0.1 list); "
                   "repeat for several")
    p.add_argument("--stage", choices=["tune", "grid", "all", "summary"], default="all",
                   help="tune: choose each method's setting on the noisy validation split; grid: run the cells "
                   "(with the tuned settings when OUT/tuning.json exists); all: both; summary: only rewrite "
                   "the tables (default: %(default)s)")
    p.add_argument("--cell", metavar="METHOD/NOISE_RATE/seedS",
                   help="run one cell only, e.g. dp-filter/pair40/seed2, with the spec's settings (its 'chosen', or "
                   "OUT/tuning.json); prints its result")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel, each with cores/jobs threads")
    p.add_argument("--device", default="cpu", help="device of every cell (default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/bench.py ...``: tune, run the grid, or one cell; prints the table."""
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except ConfigError as e:  # a bad spec, cell key or override: one line, as the dataparams command does
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: Any) -> int:
    spec = load_spec(Path(args.spec) if args.spec else None, base=args.base, methods=args.methods,
                     overrides=args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cell:
        load_tuning(spec, out)
        result = run_cell(spec, parse_cell(args.cell), out, device=args.device)
        print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=2, allow_nan=True))
        return 0 if result["status"] == "ok" else 1
    atomic_write_text(out / "spec.json", json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    if args.stage in ("tune", "all"):
        tune(spec, out, device=args.device, jobs=args.jobs, quiet=args.quiet)
    if args.stage in ("grid", "all"):
        run_grid(spec, out, device=args.device, jobs=args.jobs, quiet=args.quiet)
    if args.stage == "summary":
        summarize(spec, out)
    print((out / ("tuning.md" if args.stage == "tune" else "results.md")).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
