"""A user's labelled data where users hold it: arrays, a torch Dataset, a DataFrame, a parquet file,
a Hugging Face dataset (issue 21, item 4).

Notation: ``N`` samples, ``K`` classes, ``D`` features, ``S`` the common image side, ``C``
channels (1 or 3).

:func:`load_table_data` returns the same :class:`~dataparams.data.userdata.UserData` as
:func:`~dataparams.data.user.load_user_data` does for files, from

* ``(X, y)`` arrays (numpy or torch): ``X`` (N, D) features or (N, H, W) / (N, H, W, C) images
  (a torch tensor of images is (N, C, H, W));
* a torch ``Dataset`` yielding ``(x, y)``: read once; the training loaders add the index;
* a pandas ``DataFrame``, a Hugging Face ``datasets.Dataset`` (or ``DatasetDict``), a ``.parquet``
  file, or a folder written by ``datasets.Dataset.save_to_disk``: one row per sample, with a label
  column and an image column (PIL images, the ``Image`` feature, encoded bytes or file paths) or
  feature columns (numbers, or one vector such as an embedding per row).

Images follow the rules for image files, so that a table of images and a folder of the same
images give identical arrays: a table of file paths goes to its loader as a CSV list of them would
(measured, fingerprinted, streamed when too large); images held in memory -- encoded bytes (PNG,
JPEG, the ``Image`` feature) and decoded pixels (arrays, tensors, PIL images, handed over as
uncompressed in-memory image files holding exactly those pixels) -- are measured by the same rule
(:func:`~dataparams.data.images.side_and_channels`, which files go through too) and decoded by
:func:`~dataparams.data.decode.decode_image`, into memory (:mod:`~dataparams.data.memory_images`).
Arrays and torch Datasets are read by :mod:`~dataparams.data.arrays`; the tables here.

The readers are pandas, pyarrow and ``datasets`` (``pip install 'dataparams[tables]'``); nothing
is downloaded.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dataparams.data.arrays import from_arrays, from_torch
from dataparams.data.features import features_data, to_float32
from dataparams.data.folders import IMG_EXTENSIONS
from dataparams.data.labels import (
    check_class_list,
    check_classes_used,
    class_choice,
    encode_values,
    is_missing,
    label_values,
    read_ids,
    repeated_files,
)
from dataparams.data.memory_images import image_source, images_data
from dataparams.data.userdata import UserData, UserDataError

__all__ = ["TABLE_SUFFIXES", "is_table_path", "load_table_data"]

TABLE_SUFFIXES = (".parquet",)
_EXTRA = "pip install 'dataparams[tables]'"
_Where = Callable[[int], str]


def _option(name: str) -> str:
    """An option of :func:`load_table_data` as messages name it: the keyword and the command line's
    flag (``--data`` tables take the same options), since both kinds of user read the message."""
    return f"{name}= (CLI: --{name.replace('_', '-')})"


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
            raise UserDataError(f"{source}: split={split!r} (CLI: --split) was given but this is one Dataset, not a DatasetDict")
        return data
    splits = list(data)
    if split is not None:
        if split not in data:
            raise UserDataError(f"{source}: no split {split!r}; the DatasetDict holds {', '.join(splits)}")
        choices["split"] = {"value": split, "why": "given"}
        return data[split]
    if "train" not in data:
        raise UserDataError(
            f"{source}: a DatasetDict with the splits {', '.join(splits)} and none named 'train'; "
            f"pass {_option('split')}"
        )
    others = [s for s in splits if s != "train"]
    choices["split"] = {
        "value": "train",
        "why": (
            f"a DatasetDict; 'train' taken, {', '.join(others) or 'no other split'} left "
            f"({_option('split')} picks one)"
        ),
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
            raise UserDataError(f"{path}: split={split!r} (CLI: --split) applies to a DatasetDict folder, not a parquet file")
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
            raise UserDataError(f"{table.source}: columns {names(of[k])} all hold {what}; pass {_option('image_column')}")
        if of[k]:
            rest = [c for c in kinds if c != of[k][0]]
            note = f"; not used: {names(rest)}" if rest else ""
            feature = datasets is not None and isinstance(features.get(of[k][0]), datasets.Image)
            typed = " (Image feature)" if feature else ""
            return "images", of[k], f"the only column of {what}{typed}{note}"
    if of["number"] and of["vector"]:
        raise UserDataError(
            f"{table.source}: both numeric columns ({names(of['number'])}) and vector columns "
            f"({names(of['vector'])}) could be the features; pass {_option('feature_columns')}"
        )
    if of["number"]:
        return "features", of["number"], f"every numeric column but the label and the id ({len(of['number'])})"
    if len(of["vector"]) == 1:
        return "features", of["vector"], "the only column holding a vector per row"
    if of["vector"]:
        raise UserDataError(f"{table.source}: columns {names(of['vector'])} all hold vectors; pass {_option('feature_columns')}")
    raise UserDataError(
        f"{table.source}: no column of images, image paths or numbers besides the label; columns: "
        f"{names(table.frame.columns)}. Pass {_option('image_column')} or {_option('feature_columns')}"
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
            if is_missing(v):
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
        raise UserDataError(f"give {_option('image_column')} or {_option('feature_columns')}, not both")
    if isinstance(feature_columns, (str, int)):
        feature_columns = [feature_columns]
    named = [label_column] + ([image_column] if image_column is not None else []) + list(feature_columns or [])
    named += [id_column] if id_column is not None else []
    present = list(frame.columns)
    for c in named:
        if c not in present:
            hint = f"; {_option('label_column')} names the column of labels" if c == label_column else ""
            raise UserDataError(
                f"{source}: no column {c!r}; the columns are {', '.join(repr(p) for p in present)}{hint}"
            )
    twice = next((c for c in named if named.count(c) > 1), None)
    if twice is not None:
        raise UserDataError(f"{source}: column {twice!r} is named twice among the label, id and input columns")
    n = len(frame)
    if n == 0:
        raise UserDataError(f"{source}: zero rows")

    ids = [f"row {i}" for i in range(n)]
    if id_column is not None:
        ids = read_ids(frame[id_column].to_numpy(dtype=object), lambda i: f"{source}: column {id_column!r}, row {i}")

    def at(column: Any, i: int) -> str:
        return f"{source}: column {column!r}, row {i}" + (f" (id {ids[i]!r})" if id_column is not None else "")

    def row(i: int) -> str:
        return f"row {i}"

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
        known = check_class_list(names, f"{source}: {class_source}")
    values = label_values(column, where_label, f"{source}: column {label_column!r}", row=row)
    targets, classes, why = encode_values(values, known, where_label, class_source, row=row, codes=codes)
    check_classes_used(targets, classes, f"{source}: column {label_column!r}")

    used = [label_column] + ([id_column] if id_column is not None else [])
    kind, columns, pick_why = _pick_inputs(table, used, image_column, feature_columns)
    if kind == "images":
        (col,) = columns
        cells = frame[col].to_numpy(dtype=object)
        images = [image_source(v, table.base, at(col, i)) for i, v in enumerate(cells)]
        # One image file named by two rows is one sample, as in a CSV list: trained on once, or
        # refused when the rows disagree on its label.
        keys = [os.path.normpath(os.path.abspath(s)) if isinstance(s, str) else None for s in images]
        shown = [s if isinstance(s, str) else "" for s in images]
        keep, repeats = repeated_files(
            keys, shown, [classes[t] for t in targets], targets, lambda i: at(col, i), row
        )
        kept_ids = ids
        if repeats is not None:
            images, kept_ids, targets = [images[i] for i in keep], [ids[i] for i in keep], targets[keep]
        where_image = lambda i: at(col, int(keep[i]))  # noqa: E731  (rows as the table numbers them)
        files = sum(isinstance(s, str) for s in images)
        if files == len(images):
            held = "image files" + (f", paths relative to {table.base.resolve()}" if table.base is not None else "")
        else:
            held = "images held in memory" + (f" and {files:,} image files" if files else "")
        choices["kind"] = {"value": "images", "why": f"{source}: {n:,} rows of {held}"}
        choices["image_column"] = {"value": str(col), "why": pick_why}
        choices["classes"] = class_choice(classes, targets, why)
        if repeats is not None:
            choices["duplicates"] = {"value": n - len(keep), "why": repeats}
        user = images_data(source, kept_ids, images, targets, classes, where_image, choices, opts)
        if repeats is not None:
            user.rows = np.asarray(keep, dtype=np.int64)
        return user
    x, origin = _table_features(frame, columns, at)
    if x.shape[1] == 0:
        raise UserDataError(f"{source}: columns {', '.join(repr(c) for c in columns)} hold zero features")

    def locate(i: int, j: int) -> str:
        column, element = origin[j]
        return at(column, i) + ("" if element is None else f", element {element}")

    features = to_float32(x, locate)
    choices["kind"] = {"value": "features", "why": f"{source}: {n:,} rows x {x.shape[1]} features, stored as float32"}
    choices["feature_columns"] = {"value": [str(c) for c in columns], "why": pick_why}
    choices["classes"] = class_choice(classes, targets, why)
    return features_data(source, features, targets, classes, ids, choices)


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
        Labels held as text are read as a CSV list's are (:func:`~dataparams.data.labels.encode_labels`):
        ``"1.0"`` is 1 when all are whole numbers, and ``"nan"``, ``"NA"``, empty labels or
        ``Shirt`` next to ``shirt`` are refused unless ``classes`` names them. A file named by two
        rows of an image-path column is used once, and refused when their labels differ.
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
        listed), a missing (None/NaN, a missing-value marker, empty) or unusable label, two
        spellings of one class, a repeated id, one image file with two labels, a missing or
        unusable feature, vectors of different lengths, an unreadable image, fewer than two
        classes, ``X`` and ``y`` of different lengths, a DatasetDict without the split.
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
    given = None if classes is None else check_class_list(list(classes), "classes argument")
    opts = {
        "image_size": image_size, "max_image_size": max_image_size, "channels": channels,
        "memory_budget_bytes": memory_budget_bytes, "progress": progress,
    }

    if isinstance(data, tuple):
        if len(data) != 2 or labels is not None:
            raise UserDataError("give (X, y), or X with labels=y")
        return from_arrays(data[0], data[1], given, opts)
    if isinstance(data, (np.ndarray, Tensor)):
        if labels is None:
            raise UserDataError("arrays: X was given without labels; pass (X, y) or labels=y")
        return from_arrays(data, labels, given, opts)
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
        return from_torch(data, given, opts, progress)
    else:
        raise TypeError(
            f"data of type {type(data).__name__}; expected (X, y) arrays, a torch Dataset, a pandas DataFrame, "
            "a datasets.Dataset, a .parquet file or a save_to_disk folder"
        )
    return _from_table(
        table, label_column=label_column, image_column=image_column, feature_columns=feature_columns,
        id_column=id_column, given=given, opts=opts, choices=choices,
    )
