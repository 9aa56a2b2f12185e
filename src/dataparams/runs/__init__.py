"""A run directory: its files (:mod:`~dataparams.runs.rundir`, written durably by
:mod:`~dataparams.runs.files`), the callback that writes them
during training (:mod:`~dataparams.runs.logger`), and the training state a checkpoint holds and a
resumed run restores (:mod:`~dataparams.runs.state`)."""

from dataparams.runs.files import atomic_write_bytes, atomic_write_stream, atomic_write_text
from dataparams.runs.rundir import (
    SHARDS_KEY,
    RunConflictError,
    RunDir,
    RunDirError,
    RunExistsError,
    RunLockedError,
    blocking_file,
)

__all__ = [
    "SHARDS_KEY",
    "RunConflictError",
    "RunDir",
    "RunDirError",
    "RunExistsError",
    "RunLockedError",
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
    "blocking_file",
]
