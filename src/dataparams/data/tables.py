"""A user's labelled data where users hold it: arrays, a torch Dataset, a DataFrame, a parquet file,
a Hugging Face dataset (issue 21, item 4).

Notation: ``N`` samples, ``K`` classes, ``D`` features, ``S`` the common image side, ``C``
channels (1 or 3).

:func:`load_table_data` returns the same :class:`~dataparams.data.user.UserData` as
:func:`~dataparams.data.user.load_user_data` does for files, from

* ``(X, y)`` arrays (numpy or torch): ``X`` (N, D) features or (N, H, W) / (N, H, W, C) images
  (a torch tensor of images is (N, C, H, W));
* a torch ``Dataset`` yielding ``(x, y)``: read once; the training loaders add the index;
* a pandas ``DataFrame``, a Hugging Face ``datasets.Dataset`` (or ``DatasetDict``), a ``.parquet``
  file, or a folder written by ``datasets.Dataset.save_to_disk``: one row per sample, with a label
  column and an image column (PIL images, the ``Image`` feature, encoded bytes or file paths) or
  feature columns (numbers, or one vector such as an embedding per row).

Images follow user.py's rules, so that a table of images and a folder of the same images give
identical arrays: a table of file paths goes to its loader as a CSV list of them would (measured,
fingerprinted, streamed when too large); images held in memory -- encoded bytes (PNG, JPEG, the
``Image`` feature) and decoded pixels (arrays, tensors, PIL images, handed over as uncompressed
in-memory image files holding exactly those pixels) -- are measured by the same rule (user.py's
``_side_and_channels``, which files go through too) and decoded by user.py's ``decode_image``,
into memory.

The readers are pandas, pyarrow and ``datasets`` (``pip install 'dataparams[tables]'``); nothing
is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from dataparams.data.folders import IMG_EXTENSIONS
from dataparams.data.user import (
    UserData,
    UserDataError,
    _check_class_list,
    _check_classes_used,
    _class_choice,
    _classes_digest,
    _decode_all,
    _digest,
    _encode_ints,
    _encode_labels,
    _fingerprint_choice,
    _human_bytes,
    _load_images,
    _parallel,
    _pixel_stats,
    _raise_first,
    _side_and_channels,
    finite_float32,
    memory_need,
)

__all__ = ["TABLE_SUFFIXES", "is_table_path", "load_table_data"]

TABLE_SUFFIXES = (".parquet",)
_EXTRA = "pip install 'dataparams[tables]'"
_Where = Callable[[int], str]


def _require(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs the package {module.split('.')[0]!r}: {_EXTRA}") from e


def _is_hf_folder(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def is_table_path(path: str | os.PathLike[str]) -> bool:
    """True for a path :func:`load_table_data` reads: a ``.parquet`` file or a folder written by
    ``datasets`` ``save_to_disk``. CSV lists, class folders and ``.npz`` files are
    :func:`~dataparams.data.user.load_user_data`'s."""
    p = Path(path).expanduser()
    return (p.is_file() and p.suffix.lower() in TABLE_SUFFIXES) or _is_hf_folder(p)


# ---------------------------------------------------------------------------------------------
# images as user.py's inputs
# ---------------------------------------------------------------------------------------------
class _MemoryImage(io.BytesIO):
    """An encoded image held in memory: ``PIL.Image.open`` reads it like a file, ``str()`` says
    what it is in user.py's error messages."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(data)
        self.label = label

    def __str__(self) -> str:
        return self.label


def _pixels_file(x: Image.Image | np.ndarray) -> bytes:
    """Decoded pixels as an uncompressed image file holding exactly them.

    8-bit grey and RGB become binary PGM/PPM (a text header and the raw bytes: no encoder, a few
    microseconds per image); every other mode (RGBA, palette, 16-bit grey, CMYK, ...) becomes an
    uncompressed TIFF, which keeps the mode so that user.py converts it as it would the file.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 and (x.ndim == 2 or x.shape[2] in (1, 3)):
            grey = x.ndim == 2 or x.shape[2] == 1
            head = b"%s\n%d %d\n255\n" % (b"P5" if grey else b"P6", x.shape[1], x.shape[0])
            return head + np.ascontiguousarray(x).tobytes()
        x = Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x)
    if x.mode in ("L", "RGB"):
        head = b"%s\n%d %d\n255\n" % (b"P5" if x.mode == "L" else b"P6", *x.size)
        return head + x.tobytes()
    buf = io.BytesIO()
    x.save(buf, format="TIFF")
    return buf.getvalue()


def _pixels_to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """An (H, W) or (H, W, C) array as pixels an image file holds: uint8 (and uint16 grey) as
    they are, floats in [0, 1] times 255, rounded."""
    if x.dtype == np.uint8 or (x.dtype == np.uint16 and (x.ndim == 2 or x.shape[2] == 1)):
        return x
    if x.dtype.kind != "f":
        raise UserDataError(
            f"{where}: pixels of dtype {x.dtype}; give uint8 (0..255), uint16 grey or floats in [0, 1]"
        )
    ok = np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    if not ok:
        lo, hi = np.nanmin(x), np.nanmax(x)
        raise UserDataError(
            f"{where}: float pixels range {lo:g}..{hi:g}{'' if np.isfinite(x).all() else ' with NaN'}; "
            "float images must lie in [0, 1] (drop Normalize from a transform: dataparams measures "
            "and applies its own)"
        )
    # Exact for ToTensor's k / 255: the product rounds back to k.
    return np.rint(x * np.float32(255)).astype(np.uint8)


def _image_array(x: Any, *, torch_layout: bool, where: str) -> np.ndarray:
    """One image given as pixels, (H, W) or (H, W, C); a torch tensor is (C, H, W)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.ndim == 3 and torch_layout:
            x = x.permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 2, 3, 4)):
        layout = "(C, H, W)" if torch_layout else "(H, W, C)"
        raise UserDataError(f"{where}: an image of shape {x.shape}; expected (H, W) or {layout} with C 1, 3 or 4")
    return _pixels_to_uint8(x, where)


def _memory_image(x: Any, *, torch_layout: bool, where: str, label: str) -> _MemoryImage:
    if not isinstance(x, Image.Image):
        x = _image_array(x, torch_layout=torch_layout, where=where)
    try:
        data = _pixels_file(x)
    except (OSError, ValueError, KeyError) as e:  # a lazily opened file that fails, a mode TIFF lacks
        mode = f" (mode {x.mode})" if isinstance(x, Image.Image) else ""
        raise UserDataError(f"{where}: the image{mode} cannot be read or stored ({type(e).__name__}: {e})") from None
    return _MemoryImage(data, label)


def _image_source(v: Any, base: Path | None, where: str) -> str | _MemoryImage:
    """One cell of an image column as something ``PIL.Image.open`` reads: a file path or an
    in-memory file."""
    if isinstance(v, dict) and ("bytes" in v or "path" in v):  # the Image feature's storage
        if v.get("bytes") is not None:
            name = f"{v['path']} " if v.get("path") else ""
            return _MemoryImage(bytes(v["bytes"]), f"{name}({len(v['bytes']):,} bytes)")
        v = v.get("path")
    if _is_missing(v):
        raise UserDataError(f"{where}: no image ({v!r})")
    if isinstance(v, (str, os.PathLike)):
        p = os.fspath(v).strip()
        if not p:
            raise UserDataError(f"{where}: empty path")
        return str(base / p) if base is not None else p  # an absolute p replaces base
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _MemoryImage(bytes(v), f"({len(v):,} bytes)")
    if isinstance(v, (Image.Image, np.ndarray, Tensor)):
        return _memory_image(v, torch_layout=isinstance(v, Tensor), where=where, label="(pixels)")
    raise UserDataError(
        f"{where}: holds a {type(v).__name__}; an image cell is a PIL image, encoded bytes, a file path "
        "or an (H, W[, C]) array"
    )


def _scan_memory(
    images: list[str | _MemoryImage], where: _Where, progress: bool
) -> tuple[np.ndarray, list[str], str]:
    """Open and verify every image: (N, 2) (width, height) as stored, the N modes, and a digest
    of their bytes (of a file: its path, size and modification time)."""

    def one(i: int) -> tuple[tuple[int, int], str, str] | BaseException:
        try:
            src = images[i]
            if isinstance(src, _MemoryImage):
                key = hashlib.sha256(src.getbuffer()).hexdigest()
            else:
                st = os.stat(src)
                key = f"{src}\t{st.st_size}\t{st.st_mtime_ns}"
            with Image.open(src) as im:
                size, mode = im.size, im.mode
                im.verify()  # the structure only: the decode below checks the pixel data
            return size, mode, key
        except Exception as e:  # reported with its row by _raise_first
            return e

    results = _parallel(one, len(images), desc="checking images", progress=progress)
    _raise_first([(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)], images, where)  # type: ignore[arg-type]
    sizes = np.array([r[0] for r in results], dtype=np.int64).reshape(-1, 2)
    digest = _digest("\n".join(r[2] for r in results).encode())  # type: ignore[index]
    return sizes, [r[1] for r in results], digest  # type: ignore[index]


def _memory_images(
    source: str,
    ids: list[str],
    images: list[str | _MemoryImage],
    targets: np.ndarray,
    classes: list[str],
    where: _Where,
    choices: dict[str, Any],
    labels_digest: str,
    *,
    image_size: int | None,
    max_image_size: int,
    channels: int | None,
    memory_budget_bytes: int | None,
    progress: bool,
) -> UserData:
    """Images held in memory, measured by user.py's rule for files (``_side_and_channels``) and
    decoded by its ``decode_image`` (the same resize and conversion), into memory, since there are
    no files to stream from."""
    n = len(images)
    sizes, modes, digest = _scan_memory(images, where, progress)
    side, c = _side_and_channels(sizes, modes, images, where, choices, image_size=image_size,
                                 max_image_size=max_image_size, channels=channels)

    nbytes, memory_budget_bytes, budget_why = memory_need(n, c, side, memory_budget_bytes)
    size_why = (
        f"{n:,} x {c} x {side} x {side} uint8 = {_human_bytes(nbytes)}, budget {_human_bytes(memory_budget_bytes)} "
        f"({budget_why})"
    )
    if nbytes > memory_budget_bytes:
        raise UserDataError(
            f"{source}: {size_why}; images held in memory, not as files, are decoded into memory. Pass a smaller "
            "image_size or a larger memory_budget_bytes, or write the images to files and load a CSV list of them "
            "(streamed)"
        )
    choices["storage"] = {"value": "memory", "why": f"{size_why}; the images are in memory, not files"}
    pixels = _decode_all(images, np.arange(n), side, c, where, progress)  # type: ignore[arg-type]
    mean, std = _pixel_stats(pixels)
    choices["mean"] = {"value": [round(float(v), 4) for v in mean], "why": f"per channel, pixels in [0, 1], on all {n:,} images"}
    choices["std"] = {"value": [round(float(v), 4) for v in std], "why": f"per channel, on all {n:,} images"}
    parts = {"labels": labels_digest, "images": f"{n:,} images, {digest}", "classes": _classes_digest(classes)}
    choices["data"] = _fingerprint_choice(parts, "sha256 of the labels, the ids and every image's bytes")
    return UserData(
        kind="images", targets=targets, classes=classes, ids=ids, source=source, images=pixels,
        image_size=side, channels=c, mean=mean, std=std, choices=choices,
    )


def _images_data(
    source: str,
    ids: list[str],
    images: list[str | _MemoryImage],
    targets: np.ndarray,
    classes: list[str],
    where: _Where,
    choices: dict[str, Any],
    opts: dict[str, Any],
) -> UserData:
    """Image files go to user.py as they are (measured, fingerprinted and perhaps streamed as a
    CSV list of them would be); images in memory are decoded by the same rules."""
    labels = _labels_digest(targets, ids)
    if all(isinstance(s, str) for s in images):
        return _load_images(
            Path(source), ids, images, targets, classes, where, choices, {"labels": labels}, **opts  # type: ignore[arg-type]
        )
    return _memory_images(source, ids, images, targets, classes, where, choices, labels, **opts)


def _labels_digest(targets: np.ndarray, ids: list[str]) -> str:
    return _digest(targets.astype("<i8").tobytes() + "\n".join(ids).encode())


# ---------------------------------------------------------------------------------------------
# labels, ids, features
# ---------------------------------------------------------------------------------------------
def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    pd = sys.modules.get("pandas")
    return pd is not None and (v is pd.NA or v is pd.NaT)


def _label_values(values: Any, where: _Where, what: str) -> np.ndarray | list[str]:
    """Labels as int64 (N,) class indices or N stripped names; ``what`` names them in messages."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(values, (pd.Series, pd.Index)):
        arr = values.to_numpy()
    elif isinstance(values, np.ndarray):
        arr = values
    else:
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise UserDataError(f"{what}: labels must be one class per sample, shape (N,), got {arr.shape}")
    kind = arr.dtype.kind
    if kind in "iu":
        return arr.astype(np.int64)
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            more = f"; {len(bad) - 1:,} more rows have none" if len(bad) > 1 else ""
            raise UserDataError(f"{where(int(bad[0]))}: no label ({arr[bad[0]]}){more}")
        frac = np.flatnonzero(arr != np.round(arr))
        if len(frac):
            raise UserDataError(f"{where(int(frac[0]))}: label {arr[frac[0]]:g} is no class index or name")
        return arr.astype(np.int64)
    if kind in "bUS":
        items: Sequence[Any] = arr.tolist()
    elif kind == "O":
        items = arr
    else:
        raise UserDataError(f"{what}: labels of dtype {arr.dtype}; give class indices or names")
    ints: list[int] = []
    names: list[str] = []
    for i, v in enumerate(items):
        if _is_missing(v):
            raise UserDataError(f"{where(i)}: no label ({v!r})")
        if isinstance(v, Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (bool, np.bool_)):
            v = str(v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        if isinstance(v, str):
            names.append(v.strip())
            if not names[-1]:
                raise UserDataError(f"{where(i)}: empty label")
        elif isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and v == round(v)):
            ints.append(int(v))
        else:
            shape = f" of shape {tuple(v.shape)}" if hasattr(v, "shape") else ""
            raise UserDataError(
                f"{where(i)}: label {v!r:.60} is a {type(v).__name__}{shape}; a label is one class index or name"
            )
        if ints and names:
            first = f"the number {ints[0]}" if isinstance(v, str) else f"the name {names[0]!r}"
            raise UserDataError(
                f"{where(i)}: label {v!r} where an earlier row holds {first}; labels are all class indices "
                "or all names"
            )
    return np.array(ints, dtype=np.int64) if ints or not names else names


def _encode(
    values: np.ndarray | list[str],
    classes: list[str] | None,
    where: _Where,
    class_source: str,
    *,
    codes: str | None = None,
) -> tuple[np.ndarray, list[str], str]:
    """Labels -> (targets (N,) int64, classes, why). Names without a class list are sorted.
    ``codes`` names a column of class codes where -1 means no label (ClassLabel, categorical)."""
    if isinstance(values, np.ndarray):
        if codes is not None and len(values) and (values == -1).any():
            i = int(np.flatnonzero(values == -1)[0])
            raise UserDataError(f"{where(i)}: no label (-1 in a {codes} column)")
        return _encode_ints(values, classes, where, class_source)
    if classes is not None:
        return _encode_labels(values, classes, where, class_source)
    names = sorted(set(values))
    lookup = {c: k for k, c in enumerate(names)}
    return np.array([lookup[v] for v in values], dtype=np.int64), names, "class names in the labels, sorted"


def _ids(values: Sequence[Any], where: _Where) -> list[str]:
    ids: list[str] = []
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if _is_missing(v):
            raise UserDataError(f"{where(i)}: no id ({v!r})")
        s = v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
        if s in seen:
            raise UserDataError(f"{where(i)}: id {s!r} is also row {seen[s]}'s; ids name one row each")
        seen[s] = i
        ids.append(s)
    return ids


def _to_float32(x: np.ndarray, locate: Callable[[int, int], str]) -> np.ndarray:
    """(N, D) numbers as float32, refusing NaN, infinities and values float32 cannot hold."""
    out, bad = finite_float32(x)
    if bad is not None:
        i, j, what, rows = bad
        more = f"; {rows - 1:,} more rows hold NaN or infinite values" if rows > 1 else ""
        raise UserDataError(f"{locate(i, j)}: holds {what}{more}")
    return out


def _features_data(
    source: str,
    features: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    ids: list[str],
    choices: dict[str, Any],
) -> UserData:
    n = len(features)
    mean = features.mean(0, dtype=np.float64)
    std = features.std(0, dtype=np.float64)
    constant = std < 1e-12
    std[constant] = 1.0
    spread = std[~constant]
    ratio = f"; feature std ranges {spread.min():.3g}..{spread.max():.3g}" if len(spread) else ""
    const_note = f"; {int(constant.sum())} constant features become 0" if constant.any() else ""
    choices["standardize"] = {"value": True, "why": f"per-feature mean/std measured on the {n:,} rows{ratio}{const_note}"}
    parts = {
        "labels": _labels_digest(targets, ids),
        "features": f"{n:,} x {features.shape[1]}, {_digest(features.tobytes())}",
        "classes": _classes_digest(classes),
    }
    choices["data"] = _fingerprint_choice(parts, "sha256 of the labels, the ids and the float32 features")
    return UserData(
        kind="features", targets=targets, classes=classes, ids=ids, source=source, features=features,
        mean=mean.astype(np.float32), std=std.astype(np.float32), choices=choices,
    )


# ---------------------------------------------------------------------------------------------
# (X, y) arrays and torch datasets
# ---------------------------------------------------------------------------------------------
def _from_arrays(
    x: Any, y: Any, given: list[str] | None, opts: dict[str, Any]
) -> UserData:
    source = "arrays"
    torch_layout = isinstance(x, Tensor)
    if torch_layout:
        x = x.detach().cpu()
        x = (x.permute(0, 2, 3, 1) if x.ndim == 4 else x).numpy()
    x = np.asarray(x)
    if x.ndim < 2:
        raise UserDataError(f"{source}: X of shape {x.shape}; expected (N, D) features or (N, H, W[, C]) images")
    labels = _label_values(y, lambda i: f"{source}: y[{i}]", f"{source}: y")
    if len(x) != len(labels):
        raise UserDataError(f"{source}: X has {len(x):,} rows but y has {len(labels):,} labels")
    if len(x) == 0:
        raise UserDataError(f"{source}: zero samples (X is empty)")
    targets, classes, why = _encode(labels, given, lambda i: f"{source}: y[{i}]", "the classes argument")
    _check_classes_used(targets, classes, f"{source}: y")
    ids = [f"row {i}" for i in range(len(x))]
    n = len(x)
    if x.ndim == 2:
        if x.dtype.kind not in "biuf":
            raise UserDataError(f"{source}: X must be numeric, got dtype {x.dtype}")
        if x.shape[1] == 0:
            raise UserDataError(f"{source}: X has zero features (shape {x.shape})")
        features = _to_float32(x, lambda i, j: f"{source}: X[{i}, {j}] (row {i}, column {j})")
        choices = {
            "kind": {"value": "features", "why": f"X is {n:,} x {x.shape[1]} {x.dtype}, stored as float32"},
            "classes": _class_choice(classes, targets, why),
        }
        return _features_data(source, features, targets, classes, ids, choices)
    if x.ndim == 4 and x.shape[3] not in (1, 2, 3, 4):
        hint = " (channels first? a numpy X is (N, H, W, C); a torch tensor is (N, C, H, W))"
        raise UserDataError(f"{source}: X of shape {x.shape} holds no images with 1-4 channels{hint}")
    if x.ndim > 4:
        raise UserDataError(f"{source}: X of shape {x.shape}; images are (N, H, W) or (N, H, W, C)")
    if x.dtype.kind == "f":
        rows = ~((x >= 0) & (x <= 1)).reshape(n, -1).all(1)  # NaN fails both comparisons
        if rows.any():
            i = int(np.flatnonzero(rows)[0])
            _pixels_to_uint8(x[i], f"{source}: X[{i}]")  # raises, describing the row
    images = [_memory_image(x[i], torch_layout=False, where=f"{source}: X[{i}]", label="(pixels)") for i in range(n)]
    layout = "a torch tensor (N, C, H, W)" if torch_layout else "an array (N, H, W, C)"
    choices = {
        "kind": {"value": "images", "why": f"X is {layout}: {n:,} images {tuple(x.shape[1:])} {x.dtype}"},
        "classes": _class_choice(classes, targets, why),
    }
    if x.dtype.kind == "f":
        choices["pixels"] = {"value": "x 255, rounded", "why": "float pixels in [0, 1] stored as uint8"}
    return _images_data(source, ids, images, targets, classes, lambda i: f"{source}: X[{i}]", choices, opts)


def _from_torch(ds: Any, given: list[str] | None, opts: dict[str, Any], progress: bool) -> UserData:
    from tqdm import tqdm

    source = type(ds).__name__

    def where(i: int) -> str:
        return f"{source}: sample {i}"

    if isinstance(ds, IterableDataset):
        items: Any = iter(ds)
        n = None
    else:
        try:
            n = len(ds)
        except TypeError:
            raise UserDataError(f"{source}: a map-style Dataset needs __len__") from None
        items = (ds[i] for i in range(n))
    kind = None
    images: list[str | _MemoryImage] = []
    vectors: list[np.ndarray] = []
    labels: list[Any] = []
    floats = False
    for i, item in enumerate(tqdm(items, total=n, desc="reading the dataset", unit="sample",
                                  disable=not progress, leave=False)):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            got = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
            raise UserDataError(f"{where(i)}: is {got}; the dataset must yield (x, y)")
        x, y = item
        dims = x.ndim if isinstance(x, (Tensor, np.ndarray)) else None
        this = "images" if isinstance(x, Image.Image) or dims in (2, 3) else "features" if dims == 1 else None
        if this is None:
            shape = f" of shape {tuple(x.shape)}" if dims is not None else ""
            raise UserDataError(
                f"{where(i)}: x is a {type(x).__name__}{shape}; expected a PIL image, an image tensor "
                "(C, H, W) or array (H, W, C), or a 1-D feature vector"
            )
        if kind is None:
            kind, first_x = this, x
        elif this != kind:
            raise UserDataError(f"{where(i)}: x holds {this} where sample 0 holds {kind}")
        if this == "images":
            floats |= (isinstance(x, Tensor) and x.is_floating_point()) or (
                isinstance(x, np.ndarray) and x.dtype.kind == "f")
            images.append(_memory_image(x, torch_layout=isinstance(x, Tensor), where=where(i), label="(pixels)"))
        else:
            v = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
            if vectors and len(v) != len(vectors[0]):
                raise UserDataError(f"{where(i)}: x holds {len(v)} features where sample 0 holds {len(vectors[0])}")
            vectors.append(v)
        labels.append(y)
    if kind is None:
        raise UserDataError(f"{source}: zero samples")

    # torchvision's datasets name their classes; the class indices they yield index that list.
    class_source = "the classes argument"
    names = getattr(ds, "classes", None)
    if given is None and isinstance(names, (list, tuple)) and names and all(isinstance(c, str) for c in names):
        given, class_source = _check_class_list(list(names), f"{source}.classes"), f"{source}.classes"
    targets, classes, why = _encode(_label_values(labels, lambda i: f"{where(i)}, y", f"{source}: y"), given,
                                    lambda i: f"{where(i)}, y", class_source)
    _check_classes_used(targets, classes, f"{source}: y")
    ids = [f"row {i}" for i in range(len(targets))]
    count = len(targets)
    if isinstance(first_x, Image.Image):
        what = f"PIL image ({first_x.mode}, {first_x.width}x{first_x.height})"
    else:
        what = f"{type(first_x).__name__} {tuple(first_x.shape)}"
    choices: dict[str, Any] = {
        "kind": {"value": kind, "why": f"torch Dataset {source}: {count:,} samples, x is a {what}"},
        "classes": _class_choice(classes, targets, why),
    }
    if kind == "features":
        x = np.stack(vectors)
        if x.dtype.kind not in "biuf":
            raise UserDataError(f"{source}: features of dtype {x.dtype}; they must be numbers")
        features = _to_float32(x, lambda i, j: f"{where(i)}, x[{j}]")
        return _features_data(source, features, targets, classes, ids, choices)
    if floats:
        choices["pixels"] = {"value": "x 255, rounded", "why": "float pixels in [0, 1] stored as uint8"}
    return _images_data(source, ids, images, targets, classes, where, choices, opts)


# ---------------------------------------------------------------------------------------------
# tables: DataFrame, datasets.Dataset, parquet, save_to_disk
# ---------------------------------------------------------------------------------------------
@dataclass
class _Table:
    """Every form of table as one pandas DataFrame, with the ``datasets`` features that name
    classes (``ClassLabel``) and mark images (``Image``) when the source has them."""

    source: str
    frame: Any  # pandas.DataFrame
    features: Any = None  # datasets.Features
    base: Path | None = None  # relative image paths start here


def _split_of(data: Any, split: str | None, source: str, choices: dict[str, Any]) -> Any:
    datasets = sys.modules["datasets"]
    if not isinstance(data, datasets.DatasetDict):
        if split is not None:
            raise UserDataError(f"{source}: split={split!r} was given but this is one Dataset, not a DatasetDict")
        return data
    splits = list(data)
    if split is not None:
        if split not in data:
            raise UserDataError(f"{source}: no split {split!r}; the DatasetDict holds {', '.join(splits)}")
        choices["split"] = {"value": split, "why": "given"}
        return data[split]
    if "train" not in data:
        raise UserDataError(
            f"{source}: a DatasetDict with the splits {', '.join(splits)} and none named 'train'; pass split="
        )
    others = [s for s in splits if s != "train"]
    choices["split"] = {
        "value": "train",
        "why": f"a DatasetDict; 'train' taken, {', '.join(others) or 'no other split'} left (split= picks one)",
    }
    return data["train"]


def _from_hf(data: Any, split: str | None, source: str, base: Path | None, choices: dict[str, Any]) -> _Table:
    _require("pandas", "a Hugging Face dataset")
    ds = _split_of(data, split, source, choices)
    return _Table(source, ds.to_pandas(), ds.features, base)


def _read_path(path: Path, split: str | None, choices: dict[str, Any]) -> _Table:
    if not path.exists():
        raise UserDataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        pa = _require("pyarrow", "reading a .parquet file")
        pq = _require("pyarrow.parquet", "reading a .parquet file")
        _require("pandas", "reading a .parquet file")
        if split is not None:
            raise UserDataError(f"{path}: split={split!r} applies to a DatasetDict folder, not a parquet file")
        try:
            table = pq.read_table(path)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise UserDataError(f"{path}: cannot read the parquet file ({e})") from None
        features = None
        if b"huggingface" in (table.schema.metadata or {}):
            # Written by datasets (to_parquet, the Hub): its schema metadata holds the ClassLabel
            # names and the Image columns, which only datasets reads back.
            datasets = _require("datasets", "a parquet file written by Hugging Face datasets")
            features = datasets.Features.from_arrow_schema(table.schema)
        return _Table(str(path), table.to_pandas(), features, path.parent)
    if _is_hf_folder(path):
        datasets = _require("datasets", "a folder written by datasets' save_to_disk")
        try:
            data = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as e:
            raise UserDataError(f"{path}: cannot load the save_to_disk folder ({e})") from None
        return _from_hf(data, split, str(path), path.parent, choices)
    raise UserDataError(
        f"{path}: expected a {'/'.join(TABLE_SUFFIXES)} file or a folder written by datasets' save_to_disk; "
        "CSV lists, class folders and .npz files are read by load_user_data"
    )


def _column_kind(series: Any, feature: Any) -> str:
    """image | path | number | vector | classes | text | other, for choosing columns."""
    pd = sys.modules["pandas"]
    datasets = sys.modules.get("datasets")
    if datasets is not None and feature is not None:
        if isinstance(feature, datasets.Image):
            return "image"
        if isinstance(feature, datasets.ClassLabel):
            return "classes"
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "number"
    valid = series[series.notna()]
    if not len(valid):
        return "other"
    first = valid.iloc[0]
    if isinstance(first, (Image.Image, bytes, bytearray)) or (isinstance(first, dict) and "bytes" in first):
        return "image"
    if isinstance(first, str):
        paths = all(isinstance(v, str) and v.strip().lower().endswith(IMG_EXTENSIONS) for v in valid)
        return "path" if paths else "text"
    if isinstance(first, (np.ndarray, list, tuple)):
        return "vector"
    if isinstance(first, (int, float, np.number)):
        return "number"
    return "other"


def _pick_inputs(
    table: _Table, used: list[Any], image_column: Any, feature_columns: Any
) -> tuple[str, list[Any], str]:
    """("images" | "features", columns, why)."""
    if image_column is not None:
        return "images", [image_column], "given"
    if feature_columns is not None:
        return "features", list(feature_columns), "given"
    features = table.features or {}
    kinds = {c: _column_kind(table.frame[c], features.get(c)) for c in table.frame.columns if c not in used}
    of = {k: [c for c, v in kinds.items() if v == k] for k in ("image", "path", "number", "vector")}
    datasets = sys.modules.get("datasets")

    def names(cols: Sequence[Any]) -> str:
        return ", ".join(repr(c) for c in cols)

    for k, what in (("image", "images"), ("path", "image file paths")):
        if len(of[k]) > 1:
            raise UserDataError(f"{table.source}: columns {names(of[k])} all hold {what}; pass image_column")
        if of[k]:
            rest = [c for c in kinds if c != of[k][0]]
            note = f"; not used: {names(rest)}" if rest else ""
            feature = datasets is not None and isinstance(features.get(of[k][0]), datasets.Image)
            typed = " (Image feature)" if feature else ""
            return "images", of[k], f"the only column of {what}{typed}{note}"
    if of["number"] and of["vector"]:
        raise UserDataError(
            f"{table.source}: both numeric columns ({names(of['number'])}) and vector columns "
            f"({names(of['vector'])}) could be the features; pass feature_columns"
        )
    if of["number"]:
        return "features", of["number"], f"every numeric column but the label and the id ({len(of['number'])})"
    if len(of["vector"]) == 1:
        return "features", of["vector"], "the only column holding a vector per row"
    if of["vector"]:
        raise UserDataError(f"{table.source}: columns {names(of['vector'])} all hold vectors; pass feature_columns")
    raise UserDataError(
        f"{table.source}: no column of images, image paths or numbers besides the label; columns: "
        f"{names(table.frame.columns)}. Pass image_column or feature_columns"
    )


def _table_features(
    frame: Any, columns: list[Any], at: Callable[[Any, int], str]
) -> tuple[np.ndarray, list[tuple[Any, int | None]]]:
    """The columns as (N, D) float64 numbers and, per feature, (column, element of its vector or
    None); a vector column adds its length to D."""
    pd = sys.modules["pandas"]
    blocks: list[np.ndarray] = []
    origin: list[tuple[Any, int | None]] = []
    for c in columns:
        s = frame[c]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            blocks.append(s.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            origin.append((c, None))
            continue
        rows: list[Any] = []
        width = first = None
        for i, v in enumerate(s.to_numpy(dtype=object)):
            if _is_missing(v):
                raise UserDataError(f"{at(c, i)}: no value ({v!r})")
            if isinstance(v, (str, bytes)):
                raise UserDataError(f"{at(c, i)}: holds text {v!r:.40}; features are numbers")
            try:
                a = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                raise UserDataError(f"{at(c, i)}: holds {v!r:.60}, not numbers") from None
            if a.ndim > 1:
                raise UserDataError(f"{at(c, i)}: holds an array of shape {a.shape}; a feature cell is a number or a vector")
            if width is None:
                width, first = a.size if a.ndim else 0, i
            elif (a.size if a.ndim else 0) != width:
                n_here = a.size if a.ndim else "a number"
                n_first = width if width else "a number"
                raise UserDataError(f"{at(c, i)}: holds {n_here} values where row {first} holds {n_first}")
            rows.append(a)
        if width == 0:
            blocks.append(np.array(rows, dtype=np.float64)[:, None])
            origin.append((c, None))
        else:
            blocks.append(np.stack(rows))
            origin.extend((c, k) for k in range(width or 0))
    return np.concatenate(blocks, axis=1), origin


def _from_table(
    table: _Table,
    *,
    label_column: Any,
    image_column: Any,
    feature_columns: Any,
    id_column: Any,
    given: list[str] | None,
    opts: dict[str, Any],
    choices: dict[str, Any],
) -> UserData:
    frame, source = table.frame, table.source
    if image_column is not None and feature_columns is not None:
        raise UserDataError("give image_column or feature_columns, not both")
    if isinstance(feature_columns, (str, int)):
        feature_columns = [feature_columns]
    named = [label_column] + ([image_column] if image_column is not None else []) + list(feature_columns or [])
    named += [id_column] if id_column is not None else []
    present = list(frame.columns)
    for c in named:
        if c not in present:
            raise UserDataError(f"{source}: no column {c!r}; the columns are {', '.join(repr(p) for p in present)}")
    twice = next((c for c in named if named.count(c) > 1), None)
    if twice is not None:
        raise UserDataError(f"{source}: column {twice!r} is named twice among the label, id and input columns")
    n = len(frame)
    if n == 0:
        raise UserDataError(f"{source}: zero rows")

    ids = [f"row {i}" for i in range(n)]
    if id_column is not None:
        ids = _ids(frame[id_column].to_numpy(dtype=object), lambda i: f"{source}: column {id_column!r}, row {i}")

    def at(column: Any, i: int) -> str:
        return f"{source}: column {column!r}, row {i}" + (f" (id {ids[i]!r})" if id_column is not None else "")

    # A ClassLabel or a pandas categorical holds class codes and names the classes in its order.
    pd = sys.modules["pandas"]
    datasets = sys.modules.get("datasets")
    feature = (table.features or {}).get(label_column)
    column = frame[label_column]
    where_label = lambda i: at(label_column, i)  # noqa: E731
    class_source, known, codes = "the classes argument", given, None
    if datasets is not None and isinstance(feature, datasets.ClassLabel):
        codes, names = "ClassLabel", list(feature.names)
    elif isinstance(column.dtype, pd.CategoricalDtype) and given is None:
        codes, names = "categorical", [str(c) for c in column.cat.categories]
        column = column.cat.codes.astype(np.int64)
    if codes is not None and given is None:
        class_source = f"the {'categories' if codes == 'categorical' else codes} of column {label_column!r}"
        known = _check_class_list(names, f"{source}: {class_source}")
    values = _label_values(column, where_label, f"{source}: column {label_column!r}")
    targets, classes, why = _encode(values, known, where_label, class_source, codes=codes)
    _check_classes_used(targets, classes, f"{source}: column {label_column!r}")

    used = [label_column] + ([id_column] if id_column is not None else [])
    kind, columns, pick_why = _pick_inputs(table, used, image_column, feature_columns)
    if kind == "images":
        (col,) = columns
        images = [_image_source(v, table.base, at(col, i)) for i, v in enumerate(frame[col].to_numpy(dtype=object))]
        files = sum(isinstance(s, str) for s in images)
        if files == n:
            held = "image files" + (f", paths relative to {table.base.resolve()}" if table.base is not None else "")
        else:
            held = "images held in memory" + (f" and {files:,} image files" if files else "")
        choices["kind"] = {"value": "images", "why": f"{source}: {n:,} rows of {held}"}
        choices["image_column"] = {"value": str(col), "why": pick_why}
        choices["classes"] = _class_choice(classes, targets, why)
        return _images_data(source, ids, images, targets, classes, lambda i: at(col, i), choices, opts)
    x, origin = _table_features(frame, columns, at)
    if x.shape[1] == 0:
        raise UserDataError(f"{source}: columns {', '.join(repr(c) for c in columns)} hold zero features")

    def locate(i: int, j: int) -> str:
        column, element = origin[j]
        return at(column, i) + ("" if element is None else f", element {element}")

    features = _to_float32(x, locate)
    choices["kind"] = {"value": "features", "why": f"{source}: {n:,} rows x {x.shape[1]} features, stored as float32"}
    choices["feature_columns"] = {"value": [str(c) for c in columns], "why": pick_why}
    choices["classes"] = _class_choice(classes, targets, why)
    return _features_data(source, features, targets, classes, ids, choices)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def load_table_data(
    data: Any,
    *,
    labels: Any = None,
    label_column: Any = "label",
    image_column: Any = None,
    feature_columns: Any = None,
    id_column: Any = None,
    classes: Sequence[str] | None = None,
    split: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    max_image_size: int = 64,
    memory_budget_bytes: int | None = None,
    progress: bool = False,
) -> UserData:
    """Load, check and measure a user's labelled data held as arrays, a dataset or a table.

    Parameters
    ----------
    data
        One of

        * ``(X, y)``, or ``X`` with ``labels=y``: ``X`` (N, D) numbers are features; ``X``
          (N, H, W) or (N, H, W, C) uint8, or floats in [0, 1], are images (a torch tensor of
          images is (N, C, H, W)); ``y`` (N,) class indices or names;
        * a torch ``Dataset`` yielding ``(x, y)``: ``x`` a PIL image, an image tensor (C, H, W),
          an image array (H, W, C) or a feature vector (D,); read once, so give it without
          random augmentation (training adds its own);
        * a pandas ``DataFrame``, a ``datasets.Dataset`` or ``DatasetDict``, a path to a
          ``.parquet`` file, or a path to a folder written by ``save_to_disk``: one row per sample.
    labels : array-like (N,), optional
        The labels of an ``X`` given alone.
    label_column
        The column of labels: integers (class indices, classes "0".."max"), names (sorted), or
        class codes that name their classes in order (a ``ClassLabel``, a pandas categorical).
    image_column
        A column of images: PIL images, the ``Image`` feature, encoded bytes (PNG, JPEG, ...), or
        file paths (relative to the folder of a parquet file or save_to_disk folder).
    feature_columns
        Numeric columns, or one column holding a vector (an embedding) per row, or both; the
        features are their values side by side, (N, D).
    id_column
        The user's id of each row, returned in ``ids``; by default ``"row i"``.
    classes : sequence of str, optional
        The class list and order, overriding a ``ClassLabel`` or a torchvision dataset's
        ``classes``.
    split : str, optional
        The split of a ``DatasetDict``; by default ``"train"``, recorded in ``choices``.
    image_size, channels, max_image_size, memory_budget_bytes, progress
        As for :func:`~dataparams.data.user.load_user_data`. Images held in memory (not as
        files) are decoded into memory; a table of image paths may stream.

    When neither ``image_column`` nor ``feature_columns`` is given, the only column of images
    (or else of image file paths) is used, or else every numeric column but the label and the
    id, or else the only column of vectors; the choice and why is in ``choices``.

    Returns
    -------
    UserData
        As :func:`~dataparams.data.user.load_user_data` returns; a table of images equals a CSV
        list of the same image files, except ``ids``, ``source`` and ``choices["kind"]``. Images
        held in memory have ``paths=None``.

    Raises
    ------
    UserDataError
        Naming the column (or array) and the row: a missing column (the columns present are
        listed), a missing (None/NaN) or unusable label, id or feature, vectors of different
        lengths, an unreadable image, fewer than two classes, ``X`` and ``y`` of different
        lengths, a DatasetDict without the split.
    ImportError
        When pandas, pyarrow or ``datasets`` is needed and missing: ``pip install
        'dataparams[tables]'``.
    TypeError
        For a ``data`` of another type.
    """
    if channels is not None and channels not in (1, 3):
        raise UserDataError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise UserDataError(f"image_size must be >= 1, got {image_size}")
    if max_image_size < 4:
        raise UserDataError(f"max_image_size must be >= 4, got {max_image_size}")
    if memory_budget_bytes is not None and memory_budget_bytes < 0:
        raise UserDataError(f"memory_budget_bytes must be >= 0, got {memory_budget_bytes}")
    given = None if classes is None else _check_class_list(list(classes), "classes argument")
    opts = {
        "image_size": image_size, "max_image_size": max_image_size, "channels": channels,
        "memory_budget_bytes": memory_budget_bytes, "progress": progress,
    }

    if isinstance(data, tuple):
        if len(data) != 2 or labels is not None:
            raise UserDataError("give (X, y), or X with labels=y")
        return _from_arrays(data[0], data[1], given, opts)
    if isinstance(data, (np.ndarray, Tensor)):
        if labels is None:
            raise UserDataError("arrays: X was given without labels; pass (X, y) or labels=y")
        return _from_arrays(data, labels, given, opts)
    if labels is not None:
        raise UserDataError("labels= is for an X array; a dataset or table holds its labels")

    choices: dict[str, Any] = {}
    pd = sys.modules.get("pandas")
    datasets = sys.modules.get("datasets")
    if isinstance(data, (str, os.PathLike)):
        table = _read_path(Path(data).expanduser(), split, choices)
    elif pd is not None and isinstance(data, pd.DataFrame):
        if split is not None:
            raise UserDataError("split= applies to a DatasetDict, not a DataFrame")
        table = _Table("DataFrame", data)
    elif datasets is not None and isinstance(data, (datasets.Dataset, datasets.DatasetDict)):
        table = _from_hf(data, split, "Dataset", None, choices)
    elif isinstance(data, Dataset):
        if split is not None:
            raise UserDataError("split= applies to a DatasetDict, not a torch Dataset")
        return _from_torch(data, given, opts, progress)
    else:
        raise TypeError(
            f"data of type {type(data).__name__}; expected (X, y) arrays, a torch Dataset, a pandas DataFrame, "
            "a datasets.Dataset, a .parquet file or a save_to_disk folder"
        )
    return _from_table(
        table, label_column=label_column, image_column=image_column, feature_columns=feature_columns,
        id_column=id_column, given=given, opts=opts, choices=choices,
    )
