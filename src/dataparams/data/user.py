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
:class:`~dataparams.data.decode.UserImageDataset` decodes them batch by batch in DataLoader
workers with exactly the same orientation, resize and channel conversion.

The data's fingerprint (the ``data`` choice, :attr:`UserData.fingerprint`) identifies what was
loaded, at the cost of one ``stat`` per image and one hash of the list or ``.npz`` file: a run
stores it in its config, and :class:`~dataparams.runs.RunDir` neither resumes nor reuses a run
whose data has changed since.

This module reads the three forms and checks the arguments; the parts it shares with
:func:`~dataparams.data.tables.load_table_data` live in :mod:`~dataparams.data.userdata` (what is
returned), :mod:`~dataparams.data.labels`, :mod:`~dataparams.data.images` (measuring and decoding
images; :mod:`~dataparams.data.decode` decodes one), :mod:`~dataparams.data.features` and
:mod:`~dataparams.data.fingerprint`.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.data.base import DatasetNotFoundError
from dataparams.data.features import finite_float32, standardization
from dataparams.data.fingerprint import bytes_digest, classes_digest, file_digest, fingerprint_choice
from dataparams.data.folders import IMG_EXTENSIONS, is_hidden, load_image_folder
from dataparams.data.images import load_images
from dataparams.data.labels import (
    check_class_list,
    check_classes_used,
    class_choice,
    encode_labels,
    encode_values,
    how_they_differ,
    label_values,
    read_classes_file,
    read_ids,
    repeated_files,
    spelling_key,
    two_spellings,
)
from dataparams.data.userdata import UserData, UserDataError

__all__ = ["LIST_SUFFIXES", "UserData", "UserDataError", "load_user_data"]

LIST_SUFFIXES = (".csv", ".tsv", ".txt")


# ---------------------------------------------------------------------------------------------
# the three forms
# ---------------------------------------------------------------------------------------------
def _sniff_delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        default = "," if suffix == ".csv" else "\t"
        # The header decides when it names both columns only with another separator: a
        # spreadsheet set to a decimal comma saves its ".csv" with semicolons.
        header = next((line for line in text.splitlines() if line.strip()), "")
        names = {f.strip().strip('"').lower() for f in header.split(default)}
        if not {"path", "label"} <= names:
            for other in ",\t;|":
                if {"path", "label"} <= {f.strip().strip('"').lower() for f in header.split(other)}:
                    return other
        return default
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
        classes = read_classes_file(path.parent / "classes.txt")
        class_source = str(path.parent / "classes.txt")
    targets, classes, why = encode_labels(raw, classes, where, class_source, row=line)
    base = path.parent
    rows = len(ids)
    keys = [os.path.normpath(os.path.abspath(base / p)) for p in ids]
    keep, repeats = repeated_files(keys, ids, raw, targets, where, line)
    if repeats is not None:
        ids, raw, lines = [ids[i] for i in keep], [raw[i] for i in keep], [lines[i] for i in keep]
        targets = targets[keep]
    check_classes_used(targets, classes, str(path))
    paths = [str(base / p) for p in ids]  # an absolute p replaces base
    choices = {
        "kind": {
            "value": "images",
            "why": (
                f"list {path.name}: {rows:,} rows, separator {delimiter!r}, "
                f"paths relative to {base.resolve()}"
            ),
        },
        "classes": class_choice(classes, targets, why),
    }
    if repeats is not None:
        choices["duplicates"] = {"value": rows - len(ids), "why": repeats}
    return ids, paths, targets, classes, where, choices, {"list file": bytes_digest(data)}


def _read_folder(root: Path, classes: list[str] | None) -> _Listing:
    """Class folders -> (ids, paths, targets, classes, where, choices, digests), torchvision's order.

    A class is its folder's name stripped of surrounding whitespace (folders ``shirt`` and
    ``shirt `` are one class, as the labels of a list are); without a class list, two folders
    whose names differ only in case are an error naming both. Hidden entries are skipped and
    image files beside the class folders left out, both noted in the ``left_out`` choice.
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
        classes = read_classes_file(root / "classes.txt")
        class_source = str(root / "classes.txt")
    names = [c.strip() for c in found]
    if classes is None:
        pair = two_spellings(names)
        if pair is not None:
            j, i = pair
            raise UserDataError(
                f"{root}: class folders {found[j]!r} ({counts[j]:,} images) and {found[i]!r} "
                f"({counts[i]:,} images) {how_they_differ(names[j])}; merge them, or list both in "
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
            near = [c for c in classes if spelling_key(c) == spelling_key(names[k])]
            hint_near = f" (did you mean {near[0]!r}? class names are matched exactly)" if near else ""
            raise UserDataError(
                f"{root / found[k]}: class folder {found[k]!r} is not in {class_source}{hint_near} "
                f"({len(classes)} classes)"
            )
        why = f"class folders, in the order of {class_source}"
    remap = np.array([classes.index(c) for c in names], dtype=np.int64)
    targets = remap[split.targets]
    try:
        check_classes_used(targets, classes, str(root))
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
        "classes": class_choice(classes, targets, why),
    }
    left_out = _left_out(root)
    if left_out is not None:
        choices["left_out"] = left_out
    return ids, paths, targets, classes, where, choices, {}


def _left_out(root: Path) -> dict[str, Any] | None:
    """The ``left_out`` choice of class folders: image files directly in ``root`` (no class
    folder names their class) and hidden folders (:func:`~dataparams.data.folders.is_hidden`),
    which are skipped; None when there are neither."""
    with os.scandir(root) as entries:
        found = sorted((e.name, e.is_dir()) for e in entries)
    loose = [n for n, is_dir in found if not is_dir and not is_hidden(n) and n.lower().endswith(IMG_EXTENSIONS)]
    hidden = [f"{n}/" for n, is_dir in found if is_dir and is_hidden(n)]
    notes = []
    if loose:
        shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
        files = "1 image file is" if len(loose) == 1 else f"{len(loose):,} image files are"
        notes.append(f"{files} directly in {root}, not in a class folder, and left out ({shown})")
    if hidden:
        notes.append(f"hidden folders ({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}) are skipped, "
                     "as are hidden files (names starting with '.')")
    if not notes:
        return None
    return {"value": len(loose), "why": "; ".join(notes)}


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
        digest = file_digest(path)
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

    def row(i: int) -> str:
        return f"row {i}"

    class_source = "the classes argument"
    if classes is None and file_classes is not None:
        classes = check_class_list([_to_str(c) for c in file_classes.ravel()], f"{path} 'classes'")
        class_source = f"{path.name} 'classes'"
    if y.dtype.kind not in "biufUS":
        raise UserDataError(f"{path}: y must hold integer or string labels, got dtype {y.dtype}")
    # The rules of every other form: a string "1.0" is 1, "nan" is missing, "Shirt"/"shirt" refused.
    values = label_values(y, where, f"{path}: y", row=row)
    targets, classes, why = encode_values(values, classes, where, class_source, row=row)
    check_classes_used(targets, classes, str(path))

    if ids_arr is None:
        ids = [f"row {i}" for i in range(n)]
    else:
        if ids_arr.size != n:
            raise UserDataError(f"{path}: ids has {ids_arr.size:,} entries for {n:,} samples")
        ids = read_ids(ids_arr.ravel().tolist(), lambda i: f"{path}: ids[{i}]")

    mean, std, standardize = standardization(features)
    choices = {
        "kind": {"value": "features", "why": f"{path.name}: X is {n:,} x {d} {x.dtype}, stored as float32"},
        "classes": class_choice(classes, targets, why),
        "standardize": standardize,
        "data": fingerprint_choice(
            {"npz file": digest, "classes": classes_digest(classes)}, f"sha256 of {path.name}'s bytes"
        ),
    }
    return UserData(
        kind="features", targets=targets, classes=classes, ids=ids, source=str(path), features=features,
        mean=mean, std=std, choices=choices,
    )


def _to_str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


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
        default :func:`~dataparams.data.images.default_memory_budget`.
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
    given = None if classes is None else check_class_list(list(classes), "classes argument")

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
    return load_images(
        src, ids, paths, targets, names, where, choices, digests,
        image_size=image_size, max_image_size=max_image_size, channels=channels,
        memory_budget_bytes=memory_budget_bytes, progress=progress,
    )
