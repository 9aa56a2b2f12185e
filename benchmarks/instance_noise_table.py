"""Where instance-dependent noise lands: per-class corrupted fractions of the fmnist-instance40 preset.

For each seed of the bench (1, 2, 3) this resolves the labels exactly as a run of the preset does
(the first 10,000 Fashion-MNIST training images, the cross-fitted linear reference, 40% expected
rate, the seed's draw) and prints, per clean class, the share of its images whose label was
changed, and per given label the share of wrong labels it carries.

    python benchmarks/instance_noise_table.py --table benchmarks/results/fmnist_methods/instance_noise.md
"""

from __future__ import annotations

import argparse

from _table import emit
from dataparams.data.prepare import resolve_labels, split_noise_reference
from dataparams.data.registry import load_dataset
from dataparams.presets import get_preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="fmnist-instance40")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--table")
    args = p.parse_args()
    cfg = get_preset(args.preset)
    ds = load_dataset(cfg.data)
    reference = split_noise_reference(cfg.data, ds.train)
    classes = ds.train.classes
    n = cfg.data.subset or len(ds.train)
    acc = float((reference.argmax(1) == ds.train.targets[:n]).mean())
    lines = [f"# Instance-dependent noise of `{args.preset}`", "",
             f"Reference: linear softmax regression cross-fitted on the clean labels (2 folds), accuracy "
             f"{acc:.3f} on the {n:,} images. Rows: per clean class, the fraction of its images whose label was "
             "changed; per given label, the fraction of the samples carrying it whose label is wrong. One "
             "column per seed.", "",
             "| class | " + " | ".join(f"corrupted, seed {s}" for s in args.seeds) + " | "
             + " | ".join(f"wrong among given, seed {s}" for s in args.seeds) + " |",
             "|---|" + "---:|" * (2 * len(args.seeds))]
    per_seed = []
    for s in args.seeds:
        labels = resolve_labels(cfg.data, ds.train.targets, ds.train.num_classes, seed=s, reference=reference)
        per_seed.append(labels)
    for k, name in enumerate(classes):
        cells = [f"{L.corrupted[L.clean == k].mean():.3f}" for L in per_seed]
        cells += [f"{L.corrupted[L.labels == k].mean():.3f}" for L in per_seed]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| all | " + " | ".join(f"{L.corrupted.mean():.3f}" for L in per_seed) + " | "
                 + " | ".join("" for _ in per_seed) + " |")
    emit(lines, args.table)


if __name__ == "__main__":
    main()
