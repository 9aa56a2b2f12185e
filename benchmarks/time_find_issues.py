"""Wall time of the whole `dataparams find-issues --data` command on a user-data set, in a fresh process.

Run it on an idle machine; it prints (and with --table writes) one row per repeat.

    python benchmarks/time_find_issues.py runs/userdata/fmnist-rgb-csv/labels.csv --repeats 2 \\
        --table benchmarks/results/find_issues_time.md
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from _table import emit
from bench_user_data import time_command


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--out", default="runs/time-find-issues")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--table")
    args = p.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    times = [time_command(Path(args.data), Path(args.out) / f"r{i}") for i in range(args.repeats)]
    lines = [f"# `dataparams find-issues --data {args.data}`: the whole command in a fresh process "
             f"({platform.machine()}, {cpus} CPUs, nothing else running)", "", "| repeat | wall s |", "|---:|---:|"]
    lines += [f"| {i + 1} | {t:.1f} |" for i, t in enumerate(times)]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
