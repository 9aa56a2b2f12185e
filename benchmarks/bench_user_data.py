"""Label issues in a user's own data: `find-issues --data` against cleanlab, side by side.

On the data sets of ``benchmarks/user_datasets.py`` (Fashion-MNIST as class folders of 32 px grey
PNGs with 40% uniform noise and as a CSV of 28 px RGB PNGs with 30% pair noise; scikit-learn's
digits (uniform 30%) and breast cancer (pair 20%) as feature tables), each with its known
corruption, this script runs, one after the other in one process:

* ours: ``dataparams.issues.find_label_issues`` -- one instance-curriculum training with the
  ``user`` preset's defaults (model, epochs and normalisation chosen from the data), the ranking
  score ``find-issues`` uses by default, flags by the rule find-issues uses by default (class-mean since issue 21; the mixture before);
* cleanlab: ``cleanlab.filter.find_label_issues`` on K-fold (K = 5, stratified) out-of-sample
  predicted probabilities of the same model family with the same resolved config (architecture,
  epochs, schedule, batch) trained with plain cross-entropy -- cleanlab's recommended use; its
  ranking is ``1 - cleanlab.rank.get_label_quality_scores``.

It reports AUROC and average precision of each ranking against the known corruption, precision
and recall of each flagged set, and wall time (data loading included, the same machine, nothing
else running when the committed table was made). Finally it times the whole command line
``dataparams find-issues --data`` on the 2,000-image 28 px set in a fresh process.

    python benchmarks/user_datasets.py runs/userdata --no-check
    python benchmarks/bench_user_data.py runs/userdata --out runs/bench-userdata \\
        --table benchmarks/results/user_data.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _table import emit
from dataparams.analysis.metrics import auroc, average_precision
from dataparams.config import apply_overrides, config_from_dict
from dataparams.data.registry import load_dataset
from dataparams.experiment import train
from dataparams.issues import DEFAULT_SCORE, find_label_issues
from dataparams.runs import RunDir

SETS = {
    "fmnist-folder": "fmnist-folder",
    "fmnist-rgb-csv": "fmnist-rgb-csv/labels.csv",
    "fmnist-instance35": "fmnist-instance35/labels.csv",
    "digits-uniform30": "digits-uniform30/digits.npz",
    "breast-cancer-pair20": "breast-cancer-pair20/features.npz",
}
FOLDS = 5


def _truth(root: Path, name: str) -> np.ndarray:
    return np.load(root / name / "truth.npz")["is_corrupted"]


def _scores(score: np.ndarray, flagged: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
    tp = int((flagged & corrupted).sum())
    return {"auroc": auroc(score, corrupted), "ap": average_precision(score, corrupted),
            "flagged": int(flagged.sum()), "precision": tp / max(1, int(flagged.sum())),
            "recall": tp / max(1, int(corrupted.sum()))}


def run_ours(path: Path, out: Path, truth: np.ndarray) -> dict:
    t0 = time.perf_counter()
    report, files = find_label_issues(path, out, device="cpu", quiet=True, overwrite=True)
    wall = time.perf_counter() - t0
    c = truth[report.source_index]
    return {**_scores(report.score, report.is_flagged, c), "wall_s": wall, "trainings": 1,
            "epochs": report.epoch, "run_dir": str(files["run_dir"])}


def run_cleanlab(path: Path, out: Path, truth: np.ndarray, ours_run: Path, seed: int = 0) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    # The same resolved config as ours (model, epochs, schedule, batch), with plain cross-entropy.
    base = config_from_dict(json.loads((ours_run / "config.json").read_text()))
    base = apply_overrides(base, ["curriculum.class_curriculum=false", "curriculum.instance_curriculum=false"])
    dataset = load_dataset(base.data)
    given = dataset.train.targets
    k = dataset.train.num_classes
    rng = np.random.default_rng(seed)
    fold = np.empty(len(given), dtype=np.int64)
    for c in range(k):  # stratified by the given label, as cleanlab's own cross-validation
        members = rng.permutation(np.flatnonzero(given == c))
        fold[members] = np.arange(len(members)) % FOLDS
    oof = np.zeros((len(given), k), dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for f in range(FOLDS):
        keep = out / f"keep_fold{f}.npy"
        np.save(keep, np.flatnonzero(fold != f))
        cfg = apply_overrides(base, [f"data.keep_file={keep}"])
        train(cfg, out / f"fold{f}", overwrite=True, device="cpu", quiet=True, tensorboard=False, dataset=dataset)
        held = RunDir(out / f"fold{f}").load_arrays("heldout_predictions.npz")
        oof[held["source_index"]] = held["probs"]
    issues = find_label_issues(labels=given, pred_probs=oof, n_jobs=1)
    score = 1.0 - get_label_quality_scores(given, oof)
    wall = time.perf_counter() - t0
    return {**_scores(score, issues, truth), "wall_s": wall, "trainings": FOLDS, "epochs": base.optim.epochs}


def time_command(path: Path, out: Path) -> float:
    """Wall time of the command a user runs, in a fresh process (imports and data loading included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dataparams", "find-issues", "--data", str(path), "--out", str(out),
                    "--device", "cpu", "--quiet", "--overwrite"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the folder benchmarks/user_datasets.py wrote")
    p.add_argument("--out", default="runs/bench-userdata")
    p.add_argument("--table")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root, out = Path(args.data), Path(args.out)
    rows = []
    for name, rel in SETS.items():
        truth = _truth(root, name)
        ours = run_ours(root / rel, out / name / "ours", truth)
        clean = run_cleanlab(root / rel, out / name / "cleanlab", truth, Path(ours["run_dir"]))
        rows.append((name, int(truth.sum()), len(truth), ours, clean))
        print(name, json.dumps({"ours": ours, "cleanlab": clean}), flush=True)
    command_s = time_command(root / SETS["fmnist-rgb-csv"], out / "command")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"# Label issues in the user's own data: find-issues --data vs cleanlab ({platform.machine()}, "
             f"{cpus} CPUs, torch threads {args.threads})", "",
             f"Ours: one instance-curriculum training (the user preset's defaults), ranked by {DEFAULT_SCORE}, "
             "flagged by the noise-rate-free mixture. cleanlab: find_label_issues on 5-fold out-of-sample "
             "probabilities of the same model and config trained with cross-entropy (5 trainings), ranked by "
             "1 - label quality. AUROC/AP of the ranking against the injected corruption; precision/recall of "
             "the flagged set. One seed per set (n=1 each).", "",
             "| data set | corrupted | method | trainings | epochs | AUROC | AP | flagged | precision | recall | "
             "wall s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, n_bad, n, ours, clean in rows:
        for label, r in (("ours", ours), ("cleanlab", clean)):
            lines.append(f"| {name} | {n_bad:,} / {n:,} | {label} | {r['trainings']} | {r['epochs']} | "
                         f"{r['auroc']:.4f} | {r['ap']:.4f} | {r['flagged']:,} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {r['wall_s']:.1f} |")
    lines += ["", f"`dataparams find-issues --data fmnist-rgb-csv/labels.csv` (2,000 RGB images of 28 px), the whole "
              f"command in a fresh process: {command_s:.1f} s."]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
