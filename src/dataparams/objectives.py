"""Training objectives: how a minibatch's logits become the loss the optimizers follow.

An objective is an ``nn.Module``: ``objective(logits, inputs, targets, indices)`` returns the
scalar to backpropagate and the per-sample loss (B,). Whatever it learns or records per training
sample lives in (N,) parameters or buffers written by index -- the data parameters' log sigma,
SuperLoss's confidence, AUM's margin sums, and, for every objective, the training-loss scores of
:class:`~dataparams.scores.ScoreTracker` (an objective *is* one: ``record`` is its ``update``) --
so ``state_dict()`` checkpoints all of it and a step costs O(B). The engine calls nothing method-specific: it runs the forward, steps the model's optimizer
(over the model and :meth:`Objective.model_param_groups`) and :meth:`Objective.optimizers`, and
fires :meth:`Objective.on_epoch_start`.

The paper's method is :class:`DataParameterObjective`: cross-entropy on ``logits / sigma`` plus
the L2 penalty on log sigma (eq. 1, sec. 3.1). With both curricula off sigma is exactly 1 and it
is the plain cross-entropy baseline, so baseline and data parameters run the same code path.
Peer methods live in :mod:`dataparams.methods`, one module each, and subclass :class:`Objective`.

Notation: ``B`` samples in a batch, ``K`` classes, ``N`` training samples.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from dataparams.losses import per_sample_cross_entropy, scaled_loss
from dataparams.optim import SparseSGD
from dataparams.parameters import DataParameters
from dataparams.scores import ScoreTracker

__all__ = ["DataParameterObjective", "LossObjective", "Objective"]


class Objective(ScoreTracker, metaclass=abc.ABCMeta):
    """A training objective with its per-sample state in (N,) buffers.

    Parameters
    ----------
    num_train : int
        ``N``, the number of training samples (the range of ``indices``).
    device : torch.device or str, optional
        Where the per-sample buffers live (the training device).
    sigma : {None, "epoch"}
        Passed to :class:`~dataparams.scores.ScoreTracker`: ``"epoch"`` when the objective owns
        instance temperatures and integrates them at each epoch's end.

    Attributes
    ----------
    last_loss, loss_sum, epochs_seen : buffers
        Those of :class:`~dataparams.scores.ScoreTracker`: :meth:`record` (which the engine calls
        after every step) writes ``last_loss``, :meth:`on_epoch_end` adds it to ``loss_sum``;
        they give the ``last-loss`` and ``mean-loss`` scores (the small-loss criterion: a sample
        whose loss stays high through training is likely mislabeled; Arpit et al. 2017, the
        selection rule of co-teaching).
    autocast : callable returning a context manager
        The precision of the model's forward pass. The engine sets it before each epoch so that
        an objective running a network of its own (co-teaching's second network) runs it in the
        same precision as the main model.
    """

    name = "objective"

    def __init__(self, num_train: int, device: torch.device | str | None = None, *,
                 sigma: str | None = None) -> None:
        super().__init__(num_train, device, sigma=sigma)
        self.num_train = int(num_train)
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @abc.abstractmethod
    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """(scalar training loss, detached per-sample loss (B,) without any regulariser)."""

    def record(self, indices: Tensor, per_sample: Tensor, logits: Tensor | None = None) -> None:
        """Write the batch's per-sample losses into :attr:`last_loss` by index, O(B), and, when the
        objective tracks class probabilities, the softmax of the model's (unscaled) ``logits``."""
        probs = None if logits is None or self.num_classes is None else logits.detach().float().softmax(1)
        self.update(indices, per_sample, probs=probs, check_index=False)

    def optimizers(self) -> dict[str, Optimizer]:
        """Optimizers of the objective's own parameters, stepped after the model's."""
        return {}

    def model_param_groups(self) -> list[dict[str, Any]]:
        """Parameters to train with the model's optimizer and schedule (a second network)."""
        return []

    def on_epoch_start(self, epoch: int) -> None:
        """Called with the 0-based epoch before its first batch."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called with the 0-based epoch after its last batch: accumulates the epoch's scores
        (:meth:`~dataparams.scores.ScoreTracker.end_epoch`), O(N) once per epoch, never per step."""
        self.end_epoch()

    def snapshot(self) -> dict[str, np.ndarray]:
        """Per-sample arrays saved with each epoch's snapshot (e.g. all sigma values)."""
        return {}

    def method_score(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        """Per-sample suspicion score (N,), larger = more likely mislabeled, or None.

        The score is read from :meth:`snapshot`'s arrays, so it is exactly what the run saves;
        pass the snapshot already taken this epoch to avoid building it twice. (The training-loss
        scores by name are the tracker's :meth:`~dataparams.scores.ScoreTracker.scores`.)
        """
        return None


class LossObjective(Objective):
    """Any per-sample loss of ``(logits, targets)``, averaged over the batch (GCE, SCE)."""

    def __init__(self, name: str, per_sample: Callable[[Tensor, Tensor], Tensor], num_train: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__(num_train, device)
        self.name = name
        self.per_sample = per_sample

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        per = self.per_sample(logits, targets)
        return per.mean(), per.detach()


class DataParameterObjective(Objective):
    """Cross-entropy on temperature-scaled logits with class / instance / joint data parameters.

    Parameters
    ----------
    data_parameters : DataParameters
        Its parameters are trained by one :class:`~dataparams.optim.SparseSGD` with a group per
        level that is on (:meth:`DataParameters.param_groups`), which also carries the clamp.
    lr_class, lr_instance, momentum : float
        SparseSGD settings of the two levels (the paper's separate optimizers, as two groups).
    wd_class, wd_instance : float
        Weight of the L2 penalty on log sigma of the batch members (added to the loss).
    loss_fn : callable ``(scaled_logits (B, K), targets (B,)) -> (B,)``, optional
        The per-sample loss on scaled logits; cross-entropy by default.

    Notes
    -----
    With the instance level on, the objective also keeps ``log_sigma_sum`` (N,), the sum over
    finished epochs of each sample's log sigma, whose mean is the ``sigma-mean`` score: sigma
    integrated over training, which does not depend on guessing the epoch.
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
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        device = data_parameters.class_log_sigma.device
        super().__init__(data_parameters.num_instances, device,
                         sigma="epoch" if data_parameters.instance_curriculum else None)
        self.dp = data_parameters
        self.wd_class = wd_class
        self.wd_instance = wd_instance
        self.loss_fn = loss_fn or per_sample_cross_entropy
        groups = data_parameters.param_groups(lr_class=lr_class, lr_instance=lr_instance)
        self._optimizers: dict[str, Optimizer] = (
            {"data_parameters": SparseSGD(groups, momentum=momentum)} if groups else {}
        )

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        sigma, penalty = self.dp.sigma_and_regularizer(
            targets, indices, wd_class=self.wd_class, wd_instance=self.wd_instance
        )
        per_sample = scaled_loss(self.loss_fn, logits, targets, sigma, reduction="none")
        return per_sample.mean() + penalty, per_sample.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return self._optimizers

    def on_epoch_end(self, epoch: int) -> None:
        # The parameters at the epoch's end, exact after its last step.
        self.end_epoch(self.dp.instance_log_sigma if self.dp.instance_curriculum else None)

    def method_score(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
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
