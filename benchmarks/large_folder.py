"""A 60,000-image folder: `find-issues --data` against cleanlab at Fashion-MNIST's full training size.

The whole Fashion-MNIST training set written as 32-px greyscale PNGs in class folders named by a
label with 40% uniform noise (``user_datasets.write_fmnist_folder`` with ``n=60000``). Each
method runs in a fresh process: its wall time, its peak resident memory, ranking AUROC / AP
against the injected noise, and flagged / truly wrong. cleanlab is ``find_label_issues`` on
5-fold out-of-sample probabilities of the same network and config trained with cross-entropy
(``bench_user_data.run_cleanlab``).

    python benchmarks/large_folder.py --out runs/large-folder --table benchmarks/results/large_folder.md

Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from _table import emit


def _one(method: str, root: Path, out: Path) -> None:
    """Run one method in this process and print its numbers with the process's peak RSS."""
    from bench_user_data import run_cleanlab, run_ours

    truth = np.load(root / "truth.npz")["is_corrupted"]
    ours_run = out / "ours" / "run"
    if method == "ours":
        res = run_ours(root, out / "ours", truth)
    else:
        res = run_cleanlab(root, out / "cleanlab", truth, ours_run)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT", json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/large-folder")
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--table")
    p.add_argument("--skip-cleanlab", action="store_true")
    p.add_argument("--one", choices=["ours", "cleanlab"], help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    root = out / "fmnist-folder"
    if args.one:
        _one(args.one, root, out)
        return
    if not (root / "truth.npz").exists():
        from user_datasets import write_fmnist_folder

        write_fmnist_folder(out, n=args.n)
    rows = {}
    for method in ("ours",) + (() if args.skip_cleanlab else ("cleanlab",)):
        proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--one", method], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rows[method] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[7:])
        print(method, json.dumps(rows[method]), flush=True)
    truth = np.load(root / "truth.npz")["is_corrupted"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"# A {len(truth):,}-image folder: find-issues --data vs cleanlab ({platform.machine()}, {cpus} CPUs)", "",
             f"Fashion-MNIST's training images as 32-px grey PNGs in class folders, 40% uniform noise "
             f"({truth.mean():.1%} realised); n=1 per row. Wall time of each method in its own process (loading the "
             "images included); cleanlab: 5-fold out-of-sample probabilities of the same network and config with "
             "plain cross-entropy, then its find_label_issues.", "",
             "| method | trainings | epochs | wall s | peak RSS MB | AUROC | AP | flagged / truly wrong | F1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, r in rows.items():
        lines.append(f"| {'find-issues --data' if method == 'ours' else 'cleanlab (5 folds)'} | {r['trainings']} | "
                     f"{r['epochs']} | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['auroc']:.4f} | {r['ap']:.4f} | "
                     f"{r['flagged'] / max(1, truth.sum()):.2f} | {r['f1']:.3f} |")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
