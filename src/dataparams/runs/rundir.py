"""The run directory: everything a run writes, and how a killed run resumes.

Layout of ``RUN_DIR``::

    config.json          resolved TrainConfig (also inside every checkpoint)
    metrics.jsonl        one JSON line per finished epoch
    labels.npz           given (noisy) labels, clean labels, is_corrupted mask, source index
    snapshots/epoch_NNNN.npz   per-epoch sigma values (class, instance) and per-sample loss
    snapshots/epoch_NNNN.shard-RRRRR-of-PPPPP.npz
                         distributed.mode=sharded: the same, written by each of the P processes
                         for its rows ``start``..``end`` (class sigma in rank 0's file);
                         :meth:`RunDir.load_snapshot` returns them concatenated
    checkpoint.pt        latest state, written atomically (tmp file + rename), its SHA-256
                         appended (a file that does not match is not used)
    checkpoint.prev.pt   the state before it, used when checkpoint.pt is missing or damaged
    .lock                held (flock) by the process writing the run: a second writer is refused
                         with the holder's pid and host
    data_parameters/     distributed.mode=sharded only: per-process shard files of the instance
                         parameters, their momentum and the per-sample buffers; checkpoint.pt
                         names the files of its save
    predictions.npz      final model's predictions on the training set (for find-issues)
    predictions.shard-RRRRR-of-PPPPP.npz
                         under torchrun instead: each of the P processes's rows of it, in the
                         same format as a snapshot's shards; :meth:`RunDir.load_arrays` joins them
    heldout_predictions.npz   predictions on training-pool samples held out by data.keep_file
    summary.json         final numbers (test accuracy at the end and at report epochs, ...)
    model.pt             user data only: the trained network with its classes and normalisation
    tensorboard/         event files with the per-epoch scalars, when tensorboard is installed

A checkpoint is written at the end of every epoch, after the metrics line and the snapshot
(in sharded mode: after every process's snapshot file). On resume the metrics and snapshots --
whole or sharded -- of epochs after the checkpoint are discarded (a kill between the two writes
leaves one such epoch) and training continues from the checkpoint; with the same seed the result
equals an uninterrupted run bit for bit on the CPU.

A run is the run of a config only on the same data. For the user's own data the config's
``choices`` hold a fingerprint of the files (:attr:`dataparams.data.userdata.UserData.fingerprint`:
the list's bytes, every image's path, size and modification time, the class list); a directory
whose run was made on other data is neither resumed nor reused (:class:`RunConflictError` naming
what changed), because the config fields alone do not change when a label is edited in place.

Every file is written by :mod:`dataparams.runs.files`: a temporary file renamed onto the name,
the rename followed by an fsync of the directory, so that a power loss after a save does not
bring back the file it replaced. A save that fails (a full disk) leaves the previous checkpoint
as it was and says so.

Under torchrun rank 0 writes everything but the shard files: the predictions' in every mode
(each process predicts its share of the training set), and in sharded mode every process
writes its rows of each epoch's snapshot, and its shard files of the checkpoint (named with a
token fresh to the save), *before* rank 0 replaces
``checkpoint.pt``, which names them: the replacement commits the save, and only then are the
files of older saves deleted, so a kill of any process at any point leaves one complete
checkpoint. The run directory must be visible to every process (a shared file system on
several machines).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataparams.config import EXECUTION_FIELDS, diff_configs
from dataparams.runs.files import (
    atomic_write_text,
    commit_temp,
    fsync_dir,
    stream_temp,
    write_npz,
    write_temp,
)

__all__ = [
    "SHARDS_KEY",
    "SNAPSHOT_SHARD_KEYS",
    "RunConflictError",
    "RunDir",
    "RunDirError",
    "RunExistsError",
    "RunLockedError",
    "blocking_file",
    "data_changes",
]

#: Key of a checkpoint that holds the manifest of its shard files (distributed.mode=sharded).
SHARDS_KEY = "data_parameter_shards"

_OURS = (
    "config.json",
    "metrics.jsonl",
    "labels.npz",
    "snapshots",
    "checkpoint.pt",
    "predictions.npz",
    "summary.json",
    "tensorboard",
    "calibration.json",
    "heldout_predictions.npz",
    "data_parameters",
    "model.pt",
    "model_selected.pt",
    "checkpoint.prev.pt",
)


#: A snapshot file's name: ``epoch_NNNN.npz``, or one process's rows of a sharded run's snapshot,
#: ``epoch_NNNN.shard-RRRRR-of-PPPPP.npz``; groups: epoch, rank, number of processes.
_SNAPSHOT_NAME = re.compile(r"epoch_(\d+)(?:\.shard-(\d+)-of-(\d+))?\.npz")
#: One process's rows of any per-sample array file ``STEM.npz``: ``STEM.shard-RRRRR-of-PPPPP.npz``;
#: groups: stem, rank, number of processes.
_SHARD_NAME = re.compile(r"(.+)\.shard-(\d+)-of-(\d+)\.npz")
#: The keys of a snapshot shard file that say which rows it holds (the rest are arrays).
SNAPSHOT_SHARD_KEYS = ("start", "end", "num_instances")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (holds another run, corrupt files, ...)."""


class RunExistsError(RunDirError):
    """The directory already holds this very run: continue it (``resume``) or start over
    (``overwrite``)."""


class RunConflictError(RunDirError):
    """The directory holds something else (another run, foreign files): use another directory,
    or ``overwrite`` where that is allowed."""


class RunLockedError(RunDirError):
    """Another live process is writing the directory (it holds the lock): neither ``resume`` nor
    ``overwrite`` may touch it; wait for that process to end or use another directory.

    Not a :class:`RunConflictError`, whose remedy ``overwrite`` is refused here.

    Attributes
    ----------
    path : Path
        The run directory.
    holder : str
        Who holds the lock, as its lock file says (pid, host, since when).
    """

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is being written by {holder}; wait for it to end or use another directory")
        self.path, self.holder = path, holder

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields, not its message: a torchrun job broadcasts rank 0's error.
        return type(self), (self.path, self.holder)


def blocking_file(path: str | os.PathLike[str]) -> Path | None:
    """The nearest of ``path`` and its parents that exists, when it is not a directory (a run
    directory cannot be made at ``path``); else None."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _is_shard_of_ours(name: str) -> bool:
    """Whether ``name`` is one process's rows of a run's top-level array file (``predictions.npz``)."""
    m = _SHARD_NAME.fullmatch(name)
    return m is not None and f"{m.group(1)}.npz" in _OURS


#: Appended to a checkpoint: this marker and the SHA-256 of the bytes before it.
_CHECKSUM_MAGIC = b"\nDPSHA256"
_TRAILER = len(_CHECKSUM_MAGIC) + 32


def _with_checksum(payload: bytes) -> bytes:
    return payload + _CHECKSUM_MAGIC + hashlib.sha256(payload).digest()


def _verified_payload(path: Path) -> bytes:
    """The bytes of checkpoint ``path`` without its checksum; :class:`RunDirError` when the file
    is missing, or carries a checksum that does not match (truncated, damaged). A file without
    the marker (written before checksums were kept) is returned as it is."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    if len(data) >= _TRAILER and data[-_TRAILER:-32] == _CHECKSUM_MAGIC:
        payload = data[:-_TRAILER]
        if hashlib.sha256(payload).digest() != data[-32:]:
            raise RunDirError(f"{path} is damaged (its SHA-256 does not match the one saved with it)")
        return payload
    return data


def with_defaults(old: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """``old`` (a stored config) with each field it lacks taken from ``defaults``, section by section.

    A field added to the config after a run was written is absent from its config.json; the
    field's default is what the code did before it existed, so the run is the same run (a resume
    is not refused for a field the user never set).
    """
    if not defaults:
        return old
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict) and k not in ("method_options", "choices"):
            out[k] = with_defaults(out[k], v)
    return out


def _relevant_diff(a: dict[str, Any], b: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    return [d for d in diff_configs(with_defaults(a, defaults), b) if d not in EXECUTION_FIELDS]


def _fingerprints(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    choices = config.get("choices") or {}
    return {name: c["fingerprint"] for name, c in choices.items()
            if isinstance(c, dict) and isinstance(c.get("fingerprint"), dict)}


def data_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed in the data between the run of config ``old`` and config ``new``, part by
    part of the fingerprints their ``choices`` hold (empty when they agree or neither has one).

    ``choices`` as a whole is an execution field (a measured memory budget may differ between
    two invocations on the same data); the fingerprint in it is what identifies the data.
    """
    a, b = _fingerprints(old), _fingerprints(new)
    out = []
    for name in [*b, *(k for k in a if k not in b)]:
        pa, pb = a.get(name), b.get(name)
        if pa is None:
            out.append(f"the run holds no fingerprint of its {name} (made before fingerprints were kept), "
                       "so its data cannot be shown to be the same")
        elif pb is None:
            out.append(f"the {name} given now has no fingerprint to compare with the run's")
        else:
            out += [f"{part} changed ({pa.get(part, 'absent')} -> {pb.get(part, 'absent')})"
                    for part in [*pb, *(k for k in pa if k not in pb)] if pa.get(part) != pb.get(part)]
    return out


class RunDir:
    """Reads and writes one run directory (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str], *, defaults: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        #: The config dict of the config class's defaults: fields a stored config lacks (added
        #: since it was written) are compared as these (:func:`with_defaults`).
        self.defaults = defaults
        self._lock: Any = None
        self._lock_before = ""
        self._lock_created = False
        # Whether checkpoint.pt is known good (written or verified by this object): only then
        # does the next save keep it as checkpoint.prev.pt.
        self._latest_good = False
        self._prev_manifest: dict[str, Any] | None = None
        #: Set by load_checkpoint when it fell back to the previous checkpoint: why.
        self.fallback_reason: str | None = None

    # -- files ---------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def previous_checkpoint_file(self) -> Path:
        return self.path / "checkpoint.prev.pt"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def shard_dir(self) -> Path:
        """Where a sharded run's processes write their shard files."""
        return self.path / "data_parameters"

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    def snapshot_file(self, epoch: int) -> Path:
        return self.snapshot_dir / f"epoch_{epoch:04d}.npz"

    def snapshot_shard_file(self, epoch: int, rank: int, world_size: int) -> Path:
        """Process ``rank``'s rows of epoch ``epoch``'s snapshot in a run of ``world_size`` processes."""
        return self.shard_file(f"{self.snapshot_dir.name}/{self.snapshot_file(epoch).name}", rank, world_size)

    def shard_file(self, name: str, rank: int, world_size: int) -> Path:
        """Process ``rank``'s rows of the array file ``name`` (``predictions.npz``, a snapshot)
        written by ``world_size`` processes: ``STEM.shard-RRRRR-of-PPPPP.npz`` beside it."""
        path = self.path / name
        return path.with_name(f"{path.stem}.shard-{rank:05d}-of-{world_size:05d}.npz")

    def shard_files(self, name: str) -> list[tuple[Path, int, int]]:
        """``[(file, rank, world_size), ...]`` of the shard files of array file ``name`` present."""
        path = self.path / name
        if not path.parent.is_dir():
            return []
        out = []
        for f in path.parent.glob(f"{glob.escape(path.stem)}.shard-*-of-*.npz"):
            m = _SHARD_NAME.fullmatch(f.name)
            if m is not None and m.group(1) == path.stem:
                out.append((f, int(m.group(2)), int(m.group(3))))
        return sorted(out, key=lambda t: (t[2], t[1]))

    def remove_array_files(self, name: str, *, shards_only: bool = False) -> None:
        """Delete array file ``name`` (unless ``shards_only``) and every shard file of it, before
        it is written anew: :meth:`load_arrays` prefers a whole file to shards, and shards of
        another number of processes would not join."""
        if not shards_only:
            (self.path / name).unlink(missing_ok=True)
        for f, _, _ in self.shard_files(name):
            f.unlink(missing_ok=True)
        # Temporary files a killed write of a shard left (runs.files names them ".{file}.*.tmp").
        path = self.path / name
        if path.parent.is_dir():
            for f in path.parent.glob(f".{glob.escape(path.stem)}.shard-*.tmp"):
                f.unlink(missing_ok=True)

    def lock(self) -> None:
        """Hold ``RUN_DIR/.lock`` until :meth:`unlock` (or the process ends): a second process
        that tries gets :class:`RunLockedError` naming the holder's pid, host and start time.

        An ``flock`` on the file, so a killed holder releases it with its death (no stale lock
        to clean up); where ``fcntl`` is missing (Windows) there is no lock. Creates the
        directory. Idempotent for this object."""
        if self._lock is not None:
            return
        try:
            import fcntl
        except ImportError:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # A file object, not a bare descriptor: a RunDir dropped without unlock() releases the
        # lock when it is collected.
        f = open(self.lock_file, "a+")  # noqa: SIM115 -- held until unlock()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read(4096).strip() or "another process"
            f.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(self.path, holder) from None
        f.seek(0)
        self._lock_before = f.read()
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        self._lock = f

    def _unlock_untouched(self, created: bool) -> None:
        """Release a lock taken for checks that refused: the lock file as it was (its former
        holder's line back, or no file when this call made it), so that a refused command
        leaves the directory byte for byte as it found it."""
        if self._lock is None:
            return
        if created:
            self.lock_file.unlink(missing_ok=True)
        else:
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.write(self._lock_before)
            self._lock.flush()
        self.unlock()

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock` (the file stays: removing it would let two
        processes lock two different files of that name)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextlib.contextmanager
    def checked(self, config: dict[str, Any]) -> Any:
        """``with run.checked(config):`` -- the directory holds the run of ``config`` (as
        :meth:`prepare` with ``resume`` checks it) and no other process writes it while the
        block reads it; the lock is released after."""
        try:
            self.prepare(config, resume=True)
            yield self
        finally:
            self.unlock()

    # -- life cycle ----------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_file.read_text())
        except json.JSONDecodeError as e:
            raise RunConflictError(f"{self.config_file} is not valid JSON ({e})") from None

    def differences(self, config: dict[str, Any]) -> list[str]:
        """Why the run in this directory is not the run of ``config``, one reason a line: the
        config fields that differ, then what changed in the data (:func:`data_changes`). Empty
        when they agree or when the directory holds no run (no ``config.json``)."""
        if not self.config_file.exists():
            return []
        old = self._read_config()
        diff = _relevant_diff(old, config, self.defaults)
        more = ", ..." if len(diff) > 8 else ""
        fields = [f"settings differ ({', '.join(diff[:8])}{more})"] if diff else []
        return fields + data_changes(old, config)

    def prepare(self, config: dict[str, Any], *, resume: bool = False, overwrite: bool = False) -> bool:
        """Make the directory ready for ``config``; return True when there is a run to resume.

        Refuses (:class:`RunConflictError`) a directory that holds a different run unless
        ``overwrite``: other config fields, or the same config on other data (the fingerprints
        in ``choices`` differ, see :func:`data_changes`), with or without ``resume`` -- the
        message names what changed. A directory holding this same run needs ``resume``
        (continue) or ``overwrite`` (start over), else :class:`RunExistsError`. Nothing is
        written before the checks pass.
        """
        if resume and overwrite:
            raise RunDirError("resume and overwrite exclude each other")
        blocking = blocking_file(self.path)
        if blocking is not None:
            where = "" if blocking == self.path else f" (the run directory {self.path} would be made in it)"
            raise RunDirError(f"{blocking} is a file, not a folder{where}")
        created = not self.path.exists()
        # First: a run another process is writing is neither resumed nor overwritten.
        lock_created = not self.lock_file.exists()
        self.lock()
        self._lock_created = lock_created
        existing = any(p.name != self.lock_file.name for p in self.path.iterdir()) if self.path.exists() else False
        try:
            return self._prepare(config, existing, resume=resume, overwrite=overwrite)
        except BaseException:
            self._unlock_untouched(lock_created)
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _prepare(self, config: dict[str, Any], existing: bool, *, resume: bool, overwrite: bool) -> bool:
        if existing and overwrite:
            foreign = [p.name for p in self.path.iterdir() if p.name not in _OURS and not p.name.startswith(".")
                       and not _is_shard_of_ours(p.name)]
            if foreign:
                raise RunConflictError(
                    f"{self.path} holds files that are not from a run ({', '.join(sorted(foreign)[:5])}); "
                    "refusing to overwrite it"
                )
            # Everything but the lock this process holds.
            for p in self.path.iterdir():
                if p.name == self.lock_file.name:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            existing = False
        if existing:
            if not self.config_file.exists():
                raise RunConflictError(f"{self.path} is not empty and holds no run (no config.json)")
            old = self._read_config()
            diff = _relevant_diff(old, config, self.defaults)
            if diff:
                raise RunConflictError(f"{self.path} holds a different run (fields differ: {', '.join(diff[:8])})")
            changed = data_changes(old, config)
            if changed:
                what = ("cannot be resumed: its data changed since the run began" if resume
                        else "holds a run on other data")
                raise RunConflictError(f"{self.path} {what}: {'; '.join(changed)}")
            if not resume:
                raise RunExistsError(f"{self.path} already holds this run")
            return self.checkpoint_file.exists() or self.previous_checkpoint_file.exists()
        # (resume on an empty or missing directory starts fresh: a kill before the first
        # checkpoint leaves nothing to continue.)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return False

    # -- metrics -------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """Epoch records. A truncated last line (a kill mid-write) is skipped unless ``strict``;
        a bad line elsewhere raises ``RunDirError`` naming the file and line."""
        if not self.metrics_file.exists():
            raise RunDirError(f"{self.metrics_file} is missing")
        lines = self.metrics_file.read_text().splitlines()
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1 and not strict:
                    break
                raise RunDirError(f"{self.metrics_file}, line {i + 1}: not valid JSON (truncated or edited?)") from None
        return out

    def truncate_after(self, epoch: int) -> None:
        """Drop metrics lines and snapshots of epochs > ``epoch`` (1-based)."""
        if self.metrics_file.exists():
            kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= epoch]
            atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
        for e, files in self._snapshot_files().items():
            if e > epoch:
                for f, _, _ in files:
                    f.unlink(missing_ok=True)
        if self.snapshot_dir.exists():
            # The temporary file of a snapshot write that a kill interrupted (no writer runs now:
            # this is called before training starts or resumes).
            for f in self.snapshot_dir.glob(".epoch_*.tmp"):
                f.unlink(missing_ok=True)

    # -- arrays --------------------------------------------------------------------------
    def save_arrays(self, name: str, **arrays: np.ndarray) -> None:
        # Streamed into the temporary file beside the name, not built in memory first: at 1e8
        # samples the buffer and its copy were two more copies of the arrays on rank 0.
        path = self.path / name
        commit_temp(stream_temp(path, lambda f: write_npz(f, arrays)), path)

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of ``name``: the file itself, or, where a distributed run wrote it one
        process's rows per file (:meth:`save_array_shard`), its shard files joined in rank order
        (the same keys and full ``(N, ...)`` arrays as the whole file).

        Raises
        ------
        RunDirError
            Naming the file: missing, one of its shard files missing, or a file unreadable
            (truncated, damaged) or not holding the rows its place says.
        """
        f = self.path / name
        if not f.exists():
            shards = self.shard_files(name)
            if shards:
                return self._load_shards(name, shards)
            raise RunDirError(f"{f} is missing")
        return self._load_file(name)

    def _load_file(self, name: str) -> dict[str, np.ndarray]:
        f = self.path / name
        try:
            with np.load(f, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # zipfile / format errors: name the file
            raise RunDirError(f"{f} is unreadable ({type(e).__name__}: {e})") from None

    def save_snapshot(self, epoch: int, **arrays: np.ndarray) -> None:
        self.snapshot_dir.mkdir(exist_ok=True)
        self.save_arrays(f"snapshots/{self.snapshot_file(epoch).name}", **arrays)

    def save_snapshot_shard(self, epoch: int, *, rank: int, world_size: int, start: int, end: int,
                            num_instances: int, **arrays: np.ndarray) -> Path:
        """Write process ``rank``'s rows ``[start, end)`` of epoch ``epoch``'s snapshot
        (:meth:`snapshot_shard_file`); see :meth:`save_array_shard`."""
        return self.save_array_shard(f"{self.snapshot_dir.name}/{self.snapshot_file(epoch).name}", rank=rank,
                                     world_size=world_size, start=start, end=end, num_instances=num_instances,
                                     **arrays)

    def save_array_shard(self, name: str, *, rank: int, world_size: int, start: int, end: int,
                         num_instances: int, **arrays: np.ndarray) -> Path:
        """Write process ``rank``'s rows ``[start, end)`` of the per-sample array file ``name``
        (:meth:`shard_file`), atomically; :meth:`load_arrays` joins the ``world_size`` files.

        Parameters
        ----------
        name : str
            The whole file's name in the run directory (``predictions.npz``,
            ``snapshots/epoch_0003.npz``).
        rank, world_size : int
        start, end, num_instances : int
            The rows this process holds, of ``N = num_instances``.
        **arrays : ndarray
            Per-sample arrays of ``end - start`` rows, the same names in every process's file;
            arrays that are not per sample (the ``K`` class sigmas) in rank 0's file only: that
            is how :meth:`load_arrays` tells them apart.

        Returns
        -------
        Path
            The file written.
        """
        rows = int(end) - int(start)
        if not 0 <= int(start) <= int(end) <= int(num_instances):
            raise ValueError(f"rows [{start}, {end}) are not rows of N={num_instances}")
        if rank != 0:
            short = [k for k, v in arrays.items() if np.shape(v)[:1] != (rows,)]
            if short:
                raise ValueError(f"{', '.join(short)}: need {rows} rows (rows [{start}, {end})); arrays that are not "
                                 "per sample go in rank 0's file")
        clash = set(arrays) & set(SNAPSHOT_SHARD_KEYS)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))}: reserved for the rows a shard file holds")
        path = self.shard_file(name, rank, world_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"start": np.int64(start), "end": np.int64(end), "num_instances": np.int64(num_instances)}
        # Streamed into the temporary file (no in-memory copy of the archive, which at 1e9
        # samples would be O(N / P) more), then renamed onto the name: a reader sees the file
        # whole or not at all.
        commit_temp(stream_temp(path, lambda f: write_npz(f, {**arrays, **meta})), path)
        return path

    def _snapshot_files(self) -> dict[int, list[tuple[Path, int | None, int | None]]]:
        """``{epoch: [(file, rank, world_size), ...]}`` of the snapshot files present (rank and
        world_size None for a whole snapshot)."""
        out: dict[int, list[tuple[Path, int | None, int | None]]] = {}
        if not self.snapshot_dir.exists():
            return out
        for f in self.snapshot_dir.iterdir():
            m = _SNAPSHOT_NAME.fullmatch(f.name)
            if m is None:
                continue
            rank, size = (None, None) if m.group(2) is None else (int(m.group(2)), int(m.group(3)))
            out.setdefault(int(m.group(1)), []).append((f, rank, size))
        return out

    def snapshot_epochs(self) -> list[int]:
        """1-based epochs with a snapshot file: whole, or at least one shard of a sharded run's
        (:meth:`load_snapshot` says which shard is missing, if any)."""
        return sorted(self._snapshot_files())

    def load_snapshot(self, epoch: int) -> dict[str, np.ndarray]:
        """The arrays of epoch ``epoch``'s snapshot: ``snapshots/epoch_NNNN.npz``, or the
        concatenation of a sharded run's ``epoch_NNNN.shard-RRRRR-of-PPPPP.npz`` files in rank
        order (the same keys and full ``(N,)`` arrays as a whole snapshot).

        Raises
        ------
        RunDirError
            Naming the file: the snapshot is missing, one of its shard files is missing, or a
            file is unreadable (truncated, damaged) or does not hold the rows its place says.
        """
        return self.load_arrays(f"{self.snapshot_dir.name}/{self.snapshot_file(epoch).name}")

    def _load_shards(self, name: str, shards: list[tuple[Path, int, int]]) -> dict[str, np.ndarray]:
        m = _SNAPSHOT_NAME.fullmatch(Path(name).name)
        what = f"epoch {int(m.group(1))}'s snapshot" if m and Path(name).parent.name == self.snapshot_dir.name else name
        sizes = sorted({p for _, _, p in shards})
        if len(sizes) > 1:
            # Not left by any write order (a resume drops the later epochs' files first, and a
            # file written again removes its old shards first): files copied in by hand.
            raise RunDirError(f"{(self.path / name).parent}: {what} has shard files of "
                              f"{' and '.join(map(str, sizes))} processes; keep those of one")
        size = sizes[0]
        files = [self.shard_file(name, rank, size) for rank in range(size)]
        missing = [f for f in files if not f.exists()]
        if missing:
            shown = ", ".join(map(str, missing[:4])) + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
            raise RunDirError(f"{shown} {'is' if len(missing) == 1 else 'are'} missing: {what} was "
                              f"written by {size} processes, one file each, and every file is needed for its rows")
        # Arrays with one row per sample are in every file; those in rank 0's file alone (the
        # class sigmas) are not per sample. One process's file is the whole array file as it is.
        per_sample = set(self._peek_keys(files[-1])) - set(SNAPSHOT_SHARD_KEYS) if size > 1 else set()
        out: dict[str, np.ndarray] = {}
        end_before, n = 0, 0
        # One file at a time into arrays allocated once: N values and one shard in memory.
        for rank, path in enumerate(files):
            data = self._load_file(str(path.relative_to(self.path)))
            try:
                start, end, num = (int(data.pop(k)) for k in SNAPSHOT_SHARD_KEYS)
            except (KeyError, TypeError, ValueError):
                raise RunDirError(f"{path} is not a shard file (it lacks "
                                  f"{', '.join(SNAPSHOT_SHARD_KEYS)})") from None
            if rank == 0:
                n = num
                out = {k: np.empty((num, *v.shape[1:]), dtype=v.dtype) if k in per_sample else v
                       for k, v in data.items()}
            if start != end_before or num != n or not start <= end <= num:
                raise RunDirError(f"{path} holds rows [{start}, {end}) of N={num}; the files before it end at row "
                                  f"{end_before} of N={n}")
            rows = (end - start,)
            wrong = sorted(k for k in per_sample if k not in data or k not in out
                           or data[k].shape != rows + out[k].shape[1:])
            if rank > 0:
                wrong += sorted(set(data) - per_sample)
            if wrong:
                raise RunDirError(f"{path}: {', '.join(wrong)} not as in the other files of {what} "
                                  f"(per-sample arrays of {end - start} rows, its rows [{start}, {end}), in every file)")
            for k in per_sample:
                out[k][start:end] = data[k]
            end_before = end
        if end_before != n:
            raise RunDirError(f"{files[-1]} ends at row {end_before} of N={n}: the shard files of {what} do not "
                              "cover every sample")
        return out

    def _peek_keys(self, path: Path) -> list[str]:
        """The array names in snapshot file ``path`` (read from the zip directory, not the arrays)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return list(z.files)
        except Exception as e:
            raise RunDirError(f"{path} is unreadable ({type(e).__name__}: {e})") from None

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Replace ``checkpoint.pt`` atomically, with its SHA-256 appended, keeping the one it
        replaces (when known good) as ``checkpoint.prev.pt``; for a sharded state
        (``SHARDS_KEY``, the manifest of shard files already written) then delete the shard
        files neither checkpoint names.

        A failed write (e.g. ``ENOSPC``) leaves both checkpoints as they were and raises
        :class:`RunDirError` saying so."""
        buf = io.BytesIO()
        torch.save(state, buf)
        data = _with_checksum(buf.getvalue())
        del buf
        try:
            tmp = write_temp(self.checkpoint_file, data)
        except OSError as e:
            kept = "the previous checkpoint is intact" if self.checkpoint_file.exists() else "no checkpoint was kept"
            raise RunDirError(f"could not write {self.checkpoint_file} ({e.strerror or e}); {kept}") from e
        # The commit: the known-good latest becomes the previous one, then the new file the latest.
        # A kill between the two renames leaves checkpoint.prev.pt only, which load_checkpoint uses.
        if self._latest_good and self.checkpoint_file.exists():
            os.replace(self.checkpoint_file, self.previous_checkpoint_file)
        os.replace(tmp, self.checkpoint_file)
        fsync_dir(self.path)
        self._latest_good = True
        manifest = state.get(SHARDS_KEY)
        if manifest is not None:
            from dataparams.distributed.checkpoint import remove_stale_shards

            remove_stale_shards(self.shard_dir, manifest, also_keep=self._prev_manifest)
        self._prev_manifest = manifest

    def _load_verified(self, path: Path) -> dict[str, Any]:
        payload = _verified_payload(path)
        try:
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
        except Exception as e:
            raise RunDirError(f"{path} is unreadable ({type(e).__name__}: {e})") from None

    def load_checkpoint(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load the latest checkpoint, or the previous one when the latest is missing, damaged or
        unreadable (:attr:`fallback_reason` then says why); with ``config``, refuse one written
        by another configuration.

        A refusal comes before anything of a resume is written, so a lock this object holds is
        released with the lock file as :meth:`prepare` found it: the refused command leaves the
        directory byte for byte as it was.
        """
        try:
            return self._load_checkpoint(config)
        except RunDirError:
            self._unlock_untouched(self._lock_created)
            raise

    def _load_checkpoint(self, config: dict[str, Any] | None) -> dict[str, Any]:
        self.fallback_reason = None
        try:
            state = self._load_verified(self.checkpoint_file)
            self._latest_good = True
        except RunDirError as latest_error:
            if not self.previous_checkpoint_file.exists():
                raise
            try:
                state = self._load_verified(self.previous_checkpoint_file)
            except RunDirError as e:
                raise RunDirError(f"{latest_error}; and the previous one: {e}") from None
            self.fallback_reason = f"{latest_error}: resumed from {self.previous_checkpoint_file.name}"
            # The damaged latest must not become the previous checkpoint at the next save.
            self._latest_good = False
        self._prev_manifest = state.get(SHARDS_KEY)
        if config is not None:
            diff = _relevant_diff(state.get("config", {}), config, self.defaults)
            if diff:
                raise RunDirError(
                    f"{self.checkpoint_file} was written by another configuration (fields differ: "
                    f"{', '.join(diff[:8])})"
                )
            changed = data_changes(state.get("config", {}), config)
            if changed:
                raise RunDirError(f"{self.checkpoint_file} was written on other data: {'; '.join(changed)}")
        return state

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")

    def read_json(self, name: str) -> dict[str, Any]:
        f = self.path / name
        if not f.exists():
            raise RunDirError(f"{f} is missing")
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{f} is not valid JSON ({e})") from None
