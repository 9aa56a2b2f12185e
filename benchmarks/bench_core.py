"""Benchmark the core: data-parameter optimizer step and the cost of data parameters in training.

    python benchmarks/bench_core.py [--out benchmarks/results/core.md]

Prints three tables:

(a) The data-parameter update at N in {5e4, 1.28e6, 1e7}, B = 128: ``SparseSGD.step()`` alone and
    the whole update (gather B rows, backward, step), next to a dense re-statement of the
    published optimizer (clone parameter and momentum, dense step, restore the rows whose
    gradient is exactly zero, with the dense gradient that ``p[index]`` produces), and the ratio.
(b) Peak resident memory during 100 such updates, beyond the parameter and momentum themselves,
    each measured in a fresh process so the peaks do not mix.
(c) A full training step of the small CNN (B = 128, 28x28, N = 60,000, joint curriculum) with
    and without data parameters, timed alternately, as a ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from _table import emit
from dataparams import DataParameters, SparseSGD, scaled_cross_entropy
from dataparams.models import SmallCNN
from dataparams.parameters import gather_rows

B = 128
SIZES = [50_000, 1_280_000, 10_000_000]


class PublishedDenseSGD:
    """The released optimizer's algorithm, restated densely (momentum, skip zero-gradient rows)."""

    def __init__(self, param: torch.Tensor, lr: float, momentum: float) -> None:
        self.p, self.lr, self.m, self.buf = param, lr, momentum, None

    @torch.no_grad()
    def step(self) -> None:
        p, d_p = self.p, self.p.grad
        p_before = p.clone()
        if self.buf is None:
            self.buf = torch.zeros_like(p).add_(d_p)
            buf_before = None
        else:
            buf_before = self.buf.clone()
            self.buf.mul_(self.m).add_(d_p)
        p.add_(self.buf, alpha=-self.lr)
        absent = d_p.abs() == 0
        p[absent] = p_before[absent]
        if buf_before is not None:
            self.buf[absent] = buf_before[absent]


def _update(param, opt, rows, coef, gather):
    param.grad = None
    (gather(param, rows).exp() * coef).sum().backward()
    opt.step()


def _setup(n: int, kind: str):
    """``(param, optimizer, gather)`` for ``kind`` "sparse" (ours, with the clamp a real step
    does) or "dense" (the published algorithm)."""
    param = torch.nn.Parameter(torch.zeros(n))
    if kind == "sparse":
        return param, SparseSGD([param], lr=0.1, momentum=0.9, bounds=(-3.0, 3.0)), gather_rows
    return param, PublishedDenseSGD(param, lr=0.1, momentum=0.9), (lambda w, i: w[i])


def time_update(n: int, kind: str, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    param, opt, gather = _setup(n, kind)
    batches = [(torch.randint(0, n, (B,), generator=g), torch.randn(B, generator=g)) for _ in range(reps)]
    for rows, coef in batches[:5]:
        _update(param, opt, rows, coef, gather)
    full, step_only = [], []
    for rows, coef in batches:
        t0 = time.perf_counter()
        param.grad = None
        (gather(param, rows).exp() * coef).sum().backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        full.append(t2 - t0)
        step_only.append(t2 - t1)
    return {"full_ms": 1e3 * statistics.median(full), "step_ms": 1e3 * statistics.median(step_only)}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(n: int, kind: str) -> dict:
    """Run in a fresh process: peak RSS over 100 updates, beyond the settled state."""
    g = torch.Generator().manual_seed(0)
    param, opt, gather = _setup(n, kind)
    # Two warm-up updates allocate the momentum buffer and settle the allocator.
    for _ in range(2):
        _update(param, opt, torch.randint(0, n, (B,), generator=g), torch.randn(B, generator=g), gather)
    param.grad = None
    settled = _status_mb("VmRSS")
    # Writing 5 to clear_refs resets the peak-RSS counter (VmHWM) to the current RSS (Linux).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(100):
        _update(param, opt, torch.randint(0, n, (B,), generator=g), torch.randn(B, generator=g), gather)
    peak = _status_mb("VmHWM")
    return {"state_mb": 2 * n * 4 / 2**20, "settled_rss_mb": settled, "peak_over_settled_mb": max(0.0, peak - settled)}


def train_step_ratio(reps: int) -> dict:
    torch.manual_seed(0)
    n, k = 60_000, 10
    x = torch.randn(B, 1, 28, 28)
    y = torch.randint(0, k, (B,))
    base = SmallCNN(k)
    with_dp = SmallCNN(k)
    with_dp.load_state_dict(base.state_dict())
    opt_base = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_model = torch.optim.SGD(with_dp.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dp = DataParameters(k, n, class_curriculum=True, instance_curriculum=True, init_instance=0.001)
    opt_cls = SparseSGD([dp.class_log_sigma], lr=0.1, momentum=0.9, bounds=dp.log_bounds)
    opt_inst = SparseSGD([dp.instance_log_sigma], lr=0.8, momentum=0.9, bounds=dp.log_bounds)
    g = torch.Generator().manual_seed(1)

    def step_base():
        opt_base.zero_grad()
        F.cross_entropy(base(x), y).backward()
        opt_base.step()

    def step_dp():
        idx = torch.randint(0, n, (B,), generator=g)
        for o in (opt_model, opt_cls, opt_inst):
            o.zero_grad()
        sigma, penalty = dp.sigma_and_regularizer(y, idx, wd_class=1e-4, wd_instance=1e-8)
        (scaled_cross_entropy(with_dp(x), y, sigma) + penalty).backward()
        for o in (opt_model, opt_cls, opt_inst):
            o.step()

    # A long warm-up: the first few dozen steps of each arm pay one-off allocator and kernel
    # selection costs that otherwise land in one arm's median.
    for _ in range(50):
        step_base()
        step_dp()
    tb, td = [], []
    for r in range(reps):
        # Alternate the order so that drifts in machine speed hit both equally.
        for fn, acc in ((step_base, tb), (step_dp, td)) if r % 2 == 0 else ((step_dp, td), (step_base, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    mb, md = statistics.median(tb), statistics.median(td)
    return {"baseline_ms": 1e3 * mb, "data_params_ms": 1e3 * md, "ratio": md / mb}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200, help="timed updates per configuration")
    parser.add_argument("--train-reps", type=int, default=300, help="timed training steps per arm")
    parser.add_argument("--out", help="also write the tables (Markdown) to this file")
    parser.add_argument("--child", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(int(args.child[0]), args.child[1])))
        return

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, B = {B}",
        "",
        f"(a) Data-parameter update time (median over {args.reps} updates)",
        "",
        "| N | SparseSGD.step ms | dense published step ms | step ratio | full update ms (ours) | full update ms (dense) | full ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        s = time_update(n, "sparse", args.reps)
        d = time_update(n, "dense", max(20, args.reps // 10) if n > 2_000_000 else args.reps)
        lines.append(
            f"| {n:,} | {s['step_ms']:.3f} | {d['step_ms']:.2f} | {d['step_ms'] / s['step_ms']:.0f}x "
            f"| {s['full_ms']:.3f} | {d['full_ms']:.2f} | {d['full_ms'] / s['full_ms']:.0f}x |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "(b) Peak resident memory during 100 updates, beyond the settled state (fresh process each)",
        "",
        "| N | kind | parameter + momentum MB | settled RSS MB | peak over settled MB |",
        "|---:|---|---:|---:|---:|",
    ]
    for n in SIZES:
        for kind in ("sparse", "dense"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), kind], capture_output=True, text=True, check=True
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            lines.append(
                f"| {n:,} | {kind} | {m['state_mb']:.1f} | {m['settled_rss_mb']:.1f} | {m['peak_over_settled_mb']:.1f} |"
            )
            print(lines[-1], flush=True)
    r = train_step_ratio(args.train_reps)
    lines += [
        "",
        f"(c) Small-CNN training step, B = 128, N = 60,000, joint curriculum (median of {args.train_reps} each)",
        "",
        "| baseline ms | with data parameters ms | ratio |",
        "|---:|---:|---:|",
        f"| {r['baseline_ms']:.2f} | {r['data_params_ms']:.2f} | {r['ratio']:.3f} |",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
