"""MNIST and Fashion-MNIST from their IDX files (gzipped or not).

The paper's Fashion-MNIST experiments (sec. 3.4) use the standard 60,000 / 10,000 split. A
split is read from two files in one folder::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

The folder may also be a torchvision root (``<root>/FashionMNIST/raw/`` or ``<root>/MNIST/raw/``).
Images come back as uint8 (N, 28, 28, 1), labels as int64 (N,).

IDX layout: a big-endian header ``0x00 0x00 <dtype code> <ndim>`` followed by ``ndim``
big-endian uint32 sizes, then the values in C order. Image files have magic 2051
(uint8, 3-D), label files 2049 (uint8, 1-D).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from dataparams.data.base import DatasetFormatError, DatasetNotFoundError, Split

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "load_fashion_mnist",
    "load_idx_file",
    "load_mnist",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(k) for k in range(10)]

# Where Debian's dataset-* packages install; a module attribute so tests can point it elsewhere.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
DATA_DIR_ENV = "DATAPARAMS_DATA_DIR"

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    # Decide by content, not by name: some mirrors gunzip the files but keep the .gz suffix.
    if head != b"\x1f\x8b":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DatasetFormatError(f"{path}: cannot decompress, the file is truncated or corrupt ({e})") from None


def load_idx_file(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array of its declared dtype and shape.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ndarray
        E.g. uint8 (N, 28, 28) for an image file, uint8 (N,) for a label file; multi-byte types
        are converted to native byte order.

    Raises
    ------
    ValueError
        Naming the file, if the header is not IDX or the data is shorter or longer than the
        header declares (a truncated download).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetFormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetFormatError(
            f"{path}: the header declares shape {shape} ({expected} bytes in all) but the file "
            f"holds {len(data)} bytes; it is truncated or corrupt, fetch it again"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _split_files(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """The (images, labels) files for ``prefix`` in ``folder``, or None if either is missing."""
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        stem = f"{prefix}-{kind}-idx{ndim}-ubyte"
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                found.append(folder / name)
                break
        else:
            return None
    return found[0], found[1]


def _load_idx_split(
    root: str | os.PathLike | None,
    *,
    train: bool,
    dataset: str,
    torchvision_name: str,
    classes: list[str],
    how_to_get: str,
) -> Split:
    prefix = "train" if train else "t10k"
    if root is not None:
        roots = [Path(root)]
    else:
        roots = [Path(os.environ[DATA_DIR_ENV]) / dataset] if os.environ.get(DATA_DIR_ENV) else []
        roots.append(SYSTEM_DATA_DIR / dataset)
    # A torchvision root keeps the same files two levels down.
    candidates = [d for r in roots for d in (r, r / torchvision_name / "raw")]
    files = next((f for d in candidates if (f := _split_files(d, prefix)) is not None), None)
    if files is None:
        searched = ", ".join(str(r) for r in roots)
        raise DatasetNotFoundError(
            f"{dataset}: no {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] "
            f"found in {searched} (nor in their {torchvision_name}/raw/ subfolder). {how_to_get}"
        )
    image_file, label_file = files
    images = load_idx_file(image_file)
    labels = load_idx_file(label_file)
    # The magic number is exactly (dtype, ndim): 2051 = uint8 3-D, 2049 = uint8 1-D.
    for f, arr, magic, ndim in ((image_file, images, 2051, 3), (label_file, labels, 2049, 1)):
        if arr.dtype != np.uint8 or arr.ndim != ndim:
            raise DatasetFormatError(
                f"{f}: expected magic number {magic} (uint8, {ndim}-D), got {arr.dtype} {arr.ndim}-D"
            )
    if images.shape[1:] != (28, 28):
        raise DatasetFormatError(f"{image_file}: expected (N, 28, 28) images, got {images.shape}")
    if len(images) != len(labels):
        raise DatasetFormatError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels")
    if labels.size and labels.max() >= len(classes):
        raise DatasetFormatError(f"{label_file}: label {labels.max()} outside [0, {len(classes)})")
    return Split(
        targets=labels.astype(np.int64),
        classes=list(classes),
        images=images[..., None],
        name=f"{dataset}/{'train' if train else 'test'}",
    )


def load_fashion_mnist(root: str | os.PathLike | None = None, *, train: bool = True) -> Split:
    """Fashion-MNIST: 60,000 train / 10,000 test grey 28x28 images of 10 clothing classes.

    Parameters
    ----------
    root : path-like, optional
        Folder with the four IDX files. By default ``$DATAPARAMS_DATA_DIR/fashion-mnist`` (when
        the variable is set), then ``/usr/share/datasets/fashion-mnist``.
    train : bool
        The training split, else the test split.

    Returns
    -------
    Split
        ``images`` uint8 (N, 28, 28, 1), ``targets`` int64 (N,), the 10 class names.
    """
    return _load_idx_split(
        root,
        train=train,
        dataset="fashion-mnist",
        torchvision_name="FashionMNIST",
        classes=FASHION_MNIST_CLASSES,
        how_to_get=(
            "On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs it in "
            f"{SYSTEM_DATA_DIR / 'fashion-mnist'}; otherwise put the four *-ubyte.gz files "
            "(train-images, train-labels, t10k-images, t10k-labels) in a folder and pass it as "
            f"root (data.data_dir), or set {DATA_DIR_ENV} to its parent."
        ),
    )


def load_mnist(root: str | os.PathLike | None = None, *, train: bool = True) -> Split:
    """MNIST: 60,000 train / 10,000 test grey 28x28 digits, classes ``"0"`` to ``"9"``.

    Parameters
    ----------
    root : path-like, optional
        Folder with the four IDX files. By default ``$DATAPARAMS_DATA_DIR/mnist`` (when the
        variable is set), then ``/usr/share/datasets/mnist``.
    train : bool
        The training split, else the test split.

    Returns
    -------
    Split
        ``images`` uint8 (N, 28, 28, 1), ``targets`` int64 (N,).
    """
    return _load_idx_split(
        root,
        train=train,
        dataset="mnist",
        torchvision_name="MNIST",
        classes=MNIST_CLASSES,
        how_to_get=(
            "Put the four *-ubyte.gz files (train-images, train-labels, t10k-images, "
            "t10k-labels) in a folder and pass it as root (data.data_dir), "
            f"or set {DATA_DIR_ENV} to its parent."
        ),
    )
