"""CIFAR-10 / CIFAR-100 from the official "python version" archives, and CIFAR-10N / -100N labels.

The paper's CIFAR experiments (sec. 3.2-3.5) use the standard 50,000 / 10,000 splits. The
archives are read by torchvision's dataset classes (``torchvision.datasets.CIFAR10`` /
``CIFAR100``, never with ``download=True``), which also verify the published files' checksums;
this module finds the folder, turns their errors into messages that say what is missing, and
returns a :class:`~dataparams.data.base.Split`. Expected layout (what the extracted
``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` archives contain)::

    ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
    ROOT/cifar-100-python/train, test, meta

Training images come in torchvision's order (data batches 1 to 5 concatenated), as uint8
(N, 32, 32, 3) RGB; CIFAR-100 labels are the 100 fine labels.

Unpickling runs code from the file: load only archives you trust.

CIFAR-10N / CIFAR-100N (human re-annotations of the *training* split) are distributed as
``CIFAR-10_human.pt`` and ``CIFAR-100_human.pt``; their label order is the training order
above, so ``labels[i]`` belongs to ``load_cifar10(...)[i]``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from dataparams.data.base import DatasetFormatError, DatasetNotFoundError, Split

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
    """``root/folder``, or ``root`` itself when it is that folder, holding every file in ``required``."""
    root = Path(root)
    candidates = [root / folder, *([root] if root.name == folder else [])]
    for d in candidates:
        if all((d / name).is_file() for name in required):
            return d
    # Name the files missing from the likelier candidate so a partial extraction is obvious.
    d = next((c for c in candidates if c.is_dir()), candidates[0])
    missing = [name for name in required if not (d / name).is_file()]
    raise DatasetNotFoundError(
        f"{folder}: {', '.join(missing)} not found in {d} (looked in {', '.join(map(str, candidates))}). {how_to_get}"
    )


def _read(cls: type, folder: Path, *, train: bool, name: str) -> Split:
    """Read the split with torchvision's class ``cls`` from ``folder`` (= ROOT/cls.base_folder)."""
    try:
        ds = cls(str(folder.parent), train=train, download=False)
    except RuntimeError as e:
        # torchvision's "not found or corrupted": the files exist (checked), so a checksum failed.
        raise DatasetFormatError(f"{folder}: the files do not match the published archive's checksums, truncated or "
                         f"modified ({e})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, KeyError) as e:
        raise DatasetFormatError(f"{_unreadable_file(cls, folder, train)}: not a readable CIFAR pickle, truncated or "
                         f"corrupt ({type(e).__name__}: {e})") from None
    images = np.ascontiguousarray(ds.data, dtype=np.uint8)
    return Split(np.asarray(ds.targets, dtype=np.int64), [str(c) for c in ds.classes], images=images,
                 name=f"{name}/{'train' if train else 'test'}")


def _unreadable_file(cls: type, folder: Path, train: bool) -> Path:
    """The first file of the split that does not unpickle (torchvision's error does not name it)."""
    names = [n for n, _ in (cls.train_list if train else cls.test_list)] + [cls.meta["filename"]]
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                pickle.load(f, encoding="latin1")
        except Exception:  # any failure to unpickle marks the culprit
            return folder / name
    return folder


def load_cifar10(root: str | os.PathLike, *, train: bool = True) -> Split:
    """CIFAR-10: 50,000 train / 10,000 test colour 32x32 images of 10 classes.

    Parameters
    ----------
    root : path-like
        The folder containing ``cifar-10-batches-py/``, or that folder itself.
    train : bool
        The training split (``data_batch_1`` to ``_5`` in order), else ``test_batch``. Either
        way every file of the archive must be present (torchvision verifies them all).

    Returns
    -------
    Split
        ``images`` uint8 (N, 32, 32, 3) RGB, ``targets`` int64 (N,), class names from
        ``batches.meta``.

    Raises
    ------
    DatasetNotFoundError
        A file is missing (named in the message).
    ValueError
        A file does not match the published archive or cannot be unpickled.
    """
    from torchvision.datasets import CIFAR10

    # torchvision checks every file of the archive, whichever split is read.
    folder = _find_folder(
        root,
        CIFAR10.base_folder,
        [*(n for n, _ in CIFAR10.train_list + CIFAR10.test_list), CIFAR10.meta["filename"]],
        "Extract the CIFAR-10 python version archive (cifar-10-python.tar.gz) into root.",
    )
    return _read(CIFAR10, folder, train=train, name="cifar10")


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

    Raises
    ------
    DatasetNotFoundError, ValueError
        As :func:`load_cifar10`.
    """
    from torchvision.datasets import CIFAR100

    folder = _find_folder(
        root,
        CIFAR100.base_folder,
        [*(n for n, _ in CIFAR100.train_list + CIFAR100.test_list), CIFAR100.meta["filename"]],
        "Extract the CIFAR-100 python version archive (cifar-100-python.tar.gz) into root.",
    )
    return _read(CIFAR100, folder, train=train, name="cifar100")


def check_labels_match(labels: np.ndarray, split: Split) -> None:
    """Raise ``ValueError`` unless ``labels`` (N,) can replace ``split.targets``.

    Checks the length and that every label is a class of ``split``; a mismatch usually means the
    labels belong to the other CIFAR or to the test split.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(split),):
        raise DatasetFormatError(
            f"labels of shape {labels.shape} for {split.name or 'a split'} of {len(split)} samples; "
            "CIFAR-N labels cover the training split only"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= split.num_classes):
        raise DatasetFormatError(
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
        raise DatasetFormatError(f"{path}: cannot read as a torch.save file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict of label arrays, got {type(obj).__name__}")
    key = CIFAR_N_LABEL_SETS[label_set]
    if key not in obj:
        raise DatasetFormatError(
            f"{path} has no {key!r} (label_set {label_set!r}); it holds {sorted(map(str, obj))}. "
            "'noisy' is a CIFAR-100N set, 'aggre', 'random1-3' and 'worst' are CIFAR-10N sets."
        )
    value = obj[key]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    labels = np.asarray(value)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DatasetFormatError(f"{path}: {key!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if split is not None:
        check_labels_match(labels, split)
    return labels
