"""What a checkpoint holds, and how a resumed run gets it back.

A checkpoint is the complete training state after an epoch: the model, its optimizer and
schedule, the objective's ``state_dict`` (data parameters, per-sample buffers, a second network)
and its optimizers' states (SparseSGD momentum), the gradient scaler, the RNG state, the epoch and
the resolved config. Restoring it and training on gives, on the CPU, bit for bit the run that was
never interrupted (``tests/test_resume.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dataparams.build import get_rng_state, set_rng_state
from dataparams.objectives import Objective

__all__ = ["capture_state", "restore_state"]


def capture_state(epoch: int, config: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, objective: Objective, scaler: Any = None) -> dict[str, Any]:
    """The training state after ``epoch`` finished epochs, ready for ``torch.save``."""
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
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def restore_state(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                  objective: Objective, scaler: Any = None) -> int:
    """Load :func:`capture_state`'s output into the run's objects; return the finished epochs."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    objective.load_state_dict(state["objective"])
    for name, opt in objective.optimizers().items():
        opt.load_state_dict(state["objective_optimizers"][name])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"])
