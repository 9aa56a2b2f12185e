"""A user's images checked, measured and decoded: every file opened and verified, the common side
and channels, the memory budget, every image decoded once, the pixel statistics.

Notation: ``N`` samples, ``S`` the common image side, ``C`` channels (1 or 3).

Image files (:mod:`~dataparams.data.user`) and images held in memory
(:mod:`~dataparams.data.memory_images`) are measured by one rule (:func:`side_and_channels`) and
decoded by one function (:func:`~dataparams.data.decode.decode_image`), so that the same images
give the same arrays either way. Decoding runs in a thread pool (Pillow releases the GIL while
decoding). :func:`load_images` holds the decoded images in one uint8 (N, S, S, C) array when they
fit the memory budget (:func:`default_memory_budget`), and otherwise still decodes every file
once and streams them through :class:`~dataparams.data.decode.UserImageDataset`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dataparams.data.decode import UserImageDataset, decode_image
from dataparams.data.fingerprint import classes_digest, fingerprint_choice
from dataparams.data.userdata import UserData, UserDataError

__all__ = [
    "MAX_DECODE_PIXELS",
    "ImageTooLarge",
    "decode_all",
    "default_memory_budget",
    "human_bytes",
    "load_images",
    "memory_need",
    "parallel",
    "pixel_stat_choices",
    "pixel_stats",
    "raise_first",
    "side_and_channels",
]

# Modes that carry one intensity per pixel; everything else (RGB, RGBA, palette, CMYK, ...)
# is colour and becomes RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# Streaming measures mean/std on this many images: on Fashion-MNIST, five seeded samples of
# 2,000 of the 60,000 land within 0.004 of the full mean and std; decoding them takes seconds.
_STATS_SAMPLE = 2000
_STATS_SEED = 0
_GIB = 1 << 30


# ---------------------------------------------------------------------------------------------
# reading many images in parallel
# ---------------------------------------------------------------------------------------------
def _num_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    # Twice the cores: decoding is CPU-bound but files on network disks wait on I/O.
    return max(1, min(16, 2 * cpus))


def parallel(fn: Callable[[int], Any], n: int, *, desc: str, progress: bool) -> list[Any]:
    """``[fn(i) for i in range(n)]`` on a thread pool, in order, with a progress bar."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=_num_threads()) as pool:
        results = pool.map(fn, range(n))
        return list(tqdm(results, total=n, desc=desc, unit="img", disable=not progress, leave=False))


class ImageTooLarge(ValueError):
    """An image whose format is decoded at full size and has more than :data:`MAX_DECODE_PIXELS`."""


#: Images other than JPEG (whose decoder can downscale while decoding) are decoded at full size,
#: in several threads at once: one of 100 megapixels is 300 MB of RGB per thread. Above this
#: many pixels the up-front check refuses the file, naming it, rather than risk the memory.
MAX_DECODE_PIXELS = 64_000_000


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, ImageTooLarge):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not an image"
    if isinstance(exc, PermissionError):
        return "cannot be read (permission denied)"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "is not an image Pillow can read"
    return f"is corrupt or unreadable ({type(exc).__name__}: {exc})"


def raise_first(failures: list[tuple[int, BaseException]], paths: list[str], where: Callable[[int], str]) -> None:
    """One error for the first bad image in sample order, counting the others."""
    if not failures:
        return
    failures.sort(key=lambda f: f[0])
    i, exc = failures[0]
    more = ""
    if len(failures) > 1:
        others = ", ".join(where(j) for j, _ in failures[1:4])
        more = f" ({len(failures) - 1} more bad images, e.g. {others})"
    raise UserDataError(f"{where(i)}: image {paths[i]} {_describe_failure(exc)}{more}") from exc


def _scan(
    paths: list[str], where: Callable[[int], str], progress: bool
) -> tuple[np.ndarray, list[str], list[tuple[int, int]]]:
    """Open and verify every file: (N, 2) (width, height) as stored, the N modes, and the N
    ``(st_size, st_mtime_ns)`` of the files (for the fingerprint).

    The sizes ignore EXIF orientation: what they decide (the longer side, whether an image is
    square) does not depend on a quarter turn, and reading the tag can cost a decode (PNG)."""

    def one(i: int) -> tuple[tuple[int, int], str, tuple[int, int]] | BaseException:
        try:
            st = os.stat(paths[i])
            with Image.open(paths[i]) as im:
                size, mode = im.size, im.mode
                if im.format != "JPEG" and size[0] * size[1] > MAX_DECODE_PIXELS:
                    raise ImageTooLarge(
                        f"is {size[0]:,} x {size[1]:,} pixels ({size[0] * size[1] / 1e6:.0f} MP): a {im.format} image "
                        f"is decoded at full size, and above {MAX_DECODE_PIXELS / 1e6:.0f} MP that is refused for "
                        "the memory it takes; downscale it (the network sees a few hundred pixels a side) or save "
                        "it as JPEG, which is decoded at reduced size")
                # Checks the file's structure (PNG checksums, truncation) without decoding it; a
                # JPEG's data is not checked, which is why every image is decoded before training.
                im.verify()
            return size, mode, (st.st_size, st.st_mtime_ns)
        except Exception as e:  # any failure is reported with its file; nothing is swallowed
            return e

    results = parallel(one, len(paths), desc="checking images", progress=progress)
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    raise_first(failures, paths, where)
    sizes = np.array([r[0] for r in results], dtype=np.int64).reshape(-1, 2)
    return sizes, [r[1] for r in results], [r[2] for r in results]


def decode_all(
    paths: list[str],
    index: np.ndarray,
    side: int,
    channels: int,
    where: Callable[[int], str],
    progress: bool,
    *,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Decode the images at ``index`` in parallel, raising for the first that fails; return
    uint8 (len(keep), S, S, C), those at positions ``keep`` of ``index`` (by default all)."""
    slot = np.arange(len(index))
    if keep is not None:
        slot = np.full(len(index), -1)
        slot[keep] = np.arange(len(keep))
    out = np.empty((len(index) if keep is None else len(keep), side, side, channels), dtype=np.uint8)

    def one(j: int) -> BaseException | None:
        try:
            arr = decode_image(paths[index[j]], side, channels)
            if slot[j] >= 0:
                out[slot[j]] = arr
        except Exception as e:  # reported below with its file and row
            return e
        return None

    results = parallel(one, len(index), desc="decoding images", progress=progress)
    failures = [(int(index[j]), e) for j, e in enumerate(results) if e is not None]
    raise_first(failures, paths, where)
    return out


def pixel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 (N, S, S, C) in [0, 1], exact, in bounded memory.

    A 256-bin histogram per channel holds everything mean and variance need, and a float
    copy of the whole array (8x its size) is never made.
    """
    c = images.shape[-1]
    counts = np.zeros((c, 256), dtype=np.int64)
    step = max(1, (1 << 24) // max(1, images[0].size if len(images) else 1))
    for a in range(0, len(images), step):
        chunk = images[a : a + step]
        for ch in range(c):
            counts[ch] += np.bincount(chunk[..., ch].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * values**2).sum(1) / total - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    std[std < 1e-6] = 1.0  # a constant channel: centring is all normalisation can do
    return mean.astype(np.float32), std.astype(np.float32)


def human_bytes(n: float) -> str:
    """``n`` bytes for messages, in binary units up to GiB: ``"512 B"``, ``"1.5 GiB"``."""
    units = ("B", "KiB", "MiB", "GiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:,.0f} B" if k == 0 else f"{n:,.1f} {units[k]}"


def default_memory_budget() -> tuple[int, str]:
    """Bytes of decoded pixels to hold in memory: min(4 GiB, 25% of available memory).

    A quarter leaves room for the model, the DataLoader and whatever else runs. The cap because
    the in-memory loader keeps the whole array on the training device, where a GPU also needs
    room for the model and its activations, and because decoding everything up front delays the
    first epoch, which streaming overlaps with training.

    Returns
    -------
    budget : int
        Bytes.
    why : str
        How it was computed, for :attr:`UserData.choices`.
    """
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return _GIB, "1.0 GiB (available memory unknown)"
    budget = int(min(4 * _GIB, 0.25 * available))
    return budget, f"min(4 GiB, 25% of {available / _GIB:.1f} GiB available)"


def memory_need(n: int, channels: int, side: int, budget: int | None) -> tuple[int, int, str]:
    """Bytes of ``n`` decoded uint8 images, the memory budget (measured when None) and why it is that."""
    why = "given"
    if budget is None:
        budget, why = default_memory_budget()
    return n * channels * side * side, budget, why


# ---------------------------------------------------------------------------------------------
# measuring and decoding images
# ---------------------------------------------------------------------------------------------
def _round_to_4(x: float) -> int:
    return max(4, 4 * int(math.floor(x / 4 + 0.5)))


def side_and_channels(
    sizes: np.ndarray,
    modes: Sequence[str],
    images: Sequence[Any],
    where: Callable[[int], str],
    choices: dict[str, Any],
    *,
    image_size: int | None,
    max_image_size: int,
    channels: int | None,
) -> tuple[int, int]:
    """The common side ``S`` and the channels ``C`` of N images, from their stored (width,
    height) (N, 2) and modes: the one rule for image files and for images held in memory
    (:mod:`dataparams.data.memory_images`), so that the same images give the same arrays either way.

    ``S`` is ``image_size`` when given, else the median longer side rounded to a multiple of 4 and
    capped at ``max_image_size``; ``C`` is ``channels`` when given, else 3 when any image is
    colour and 1 when all are grey. The ``image_size``, ``resize`` and ``channels`` choices are
    recorded in ``choices``. An image of 32-bit float pixels (no fixed range) is refused, named
    by ``where(i)`` and ``images[i]``.
    """
    n = len(modes)
    for i, mode in enumerate(modes):
        if mode == "F":
            raise UserDataError(
                f"{where(i)}: image {images[i]} has 32-bit float pixels with no fixed range; "
                "save it with 8 or 16 bits"
            )

    median = float(np.median(sizes.max(1)))
    cap = max(4, (max_image_size // 4) * 4)
    if image_size is None:
        side = min(_round_to_4(median), cap)
        capped = "; capped" if _round_to_4(median) > cap else ""
        why = (f"median longer side of {n:,} images is {median:g} px, rounded to a multiple of 4; "
               f"cap {cap}{capped}")
    else:
        side = int(image_size)
        why = f"given; the median longer side of {n:,} images is {median:g} px"
    choices["image_size"] = {"value": side, "why": why}
    need = int((sizes != side).any(1).sum())
    stretched = int((sizes[:, 0] != sizes[:, 1]).sum())
    squash = f"; {stretched:,} are not square and are stretched (not cropped)" if stretched else ""
    choices["resize"] = {
        "value": f"bilinear to {side}x{side}",
        "why": (f"{need:,} of {n:,} images resized{squash}" if need
                else f"all {n:,} images are already {side}x{side}"),
    }

    colour = Counter(m for m in modes if m not in _GRAY_MODES)
    if channels is None:
        c = 3 if colour else 1
        if colour:
            kinds = ", ".join(f"{m} {k:,}" for m, k in colour.most_common())
            why = (f"{sum(colour.values()):,} of {n:,} images are colour ({kinds}); grey ones are repeated "
                   "to RGB")
        else:
            kinds = ", ".join(f"{m} {k:,}" for m, k in Counter(modes).most_common())
            why = f"all {n:,} images are greyscale ({kinds})"
    else:
        c = int(channels)
        why = f"given; {sum(colour.values()):,} of {n:,} images are colour"
    choices["channels"] = {"value": c, "why": why}
    return side, c


def pixel_stat_choices(mean: np.ndarray, std: np.ndarray, stats_on: str) -> dict[str, Any]:
    """The ``mean`` and ``std`` choices of images whose per-channel statistics were measured on
    ``stats_on`` (e.g. "all 2,000 decoded images")."""
    return {"mean": {"value": [round(float(v), 4) for v in mean], "why": f"per channel, pixels in [0, 1], on {stats_on}"},
            "std": {"value": [round(float(v), 4) for v in std], "why": f"per channel, on {stats_on}"}}


def load_images(
    source: Path,
    ids: list[str],
    paths: list[str],
    targets: np.ndarray,
    classes: list[str],
    where: Callable[[int], str],
    choices: dict[str, Any],
    digests: dict[str, str],
    *,
    image_size: int | None,
    max_image_size: int,
    channels: int | None,
    memory_budget_bytes: int | None,
    progress: bool,
) -> UserData:
    """N image files (``paths``; ``ids`` name them in reports) checked, measured and decoded.

    Every file is opened and verified, then measured by :func:`side_and_channels` and decoded
    once: into one uint8 (N, S, S, C) array when that fits the memory budget, else kept as a
    :class:`~dataparams.data.decode.UserImageDataset` that decodes per batch, with mean and std
    measured on a seeded sample. ``where(i)`` names sample ``i`` in errors. ``choices``, the
    reader's so far, gains ``image_size``, ``resize``, ``channels``, ``storage``, ``mean``,
    ``std`` and ``data``, whose fingerprint is ``digests`` (of the files that hold the labels)
    with the image files and the classes. The keyword arguments are
    :func:`~dataparams.data.user.load_user_data`'s.
    """
    n = len(paths)
    sizes, modes, stats = _scan(paths, where, progress)
    side, c = side_and_channels(sizes, modes, paths, where, choices, image_size=image_size,
                                 max_image_size=max_image_size, channels=channels)

    nbytes, memory_budget_bytes, budget_why = memory_need(n, c, side, memory_budget_bytes)
    fits = nbytes <= memory_budget_bytes
    choices["storage"] = {
        "value": "memory" if fits else "streaming",
        "why": (
            f"{n:,} x {c} x {side} x {side} uint8 = {human_bytes(nbytes)} "
            f"{'fits' if fits else 'exceeds'} the budget of {human_bytes(memory_budget_bytes)} ({budget_why})"
            + ("" if fits else "; decoded per batch in DataLoader workers")
        ),
    }

    images = None
    dataset = None
    if fits:
        images = decode_all(paths, np.arange(n), side, c, where, progress)
        mean, std = pixel_stats(images)
        stats_on = f"all {n:,} decoded images"
    else:
        m = min(n, _STATS_SAMPLE)
        sample = np.sort(np.random.default_rng(_STATS_SEED).choice(n, size=m, replace=False))
        # Every file is decoded once, the sample kept: a truncated JPEG passes the scan's verify
        # and would otherwise stop training at the first epoch that draws it.
        mean, std = pixel_stats(decode_all(paths, np.arange(n), side, c, where, progress, keep=sample))
        stats_on = f"a seeded sample of {m:,} of the {n:,} images"
        dataset = UserImageDataset(paths, targets, image_size=side, channels=c, mean=mean, std=std)
    choices.update(pixel_stat_choices(mean, std, stats_on))
    files = hashlib.sha256()
    for name, (st_size, st_mtime) in zip(ids, stats):
        files.update(f"{name}\t{st_size}\t{st_mtime}\n".encode())
    parts = {
        **digests,
        "image files": f"{n:,} files, sha256 {files.hexdigest()[:16]}",
        "classes": classes_digest(classes),
    }
    what = f"sha256 of {source.name}'s bytes and of" if "list file" in digests else "sha256 of"
    choices["data"] = fingerprint_choice(parts, f"{what} every image's path, size and modification time")
    return UserData(
        kind="images", targets=targets, classes=classes, ids=ids, source=str(source), paths=paths,
        images=images, dataset=dataset, image_size=side, channels=c, mean=mean, std=std, choices=choices,
    )
