"""Read finished (or killed) run directories for analysis, and group the seeds of one setting.

The analysis never imports the training code: it reads what a run wrote (see
:mod:`dataparams.runs` for the layout). Notation, fixed for this module: ``N`` training samples of
the run, ``K`` classes, ``E`` epochs with a snapshot, ``R`` runs (seeds) of one group.

A run needs ``config.json`` and ``metrics.jsonl``; without either, :func:`load_run` raises
:class:`~dataparams.runs.RunDirError` naming the file, and a caller over many runs skips that one.
Everything else is optional and its absence (or damage) becomes a warning that names the file:
a killed run has no ``predictions.npz`` or ``summary.json``, a run copied without its snapshots
still has its accuracy curves, and a kill mid-write leaves a truncated last metrics line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.config import EXECUTION_FIELDS
from dataparams.runs import RunDir, RunDirError

__all__ = ["LoadedRun", "RunGroup", "discover_runs", "group_runs", "load_run", "load_runs"]

# How deep below a given folder to look for run directories: OUT/seedN from `train --seeds`
# sits one level down, a folder of such sweeps two.
_MAX_DEPTH = 3


@dataclass
class LoadedRun:
    """One run directory, read for analysis.

    Attributes
    ----------
    path : Path
        The run directory.
    config : dict
        The resolved ``TrainConfig`` as written to ``config.json``.
    metrics : list of dict
        One record per finished epoch, from ``metrics.jsonl``.
    labels : dict of str to ndarray, or None
        ``given``, ``clean`` (N,) int, ``is_corrupted`` (N,) bool, ``source_index`` (N,) int.
    snapshot_epochs : list of int
        1-based epochs with a readable-looking snapshot file (or, for a sharded run, one of its
        per-process files); loaded lazily by :meth:`snapshot`.
    predictions : dict of str to ndarray, or None
        ``predicted`` (N,) int, ``predicted_prob`` and ``given_prob`` (N,) float.
    summary : dict or None
        ``summary.json``; absent for a run that did not finish.
    warnings : list of str
        What was missing or damaged, each naming its file.
    """

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    labels: dict[str, np.ndarray] | None = None
    snapshot_epochs: list[int] = field(default_factory=list)
    predictions: dict[str, np.ndarray] | None = None
    summary: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    # -- what the config says -------------------------------------------------------------
    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def preset(self) -> str:
        return str(self.config.get("preset", "custom"))

    @property
    def class_curriculum(self) -> bool:
        return bool(self.config.get("curriculum", {}).get("class_curriculum", False))

    @property
    def instance_curriculum(self) -> bool:
        return bool(self.config.get("curriculum", {}).get("instance_curriculum", False))

    @property
    def noise(self) -> str:
        return str(self.config.get("data", {}).get("noise", "none"))

    @property
    def is_corrupted(self) -> np.ndarray | None:
        """(N,) bool, or None when ``labels.npz`` could not be read."""
        return None if self.labels is None else self.labels["is_corrupted"].astype(bool)

    @property
    def knows_truth(self) -> bool:
        """True when the run injected noise (or shipped noisy labels), so ``is_corrupted`` is the truth."""
        corrupted = self.is_corrupted
        if corrupted is None:
            return False
        return self.noise != "none" or bool(corrupted.any())

    @property
    def is_noisy(self) -> bool:
        corrupted = self.is_corrupted
        return corrupted is not None and bool(corrupted.any())

    @property
    def num_samples(self) -> int | None:
        return None if self.labels is None else int(self.labels["given"].shape[0])

    # -- arrays ---------------------------------------------------------------------------
    def snapshot(self, epoch: int) -> dict[str, np.ndarray]:
        """The arrays of ``snapshots/epoch_NNNN.npz``, or of a sharded run's per-process files
        of that epoch concatenated (:meth:`RunDir.load_snapshot`); ``RunDirError`` naming the
        file that is missing or damaged.

        Not cached: the snapshots of a long run on a large dataset do not fit in memory together.
        """
        return RunDir(self.path).load_snapshot(epoch)

    def iter_snapshots(self, key: str | None = None, *, reverse: bool = False
                       ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(epoch, arrays)`` of every readable snapshot (holding ``key``, when given), one at a time.

        An unreadable snapshot is skipped with a warning naming its file, so one damaged epoch
        does not stop a report.
        """
        for epoch in (reversed(self.snapshot_epochs) if reverse else self.snapshot_epochs):
            try:
                snap = self.snapshot(epoch)
            except RunDirError as e:
                self.add_warning(f"{e}; epoch {epoch} left out")
                continue
            if key is None or key in snap:
                yield epoch, snap

    def last_snapshot(self, key: str | None = None) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(epoch, arrays)`` of the last readable snapshot (holding ``key``, when given), or None."""
        return next(self.iter_snapshots(key, reverse=True), None)

    def last_values(self, *keys: str) -> dict[str, tuple[int, np.ndarray]]:
        """``{key: (epoch, array)}`` from the last readable snapshot holding each key.

        One pass backwards that stops once every key is found: usually a single file is read.
        Keys no snapshot holds are absent from the result.
        """
        found: dict[str, tuple[int, np.ndarray]] = {}
        for epoch, snap in self.iter_snapshots(reverse=True):
            found.update({k: (epoch, snap[k]) for k in keys if k in snap and k not in found})
            if len(found) == len(keys):
                break
        return found

    def history(self, key: str, *, columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stack ``key`` over all readable snapshots.

        Parameters
        ----------
        key : str
            ``class_sigma``, ``instance_sigma`` or ``loss``.
        columns : ndarray of int, optional
            Keep only these entries of each snapshot (e.g. a few samples out of ``N``), so that a
            long run on a large dataset is read in bounded memory.

        Returns
        -------
        epochs : ndarray of shape (E,)
            1-based epochs whose snapshot holds ``key``.
        values : ndarray of shape (E, n)
            ``n`` is ``K`` for ``class_sigma``, ``N`` for ``instance_sigma`` and ``loss``, or
            ``len(columns)``. Empty (shape ``(0, 0)``) when no snapshot holds ``key``.
        """
        epochs, rows = [], []
        for epoch, snap in self.iter_snapshots(key):
            values = snap[key] if columns is None else snap[key][columns]
            epochs.append(epoch)
            rows.append(np.asarray(values, dtype=np.float64))
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0))
        return np.asarray(epochs, dtype=np.int64), np.stack(rows)

    def metric_series(self, *keys: str) -> tuple[np.ndarray, np.ndarray]:
        """A metric over epochs, e.g. ``metric_series("test_acc")`` or ``("detection", "auroc")``.

        Returns ``epochs`` (E,) and ``values`` (E,) float, ``nan`` where a record lacks the key.
        """
        epochs, values = [], []
        for rec in self.metrics:
            node: Any = rec
            for k in keys:
                node = node.get(k) if isinstance(node, dict) else None
            epochs.append(int(rec.get("epoch", len(epochs) + 1)))
            values.append(math.nan if node is None else float(node))
        return np.asarray(epochs, dtype=np.int64), np.asarray(values, dtype=np.float64)

    def final(self, key: str) -> float | None:
        """A final number from ``summary.json``, else from the last metrics record."""
        if self.summary is not None and self.summary.get(key) is not None:
            return float(self.summary[key])
        fallback = {"final_test_acc": "test_acc", "final_train_acc": "train_acc"}.get(key)
        if fallback and self.metrics and self.metrics[-1].get(fallback) is not None:
            return float(self.metrics[-1][fallback])
        return None

    def add_warning(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def load_run_dataset(config: dict[str, Any]) -> tuple[Any, str | None]:
    """The dataset a run was trained on, from its ``config.json``: ``(LoadedDataset, None)``, or
    ``(None, why)`` when it cannot be loaded here. Analyses only need it for images, class
    names and file paths, so a missing dataset is a note, never an error."""
    data = config.get("data", {})
    try:
        from dataparams.data.registry import load_dataset

        return load_dataset(data), None
    except Exception as e:  # missing files, unknown name, bad format: all mean "no dataset"
        return None, f"{data.get('dataset')} could not be loaded ({type(e).__name__}: {e})"


def load_run(path: str | os.PathLike[str]) -> LoadedRun:
    """Read one run directory.

    Parameters
    ----------
    path : path-like
        A run directory as written by ``dataparams train``.

    Returns
    -------
    LoadedRun
        With ``warnings`` listing each optional file that was missing or damaged.

    Raises
    ------
    RunDirError
        If ``config.json`` or ``metrics.jsonl`` is missing or unreadable (the message names
        the file), or the metrics hold no finished epoch.
    """
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(f"{run.path} is not a directory")
    config = run.read_json("config.json")
    metrics = _read_metrics(run)
    warnings: list[str] = []
    if len(metrics) < _count_lines(run.metrics_file):
        warnings.append(f"{run.metrics_file}: last line is truncated (a run killed mid-write?); skipped it")
    if not metrics:
        raise RunDirError(f"{run.metrics_file} holds no finished epoch")

    labels = _optional(lambda: run.load_arrays("labels.npz"), warnings)
    if labels is not None:
        missing = [k for k in ("given", "clean", "is_corrupted", "source_index") if k not in labels]
        if missing:
            warnings.append(f"{run.path / 'labels.npz'} lacks {', '.join(missing)}; labels not used")
            labels = None
    predictions = _optional(lambda: run.load_arrays("predictions.npz"), warnings)
    summary = _optional(lambda: run.read_json("summary.json"), warnings)

    epochs = run.snapshot_epochs()
    if not epochs:
        warnings.append(f"{run.snapshot_dir} is missing or empty: no sigma or per-sample loss over epochs")
    else:
        logged = {int(r["epoch"]) for r in metrics if "epoch" in r}
        lost = sorted(logged - set(epochs))
        if lost:
            shown = ", ".join(map(str, lost[:10])) + (" ..." if len(lost) > 10 else "")
            warnings.append(f"{run.snapshot_dir}: no snapshot for epoch(s) {shown}")
    return LoadedRun(
        path=run.path, config=config, metrics=metrics, labels=labels, snapshot_epochs=epochs,
        predictions=predictions, summary=summary, warnings=warnings,
    )


def _read_metrics(run: RunDir) -> list[dict[str, Any]]:
    records = run.read_metrics(strict=False)
    bad = [i + 1 for i, r in enumerate(records) if not isinstance(r, dict)]
    if bad:
        raise RunDirError(f"{run.metrics_file}, line {bad[0]}: not a JSON object")
    return records


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _optional(read: Callable[[], Any], warnings: list[str]) -> Any:
    try:
        return read()
    except RunDirError as e:
        warnings.append(str(e))
        return None


def load_runs(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[LoadedRun], list[tuple[Path, str]]]:
    """Load many runs, skipping the unreadable ones.

    Returns
    -------
    runs : list of LoadedRun
        In the order given.
    skipped : list of (Path, str)
        Each unreadable run with the reason (which names the file).
    """
    runs, skipped = [], []
    for p in paths:
        try:
            runs.append(load_run(p))
        except RunDirError as e:
            skipped.append((Path(p), str(e)))
    return runs, skipped


def discover_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders of runs into run directories.

    A path holding ``config.json`` is a run. Another folder is searched a few levels down
    (``train --seeds`` writes ``OUT/seedN``); when nothing is found below it, the path itself is
    returned so that :func:`load_run` reports what is missing.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        found = [p] if (p / "config.json").exists() else _find_below(p, _MAX_DEPTH)
        for run in found or [p]:
            if run not in out:
                out.append(run)
    return out


def _find_below(folder: Path, depth: int) -> list[Path]:
    if depth == 0 or not folder.is_dir():
        return []
    found = []
    for child in sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")):
        if (child / "config.json").exists():
            found.append(child)
        else:
            found += _find_below(child, depth - 1)
    return found


# ----------------------------------------------------------------------------------------------
# groups of seeds
# ----------------------------------------------------------------------------------------------
@dataclass
class RunGroup:
    """Runs whose configs are equal except for ``seed`` and execution-only fields.

    Attributes
    ----------
    label : str
        The preset name, made unique among the groups by the fields that tell them apart.
    runs : list of LoadedRun
        One per seed, in the order given.
    """

    label: str
    runs: list[LoadedRun]

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    @property
    def slug(self) -> str:
        """``label`` made safe for a file name, and short enough for one (a long label keeps its
        start and a hash of the whole)."""
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", self.label).strip("_") or "run"
        if len(slug) > 96:
            slug = f"{slug[:80]}_{hashlib.sha256(self.label.encode()).hexdigest()[:10]}"
        return slug

    @property
    def is_random_labels(self) -> bool:
        return self.runs[0].noise == "random"

    @property
    def has_curriculum(self) -> bool:
        return self.runs[0].class_curriculum or self.runs[0].instance_curriculum


_FINGERPRINT = "choices.data.fingerprint"


def _setting(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened fields that make a setting: not the seed, not the execution fields (whose
    flattened ``choices.*`` entries hold long reasons and a memory-dependent storage choice) but
    the data's fingerprint, so runs on other data are never seeds of one group; not a filter
    pipeline's ``data.keep_file`` either, which each seed's first stage writes for itself."""
    out = {}
    flat = dict(_flatten(config))
    keep = flat.get("data.keep_file")
    # Only a pipeline's own kept file (beside its pipeline.json) is per seed; a kept set given by
    # hand is a setting of its own.
    own_keep = bool(keep) and (Path(str(keep)).parent / "pipeline.json").is_file()
    for k, v in flat.items():
        if k == "seed" or (k == "data.keep_file" and own_keep):
            continue
        if any(k == f or k.startswith(f"{f}.") for f in EXECUTION_FIELDS) and not k.startswith(_FINGERPRINT):
            continue
        out[k] = v
    if not any(k.startswith(_FINGERPRINT) for k in out) and flat.get("data.dataset") == "user":
        # A run made before fingerprints were kept: its data is known by where it was read.
        out["data.data_dir"] = flat.get("data.data_dir")
    return out


def _group_key(config: dict[str, Any]) -> str:
    return json.dumps(_setting(config), sort_keys=True, default=str)


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        # method_options is one value: its keys depend on the method and are compared whole.
        if isinstance(v, dict) and k != "method_options":
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def group_runs(runs: Sequence[LoadedRun]) -> list[RunGroup]:
    """Group runs that differ only in ``seed`` (and ``data.workers``, ``data.data_dir``, ...).

    Groups come in the order of their first run. Groups that share a preset name (a preset run
    with overrides, say) are labelled with the fields that set them apart, e.g.
    ``fmnist/class [data.noise=random, data.noise_rate=1.0]``.
    """
    keyed: dict[str, list[LoadedRun]] = {}
    for run in runs:
        keyed.setdefault(_group_key(run.config), []).append(run)
    members = list(keyed.values())
    # A preset trained on all-random labels (fmnist/class with data.noise=random) must not read
    # like the preset itself.
    labels = [m[0].preset + (" [random labels]" if m[0].noise == "random" and "random" not in m[0].preset else "")
              for m in members]
    for preset in {lab for lab in labels if labels.count(lab) > 1}:
        same = [i for i, lab in enumerate(labels) if lab == preset]
        flats = [_setting(members[i][0].config) for i in same]
        keys = sorted({k for f in flats for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        # Other data is named by its folder or file, not by the parts of its fingerprint.
        data_differs = any(k.startswith(_FINGERPRINT) for k in differing)
        differing = [k for k in differing if not k.startswith(_FINGERPRINT)]
        for i, f in zip(same, flats):
            shown = [f"{k}={f.get(k)}" for k in differing[:3]]
            if data_differs:
                shown.insert(0, f"data={Path(str(members[i][0].config.get('data', {}).get('data_dir'))).name}")
            labels[i] = f"{preset} [{', '.join(shown)}]" if shown else preset
    # A last resort for labels that still collide (more than three differing fields, say).
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    return [RunGroup(label=lab, runs=m) for lab, m in zip(labels, members)]
