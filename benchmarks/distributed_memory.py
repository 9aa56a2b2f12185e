"""Peak memory per process of the data-parameter objective under torch.distributed, everything per-sample included.

    python benchmarks/distributed_memory.py [--sizes 10000000 100000000] [--out benchmarks/results/distributed_memory.md]

``benchmarks/bench_distributed.py`` (c) measures the parameter table alone (values and momentum).
A run holds more per sample: the objective's score buffers (``last_loss`` float32, ``loss_sum`` and
``log_sigma_sum`` float64; replicated mode also a ``visited`` flag per sample) and, at the end of an
epoch, what the epoch's bookkeeping gathers (replicated: an all-reduce of the (N,) buffers; sharded:
every sample's sigma and the three score buffers gathered to rank 0 for the snapshot and scores).

Per setting (N, mode), 2 gloo processes on 127.0.0.1, fresh processes for each: the joint curriculum,
K = 10 classes, global batch 256; each rank builds the objective the trainer builds
(``ReplicatedObjective`` / ``ShardedObjective``), runs 20 steps (random logits standing in for the
model), then the end of an epoch as the engine and the run logger do it (``on_epoch_end`` on every
rank; ``snapshot`` and ``scores`` on every rank of a sharded run, where they are collectives, and on
rank 0 only of a replicated one). Reported per rank: resident size before the objective exists, the peak
during the steps and the peak over the end of the epoch (``VmHWM``, reset before each phase), as
increases over the start. What this leaves out: the model, the data and the labels the trainer holds
(``data.prepare.TrainingLabels``: int64 given and clean labels, the corruption mask and the split's
int64 indices, about 25 N bytes by their dtypes on every rank in either mode) -- this script measures
the data-parameter side only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

from _table import emit
from dataparams import DataParameters
from dataparams.distributed import ReplicatedObjective, ShardedObjective, init_distributed, local_share

B, K, STEPS = 256, 10, 20


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


def _worker(rank: int, world_size: int, port: int, mode: str, n: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with init_distributed("cpu", timeout=timedelta(minutes=20)) as ctx:
        # A small objective first: the first use of the optimizers, sparse kernels and collectives
        # loads code and sets up allocator pools that belong to neither size.
        warm = _objective(mode, 1000, ctx)
        _steps(warm, 1000, ctx, 0, 2)
        warm.on_epoch_end(0)
        warm.snapshot()
        warm.scores()
        del warm
        ctx.barrier()
        start = _status_mb("VmRSS")
        _reset_peak()
        objective = _objective(mode, n, ctx)
        _steps(objective, n, ctx, 0, STEPS)
        steps_peak = _status_mb("VmHWM")
        ctx.barrier()
        _reset_peak()
        objective.on_epoch_end(0)
        # As the run logger does: every rank joins a sharded objective's gathers; a replicated
        # objective's snapshot and scores are built on rank 0 only.
        if mode == "sharded" or ctx.is_main:
            snap, scores = objective.snapshot(), objective.scores()
            del snap, scores
        epoch_peak = _status_mb("VmHWM")
        Path(out_dir, f"{rank}.json").write_text(json.dumps(
            {"start_mb": start, "steps_mb": steps_peak - start, "epoch_end_mb": epoch_peak - start}))
        ctx.barrier()


def measure(mode: str, n: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_worker, args=(2, port, mode, n, tmp), nprocs=2, join=True)
        return [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(2)]


def expected_bytes(mode: str, n: int, p: int = 2) -> int:
    """The objective's per-sample state per rank by construction: values + momentum (float32 each),
    last_loss (float32), loss_sum and log_sigma_sum (float64), and replicated's visited (bool)."""
    rows = n if mode == "replicated" else -(-n // p)
    return rows * (4 + 4 + 4 + 8 + 8 + (1 if mode == "replicated" else 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)
    lines = [f"# Memory per process of the data-parameter objective, 2 gloo processes ({platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__})", "",
             f"Joint curriculum, K = {K}, global batch {B}; {STEPS} steps, then the end of an epoch as the run logger "
             "does it (on_epoch_end on every rank; snapshot and scores on every rank when sharded, on rank 0 only "
             "when replicated). Increases over each rank's resident size before the objective was built (MiB); "
             "one run per cell (n=1). Expected: the per-sample state by construction (values, momentum, last_loss "
             "float32; loss_sum, log_sigma_sum float64; replicated's visited flag). Not included: the model, the "
             "data and the labels every rank holds in either mode (int64 given and clean labels, the corruption mask, "
             "the split's int64 indices: about 25 N bytes by their dtypes, not measured here).", "",
             "| N | mode | expected per rank MiB | steps: rank 0 / rank 1 MiB | end of epoch: rank 0 / rank 1 MiB |",
             "|---:|---|---:|---:|---:|"]
    for n in args.sizes:
        for mode in ("replicated", "sharded"):
            r0, r1 = measure(mode, n)
            lines.append(f"| {n:,} | {mode} | {expected_bytes(mode, n) / 2**20:,.0f} | "
                         f"{r0['steps_mb']:,.0f} / {r1['steps_mb']:,.0f} | "
                         f"{r0['epoch_end_mb']:,.0f} / {r1['epoch_end_mb']:,.0f} |")
            print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
