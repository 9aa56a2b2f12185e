"""The files of a sharded checkpoint: written atomically and hashed, checked and opened on load,
removed once a newer save is committed.

A save (:meth:`ShardedDataParameters.write_shards
<dataparams.distributed.sharded.ShardedDataParameters.write_shards>`) is one shard file per
rank and one class file, each named with a token fresh to the save, and a manifest naming them
with their sizes and SHA-256 (:data:`SHARDED_FORMAT`). Files are written with
:func:`dataparams.runs.files.atomic_write_stream`: a temporary file beside the target, fsynced,
renamed onto it, the directory fsynced.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dataparams.runs.files import atomic_write_stream

__all__ = [
    "MANIFEST",
    "SHARDED_FORMAT",
    "SHARD_KEYS",
    "ShardFileError",
    "check_file",
    "file_sha256",
    "load_shard_file",
    "open_checked",
    "remove_stale_shards",
    "save_hashed",
    "shard_advice",
]

#: ``format`` field of a sharded checkpoint's manifest and shard files.
SHARDED_FORMAT = "dataparams-sharded/1"
#: The file that names a save's files, in a directory of :meth:`ShardedDataParameters.save
#: <dataparams.distributed.sharded.ShardedDataParameters.save>`.
MANIFEST = "manifest.json"
#: Keys of a shard file that are not ``extra`` arrays.
SHARD_KEYS = frozenset({"format", "start", "end", "num_instances", "instance_log_sigma", "instance_momentum"})


def remove_stale_shards(directory: str | os.PathLike[str], manifest: dict[str, Any],
                        also_keep: dict[str, Any] | None = None) -> None:
    """Delete the shard and class files in ``directory`` that ``manifest`` (or ``also_keep``,
    the previous checkpoint's manifest, kept for a fall-back) does not name.

    Call it after the save that ``manifest`` describes has been committed, from one rank, while
    no save is being written: what it removes belongs to older saves, or to a save that crashed
    before its commit (including the temporary files of an interrupted write).
    """
    keep = {m["classes"] for m in (manifest, also_keep) if m is not None}
    keep |= {s["file"] for m in (manifest, also_keep) if m is not None for s in m["shards"]}
    for f in Path(directory).iterdir():
        stale_file = f.suffix == ".pt" and f.name.startswith(("shard-", "classes-")) and f.name not in keep
        stale_tmp = f.suffix == ".tmp" and f.name.startswith((".shard-", ".classes-"))
        if stale_file or stale_tmp:
            f.unlink(missing_ok=True)


def save_hashed(obj: Any, path: Path) -> dict[str, Any]:
    """``torch.save`` that readers see whole or not at all; returns the file's
    ``{"bytes": size, "sha256": hex digest}``, hashed while it is written (the file is not read
    back). See :func:`~dataparams.runs.files.atomic_write_stream`."""
    return atomic_write_stream(path, lambda f: torch.save(obj, f))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class ShardFileError(ValueError):
    """A file of a sharded checkpoint is missing, truncated, damaged or not of this checkpoint.

    :meth:`ShardedDataParameters.read_shards` raises it on every rank alike, with one message
    naming the file(s), what is wrong and what to do."""


def check_file(path: Path, recorded: dict[str, Any] | None) -> None:
    """:class:`ShardFileError` (naming ``path``) when the file is missing, or differs from the
    size and SHA-256 ``recorded`` for it at the save (a save from before checksums were kept
    records none: then only its existence is checked here)."""
    if not path.is_file():
        raise ShardFileError(f"{path} is missing")
    if recorded is None:
        return
    size, expected = path.stat().st_size, int(recorded["bytes"])
    if size < expected:
        raise ShardFileError(f"{path} is truncated ({size:,} of the {expected:,} bytes saved)")
    if size > expected:
        raise ShardFileError(f"{path} has {size:,} bytes where the save wrote {expected:,}: it is not the file "
                             "that was saved")
    if file_sha256(path) != recorded["sha256"]:
        raise ShardFileError(f"{path} is damaged: its SHA-256 does not match the one the checkpoint recorded")


def load_shard_file(path: Path, *, mmap: bool) -> dict[str, Any]:
    """``torch.load`` of a file of a sharded save; :class:`ShardFileError` naming it when it fails."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise ShardFileError(f"{path} is unreadable, truncated or damaged ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ShardFileError(f"{path} is not a file of a sharded checkpoint (it holds a {type(data).__name__})")
    return data


def shard_advice(directory: Path) -> str:
    """What the user can do about a damaged file of the save in ``directory``."""
    run_dir = directory.parent
    latest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    if directory.name == "data_parameters" and latest.is_file() and previous.is_file():
        # A run directory (dataparams.runs.RunDir), whose save_checkpoint keeps the previous
        # checkpoint's shard files until the next save.
        return (f"Put the original file back, or resume from the previous checkpoint, whose shard files are kept: "
                f"move {latest} aside (e.g. to checkpoint.damaged.pt) and run the same command with --resume "
                f"again; it then continues from {previous.name}, one epoch earlier")
    return ("Put the original file back (from a copy); without it this checkpoint cannot be resumed -- start the "
            "run again (--overwrite) or from an earlier copy of the whole directory")


def open_checked(directory: Path, manifest: dict[str, Any], *, num_classes: int, num_instances: int,
                 shard: tuple[int, int]) -> tuple[dict[str, Any], list[tuple[dict[str, Any], slice, slice]]]:
    """The class file's contents and, for each shard that overlaps ``shard`` (this rank's
    ``(start, end)``), its (memory-mapped) contents with the source and destination rows; each
    file checked first (:class:`ShardFileError` naming it)."""
    checksums = manifest.get("checksums") or {}
    path = directory / manifest["classes"]
    check_file(path, checksums.get(manifest["classes"]))
    classes = load_shard_file(path, mmap=False)
    shapes = {k: tuple(classes[k].shape) for k in ("class_log_sigma", "class_momentum")
              if isinstance(classes.get(k), Tensor)}
    if (classes.get("format") != SHARDED_FORMAT or classes.get("num_classes") != num_classes
            or shapes != {"class_log_sigma": (num_classes,), "class_momentum": (num_classes,)}):
        raise ShardFileError(f"{path} is not the class file of this checkpoint (it holds "
                             f"{classes.get('format')!r} for K={classes.get('num_classes')}; this run has "
                             f"K={num_classes})")
    start, end = shard
    names = list(manifest.get("extra", []))
    pending = []
    for s in manifest["shards"]:
        lo, hi = max(start, s["start"]), min(end, s["end"])
        if lo >= hi:
            continue
        path = directory / s["file"]
        check_file(path, checksums.get(s["file"]))
        data = load_shard_file(path, mmap=True)
        rows = s["end"] - s["start"]
        held = (data.get("format"), data.get("num_instances"), data.get("start"), data.get("end"))
        if held != (SHARDED_FORMAT, num_instances, s["start"], s["end"]):
            raise ShardFileError(
                f"{path} is not a shard of this checkpoint: it holds rows [{held[2]}, {held[3]}) of "
                f"N={held[1]}, the manifest names it for rows [{s['start']}, {s['end']}) of N={num_instances}"
            )
        short = [k for k in ("instance_log_sigma", "instance_momentum", *names)
                 if not isinstance(data.get(k), Tensor) or data[k].shape[:1] != (rows,)]
        if short:
            raise ShardFileError(f"{path} is not a shard of this checkpoint: {', '.join(short)} missing or not "
                                 f"of {rows} rows")
        pending.append((data, slice(lo - s["start"], hi - s["start"]), slice(lo - start, hi - start)))
    return classes, pending
