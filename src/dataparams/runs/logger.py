"""The callback that writes a run directory while training: metrics, snapshots, checkpoints.

At the end of every epoch it appends the epoch's record to ``metrics.jsonl`` (with the sigma
statistics and, when the run knows which labels it corrupted, how well each per-sample score
ranks them), saves the snapshot of the per-sample arrays, then the checkpoint -- in that order,
which is what lets :meth:`RunDir.truncate_after` clean up after a kill between two writes -- and
prints one line. TensorBoard gets the scalars.

Under torchrun it runs on every rank: what is collective for a sharded objective runs everywhere,
and rank 0 alone writes the other files of the run directory and prints. A sharded objective's
epoch never brings all ``N`` values to one rank, except for the detection metrics: every rank
writes its rows of the snapshot to its own file (:meth:`RunDir.save_snapshot_shard`), the sigma
statistics are reduced from each rank's moments (one small all-gather, :func:`sharded_sigma_stats`),
and its checkpoint is shard files, written by every rank. The detection metrics (AUROC and the
rest against the corruption mask) rank all ``N`` scores together: they exist only for runs whose
corrupted labels are known (injected noise), and only for those the sigmas and scores are
gathered on rank 0 (O(N) there); a run on real data gathers nothing.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dataparams.analysis.metrics import label_error_metrics
from dataparams.engine import Callback
from dataparams.objectives import Objective
from dataparams.runs.files import atomic_write_bytes
from dataparams.runs.rundir import RunDir
from dataparams.runs.state import is_sharded

__all__ = [
    "SELECTED_MODEL",
    "RunLogger",
    "loss_float16",
    "merge_moments",
    "moments",
    "progress_factory",
    "read_selected_model",
    "sharded_sigma_stats",
    "sigma_stats",
    "write_line",
]

#: The weights of the epoch chosen on the noisy validation split (see ``RunLogger(select_model=)``).
SELECTED_MODEL = "model_selected.pt"


def read_selected_model(run: RunDir) -> dict[str, Any] | None:
    """``{"epoch", "val_acc", "state_dict"}`` of ``run``'s validation-chosen weights, or None."""
    path = run.path / SELECTED_MODEL
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)

#: The detection numbers kept for the loss-based scores (the full report is kept for the main one).
_SHORT = ("auroc", "average_precision", "precision_at_k")


def sigma_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, std, min and max of an array (NaN for an empty one)."""
    if len(values) == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def moments(values: np.ndarray) -> tuple[int, float, float, float, float]:
    """``(count, mean, m2, min, max)`` of an array, in float64: what :func:`merge_moments` combines.

    ``m2`` is the sum of squared deviations from the mean; an empty array gives
    ``(0, 0.0, 0.0, inf, -inf)``, the identity of the merge.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return 0, 0.0, 0.0, math.inf, -math.inf
    mean = float(x.mean())
    return int(x.size), mean, float(np.square(x - mean).sum()), float(x.min()), float(x.max())


def merge_moments(parts: list[tuple[int, float, float, float, float]]) -> dict[str, float]:
    """:func:`sigma_stats` of the concatenation of arrays, from their :func:`moments` alone.

    Means and sums of squared deviations are merged pairwise (Chan, Golub & LeVeque 1979), which
    keeps the precision that ``E[x^2] - E[x]^2`` would lose to cancellation. The standard
    deviation is the population one (``ddof=0``), as ``numpy.std``.
    """
    n, mean, m2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
    for nb, mb, m2b, lob, hib in parts:
        if nb == 0:
            continue
        total = n + nb
        delta = mb - mean
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n, lo, hi = total, min(lo, lob), max(hi, hib)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": mean, "std": math.sqrt(max(m2, 0.0) / n), "min": lo, "max": hi}


def sharded_sigma_stats(values: np.ndarray, corrupted: np.ndarray | None,
                        all_gather: Callable[[Any], list[Any]]) -> dict[str, Any]:
    """The ``instance_sigma`` statistics of a metrics record, from each rank's rows.

    Parameters
    ----------
    values : ndarray (end - start,)
        This rank's instance sigmas.
    corrupted : ndarray (end - start,) bool, or None
        Which of these rows' labels the run corrupted; with it, ``clean`` and ``corrupted``
        statistics too, as :class:`RunLogger` gives for a run with injected noise.
    all_gather : callable
        Every rank's object, in rank order, on every rank (``DistributedContext.all_gather_object``):
        collective, called once with a few floats per rank.

    Returns
    -------
    dict
        :func:`sigma_stats`' ``mean``, ``std``, ``min``, ``max`` of all ``N`` values (equal to those
        of the concatenation up to float rounding; it has no percentiles to approximate), and
        ``clean`` / ``corrupted`` with ``corrupted``.
    """
    groups = {"all": values}
    if corrupted is not None:
        corrupted = np.asarray(corrupted, dtype=bool)
        groups.update(clean=values[~corrupted], corrupted=values[corrupted])
    parts = all_gather({name: moments(v) for name, v in groups.items()})
    stats: dict[str, Any] = merge_moments([p["all"] for p in parts])
    if corrupted is not None:
        for name in ("clean", "corrupted"):
            stats[name] = merge_moments([p[name] for p in parts])
    return stats


def write_line(line: str) -> None:
    """Print a line to stderr without breaking an active progress bar."""
    tqdm.write(line, file=sys.stderr)


def progress_factory(epochs: int, label: str = "") -> Callable[[int, int], Any]:
    """``make(epoch, total_batches)`` -> a tqdm bar for one epoch (what the engine's ``fit`` takes)."""

    def make(epoch: int, total: int) -> Any:
        return tqdm(total=total, desc=f"{label}epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr,
                    dynamic_ncols=True, unit="batch")

    return make


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"



def loss_float16(loss: np.ndarray) -> np.ndarray:
    """A snapshot's per-sample losses in float16, those beyond its range (65,504: a diverging
    training's) kept at its largest value rather than cast to inf, which no score can average."""
    return np.minimum(loss, np.finfo(np.float16).max).astype(np.float16)

class RunLogger(Callback):
    """Writes metrics, snapshots, detection metrics, TensorBoard scalars and checkpoints.

    Parameters
    ----------
    run : RunDir
    objective : Objective
        Its :meth:`~Objective.snapshot`, :meth:`~Objective.scores` and loss buffers are read.
    is_corrupted : ndarray (N,) bool
        Which training labels the run corrupted; detection metrics are logged when any is.
    state_fn : callable ``epoch -> dict``
        The checkpoint after ``epoch`` finished epochs (:func:`dataparams.runs.state.capture_state`).
    epochs : int
        The run's length, for the progress line.
    quiet : bool
        No per-epoch line.
    tensorboard : bool
        Also write the scalars as TensorBoard events (when ``tensorboard`` is installed).
    is_main : bool, default True
        False on the ranks other than 0 of a torchrun job: they take part in the collectives of
        the objective and of ``state_fn`` and write nothing.
    select_model : callable ``() -> state_dict``, optional
        With a noisy validation split: the network's weights, saved as ``model_selected.pt``
        after each epoch whose validation accuracy is the best so far (the earliest on ties, as
        ``summary.json``'s ``val_selected_epoch``), so that the model kept is that epoch's, not
        the last one, and survives a resume.
    start_epoch : int, default 0
        The epoch a resumed run continues from (its metrics already cut there): the best
        validation accuracy so far is read from them.
    """

    def __init__(self, run: RunDir, objective: Objective, is_corrupted: np.ndarray, state_fn: Callable[[int], Any],
                 *, epochs: int, quiet: bool, tensorboard: bool, is_main: bool = True,
                 select_model: Callable[[], dict[str, Any]] | None = None, start_epoch: int = 0) -> None:
        self.run, self.objective, self.state_fn = run, objective, state_fn
        self.select_model = select_model
        self.best_val = -math.inf
        if select_model is not None and is_main and start_epoch > 0:
            self._resume_selection(start_epoch)
        self.epochs, self.is_main = epochs, is_main
        self.quiet = quiet or not is_main
        self.corrupted = np.asarray(is_corrupted, dtype=bool)
        self.noisy = bool(self.corrupted.any())
        self.writer = None
        if tensorboard and is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # an optional extra: the run goes on without event files
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run.path / "tensorboard"))
        self.epoch_times: list[float] = []

    def _resume_selection(self, start_epoch: int) -> None:
        """The best validation accuracy of the epochs a resumed run keeps (its metrics, already
        cut to ``start_epoch``). The selected weights are saved after each epoch's checkpoint, so
        a kill in between loses them only when that epoch, ``start_epoch``, was the best: its
        weights are the ones just restored from the checkpoint, and are saved now."""
        history = [r for r in self.run.read_metrics() if r.get("val_acc") is not None and r["epoch"] <= start_epoch]
        if not history:
            return
        best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
        self.best_val = float(best["val_acc"])
        kept = read_selected_model(self.run)
        if (kept is None or kept["epoch"] != best["epoch"]) and best["epoch"] == start_epoch:
            self._save_selected(best["epoch"])

    def _save_selected(self, epoch: int) -> None:
        assert self.select_model is not None
        state_dict = {k: v.detach().cpu().clone() for k, v in self.select_model().items()}
        buf = io.BytesIO()
        torch.save({"epoch": int(epoch), "val_acc": self.best_val, "state_dict": state_dict}, buf)
        atomic_write_bytes(self.run.path / SELECTED_MODEL, buf.getvalue())

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """Write the epoch: metrics line, snapshot, checkpoint (see the module docstring).

        For a sharded objective every rank joins: it writes its snapshot file and joins the
        collectives of the sigma statistics, of the checkpoint's shard files and, for a run with
        injected noise only, of the gathers the detection metrics need.
        """
        sharded = is_sharded(self.objective)
        # A replicated objective's arrays are local: the other ranks would build O(N) arrays (and
        # a copy of the state) only to drop them.
        if not self.is_main and not sharded:
            return
        if sharded:
            snap, extra = self._sharded_snapshot(record)
        else:
            snap, extra = self.objective.snapshot(), self.objective.scores()
        # For a sharded objective a collective (its shard files): it returns on rank 0 only once
        # every rank has written its shard files, and so (written before) its snapshot file too.
        # The shard files are committed only by save_checkpoint below, after the metrics and the
        # snapshot.
        state = self.state_fn(epoch + 1)
        if not self.is_main:
            return
        if not sharded:
            for name in ("class_sigma", "instance_sigma"):
                if name in snap:
                    stats = sigma_stats(snap[name])
                    if name == "instance_sigma" and self.noisy:
                        stats["clean"] = sigma_stats(snap[name][~self.corrupted])
                        stats["corrupted"] = sigma_stats(snap[name][self.corrupted])
                    record[name] = stats
        if self.noisy:
            scores = self.objective.method_score(snap)
            if scores is not None:
                record["detection"] = label_error_metrics(scores, self.corrupted)
            for key, values in extra.items():
                rep = label_error_metrics(values, self.corrupted)
                record[f"detection_{key.replace('-', '_')}"] = {k: rep[k] for k in _SHORT}
        self.run.append_metrics(record)
        if not sharded:
            self.run.save_snapshot(record["epoch"], loss=loss_float16(extra["last-loss"]), **snap)
        self.run.save_checkpoint(state)
        if self.select_model is not None and record.get("val_acc") is not None and record["val_acc"] > self.best_val:
            # After the checkpoint (see _resume_selection for a kill in between).
            self.best_val = float(record["val_acc"])
            self._save_selected(record["epoch"])
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, record["epoch"])
            self.writer.flush()
        self.epoch_times.append(record["time_s"])
        if not self.quiet:
            left = self.epochs - record["epoch"]
            eta = left * float(np.mean(self.epoch_times[-5:]))
            parts = [f"epoch {record['epoch']:>3}/{self.epochs}", f"loss {record['train_loss']:.3f}",
                     f"train {record['train_acc']:.1f}%"]
            if "train_acc_clean" in record and self.noisy:
                parts.append(f"train(clean labels) {record['train_acc_clean']:.1f}%")
            for k in ("val_acc", "test_acc"):
                if k in record:
                    parts.append(f"{k.split('_')[0]} {record[k]:.2f}%")
            if "detection" in record:
                parts.append(f"AUROC {record['detection']['auroc']:.3f}")
            parts.append(f"{record['time_s']:.1f}s, ETA {_fmt_time(eta)}")
            write_line("  ".join(parts))

    def _sharded_snapshot(self, record: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """A sharded objective's end of epoch up to its checkpoint, on every rank: this rank's
        snapshot file, the sigma statistics (into ``record`` on rank 0) and, for a run with
        injected noise, the gathered snapshot and scores (rank 0; empty elsewhere and without
        noise) for the detection metrics."""
        obj: Any = self.objective
        (start, end), rows = obj.snapshot_shard()
        ctx = obj.ctx
        # The same arrays and dtypes as a whole snapshot. instance_sigma stays float32: float16
        # keeps ~3 significant digits, so samples whose sigmas differ by less would tie, and the
        # rankings read from the snapshot (find-issues, the detection metrics of a report) would
        # change with the distributed mode; a sharded run's snapshot equals the single-process one.
        arrays = {"loss": loss_float16(rows["last-loss"]), "instance_sigma": rows["instance_sigma"]}
        if ctx.is_main and "class_sigma" in rows:
            arrays["class_sigma"] = rows["class_sigma"]  # K values, replicated: rank 0's file alone
        self.run.save_snapshot_shard(record["epoch"], rank=ctx.rank, world_size=ctx.world_size, start=start, end=end,
                                     num_instances=obj.num_train, **arrays)
        stats = sharded_sigma_stats(rows["instance_sigma"], self.corrupted[start:end] if self.noisy else None,
                                    ctx.all_gather_object)
        if self.is_main:
            if "class_sigma" in rows:
                record["class_sigma"] = sigma_stats(rows["class_sigma"])
            record["instance_sigma"] = stats
        if not self.noisy:
            return {}, {}
        # The detection metrics rank all N scores against the corruption mask: gathered on rank 0.
        return self.objective.snapshot(), self.objective.scores()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
