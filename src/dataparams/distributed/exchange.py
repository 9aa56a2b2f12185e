"""Replicated data parameters: every rank holds all of them and the ranks swap the batch's gradients.

:class:`ReplicatedExchange` does the swap (one all-gather of the batch's ``(row, gradient)``
pairs per step); :class:`ReplicatedObjective` and its optimizer :class:`ExchangeOptimizer` put it
into the engine's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from dataparams.distributed.collectives import NO_BYTES, all_gather_ragged, index_dtype_for
from dataparams.distributed.context import DistributedContext
from dataparams.distributed.steps import StepPlan, check_batch, distributed_loss, loss_weights
from dataparams.losses import scaled_loss
from dataparams.objectives import DataParameterObjective
from dataparams.parameters import DataParameters

__all__ = ["ExchangeOptimizer", "ReplicatedExchange", "ReplicatedObjective"]


class ReplicatedExchange:
    """Keep every rank's full :class:`~dataparams.DataParameters` identical to one process's.

    A step::

        plan = exchange.begin_step(y, idx)                        # all-gather of B_r
        sigma, penalty = exchange.sigma_and_regularizer(plan, wd_class=..., wd_instance=...)
        loss = distributed_loss(scaled_loss(loss_fn, ddp_model(x), y, sigma, reduction="none"),
                                penalty, global_batch_size=plan.global_batch_size,
                                world_size=ctx.world_size)
        loss.backward()                                           # DDP averages the model's
        exchange.all_reduce_gradients(plan)                       # the batch's rows only
        optimizer.step(); dp_optimizer.step()                     # the same update everywhere

    Parameters
    ----------
    data_parameters : DataParameters
        The replica on this rank (all ``N`` rows), initialised identically on every rank.
    ctx : DistributedContext

    Attributes
    ----------
    bytes_total : int
        Data-parameter bytes received by this rank over all steps.

    Notes
    -----
    With a ``torch.amp.GradScaler``, call :meth:`all_reduce_gradients` after ``backward`` and
    before ``scaler.step(dp_optimizer)``: every rank then holds the same scaled gradients, so the
    scaler's check for infinities decides alike everywhere.
    """

    def __init__(self, data_parameters: DataParameters, ctx: DistributedContext) -> None:
        self.dp = data_parameters
        self.ctx = ctx
        self.bytes_total = 0

    def _params(self) -> list[Tensor]:
        # requires_grad is fixed by the curriculum, the same on every rank, so every rank takes
        # part in the same collectives even where a local batch left a gradient unset.
        return [p for p in (self.dp.class_log_sigma, self.dp.instance_log_sigma) if p.requires_grad]

    def begin_step(self, targets: Tensor, indices: Tensor) -> StepPlan:
        """Agree on the global batch size ``B``: one all-gather of ``B_r``.

        Parameters
        ----------
        targets, indices : LongTensor (B_r,)
            This rank's labels and global sample indices.
        """
        device = self.dp.class_log_sigma.device
        targets, indices = check_batch(targets, indices, self.dp.class_log_sigma.shape[0],
                                       self.dp.instance_log_sigma.shape[0], device)
        meta, _, nbytes = all_gather_ragged([targets.shape[0]], NO_BYTES, 0, self.ctx)
        self.bytes_total += nbytes
        return StepPlan(targets, indices, meta[:, 0].tolist(), self.ctx.rank, nbytes)

    def sigma_and_regularizer(
        self, plan: StepPlan, *, wd_class: float = 0.0, wd_instance: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """``DataParameters.sigma_and_regularizer`` on this rank's share: sigma (B_r,), penalty ()."""
        return self.dp.sigma_and_regularizer(plan.targets, plan.indices, wd_class=wd_class, wd_instance=wd_instance)

    def all_reduce_gradients(self, plan: StepPlan) -> int:
        """Replace each data-parameter gradient by the sum over ranks times ``1/P``.

        Each rank coalesces its sparse gradients (a class present many times travels once) and
        all-gathers its ``(row, value)`` pairs, packed into one byte buffer with their counts:
        one collective, padded to the most a share of ``max(B_r)`` samples can produce
        (a second one only if a gradient lists more rows than its share has samples, e.g.
        accumulated over several forward passes). The new ``.grad`` is a sparse COO tensor
        that lists every rank's rows in rank order; the optimizer sums a row's entries.

        Parameters
        ----------
        plan : StepPlan
            This step's :meth:`begin_step`, after ``backward``.

        Returns
        -------
        int
            Bytes received by this rank in this call (also added to ``plan.bytes_exchanged``).
        """
        params = self._params()
        if not self.ctx.is_distributed or not params:
            return 0
        parts = []
        for p in params:
            g = p.grad
            if g is None:
                rows, values = torch.empty(0, dtype=torch.long, device=p.device), p.new_empty(0)
            elif not g.is_sparse:
                raise TypeError("data-parameter gradients must be sparse (gather rows with DataParameters)")
            else:
                g = g.coalesce()
                rows, values = g.indices()[0], g.values()
            parts.append((rows.to(self.ctx.device), values.to(self.ctx.device)))
        index_dtype = index_dtype_for(max(p.shape[0] for p in params))
        isz = index_dtype.itemsize
        bound = sum(min(max(plan.counts), p.shape[0]) * (isz + p.element_size()) for p in params)
        meta, payloads, nbytes = all_gather_ragged(
            [r.shape[0] for r, _ in parts], _pack(parts, index_dtype), bound, self.ctx
        )
        pieces = [_unpack(payloads[r], meta[r].tolist(), index_dtype, [p.dtype for p in params])
                  for r in range(self.ctx.world_size)]
        scale = loss_weights(plan.global_batch_size, self.ctx.world_size).data_gradient
        for j, p in enumerate(params):
            rows = torch.cat([piece[j][0] for piece in pieces]).to(p.device, torch.long)
            values = torch.cat([piece[j][1] for piece in pieces]).to(p.device) * scale
            p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape, check_invariants=False)
        self.bytes_total += nbytes
        plan.bytes_exchanged += nbytes
        return nbytes


def _pack(parts: Sequence[tuple[Tensor, Tensor]], index_dtype: torch.dtype) -> Tensor:
    """Rows and values of every part as one flat uint8 buffer: a single collective moves all."""
    pieces = []
    for rows, values in parts:
        pieces.append(rows.to(index_dtype).contiguous().view(torch.uint8))
        pieces.append(values.contiguous().view(torch.uint8))
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8)


def _unpack(buf: Tensor, counts: Sequence[int], index_dtype: torch.dtype,
            value_dtypes: Sequence[torch.dtype]) -> list[tuple[Tensor, Tensor]]:
    """Inverse of :func:`_pack` for one rank's buffer."""
    out, at = [], 0
    isz = index_dtype.itemsize
    for n, dtype in zip(counts, value_dtypes):
        vsz = dtype.itemsize
        # clone: a byte slice at an odd offset cannot be reinterpreted in place.
        rows = buf[at : at + n * isz].clone().view(index_dtype)
        at += n * isz
        values = buf[at : at + n * vsz].clone().view(dtype)
        at += n * vsz
        out.append((rows, values))
    return out


class ExchangeOptimizer:
    """The data parameters' optimizer, stepping on the gradients of the global batch.

    What :meth:`ReplicatedObjective.optimizers` returns: :meth:`step` first runs
    :meth:`ReplicatedExchange.all_reduce_gradients` on the objective's current step (after
    ``backward``, before the update), then steps the wrapped
    :class:`~dataparams.optim.SparseSGD`, so every rank applies the same update. ``zero_grad``,
    ``param_groups``, ``state_dict`` and ``load_state_dict`` are the wrapped optimizer's: a
    checkpoint holds exactly what one process's holds.

    With a ``torch.amp.GradScaler`` call :meth:`synchronize` before ``scaler.step(optimizer)``
    (:meth:`dataparams.engine.Execution.backward_and_step` does): the scaler then unscales, and
    checks for infinities, the combined gradients, which are the same on every rank, so every
    rank skips or takes the step alike.

    Parameters
    ----------
    optimizer : Optimizer
        The single-process optimizer of the data parameters.
    objective : ReplicatedObjective
        Whose ``exchange`` and ``current_plan`` the step uses.
    """

    def __init__(self, optimizer: Optimizer, objective: ReplicatedObjective) -> None:
        self.optimizer, self.objective = optimizer, objective
        self._synchronized: StepPlan | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def synchronize(self) -> None:
        """Combine every rank's gradients of the current step (once per step)."""
        plan = self.objective.current_plan
        if plan is None:
            raise RuntimeError("no step to synchronise: run the objective's forward and backward first")
        if self._synchronized is not plan:
            self.objective.exchange.all_reduce_gradients(plan)
            self._synchronized = plan

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        self.synchronize()
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)


class ReplicatedObjective(DataParameterObjective):
    """:class:`~dataparams.objectives.DataParameterObjective` for one rank of a torchrun job.

    Every rank holds all data parameters and all per-sample buffers. Per step: ``forward``
    agrees on the global batch size (:meth:`ReplicatedExchange.begin_step`) and returns this
    rank's share of the objective weighted by :func:`distributed_loss`; the optimizer
    (:class:`ExchangeOptimizer`) combines the batch's data-parameter gradients before updating,
    so the replicas stay identical to one process's data parameters. ``record`` writes this
    rank's samples into ``last_loss`` and marks them in ``visited``; at the end of the epoch one
    all-reduce of the ``(N,)`` buffers gives every rank every sample's loss of its latest
    visit, after which ``loss_sum`` and ``log_sigma_sum`` accumulate as in one process. The
    ``state_dict`` has the single-process keys, so checkpoints move between any numbers of
    processes.

    Parameters
    ----------
    data_parameters : DataParameters
        Initialised identically on every rank.
    ctx : DistributedContext
    **options
        As in :class:`~dataparams.objectives.DataParameterObjective`.
    """

    def __init__(self, data_parameters: DataParameters, *, ctx: DistributedContext, **options: Any) -> None:
        super().__init__(data_parameters, **options)
        self.ctx = ctx
        self.exchange = ReplicatedExchange(data_parameters, ctx)
        #: The plan of the step in flight, set by ``forward``; the optimizer reads it.
        self.current_plan: StepPlan | None = None
        self._exchanging = {name: ExchangeOptimizer(opt, self) for name, opt in super().optimizers().items()}
        # Which samples this rank visited in the current epoch; rebuilt every epoch, so not
        # part of a checkpoint (written after the epoch's combination).
        self.register_buffer("visited", torch.zeros(self.num_train, dtype=torch.bool, device=self.last_loss.device),
                             persistent=False)

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        plan = self.exchange.begin_step(targets, indices)
        self.current_plan = plan
        sigma, penalty = self.dp.sigma_and_regularizer(plan.targets, plan.indices, wd_class=self.wd_class,
                                                       wd_instance=self.wd_instance)
        per_sample = scaled_loss(self.loss_fn, logits, targets, sigma, reduction="none")
        loss = distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                                world_size=self.ctx.world_size)
        return loss, per_sample.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return self._exchanging  # type: ignore[return-value]

    @torch.no_grad()
    def record(self, indices: Tensor, per_sample: Tensor, logits: Tensor | None = None) -> None:
        super().record(indices, per_sample, logits)
        self.visited.index_fill_(0, indices, True)

    def on_epoch_start(self, epoch: int) -> None:
        self.visited.zero_()
        super().on_epoch_start(epoch)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        self._combine_last_loss()
        super().on_epoch_end(epoch)

    @torch.no_grad()
    def _combine_last_loss(self) -> None:
        # Each sample's loss comes from the rank that visited it; a sample visited by several
        # ranks in one epoch (a data set that repeats an index) gets the mean of those losses.
        if not self.ctx.is_distributed:
            return
        both = torch.stack([torch.where(self.visited, self.last_loss, 0.0), self.visited.to(self.last_loss.dtype)])
        both = both.to(self.ctx.device)
        dist.all_reduce(both)
        both = both.to(self.last_loss.device)
        self.last_loss.copy_(torch.where(both[1] > 0, both[0] / both[1].clamp_min(1.0), self.last_loss))
