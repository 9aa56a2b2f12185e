"""Peer methods as training objectives for the same engine as data parameters.

Each wraps the pure functions of its module (cited there) in the
:class:`~dataparams.objectives.Objective` interface, so that the bench trains every method with
the same model, data pipeline, epochs and optimizer, and compares like with like.

``method_options`` keys (with defaults):

* ``gce``: ``q`` (0.7, the GCE paper's value);
* ``sce``: ``alpha`` (0.1), ``beta`` (1.0), ``A`` (-4) -- the SCE paper's CIFAR-10 values;
* ``superloss``: ``lam`` (1.0), ``tau`` ("ema" or a number, default ``log K``);
* ``coteaching``: ``forget_rate`` (0.2; the co-teaching paper sets it to the known noise rate),
  ``num_gradual`` (10), ``exponent`` (1.0);
* ``aum``: no options (cross-entropy while the AUM package records margins).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from dataparams.config import ConfigError, TrainConfig
from dataparams.methods.coteaching import coteaching_exchange, forget_rate_schedule
from dataparams.methods.robust_losses import generalized_cross_entropy, symmetric_cross_entropy
from dataparams.methods.superloss import SuperLoss
from dataparams.objectives import Objective

__all__ = ["AUMObjective", "CoTeachingObjective", "LossObjective", "SuperLossObjective", "build_peer_objective"]


class LossObjective(Objective):
    """Any per-sample loss of ``(logits, targets)``, averaged over the batch (GCE, SCE)."""

    def __init__(self, name: str, per_sample: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.name = name
        self.per_sample = per_sample

    def loss(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        per = self.per_sample(logits, targets)
        return per.mean(), per.detach()


class SuperLossObjective(Objective):
    """SuperLoss on the per-sample cross-entropy; its confidence sigma* scores the samples.

    A low confidence marks a sample the model finds hard, so the score is ``-log sigma*`` of
    each sample's latest visit (kept in an (N,) buffer updated by index, O(B) per step).
    """

    name = "superloss"

    def __init__(self, num_train: int, device: torch.device, *, lam: float, tau: Any) -> None:
        self.module = SuperLoss(tau=tau, lam=lam).to(device)
        self.confidence = torch.ones(num_train, device=device)

    def loss(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        ce = F.cross_entropy(logits, targets, reduction="none")
        out, conf = self.module.loss_and_sigma(ce)
        with torch.no_grad():
            self.confidence.index_put_((indices,), conf.to(self.confidence.dtype))
        return out.mean(), ce.detach()

    def modules(self) -> dict[str, nn.Module]:
        return {"superloss": self.module}

    def scores(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return -np.log((self.snapshot() if snapshot is None else snapshot)["superloss_confidence"])

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"superloss_confidence": self.confidence.float().cpu().numpy()}

    def extra_state(self) -> dict[str, Any]:
        return {"confidence": self.confidence.detach().cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "confidence" in state:
            self.confidence.copy_(state["confidence"].to(self.confidence.device))


class CoTeachingObjective(Objective):
    """Co-teaching: a second network B, each network trained on the other's small-loss picks.

    Network A is the engine's model (the one evaluated); B has its own SGD optimizer with the
    same hyper-parameters and follows A's learning rate, copied at the start of each epoch.
    """

    name = "coteaching"

    def __init__(self, model_b: nn.Module, cfg: TrainConfig, *, forget_rate: float, num_gradual: int,
                 exponent: float) -> None:
        o = cfg.optim
        self.model_b = model_b
        self.opt_b = torch.optim.SGD(model_b.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                     weight_decay=o.weight_decay)
        self.final_forget_rate, self.num_gradual, self.exponent = forget_rate, num_gradual, exponent
        self.forget_rate = 0.0
        self.main_optimizer: Optimizer | None = None

    def attach(self, model: nn.Module, optimizer: Optimizer) -> None:
        self.main_optimizer = optimizer

    def on_epoch_start(self, epoch: int) -> None:
        self.forget_rate = forget_rate_schedule(epoch, forget_rate=self.final_forget_rate,
                                                num_gradual=self.num_gradual, exponent=self.exponent)
        if self.main_optimizer is not None:
            for g in self.opt_b.param_groups:
                g["lr"] = self.main_optimizer.param_groups[0]["lr"]

    def loss(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        self.model_b.train()
        with self.autocast():
            logits_b = self.model_b(inputs)
        logits_b = logits_b.float()
        ce_a = F.cross_entropy(logits, targets, reduction="none")
        ce_b = F.cross_entropy(logits_b, targets, reduction="none")
        loss_a, loss_b, _, _ = coteaching_exchange(ce_a, ce_b, forget_rate=self.forget_rate)
        # The two networks share no parameters, so one backward of the sum gives each its own gradient.
        return loss_a + loss_b, ce_a.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return {"model_b": self.opt_b}

    def modules(self) -> dict[str, nn.Module]:
        return {"model_b": self.model_b}


class AUMObjective(Objective):
    """Cross-entropy while recording the area under the margin (Pleiss, Zhang, Elenberg &
    Weinberger, "Identifying Mislabeled Data using the Area Under the Margin Ranking", NeurIPS
    2020) with the ``aum`` package's :class:`AUMCalculator`.

    The margin of a sample is its assigned logit minus the largest other logit; AUM is its mean
    over every update the sample received. Mislabeled samples have low (negative) AUM, so the
    score is ``-AUM``. The threshold samples (``data.threshold_file``) are handled by the bench.
    """

    name = "aum"

    def __init__(self, num_train: int) -> None:
        try:
            from aum import AUMCalculator
        except ImportError:
            raise ImportError("the aum method needs the `aum` package: pip install 'dataparams[bench]'") from None
        self.calculator = AUMCalculator(save_dir=".", compressed=True)
        self.num_train = num_train

    def loss(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        per = F.cross_entropy(logits, targets, reduction="none")
        z, y, ids = logits.detach().float().cpu(), targets.cpu(), indices.cpu().tolist()
        if len(ids) > 1:
            self.calculator.update(z, y, ids)
        else:
            # The package squeezes a batch of one into a scalar and fails; same margin by hand.
            margin = float(z[0, y[0]] - z[0].scatter(0, y, float("-inf")).max())
            self.calculator.counts[ids[0]] += 1
            self.calculator.sums[ids[0]] += margin
        return per.mean(), per.detach()

    def aum(self) -> np.ndarray:
        """AUM per sample (N,); NaN for samples never seen."""
        out = np.full(self.num_train, np.nan)
        for i, c in self.calculator.counts.items():
            out[i] = self.calculator.sums[i] / c
        return out

    def scores(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return -(self.snapshot() if snapshot is None else snapshot)["aum"].astype(np.float64)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {"aum": self.aum().astype(np.float32)}

    def extra_state(self) -> dict[str, Any]:
        return {"counts": dict(self.calculator.counts), "sums": dict(self.calculator.sums)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.calculator.counts.clear()
        self.calculator.sums.clear()
        self.calculator.counts.update(state.get("counts", {}))
        self.calculator.sums.update(state.get("sums", {}))


def build_peer_objective(cfg: TrainConfig, *, num_classes: int, num_train: int, device: torch.device,
                         model_factory: Callable[[], nn.Module] | None) -> Objective:
    """The objective of peer method ``cfg.method`` with ``cfg.method_options``."""
    opts = dict(cfg.method_options)

    def take(allowed: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown method_options for {cfg.method}: {', '.join(unknown)}; valid: "
                              f"{', '.join(allowed)}")
        return {**allowed, **opts}

    if cfg.method == "gce":
        o = take({"q": 0.7})
        return LossObjective("gce", lambda z, y: generalized_cross_entropy(z, y, q=float(o["q"])))
    if cfg.method == "sce":
        o = take({"alpha": 0.1, "beta": 1.0, "A": -4.0})
        return LossObjective("sce", lambda z, y: symmetric_cross_entropy(
            z, y, alpha=float(o["alpha"]), beta=float(o["beta"]), A=float(o["A"])))
    if cfg.method == "superloss":
        o = take({"lam": 1.0, "tau": math.log(num_classes)})
        tau = o["tau"] if o["tau"] == "ema" else float(o["tau"])
        return SuperLossObjective(num_train, device, lam=float(o["lam"]), tau=tau)
    if cfg.method == "coteaching":
        o = take({"forget_rate": 0.2, "num_gradual": 10, "exponent": 1.0})
        if model_factory is None:
            raise ConfigError("co-teaching needs a model factory for its second network")
        return CoTeachingObjective(model_factory(), cfg, forget_rate=float(o["forget_rate"]),
                                   num_gradual=int(o["num_gradual"]), exponent=float(o["exponent"]))
    if cfg.method == "aum":
        take({})
        return AUMObjective(num_train)
    raise ConfigError(f"unknown method {cfg.method!r}")
