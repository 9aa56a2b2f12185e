"""Peer methods as training objectives for the same engine as data parameters.

Each class wraps the pure functions of its method's module (cited there) in the
:class:`~dataparams.objectives.Objective` interface, so that the bench trains every method with
the same model, data pipeline, epochs and optimizer, and compares like with like. Per-sample
state (SuperLoss's confidence, AUM's margin sums) lives in (N,) buffers written by index, so a
checkpoint is the objective's ``state_dict()``. GCE and SCE need no class of their own: they are
:class:`~dataparams.objectives.LossObjective` over the losses of
:mod:`~dataparams.methods.robust_losses` (built by :mod:`~dataparams.methods.registry`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dataparams.methods.aum import accumulate_margins
from dataparams.methods.coteaching import coteaching_exchange, forget_rate_schedule
from dataparams.methods.superloss import SuperLoss
from dataparams.objectives import Objective

__all__ = ["AUMObjective", "CoTeachingObjective", "SuperLossObjective"]


class SuperLossObjective(Objective):
    """SuperLoss on the per-sample cross-entropy; its confidence sigma* scores the samples.

    A low confidence marks a sample the model finds hard, so the score is ``-log sigma*`` of
    each sample's latest visit, kept in the (N,) buffer ``confidence``.
    """

    name = "superloss"

    def __init__(self, num_train: int, device: torch.device | str | None = None, *, lam: float,
                 tau: Any) -> None:
        super().__init__(num_train, device)
        self.superloss = SuperLoss(tau=tau, lam=lam).to(device)
        self.register_buffer("confidence", torch.ones(num_train, device=device))

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        ce = F.cross_entropy(logits, targets, reduction="none")
        out, conf = self.superloss.loss_and_sigma(ce)
        with torch.no_grad():
            self.confidence.index_put_((indices,), conf.to(self.confidence.dtype))
        return out.mean(), ce.detach()

    def method_score(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return -np.log((self.snapshot() if snapshot is None else snapshot)["superloss_confidence"])

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"superloss_confidence": self.confidence.float().cpu().numpy()}


class CoTeachingObjective(Objective):
    """Co-teaching: a second network B, each network trained on the other's small-loss picks.

    Network A is the engine's model (the one evaluated). B's parameters join the model's
    optimizer as a second parameter group (:meth:`model_param_groups`), so that B has the same
    optimizer settings and follows the same learning-rate schedule, and its momentum is
    checkpointed with the model's.
    """

    name = "coteaching"

    def __init__(self, model_b: nn.Module, num_train: int, device: torch.device | str | None = None, *,
                 forget_rate: float, num_gradual: int, exponent: float) -> None:
        super().__init__(num_train, device)
        self.model_b = model_b
        self.final_forget_rate, self.num_gradual, self.exponent = forget_rate, num_gradual, exponent
        self.forget_rate = 0.0

    def model_param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.model_b.parameters())}]

    def on_epoch_start(self, epoch: int) -> None:
        self.forget_rate = forget_rate_schedule(epoch, forget_rate=self.final_forget_rate,
                                                num_gradual=self.num_gradual, exponent=self.exponent)

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        self.model_b.train()
        with self.autocast():
            logits_b = self.model_b(inputs)
        logits_b = logits_b.float()
        ce_a = F.cross_entropy(logits, targets, reduction="none")
        ce_b = F.cross_entropy(logits_b, targets, reduction="none")
        loss_a, loss_b, _, _ = coteaching_exchange(ce_a, ce_b, forget_rate=self.forget_rate)
        # The two networks share no parameters, so one backward of the sum gives each its own gradient.
        return loss_a + loss_b, ce_a.detach()


class AUMObjective(Objective):
    """Cross-entropy while recording the area under the margin (:mod:`~dataparams.methods.aum`).

    The margins accumulate in the (N,) buffers ``margin_sum`` and ``margin_count``; the score is
    ``-AUM``. The threshold samples (``data.threshold_file``) are handled by the bench.
    """

    name = "aum"

    def __init__(self, num_train: int, device: torch.device | str | None = None) -> None:
        super().__init__(num_train, device)
        device = torch.device(device or "cpu")
        # float64 sums, as the package's Python floats; MPS has no float64.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.register_buffer("margin_sum", torch.zeros(num_train, dtype=dtype, device=device))
        self.register_buffer("margin_count", torch.zeros(num_train, dtype=dtype, device=device))

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        per = F.cross_entropy(logits, targets, reduction="none")
        accumulate_margins(self.margin_sum, self.margin_count, logits, targets, indices)
        return per.mean(), per.detach()

    def aum(self) -> np.ndarray:
        """AUM per sample (N,); NaN for samples never seen."""
        count = self.margin_count.cpu().double().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, self.margin_sum.cpu().double().numpy() / count, np.nan)

    def method_score(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return -(self.snapshot() if snapshot is None else snapshot)["aum"].astype(np.float64)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"aum": self.aum().astype(np.float32)}
