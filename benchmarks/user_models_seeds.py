"""The model a user keeps, over seeds: `train --data` (its default method) against cleanlab's
find-then-retrain and cross-entropy, side by side on one machine.

`benchmarks/bench_user_data.py` compares the three networks at seed 1 only (n=1), and the
default's seeds 1-3 in `user_data_models.md` were measured on another machine, whose float
rounding moves a seed's accuracy by up to two points. Here every model of every seed is trained
in one run on one machine: for each Fashion-MNIST set of ``benchmarks/user_datasets.py`` and
each seed S,

* default: ``dataparams train --data SET --seed S`` (the registry's default method, two
  trainings), its kept ``stage2/model.pt``;
* cleanlab: 5-fold (stratified, fold seed S) out-of-sample probabilities of the same resolved
  config trained with cross-entropy at training seed S, ``cleanlab.filter.find_label_issues``,
  then the same network retrained at seed S on the samples it did not flag (6 trainings: 5 folds and the retraining);
* cross-entropy: the same network at seed S on every given label.

The config every model shares is the one ``find-issues --data`` resolves for the set (trained
once, seed 1, to read it). Accuracy on the first 2,000 clean Fashion-MNIST test images written like
the set's images. Mean ± sample std over the seeds, and the default minus cleanlab paired by seed.

    python benchmarks/user_datasets.py runs/userdata --no-check
    python benchmarks/user_models_seeds.py runs/userdata --out runs/user-seeds --seeds 1 2 3 \\
        --table benchmarks/results/user_models_seeds.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from _table import emit
from bench_user_data import (
    SETS,
    clean_test_set,
    model_accuracy,
    run_cleanlab,
    run_ours,
    train_data_method,
    truth_mask,
)

IMAGE_SETS = ("fmnist-folder", "fmnist-rgb-csv", "fmnist-instance35")


def _mean_std(values: list[float]) -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.2f} ± {std:.2f} (n={len(values)})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the folder benchmarks/user_datasets.py wrote")
    p.add_argument("--out", default="runs/user-seeds")
    p.add_argument("--sets", nargs="+", choices=IMAGE_SETS, default=list(IMAGE_SETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root, out = Path(args.data), Path(args.out)
    results: dict[str, dict[str, list[float]]] = {}
    for name in args.sets:
        path = root / SETS[name]
        truth = truth_mask(root, name)
        # find-issues --data resolves the set's config (model, epochs, schedule); every model shares it.
        ours = run_ours(path, out / name / "ours", truth, reuse=True)
        classes = [str(c) for c in np.load(root / name / "truth.npz")["classes"]]
        test = clean_test_set(name, classes, out / name)
        assert test is not None
        acc: dict[str, list[float]] = {"default": [], "cleanlab": [], "ce": []}
        for seed in args.seeds:
            model, _ = train_data_method(path, out / name / f"default-seed{seed}", "default", seed=seed)
            acc["default"].append(model_accuracy(model, test))
            clean = run_cleanlab(path, out / name / f"cleanlab-seed{seed}", truth, Path(ours["run_dir"]), seed=seed,
                                 test=test, reuse=True, train_seed=seed)
            acc["cleanlab"].append(clean["retrain_acc"])
            acc["ce"].append(clean["ce_acc"])
            print(name, seed, json.dumps({k: v[-1] for k, v in acc.items()}), flush=True)
        results[name] = acc
    from dataparams.methods.registry import DATA_DEFAULT_METHOD

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"# The model a user keeps, over seeds ({platform.machine()}, {cpus} CPUs, torch threads {args.threads})",
             "", f"`python benchmarks/user_models_seeds.py {args.data} --out {args.out} --seeds "
             f"{' '.join(map(str, args.seeds))}`: seeds {', '.join(map(str, args.seeds))}, every model of every seed "
             f"trained in this run on this machine. default: `train --data` ({DATA_DEFAULT_METHOD}, two trainings); "
             "cleanlab: find-then-retrain on 5-fold out-of-sample probabilities (six trainings: 5 folds and the retraining); cross-entropy on "
             "the given labels (one). Test accuracy (%) on 2,000 clean Fashion-MNIST test images written like each "
             "set's images; mean ± sample std over the seeds.", "",
             "| data set | train --data (default) | cleanlab find-then-retrain | cross-entropy | default - cleanlab, "
             "paired |", "|---|---:|---:|---:|---:|"]
    for name, acc in results.items():
        diff = [a - b for a, b in zip(acc["default"], acc["cleanlab"])]
        lines.append(f"| {name} | {_mean_std(acc['default'])} | {_mean_std(acc['cleanlab'])} | "
                     f"{_mean_std(acc['ce'])} | {_mean_std(diff)} |")
    lines += ["", "Per seed (default / cleanlab / cross-entropy):", ""]
    for name, acc in results.items():
        per = "; ".join(f"seed {s}: {d:.2f} / {c:.2f} / {e:.2f}"
                        for s, d, c, e in zip(args.seeds, acc["default"], acc["cleanlab"], acc["ce"]))
        lines.append(f"- {name}: {per}")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
