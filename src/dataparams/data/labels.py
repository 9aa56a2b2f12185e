"""Labels as a user gives them, read into class indices and a class list, or refused by row.

Notation: ``N`` samples, ``K`` classes. Every reader returns ``targets`` (N,) int64 in ``[0, K)``,
the K class names, and why (for :attr:`~dataparams.data.userdata.UserData.choices`).

* Labels written as text (a CSV list, an ``.npz`` ``y`` of strings) are read as a spreadsheet user
  means them (:func:`encode_labels`; the rules are in :mod:`~dataparams.data.user`'s header):
  whole numbers are class indices, names are sorted, a missing-value marker or two spellings of
  one class is an error unless the class list (:func:`read_classes_file`) names them.
* Labels held in memory (arrays, tensors, the items of a Dataset, a table's column) already have
  a type: :func:`label_values` turns them into indices or names, :func:`encode_values` into
  ``targets``; names go through :func:`encode_labels`, so ``"1.0"``, ``"nan"`` or ``Shirt`` next
  to ``shirt`` mean in a DataFrame what they mean in a CSV.
* A file named twice (:func:`repeated_files`) and an id given twice (:func:`read_ids`) are
  refused alike whatever holds them.

Every refusal is a :class:`~dataparams.data.userdata.UserDataError` naming the row.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from torch import Tensor

from dataparams.data.userdata import UserDataError

__all__ = [
    "check_class_list",
    "check_classes_used",
    "class_choice",
    "encode_ints",
    "encode_labels",
    "encode_values",
    "first_rows",
    "how_they_differ",
    "is_missing",
    "label_values",
    "read_classes_file",
    "read_ids",
    "repeated_files",
    "rows_text",
    "spelling_key",
    "two_spellings",
]

# How spreadsheets, pandas and R write an empty cell (compared case-insensitively): such a label
# is missing, not a class, unless the class list names it.
_MISSING = frozenset({"", "nan", "-nan", "na", "n/a", "#n/a", "<na>", "null", "none"})
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_PLAIN_INT = re.compile(r"[+-]?\d+")
_Where = Callable[[int], str]


# ---------------------------------------------------------------------------------------------
# labels written as text: a list, class folders, an .npz
# ---------------------------------------------------------------------------------------------
def read_classes_file(path: Path) -> list[str]:
    """The class list of a ``classes.txt``: one name per line, blank lines skipped, checked by
    :func:`check_class_list`."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserDataError(f"{path}: cannot read the class list ({e})") from None
    return check_class_list([n for n in names if n], str(path))


def check_class_list(classes: Sequence[str], what: str) -> list[str]:
    """The class list with every name stripped of surrounding whitespace; refused (``what`` names
    the list) when it is empty, holds an empty name or names a class twice."""
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


def spelling_key(label: str) -> Any:
    """What two spellings of one class share: the casefolded name, or the number a label spells."""
    # Labels with one key are one class spelled two ways: "Shirt"/"shirt", "1"/"1.0".
    v = _number(label)
    return label.casefold() if v is None else float(v)


def rows_text(n: int) -> str:
    """``"1 row"`` or ``"1,234 rows"``, for messages."""
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def first_rows(rows: Sequence[int], row: Callable[[int], str], limit: int = 4) -> str:
    """The first ``limit`` of ``rows``, each named by ``row(i)``, and how many more, for messages."""
    shown = ", ".join(row(i) for i in rows[:limit])
    return shown + (f" and {len(rows) - limit:,} more" if len(rows) > limit else "")


def _refuse_missing(rows: Sequence[int], first: str, where: _Where, row: _Where, hint: str = "") -> NoReturn:
    """Raise one error naming every row in ``rows`` (the rows without a label): ``first`` says what
    the first one holds, ``where`` names it with its file, ``row`` the others without."""
    i = rows[0]
    more = ""
    if len(rows) > 1:
        others = rows[1:]
        more = f"; {len(others):,} more {'row' if len(others) == 1 else 'rows'} without a label: "
        more += first_rows(others, row)
    raise UserDataError(
        f"{where(i)}: {first}{more}. Label every row, or delete the rows to leave those samples out{hint}"
    )


def _check_missing(raw: Sequence[str | None], known: set[str], where: _Where, row: _Where) -> None:
    """One error naming every row whose label is None (a cell without a value), empty or a
    missing-value marker (``row``: the row without the file name, for the second and later
    mentions)."""
    missing = [i for i, label in enumerate(raw) if label is None or (label.casefold() in _MISSING and label not in known)]
    if not missing:
        return
    i = missing[0]
    label = raw[i]
    first = "no label" if label is None else "empty label" if not label else f"label {label!r} is a missing value, not a class"
    markers = sorted({m for m in (raw[j] for j in missing) if m})
    hint = ""
    if markers:
        verb = "is" if len(markers) == 1 else "are"
        hint = (
            f" ({', '.join(repr(m) for m in markers[:4])} {verb} read as a missing value; a class list "
            f"({_CLASS_LIST}) that names one makes it a class)"
        )
    _refuse_missing(missing, first, where, row, hint)


def _refuse_fractional(rows: Sequence[int], shown: str, where: _Where) -> NoReturn:
    """Raise for labels that are numbers but not whole (``shown``: the first one as written)."""
    raise UserDataError(
        f"{where(rows[0])}: label {shown} is not a whole number ({rows_text(len(rows))} like it); "
        f"numeric labels are class indices 0, 1, ... For classes named by numbers, list them in a class list "
        f"({_CLASS_LIST})"
    )


def two_spellings(labels: Sequence[str]) -> tuple[int, int] | None:
    """``(j, i)``, the first rows of two distinct labels that name one class (differing only in
    case, or spelling one number), or None."""
    first: dict[Any, int] = {}
    for i, label in enumerate(labels):
        j = first.setdefault(spelling_key(label), i)
        if labels[j] != label:
            return j, i
    return None


def how_they_differ(a: str) -> str:
    """How two spellings of one class differ, ``a`` being one of them: as numbers or only in case."""
    return "are the same number" if _number(a) is not None else "differ only in case"


# Where a class list comes from depends on what holds the data; naming them all keeps one message true.
_CLASS_LIST = ("classes.txt beside a list or in a class-folder root, an .npz's classes array, a categorical or "
               "ClassLabel label column, classes= in Python")
_ONE_SPELLING = f"write one spelling, or list both in a class list ({_CLASS_LIST}) if they are different classes"


def _check_spellings(labels: Sequence[str], where: Callable[[int], str], row: Callable[[int], str]) -> None:
    pair = two_spellings(labels)
    if pair is None:
        return
    j, i = pair
    a, b = labels[j], labels[i]
    counts = Counter(labels)
    raise UserDataError(
        f"{where(i)}: labels {a!r} ({rows_text(counts[a])}, first {row(j)}) and {b!r} ({rows_text(counts[b])}) "
        f"{how_they_differ(a)}; {_ONE_SPELLING}"
    )


def encode_labels(
    raw: Sequence[str | None],
    classes: list[str] | None,
    where: Callable[[int], str],
    class_source: str,
    *,
    row: Callable[[int], str] | None = None,
) -> tuple[np.ndarray, list[str], str]:
    """String labels, whitespace already stripped -> (targets (N,) int64, classes, why). A None
    is a cell without a value (:func:`label_values`), refused as an empty label is.

    ``where(i)`` names row ``i`` with its file; ``row(i)`` without (default ``where``), for the
    rows an error names after the first.

    With a class list, a label is a class name or, failing that for any label, an integer
    index into the list (names win so that classes named "3" and "7" are not read as indices).
    Without one, labels that are all whole numbers index classes "0".."max" (``1.0`` is 1: a
    spreadsheet that stored the column as decimals means the integer); names are sorted.

    Raises :class:`UserDataError` for a missing, empty label or a missing-value marker (``nan``, ``NA``,
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
            _refuse_fractional(fractional, repr(raw[fractional[0]]), where)
        values = np.array([int(v) for v in numbers], dtype=np.int64)  # type: ignore[arg-type]
        targets, classes, why = encode_ints(values, classes, where, class_source)
        decimal = next((label for label in raw if not _PLAIN_INT.fullmatch(label)), None)
        if decimal is not None:
            why += f"; whole numbers written as decimals ({decimal!r}) read as integers"
        return targets, classes, why
    if classes is not None:
        i = next(i for i, label in enumerate(raw) if label not in known)
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        near = [c for c in classes if spelling_key(c) == spelling_key(raw[i])]
        hint = f" (did you mean {near[0]!r}? class names are matched exactly)" if near else ""
        raise UserDataError(
            f"{where(i)}: label {raw[i]!r} is not a class{hint}; {class_source} lists {len(classes)}: {shown}"
        )
    _check_spellings(raw, where, row)
    names = sorted(set(raw))
    lookup = {c: k for k, c in enumerate(names)}
    return np.array([lookup[label] for label in raw], dtype=np.int64), names, "class names in the labels, sorted"


def encode_ints(
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


def check_classes_used(targets: np.ndarray, classes: list[str], source: str) -> None:
    """Refuse fewer than two classes, or labels that all name one class (``source`` names the data)."""
    if len(classes) < 2:
        raise UserDataError(f"{source}: {len(classes)} class ({', '.join(classes)}); need at least two")
    present = np.unique(targets)
    if len(present) < 2:
        raise UserDataError(
            f"{source}: all {len(targets):,} samples have the label {classes[int(present[0])]!r}; "
            "need samples of at least two classes"
        )


def class_choice(classes: list[str], targets: np.ndarray, why: str) -> dict[str, Any]:
    """The ``classes`` choice: K, and ``why`` (how the classes were found) with the first names and
    those without samples."""
    empty = [c for c, n in zip(classes, np.bincount(targets, minlength=len(classes))) if n == 0]
    shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    note = f"; {len(empty)} without samples ({', '.join(empty[:4])})" if empty else ""
    if len(empty) > len(classes) - len(empty):
        # Labels 0, 100, ..., 900 read as indices make 901 classes: legitimate for a sample of a
        # many-class set, a mistake when the numbers name the classes.
        note += f"; if the numbers name the classes rather than index them, give a class list ({_CLASS_LIST})"
    return {"value": len(classes), "why": f"{why}: {shown}{note}"}


# ---------------------------------------------------------------------------------------------
# labels held in memory: arrays, tensors, Dataset items, table columns
# ---------------------------------------------------------------------------------------------
def is_missing(v: Any) -> bool:
    """Whether a cell holds no value: None, NaN, or pandas' ``NA`` or ``NaT``."""
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    pd = sys.modules.get("pandas")
    return pd is not None and (v is pd.NA or v is pd.NaT)


def label_values(
    values: Any, where: _Where, what: str, *, row: _Where | None = None
) -> np.ndarray | list[str | None]:
    """Labels as int64 (N,) class indices or N stripped names; ``what`` names them in messages,
    ``row(i)`` names row ``i`` briefly (default ``where``) after the first.

    Names are read further by :func:`encode_values`, by the rules for labels written as text; a
    cell without a value (None, NaN, pandas' ``NA``) among them is None there, refused with the
    empty labels and missing-value markers. Among numbers, such rows are refused here, all named
    in one error.
    """
    row = row or where
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
        nan = np.flatnonzero(np.isnan(arr)).tolist()
        if nan:
            _refuse_missing(nan, "no label (nan)", where, row)
        # inf is no whole number either (np.round keeps it, and as int64 it would be negative)
        frac = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr))).tolist()
        if frac:
            _refuse_fractional(frac, f"{arr[frac[0]]:g}", where)
        return arr.astype(np.int64)
    if kind in "bUS":
        items: Sequence[Any] = arr.tolist()
    elif kind == "O":
        items = arr
    else:
        raise UserDataError(f"{what}: labels of dtype {arr.dtype}; give class indices or names")
    # A cell without a value among names stays None for encode_values, which refuses it together
    # with the empty and missing-value labels ("NA" is one only when no class list names it).
    missing = [i for i, v in enumerate(items) if is_missing(v)]
    if missing and not any(isinstance(v, (str, bytes)) for v in items):
        _refuse_missing(missing, f"no label ({items[missing[0]]!r})", where, row)
    ints: list[int] = []
    names: list[str | None] = []
    first_name: str | None = None
    for i, v in enumerate(items):
        if is_missing(v):
            names.append(None)
            continue
        if isinstance(v, Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (bool, np.bool_)):
            v = str(v)
        elif isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        if isinstance(v, str):
            names.append(v.strip())
            first_name = names[-1] if first_name is None else first_name
        elif isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and math.isfinite(v)
                                                  and float(v).is_integer()):
            ints.append(int(v))
        else:
            shape = f" of shape {tuple(v.shape)}" if hasattr(v, "shape") else ""
            raise UserDataError(
                f"{where(i)}: label {v!r:.60} is a {type(v).__name__}{shape}; a label is one class index or name"
            )
        if ints and first_name is not None:
            first = f"the number {ints[0]}" if isinstance(v, str) else f"the name {first_name!r}"
            raise UserDataError(
                f"{where(i)}: label {v!r} where an earlier row holds {first}; labels are all class indices "
                "or all names"
            )
    return np.array(ints, dtype=np.int64) if ints or not names else names


def encode_values(
    values: np.ndarray | list[str | None],
    classes: list[str] | None,
    where: _Where,
    class_source: str,
    *,
    row: _Where | None = None,
    codes: str | None = None,
) -> tuple[np.ndarray, list[str], str]:
    """Labels from :func:`label_values` -> (targets (N,) int64, classes, why).

    Names are read as :func:`encode_labels` reads a CSV's labels, so that the same labels mean
    the same classes in every form the data comes in: whole numbers however written are class
    indices, missing-value markers and two spellings of one class are refused. ``codes`` names a
    column of class codes where -1 means no label (ClassLabel, categorical)."""
    row = row or where
    if isinstance(values, np.ndarray):
        if codes is not None and len(values) and (values == -1).any():
            _refuse_missing(np.flatnonzero(values == -1).tolist(), f"no label (-1 in a {codes} column)", where, row)
        return encode_ints(values, classes, where, class_source)
    return encode_labels(values, classes, where, class_source, row=row)


def repeated_files(
    keys: Sequence[str | None],
    shown: Sequence[str],
    labels: Sequence[str],
    targets: np.ndarray,
    where: _Where,
    row: _Where,
) -> tuple[np.ndarray, str | None]:
    """Rows to keep and, when a file is named twice, one line saying so: the first row of each
    file, refused when a later one gives it another label.

    ``keys[i]`` identifies row ``i``'s file (a normalised absolute path; None: not a file),
    ``shown[i]`` is the path as the user wrote it and ``labels[i]`` the label.
    """
    first: dict[str, int] = {}
    repeated: list[tuple[int, int]] = []
    for i, key in enumerate(keys):
        if key is None:
            continue
        j = first.setdefault(key, i)
        if j != i:
            repeated.append((i, j))
    conflicts = [(i, j) for i, j in repeated if targets[i] != targets[j]]
    if conflicts:
        i, j = conflicts[0]
        more = ""
        if len(conflicts) > 1:
            more = f" ({len(conflicts) - 1:,} more files listed with conflicting labels)"
        raise UserDataError(
            f"{where(i)}: {shown[i]} is listed twice with different labels, {labels[j]!r} at {row(j)} and "
            f"{labels[i]!r} here{more}; keep the row with the right label"
        )
    if not repeated:
        return np.arange(len(keys)), None
    drop = {i for i, _ in repeated}
    i, j = repeated[0]
    note = (
        f"{rows_text(len(drop))} listed a file again with the same label and were left out, each file trained "
        f"on once (e.g. {shown[j]}: {row(j)} and {row(i)})"
    )
    return np.array([i for i in range(len(keys)) if i not in drop], dtype=np.int64), note


def read_ids(values: Sequence[Any], where: _Where) -> list[str]:
    """The user's id of each row as text, refused (``where(i)`` names row ``i``) when one is
    missing or names two rows: an id must say which sample a report means."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if is_missing(v):
            raise UserDataError(f"{where(i)}: no id ({v!r})")
        s = v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
        if s in seen:
            raise UserDataError(f"{where(i)}: id {s!r} is also row {seen[s]}'s; ids name one row each")
        seen[s] = i
        ids.append(s)
    return ids
