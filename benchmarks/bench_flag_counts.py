"""How usable is each filter's flagged set in the bench? Flagged count over the true count of
wrong labels, F1, precision, recall, and the share of wrong labels in what the retraining kept,
per cell of a finished `python benchmarks/bench.py` grid.

For every cell of a method that drops samples before retraining (dp-cm-filter, dp-gce-cm-filter, dp-gce-filter,
dp-filter, cleanlab, AUM), the flagged set is the training pool minus the kept index file the
cell retrained on (``keep_final_*.npy``); the truth is the corruption mask in the ``labels.npz``
of the cell's runs (a first stage covers the pool; cleanlab's folds cover it together). The
validation split is never flagged and not counted.

    python benchmarks/bench_flag_counts.py runs/bench-full --table benchmarks/results/fmnist_methods/flag_counts.md
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from _table import emit

METHODS = ("dp-cm-filter", "dp-gce-cm-filter", "dp-gce-filter", "dp-filter", "cleanlab", "aum")
COLUMNS = ("uniform40", "pair40", "uniform20", "uniform80", "instance40")


def _truth(cell: Path) -> dict[int, bool]:
    """source index -> is_corrupted, from every labels.npz of the cell's runs (first stages too)."""
    truth: dict[int, bool] = {}
    folders = [cell]
    pipe = cell / "pipeline.json"
    if pipe.exists():
        folders.append(Path(json.loads(pipe.read_text())["stages"]["stage1"]["run_dir"]))
    first = json.loads((cell / "result.json").read_text()).get("first_run")
    if first:  # cells written before the pipelines kept a pipeline.json
        folders.append(Path(first))
    for folder in folders:
        for f in folder.rglob("labels.npz"):
            with np.load(f) as z:
                truth.update(zip(z["source_index"].tolist(), z["is_corrupted"].tolist()))
    return truth


def cell_counts(cell: Path) -> dict[str, float] | None:
    if not (cell / "result.json").exists():
        return None
    pipe = cell / "pipeline.json"
    # A filter's record names its kept file (a cell may hold others, of settings tried earlier).
    keeps = ([Path(json.loads(pipe.read_text())["kept_file"])] if pipe.exists()
             else sorted(cell.glob("keep_final_*.npy")))
    if not keeps or not keeps[-1].exists():
        return None
    truth = _truth(cell)
    pool = np.array(sorted(truth))
    corrupted = np.array([truth[i] for i in pool])
    flagged = ~np.isin(pool, np.load(keeps[-1]))
    tp = int((flagged & corrupted).sum())
    p = tp / max(1, flagged.sum())
    r = tp / max(1, corrupted.sum())
    kept_wrong = (~flagged & corrupted).sum() / max(1, (~flagged).sum())
    return {"ratio": flagged.sum() / max(1, corrupted.sum()), "precision": p, "recall": r,
            "f1": 0.0 if p + r == 0 else 2 * p * r / (p + r), "kept_wrong": float(kept_wrong),
            "flagged": int(flagged.sum()), "wrong": int(corrupted.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="a bench folder (OUT of `python benchmarks/bench.py`)")
    ap.add_argument("--table")
    args = ap.parse_args()
    rows: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for m in METHODS:
        for col in COLUMNS:
            for cell in sorted((Path(args.root) / "cells" / m / col).glob("seed*")):
                c = cell_counts(cell)
                if c is not None:
                    rows[m, col].append(c)

    def fmt(vals: list[float]) -> str:
        a = np.asarray(vals)
        return f"{a.mean():.2f} ± {a.std(ddof=1):.2f} (n={len(a)})" if len(a) > 1 else f"{a.mean():.2f} (n=1)"

    lines = ["# Flagged sets of the bench's filters: flagged / truly wrong, and F1", "",
             "From the kept index file each cell retrained on (`benchmarks/bench_flag_counts.py`); the training pool "
             "only (the 10% validation split is never flagged). Target for a usable flagged set: a ratio within "
             "0.75-1.25.", ""]
    for key, label in (("ratio", "flagged / truly wrong"), ("f1", "F1 of the flagged set"),
                       ("precision", "precision of the flagged set"), ("recall", "recall of the flagged set"),
                       ("kept_wrong", "wrong labels left in the kept set (fraction of the kept set)")):
        lines += [f"## {label}", "", "| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
        for m in METHODS:
            lines.append(f"| {m} | " + " | ".join(fmt([c[key] for c in rows[m, col]]) if rows[m, col] else "–"
                                                for col in COLUMNS) + " |")
        lines.append("")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
