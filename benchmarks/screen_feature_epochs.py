"""How few epochs does `find-issues --data` need on a large feature table? A screen on tuning seeds.

On a large table one epoch is already hundreds of optimizer steps of batch 1,024, and the user
presets' epoch floor (15) makes the run several times the step target: three times cleanlab's
time on 5-fold logistic regression (``embeddings_scale.md``). This screen trains the command a
user runs with ``--set optim.epochs=E`` for several E on the synthetic embeddings of
:mod:`embeddings_scale` with the tuning seed (100, never reported), under uniform and pair noise,
and prints the ranking (AUROC, AP against the injected noise), the flagged count over the truth and
the flagged set's precision / recall / F1, with the wall time (not comparable when other jobs share
the machine; say so where it is quoted). n=1 per cell.

    python benchmarks/screen_feature_epochs.py --rows 200000 --epochs 2 3 4 5 8 15 \\
        --out runs/screen-epochs --table runs/screen-epochs/table.md

(``benchmarks/results/feature_speed_screen.md`` quotes its rows.) Each set's ``data.npz`` and
``truth.npy`` stay in its folder, for ``benchmarks/screen_feature_width.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _table import emit
from embeddings_scale import make_embeddings, run_ours


def flag_quality(out: Path, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 of the flagged set (``label_issues_mask.npy``, in the table's row order)."""
    mask = np.load(out / "label_issues_mask.npy").astype(bool)
    tp = float((mask & truth).sum())
    precision = tp / max(1, mask.sum())
    recall = tp / max(1, truth.sum())
    return precision, recall, (2 * precision * recall / (precision + recall) if tp else 0.0)


def fmnist_pixels(noise: str, rate: float, seed: int, n: int = 60_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST's first ``n`` training images as a feature table (784 pixels in [0, 1]): a real
    data set of another structure than the Gaussian embeddings, to check a rule chosen on those.
    ``instance`` noise is :func:`dataparams.noise.instance_dependent_noise` on a cross-fitted linear
    reference model, as the fmnist-instance presets make it; ``uniform`` / ``pair`` as
    :func:`dataparams.noise.apply_noise`."""
    from dataparams.data.idx import load_fashion_mnist
    from dataparams.data.prepare import reference_probabilities
    from dataparams.noise import apply_noise, instance_dependent_noise

    split = load_fashion_mnist(None, train=True)
    images, clean = np.asarray(split.images)[:n], np.asarray(split.targets, dtype=np.int64)[:n]
    if noise == "instance":
        given, _ = instance_dependent_noise(clean, rate, reference_probabilities(images, clean, 10), seed=seed)
    else:
        given = apply_noise(noise, clean, rate, 10, seed=seed)[0]
    given = np.asarray(given, dtype=np.int64)
    return images.reshape(n, -1).astype(np.float32) / 255.0, given, given != clean


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200_000])
    p.add_argument("--noise", nargs="+", default=["uniform", "pair"], choices=["uniform", "pair", "instance"])
    p.add_argument("--dataset", default="embeddings", choices=["embeddings", "fmnist-pixels"],
                   help="the synthetic Gaussian embeddings (rows as --rows), or Fashion-MNIST's first --rows "
                        "training images as 784 pixel features")
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=100, help="the set's seed (100: the tuning seed, never reported)")
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 3, 4, 5, 8, 15])
    p.add_argument("--out", default="runs/screen-epochs")
    p.add_argument("--table")
    args = p.parse_args(argv)
    lines = ["| data | noise | rows | epochs | AUROC | AP | flagged / truly wrong | precision | recall | F1 | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for noise in args.noise:
        for n in args.rows:
            folder = Path(args.out) / f"{args.dataset}_{noise}{args.rate:g}_{n}_s{args.seed}"
            folder.mkdir(parents=True, exist_ok=True)
            if args.dataset == "fmnist-pixels":
                x, given, truth = fmnist_pixels(noise, args.rate, args.seed, n)
            else:
                x, given, truth = make_embeddings(n, noise=noise, rate=args.rate, seed=args.seed)
            data = folder / "data.npz"
            if not data.exists():
                np.savez(data, X=x, y=given)
                np.save(folder / "truth.npy", truth)
            del x
            for e in args.epochs:
                out = folder / f"e{e}"
                r = run_ours(data, out, truth, ["--set", f"optim.epochs={e}"])
                # The mask is in the table's row order, which is the file's (source_index = row).
                precision, recall, f1 = flag_quality(out, truth)
                lines.append(f"| {args.dataset} | {noise} | {n:,} | {e} | {r['auroc']:.4f} | {r['ap']:.4f} | {r['flag_ratio']:.2f} | "
                             f"{precision:.3f} | {recall:.3f} | {f1:.3f} | {r['wall_s']:.1f} |")
                print(lines[-1], json.dumps(r), flush=True)
    emit(lines, args.table)


if __name__ == "__main__":
    sys.exit(main())
