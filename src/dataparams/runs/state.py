"""What a checkpoint holds, and how a resumed run gets it back.

A checkpoint is the complete training state after an epoch: the model, its optimizer and
schedule, the objective's ``state_dict`` (data parameters, per-sample buffers, a second network)
and its optimizers' states (SparseSGD momentum), the gradient scaler, the RNG state, the epoch and
the resolved config. Restoring it and training on gives, on the CPU, bit for bit the run that was
never interrupted (``tests/test_resume.py``).

Under torchrun with replicated data parameters every process holds that same state, so the
checkpoint is the single-process one and any number of processes resumes it. With sharded data
parameters (:class:`~dataparams.distributed.ShardedObjective`) the objective's per-sample rows
live in shard files that every process writes (collectively) into a directory next to the
checkpoint; the checkpoint holds the manifest of those files under
:data:`~dataparams.runs.rundir.SHARDS_KEY`, and any number of processes reads back its own rows.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from dataparams.build import get_rng_state, set_rng_state
from dataparams.config import ConfigError
from dataparams.objectives import Objective
from dataparams.runs.rundir import SHARDS_KEY

__all__ = ["capture_state", "restore_state"]


def is_sharded(objective: Objective) -> bool:
    """Whether ``objective`` keeps its per-sample rows sharded over the ranks: its snapshot, scores
    and checkpoint are then collectives that every rank joins."""
    return hasattr(objective, "save_shards") and hasattr(objective, "load_shards")


def capture_state(epoch: int, config: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, objective: Objective, scaler: Any = None, *,
                  shard_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The training state after ``epoch`` finished epochs, ready for ``torch.save``.

    ``model`` is the plain module (not its ``DistributedDataParallel`` wrapper), so that the
    keys are those of one process. For a sharded objective the shard files are written to
    ``shard_dir`` first (collective: call it on every rank); the state then holds their manifest
    on rank 0 (None on the others, whose state is not saved).
    """
    state = {
        "epoch": epoch,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "objective": objective.state_dict(),
        "objective_optimizers": {n: o.state_dict() for n, o in objective.optimizers().items()},
        "rng": get_rng_state(),
    }
    if is_sharded(objective):
        if shard_dir is None:
            raise ValueError("a sharded objective needs a shard_dir for its checkpoint")
        state[SHARDS_KEY] = objective.save_shards(shard_dir)  # type: ignore[operator]
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def restore_state(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                  objective: Objective, scaler: Any = None, *,
                  shard_dir: str | os.PathLike[str] | None = None) -> int:
    """Load :func:`capture_state`'s output into the run's objects; return the finished epochs.

    Raises
    ------
    ValueError
        When the checkpoint's layout of the data parameters (sharded or not) is not the
        objective's: a run resumes in the ``distributed.mode`` that wrote it.
    """
    sharded = is_sharded(objective)
    if sharded != (state.get(SHARDS_KEY) is not None):
        written, now = ("sharded", "replicated") if not sharded else ("replicated", "sharded")
        raise ConfigError(f"the checkpoint was written with distributed.mode={written}; resume it with "
                         f"--set distributed.mode={written} (not {now})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    objective.load_state_dict(state["objective"])
    for name, opt in objective.optimizers().items():
        opt.load_state_dict(state["objective_optimizers"][name])
    if sharded:
        if shard_dir is None:
            raise ValueError("a sharded objective needs the shard_dir of its checkpoint")
        objective.load_shards(shard_dir, state[SHARDS_KEY])  # type: ignore[operator]
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"])
