"""Training objectives: how a minibatch's logits become the loss the optimizers follow.

The engine calls one :class:`Objective` per step and knows nothing else about the method. The
paper's method is :class:`DataParameterObjective`: cross-entropy on ``logits / sigma`` plus the
L2 penalty on log sigma (eq. 1, sec. 3.1). With both curricula off sigma is exactly 1 and it is
the plain cross-entropy baseline, so baseline and data parameters run the same code path. Peer
methods (:mod:`dataparams.methods`) implement the same interface.

Notation: ``B`` samples in a batch, ``K`` classes, ``N`` training samples.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.optim import Optimizer

from dataparams.losses import per_sample_cross_entropy, scaled_loss
from dataparams.optim import SparseSGD
from dataparams.parameters import DataParameters

__all__ = ["DataParameterObjective", "Objective"]


class Objective(abc.ABC):
    """Interface of a training objective: ``loss`` is required, the rest have defaults.

    ``loss`` returns the scalar to backpropagate and the per-sample loss (B,) used for logging
    and the small-loss criterion (detached, without any regulariser).
    """

    name = "objective"
    #: Context of the model's forward pass (the engine's mixed precision). The engine sets it
    #: before each epoch, so an objective that runs a network of its own (co-teaching's second
    #: network) runs it in the same precision as the main model.
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @abc.abstractmethod
    def loss(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """(scalar training loss, detached per-sample loss (B,)) for one batch."""

    def attach(self, model: nn.Module, optimizer: Optimizer) -> None:
        """Called once with the model and its optimizer before training starts."""

    def optimizers(self) -> dict[str, Optimizer]:
        """Extra optimizers stepped after the model's (e.g. the data parameters')."""
        return {}

    def modules(self) -> dict[str, nn.Module]:
        """Extra modules with state to checkpoint (e.g. data parameters, a second network)."""
        return {}

    def on_epoch_start(self, epoch: int) -> None:
        """Called with the 0-based epoch before its first batch."""

    def scores(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        """Per-sample suspicion score (N,), larger = more likely mislabeled, or None.

        The score is read from :meth:`snapshot`'s arrays, so it is exactly what the run saves;
        pass the snapshot already taken this epoch to avoid building it twice.
        """
        return None

    def snapshot(self) -> dict[str, np.ndarray]:
        """Arrays saved with each epoch's snapshot (e.g. all sigma values)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class DataParameterObjective(Objective):
    """Cross-entropy on temperature-scaled logits with class / instance / joint data parameters.

    Parameters
    ----------
    data_parameters : DataParameters
    lr_class, lr_instance, momentum : float
        SparseSGD settings of the two levels (separate optimizers, as in the paper).
    wd_class, wd_instance : float
        Weight of the L2 penalty on log sigma of the batch members (added to the loss).
    loss_fn : callable ``(scaled_logits (B, K), targets (B,)) -> (B,)``, optional
        The per-sample loss on scaled logits; cross-entropy by default.
    """

    name = "data-parameters"

    def __init__(
        self,
        data_parameters: DataParameters,
        *,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float = 0.9,
        wd_class: float = 0.0,
        wd_instance: float = 0.0,
        loss_fn: Any = None,
    ) -> None:
        self.dp = data_parameters
        self.wd_class = wd_class
        self.wd_instance = wd_instance
        self.loss_fn = loss_fn or per_sample_cross_entropy
        bounds = data_parameters.log_bounds
        self._optimizers: dict[str, Optimizer] = {}
        if data_parameters.class_curriculum:
            self._optimizers["class"] = SparseSGD(
                [data_parameters.class_log_sigma], lr=lr_class, momentum=momentum, bounds=bounds
            )
        if data_parameters.instance_curriculum:
            self._optimizers["instance"] = SparseSGD(
                [data_parameters.instance_log_sigma], lr=lr_instance, momentum=momentum, bounds=bounds
            )

    def loss(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        sigma, penalty = self.dp.sigma_and_regularizer(
            targets, indices, wd_class=self.wd_class, wd_instance=self.wd_instance
        )
        per_sample = scaled_loss(self.loss_fn, logits, targets, sigma, reduction="none")
        return per_sample.mean() + penalty, per_sample.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return self._optimizers

    def modules(self) -> dict[str, nn.Module]:
        return {"data_parameters": self.dp}

    def scores(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        # The instance temperature is the paper's noise score (sec. 3.4, Figure 4).
        if not self.dp.instance_curriculum:
            return None
        return (self.snapshot() if snapshot is None else snapshot)["instance_sigma"]

    def snapshot(self) -> dict[str, np.ndarray]:
        out = {}
        if self.dp.class_curriculum:
            out["class_sigma"] = self.dp.class_sigma().float().cpu().numpy()
        if self.dp.instance_curriculum:
            out["instance_sigma"] = self.dp.instance_sigma().float().cpu().numpy()
        return out
