"""Multi-stage methods as library pipelines: train, flag the suspect samples, retrain on the rest.

The dp-filter family (``dp-filter`` and ``dp-gce-filter`` in
:data:`dataparams.methods.registry.METHODS`; beyond the paper). Stage 1 is one training of a
one-training data-parameter method (``dp-instance``, ``dp-joint`` or ``dp-gce``). Its training
samples are ranked by one score of :func:`dataparams.analysis.find_issues.find_issues` and flagged
without being told the noise rate (:func:`filter_flags`): by the two-Gaussian mixture on the log
score, since corrupted samples end training with large instance temperatures (Saxena, Tuzel &
DeCoste, NeurIPS 2019, sec. 3.4 and Figure 4), or, after a first stage on the GCE loss, by a fixed
fraction of the loss's bound 1/q (:func:`dataparams.scores.flag_by_rule`). Stage 2 trains on the
samples kept (``data.keep_file``).

Layout of a pipeline folder ``OUT`` (:class:`PipelineLayout`)::

    stage1/               the first training's run directory
    kept_<digest>.npy     source indices of the kept samples, named by their content
    stage2/               the retraining's run directory (its data.keep_file is the kept file)
    pipeline.json         the method, its settings, the stages, the flags and the final summary

Each stage is an ordinary run directory and resumes as one (:mod:`dataparams.runs`): run again
with ``resume=True``, a pipeline uses a finished stage as it is and continues an unfinished one
from its checkpoint; a stage whose config changed is refused (``RunConflictError`` naming the
fields) unless ``overwrite``. The kept file is named by its content, so stage 2 is never continued
on another kept set: flag settings that change the kept set change stage 2's config.

Notation: ``N`` training samples of the first stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataparams.config import ConfigError, TrainConfig, apply_overrides, config_to_dict
from dataparams.presets import VARIANTS, get_preset
from dataparams.runs import (
    RunConflictError,
    RunDir,
    RunDirError,
    RunExistsError,
    atomic_write_bytes,
    atomic_write_text,
)
from dataparams.scores import SCORE_NAMES, loss_bound

if TYPE_CHECKING:
    from dataparams.analysis.find_issues import IssueReport
    from dataparams.methods.registry import Method

__all__ = ["FILTER_RULES", "OPTION_PREFIX", "FilterPipeline", "PipelineLayout", "filter_flags", "first_methods",
           "run_filter_pipeline", "save_index_file", "train_stage"]

#: How a filter pipeline flags: ``mixture`` (two Gaussians on the log score, no parameter),
#: ``bound`` (a loss score at least ``fraction`` of the GCE loss bound 1/q) or ``class-mean`` (a
#: loss score whose implied label quality is below its given class's mean;
#: :data:`dataparams.scores.FLAG_RULES`).
FILTER_RULES = ("mixture", "bound", "class-mean")
_LOSS_SCORES = ("mean-loss", "last-loss")
_SIGMA_SCORES = ("sigma", "sigma-mean")
#: The setting entries that set a field of the pipeline: ``pipeline.FIELD=VALUE``.
OPTION_PREFIX = "pipeline."


def first_methods() -> tuple[str, ...]:
    """The methods a filter pipeline's first stage may be: one training with instance data
    parameters (their sigma, or their loss under it, is what the flags rank)."""
    from dataparams.methods.registry import METHODS

    return tuple(m.name for m in METHODS.values() if m.pipeline is None and m.variant in ("instance", "joint"))


def _bound_error(score: str, fraction: float | None, loss: str | None = None) -> ConfigError:
    got = ", ".join([*([f"loss {loss}"] if loss else []), f"score {score}", f"fraction {fraction}"])
    return ConfigError("rule 'bound' needs a first training on the GCE loss (pipeline.first=dp-gce), a loss score "
                       "(pipeline.score=mean-loss or last-loss) and 0 < FRACTION < 1 of the bound (pipeline.fraction); "
                       f"got {got}")


@dataclass(frozen=True)
class FilterPipeline:
    """The settings of a dp-filter pipeline: which training comes first, how its samples are
    flagged, and what is retrained on the kept ones.

    Attributes
    ----------
    first : str
        The first stage: a method of :func:`first_methods` (its registry variant and overrides).
    score : str
        The ranking of :func:`~dataparams.analysis.find_issues.find_issues` the flags come from:
        ``sigma``, ``sigma-mean`` (instance temperature, at the end or integrated over training),
        ``last-loss``, ``mean-loss``.
    rule : {"mixture", "bound", "class-mean"}
        See :data:`FILTER_RULES`. ``bound`` needs a first stage on the GCE loss and a loss score,
        ``class-mean`` a loss score.
    fraction : float or None
        With ``rule="bound"``: flag a loss score at least this fraction (0 < fraction < 1) of the
        GCE bound 1/q. Not used by the mixture.
    retrain : str
        The preset variant of stage 2 (``instance``, ``baseline``, ...).
    retrain_overrides : tuple of str
        Config overrides of stage 2 only (e.g. ``curriculum.loss=gce``).

    As a setting (a tuning grid, ``dataparams train --set``), a field is written
    ``pipeline.FIELD=VALUE`` (:meth:`with_options`).
    """

    first: str = "dp-instance"
    score: str = "sigma-mean"
    rule: str = "mixture"
    fraction: float | None = None
    retrain: str = "instance"
    retrain_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checks that need no config; the first stage is checked against its config by check().
        if isinstance(self.retrain_overrides, str):  # from a `pipeline.retrain_overrides=...` entry
            text = self.retrain_overrides.strip()
            value = json.loads(text) if text.startswith("[") else [text]
            object.__setattr__(self, "retrain_overrides", tuple(value))
        object.__setattr__(self, "retrain_overrides", tuple(str(o) for o in self.retrain_overrides))
        if self.score not in SCORE_NAMES:
            raise ConfigError(f"pipeline.score must be one of {', '.join(SCORE_NAMES)}, got {self.score!r}")
        if self.rule not in FILTER_RULES:
            raise ConfigError(f"pipeline.rule must be one of {', '.join(FILTER_RULES)}, got {self.rule!r}")
        if self.retrain not in VARIANTS:
            raise ConfigError(f"pipeline.retrain must be a preset variant ({', '.join(VARIANTS)}), got "
                              f"{self.retrain!r}")
        if self.rule == "bound" and (self.fraction is None or not 0 < self.fraction < 1
                                     or self.score not in _LOSS_SCORES):
            raise _bound_error(self.score, self.fraction)
        if self.rule == "class-mean" and self.score not in _LOSS_SCORES:
            raise ConfigError(f"rule 'class-mean' needs a loss score (pipeline.score=mean-loss or last-loss), got "
                              f"{self.score!r}")

    def with_options(self, options: Iterable[str]) -> tuple[FilterPipeline, list[str]]:
        """This pipeline with the ``pipeline.FIELD=VALUE`` entries of ``options`` applied (values
        parsed by the field's type, as config overrides are), and the other entries in order."""
        fields = [f.name for f in dataclasses.fields(self)]
        mine, rest = [], []
        for item in options:
            if not item.startswith(OPTION_PREFIX):
                rest.append(item)
                continue
            key, sep, value = item[len(OPTION_PREFIX):].partition("=")
            if not sep or key.strip() not in fields:
                raise ConfigError(f"pipeline option {item!r} must look like pipeline.FIELD=VALUE with FIELD one of "
                                  f"{', '.join(fields)}")
            mine.append(f"{key.strip()}={value}")
        return (apply_overrides(self, mine) if mine else self), rest

    def first_method(self) -> Method:
        """The registry entry of :attr:`first`; ``ConfigError`` unless it is one of :func:`first_methods`."""
        from dataparams.methods.registry import METHODS

        names = first_methods()
        if self.first not in names:
            raise ConfigError(f"pipeline.first must be a one-training method with instance data parameters "
                              f"({', '.join(names)}), got {self.first!r}")
        return METHODS[self.first]

    def check(self, cfg_first: TrainConfig) -> None:
        """``ConfigError`` unless this pipeline can flag the samples of a first training of
        ``cfg_first``; called before anything trains."""
        self.first_method()
        if self.score in _SIGMA_SCORES and not cfg_first.curriculum.instance_curriculum:
            raise ConfigError(f"pipeline.score={self.score} ranks by the instance temperature: the first training "
                              "needs the instance curriculum (curriculum.instance_curriculum=true)")
        if self.rule == "bound" and cfg_first.curriculum.loss != "gce":
            raise _bound_error(self.score, self.fraction, cfg_first.curriculum.loss)

    def configs(self, experiment: str, overrides: Sequence[str] = (), *,
                method: str | None = None) -> tuple[TrainConfig, TrainConfig]:
        """The configs of the two stages on preset experiment ``experiment`` (e.g.
        ``fmnist-noisy40``, ``user``): stage 1 is :attr:`first`'s variant with its overrides,
        stage 2 the :attr:`retrain` variant with :attr:`retrain_overrides`; ``overrides`` apply
        to both, last. ``method`` names stage 2's preset (``EXPERIMENT/METHOD``)."""
        first = self.first_method()
        cfg_first = apply_overrides(get_preset(f"{experiment}/{first.variant}"), [*first.overrides, *overrides])
        cfg_first.preset = f"{experiment}/{self.first}"
        cfg_retrain = apply_overrides(get_preset(f"{experiment}/{self.retrain}"),
                                      [*self.retrain_overrides, *overrides])
        if method is not None:
            cfg_retrain.preset = f"{experiment}/{method}"
        self.check(cfg_first)
        return cfg_first, cfg_retrain


@dataclass(frozen=True)
class PipelineLayout:
    """Names inside a pipeline folder; ``{digest}`` is the kept set's content hash
    (:func:`save_index_file`). ``stage1`` is not used when the first stage is given."""

    stage1: str = "stage1"
    kept: str = "kept_{digest}.npy"
    stage2: str = "stage2"


def filter_flags(report: IssueReport, *, rule: str = "mixture", fraction: float | None = None,
                 q: float | None = None, loss: str = "ce") -> np.ndarray:
    """(N,) bool: the samples of the first stage's ``report`` that the pipeline drops.

    With ``rule="mixture"``, those of the report's noise-rate-free two-Gaussian mixture on the
    log score (its :attr:`~dataparams.analysis.find_issues.IssueReport.is_flagged`, the report
    being made with ``rule="mixture"``); with ``rule="bound"``, those whose loss score is at
    least ``fraction`` of the largest value the GCE loss of parameter ``q`` can take (1/q).

    Why the second rule: under the GCE loss the clean samples' mean losses spread over orders of
    magnitude (memorised ones near 0, hard ones in between), and the mixture on their log splits
    the clean samples instead of separating the corrupted ones, which sit near the bound.
    """
    from dataparams.scores import flag_by_rule

    if rule == "mixture":
        return np.asarray(report.is_flagged, dtype=bool)
    if rule == "class-mean":
        return flag_by_rule(report.score, labels=report.given, rule="class-mean", loss=loss, q=q)["mask"]
    if rule != "bound":
        raise ConfigError(f"rule must be one of {', '.join(FILTER_RULES)}, got {rule!r}")
    if fraction is None:
        raise ConfigError("rule 'bound' needs the fraction of the bound")
    return flag_by_rule(report.score, rule="bound", loss="gce", q=q, fraction=fraction)["mask"]


def save_index_file(folder: str | os.PathLike[str], template: str, index: Any) -> tuple[Path, str]:
    """Save ``index`` (int64) as ``folder/template.format(digest=...)``, named by its content;
    return the path and the digest.

    Named by content so that a run trained on one index set is never reused for another (a
    config holds the path, not the file's content). Written atomically: a file of that name is
    complete, and is not written again."""
    index = np.ascontiguousarray(index, dtype=np.int64)
    digest = hashlib.sha1(index.tobytes()).hexdigest()[:10]
    path = Path(folder) / template.format(digest=digest)
    if not path.exists():
        buf = io.BytesIO()
        np.save(buf, index)
        atomic_write_bytes(path, buf.getvalue())
    return path, digest


def train_stage(cfg: TrainConfig, run_dir: str | os.PathLike[str], *, resume: bool = False,
                overwrite: bool = False, **train_kwargs: Any) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` with :func:`dataparams.experiment.train` and return its
    summary; with ``resume``, a finished run of ``cfg`` there is used as it is (nothing is read
    or written but its config and summary) and an unfinished one continues from its checkpoint.
    A directory holding another run is refused (``RunConflictError``) unless ``overwrite``."""
    run_dir = Path(run_dir)
    done = run_dir / "summary.json"
    # The user's own data completes its config (model, epochs, fingerprint) only once it is
    # measured, which train does; its finished runs are checked and reused by train itself.
    if resume and not overwrite and done.exists() and cfg.data.dataset != "user":
        with RunDir(run_dir, defaults=config_to_dict(TrainConfig())).checked(config_to_dict(cfg)):  # refuses another run
            return json.loads(done.read_text())
    from dataparams.experiment import train

    summary = train(cfg, run_dir, resume=resume, overwrite=overwrite, **train_kwargs)
    if summary is None:
        raise RunDirError("a pipeline stage ran in a process other than rank 0")
    return summary


def _label_error_summary(scores: np.ndarray, corrupted: np.ndarray | None) -> dict[str, float] | None:
    """How well the flagging score ranks the corrupted labels, when the run knows them."""
    from dataparams.analysis.metrics import label_error_metrics

    if corrupted is None or not corrupted.any() or corrupted.all() or not np.all(np.isfinite(scores)):
        return None
    rep = label_error_metrics(scores, corrupted)
    return {k: rep[k] for k in ("auroc", "average_precision", "precision_at_k")}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, allow_nan=True) + "\n")


def _stage(cfg: TrainConfig, run_dir: Path, changed: list[str], **kwargs: Any) -> dict[str, Any]:
    try:
        return train_stage(cfg, run_dir, **kwargs)
    except RunConflictError as e:
        if changed:
            raise RunConflictError(f"{e}; the pipeline's settings differ from those it ran with "
                                   f"({', '.join(changed)})") from None
        raise


def run_filter_pipeline(
    pipeline: FilterPipeline,
    cfg_first: TrainConfig,
    cfg_retrain: TrainConfig,
    out: str | os.PathLike[str],
    *,
    method: str | None = None,
    first_run: str | os.PathLike[str] | None = None,
    layout: PipelineLayout | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
    label: str = "",
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Run (or resume) a filter pipeline into folder ``out``; return what ``out/pipeline.json`` holds.

    Parameters
    ----------
    pipeline : FilterPipeline
        The settings (:meth:`FilterPipeline.check` is called on ``cfg_first`` first).
    cfg_first, cfg_retrain : TrainConfig
        The two stages' configs (:meth:`FilterPipeline.configs` builds them from a preset);
        ``data.keep_file`` of stage 2 is set here.
    out : path-like
        The pipeline folder (see the module notes for its layout).
    method : str, optional
        The method's name, for the record.
    first_run : path-like, optional
        Stage 1's run directory instead of ``out/stage1``: a finished run of ``cfg_first``
        there (e.g. the same training made for another purpose) is used as it is, an unfinished
        one continues; it is never overwritten.
    layout : PipelineLayout, optional
        Names inside ``out`` (default: ``PipelineLayout()``).
    resume : bool
        Use the finished stages as they are and continue the unfinished one. Without it (or
        ``overwrite``) a folder that holds a pipeline already is refused (``RunExistsError``).
    overwrite : bool
        Start the stages over.
    device, quiet, label, **train_kwargs
        As :func:`dataparams.experiment.train` (``amp``, ``deterministic``, ``tensorboard``, ...);
        ``label`` prefixes the stages' progress bars.

    Returns
    -------
    dict
        ``method``, ``pipeline`` (the settings), ``status``, ``stages`` (each stage's
        ``run_dir``; stage 1's ``summary``), ``n``, ``n_flagged``, ``n_kept``, ``kept_file``,
        ``flags`` (score, rule, epoch, threshold), ``detection`` (how well the flagging score
        ranks the corrupted labels, when known; else None), ``train_time_s`` (both stages),
        ``trainings`` (2) and ``summary`` (stage 2's summary.json).

    Raises
    ------
    ConfigError
        Settings that cannot work (before anything trains), or a first stage that flagged every
        sample (nothing to retrain on).
    RunExistsError, RunConflictError
        As for a run directory: ``out`` holds this pipeline (pass ``resume`` or ``overwrite``),
        or a stage's directory holds a run of another config.
    """
    from dataparams.analysis.find_issues import find_issues
    from dataparams.distributed import launched_world_size

    pipeline.check(cfg_first)
    if launched_world_size() > 1:
        raise ConfigError("a filter pipeline runs in one process (its flags are computed between the two trainings); "
                          "run it without torchrun")
    if resume and overwrite:
        raise RunDirError("resume and overwrite exclude each other")
    layout = layout or PipelineLayout()
    out = Path(out).resolve()
    stage1 = Path(first_run) if first_run is not None else out / layout.stage1
    record_file = out / "pipeline.json"
    old = _read_record(record_file)
    if not resume and not overwrite and (old is not None or (first_run is None and stage1.is_dir()
                                                             and any(stage1.iterdir()))):
        raise RunExistsError(f"{out} already holds a pipeline's runs")
    settings = dataclasses.asdict(pipeline)
    changed = [] if old is None else [f"pipeline.{k}" for k, v in settings.items()
                                      if json.loads(json.dumps(v)) != (old.get("pipeline") or {}).get(k)]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        # Start over: a stage 2 left from the earlier run would be a run of another kept set.
        for stale in out.glob(layout.kept.format(digest="*")):
            stale.unlink()
        for stale in out.glob(layout.stage2.format(digest="*")):
            if (stale / "config.json").exists():
                shutil.rmtree(stale)
    record: dict[str, Any] = {"method": method, "pipeline": settings, "status": "stage 1",
                              "stages": {"stage1": {"run_dir": str(stage1)}}}
    _write_record(record_file, record)
    run_kwargs = dict(device=device, quiet=quiet, **train_kwargs)

    # Stage 1, then the flags from its snapshots.
    try:
        summary1 = _stage(cfg_first, stage1, changed, resume=resume or first_run is not None,
                          overwrite=overwrite and first_run is None, label=f"{label}stage 1: ", **run_kwargs)
    except BaseException:
        # Refused before stage 1 began (unreadable data, a bad option): leave no folder behind
        # that a later run would take for this one.
        if created and not (stage1 / "config.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    report = find_issues(stage1, score=pipeline.score, load_dataset=False, rule="mixture")
    q = float(cfg_first.curriculum.loss_q)
    flagged = filter_flags(report, rule=pipeline.rule, fraction=pipeline.fraction, q=q,
                           loss=cfg_first.curriculum.loss)
    if flagged.all():
        raise ConfigError(f"every one of the {flagged.size} samples of {report.run_dir} was flagged: nothing to "
                          "retrain on (a first training too short to fit any sample, or a pipeline.fraction too low)")
    # A global threshold exists for the bound and the mixture; the per-class rule has none.
    threshold = (pipeline.fraction * loss_bound("gce", q) if pipeline.rule == "bound"
                 else report.estimate.get("threshold") if pipeline.rule == "mixture" else None)
    kept_file, digest = save_index_file(out, layout.kept, report.source_index[~flagged])
    stage2 = out / layout.stage2.format(digest=digest)
    record.update(status="stage 2", n=int(flagged.size), n_flagged=int(flagged.sum()),
                  n_kept=int((~flagged).sum()), kept_file=str(kept_file),
                  flags={"score": pipeline.score, "rule": pipeline.rule, "epoch": report.epoch,
                         "threshold": None if threshold is None or not math.isfinite(threshold) else float(threshold)},
                  detection=_label_error_summary(report.score, report.is_corrupted))
    record["stages"] = {"stage1": {"run_dir": str(stage1), "summary": summary1}, "stage2": {"run_dir": str(stage2)}}
    _write_record(record_file, record)

    # Stage 2 on the kept samples.
    summary2 = _stage(apply_overrides(cfg_retrain, [f"data.keep_file={kept_file}"]), stage2, changed, resume=resume,
                      overwrite=overwrite, label=f"{label}stage 2: ", **run_kwargs)
    record.update(status="finished", train_time_s=summary1["train_time_s"] + summary2["train_time_s"], trainings=2,
                  summary=summary2)
    _write_record(record_file, record)
    return record
