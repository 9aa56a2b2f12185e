"""The fingerprint of a user's data: what identifies what was loaded, part by part.

The parts are short sha256 digests: of a list's or an ``.npz`` file's bytes, of every image's path,
size and modification time (:mod:`~dataparams.data.images`), of the labels and ids of data held
in memory, of the resolved class list. The ``data`` choice holds them
(:attr:`~dataparams.data.userdata.UserData.fingerprint`); a run stores it in its config, and
:class:`~dataparams.runs.RunDir` neither resumes nor reuses a run whose data has changed since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bytes_digest", "classes_digest", "file_digest", "fingerprint_choice", "labels_digest"]


def bytes_digest(data: bytes) -> str:
    """``"sha256 "`` and the first 16 hex digits of the sha256 of ``data``: one part of a fingerprint."""
    return f"sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def file_digest(path: Path) -> str:
    """:func:`bytes_digest` of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return f"sha256 {hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"


def classes_digest(classes: list[str]) -> str:
    """The fingerprint part of the class list: ``"K classes, sha256 ..."``."""
    # The resolved list, in order: it decides what every label means (classes.txt, argument).
    return f"{len(classes)} classes, {bytes_digest(json.dumps(classes).encode())}"


def fingerprint_choice(parts: dict[str, str], what: str) -> dict[str, Any]:
    """The ``data`` choice: a short value for printing, and the parts to name what changed."""
    value = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "value": value,
        "why": f"fingerprint of the data: {what}; a run is resumed or reused only on the same fingerprint",
        "fingerprint": parts,
    }


def labels_digest(targets: np.ndarray, ids: list[str]) -> str:
    """The fingerprint part of labels held in memory: the sha256 of the targets (as int64) and
    the ids, in sample order."""
    return bytes_digest(targets.astype("<i8").tobytes() + "\n".join(ids).encode())
