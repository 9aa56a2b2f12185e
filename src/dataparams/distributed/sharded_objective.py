"""The sharded data parameters in the engine's loop: :class:`ShardedObjective` (the training
objective of sec. 2, 3.1 over a :class:`~dataparams.distributed.sharded.ShardedDataParameters`,
with the per-sample score buffers of this rank's rows) and :class:`ShardedOptimizer` (its
update, as an optimizer the engine and a ``GradScaler`` drive).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from dataparams.distributed.context import DistributedContext
from dataparams.distributed.sampling import shard_range
from dataparams.distributed.sharded import ShardedDataParameters, ShardedStepPlan
from dataparams.distributed.steps import distributed_loss, fill_padding
from dataparams.losses import per_sample_cross_entropy, scaled_loss
from dataparams.objectives import Objective
from dataparams.parameters import DEFAULT_CLAMP
from dataparams.scores import scores_from_sums

__all__ = ["ShardedObjective", "ShardedOptimizer"]


class ShardedOptimizer:
    """The update of :class:`ShardedDataParameters` as an optimizer for the engine.

    :meth:`step` gathers the step's per-sample gradients, with the per-sample losses as one more
    column (:meth:`ShardedDataParameters.gather_gradients`), and each owner updates its rows
    (:meth:`ShardedDataParameters.apply_gradients`). For a ``torch.amp.GradScaler``,
    :meth:`synchronize` puts the gathered gradients in ``param_groups`` as the gradient of one
    tensor, so that ``scaler.step(optimizer)`` unscales them, skips the step on every rank alike
    when one is not finite, and ``scaler.update()`` hears of it, as with one process's
    SparseSGD. The optimizer state (momentum) lives in the :class:`ShardedDataParameters`,
    whose shard files hold it: :meth:`state_dict` is empty.

    Parameters
    ----------
    objective : ShardedObjective
    """

    def __init__(self, objective: ShardedObjective) -> None:
        self.objective = objective
        self._gradients: Tensor | None = None
        self._synchronized: ShardedStepPlan | None = None
        self.state: dict[Any, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [] if self._gradients is None else [self._gradients]}]

    def synchronize(self) -> None:
        """Gather the current step's gradients and losses from every rank (once per step)."""
        plan = self.objective.current_plan
        if plan is None:
            raise RuntimeError("no step to synchronise: run the objective's forward and backward first")
        if self._synchronized is plan:
            return
        grads = self.objective.dp.gather_gradients(plan, extra=plan.per_sample_loss)
        if grads is None:
            raise RuntimeError("sharded data parameters need the instance level on")
        # The gathered gradients as the .grad of a leaf of their shape: the form in which a
        # GradScaler finds, unscales and checks gradients.
        self._gradients = torch.zeros_like(grads).requires_grad_(True)
        self._gradients.grad = grads
        self._synchronized = plan

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.synchronize()
        plan, grads = self.objective.current_plan, self._gradients.grad  # type: ignore[union-attr]
        self.objective.dp.apply_gradients(plan, grads)  # type: ignore[arg-type]
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The step's leaves are fresh tensors of each forward pass; only the gathered copy is ours.
        self._gradients = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            raise ValueError("a sharded data-parameter optimizer keeps its state in the shard files, not in a "
                             f"state_dict; got keys {sorted(state_dict)}")


class ShardedObjective(Objective):
    """The data-parameter objective with instance parameters sharded over the ranks (for N of 1e8-1e9).

    The maths of :class:`~dataparams.objectives.DataParameterObjective` (cross-entropy, or
    ``loss_fn``, on ``logits / sigma`` plus the L2 penalty on log sigma; sec. 2, 3.1) over a
    :class:`ShardedDataParameters`. Rank ``r`` keeps, for its rows :func:`shard_range`
    ``(N, P, r)`` only: the instance log-sigmas and their momentum, and the per-sample buffers
    ``last_loss``, ``loss_sum`` and ``log_sigma_sum``. That is ``28 N / P`` bytes per rank
    (float64 sums), where the replicated layout keeps ``36 N`` on every rank. Class parameters
    (``K`` rows) are replicated. The losses of a step travel to the owners with its gradients
    (no extra collective).

    The per-epoch snapshot is written by every rank for its rows (:meth:`snapshot_shard`, local,
    O(N / P)). What needs all ``N`` values gathers them on rank 0 (O(N) there, transiently):
    :meth:`snapshot` (sigma of every sample) and :meth:`scores` (the loss and sigma-mean scores),
    which the run logger calls only for the detection metrics of a run with injected noise.
    Checkpoints are per-shard files (:meth:`save_shards`) that any number of processes reads back
    (:meth:`load_shards`); ``state_dict`` holds the replicated part only.

    Parameters
    ----------
    num_classes, num_train : int
        ``K`` and ``N``.
    ctx : DistributedContext
    class_curriculum, init_class, init_instance, clamp
        As in :class:`~dataparams.DataParameters`; the instance level is always on.
    lr_class, lr_instance, momentum, wd_class, wd_instance, loss_fn
        As in :class:`~dataparams.objectives.DataParameterObjective`.
    max_share : int, optional
        As in :class:`ShardedDataParameters`.
    """

    name = "data-parameters"

    #: The per-sample buffers, each holding this rank's rows.
    SHARDED_BUFFERS = ("last_loss", "loss_sum", "log_sigma_sum")

    def __init__(
        self,
        num_classes: int,
        num_train: int,
        *,
        ctx: DistributedContext,
        class_curriculum: bool = False,
        init_class: float = 1.0,
        init_instance: float = 1.0,
        clamp: tuple[float, float] | None = DEFAULT_CLAMP,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float = 0.9,
        wd_class: float = 0.0,
        wd_instance: float = 0.0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        max_share: int | None = None,
    ) -> None:
        start, end = shard_range(int(num_train), ctx.world_size, ctx.rank)
        # The base class (a ScoreTracker) allocates last_loss, loss_sum and log_sigma_sum with one
        # row per sample it is given: this rank's rows.
        super().__init__(end - start, ctx.device, sigma="epoch")
        self.num_train = int(num_train)
        self.ctx = ctx
        for name in self.SHARDED_BUFFERS:
            # One rank's rows must not reach a state_dict that rank 0 alone saves; they travel in
            # the shard files.
            self.register_buffer(name, getattr(self, name), persistent=False)
        self.dp = ShardedDataParameters(
            num_classes, num_train, ctx=ctx, class_curriculum=class_curriculum, instance_curriculum=True,
            init_class=init_class, init_instance=init_instance, clamp=clamp, lr_class=lr_class,
            lr_instance=lr_instance, momentum=momentum, max_share=max_share,
        )
        self.wd_class, self.wd_instance = wd_class, wd_instance
        self.loss_fn = loss_fn or per_sample_cross_entropy
        #: The plan of the step in flight, set by ``forward``; the optimizer and ``record`` read it.
        self.current_plan: ShardedStepPlan | None = None
        self._optimizer = ShardedOptimizer(self)

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        plan = self.dp.begin_step(targets, indices)
        self.current_plan = plan
        sigma, penalty = self.dp.sigma_and_regularizer(plan, wd_class=self.wd_class, wd_instance=self.wd_instance)
        per_sample = scaled_loss(self.loss_fn, logits, targets, sigma, reduction="none")
        plan.per_sample_loss = per_sample.detach()
        loss = distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                                world_size=self.ctx.world_size)
        return loss, per_sample.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return {"data_parameters": self._optimizer}  # type: ignore[dict-item]

    @torch.no_grad()
    def record(self, indices: Tensor, per_sample: Tensor, logits: Tensor | None = None) -> None:
        """The owners write the global batch's losses into their rows of ``last_loss``, O(B)
        (class probabilities are not tracked in sharded mode).

        The losses were gathered with the step's gradients; ``indices`` and ``per_sample`` (this
        rank's share) are already part of them.
        """
        plan = self.current_plan
        if plan is None:
            raise RuntimeError("record() follows a step of this objective")
        self._optimizer.synchronize()
        start, end = self.dp.shard
        if end == start:
            return
        own = plan.owned
        rows, last = fill_padding(plan.global_indices - start, own)  # type: ignore[operator,arg-type]
        losses = plan.global_loss.to(self.last_loss.dtype)  # type: ignore[union-attr]
        # The padding writes what the last owned position writes, so that a row's last write is
        # still its last sample's; with no owned position, row 0's own value back.
        pad = torch.where(last >= 0, losses.index_select(0, last.clamp_min(0)), self.last_loss[:1])
        self.last_loss.index_put_((rows,), torch.where(own, losses, pad))  # type: ignore[arg-type]

    def on_epoch_end(self, epoch: int) -> None:
        self.end_epoch(self.dp.instance_log_sigma)

    @torch.no_grad()
    def snapshot_shard(self) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
        """This rank's rows of :meth:`snapshot` and of the ``last-loss`` score: local, O(N / P).

        Returns
        -------
        (start, end) : (int, int)
            The rows, :func:`shard_range` ``(N, P, rank)``.
        arrays : dict of str to ndarray
            ``instance_sigma`` (end - start,) float32 and ``last-loss`` (end - start,) float32,
            row ``i`` being sample ``start + i``: the values :meth:`snapshot` and :meth:`scores`
            gather for these rows (the losses bit for bit, the sigmas up to the last bit of
            ``exp``, whose vectorised and scalar paths may differ); ``class_sigma`` (K,) float32
            on every rank when the class level is on.
        """
        out = {}
        if self.dp.class_curriculum:
            out["class_sigma"] = self.dp.class_log_sigma.detach().exp().float().cpu().numpy()
        out["instance_sigma"] = self.dp.instance_log_sigma.detach().exp().float().cpu().numpy()
        out["last-loss"] = self.last_loss.detach().float().cpu().numpy()
        return self.dp.shard, out

    def snapshot(self) -> dict[str, np.ndarray]:
        """Class sigma, and on rank 0 every sample's sigma (gathered: collective, O(N) on rank 0)."""
        out = {}
        if self.dp.class_curriculum:
            out["class_sigma"] = self.dp.class_log_sigma.detach().exp().float().cpu().numpy()
        gathered = self.dp.gather_instance_log_sigma()
        if gathered is not None:
            out["instance_sigma"] = gathered.exp().float().cpu().numpy()
        return out

    def method_score(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        # The instance temperature is the paper's noise score (sec. 3.4, Figure 4).
        snap = self.snapshot() if snapshot is None else snapshot
        return snap.get("instance_sigma")

    def scores(self) -> dict[str, np.ndarray]:
        """The tracker's scores (:meth:`~dataparams.scores.ScoreTracker.scores`) of every sample on
        rank 0 (empty elsewhere): one gather of the three per-sample buffers (collective, O(N) on
        rank 0), then :func:`~dataparams.scores.scores_from_sums` as in one process.
        """
        local = torch.stack([getattr(self, name).double() for name in self.SHARDED_BUFFERS], 1)
        gathered = self.dp.gather_shard(local)
        if gathered is None:
            return {}
        last_loss, loss_sum, log_sigma_sum = (gathered[:, k].cpu().numpy() for k in range(3))
        return scores_from_sums(last_loss=last_loss.astype(np.float32), loss_sum=loss_sum,
                                epochs=int(self.epochs_seen), log_sigma_sum=log_sigma_sum)

    def save_shards(self, directory: str | os.PathLike[str]) -> dict[str, Any] | None:
        """Write this rank's rows (parameters, momentum, per-sample buffers) to ``directory``.

        :meth:`ShardedDataParameters.write_shards`: collective; returns the manifest on rank 0
        (None elsewhere), which the caller commits inside its checkpoint.
        """
        return self.dp.write_shards(directory, {name: getattr(self, name) for name in self.SHARDED_BUFFERS})

    @torch.no_grad()
    def load_shards(self, directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        """Load this rank's rows of a save by any number of processes.

        :meth:`ShardedDataParameters.read_shards`: collective (call it on every rank); a missing
        or damaged shard file stops every rank with the same :class:`ShardFileError`.
        """
        # Decided from the manifest alone, so that every rank refuses alike (a rank without rows
        # too), before any collective.
        missing = [name for name in self.SHARDED_BUFFERS if name not in manifest.get("extra", [])]
        if missing and self.num_train:
            raise ValueError(f"the sharded checkpoint in {directory} holds no {', '.join(map(repr, missing))}")
        arrays = self.dp.read_shards(directory, manifest)
        for name in self.SHARDED_BUFFERS:
            if name in arrays:
                getattr(self, name).copy_(arrays[name])
