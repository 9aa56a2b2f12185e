"""Which model should `train --data` keep? Each method's model on clean held-out images.

On the three Fashion-MNIST sets of ``benchmarks/user_datasets.py`` (uniform 40% in class folders,
pair 30% in an RGB CSV, instance-dependent 35% in a grey CSV), ``dataparams train --data PATH
--method M`` for each method M, with the ``user`` preset's defaults and no knowledge of the noise
rate (co-teaching keeps its default forget rate 0.2, since a user does not know the rate), then
the accuracy of the model it keeps (``model.pt``; for the two-stage methods, the retraining's)
on the first 2,000 Fashion-MNIST test images written like the set's own images
(:func:`bench_user_data.clean_test_set`). n=1 per cell. ``default`` is ``train --data`` given no
method (the registry's DATA_DEFAULT_METHOD, dp-gce-cm-filter since 2026-12-07: its last epoch is
kept), ``default-holdout`` the same with ``--holdout 0.1`` (the network of the epoch that the noisy
held-out 10% chooses is kept).

    python benchmarks/user_data_models.py runs/userdata --out runs/user-models \\
        --table benchmarks/results/user_data_models.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _table import emit
from bench_user_data import SETS, clean_test_set, model_accuracy, train_data_method

METHODS = ("dp-instance", "dp-gce", "dp-gce-filter", "dp-cm-filter", "dp-gce-cm-filter", "baseline", "gce", "coteaching", "default",
           "default-holdout")
IMAGE_SETS = ("fmnist-folder", "fmnist-rgb-csv", "fmnist-instance35")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the folder benchmarks/user_datasets.py wrote")
    p.add_argument("--out", default="runs/user-models")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1],
                   help="training seeds (default 1, the seed of train --data); with several, the table gives "
                   "mean ± std (n) and the runs of seed S > 1 go to OUT/SET/METHOD/seedS")
    p.add_argument("--table")
    args = p.parse_args()
    root, out = Path(args.data), Path(args.out)
    runs: dict[tuple[str, str], list[float]] = {}
    for name in IMAGE_SETS:
        classes = [str(c) for c in np.load(root / name / "truth.npz")["classes"]]
        test = clean_test_set(name, classes, out / name)
        for m in args.methods:
            for seed in args.seeds:
                # Seed 1's runs keep the folder they always had (reused).
                folder = out / name / m / ("" if seed == 1 else f"seed{seed}")
                model, wall = train_data_method(root / SETS[name], folder, m, seed)
                runs.setdefault((name, m), []).append(model_accuracy(model, test))  # type: ignore[arg-type]
                print(f"{name} {m} seed {seed}: {runs[name, m][-1]:.2f}% ({wall:.0f} s)", flush=True)
    several = len(args.seeds) > 1

    def cell(values: list[float]) -> str:
        if not several:
            return f"{values[0]:.2f}"
        return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n={len(values)})"

    lines = ["# The model `train --data` keeps: accuracy on clean held-out images", "",
             "Each method trained once by `dataparams train --data PATH --method M` with the user preset's defaults "
             "(no noise rate given), scored on the first 2,000 Fashion-MNIST test images written like the set's "
             f"images; {'n=1 per cell' if not several else 'n = the seeds below per cell'}. dp-instance is the `user/instance` preset (what `train --data` trained by "
             "default before dp-cm-filter); default is `train --data` with no method (the registry's "
             "DATA_DEFAULT_METHOD when the row was measured, last epoch kept), default-holdout the same with "
             "`--holdout 0.1` (the epoch the noisy held-out 10% chooses is kept)."
             + (f" Seeds {', '.join(map(str, args.seeds))} (mean ± std, sample std)." if several else ""), "",
             "| method | " + " | ".join(IMAGE_SETS) + " |", "|---|" + "---:|" * len(IMAGE_SETS)]
    for m in args.methods:
        lines.append(f"| {m} | " + " | ".join(cell(runs[n, m]) for n in IMAGE_SETS) + " |")
    # Which epoch each run kept (summary.json's kept_model; runs older than that record have none).
    kept = []
    for m in args.methods:
        for n in IMAGE_SETS:
            summary = out / n / m / ("stage2" if m.endswith("-filter") or m.startswith("default") else "") / "summary.json"
            rec = json.loads(summary.read_text()).get("kept_model") if summary.exists() else None
            if rec is not None and rec["chosen_by"] != "last epoch (no validation split)":
                kept.append(f"{m} on {n}: epoch {rec['epoch']} of {json.loads(summary.read_text())['epochs']}")
    if kept:
        lines += ["", "Epoch kept where the noisy held-out split chose it: " + "; ".join(kept) + "."]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
