"""Benchmark data parameters under torch.distributed: bytes, memory and time of the exchange.

    python benchmarks/bench_distributed.py [--out benchmarks/results/distributed.md]

Every setting uses the joint curriculum (class and instance levels) with K = 1000 classes and a
global batch of B = 256 samples. Processes are spawned here and talk gloo over 127.0.0.1.

(a) Bytes each rank receives per step for the data parameters, computed from the sizes of the
    collectives (ring algorithms: an all-gather brings P - 1 chunks, an all-reduce 2 (P - 1) / P
    of the buffer; padding included), for P = 2, 4, 8, against a dense all-reduce of N float32
    values -- what the data parameters would cost if DDP averaged them as model parameters -- at
    N = 1.28 M and 10 M.
(b) The same measured with P = 2 processes: the count the exchange keeps (median over steps),
    and the bytes crossing the loopback interface per step and rank (``/proc/net/dev``, half of
    the total, TCP/IP and gloo headers included; the least of three windows, as other traffic
    can only add).
(c) Peak resident memory per process at N = 1e8 with 2 processes, replicated (values and
    momentum of all N rows on every rank) against sharded (N / 2 rows each), each mode in fresh
    processes; the increase over the process's resident size before the data parameters exist.
(d) Wall time of a data-parallel training step of the small CNN (28x28 inputs, global batch 256,
    N = 1.28 M) in 2 gloo processes with one thread each: without exchange (each rank updates the
    data parameters from its own share, which is NOT the single-process result), replicated, and
    sharded; the variants alternate step by step, each timed from a barrier to a barrier, medians
    of ``--steps`` steps. The machine's load average is printed with the table: on a shared
    2-core CPU each collective mostly waits for the other process to be scheduled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _table import emit
from dataparams import DataParameters, SparseSGD, scaled_loss
from dataparams.distributed import (
    ReplicatedExchange,
    ShardedDataParameters,
    distributed_loss,
    init_distributed,
    local_share,
    wrap_model,
)
from dataparams.losses import per_sample_cross_entropy
from dataparams.models import SmallCNN

B, K = 256, 1000
SIZES = [1_280_000, 10_000_000]
MEMORY_N = 100_000_000
INDEX_BYTES, VALUE_BYTES, COUNT_BYTES = 4, 4, 8  # int32 rows below 2**31, float32 values, int64 counts


# ---- (a) the cost model ------------------------------------------------------------------------


def replicated_bytes(batch: int, procs: int, classes: int) -> int:
    """``begin_step``: ``B_r`` and a payload length. The exchange: two entry counts, a length, and
    (row, value) pairs padded to what the longest share can hold: its instance rows and at
    most ``min(share, K)`` class rows."""
    share = -(-batch // procs)
    begin = 2 * COUNT_BYTES
    exchange = 3 * COUNT_BYTES + (INDEX_BYTES + VALUE_BYTES) * (share + min(share, classes))
    return (procs - 1) * (begin + exchange)


def sharded_bytes(batch: int, procs: int) -> int:
    """``begin_step``: ``B_r``, a length and the (index, target) pairs of the longest share, then
    the all-reduce of the B values; ``step``: the (instance, class) gradients of the longest
    share. Steady state (the first step gathers its pairs twice)."""
    share = -(-batch // procs)
    gathers = 2 * COUNT_BYTES + 2 * INDEX_BYTES * share + 2 * VALUE_BYTES * share
    return (procs - 1) * gathers + 2 * (procs - 1) * VALUE_BYTES * batch // procs


def dense_bytes(n: int, procs: int) -> int:
    return 2 * (procs - 1) * VALUE_BYTES * n // procs


# ---- workers -----------------------------------------------------------------------------------


def _lo_bytes() -> int | None:
    """Bytes received on the loopback interface so far (None where it cannot be read)."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return int(rest.split()[0])
    except OSError:
        return None
    return None


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _batch(step: int, n: int, ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's share of a seeded global batch (the same on every rank): targets, indices,
    and a per-sample coefficient standing in for the model's contribution to the loss."""
    g = torch.Generator().manual_seed(step)
    idx = torch.randint(0, n, (B,), generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    coef = torch.randn(B, generator=g)
    return tuple(local_share(t, ctx.rank, ctx.world_size) for t in (y, idx, coef))  # type: ignore[return-value]


class _Replicated:
    def __init__(self, n: int, ctx) -> None:
        self.dp = DataParameters(K, n, class_curriculum=True, instance_curriculum=True)
        groups = [{"params": [self.dp.class_log_sigma], "lr": 0.1}, {"params": [self.dp.instance_log_sigma], "lr": 0.8}]
        self.opt = SparseSGD(groups, momentum=0.9, bounds=self.dp.log_bounds)
        self.exchange = ReplicatedExchange(self.dp, ctx)

    def begin(self, y, idx):
        self.opt.zero_grad()
        return self.exchange.begin_step(y, idx)

    def sigma(self, plan):
        return self.exchange.sigma_and_regularizer(plan, wd_class=1e-4, wd_instance=1e-8)

    def finish(self, plan) -> int:
        self.exchange.all_reduce_gradients(plan)
        self.opt.step()
        return plan.bytes_exchanged


class _Sharded:
    def __init__(self, n: int, ctx) -> None:
        self.sdp = ShardedDataParameters(K, n, ctx=ctx, class_curriculum=True, instance_curriculum=True,
                                         lr_class=0.1, lr_instance=0.8, momentum=0.9)

    def begin(self, y, idx):
        return self.sdp.begin_step(y, idx)

    def sigma(self, plan):
        return self.sdp.sigma_and_regularizer(plan, wd_class=1e-4, wd_instance=1e-8)

    def finish(self, plan) -> int:
        return self.sdp.step(plan)


def _exchange_step(dp, step: int, n: int, ctx) -> int:
    y, idx, coef = _batch(step, n, ctx)
    plan = dp.begin(y, idx)
    sigma, penalty = dp.sigma(plan)
    distributed_loss(sigma * coef, penalty, global_batch_size=plan.global_batch_size,
                     world_size=ctx.world_size).backward()
    return dp.finish(plan)


def _wire_per_step(ctx, fn, steps: int) -> float | None:
    """Least over three windows of the loopback bytes per call of ``fn``, per rank."""
    best = None
    for _ in range(3):
        ctx.barrier()
        start = _lo_bytes()
        for s in range(steps):
            fn(s)
        ctx.barrier()
        end = _lo_bytes()
        if start is None or end is None:
            return None
        per = (end - start) / steps / ctx.world_size
        best = per if best is None else min(best, per)
    return best


def bytes_worker(ctx, args) -> dict:
    out = {}
    for n in SIZES:
        row = {}
        for name, cls in (("replicated", _Replicated), ("sharded", _Sharded)):
            dp = cls(n, ctx)
            counted = [_exchange_step(dp, s, n, ctx) for s in range(args.bytes_steps)]
            row[name] = statistics.median(counted)
            row[name + "_wire"] = _wire_per_step(ctx, lambda s, dp=dp, n=n: _exchange_step(dp, s, n, ctx), args.bytes_steps)
            del dp
        buf = torch.zeros(n)
        dist.all_reduce(buf)
        t0 = time.perf_counter()
        row["dense_wire"] = _wire_per_step(ctx, lambda s, buf=buf: dist.all_reduce(buf), args.dense_reps)
        row["dense_ms"] = 1e3 * (time.perf_counter() - t0) / (3 * args.dense_reps)
        out[n] = row
    return out


def memory_worker(ctx, args, mode: str) -> dict:
    # Run both modes once on a small N first: the first use of torch.optim, of the sparse kernels
    # and of the collectives loads code and sets up allocator pools (~200 MB of resident size)
    # that belong to neither mode.
    for cls in (_Replicated, _Sharded):
        _exchange_step(cls(1000, ctx), 0, 1000, ctx)
    ctx.barrier()
    baseline = _status_mb("VmRSS")
    # Writing 5 to clear_refs resets the peak-RSS counter (VmHWM) to the current RSS (Linux).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    dp = _Replicated(MEMORY_N, ctx) if mode == "replicated" else _Sharded(MEMORY_N, ctx)
    for s in range(20):
        _exchange_step(dp, s, MEMORY_N, ctx)
    rows = MEMORY_N if mode == "replicated" else -(-MEMORY_N // ctx.world_size)
    return {"baseline_mb": baseline, "peak_mb": _status_mb("VmHWM"), "state_mb": 2 * rows * 4 / 2**20}


def time_worker(ctx, args) -> dict:
    n = SIZES[0]
    torch.manual_seed(0)
    model = SmallCNN(K)
    net = wrap_model(model, ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = local_share(torch.randn(B, 1, 28, 28, generator=g), ctx.rank, ctx.world_size)
    local = DataParameters(K, n, class_curriculum=True, instance_curriculum=True)
    local_opt = SparseSGD([{"params": [local.class_log_sigma], "lr": 0.1},
                           {"params": [local.instance_log_sigma], "lr": 0.8}], momentum=0.9, bounds=local.log_bounds)
    exact = {"replicated": _Replicated(n, ctx), "sharded": _Sharded(n, ctx)}

    def step_without(s: int) -> float:
        y, idx, _ = _batch(s, n, ctx)
        opt.zero_grad()
        local_opt.zero_grad()
        sigma, penalty = local.sigma_and_regularizer(y, idx, wd_class=1e-4, wd_instance=1e-8)
        loss = scaled_loss(per_sample_cross_entropy, net(x), y, sigma) + penalty
        loss.backward()
        opt.step()
        local_opt.step()
        return 0.0

    def step_with(name: str, s: int) -> float:
        dp = exact[name]
        y, idx, _ = _batch(s, n, ctx)
        opt.zero_grad()
        t0 = time.perf_counter()
        plan = dp.begin(y, idx)
        t_begin = time.perf_counter() - t0
        sigma, penalty = dp.sigma(plan)
        per_sample = scaled_loss(per_sample_cross_entropy, net(x), y, sigma, reduction="none")
        distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                         world_size=ctx.world_size).backward()
        t0 = time.perf_counter()
        dp.finish(plan)
        t_finish = time.perf_counter() - t0
        opt.step()
        return t_begin + t_finish

    variants = {
        "without exchange": step_without,
        "replicated": lambda s: step_with("replicated", s),
        "sharded": lambda s: step_with("sharded", s),
    }
    names = list(variants)
    times = {k: [] for k in names}
    dp_calls = {k: [] for k in names}
    for r in range(args.warmup + args.steps):
        # Rotate the order so that drifts in machine speed hit every variant alike.
        for k in names[r % 3 :] + names[: r % 3]:
            # Barrier to barrier: every variant pays the ranks' skew. Without the closing barrier
            # a variant with no collective of its own would leave its skew to the next one.
            ctx.barrier()
            t0 = time.perf_counter()
            calls = variants[k](r)
            ctx.barrier()
            elapsed = time.perf_counter() - t0
            if r >= args.warmup:
                times[k].append(elapsed)
                dp_calls[k].append(calls)
    out = {k: {"step_ms": 1e3 * statistics.median(times[k]), "calls_ms": 1e3 * statistics.median(dp_calls[k])}
           for k in names}
    # The exchange alone, with no model between the collectives: what it costs when the two
    # processes arrive together.
    for name in ("replicated", "sharded"):
        alone = []
        for s in range(args.warmup + args.steps):
            ctx.barrier()
            t0 = time.perf_counter()
            _exchange_step(exact[name], s, n, ctx)
            if s >= args.warmup:
                alone.append(time.perf_counter() - t0)
        out[name]["alone_ms"] = 1e3 * statistics.median(alone)
    return out


def _worker(rank: int, world_size: int, port: int, task: str, args: argparse.Namespace, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with init_distributed("cpu", timeout=timedelta(minutes=10)) as ctx:
        if task == "bytes":
            result = bytes_worker(ctx, args)
        elif task == "time":
            result = time_worker(ctx, args)
        else:
            result = memory_worker(ctx, args, task.split("-", 1)[1])
        Path(out_dir, f"{task}-{rank}.json").write_text(json.dumps(result))
        ctx.barrier()


def _spawn(task: str, args: argparse.Namespace, out_dir: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, task, args, out_dir), nprocs=2, join=True)
    return [json.loads(Path(out_dir, f"{task}-{r}.json").read_text()) for r in range(2)]


def _bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f} B" if x < 2**20 else f"{x / 2**20:,.2f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes-steps", type=int, default=50, help="exchange steps per byte measurement window")
    parser.add_argument("--dense-reps", type=int, default=5, help="dense all-reduces per measurement window")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=15, help="untimed training steps per variant")
    parser.add_argument("--out", help="also write the tables (Markdown) to this file")
    args = parser.parse_args(argv)

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"gloo over 127.0.0.1; joint curriculum, K = {K}, global batch B = {B}",
        "",
        "(a) Bytes received per rank per step, computed (ring algorithms, padding included)",
        "",
        "| N | P | replicated exchange | sharded exchange | dense all-reduce of N float32 | dense / replicated | dense / sharded |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        for p in (2, 4, 8):
            r, s, d = replicated_bytes(B, p, K), sharded_bytes(B, p), dense_bytes(n, p)
            lines.append(f"| {n:,} | {p} | {r:,} B | {s:,} B | {d / 2**20:,.2f} MiB | {d / r:,.0f}x | {d / s:,.0f}x |")
    print("\n".join(lines), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        measured = _spawn("bytes", args, tmp)[0]
        lines += [
            "",
            f"(b) Measured with P = 2, bytes per rank per step (counted: median of {args.bytes_steps} steps; "
            "loopback: least of 3 windows, headers included)",
            "",
            "| N | replicated: counted | replicated: loopback | sharded: counted | sharded: loopback | dense all-reduce: loopback | dense all-reduce ms |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in SIZES:
            m = measured[str(n)]
            lines.append(
                f"| {n:,} | {_bytes(m['replicated'])} | {_bytes(m['replicated_wire'])} | {_bytes(m['sharded'])} "
                f"| {_bytes(m['sharded_wire'])} | {_bytes(m['dense_wire'])} | {m['dense_ms']:.1f} |"
            )
        print("\n".join(lines[-len(SIZES) - 4 :]), flush=True)

        lines += [
            "",
            f"(c) Peak resident memory per process, N = {MEMORY_N:,}, 2 processes (fresh processes per mode)",
            "",
            "| mode | values + momentum per process MiB | rank 0: before MiB | rank 0: peak MiB | rank 1: peak MiB | peak increase MiB (rank 0 / rank 1) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for mode in ("replicated", "sharded"):
            m0, m1 = _spawn(f"memory-{mode}", args, tmp)
            lines.append(
                f"| {mode} | {m0['state_mb']:,.0f} | {m0['baseline_mb']:,.0f} | {m0['peak_mb']:,.0f} | {m1['peak_mb']:,.0f} "
                f"| {m0['peak_mb'] - m0['baseline_mb']:,.0f} / {m1['peak_mb'] - m1['baseline_mb']:,.0f} |"
            )
            print(lines[-1], flush=True)

        load_before = os.getloadavg()[0]
        timing = _spawn("time", args, tmp)[0]
        load_after = os.getloadavg()[0]
        base = timing["without exchange"]["step_ms"]
        lines += [
            "",
            f"(d) Small-CNN data-parallel step, 2 gloo processes x 1 thread, N = {SIZES[0]:,}, "
            f"B = {B} (median of {args.steps} alternated steps, barrier to barrier, rank 0; "
            f"1-minute load average {load_before:.1f} before, {load_after:.1f} after)",
            "",
            "| variant | collectives per step | step ms | overhead over no exchange "
            "| begin_step + exchange/step within the step ms | the exchange alone, no model, ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        collectives = {"without exchange": "1 (DDP)", "replicated": "1 (DDP) + 2", "sharded": "1 (DDP) + 3"}
        for name, t in timing.items():
            extra = t["step_ms"] - base
            if name == "without exchange":
                shown, calls, alone = "-", "-", "-"
            else:
                shown = f"{extra:+.2f} ms ({100 * extra / base:+.1f}%)"
                calls, alone = f"{t['calls_ms']:.2f}", f"{t['alone_ms']:.2f}"
            lines.append(f"| {name} | {collectives[name]} | {t['step_ms']:.2f} | {shown} | {calls} | {alone} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
