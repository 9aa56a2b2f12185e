"""Development runs of a filter pipeline on the tuning seed's cells (seed 100, never reported):
dp-gce first, flags by the per-class rule on its mean GCE loss, then a plain retraining
(``dp-gce-cm-filter``), one noise setting after another on the bench's base preset.

    python benchmarks/dev_filter_cells.py --out runs/dev-gcecm --cells uniform:0.2 pair:0.4 uniform:0.8 instance:0.4

Resumable (every stage is a run directory). Prints, per cell: dp-gce alone (the first stage) final /
noisy-validation-chosen test accuracy, the ranking AUROC of its mean loss, flagged / truly wrong, the
flagged set's F1, and the pipeline's final / validation-chosen test accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dataparams.methods.pipelines import run_filter_pipeline
from dataparams.methods.registry import METHODS

BASE = "fmnist-noisy40"
SEED = 100


def run_cell(out: Path, noise: str, rate: float) -> str:
    pipeline = METHODS["dp-gce-cm-filter"].pipeline
    overrides = ["data.val_fraction=0.1", f"data.noise={noise}", f"data.noise_rate={rate}", f"seed={SEED}"]
    first, retrain = pipeline.configs(BASE, overrides, method="dp-gce-cm-filter")
    folder = out / f"{noise}{int(round(rate * 100))}"
    record = run_filter_pipeline(pipeline, first, retrain, folder / "baseline", first_run=folder / "stage1",
                                 resume=True, quiet=True, device="cpu")
    s1 = json.loads((folder / "stage1" / "summary.json").read_text())
    s2 = json.loads((Path(record["stages"]["stage2"]["run_dir"]) / "summary.json").read_text())
    labels = np.load(folder / "stage1" / "labels.npz")
    wrong = labels["is_corrupted"].astype(bool)
    flagged = ~np.isin(labels["source_index"], np.load(record["kept_file"]))
    tp = int((flagged & wrong).sum())
    precision, recall = tp / max(1, int(flagged.sum())), tp / max(1, int(wrong.sum()))
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    return (f"| {folder.name} | {s1['final_test_acc']:.2f} / {s1['val_selected_test_acc']:.2f} | "
            f"{record['detection']['auroc']:.4f} | {flagged.sum() / wrong.sum():.2f} | {f1:.2f} | "
            f"{s2['final_test_acc']:.2f} / {s2['val_selected_test_acc']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/dev-gcecm")
    p.add_argument("--cells", nargs="+", default=["uniform:0.2", "pair:0.4", "uniform:0.8", "instance:0.4"])
    args = p.parse_args()
    print("| cell (seed 100) | dp-gce alone: final / val-chosen | AUROC mean loss | flagged / wrong | F1 | "
          "dp-gce-cm-filter: final / val-chosen |")
    print("|---|---:|---:|---:|---:|---:|")
    for cell in args.cells:
        noise, rate = cell.split(":")
        print(run_cell(Path(args.out), noise, float(rate)), flush=True)


if __name__ == "__main__":
    main()
