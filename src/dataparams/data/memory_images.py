"""Images held in memory, not as files: encoded bytes (PNG, JPEG, the ``datasets`` ``Image``
feature), PIL images and pixel arrays or tensors, read by the rules for image files.

Notation: ``N`` samples, ``S`` the common image side, ``C`` channels (1 or 3).

Each image becomes something ``PIL.Image.open`` reads (:class:`MemoryImage`): encoded bytes as
they are, decoded pixels as an uncompressed in-memory image file holding exactly those pixels. Then
they are measured by the rule for files (:func:`~dataparams.data.images.side_and_channels`) and
decoded by :func:`~dataparams.data.decode.decode_image`, into memory, so that a table of images and
a folder of the same images give identical arrays. A table of file paths goes to
:func:`~dataparams.data.images.load_images` as a CSV list of them would (:func:`images_data`).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from dataparams.data.fingerprint import bytes_digest, classes_digest, fingerprint_choice, labels_digest
from dataparams.data.images import (
    decode_all,
    human_bytes,
    load_images,
    memory_need,
    parallel,
    pixel_stat_choices,
    pixel_stats,
    raise_first,
    side_and_channels,
)
from dataparams.data.labels import is_missing
from dataparams.data.userdata import UserData, UserDataError

__all__ = ["MemoryImage", "image_source", "images_data", "memory_image", "pixels_to_uint8"]

_Where = Callable[[int], str]


class MemoryImage(io.BytesIO):
    """An encoded image held in memory: ``PIL.Image.open`` reads it like a file, ``str()`` says
    what it is in error messages (:func:`~dataparams.data.images.raise_first`)."""

    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(data)
        self.label = label

    def __str__(self) -> str:
        return self.label


def _pixels_file(x: Image.Image | np.ndarray) -> bytes:
    """Decoded pixels as an uncompressed image file holding exactly them.

    8-bit grey and RGB become binary PGM/PPM (a text header and the raw bytes: no encoder, a few
    microseconds per image); every other mode (RGBA, palette, 16-bit grey, CMYK, ...) becomes an
    uncompressed TIFF, which keeps the mode so that it is converted as the file would be.
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


def pixels_to_uint8(x: np.ndarray, where: str) -> np.ndarray:
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
    return pixels_to_uint8(x, where)


def memory_image(x: Any, *, torch_layout: bool, where: str, label: str) -> MemoryImage:
    """One image given as pixels -- a PIL image, an (H, W[, C]) array, or a (C, H, W) tensor when
    ``torch_layout`` -- as a :class:`MemoryImage` named ``label``; ``where`` names it in errors."""
    if not isinstance(x, Image.Image):
        x = _image_array(x, torch_layout=torch_layout, where=where)
    try:
        data = _pixels_file(x)
    except (OSError, ValueError, KeyError) as e:  # a lazily opened file that fails, a mode TIFF lacks
        mode = f" (mode {x.mode})" if isinstance(x, Image.Image) else ""
        raise UserDataError(f"{where}: the image{mode} cannot be read or stored ({type(e).__name__}: {e})") from None
    return MemoryImage(data, label)


def image_source(v: Any, base: Path | None, where: str) -> str | MemoryImage:
    """One cell of an image column as something ``PIL.Image.open`` reads: a file path or an
    in-memory file."""
    if isinstance(v, dict) and ("bytes" in v or "path" in v):  # the Image feature's storage
        if v.get("bytes") is not None:
            name = f"{v['path']} " if v.get("path") else ""
            return MemoryImage(bytes(v["bytes"]), f"{name}({len(v['bytes']):,} bytes)")
        v = v.get("path")
    if is_missing(v):
        raise UserDataError(f"{where}: no image ({v!r})")
    if isinstance(v, (str, os.PathLike)):
        p = os.fspath(v).strip()
        if not p:
            raise UserDataError(f"{where}: empty path")
        return str(base / p) if base is not None else p  # an absolute p replaces base
    if isinstance(v, (bytes, bytearray, memoryview)):
        return MemoryImage(bytes(v), f"({len(v):,} bytes)")
    if isinstance(v, (Image.Image, np.ndarray, Tensor)):
        return memory_image(v, torch_layout=isinstance(v, Tensor), where=where, label="(pixels)")
    raise UserDataError(
        f"{where}: holds a {type(v).__name__}; an image cell is a PIL image, encoded bytes, a file path "
        "or an (H, W[, C]) array"
    )


def _scan_memory(
    images: list[str | MemoryImage], where: _Where, progress: bool
) -> tuple[np.ndarray, list[str], str]:
    """Open and verify every image: (N, 2) (width, height) as stored, the N modes, and a digest
    of their bytes (of a file: its path, size and modification time)."""

    def one(i: int) -> tuple[tuple[int, int], str, str] | BaseException:
        try:
            src = images[i]
            if isinstance(src, MemoryImage):
                key = hashlib.sha256(src.getbuffer()).hexdigest()
            else:
                st = os.stat(src)
                key = f"{src}\t{st.st_size}\t{st.st_mtime_ns}"
            with Image.open(src) as im:
                size, mode = im.size, im.mode
                im.verify()  # the structure only: the decode below checks the pixel data
            return size, mode, key
        except Exception as e:  # reported with its row by raise_first
            return e

    results = parallel(one, len(images), desc="checking images", progress=progress)
    raise_first([(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)], images, where)  # type: ignore[arg-type]
    sizes = np.array([r[0] for r in results], dtype=np.int64).reshape(-1, 2)
    digest = bytes_digest("\n".join(r[2] for r in results).encode())  # type: ignore[index]
    return sizes, [r[1] for r in results], digest  # type: ignore[index]


def _memory_images(
    source: str,
    ids: list[str],
    images: list[str | MemoryImage],
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
    """Images held in memory, measured by the rule for files (:func:`~dataparams.data.images.side_and_channels`)
    and decoded by :func:`~dataparams.data.decode.decode_image` (the same resize and conversion), into memory, since there are
    no files to stream from."""
    n = len(images)
    sizes, modes, digest = _scan_memory(images, where, progress)
    side, c = side_and_channels(sizes, modes, images, where, choices, image_size=image_size,
                                 max_image_size=max_image_size, channels=channels)

    nbytes, memory_budget_bytes, budget_why = memory_need(n, c, side, memory_budget_bytes)
    size_why = (
        f"{n:,} x {c} x {side} x {side} uint8 = {human_bytes(nbytes)}, budget {human_bytes(memory_budget_bytes)} "
        f"({budget_why})"
    )
    if nbytes > memory_budget_bytes:
        raise UserDataError(
            f"{source}: {size_why}; images held in memory, not as files, are decoded into memory. Pass a smaller "
            "image_size or a larger memory_budget_bytes, or write the images to files and load a CSV list of them "
            "(streamed)"
        )
    choices["storage"] = {"value": "memory", "why": f"{size_why}; the images are in memory, not files"}
    pixels = decode_all(images, np.arange(n), side, c, where, progress)  # type: ignore[arg-type]
    mean, std = pixel_stats(pixels)
    choices.update(pixel_stat_choices(mean, std, f"all {n:,} images"))
    parts = {"labels": labels_digest, "images": f"{n:,} images, {digest}", "classes": classes_digest(classes)}
    choices["data"] = fingerprint_choice(parts, "sha256 of the labels, the ids and every image's bytes")
    return UserData(
        kind="images", targets=targets, classes=classes, ids=ids, source=source, images=pixels,
        image_size=side, channels=c, mean=mean, std=std, choices=choices,
    )


def images_data(
    source: str,
    ids: list[str],
    images: list[str | MemoryImage],
    targets: np.ndarray,
    classes: list[str],
    where: _Where,
    choices: dict[str, Any],
    opts: dict[str, Any],
) -> UserData:
    """Image files go to :func:`~dataparams.data.images.load_images` as they are (measured, fingerprinted and perhaps streamed as a
    CSV list of them would be); images in memory are decoded by the same rules."""
    labels = labels_digest(targets, ids)
    if all(isinstance(s, str) for s in images):
        return load_images(
            Path(source), ids, images, targets, classes, where, choices, {"labels": labels}, **opts  # type: ignore[arg-type]
        )
    return _memory_images(source, ids, images, targets, classes, where, choices, labels, **opts)
