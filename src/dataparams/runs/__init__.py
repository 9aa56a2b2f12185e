"""A run directory: its files (:mod:`~dataparams.runs.rundir`), the callback that writes them
during training (:mod:`~dataparams.runs.logger`), and the training state a checkpoint holds and a
resumed run restores (:mod:`~dataparams.runs.state`)."""

from dataparams.runs.rundir import (
    SHARDS_KEY,
    RunConflictError,
    RunDir,
    RunDirError,
    RunExistsError,
    atomic_write_bytes,
    atomic_write_stream,
    atomic_write_text,
)

__all__ = [
    "SHARDS_KEY",
    "RunConflictError",
    "RunDir",
    "RunDirError",
    "RunExistsError",
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
]
