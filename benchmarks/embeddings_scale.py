"""Label issues in large embedding tables: `find-issues --data data.npz` against cleanlab on a
5-fold logistic regression, side by side, at 2*10^5 and 10^6 rows.

Embeddings (features from any pretrained model) are how large data usually reaches a label tool.
The set: ``D``-dimensional Gaussian classes (``K`` of them, means drawn N(0, s^2 I) so that they
overlap), labels corrupted uniformly (a corrupted label is another class, uniformly) or pairwise
(class k -> k+1). Per set and method: wall time (ours: the whole command in a fresh process,
imports and loading included; cleanlab: the 5 fits, the out-of-sample probabilities and its
``find_label_issues``), peak resident memory of that process, ranking AUROC / AP against the
injected noise, and the flagged count over the true count.

The anchor is cleanlab's recommended use on features: out-of-sample probabilities of a
multinomial logistic regression (scikit-learn, lbfgs) from stratified 5-fold cross-validation.

    python benchmarks/embeddings_scale.py --rows 200000 1000000 --out runs/embeddings \\
        --table benchmarks/results/embeddings_scale.md

Run it on an idle machine: the times are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _table import emit

FOLDS = 5


def make_embeddings(n: int, *, dim: int = 128, classes: int = 20, spread: float = 0.3, noise: str = "uniform",
                    rate: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X float32 (n, dim), given labels, is_corrupted): Gaussian classes around N(0, spread^2 I) means."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=spread, size=(classes, dim)).astype(np.float32)
    clean = rng.integers(0, classes, size=n)
    x = means[clean] + rng.standard_normal((n, dim), dtype=np.float32)
    flip = rng.random(n) < rate
    given = clean.copy()
    if noise == "uniform":
        given[flip] = (clean[flip] + rng.integers(1, classes, size=int(flip.sum()))) % classes
    elif noise == "pair":
        given[flip] = (clean[flip] + 1) % classes
    else:
        raise ValueError(f"noise must be 'uniform' or 'pair', got {noise!r}")
    return x, given, given != clean


def auroc_ap(score: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(truth, score)), float(average_precision_score(truth, score))


def run_ours(data: Path, out: Path, truth: np.ndarray, extra: list[str]) -> dict:
    """The command a user runs, in a fresh process; its peak RSS from the kernel's accounting."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c",
         "import resource, sys; from dataparams.cli import main; rc = main(sys.argv[1:]); "
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)",
         "find-issues", "--data", str(data), "--out", str(out), "--device", "cpu", "--quiet", "--overwrite", *extra],
        capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    rss = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB")))
    summary = json.loads((out / "summary.json").read_text())
    import pandas as pd

    table = pd.read_csv(out / "issues.csv", usecols=["score", "source_index"])
    score = np.full(len(truth), np.nan)
    score[table["source_index"].to_numpy()] = table["score"].to_numpy()
    auroc, ap = auroc_ap(score, truth)
    mask = np.load(out / "label_issues_mask.npy")
    config = json.loads((out / "run" / "config.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": rss / 1024, "auroc": auroc, "ap": ap,
            "flag_ratio": float(mask.sum() / max(1, truth.sum())), "epochs": config["optim"]["epochs"],
            "batch": config["data"]["batch_size"], "rule": summary.get("rule")}


def run_cleanlab(x: np.ndarray, given: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    k = int(given.max()) + 1
    oof = np.zeros((len(given), k), dtype=np.float64)
    for fit_idx, held_idx in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, given):
        model = LogisticRegression(max_iter=200)
        model.fit(x[fit_idx], given[fit_idx])
        oof[held_idx] = model.predict_proba(x[held_idx])
    issues = find_label_issues(labels=given, pred_probs=oof, n_jobs=1)
    score = 1.0 - get_label_quality_scores(given, oof)
    wall = time.perf_counter() - t0
    auroc, ap = auroc_ap(score, truth)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"wall_s": wall, "peak_rss_mb": max(rss, rss0) / 1024, "auroc": auroc, "ap": ap,
            "flag_ratio": float(issues.sum() / max(1, truth.sum()))}


def _cleanlab_in_process(data: Path, truth_file: Path) -> dict:
    """cleanlab in a fresh process too, so that its peak memory is its own."""
    code = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); from embeddings_scale import run_cleanlab;"
            "d = np.load(sys.argv[2]); t = np.load(sys.argv[3]);"
            "print(json.dumps(run_cleanlab(d['X'], d['y'], t)))")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(data), str(truth_file)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    p.add_argument("--noise", nargs="+", default=["uniform"], choices=["uniform", "pair"])
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1, help="the set's seed (tuning used seed 100, never reported)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="passed to find-issues (e.g. to screen settings on a tuning seed)")
    p.add_argument("--out", default="runs/embeddings")
    p.add_argument("--table", help="also write the Markdown table here")
    p.add_argument("--skip-cleanlab", action="store_true")
    args = p.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    extra = [a for o in args.overrides for a in ("--set", o)]
    rows = []
    for noise in args.noise:
        for n in args.rows:
            folder = Path(args.out) / f"{noise}_{n}_s{args.seed}"
            folder.mkdir(parents=True, exist_ok=True)
            x, given, truth = make_embeddings(n, noise=noise, rate=args.rate, seed=args.seed)
            data, truth_file = folder / "data.npz", folder / "truth.npy"
            np.savez(data, X=x, y=given)
            np.save(truth_file, truth)
            del x
            ours = run_ours(data, folder / "ours", truth, extra)
            print(noise, n, "ours", json.dumps(ours), flush=True)
            clean = None if args.skip_cleanlab else _cleanlab_in_process(data, truth_file)
            print(noise, n, "cleanlab", json.dumps(clean), flush=True)
            rows.append((noise, n, ours, clean))
    lines = [f"# Label issues in embedding tables: find-issues --data vs cleanlab on 5-fold logistic regression "
             f"({platform.machine()}, {cpus} CPUs, torch threads as the command sets them)", "",
             f"Synthetic embeddings: 128 dimensions, 20 Gaussian classes (means N(0, 0.3^2 I), unit noise), "
             f"{args.rate:.0%} of the labels corrupted, seed {args.seed}; one run per cell (n=1). Wall time: the "
             "whole find-issues command in a fresh process; cleanlab: 5 logistic-regression fits (lbfgs, 200 "
             "iterations), out-of-sample probabilities and its find_label_issues. Peak RSS: the process's "
             "maximum resident set." + (f" find-issues settings: {' '.join(args.overrides)}." if args.overrides else ""),
             "", "| noise | rows | method | wall s | peak RSS MB | AUROC | AP | flagged / truly wrong | epochs x batch |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for noise, n, ours, clean in rows:
        lines.append(f"| {noise} | {n:,} | find-issues | {ours['wall_s']:.1f} | {ours['peak_rss_mb']:.0f} | "
                     f"{ours['auroc']:.4f} | {ours['ap']:.4f} | {ours['flag_ratio']:.2f} | "
                     f"{ours['epochs']} x {ours['batch']} |")
        if clean is not None:
            lines.append(f"| {noise} | {n:,} | cleanlab (5-fold LR) | {clean['wall_s']:.1f} | "
                         f"{clean['peak_rss_mb']:.0f} | {clean['auroc']:.4f} | {clean['ap']:.4f} | "
                         f"{clean['flag_ratio']:.2f} | - |")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
