"""Choose the `find-issues --data` defaults on data that the user-data benchmark does not report.

The defaults of the ``user`` preset that a user never tunes -- the instance step (the paper's
gradient step with lr 5, the CPU presets' value, or the RMS-normalised step), the number of
optimizer steps the epochs are sized for, and the ranking score -- are compared here on two
tuning sets made like the benchmark's but from other data: Fashion-MNIST training images 10,000
to 11,999 (the benchmark uses the first 2,000) as 28 px greyscale PNGs in class folders with 40%
uniform noise, and scikit-learn's wine table (178 x 13) with 20% pair noise (the benchmark uses
digits and breast cancer). Seeds differ from the benchmark's too.

    python benchmarks/tune_user_defaults.py --out runs/tune-user \
        --table benchmarks/results/user_data_tuning.md

The normalised instance step was removed from the package after this comparison and the variant
screen (benchmarks/results/fmnist_methods/variants.md); its rows were measured at commit 72a92c8.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _table import emit
from dataparams.analysis.find_issues import find_issues
from dataparams.analysis.metrics import auroc, average_precision
from dataparams.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist
from dataparams.issues import find_label_issues
from dataparams.noise import apply_noise

STEPS = {"gradient lr 5": ["curriculum.lr_instance=5.0"], "gradient lr 1": ["curriculum.lr_instance=1.0"]}
TARGET_STEPS = (800, 1600)
SCORES = ("sigma", "sigma-mean", "mean-loss")


def write_sets(root: Path) -> dict[str, Path]:
    """The two tuning sets with their truth (is_corrupted in the loader's order)."""
    sets = {}
    folder = root / "fmnist-tune"
    if not (folder / "truth.npy").exists():
        train = load_fashion_mnist(train=True)
        images, clean = train.images[10_000:12_000, ..., 0], train.targets[10_000:12_000]
        noisy, corrupted = apply_noise("uniform", clean, 0.4, 10, seed=11)
        names = [c.replace("/", "_") for c in FASHION_MNIST_CLASSES]
        for i, (img, k) in enumerate(zip(images, noisy)):
            (folder / names[k]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / names[k] / f"{i:05d}.png")
        order = np.lexsort((np.arange(len(noisy)), [sorted(names).index(names[k]) for k in noisy]))
        np.save(folder / "truth.npy", corrupted[order])
    sets["fmnist-tune"] = folder
    wine = root / "wine-tune"
    if not (wine / "truth.npy").exists():
        from sklearn.datasets import load_wine

        wine.mkdir(parents=True, exist_ok=True)
        x, clean = load_wine(return_X_y=True)
        noisy, corrupted = apply_noise("pair", clean, 0.2, 3, seed=11)
        np.savez(wine / "wine.npz", X=x, y=noisy)
        np.save(wine / "truth.npy", corrupted)
    sets["wine-tune"] = wine / "wine.npz"
    return sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/tune-user")
    p.add_argument("--table")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    sets = write_sets(root)
    lines = ["# Tuning the user-data defaults (data the user-data benchmark does not report)", "",
             "AUROC / AP of each ranking score after one instance-curriculum training; flags by the mixture on the "
             "score. One seed per cell (n=1): a choice of defaults, not a result.", "",
             "| set | instance step | target steps | epochs | score | AUROC | AP | flagged | precision | recall |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (name, path), (step, overrides), target in itertools.product(sets.items(), STEPS.items(), TARGET_STEPS):
        out = root / "runs" / f"{name}_{step.replace(' ', '_')}_{target}"
        import dataparams.presets as presets

        presets.USER_TARGET_STEPS = target
        try:
            report, _ = find_label_issues(path, out, overrides=list(overrides), device="cpu", quiet=True)
        except Exception as e:  # a setting that diverges is a result, not a crash of the table
            lines.append(f"| {name} | {step} | {target} | | | failed: {type(e).__name__}: {str(e)[-80:]} "
                         "| | | | |")
            continue
        truth = np.load((Path(path).parent if Path(path).suffix == ".npz" else Path(path)) / "truth.npy")
        epochs = report.epoch
        for score in SCORES:
            rep = find_issues(out / "run", score=score, load_dataset=False)
            c = truth[rep.source_index]
            tp = int((rep.is_flagged & c).sum())
            lines.append(f"| {name} | {step} | {target} | {epochs} | {score} | {auroc(rep.score, c):.4f} | "
                         f"{average_precision(rep.score, c):.4f} | {int(rep.is_flagged.sum())} | "
                         f"{tp / max(1, rep.is_flagged.sum()):.3f} | {tp / max(1, c.sum()):.3f} |")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
