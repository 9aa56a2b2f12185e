"""The callback that writes a run directory while training: metrics, snapshots, checkpoints.

At the end of every epoch it appends the epoch's record to ``metrics.jsonl`` (with the sigma
statistics and, when the run knows which labels it corrupted, how well each per-sample score
ranks them), saves the snapshot of the per-sample arrays, then the checkpoint -- in that order,
which is what lets :meth:`RunDir.truncate_after` clean up after a kill between two writes -- and
prints one line. TensorBoard gets the scalars.

Under torchrun it runs on every rank: what is collective (the snapshot and scores of a sharded
objective, gathered on rank 0; its shard files, written by every rank) runs everywhere, and rank
0 alone writes the files of the run directory and prints.
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
from dataparams.runs.rundir import RunDir, atomic_write_bytes
from dataparams.runs.state import is_sharded

__all__ = ["SELECTED_MODEL", "RunLogger", "progress_factory", "read_selected_model", "sigma_stats", "write_line"]

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
        # The objective's per-sample arrays and the checkpoint state first: for a sharded
        # objective they are collectives that every rank joins. The shard files a sharded state
        # writes are committed only by save_checkpoint below, after the metrics and the snapshot.
        # A replicated objective's are local: the other ranks would build O(N) arrays (and a copy
        # of the state) only to drop them.
        if not self.is_main and not is_sharded(self.objective):
            return
        snap = self.objective.snapshot()
        extra = self.objective.scores()
        state = self.state_fn(epoch + 1)
        if not self.is_main:
            return
        loss = extra["last-loss"]
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
        self.run.save_snapshot(record["epoch"], loss=loss.astype(np.float16), **snap)
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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
