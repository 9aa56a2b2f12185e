"""Benchmark data sets in the forms a user brings, with known injected label noise.

    python benchmarks/user_datasets.py OUT_DIR [--n 2000] [--seed 0] [--offset 0] [--fmnist-dir DIR] [--no-check]

Made only from data that ships here (the Fashion-MNIST system package, scikit-learn's bundled
data sets); nothing is downloaded. Each set gets its labels corrupted by
:func:`dataparams.noise.apply_noise` and a ``truth.npz`` beside it, in the sample order and
class numbering that :func:`dataparams.data.user.load_user_data` gives it:

* ``fmnist-folder/``: the first ``n`` Fashion-MNIST training images (from ``--offset``) as greyscale PNGs of 32 px
  (not the native 28) in one folder per class, the folder being the noisy label; 40% uniform
  noise (realised about 36%: a draw may land on the true class).
* ``fmnist-rgb-csv/``: the same images at 28 px converted to RGB, listed in ``labels.csv``
  (``path,label,source_index``; class names as labels); 30% pair noise (class k -> k + 1).
* ``fmnist-instance35/labels.csv``: a ``path,label`` CSV of 28 px grey PNGs; 35% instance-dependent
  noise (:func:`dataparams.noise.instance_dependent_noise`: an image flips, with a probability
  that grows with how much a cross-fitted linear reference model confuses it, to the class it is
  most confused with), the kind of noise people make.
* ``digits-uniform30/digits.npz``: scikit-learn's 8x8 digits as 1,797 x 64 features, integer
  labels; 30% uniform noise.
* ``breast-cancer-pair20/features.npz``: scikit-learn's breast-cancer table, 569 x 30 features
  whose standard deviations range from 0.003 to 569, string labels and ids; 20% pair noise
  (with two classes: a flip to the other one).

``truth.npz`` holds ``clean_labels``, ``given_labels`` (int64 (N,), indices into ``classes``),
``is_corrupted`` (bool (N,)), ``classes``, ``ids``, ``noise`` and ``rate``. Unless ``--no-check``,
every set is then loaded back with ``load_user_data`` and a table of what was measured, how long
loading took and the realised noise is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _table import emit
from dataparams.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist
from dataparams.noise import apply_noise

__all__ = ["SETS", "main", "write_breast_cancer", "write_digits", "write_fmnist_folder", "write_fmnist_instance_csv",
           "write_fmnist_rgb_csv"]


def _folder_name(name: str) -> str:
    # "T-shirt/top" cannot be a folder name.
    return name.replace("/", "_")


def _save_truth(folder: Path, *, clean: np.ndarray, given: np.ndarray, classes: list[str], ids: list[str],
                noise: str, rate: float) -> None:
    np.savez(
        folder / "truth.npz",
        clean_labels=clean.astype(np.int64),
        given_labels=given.astype(np.int64),
        is_corrupted=clean != given,
        classes=np.array(classes),
        ids=np.array(ids),
        noise=np.array(noise),
        rate=np.array(rate),
    )


def _fmnist(n: int, data_dir: str | None, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    train = load_fashion_mnist(data_dir, train=True)
    if offset < 0 or offset + n > len(train):
        raise ValueError(f"images {offset}..{offset + n} are not among the {len(train):,} Fashion-MNIST training images")
    return train.images[offset:offset + n, ..., 0], train.targets[offset:offset + n]


def write_fmnist_folder(out: Path, *, n: int = 2000, size: int = 32, noise: str = "uniform", rate: float = 0.4,
                        seed: int = 0, data_dir: str | None = None, offset: int = 0) -> Path:
    """Greyscale PNGs of ``size`` px in class folders named by the noisy label; returns the folder."""
    folder = out / "fmnist-folder"
    images, clean_fm = _fmnist(n, data_dir, offset)
    noisy_fm, _ = apply_noise(noise, clean_fm, rate, 10, seed=seed)
    names = [_folder_name(c) for c in FASHION_MNIST_CLASSES]
    for i, (img, k) in enumerate(zip(images, noisy_fm)):
        path = folder / names[k] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR).save(path)
    # The loader's order: class folders sorted by name, files sorted within each.
    classes = sorted(names)
    to_user = np.array([classes.index(c) for c in names])
    given, clean = to_user[noisy_fm], to_user[clean_fm]
    order = np.lexsort((np.arange(n), given))
    ids = [f"{names[noisy_fm[i]]}/{i:05d}.png" for i in order]
    _save_truth(folder, clean=clean[order], given=given[order], classes=classes, ids=ids, noise=noise, rate=rate)
    return folder


def write_fmnist_rgb_csv(out: Path, *, n: int = 2000, noise: str = "pair", rate: float = 0.3, seed: int = 0,
                         data_dir: str | None = None, offset: int = 0) -> Path:
    """RGB PNGs at the native 28 px and ``labels.csv`` with class names; returns the list."""
    folder = out / "fmnist-rgb-csv"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, clean_fm = _fmnist(n, data_dir, offset)
    noisy_fm, _ = apply_noise(noise, clean_fm, rate, 10, seed=seed)
    names = list(FASHION_MNIST_CLASSES)
    lines = ["path,label,source_index\n"]
    ids = []
    for i, (img, k) in enumerate(zip(images, noisy_fm)):
        rel = f"images/{i:05d}.png"
        Image.fromarray(img).convert("RGB").save(folder / rel)
        # The name holds a slash and some a space; csv quoting is not needed for either.
        lines.append(f"{rel},{names[k]},{i}\n")
        ids.append(rel)
    (folder / "labels.csv").write_text("".join(lines))
    classes = sorted(names)
    to_user = np.array([classes.index(c) for c in names])
    _save_truth(folder, clean=to_user[clean_fm], given=to_user[noisy_fm], classes=classes, ids=ids,
                noise=noise, rate=rate)
    return folder / "labels.csv"


def write_fmnist_instance_csv(out: Path, *, n: int = 2000, rate: float = 0.35, seed: int = 0,
                              data_dir: str | None = None, offset: int = 0) -> Path:
    """Grey PNGs at 28 px and a ``path,label`` CSV with instance-dependent noise; returns the list."""
    from dataparams.data.prepare import reference_probabilities
    from dataparams.noise import instance_dependent_noise

    folder = out / "fmnist-instance35"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, clean_fm = _fmnist(n, data_dir, offset)
    reference = reference_probabilities(images, clean_fm, 10)
    noisy_fm, _ = instance_dependent_noise(clean_fm, rate, reference, seed=seed)
    names = list(FASHION_MNIST_CLASSES)
    lines = ["path,label\n"]
    ids = []
    for i, (img, k) in enumerate(zip(images, noisy_fm)):
        rel = f"images/{i:05d}.png"
        Image.fromarray(img).save(folder / rel)
        lines.append(f"{rel},{names[k]}\n")
        ids.append(rel)
    (folder / "labels.csv").write_text("".join(lines))
    classes = sorted(names)
    to_user = np.array([classes.index(c) for c in names])
    _save_truth(folder, clean=to_user[clean_fm], given=to_user[noisy_fm], classes=classes, ids=ids,
                noise="instance", rate=rate)
    return folder / "labels.csv"


def write_digits(out: Path, *, noise: str = "uniform", rate: float = 0.3, seed: int = 0) -> Path:
    """scikit-learn's digits, 1,797 x 64, integer labels, no ids; returns the .npz."""
    from sklearn.datasets import load_digits

    folder = out / "digits-uniform30"
    folder.mkdir(parents=True, exist_ok=True)
    x, clean = load_digits(return_X_y=True)
    given, _ = apply_noise(noise, clean, rate, 10, seed=seed)
    np.savez(folder / "digits.npz", X=x, y=given)
    _save_truth(folder, clean=clean, given=given, classes=[str(k) for k in range(10)],
                ids=[f"row {i}" for i in range(len(x))], noise=noise, rate=rate)
    return folder / "digits.npz"


def write_breast_cancer(out: Path, *, noise: str = "pair", rate: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's breast-cancer table, 569 x 30, string labels and ids; returns the .npz."""
    from sklearn.datasets import load_breast_cancer

    folder = out / "breast-cancer-pair20"
    folder.mkdir(parents=True, exist_ok=True)
    bunch = load_breast_cancer()
    x, clean_sk, names = bunch.data, bunch.target, [str(c) for c in bunch.target_names]
    given_sk, _ = apply_noise(noise, clean_sk, rate, len(names), seed=seed)
    ids = [f"sample-{i:03d}" for i in range(len(x))]
    np.savez(folder / "features.npz", X=x, y=np.array([names[k] for k in given_sk]), ids=np.array(ids))
    classes = sorted(names)
    to_user = np.array([classes.index(c) for c in names])
    _save_truth(folder, clean=to_user[clean_sk], given=to_user[given_sk], classes=classes, ids=ids,
                noise=noise, rate=rate)
    return folder / "features.npz"


SETS = ("fmnist-folder", "fmnist-rgb-csv", "fmnist-instance35", "digits-uniform30", "breast-cancer-pair20")


def _check(name: str, path: Path) -> str:
    """Load ``path`` as a user would and compare with its truth; one table row."""
    from dataparams.data.user import load_user_data

    t0 = time.perf_counter()
    data = load_user_data(path, progress=False)
    seconds = time.perf_counter() - t0
    truth = np.load(path.parent / "truth.npz" if path.is_file() else path / "truth.npz")
    if data.ids != [str(v) for v in truth["ids"]] or data.classes != [str(v) for v in truth["classes"]]:
        raise AssertionError(f"{name}: the loader's order or classes differ from truth.npz")
    if not np.array_equal(data.targets, truth["given_labels"]):
        raise AssertionError(f"{name}: the loader's labels differ from truth.npz")
    c = data.choices
    shape = (f"{data.image_size} px x {data.channels} ch, {c['storage']['value']}" if data.kind == "images"
             else f"{data.features.shape[1]} features")  # type: ignore[union-attr]
    return (f"| {name} | {len(data):,} | {data.kind} | {shape} | {data.num_classes} | "
            f"{truth['noise']} {float(truth['rate']):.0%} | {truth['is_corrupted'].mean():.1%} | {seconds:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder to write the data sets into (created)")
    parser.add_argument("--n", type=int, default=2000, help="Fashion-MNIST images per image set")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--offset", type=int, default=0,
                        help="first Fashion-MNIST training image of the image sets (development sets that share no "
                             "image with the reported ones: e.g. --offset 20000)")
    parser.add_argument("--fmnist-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--no-check", action="store_true", help="write only; do not load the sets back")
    parser.add_argument("--table", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "fmnist-folder": write_fmnist_folder(out, n=args.n, seed=args.seed, data_dir=args.fmnist_dir,
                                                     offset=args.offset),
        "fmnist-rgb-csv": write_fmnist_rgb_csv(out, n=args.n, seed=args.seed, data_dir=args.fmnist_dir,
                                                     offset=args.offset),
        "fmnist-instance35": write_fmnist_instance_csv(out, n=args.n, seed=args.seed, data_dir=args.fmnist_dir,
                                                     offset=args.offset),
        "digits-uniform30": write_digits(out, seed=args.seed),
        "breast-cancer-pair20": write_breast_cancer(out, seed=args.seed),
    }
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.no_check:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"load_user_data on each set ({platform.processor() or platform.machine()}, {cpus} CPUs; "
        "load = list/folder read + every image opened, verified and decoded + statistics)",
        "",
        "| set | N | kind | input | K | injected | corrupted | load s |",
        "|---|---:|---|---|---:|---|---:|---:|",
    ]
    lines += [_check(name, path) for name, path in paths.items()]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
