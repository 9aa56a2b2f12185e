"""The real command under torchrun against the same command in one process.

    python benchmarks/compare_torchrun.py --work runs/torchrun-check [--epochs 2] [--out FILE]

Runs ``dataparams train --preset fmnist-noisy40/instance --epochs E --device cpu`` four ways:
one process with 2 threads, one process with 1 thread, and ``torchrun --standalone
--nproc-per-node 2`` (1 thread per process), replicated and sharded. It then compares every
epoch's instance sigma and the test accuracy with the first.

Why a second single-process run: the data-parallel step sums the same per-sample gradients in a
different order (two half batches, then an all-reduce), so the runs agree only up to float
rounding, and SGD amplifies rounding differences over hundreds of steps (the instance learning
rate of this preset is 5). The two single-process runs differ in nothing but the thread count,
which also changes only the summation order; their distance is the float-rounding floor against
which the torchrun distance is read. ``tests/test_distributed_train.py`` checks exactness before
amplification (a few steps, tight tolerances).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from _table import emit
from dataparams.runs import RunDir

PRESET = "fmnist-noisy40/instance"


def _run(cmd: list[str], threads: int, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd + ["--out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)


def _load(run: Path, epochs: int) -> tuple[list[np.ndarray], float]:
    rundir = RunDir(run)
    sigmas = [rundir.load_snapshot(e)["instance_sigma"] for e in range(1, epochs + 1)]
    return sigmas, float(rundir.read_metrics()[-1]["test_acc"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/torchrun-check", help="folder for the four run directories")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train = [sys.executable, "-m", "dataparams", "train", "--preset", PRESET, "--epochs", str(args.epochs),
             "--device", "cpu", "--quiet", "--no-tensorboard"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "dataparams", "train", "--preset", PRESET, "--epochs", str(args.epochs), "--device", "cpu",
                "--quiet", "--no-tensorboard"]
    runs = {
        "1 process, 2 threads": (train, 2),
        "1 process, 1 thread": (train, 1),
        "torchrun 2 x 1 thread, replicated": (torchrun, 1),
        "torchrun 2 x 1 thread, sharded": (torchrun + ["--set", "distributed.mode=sharded"], 1),
    }
    loaded = {}
    for i, (name, (cmd, threads)) in enumerate(runs.items()):
        out = work / f"run{i}"
        print(f"running: {name}", file=sys.stderr)
        _run(cmd, threads, out)
        loaded[name] = _load(out, args.epochs)
    ref_name = next(iter(runs))
    ref_sigma, ref_acc = loaded[ref_name]
    head = " | ".join(f"max abs d sigma, epoch {e}" for e in range(1, args.epochs + 1))
    lines = [f"`dataparams train --preset {PRESET} --epochs {args.epochs} --device cpu`, compared with "
             f"'{ref_name}' (10,000 samples; sigma starts at 1)", "",
             f"| run | test acc (%) | {head} | median abs d sigma, last epoch |",
             "|---|---:|" + "---:|" * args.epochs + "---:|"]
    for name, (sigma, acc) in loaded.items():
        diffs = [np.abs(s - r).max() for s, r in zip(sigma, ref_sigma)]
        med = np.median(np.abs(sigma[-1] - ref_sigma[-1]))
        lines.append(f"| {name} | {acc:.2f} | " + " | ".join(f"{d:.2e}" for d in diffs) + f" | {med:.2e} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
