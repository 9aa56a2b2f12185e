"""How many to flag, by the number of epochs behind the scores: class-mean against confident learning.

For each finished run (a ``find-issues --data`` run directory or any single-process run that kept
its probabilities) and its known corruption, the mean-loss ranking is flagged twice -- by the
per-class rule ``class-mean`` and by confident learning's count ``confident``
(:func:`dataparams.scores.flag_by_rule`) -- and each flagged set is compared with the truth:
flagged / truly wrong and F1. The runs are read, not retrained, so the two rules see the same
scores. This is the evidence of benchmarks/results/flag_rules.md, "How many to flag after few
epochs", for keeping ``rule="auto"`` at the per-class mean on loss scores.

    python benchmarks/screen_count_rules.py NAME=RUN_DIR:TRUTH_FILE ... [--table OUT.md]

``TRUTH_FILE``: an ``.npz`` with ``is_corrupted`` or an ``.npy`` bool array, indexed like the
run's ``source_index`` (the order of the user's data).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _table import emit


def compare(run_dir: Path, truth_file: Path) -> dict:
    """Flagged / truly wrong and F1 of both rules on ``run_dir``'s mean-loss ranking."""
    from dataparams.analysis.find_issues import find_issues

    loaded = np.load(truth_file)
    truth = np.asarray(loaded["is_corrupted"] if hasattr(loaded, "files") else loaded, dtype=bool)
    config = json.loads((run_dir / "config.json").read_text())
    out = {"n": 0, "epochs": int(config["optim"]["epochs"])}
    for rule in ("class-mean", "confident"):
        report = find_issues(run_dir, score="mean-loss", rule=rule, load_dataset=False)
        wrong = truth[np.asarray(report.source_index)]
        flagged = np.asarray(report.is_flagged, dtype=bool)
        hit = int((flagged & wrong).sum())
        precision, recall = hit / max(1, int(flagged.sum())), hit / max(1, int(wrong.sum()))
        f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
        out["n"] = len(wrong)
        out[rule] = {"ratio": float(flagged.sum() / max(1, wrong.sum())), "f1": f1}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR:TRUTH_FILE")
    p.add_argument("--table", help="also write the Markdown table here")
    args = p.parse_args()
    lines = ["| run | samples | epochs | class-mean: flagged / wrong, F1 | confident: flagged / wrong, F1 |",
             "|---|---:|---:|---:|---:|"]
    for item in args.runs:
        name, rest = item.split("=", 1)
        run_dir, truth_file = rest.rsplit(":", 1)
        r = compare(Path(run_dir), Path(truth_file))
        cm, cf = r["class-mean"], r["confident"]
        lines.append(f"| {name} | {r['n']:,} | {r['epochs']} | {cm['ratio']:.2f}, {cm['f1']:.3f} | "
                     f"{cf['ratio']:.2f}, {cf['f1']:.3f} |")
        print(lines[-1], flush=True)
    emit(lines, args.table)


if __name__ == "__main__":
    main()
