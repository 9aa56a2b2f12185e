"""Screening of the data-parameter variants beyond the paper, on the tuning cells only.

Every variant (and the two schedules) is trained once on the cells the bench tunes on -- seed 100,
with the noisy 10% validation split, uniform 40% and pair 40% noise -- never on the seeds the bench
reports. A variant is kept for the full grid when it helps on these cells (test accuracy at the
final epoch and at the epoch chosen on the noisy validation split, and the AUROC of its ranking).

    python benchmarks/screen_variants.py --out runs/screen --jobs 2 \
        --table benchmarks/results/fmnist_methods/variants.md

Resumable: finished runs are reused (the bench's run_cell). The variants that the screen did not
keep (dp-relabel, dp-joint-product, dp-normalized) were removed from the package afterwards; their
rows of the committed table were measured at commit 72a92c8, where this script still lists them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _table import emit
from dataparams.bench import BenchSpec, Cell, _run_many, _threads, _worker

DECAY = ["optim.schedule=multistep", "optim.milestones=[20,30]", "optim.gamma=0.1"]

# (row name, bench method, setting, schedule overrides)
ROWS = [
    ("baseline, constant lr", "baseline", [], []),
    ("dp-instance, constant lr", "dp-instance", [], []),
    ("baseline", "baseline", [], DECAY),
    ("dp-instance", "dp-instance", [], DECAY),
    ("dp-filter, retrain instance", "dp-filter", ["@retrain=instance"], DECAY),
    ("dp-filter, retrain baseline", "dp-filter", ["@retrain=baseline"], DECAY),
    ("dp-joint (paper), lr 0.2", "dp-joint", ["curriculum.lr_instance=0.2"], DECAY),
    ("dp-gce, q 0.7", "dp-gce", ["curriculum.loss_q=0.7"], DECAY),
]
CELLS = [("uniform", 0.4), ("pair", 0.4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/screen")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--table", help="also write the table here")
    args = p.parse_args()
    root = Path(args.out).resolve()
    jobs = []
    for noise, rate in CELLS:
        for i, (_name, method, setting, schedule) in enumerate(ROWS):
            spec = BenchSpec(methods=[method], overrides=["data.val_fraction=0.1", *schedule])
            folder = root / f"{noise}{int(rate * 100)}" / f"{i:02d}_{method}"
            jobs.append((spec, Cell(method, noise, rate, 100), str(folder), "cpu", _threads(args.jobs), setting,
                         str(root / f"{noise}{int(rate * 100)}" / f"stages_{'decay' if schedule else 'const'}")))
    _run_many(_worker, jobs, args.jobs, "screen", False)
    lines = ["# Variant screening on the tuning cells (seed 100, noisy 10% validation split)", "",
             "Test accuracy (%) at the final epoch / at the epoch chosen on the noisy validation split; AUROC of "
             "the method's ranking (sigma for one-training dp methods, sigma-mean for dp-filter/relabel, the "
             "mean-loss criterion for the baseline) at the final epoch, and, for one-training dp runs, of sigma "
             "integrated over training (sigma-mean). One run per row (n=1): a screen, not a result.", ""]
    for noise, rate in CELLS:
        lines += [f"## {noise} {int(rate * 100)}%", "", "| variant | final | val-chosen | AUROC | AUROC sigma-mean | "
                  "trainings | status |", "|---|---:|---:|---:|---:|---:|---|"]
        for i, (name, method, _, _) in enumerate(ROWS):
            f = root / f"{noise}{int(rate * 100)}" / f"{i:02d}_{method}" / "result.json"
            r = json.loads(f.read_text()) if f.exists() else {"status": "missing"}

            def num(v, d=2):
                return "n/a" if v is None else f"{v:.{d}f}"

            det = (r.get("detection") or {}).get("auroc")
            det_mean = (r.get("detection_sigma_mean") or {}).get("auroc")
            lines.append(f"| {name} | {num(r.get('final_test_acc'))} | {num(r.get('val_selected_test_acc'))} | "
                         f"{num(det, 4)} | {num(det_mean, 4)} | {r.get('trainings', '')} | {r['status']} |")
        lines.append("")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
