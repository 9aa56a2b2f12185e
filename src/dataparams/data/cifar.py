"""CIFAR-10 / CIFAR-100 from the official "python version" pickles, and CIFAR-10N / -100N labels.

The paper's CIFAR experiments (sec. 3.2-3.5) use the standard 50,000 / 10,000 splits. Expected
layout (what the extracted ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` archives
contain, and what ``torchvision.datasets.CIFAR10(root)`` reads)::

    cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

Each batch is a pickled dict with ``data``, uint8 (n, 3072): per image the 1024 red values,
then green, then blue, each 32x32 row-major; and ``labels`` (CIFAR-10) or ``fine_labels``
(CIFAR-100). The files are Python 2 pickles, so keys and names are bytes when read.

Unpickling runs code from the file: load only archives you trust.

CIFAR-10N / CIFAR-100N (human re-annotations of the *training* split) are distributed as
``CIFAR-10_human.pt`` and ``CIFAR-100_human.pt``; their label order is the training order
above (data batches 1 to 5 concatenated), so ``labels[i]`` belongs to ``load_cifar10(...)[i]``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.data.base import DatasetNotFoundError, Split

__all__ = [
    "CIFAR_N_LABEL_SETS",
    "check_labels_match",
    "load_cifar10",
    "load_cifar100",
    "load_cifar_n_labels",
]

# label_set -> key in the .pt file. "worst" is the paper's name for the 10N "worse_label" set.
CIFAR_N_LABEL_SETS = {
    "clean": "clean_label",
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "worst": "worse_label",
    "noisy": "noisy_label",
}


def _find_folder(root: str | os.PathLike, folder: str, required: list[str], how_to_get: str) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds every file in ``required``."""
    root = Path(root)
    for d in (root / folder, root):
        if all((d / name).is_file() for name in required):
            return d
    # Name the files missing from the likelier candidate so a partial extraction is obvious.
    d = root / folder if (root / folder).is_dir() else root
    missing = [name for name in required if not (d / name).is_file()]
    raise DatasetNotFoundError(
        f"{folder}: {', '.join(missing)} not found in {d} (looked in {root / folder} and {root}). "
        f"{how_to_get}"
    )


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            # encoding="bytes" reads the Python 2 pickles without guessing a text encoding.
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"{path}: not a readable CIFAR pickle, truncated or corrupt ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    if key not in meta:
        raise ValueError(f"{path}: no {key!r} entry")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _read_batches(files: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in files:
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: expected 'data' and {label_key!r} entries, got {sorted(batch)}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        y = np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(y):
            raise ValueError(
                f"{path}: expected data (n, 3072) with n labels, got {data.shape} and {len(y)} labels"
            )
        # Planes are stored channel-first (R, G, B); the split holds (N, H, W, C).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load_cifar10(root: str | os.PathLike, *, train: bool = True) -> Split:
    """CIFAR-10: 50,000 train / 10,000 test colour 32x32 images of 10 classes.

    Parameters
    ----------
    root : path-like
        The folder containing ``cifar-10-batches-py/``, or that folder itself.
    train : bool
        The training split (``data_batch_1`` to ``_5`` in order), else ``test_batch``.

    Returns
    -------
    Split
        ``images`` uint8 (N, 32, 32, 3) RGB, ``targets`` int64 (N,), class names from
        ``batches.meta``.
    """
    batches = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    folder = _find_folder(
        root,
        "cifar-10-batches-py",
        [*batches, "batches.meta"],
        "Extract the CIFAR-10 python version archive (cifar-10-python.tar.gz) into root, or "
        "pass a folder where torchvision.datasets.CIFAR10 has stored it.",
    )
    classes = _names(_unpickle(folder / "batches.meta"), "label_names", folder / "batches.meta")
    images, targets = _read_batches([folder / b for b in batches], "labels")
    return Split(targets, classes, images=images, name=f"cifar10/{'train' if train else 'test'}")


def load_cifar100(root: str | os.PathLike, *, train: bool = True) -> Split:
    """CIFAR-100: 50,000 train / 10,000 test colour 32x32 images of 100 fine classes.

    Parameters
    ----------
    root : path-like
        The folder containing ``cifar-100-python/``, or that folder itself.
    train : bool
        The ``train`` file, else ``test``.

    Returns
    -------
    Split
        ``images`` uint8 (N, 32, 32, 3) RGB, ``targets`` int64 (N,) fine labels, the 100 fine
        class names from ``meta``.
    """
    part = "train" if train else "test"
    folder = _find_folder(
        root,
        "cifar-100-python",
        [part, "meta"],
        "Extract the CIFAR-100 python version archive (cifar-100-python.tar.gz) into root, or "
        "pass a folder where torchvision.datasets.CIFAR100 has stored it.",
    )
    classes = _names(_unpickle(folder / "meta"), "fine_label_names", folder / "meta")
    images, targets = _read_batches([folder / part], "fine_labels")
    return Split(targets, classes, images=images, name=f"cifar100/{part}")


def check_labels_match(labels: np.ndarray, split: Split) -> None:
    """Raise ``ValueError`` unless ``labels`` (N,) can replace ``split.targets``.

    Checks the length and that every label is a class of ``split``; a mismatch usually means the
    labels belong to the other CIFAR or to the test split.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(split),):
        raise ValueError(
            f"labels of shape {labels.shape} for {split.name or 'a split'} of {len(split)} samples; "
            "CIFAR-N labels cover the training split only"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= split.num_classes):
        raise ValueError(
            f"labels range over [{labels.min()}, {labels.max()}] but {split.name or 'the split'} "
            f"has {split.num_classes} classes"
        )


def load_cifar_n_labels(path: str | os.PathLike, *, label_set: str, split: Split | None = None) -> np.ndarray:
    """One set of CIFAR-10N / CIFAR-100N human labels for the CIFAR training split.

    The ``.pt`` files are dicts of numpy arrays written by ``torch.save``; reading numpy arrays
    needs ``torch.load(weights_only=False)``, i.e. full unpickling, so load only files you trust.

    Parameters
    ----------
    path : path-like
        ``CIFAR-10_human.pt`` or ``CIFAR-100_human.pt``.
    label_set : str
        ``"aggre"``, ``"random1"``, ``"random2"``, ``"random3"``, ``"worst"`` (CIFAR-10N),
        ``"noisy"`` (CIFAR-100N, fine labels) or ``"clean"`` (either).
    split : Split, optional
        The training split the labels will replace; checked with :func:`check_labels_match`.

    Returns
    -------
    ndarray (50000,) int64
    """
    if label_set not in CIFAR_N_LABEL_SETS:
        raise ValueError(f"unknown label_set {label_set!r}; valid: {', '.join(CIFAR_N_LABEL_SETS)}")
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"CIFAR-N labels: {path} not found. Expected CIFAR-10_human.pt or CIFAR-100_human.pt "
            "as published with the CIFAR-N paper (Wei et al., ICLR 2022); pass the path to the file."
        )
    import torch  # deferred: only this loader needs it

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises a variety of errors for a bad file
        raise ValueError(f"{path}: cannot read as a torch.save file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of label arrays, got {type(obj).__name__}")
    key = CIFAR_N_LABEL_SETS[label_set]
    if key not in obj:
        raise ValueError(
            f"{path} has no {key!r} (label_set {label_set!r}); it holds {sorted(map(str, obj))}. "
            "'noisy' is a CIFAR-100N set, 'aggre', 'random1-3' and 'worst' are CIFAR-10N sets."
        )
    value = obj[key]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    labels = np.asarray(value)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{path}: {key!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if split is not None:
        check_labels_match(labels, split)
    return labels
