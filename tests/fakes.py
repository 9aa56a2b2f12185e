"""Tiny datasets written in the real on-disk formats, for tests that go through the loaders.

Each writer puts a few images into ``root`` exactly as the published archives lay them out
(IDX files with their magic numbers, CIFAR python pickles, CIFAR-N ``.pt`` label files, ImageNet
class folders, WebVision lists, CSV file lists) and returns ``root``, ready to be passed as
``data.data_dir``. Images carry class-dependent content (a bright block at a position, and in a
colour channel, that depend on the class) over seeded noise, so a model has something to learn;
nothing here checks that it does. Labels cycle through the classes in a seeded order, so every
class below ``min(n, classes)`` appears.

Notation: ``N`` samples, ``K`` classes.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = [
    "class_images",
    "cycled_labels",
    "dump_python2_pickle",
    "write_cifar10",
    "write_cifar100",
    "write_cifar_n",
    "write_filelist",
    "write_idx",
    "write_imagenet",
    "write_webvision",
]

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-N label sets by file: the keys the published CIFAR-10_human.pt / CIFAR-100_human.pt hold.
CIFAR10N_KEYS = (
    "clean_label",
    "aggre_label",
    "random_label1",
    "random_label2",
    "random_label3",
    "worse_label",
)


# ---------------------------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------------------------
def cycled_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) int64: ``0, 1, ..., K-1, 0, ...`` in a seeded order (balanced, every class early)."""
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def class_images(
    labels: np.ndarray, *, classes: int, size: tuple[int, int], channels: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 (N, H, W, C): dark noise plus a bright block whose cell and channel encode the class."""
    h, w = size
    out = rng.integers(0, 64, size=(len(labels), h, w, channels), dtype=np.uint8)
    grid = math.ceil(math.sqrt(classes))
    ch, cw = max(h // grid, 1), max(w // grid, 1)
    for i, k in enumerate(np.asarray(labels)):
        r, c = divmod(int(k), grid)
        r0, c0 = (r * ch) % h, (c * cw) % w
        out[i, r0 : r0 + ch, c0 : c0 + cw, :] = 160
        out[i, r0 : r0 + ch, c0 : c0 + cw, int(k) % channels] = 255
    return out


def _save_image(path: Path, pixels: np.ndarray, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path, fmt)


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------
def _idx_bytes(magic: int, arr: np.ndarray) -> bytes:
    # Big-endian magic (0x0000 <dtype 0x08 = uint8> <ndim>), one uint32 per dimension, C-order data.
    return (
        struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    )


def write_idx(
    root: str | os.PathLike[str],
    n_train: int = 16,
    n_test: int = 8,
    *,
    classes: int = 10,
    seed: int = 0,
    gz: bool = True,
) -> Path:
    """MNIST / Fashion-MNIST: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, 28x28 grey."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = cycled_labels(n, classes, rng)
        images = class_images(labels, classes=classes, size=(28, 28), channels=1, rng=rng)[..., 0]
        for kind, magic, arr in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
            data = _idx_bytes(magic, arr)
            path = root / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(f"{path}.gz", "wb") as f:
                    f.write(data)
            else:
                path.write_bytes(data)
    return root


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python pickles, CIFAR-N label files
# ---------------------------------------------------------------------------------------------
def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): all red values row-major, then green, then blue."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


class _Python2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 wrote its ``str``: the (SHORT_)BINSTRING opcodes.

    The published CIFAR archives are Python 2 pickles, so their keys, names and numpy buffers
    come back as ``bytes`` with ``encoding="bytes"`` and as ``str`` with ``encoding="latin1"``
    (what torchvision uses). Python 3's own pickler writes ``bytes`` differently at protocol 2.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_python2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str


def dump_python2_pickle(path: Path, obj: dict) -> None:
    """Write ``obj`` as the CIFAR archives hold it: a Python 2 pickle, protocol 2, bytes keys."""
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


_dump = dump_python2_pickle


def _cifar_split(n: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = cycled_labels(n, classes, rng)
    return labels, _cifar_rows(class_images(labels, classes=classes, size=(32, 32), channels=3, rng=rng))


def _write_cifar10(root: Path, n_train: int, n_test: int, seed: int) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels, rows = _cifar_split(n_train, 10, rng)
    parts = [(f"data_batch_{b + 1}", idx) for b, idx in enumerate(np.array_split(np.arange(n_train), 5))]
    test_labels, test_rows = _cifar_split(n_test, 10, rng)
    for name, y, x in [
        *((name, labels[i], rows[i]) for name, i in parts),
        ("test_batch", test_labels, test_rows),
    ]:
        _dump(
            folder / name,
            {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in y],
                b"data": x,
                b"filenames": [f"{name}_{j}.png".encode() for j in range(len(y))],
            },
        )
    _dump(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": max(len(i) for _, i in parts),
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": 3072,
        },
    )
    return labels


def _write_cifar100(root: Path, n_train: int, n_test: int, seed: int) -> np.ndarray:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = None
    for part, n in (("train", n_train), ("test", n_test)):
        y, x = _cifar_split(n, 100, rng)
        train_labels = y if train_labels is None else train_labels
        _dump(
            folder / part,
            {
                b"filenames": [f"{part}_{j}.png".encode() for j in range(n)],
                b"batch_label": f"{part} batch 1 of 1".encode(),
                b"fine_labels": [int(v) for v in y],
                b"coarse_labels": [int(v) // 5 for v in y],
                b"data": x,
            },
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine_{k:02d}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse_{k:02d}".encode() for k in range(20)],
        },
    )
    return train_labels


def write_cifar10(root: str | os.PathLike[str], n_train: int = 8, n_test: int = 4, *, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/``: ``data_batch_1..5`` (``n_train`` split across them in
    order), ``test_batch`` and ``batches.meta``."""
    _write_cifar10(Path(root), n_train, n_test, seed)
    return Path(root)


def write_cifar100(root: str | os.PathLike[str], n_train: int = 8, n_test: int = 4, *, seed: int = 0) -> Path:
    """``root/cifar-100-python/``: ``train``, ``test`` (fine and coarse labels) and ``meta``."""
    _write_cifar100(Path(root), n_train, n_test, seed)
    return Path(root)


def write_cifar_n(
    root: str | os.PathLike[str],
    kind: str = "10",
    n_train: int = 8,
    n_test: int = 4,
    *,
    seed: int = 0,
    noise: float = 0.4,
) -> Path:
    """CIFAR-10N / CIFAR-100N: the CIFAR folder plus ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``.

    The ``.pt`` file is what the CIFAR-N release ships: a ``torch.save``d dict of numpy arrays,
    one per label set, in training order. ``clean_label`` equals the pickles' labels; each other
    set replaces a label by a seeded random class with probability ``noise``.
    """
    import torch

    if kind not in ("10", "100"):
        raise ValueError(f"kind must be '10' or '100', got {kind!r}")
    root = Path(root)
    clean = (_write_cifar10 if kind == "10" else _write_cifar100)(root, n_train, n_test, seed)
    rng = np.random.default_rng(seed + 1)

    def noisy(y: np.ndarray, classes: int) -> np.ndarray:
        flip = rng.random(len(y)) < noise
        return np.where(flip, rng.integers(0, classes, size=len(y)), y).astype(np.int64)

    if kind == "10":
        sets = {key: (clean if key == "clean_label" else noisy(clean, 10)) for key in CIFAR10N_KEYS}
    else:
        coarse = clean // 5
        sets = {
            "clean_label": clean,
            "noisy_label": noisy(clean, 100),
            "clean_coarse_label": coarse,
            "noisy_coarse_label": noisy(coarse, 20),
        }
    torch.save(sets, root / f"CIFAR-{kind}_human.pt")
    return root


# ---------------------------------------------------------------------------------------------
# image files: ImageNet folders, WebVision lists, CSV lists
# ---------------------------------------------------------------------------------------------
def write_imagenet(
    root: str | os.PathLike[str],
    n_per_class: int = 2,
    classes: int = 3,
    size: tuple[int, int] = (40, 40),
    *,
    val_per_class: int = 1,
    seed: int = 0,
) -> Path:
    """``root/{train,val}/<wnid>/<name>.JPEG``, ``classes`` WordNet-id folders each."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + k:08d}" for k in range(classes)]
    for part, per_class in (("train", n_per_class), ("val", val_per_class)):
        labels = np.repeat(np.arange(classes), per_class)
        pixels = class_images(labels, classes=classes, size=size, channels=3, rng=rng)
        for j, (k, img) in enumerate(zip(labels, pixels)):
            name = f"{wnids[k]}_{j}.JPEG" if part == "train" else f"ILSVRC2012_val_{j + 1:08d}.JPEG"
            _save_image(root / part / wnids[k] / name, img, "JPEG")
    return root


def write_webvision(
    root: str | os.PathLike[str],
    n_train: int = 8,
    n_val: int = 4,
    *,
    classes: int = 4,
    n_extra: int = 0,
    size: tuple[int, int] = (40, 40),
    seed: int = 0,
) -> Path:
    """WebVision 1.0: ``info/train_filelist_{google,flickr}.txt``, ``info/val_filelist.txt``,
    ``info/synsets.txt`` and the JPEGs they list.

    ``n_train`` / ``n_val`` samples have labels below ``classes`` (< 50, so mini-WebVision keeps
    them); the train samples are split between the google and flickr lists. ``n_extra`` more
    samples in each split have labels >= 50, which mini-WebVision drops and full WebVision keeps.
    """
    if not 1 <= classes <= 50:
        raise ValueError(f"classes must lie in [1, 50] so that mini-WebVision keeps them, got {classes}")
    root = Path(root)
    info = root / "info"
    info.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    extra = 50 + (np.arange(n_extra) * 191) % 950

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.concatenate([cycled_labels(n, classes, rng), extra]).astype(np.int64)
        return labels, class_images(labels, classes=1000, size=size, channels=3, rng=rng)

    labels, pixels = rows(n_train)
    lists: dict[str, list[str]] = {"google": [], "flickr": []}
    for j, (k, img) in enumerate(zip(labels, pixels)):
        source = "google" if j < (n_train + 1) // 2 else "flickr"
        rel = f"{source}/q{k + 1:04d}/{j + 1:08d}.jpg"
        _save_image(root / rel, img, "JPEG")
        lists[source].append(f"{rel} {k}\n")
    for source, lines in lists.items():
        (info / f"train_filelist_{source}.txt").write_text("".join(lines))
    labels, pixels = rows(n_val)
    lines = []
    for j, (k, img) in enumerate(zip(labels, pixels)):
        name = f"val{j + 1:06d}.jpg"
        _save_image(root / "val_images_256" / name, img, "JPEG")
        lines.append(f"{name} {k}\n")
    (info / "val_filelist.txt").write_text("".join(lines))
    (info / "synsets.txt").write_text("".join(f"n{1440764 + k:08d} class {k}\n" for k in range(1000)))
    return root


def write_filelist(
    root: str | os.PathLike[str],
    n_train: int = 8,
    n_test: int = 4,
    *,
    classes: tuple[str, ...] = ("ant", "bee", "cat"),
    size: tuple[int, int] = (16, 16),
    seed: int = 0,
) -> Path:
    """``root/train.csv`` and ``root/test.csv`` (header ``path,label``, class names as labels),
    images under ``root/images/`` referenced by paths relative to the lists."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for part, n in (("train", n_train), ("test", n_test)):
        labels = cycled_labels(n, len(classes), rng)
        pixels = class_images(labels, classes=len(classes), size=size, channels=3, rng=rng)
        lines = ["path,label\n"]
        for j, (k, img) in enumerate(zip(labels, pixels)):
            rel = f"images/{part}_{j:04d}.png"
            _save_image(root / rel, img, "PNG")
            lines.append(f"{rel},{classes[k]}\n")
        (root / f"{part}.csv").write_text("".join(lines))
    return root


def free_port() -> int:
    """A TCP port free on localhost now, for a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counted_step(model, optimizer, objective, x, y, idx) -> dict:
    """One training step (zero grads, forward, backward, every optimizer, record) under
    :func:`dataparams.syncs.count_host_syncs`; the sync points it called, by name."""
    from dataparams.syncs import count_host_syncs

    with count_host_syncs() as syncs:
        for o in (optimizer, *objective.optimizers().values()):
            o.zero_grad(set_to_none=True)
        logits = model(x)
        loss, per_sample = objective(logits, x, y, idx)
        loss.backward()
        optimizer.step()
        for o in objective.optimizers().values():
            o.step()
        objective.record(idx, per_sample, logits.detach())
    return dict(syncs.calls)


def synthetic_kitti(tmp_path_factory, name: str = "synth", *, num_images: int = 24, seed: int = 5,
                    flip_fraction: float = 0.2) -> Path:
    """A synthetic KITTI folder (a quarter of it the validation split, ``flip_fraction`` of the
    training boxes given another class) for a module-scoped fixture; skips the test without
    Fashion-MNIST, whose images the generator draws its objects from."""
    import pytest

    from dataparams.data.base import DatasetNotFoundError
    from dataparams.detection.synthetic import SyntheticKittiConfig, write_synthetic_kitti

    root = tmp_path_factory.mktemp(name)
    try:
        write_synthetic_kitti(root, SyntheticKittiConfig(num_images=num_images, val_fraction=0.25, seed=seed,
                                                         flip_fraction=flip_fraction))
    except DatasetNotFoundError:  # pragma: no cover - depends on the machine
        pytest.skip("Fashion-MNIST is not installed (see README: ./run test installs it)")
    return root


@contextlib.contextmanager
def lock_holder(path):
    """Another live process holding ``RunDir(path)``'s lock for the block (its ``Popen``), killed at
    the end: a second writer as the lock sees it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dataparams.runs import RunDir; r = RunDir(sys.argv[1]); "
         "r.lock(); print('locked', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
