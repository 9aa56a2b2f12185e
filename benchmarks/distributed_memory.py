"""Peak memory per process of the data-parameter objective under torch.distributed, everything per-sample included.

    python benchmarks/distributed_memory.py [--sizes 10000000 100000000] [--known-noise]
                                            [--out benchmarks/results/distributed_memory.md]

``benchmarks/bench_distributed.py`` (c) measures the parameter table alone (values and momentum).
A run holds more per sample: the objective's score buffers (``last_loss`` float32, ``loss_sum`` and
``log_sigma_sum`` float64; replicated mode also a ``visited`` flag per sample) and, at the end of an
epoch, what the epoch's bookkeeping builds (replicated: an all-reduce of the (N,) buffers, and on
rank 0 the whole snapshot and scores; sharded: each rank's own rows of the snapshot, written to its
own file, and, only for a run whose corrupted labels are known (``--known-noise``), every sample's
sigma and the three score buffers gathered to rank 0 for the detection metrics).

Per setting (N, mode), 2 gloo processes on 127.0.0.1, fresh processes for each: the joint curriculum,
K = 10 classes, global batch 256; each rank builds the objective the trainer builds
(``ReplicatedObjective`` / ``ShardedObjective``), runs 20 steps (random logits standing in for the
model), then the end of an epoch as the engine and the run logger do it: ``on_epoch_end`` on every
rank, then :class:`dataparams.runs.logger.RunLogger`'s ``on_epoch_end`` itself, writing into a
temporary run directory (metrics line, snapshot files; with ``--known-noise`` a 40% corruption mask,
so the detection metrics too). Its checkpoint is a small dict here: the checkpoint's own shard
files are not measured. Reported per rank: resident size before the objective exists, the peak during
the steps and the peak over the end of the epoch (``VmHWM``, reset before each phase), as increases
over the start. What this leaves out: the model, the data and the labels the trainer holds
(``data.prepare.TrainingLabels``: int64 given labels, which are the clean labels' array when no
noise is known, the corruption mask and the split's int64 indices, about 17 N bytes by their dtypes
on every rank in either mode, 25 N with known noise and then 8 N more on the device for the accuracy
on the true labels; the mask this script gives the logger is made before the start) -- this script measures the data-parameter side only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from _table import emit
from dataparams import DataParameters
from dataparams.distributed import (
    ReplicatedObjective,
    ShardedObjective,
    init_distributed,
    local_share,
    shard_range,
)
from dataparams.engine import predict_by_index
from dataparams.experiment import save_shares
from dataparams.runs import RunDir
from dataparams.runs.logger import RunLogger

B, K, STEPS = 256, 10, 20
#: Batch of the end-of-run prediction pass (the trainer's evaluation loaders use larger batches
#: than training; the bookkeeping per sample does not depend on it).
PREDICT_BATCH = 4096


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets the peak-RSS counter (VmHWM) to the current RSS (Linux).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _objective(mode: str, n: int, ctx):
    opts = dict(lr_class=0.1, lr_instance=0.8, momentum=0.9, wd_class=1e-4, wd_instance=1e-8)
    if mode == "replicated":
        dp = DataParameters(K, n, class_curriculum=True, instance_curriculum=True)
        return ReplicatedObjective(dp, ctx=ctx, **opts)
    return ShardedObjective(K, n, ctx=ctx, class_curriculum=True, **opts)


def _steps(objective, n: int, ctx, first: int, count: int) -> None:
    for step in range(first, first + count):
        g = torch.Generator().manual_seed(step)
        idx, y = torch.randint(0, n, (B,), generator=g), torch.randint(0, K, (B,), generator=g)
        logits_all = torch.randn(B, K, generator=g)
        idx, y, logits = (local_share(t, ctx.rank, ctx.world_size) for t in (idx, y, logits_all))
        logits = logits.clone().requires_grad_(True)
        loss, per_sample = objective(logits, logits, y, idx)
        loss.backward()
        for opt in objective.optimizers().values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        objective.record(idx, per_sample, logits.detach())


def _corruption_mask(n: int, known_noise: bool) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    if known_noise:
        mask[np.random.default_rng(0).permutation(n)[: int(0.4 * n)]] = True
    return mask


def _end_of_epoch(objective, ctx, run_dir: Path, corrupted: np.ndarray) -> None:
    """The engine's and the run logger's end of epoch 1 (the logger's own code, into ``run_dir``)."""
    objective.on_epoch_end(0)
    logger = RunLogger(RunDir(run_dir), objective, corrupted, lambda epoch: {"epoch": epoch}, epochs=1, quiet=True,
                       tensorboard=False, is_main=ctx.is_main)
    logger.on_epoch_end(0, {"epoch": 1, "time_s": 0.0, "train_loss": 0.0, "train_acc": 0.0})


def _end_of_run(given: torch.Tensor, ctx, run_dir: Path) -> None:
    """What the trainer does after the last epoch (``experiment.predict_training_set``), the model
    aside: every rank runs :func:`dataparams.engine.predict_by_index` over its contiguous share of
    the N training samples (random logits stand in for the model's, made batch by batch as a model
    would) and writes its rows as its own shard file of ``predictions.npz``
    (``experiment.save_shares``, the trainer's code). The model's own forward pass over the share
    comes on top."""
    n = len(given)
    lo, hi = shard_range(n, ctx.world_size, ctx.rank)
    g = torch.Generator().manual_seed(1 + ctx.rank)
    loader = ((torch.randn(min(PREDICT_BATCH, hi - i), K, generator=g), given[i:min(i + PREDICT_BATCH, hi)],
               torch.arange(i - lo, min(i + PREDICT_BATCH, hi) - lo)) for i in range(lo, hi, PREDICT_BATCH))
    local = predict_by_index(torch.nn.Identity(), loader, torch.device("cpu"), given[lo:hi])
    save_shares(RunDir(run_dir), "predictions.npz", {k: v.numpy() for k, v in local.items()}, lo, hi, n, ctx)


def _worker(rank: int, world_size: int, port: int, mode: str, n: int, out_dir: str, known_noise: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with init_distributed("cpu", timeout=timedelta(minutes=20)) as ctx:
        if ctx.is_main:
            for name in ("warm", "run"):
                Path(out_dir, name).mkdir()
        # A small objective first: the first use of the optimizers, sparse kernels, collectives and
        # file writes loads code and sets up allocator pools that belong to neither size.
        warm = _objective(mode, 1000, ctx)
        _steps(warm, 1000, ctx, 0, 2)
        ctx.barrier()
        _end_of_epoch(warm, ctx, Path(out_dir, "warm"), _corruption_mask(1000, known_noise))
        del warm
        corrupted = _corruption_mask(n, known_noise)  # the labels' mask: every rank holds it in a run
        ctx.barrier()
        start = _status_mb("VmRSS")
        _reset_peak()
        objective = _objective(mode, n, ctx)
        _steps(objective, n, ctx, 0, STEPS)
        steps_peak = _status_mb("VmHWM")
        ctx.barrier()
        _reset_peak()
        t0 = time.perf_counter()
        _end_of_epoch(objective, ctx, Path(out_dir, "run"), corrupted)
        epoch_s = time.perf_counter() - t0
        epoch_peak = _status_mb("VmHWM")
        ctx.barrier()  # every rank's snapshot file is written
        snapshot_bytes = sum(f.stat().st_size for f in Path(out_dir, "run", "snapshots").glob("epoch_*"))
        record = {"start_mb": start, "steps_mb": steps_peak - start, "epoch_end_mb": epoch_peak - start,
                  "epoch_end_s": epoch_s, "snapshot_mb": snapshot_bytes / 2**20}
        # The end of the run: labels every rank holds in a run, then the shared-out prediction.
        given = torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(2))
        ctx.barrier()
        _reset_peak()
        t0 = time.perf_counter()
        _end_of_run(given, ctx, Path(out_dir, "run"))
        ctx.barrier()
        record.update(run_end_s=time.perf_counter() - t0, run_end_mb=_status_mb("VmHWM") - start)
        if ctx.is_main:
            record["predictions_mb"] = sum(f.stat().st_size for f in Path(out_dir, "run").glob("predictions.*")) / 2**20
        Path(out_dir, f"{rank}.json").write_text(json.dumps(record))
        ctx.barrier()


def measure(mode: str, n: int, known_noise: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_worker, args=(2, port, mode, n, tmp, known_noise), nprocs=2, join=True)
        return [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(2)]


def expected_bytes(mode: str, n: int, p: int = 2) -> int:
    """The objective's per-sample state per rank by construction: values + momentum (float32 each),
    last_loss (float32), loss_sum and log_sigma_sum (float64), and replicated's visited (bool)."""
    rows = n if mode == "replicated" else -(-n // p)
    return rows * (4 + 4 + 4 + 8 + 8 + (1 if mode == "replicated" else 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--known-noise", action="store_true",
                        help="give the logger a 40%% corruption mask, as a benchmark run with injected noise has: "
                        "it then also computes the detection metrics, for which a sharded run gathers on rank 0")
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)
    noise = ("a 40% corruption mask known (injected noise): detection metrics computed, for which a sharded run "
             "gathers every sample's sigma and scores on rank 0" if args.known_noise else
             "no corruption known (real data): no detection metrics, and a sharded run gathers nothing")
    lines = [f"# Memory per process of the data-parameter objective, 2 gloo processes ({platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__})", "",
             f"Joint curriculum, K = {K}, global batch {B}; {STEPS} steps, then the end of an epoch as the run logger "
             "does it (on_epoch_end on every rank, then RunLogger.on_epoch_end into a temporary run directory: "
             "rank 0 writes the whole snapshot when replicated, each rank its rows when sharded; the checkpoint's "
             f"shard files not included); {noise}. Increases over each rank's resident size before the objective "
             "was built (MiB); "
             "one run per cell (n=1). Expected: the per-sample state by construction (values, momentum, last_loss "
             "float32; loss_sum, log_sigma_sum float64; replicated's visited flag). Not included: the model, the "
             "data and the labels every rank holds in either mode (int64 given labels, the clean labels' own array when "
             "no noise is known, the corruption mask, the split's int64 indices: about 17 N bytes by their dtypes, "
             "25 N with known noise; not measured here).", "",
             "End-of-epoch time: wall seconds of that end of epoch (objective's on_epoch_end and the logger's, "
             "snapshot written), the slower rank; snapshot: the epoch's snapshot file(s) on disk, all ranks "
             "together: 6 bytes per sample (float32 sigma, float16 loss), stored, not compressed "
             "(`dataparams.runs.files.write_npz`, `npz_write.md`).", "",
             "End of run: what the trainer does after the last epoch, the model's forward pass aside: every rank "
             "runs `engine.predict_by_index` over its contiguous share of the N training samples (random logits "
             f"for the model's, batches of {PREDICT_BATCH:,}; three (N/P,) buffers, never an N x K array) and writes "
             "them as its own shard file of `predictions.npz` (`experiment.predict_training_set` / `save_shares`). "
             "Its time (barrier to barrier), each rank's peak over it (over the same start as the other columns, so "
             "the objective's state and the labels every rank holds, 8 N bytes here, are in it) and the files' size, "
             "all ranks together. The model's own "
             "inference over each rank's share comes on top, split P ways.", "",
             "| N | mode | expected per rank MiB | steps: rank 0 / rank 1 MiB | end of epoch: rank 0 / rank 1 MiB | "
             "end of epoch s | snapshot MiB | end of run s | end of run: rank 0 / rank 1 MiB | predictions MiB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in args.sizes:
        for mode in ("replicated", "sharded"):
            r0, r1 = measure(mode, n, args.known_noise)
            lines.append(f"| {n:,} | {mode} | {expected_bytes(mode, n) / 2**20:,.0f} | "
                         f"{r0['steps_mb']:,.0f} / {r1['steps_mb']:,.0f} | "
                         f"{r0['epoch_end_mb']:,.0f} / {r1['epoch_end_mb']:,.0f} | "
                         f"{max(r0['epoch_end_s'], r1['epoch_end_s']):.1f} | {r0['snapshot_mb']:,.1f} | "
                         f"{max(r0['run_end_s'], r1['run_end_s']):.1f} | {r0['run_end_mb']:,.0f} / "
                         f"{r1['run_end_mb']:,.0f} | {r0['predictions_mb']:,.1f} |")
            print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
