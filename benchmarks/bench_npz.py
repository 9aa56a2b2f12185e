"""Writing a run's arrays: ``np.savez_compressed`` (what the run directory used) against
:func:`dataparams.runs.files.write_npz` (integers and booleans deflated at zlib level 1, floats
stored), side by side in one process on the same arrays.

The arrays are shaped as a run writes them: an epoch's snapshot (float32 sigma of every sample,
float16 last loss; a trained run's values, not the initial constant, which would compress to
nothing), the end-of-run labels (int64 given / clean labels and split indices, a bool corruption
mask) and the predictions (N x K float32 probabilities, int64 argmax). Median of ``--repeats``
writes to a file on the run's disk; the read time (``np.load`` of every member) too.

    python benchmarks/bench_npz.py --rows 1000000 10000000 --table benchmarks/results/npz_write.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _table import emit


def run_arrays(n: int, classes: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The three files a run writes, with values of a trained run's spread."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, classes, size=n)
    given = np.where(rng.random(n) < 0.4, rng.integers(0, classes, size=n), clean)
    logits = rng.standard_normal((n, classes), dtype=np.float32) * 3
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return {
        "snapshot": {"instance": np.exp(rng.normal(0, 0.5, n)).astype(np.float32),
                     "loss": rng.gamma(1.0, 1.0, n).astype(np.float16)},
        "labels": {"given": given, "clean": clean, "train_index": np.arange(n, dtype=np.int64),
                   "is_corrupted": given != clean},
        "predictions": {"probs": probs, "pred": probs.argmax(1)},
    }


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    from dataparams.runs.files import write_npz

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--classes", type=int, default=20, help="K of the predictions (default: %(default)s)")
    p.add_argument("--predictions-max-rows", type=int, default=1_000_000,
                   help="skip the N x K predictions above this N (their memory; default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", help="where to write (default: a temporary folder)")
    p.add_argument("--table", help="also write the Markdown table here")
    args = p.parse_args(argv)

    writers = {"np.savez_compressed": lambda f, a: np.savez_compressed(f, **a), "write_npz": write_npz}
    lines = [f"# Writing a run's arrays: np.savez_compressed vs write_npz ({platform.machine()}, "
             f"median of {args.repeats})", "",
             "| rows | file | writer | write s | read s | MiB | write ratio |",
             "|---:|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "a.npz"
        for n in args.rows:
            for name, arrays in run_arrays(n, args.classes).items():
                if name == "predictions" and n > args.predictions_max_rows:
                    continue
                base = None
                for writer, fn in writers.items():
                    def write(fn=fn, arrays=arrays):
                        with open(path, "wb") as f:
                            fn(f, arrays)

                    def read():
                        with np.load(path) as z:
                            for k in z.files:
                                z[k]
                    w = _median_time(write, args.repeats)
                    r = _median_time(read, args.repeats)
                    with np.load(path) as z:  # the two files must hold the same arrays
                        assert all(np.array_equal(z[k], v) for k, v in arrays.items())
                    base = base or w
                    lines.append(f"| {n:,} | {name} | {writer} | {w:.3f} | {r:.3f} | "
                                 f"{path.stat().st_size / 2**20:.1f} | {base / w:.1f}x |")
                    print(lines[-1], flush=True)
    emit(lines, args.table)


if __name__ == "__main__":
    main()
