"""Benchmark the in-memory loader against the model's compute for one Fashion-MNIST epoch.

    python benchmarks/bench_loader.py [--data-dir DIR] [--out benchmarks/results/loader.md]

Iterates one epoch of the 60,000 training images with the standard augmentation (random crop
with padding 2, horizontal flip) through :class:`dataparams.data.InMemoryLoader`, alone, and then
times the small CNN's training step (forward, backward, SGD) on every batch of that epoch. The
loader's share of an epoch is the first time over the second. Target: under 5%.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from _table import emit
from dataparams.data import Augment, InMemoryLoader, load_fashion_mnist
from dataparams.data.registry import DATASETS
from dataparams.models import SmallCNN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)

    train = load_fashion_mnist(args.data_dir, train=True)
    info = DATASETS["fashion-mnist"]
    loader = InMemoryLoader(train.images, train.targets, batch_size=args.batch_size, shuffle=True,
                            augment=Augment(crop_padding=2, flip=True), mean=info.mean, std=info.std, seed=0)

    # 1) the loader alone (one warm-up epoch first)
    for _ in loader:
        pass
    loader.set_epoch(1)
    t0 = time.perf_counter()
    batches = [(x, y) for x, y, _ in loader]
    t_loader = time.perf_counter() - t0

    # 2) the model's compute on the same batches
    torch.manual_seed(0)
    model = SmallCNN(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for x, y in batches[:5]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    t_model = time.perf_counter() - t0

    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"Fashion-MNIST train ({len(train):,} images), batch {args.batch_size}, crop(pad 2) + flip",
        "",
        "| loader epoch s | model compute epoch s | loader share |",
        "|---:|---:|---:|",
        f"| {t_loader:.2f} | {t_model:.2f} | {100 * t_loader / t_model:.1f}% |",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
