"""A user's own labelled data, checked and measured once: image files or feature vectors.

Notation: ``N`` samples, ``K`` classes, ``D`` features, ``S`` the common image side, ``C``
channels (1 or 3).

:func:`load_user_data` takes one path, the same for ``dataparams train --data PATH`` and
``dataparams find-issues --data PATH``:

* a CSV/TSV list whose header has the columns ``path`` and ``label`` (other columns ignored);
* a folder with one subfolder per class (the order of torchvision's ``ImageFolder``);
* an ``.npz`` holding ``X`` (N, D) features, e.g. embeddings from a pretrained model, and ``y``.

Nothing about the data is assumed: the image side, the channels and the normalisation are
measured on the files, and every such choice is returned with a one-line reason
(:attr:`UserData.choices`) so that a run can print and store why it trained the way it did.
Every file is opened and decoded before anything else happens, so a missing, corrupt or
truncated image, an unknown or missing label or a NaN feature stops the command with one
:class:`UserDataError` that names the file and the row, before a run directory exists.

Labels are read as a spreadsheet user means them: surrounding whitespace is stripped; labels
that are all whole numbers, however written (``1``, ``1.0``), are class indices; an empty cell
or a missing-value marker (``nan``, ``NA``, ``N/A``, ``null``, ...) is an error naming the rows,
as are fractional numbers and two spellings of one class that differ only in case (``Shirt``,
``shirt``) -- unless the class list (``classes.txt``) names them. A list that names one file
twice keeps the first row when the labels agree (noted in the choices) and is an error when they
do not.

Images are seen upright: a photo stored sideways with an EXIF orientation tag is transposed
(``PIL.ImageOps.exif_transpose``) wherever it is decoded. They are decoded once, in a thread pool
(Pillow releases the GIL while decoding), into one uint8 (N, S, S, C) array when that fits the
memory budget; otherwise every file is still decoded once up front (opening and verifying a
file does not decode JPEG data, so a truncated JPEG would otherwise fail mid-training), and
:class:`UserImageDataset` decodes them batch by batch in DataLoader workers with exactly the
same orientation, resize and channel conversion.

The data's fingerprint (the ``data`` choice, :attr:`UserData.fingerprint`) identifies what was
loaded, at the cost of one ``stat`` per image and one hash of the list or ``.npz`` file: a run
stores it in its config, and :class:`~dataparams.runs.RunDir` neither resumes nor reuses a run
whose data has changed since.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from dataparams.data.base import DatasetNotFoundError, Split
from dataparams.data.folders import IMG_EXTENSIONS, load_image_folder
from dataparams.data.registry import DatasetInfo

__all__ = [
    "LIST_SUFFIXES",
    "UserData",
    "UserDataError",
    "UserImageDataset",
    "decode_image",
    "default_memory_budget",
    "load_user_data",
]

LIST_SUFFIXES = (".csv", ".tsv", ".txt")
# Modes that carry one intensity per pixel; everything else (RGB, RGBA, palette, CMYK, ...)
# is colour and becomes RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# Streaming measures mean/std on this many images: on Fashion-MNIST, five seeded samples of
# 2,000 of the 60,000 land within 0.004 of the full mean and std; decoding them takes seconds.
_STATS_SAMPLE = 2000
_STATS_SEED = 0
_GIB = 1 << 30
# How spreadsheets, pandas and R write an empty cell (compared case-insensitively): such a label
# is missing, not a class, unless the class list names it.
_MISSING = frozenset({"", "nan", "-nan", "na", "n/a", "#n/a", "<na>", "null", "none"})
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PLAIN_INT = re.compile(r"[+-]?\d+")


class UserDataError(ValueError):
    """The user's data cannot be used as given; the message names the file and the row."""


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class UserData:
    """A checked, measured dataset of a user's images or features.

    Attributes
    ----------
    kind : {"images", "features"}
    targets : ndarray (N,) int64
        The labels as given (possibly wrong: finding those is the point), in ``[0, K)``.
    classes : list of str
        ``len(classes) == K``; ``targets[i]`` names ``classes[targets[i]]``.
    ids : list of str
        One per sample, for reports: the path as written in the list, the path relative to the
        class-folder root, the npz ``ids``, or ``"row i"`` (``X[i]``).
    source : str
        The path that was loaded.
    paths : list of str, optional
        Image files, ready to open (images only).
    images : ndarray (N, S, S, C) uint8, optional
        Every image decoded at the common side, when that fits the memory budget.
    dataset : UserImageDataset, optional
        When the images do not fit: decodes, resizes and normalises per item.
    features : ndarray (N, D) float32, optional
    image_size : int, optional
        ``S``.
    channels : int, optional
        ``C``.
    mean, std : ndarray float32, (C,) for images (pixels scaled to [0, 1]) or (D,) for features
        Measured on the data; ``std`` is 1 where the data is constant.
    choices : dict
        ``{name: {"value": ..., "why": "..."}}`` for every choice made, JSON-serialisable. The
        ``data`` entry also holds the ``fingerprint`` (see :attr:`fingerprint`).
    """

    kind: str
    targets: np.ndarray
    classes: list[str]
    ids: list[str]
    source: str
    paths: list[str] | None = None
    images: np.ndarray | None = None
    dataset: UserImageDataset | None = None
    features: np.ndarray | None = None
    image_size: int | None = None
    channels: int | None = None
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> dict[str, str]:
        """What identifies the data, part by part: ``{"list file": "sha256 ...", "image files":
        "N files, sha256 ...", "classes": "K classes, sha256 ..."}`` for a list (a class folder has
        no list file, an ``.npz`` has an ``"npz file"`` part and no image files).

        The list and ``.npz`` parts hash the file's bytes; the image part hashes every image's
        path (as written, or relative to the class-folder root), size and modification time, in
        sample order, so an edited label, an added, removed or replaced file, or a new class list
        changes it. A run stores it (in ``choices``) and is not resumed on other data.
        """
        return dict(self.choices.get("data", {}).get("fingerprint", {}))

    @property
    def in_memory(self) -> bool:
        """True when the pixels or features are held in one array."""
        return self.images is not None or self.features is not None

    @property
    def info(self) -> DatasetInfo:
        """Normalisation and input shape in the form the preset datasets use (images only)."""
        if self.kind != "images":
            raise ValueError(f"{self.source}: features have no image normalisation; use mean/std per feature")
        assert self.channels is not None and self.image_size is not None  # set for every kind="images"
        return DatasetInfo(
            tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std), self.channels, self.image_size
        )

    def describe(self) -> list[str]:
        """The choices as lines ``name: value  (why)``, for printing at the start of a run."""
        width = max((len(k) for k in self.choices), default=0)
        return [f"{k:<{width}}  {c['value']}  ({c['why']})" for k, c in self.choices.items()]

    def to_split(self, name: str | None = None) -> Split:
        """The data as a :class:`~dataparams.data.base.Split`: ``images``, ``paths`` (streaming;
        open them with :class:`UserImageDataset`) or ``features``."""
        name = name or Path(self.source).stem
        if self.kind == "features":
            return Split(self.targets, list(self.classes), features=self.features, name=name)
        if self.images is not None:
            return Split(self.targets, list(self.classes), images=self.images, name=name)
        return Split(self.targets, list(self.classes), paths=list(self.paths or []), name=name)

    def thumbnail(self, i: int, size: int | None = None) -> np.ndarray:
        """Image ``i`` as uint8 (h, w, C), for a report of suspect labels.

        Parameters
        ----------
        i : int
            Sample index.
        size : int, optional
            None gives the image the model sees (S x S, already decoded when in memory). An
            integer re-reads the file and scales its longer side to ``size``, keeping the aspect
            ratio; enlarging uses nearest-neighbour so that small images stay sharp.
        """
        if self.kind != "images":
            raise ValueError(f"{self.source}: thumbnails exist only for images, this data is {self.kind}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        if size is None:
            if self.images is not None:
                return self.images[i]
            return decode_image(self.paths[i], self.image_size, self.channels)  # type: ignore[index, arg-type]
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        with Image.open(self.paths[i]) as im:  # type: ignore[index]
            ImageOps.exif_transpose(im, in_place=True)
            im = _convert(im, self.channels)  # type: ignore[arg-type]
            w, h = im.size
            scale = size / max(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
            arr = np.asarray(im.resize(new, resample))
        return arr[..., None] if arr.ndim == 2 else arr


class UserImageDataset(Dataset):
    """Map-style dataset over image files, yielding ``(x, y, index)`` for DataLoader workers.

    ``x`` is float32 (C, S, S): the file decoded by :func:`decode_image` (the same pixels as the
    in-memory path), scaled to [0, 1] and normalised by ``mean``/``std``.

    Parameters
    ----------
    paths : sequence of str (N,)
    targets : ndarray (N,) int
        Labels to yield, e.g. noisy ones.
    image_size : int
        ``S``.
    channels : {1, 3}
    mean, std : sequence of float (C,)
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray,
        *,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.shape != (len(paths),):
            raise ValueError(f"targets must have shape ({len(paths)},), got {targets.shape}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self.paths = list(paths)
        self.targets = targets
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        arr = decode_image(self.paths[index], self.image_size, self.channels)
        x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std, int(self.targets[index]), index


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def _convert(im: Image.Image, channels: int) -> Image.Image:
    """``im`` as mode L (channels 1) or RGB (channels 3); 16-bit grey is scaled, not clipped."""
    if im.mode == "F":
        raise ValueError("32-bit float pixels have no fixed range; save the image with 8 or 16 bits")
    if im.mode.startswith("I"):
        # PIL's own I -> L conversion clips at 255, which turns a 16-bit image white.
        wide = np.asarray(im).astype(np.float32)
        im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        # Through RGBA, as Pillow asks for palettes with transparency (it warns otherwise).
        im = im.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def decode_image(path: str, image_size: int, channels: int) -> np.ndarray:
    """Read one image file at the common side: uint8 (S, S, C).

    An EXIF orientation tag is applied first (a camera stores a portrait photo as landscape
    pixels plus the tag), so the image is seen upright. The image is converted to L or RGB
    (alpha dropped, palette expanded, 16-bit grey scaled to 8 bits) and resized to S x S with
    bilinear filtering, antialiased when shrinking. The aspect ratio is not kept: stretching
    keeps every part of the object, where a crop could cut off the part that decides the label.
    JPEGs at least twice S are decoded at a reduced DCT scale first (still at least S on each
    side), several times faster than a full decode followed by the same resize, which it
    matches up to resampling differences.

    Parameters
    ----------
    path : str
    image_size : int
        ``S``.
    channels : {1, 3}

    Returns
    -------
    ndarray (S, S, C) uint8
    """
    with Image.open(path) as im:
        if im.format == "JPEG" and min(im.size) >= 2 * image_size:
            im.draft(im.mode, (image_size, image_size))
        ImageOps.exif_transpose(im, in_place=True)
        im = _convert(im, channels)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.array(im)  # a writable copy: the caller may hand it to torch.from_numpy
    return arr[..., None] if arr.ndim == 2 else arr


def _num_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    # Twice the cores: decoding is CPU-bound but files on network disks wait on I/O.
    return max(1, min(16, 2 * cpus))


def _parallel(fn: Callable[[int], Any], n: int, *, desc: str, progress: bool) -> list[Any]:
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


def _raise_first(failures: list[tuple[int, BaseException]], paths: list[str], where: Callable[[int], str]) -> None:
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

    results = _parallel(one, len(paths), desc="checking images", progress=progress)
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    _raise_first(failures, paths, where)
    sizes = np.array([r[0] for r in results], dtype=np.int64).reshape(-1, 2)
    return sizes, [r[1] for r in results], [r[2] for r in results]


def _decode_all(
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

    results = _parallel(one, len(index), desc="decoding images", progress=progress)
    failures = [(int(index[j]), e) for j, e in enumerate(results) if e is not None]
    _raise_first(failures, paths, where)
    return out


def _pixel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _human_bytes(n: float) -> str:
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


# ---------------------------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return f"sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return f"sha256 {hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"


def _classes_digest(classes: list[str]) -> str:
    # The resolved list, in order: it decides what every label means (classes.txt, argument).
    return f"{len(classes)} classes, {_digest(json.dumps(classes).encode())}"


def _fingerprint_choice(parts: dict[str, str], what: str) -> dict[str, Any]:
    """The ``data`` choice: a short value for printing, and the parts to name what changed."""
    value = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "value": value,
        "why": f"fingerprint of the data: {what}; a run is resumed or reused only on the same fingerprint",
        "fingerprint": parts,
    }


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------
def _read_classes_file(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserDataError(f"{path}: cannot read the class list ({e})") from None
    return _check_class_list([n for n in names if n], str(path))


def _check_class_list(classes: Sequence[str], what: str) -> list[str]:
    classes = [str(c).strip() for c in classes]
    if not classes:
        raise UserDataError(f"{what}: the class list is empty")
    if "" in classes:
        raise UserDataError(f"{what}: the class list holds an empty name")
    dup = [c for c, n in Counter(classes).items() if n > 1]
    if dup:
        raise UserDataError(f"{what}: class {dup[0]!r} is listed more than once")
    return classes


def _number(label: str) -> int | float | None:
    """The number a label spells (``3``, ``+3``, ``3.0``, ``2.5e1``), or None for a name."""
    if not _NUMBER.fullmatch(label):
        return None
    return int(label) if _PLAIN_INT.fullmatch(label) else float(label)


def _spelling_key(label: str) -> Any:
    # Labels with one key are one class spelled two ways: "Shirt"/"shirt", "1"/"1.0".
    v = _number(label)
    return label.casefold() if v is None else float(v)


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _first_rows(rows: Sequence[int], row: Callable[[int], str], limit: int = 4) -> str:
    shown = ", ".join(row(i) for i in rows[:limit])
    return shown + (f" and {len(rows) - limit:,} more" if len(rows) > limit else "")


def _check_missing(
    raw: Sequence[str], known: set[str], where: Callable[[int], str], row: Callable[[int], str]
) -> None:
    """One error naming every row whose label is empty or a missing-value marker (``row``: the
    row without the file name, for the second and later mentions)."""
    missing = [i for i, label in enumerate(raw) if label.casefold() in _MISSING and label not in known]
    if not missing:
        return
    i = missing[0]
    first = "empty label" if not raw[i] else f"label {raw[i]!r} is a missing value, not a class"
    more = ""
    if len(missing) > 1:
        others = missing[1:]
        more = f"; {len(others):,} more {'row' if len(others) == 1 else 'rows'} without a label: "
        more += _first_rows(others, row)
    markers = sorted({raw[j] for j in missing if raw[j]})
    hint = ""
    if markers:
        verb = "is" if len(markers) == 1 else "are"
        hint = (
            f" ({', '.join(repr(m) for m in markers[:4])} {verb} read as a missing value; a class list "
            "(classes.txt) that names one makes it a class)"
        )
    raise UserDataError(
        f"{where(i)}: {first}{more}. Label every row, or delete the rows to leave those samples out{hint}"
    )


def _two_spellings(labels: Sequence[str]) -> tuple[int, int] | None:
    """``(j, i)``, the first rows of two distinct labels that name one class (differing only in
    case, or spelling one number), or None."""
    first: dict[Any, int] = {}
    for i, label in enumerate(labels):
        j = first.setdefault(_spelling_key(label), i)
        if labels[j] != label:
            return j, i
    return None


def _how_they_differ(a: str) -> str:
    return "are the same number" if _number(a) is not None else "differ only in case"


_ONE_SPELLING = "write one spelling, or list both in classes.txt if they are different classes"


def _check_spellings(labels: Sequence[str], where: Callable[[int], str], row: Callable[[int], str]) -> None:
    pair = _two_spellings(labels)
    if pair is None:
        return
    j, i = pair
    a, b = labels[j], labels[i]
    counts = Counter(labels)
    raise UserDataError(
        f"{where(i)}: labels {a!r} ({_rows(counts[a])}, first {row(j)}) and {b!r} ({_rows(counts[b])}) "
        f"{_how_they_differ(a)}; {_ONE_SPELLING}"
    )


def _encode_labels(
    raw: Sequence[str],
    classes: list[str] | None,
    where: Callable[[int], str],
    class_source: str,
    *,
    row: Callable[[int], str] | None = None,
) -> tuple[np.ndarray, list[str], str]:
    """String labels, whitespace already stripped -> (targets (N,) int64, classes, why).

    ``where(i)`` names row ``i`` with its file; ``row(i)`` without (default ``where``), for the
    rows an error names after the first.

    With a class list, a label is a class name or, failing that for any label, an integer
    index into the list (names win so that classes named "3" and "7" are not read as indices).
    Without one, labels that are all whole numbers index classes "0".."max" (``1.0`` is 1: a
    spreadsheet that stored the column as decimals means the integer); names are sorted.

    Raises :class:`UserDataError` for an empty label or a missing-value marker (``nan``, ``NA``,
    ``N/A``, ...; all such rows are named) unless the class list names it, for numeric labels
    that are not whole, and, without a class list, for two labels that differ only in case or
    spell one number (``Shirt``/``shirt``, ``1``/``1.0``): a class list that names both makes
    them two classes.
    """
    row = row or where
    known = set(classes) if classes is not None else set()
    _check_missing(raw, known, where, row)
    if classes is not None and all(label in known for label in raw):
        lookup = {c: k for k, c in enumerate(classes)}
        targets = np.array([lookup[label] for label in raw], dtype=np.int64)
        return targets, classes, f"class names from {class_source}"
    numbers = [_number(label) for label in raw]
    if all(v is not None for v in numbers):
        fractional = [i for i, v in enumerate(numbers) if not (isinstance(v, int) or float(v).is_integer())]
        if fractional:
            i = fractional[0]
            raise UserDataError(
                f"{where(i)}: label {raw[i]!r} is not a whole number ({_rows(len(fractional))} like it); "
                "numeric labels are class indices 0, 1, ... For classes named by numbers, list them in "
                "classes.txt"
            )
        values = np.array([int(v) for v in numbers], dtype=np.int64)  # type: ignore[arg-type]
        targets, classes, why = _encode_ints(values, classes, where, class_source)
        decimal = next((label for label in raw if not _PLAIN_INT.fullmatch(label)), None)
        if decimal is not None:
            why += f"; whole numbers written as decimals ({decimal!r}) read as integers"
        return targets, classes, why
    if classes is not None:
        i = next(i for i, label in enumerate(raw) if label not in known)
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        near = [c for c in classes if _spelling_key(c) == _spelling_key(raw[i])]
        hint = f" (did you mean {near[0]!r}? class names are matched exactly)" if near else ""
        raise UserDataError(
            f"{where(i)}: label {raw[i]!r} is not a class{hint}; {class_source} lists {len(classes)}: {shown}"
        )
    _check_spellings(raw, where, row)
    names = sorted(set(raw))
    lookup = {c: k for k, c in enumerate(names)}
    return np.array([lookup[label] for label in raw], dtype=np.int64), names, "class names in the labels, sorted"


def _encode_ints(
    values: np.ndarray, classes: list[str] | None, where: Callable[[int], str], class_source: str
) -> tuple[np.ndarray, list[str], str]:
    """Integer labels -> (targets (N,) int64, classes, why)."""
    values = values.astype(np.int64)
    if len(values) and values.min() < 0:
        i = int(np.flatnonzero(values < 0)[0])
        raise UserDataError(f"{where(i)}: label {values[i]} is negative; labels are class indices from 0")
    if classes is not None:
        if len(values) and values.max() >= len(classes):
            i = int(np.flatnonzero(values >= len(classes))[0])
            raise UserDataError(
                f"{where(i)}: label {values[i]} is not a class; {class_source} lists {len(classes)} "
                f"(indices 0..{len(classes) - 1})"
            )
        return values, classes, f"integer labels index the classes of {class_source}"
    top = int(values.max()) if len(values) else -1
    return values, [str(k) for k in range(top + 1)], f"integer labels 0..{top}"


def _check_classes_used(targets: np.ndarray, classes: list[str], source: str) -> None:
    if len(classes) < 2:
        raise UserDataError(f"{source}: {len(classes)} class ({', '.join(classes)}); need at least two")
    present = np.unique(targets)
    if len(present) < 2:
        raise UserDataError(
            f"{source}: all {len(targets):,} samples have the label {classes[int(present[0])]!r}; "
            "need samples of at least two classes"
        )


def _class_choice(classes: list[str], targets: np.ndarray, why: str) -> dict[str, Any]:
    empty = [c for c, n in zip(classes, np.bincount(targets, minlength=len(classes))) if n == 0]
    shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    note = f"; {len(empty)} without samples ({', '.join(empty[:4])})" if empty else ""
    return {"value": len(classes), "why": f"{why}: {shown}{note}"}


# ---------------------------------------------------------------------------------------------
# the three forms
# ---------------------------------------------------------------------------------------------
def _sniff_delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(text[:8192], delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


# (ids, paths, targets, classes, where, choices, digests of the files that hold the labels)
_Listing = tuple[
    list[str], list[str], np.ndarray, list[str], Callable[[int], str], dict[str, Any], dict[str, str]
]


def _read_list(path: Path, classes: list[str] | None) -> _Listing:
    """A ``path,label`` list -> (ids, paths, targets, classes, where, choices, digests).

    Fields are stripped of surrounding whitespace. A path listed twice (compared after joining
    it to the list's folder and normalising, so ``./a.png`` is ``a.png``) keeps its first row
    when the labels agree, noted in the ``duplicates`` choice, and is an error naming the path
    and both labels when they do not.
    """
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")  # -sig: lists saved by spreadsheets start with a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise UserDataError(f"{path}: cannot read the list ({e})") from None
    delimiter = _sniff_delimiter(path, text)
    # newline="": the csv module's own line handling, so quoted fields may hold line breaks.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    col_path = col_label = -1
    ids: list[str] = []
    raw: list[str] = []
    lines: list[int] = []
    for row in reader:
        if not row or all(not f.strip() for f in row):
            continue
        fields = [f.strip() for f in row]
        if header is None:
            header = [f.lower() for f in fields]
            missing = [c for c in ("path", "label") if c not in header]
            if missing:
                raise UserDataError(
                    f"{path}: the header (line {reader.line_num}) needs the columns 'path' and 'label'; "
                    f"it has {', '.join(repr(f) for f in fields)} (separator {delimiter!r})"
                )
            col_path, col_label = header.index("path"), header.index("label")
            continue
        p = fields[col_path] if col_path < len(fields) else ""
        label = fields[col_label] if col_label < len(fields) else ""
        if not p:
            raise UserDataError(f"{path} line {reader.line_num}: empty path")
        ids.append(p)
        raw.append(label)
        lines.append(reader.line_num)
    if header is None:
        raise UserDataError(
            f"{path}: the list is empty; expected a header with 'path' and 'label', then one row per image"
        )
    if not ids:
        raise UserDataError(f"{path}: zero samples (a header and no rows)")

    def line(i: int) -> str:
        return f"line {lines[i]}"

    def where(i: int) -> str:
        return f"{path} {line(i)}"

    class_source = "the classes argument"
    if classes is None and (path.parent / "classes.txt").is_file():
        classes = _read_classes_file(path.parent / "classes.txt")
        class_source = str(path.parent / "classes.txt")
    targets, classes, why = _encode_labels(raw, classes, where, class_source, row=line)
    base = path.parent
    rows = len(ids)
    keep, repeats = _drop_repeated_paths(base, ids, raw, targets, where, line)
    if repeats is not None:
        ids, raw, lines = [ids[i] for i in keep], [raw[i] for i in keep], [lines[i] for i in keep]
        targets = targets[keep]
    _check_classes_used(targets, classes, str(path))
    paths = [str(base / p) for p in ids]  # an absolute p replaces base
    choices = {
        "kind": {
            "value": "images",
            "why": (
                f"list {path.name}: {rows:,} rows, separator {delimiter!r}, "
                f"paths relative to {base.resolve()}"
            ),
        },
        "classes": _class_choice(classes, targets, why),
    }
    if repeats is not None:
        choices["duplicates"] = {"value": rows - len(ids), "why": repeats}
    return ids, paths, targets, classes, where, choices, {"list file": _digest(data)}


def _drop_repeated_paths(
    base: Path,
    ids: list[str],
    raw: list[str],
    targets: np.ndarray,
    where: Callable[[int], str],
    line: Callable[[int], str],
) -> tuple[np.ndarray, str | None]:
    """Rows to keep (the first of each file) and, when some repeat, one line saying so."""
    first: dict[str, int] = {}
    repeated: list[tuple[int, int]] = []
    for i, p in enumerate(ids):
        j = first.setdefault(os.path.normpath(os.path.abspath(base / p)), i)
        if j != i:
            repeated.append((i, j))
    conflicts = [(i, j) for i, j in repeated if targets[i] != targets[j]]
    if conflicts:
        i, j = conflicts[0]
        more = ""
        if len(conflicts) > 1:
            more = f" ({len(conflicts) - 1:,} more files listed with conflicting labels)"
        raise UserDataError(
            f"{where(i)}: {ids[i]} is listed twice with different labels, {raw[j]!r} at {line(j)} and "
            f"{raw[i]!r} here{more}; keep the row with the right label"
        )
    if not repeated:
        return np.arange(len(ids)), None
    drop = {i for i, _ in repeated}
    i, j = repeated[0]
    note = (
        f"{_rows(len(drop))} listed a file again with the same label and were left out, each file trained "
        f"on once (e.g. {ids[j]}: {line(j)} and {line(i)})"
    )
    return np.array([i for i in range(len(ids)) if i not in drop], dtype=np.int64), note


def _read_folder(root: Path, classes: list[str] | None) -> _Listing:
    """Class folders -> (ids, paths, targets, classes, where, choices, digests), torchvision's order.

    A class is its folder's name stripped of surrounding whitespace (folders ``shirt`` and
    ``shirt `` are one class, as the labels of a list are); without a class list, two folders
    whose names differ only in case are an error naming both.
    """
    lists = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv"))
    hint = f" It holds {lists[0]}: to use that list, pass the file itself." if lists else ""
    try:
        split = load_image_folder(root)
    except DatasetNotFoundError as e:
        raise UserDataError(f"{e}{hint}") from None
    found = split.classes
    counts = np.bincount(split.targets, minlength=len(found))
    for name, n in zip(found, counts):
        if n == 0:
            others = [f for _, _, fs in os.walk(root / name) for f in fs][:3]
            what = f"; it holds {', '.join(others)}" if others else ""
            raise UserDataError(
                f"{root / name}: class folder holds no images ({', '.join(IMG_EXTENSIONS)}){what}. "
                "Remove the folder or add its images."
            )
    class_source = "the classes argument"
    if classes is None and (root / "classes.txt").is_file():
        classes = _read_classes_file(root / "classes.txt")
        class_source = str(root / "classes.txt")
    names = [c.strip() for c in found]
    if classes is None:
        pair = _two_spellings(names)
        if pair is not None:
            j, i = pair
            raise UserDataError(
                f"{root}: class folders {found[j]!r} ({counts[j]:,} images) and {found[i]!r} "
                f"({counts[i]:,} images) {_how_they_differ(names[j])}; merge them, or list both in "
                "classes.txt if they are different classes"
            )
        classes, why = sorted(set(names)), "class folders, sorted"
        if len(classes) < len(found):
            why += ", names stripped of surrounding spaces (folders that differ only in them are one class)"
    else:
        listed = set(classes)
        unknown = [k for k, c in enumerate(names) if c not in listed]
        if unknown:
            k = unknown[0]
            near = [c for c in classes if _spelling_key(c) == _spelling_key(names[k])]
            hint_near = f" (did you mean {near[0]!r}? class names are matched exactly)" if near else ""
            raise UserDataError(
                f"{root / found[k]}: class folder {found[k]!r} is not in {class_source}{hint_near} "
                f"({len(classes)} classes)"
            )
        why = f"class folders, in the order of {class_source}"
    remap = np.array([classes.index(c) for c in names], dtype=np.int64)
    targets = remap[split.targets]
    try:
        _check_classes_used(targets, classes, str(root))
    except UserDataError as e:
        raise UserDataError(f"{e}.{hint}" if hint else str(e)) from None
    paths = list(split.paths or [])
    ids = [Path(os.path.relpath(p, root)).as_posix() for p in paths]

    def where(i: int) -> str:
        return f"{root}: sample {i} ({ids[i]})"

    choices = {
        "kind": {
            "value": "images",
            "why": f"folder {root.name}/ with {len(found)} class folders, {len(paths):,} images",
        },
        "classes": _class_choice(classes, targets, why),
    }
    return ids, paths, targets, classes, where, choices, {}


def _npz_array(data: Any, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(data[key])
    except ValueError as e:  # object arrays need pickle, which we never load
        raise UserDataError(
            f"{path}: {key} is stored as Python objects ({e}); save it as a numeric or string array"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserDataError(f"{path}: cannot read the array {key!r} ({e})") from None


def _load_features(path: Path, classes: list[str] | None) -> UserData:
    try:
        digest = _file_digest(path)
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserDataError(f"{path}: cannot read the .npz file ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserDataError(f"{path}: expected an .npz archive of named arrays (np.savez), got a single array")
    with data:
        keys = list(data.keys())
        missing = [k for k in ("X", "y") if k not in keys]
        if missing:
            raise UserDataError(
                f"{path}: needs the arrays 'X' (N x D features) and 'y' (N labels); it has "
                f"{', '.join(repr(k) for k in keys) or 'none'}"
            )
        x = _npz_array(data, "X", path)
        y = _npz_array(data, "y", path)
        ids_arr = _npz_array(data, "ids", path) if "ids" in keys else None
        file_classes = _npz_array(data, "classes", path) if "classes" in keys else None

    if x.ndim != 2:
        hint = " (images? flatten them to (N, D), or write them as image files)" if x.ndim > 2 else ""
        raise UserDataError(f"{path}: X must be 2-D (N samples x D features), got shape {x.shape}{hint}")
    if x.dtype.kind not in "biuf":
        raise UserDataError(f"{path}: X must be numeric, got dtype {x.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserDataError(f"{path}: y must be 1-D (N labels), got shape {y.shape}")
    if len(x) != len(y):
        raise UserDataError(f"{path}: X has {len(x):,} rows but y has {len(y):,} labels")
    n, d = x.shape
    if n == 0:
        raise UserDataError(f"{path}: zero samples (X is empty)")
    if d == 0:
        raise UserDataError(f"{path}: X has zero features (shape {x.shape})")

    features, bad = finite_float32(x)
    if bad is not None:
        i, j, what, rows = bad
        raise UserDataError(f"{path}: row {i} of X holds {what} (column {j}); {rows:,} rows are bad")

    def where(i: int) -> str:
        return f"{path}: row {i} (y[{i}])"

    class_source = "the classes argument"
    if classes is None and file_classes is not None:
        classes = _check_class_list([_to_str(c) for c in file_classes.ravel()], f"{path} 'classes'")
        class_source = f"{path.name} 'classes'"
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        rows = np.flatnonzero(~np.isfinite(y)).tolist()
        raise UserDataError(
            f"{where(rows[0])}: label {y[rows[0]]} is missing; {_rows(len(rows))} without a label "
            f"({_first_rows(rows, lambda i: f'row {i}')}). Label every row, or delete the rows to leave "
            "those samples out"
        )
    if y.dtype.kind == "f" and not (y == np.round(y)).all():
        i = int(np.flatnonzero(y != np.round(y))[0])
        raise UserDataError(
            f"{where(i)}: label {y[i]:g} is not a whole number; y must hold integer class indices or "
            "string labels"
        )
    if y.dtype.kind in "biuf":
        targets, classes, why = _encode_ints(y.astype(np.int64), classes, where, class_source)
    elif y.dtype.kind in "US":
        targets, classes, why = _encode_labels([_to_str(v).strip() for v in y], classes, where, class_source,
                                               row=lambda i: f"row {i}")
    else:
        raise UserDataError(f"{path}: y must hold integer or string labels, got dtype {y.dtype}")
    _check_classes_used(targets, classes, str(path))

    if ids_arr is None:
        ids = [f"row {i}" for i in range(n)]
    else:
        ids = [_to_str(v) for v in ids_arr.ravel()]
        if len(ids) != n:
            raise UserDataError(f"{path}: ids has {len(ids):,} entries for {n:,} samples")

    mean = features.mean(0, dtype=np.float64)
    std = features.std(0, dtype=np.float64)
    constant = std < 1e-12
    std[constant] = 1.0
    spread = std[~constant]
    ratio = f"; feature std ranges {spread.min():.3g}..{spread.max():.3g}" if len(spread) else ""
    const_note = f"; {int(constant.sum())} constant features become 0" if constant.any() else ""
    choices = {
        "kind": {"value": "features", "why": f"{path.name}: X is {n:,} x {d} {x.dtype}, stored as float32"},
        "classes": _class_choice(classes, targets, why),
        "standardize": {
            "value": True,
            "why": f"per-feature mean/std measured on the {n:,} rows{ratio}{const_note}",
        },
        "data": _fingerprint_choice(
            {"npz file": digest, "classes": _classes_digest(classes)}, f"sha256 of {path.name}'s bytes"
        ),
    }
    return UserData(
        kind="features", targets=targets, classes=classes, ids=ids, source=str(path), features=features,
        mean=mean.astype(np.float32), std=std.astype(np.float32), choices=choices,
    )


def memory_need(n: int, channels: int, side: int, budget: int | None) -> tuple[int, int, str]:
    """Bytes of ``n`` decoded uint8 images, the memory budget (measured when None) and why it is that."""
    why = "given"
    if budget is None:
        budget, why = default_memory_budget()
    return n * channels * side * side, budget, why


def finite_float32(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int, str, int] | None]:
    """(N, D) numbers as contiguous float32, and the first entry that is not a finite float32
    (row, column, what it holds, number of bad rows), or None."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(out)
    if not bad.any():
        return out, None
    i, j = (int(v) for v in np.argwhere(bad)[0])
    v = x[i, j]
    what = "NaN" if np.isnan(v) else "an infinite value" if np.isinf(v) else f"{float(v):g}, too large for float32"
    return out, (i, j, what, int(bad.any(1).sum()))


def _to_str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------------------------------
# measuring and decoding images
# ---------------------------------------------------------------------------------------------
def _round_to_4(x: float) -> int:
    return max(4, 4 * int(math.floor(x / 4 + 0.5)))


def _side_and_channels(
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
    (:mod:`dataparams.data.tables`), so that the same images give the same arrays either way.

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


def _load_images(
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
    n = len(paths)
    sizes, modes, stats = _scan(paths, where, progress)
    side, c = _side_and_channels(sizes, modes, paths, where, choices, image_size=image_size,
                                 max_image_size=max_image_size, channels=channels)

    nbytes, memory_budget_bytes, budget_why = memory_need(n, c, side, memory_budget_bytes)
    fits = nbytes <= memory_budget_bytes
    choices["storage"] = {
        "value": "memory" if fits else "streaming",
        "why": (
            f"{n:,} x {c} x {side} x {side} uint8 = {_human_bytes(nbytes)} "
            f"{'fits' if fits else 'exceeds'} the budget of {_human_bytes(memory_budget_bytes)} ({budget_why})"
            + ("" if fits else "; decoded per batch in DataLoader workers")
        ),
    }

    images = None
    dataset = None
    if fits:
        images = _decode_all(paths, np.arange(n), side, c, where, progress)
        mean, std = _pixel_stats(images)
        stats_on = f"all {n:,} decoded images"
    else:
        m = min(n, _STATS_SAMPLE)
        sample = np.sort(np.random.default_rng(_STATS_SEED).choice(n, size=m, replace=False))
        # Every file is decoded once, the sample kept: a truncated JPEG passes the scan's verify
        # and would otherwise stop training at the first epoch that draws it.
        mean, std = _pixel_stats(_decode_all(paths, np.arange(n), side, c, where, progress, keep=sample))
        stats_on = f"a seeded sample of {m:,} of the {n:,} images"
        dataset = UserImageDataset(paths, targets, image_size=side, channels=c, mean=mean, std=std)
    choices["mean"] = {
        "value": [round(float(v), 4) for v in mean],
        "why": f"per channel, pixels in [0, 1], on {stats_on}",
    }
    choices["std"] = {"value": [round(float(v), 4) for v in std], "why": f"per channel, on {stats_on}"}
    files = hashlib.sha256()
    for name, (st_size, st_mtime) in zip(ids, stats):
        files.update(f"{name}\t{st_size}\t{st_mtime}\n".encode())
    parts = {
        **digests,
        "image files": f"{n:,} files, sha256 {files.hexdigest()[:16]}",
        "classes": _classes_digest(classes),
    }
    what = f"sha256 of {source.name}'s bytes and of" if "list file" in digests else "sha256 of"
    choices["data"] = _fingerprint_choice(parts, f"{what} every image's path, size and modification time")
    return UserData(
        kind="images", targets=targets, classes=classes, ids=ids, source=str(source), paths=paths,
        images=images, dataset=dataset, image_size=side, channels=c, mean=mean, std=std, choices=choices,
    )


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def load_user_data(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    max_image_size: int = 64,
    channels: int | None = None,
    memory_budget_bytes: int | None = None,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> UserData:
    """Load, check and measure a user's labelled data.

    Parameters
    ----------
    path : path-like
        A CSV/TSV list (``.csv``, ``.tsv``, or ``.txt`` with the separator sniffed) whose header
        has ``path`` and ``label``; a folder of class subfolders; or an ``.npz`` with ``X``
        (N, D) and ``y`` (N,), optionally ``classes`` and ``ids``. List paths are relative to the
        list's folder (absolute ones are kept). Labels are whole numbers (class indices, classes
        "0".."max"; ``1.0`` is read as 1) or class names (sorted), stripped of surrounding
        whitespace. A ``classes.txt`` (one name per line) beside the list or inside the folder
        fixes the class list and its order; it alone can make names that differ only in case, or
        a missing-value marker such as ``NA``, classes. A file listed twice with the same label is
        used once (the ``duplicates`` choice says so). Images are seen upright (EXIF orientation).
    image_size : int, optional
        The common side ``S``; by default the median longer side of the images, rounded to a
        multiple of 4 and capped at ``max_image_size``.
    max_image_size : int
        Cap of the measured side: what a CPU trains in reasonable time.
    channels : {1, 3}, optional
        By default 1 when every image is greyscale, else 3 (RGBA and palettes become RGB).
    memory_budget_bytes : int, optional
        Decoded images are held in memory when ``N * C * S * S`` fits, else streamed; by
        default :func:`default_memory_budget`.
    classes : sequence of str, optional
        The class list and order, overriding ``classes.txt`` and the npz ``classes``.
    progress : bool
        Progress bars while images are checked and decoded.

    Returns
    -------
    UserData

    Raises
    ------
    UserDataError
        For anything that would make training meaningless or fail later: a missing path or an
        unknown kind, a list without ``path``/``label`` columns, an empty path, an empty or
        missing label (``nan``, ``NA``, ``N/A``, ...: every such row is named), a fractional
        numeric label, two spellings of one class (``Shirt``/``shirt``, ``1``/``1.0`` among
        names; class folders too), one file listed with two labels, a missing, undecodable or
        truncated image, a label outside the class list or negative, an empty class folder,
        ``X``/``y`` of different lengths, non-2-D or non-numeric ``X``, NaN or infinite features,
        fewer than two classes, zero samples. The message names the file and the row. Nothing is
        written.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise UserDataError(f"{src}: no such file or folder")
    if channels is not None and channels not in (1, 3):
        raise UserDataError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise UserDataError(f"image_size must be >= 1, got {image_size}")
    if max_image_size < 4:
        raise UserDataError(f"max_image_size must be >= 4, got {max_image_size}")
    if memory_budget_bytes is not None and memory_budget_bytes < 0:
        raise UserDataError(f"memory_budget_bytes must be >= 0, got {memory_budget_bytes}")
    given = None if classes is None else _check_class_list(list(classes), "classes argument")

    suffix = src.suffix.lower()
    if src.is_file() and suffix == ".npz":
        return _load_features(src, given)
    if src.is_dir():
        ids, paths, targets, names, where, choices, digests = _read_folder(src, given)
    elif src.is_file() and suffix in LIST_SUFFIXES:
        ids, paths, targets, names, where, choices, digests = _read_list(src, given)
    else:
        raise UserDataError(
            f"{src}: unknown kind of data; expected a folder with one subfolder per class, a "
            f"{'/'.join(LIST_SUFFIXES)} list with 'path' and 'label' columns, or an .npz with X and y"
        )
    return _load_images(
        src, ids, paths, targets, names, where, choices, digests,
        image_size=image_size, max_image_size=max_image_size, channels=channels,
        memory_budget_bytes=memory_budget_bytes, progress=progress,
    )
