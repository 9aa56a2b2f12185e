"""Replicated data parameters: every rank holds all of them and the ranks swap the batch's gradients.

:class:`ReplicatedExchange` does the swap (one all-gather of the batch's ``(row, gradient)``
pairs per step, padded to a size every rank knows, so that no rank waits for the device to learn
another's); :class:`ReplicatedObjective` and its optimizer :class:`ExchangeOptimizer` put it into
the engine's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from dataparams.distributed.collectives import NO_BYTES, all_gather_with_head, as_dtype, index_dtype_for
from dataparams.distributed.context import DistributedContext
from dataparams.distributed.steps import (
    StepPlan,
    agree_on_capacity,
    check_batch,
    device_check,
    distributed_loss,
    fill_padding,
    loss_weights,
)
from dataparams.losses import scaled_loss
from dataparams.objectives import DataParameterObjective
from dataparams.optim import merge_rows
from dataparams.parameters import DataParameters

__all__ = ["ExchangeOptimizer", "ReplicatedExchange", "ReplicatedObjective"]


class ReplicatedExchange:
    """Keep every rank's full :class:`~dataparams.DataParameters` identical to one process's.

    A step::

        plan = exchange.begin_step(y, idx)                        # all-gather of B_r (on the device)
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
    max_share : int, optional
        The most samples a rank's share of any step holds (``ceil(B / P)`` for global batches
        of ``B`` split as :func:`~dataparams.distributed.split_sizes` splits them), the same on
        every rank: every share is padded to it. Without it the first step reads the gathered
        sizes back once and pads every later share to that step's largest; a later, larger
        share stops every rank with a ``ValueError``.

    Attributes
    ----------
    capacity : int or None
        The padded share size (``max_share``, or the first step's largest share).
    bytes_total : int
        Data-parameter bytes received by this rank over all steps.

    Notes
    -----
    With a ``torch.amp.GradScaler``, call :meth:`all_reduce_gradients` after ``backward`` and
    before ``scaler.step(dp_optimizer)``: every rank then holds the same scaled gradients, so the
    scaler's check for infinities decides alike everywhere.
    """

    def __init__(self, data_parameters: DataParameters, ctx: DistributedContext, *,
                 max_share: int | None = None) -> None:
        if max_share is not None and max_share < 1:
            raise ValueError(f"max_share must be >= 1, got {max_share}")
        self.dp = data_parameters
        self.ctx = ctx
        self.capacity = max_share
        self.bytes_total = 0

    def _params(self) -> list[Tensor]:
        # requires_grad is fixed by the curriculum, the same on every rank, so every rank takes
        # part in the same collectives even where a local batch left a gradient unset.
        return [p for p in (self.dp.class_log_sigma, self.dp.instance_log_sigma) if p.requires_grad]

    def begin_step(self, targets: Tensor, indices: Tensor) -> StepPlan:
        """Agree on the global batch size ``B``: one all-gather of ``B_r``, kept on the device.

        Parameters
        ----------
        targets, indices : LongTensor (B_r,)
            This rank's labels and global sample indices.
        """
        device = self.dp.class_log_sigma.device
        targets, indices = check_batch(targets, indices, self.dp.class_log_sigma.shape[0],
                                       self.dp.instance_log_sigma.shape[0], device)
        n = targets.shape[0]
        head = torch.full((1,), n, dtype=torch.int64, device=self.ctx.device)
        heads, _, nbytes = all_gather_with_head(head, NO_BYTES, 0, self.ctx)
        counts = heads[:, 0].to(device)
        self.capacity = agree_on_capacity(counts, n, self.capacity)
        self.bytes_total += nbytes
        return StepPlan(targets, indices, counts, self.capacity, self.ctx.rank, nbytes)

    def sigma_and_regularizer(
        self, plan: StepPlan, *, wd_class: float = 0.0, wd_instance: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """``DataParameters.sigma_and_regularizer`` on this rank's share: sigma (B_r,), penalty ()."""
        return self.dp.sigma_and_regularizer(plan.targets, plan.indices, wd_class=wd_class, wd_instance=wd_instance)

    def all_reduce_gradients(self, plan: StepPlan) -> int:
        """Replace each data-parameter gradient by the sum over ranks times ``1/P``.

        Each rank sums its sparse gradients' repeated rows (:func:`merge_and_pad`: a class
        present many times travels once) and all-gathers its ``(row, value)`` pairs with their
        counts, packed into one byte buffer of a size every rank knows: ``min(C, R)`` pairs of a
        table of ``R`` rows, ``C`` the plan's capacity. One collective, and nothing read back.
        The new ``.grad`` is a sparse COO tensor that lists every rank's rows in rank order,
        then the padding, which names a listed row with the value -0.0 (:func:`fill_padding`),
        so the optimizer's sums and its set of present rows are those of the listed pairs.

        A rank whose gradient lists more distinct rows than ``min(C, R)`` (accumulated over more
        samples than a share holds) stops every rank with a ``ValueError``. If no rank lists a
        row of a level (no rank's loss used it), the padding names row 0, which the optimizer
        then updates with a zero gradient (its momentum decays); a step whose loss uses sigma
        lists every sample's rows.

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
        index_dtype = index_dtype_for(max(p.shape[0] for p in params))
        caps = [min(plan.capacity, p.shape[0]) for p in params]
        counts, pieces = [], []
        for p, cap in zip(params, caps):
            g = p.grad
            if g is None:
                rows, values = torch.empty(0, dtype=torch.long, device=p.device), p.new_empty(0)
            elif not g.is_sparse:
                raise TypeError("data-parameter gradients must be sparse (gather rows with DataParameters)")
            else:
                rows, values = g._indices()[0], g._values()
            rows, sums, count = merge_and_pad(rows, values, cap)
            counts.append(count)
            pieces += [rows.to(self.ctx.device, index_dtype).view(torch.uint8),
                       sums.to(self.ctx.device, p.dtype).view(torch.uint8)]
        capacity = sum(cap * (index_dtype.itemsize + p.element_size()) for p, cap in zip(params, caps))
        heads, payloads, nbytes = all_gather_with_head(torch.stack(counts).to(self.ctx.device), torch.cat(pieces),
                                                       capacity, self.ctx)
        fits = torch.stack([(heads[:, j] <= cap).all() for j, cap in enumerate(caps)]).all()
        device_check(fits, lambda: ValueError(f"a rank's data-parameter gradient lists more distinct rows than the "
                                              f"{caps} its share can produce: one backward per begin_step"))
        scale = loss_weights(1, self.ctx.world_size).data_gradient  # 1 / P, whatever B is
        at = 0
        for j, (p, cap) in enumerate(zip(params, caps)):
            rows = as_dtype(payloads[:, at : at + cap * index_dtype.itemsize], index_dtype)
            at += cap * index_dtype.itemsize
            sums = as_dtype(payloads[:, at : at + cap * p.element_size()], p.dtype)
            at += cap * p.element_size()
            valid = (torch.arange(cap, device=heads.device) < heads[:, j : j + 1]).reshape(-1)
            rows, _ = fill_padding(rows.reshape(-1).to(torch.long), valid)
            # Times 1/P entry by entry, as the combined pairs always were; -0.0 on the padding.
            values = torch.where(valid, sums.reshape(-1) * scale, -0.0)
            p.grad = torch.sparse_coo_tensor(rows.to(p.device).unsqueeze(0), values.to(p.device), p.shape,
                                             check_invariants=False)
        self.bytes_total += nbytes
        plan.bytes_exchanged += nbytes
        return nbytes


def merge_and_pad(rows: Tensor, values: Tensor, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
    """A sparse gradient's pairs with repeated rows summed, padded to ``capacity``: what
    ``coalesce`` gives, at a size known on the host.

    Parameters
    ----------
    rows : LongTensor (M,)
    values : Tensor (M,)
        The listed pairs, a row possibly listed several times.
    capacity : int
        At least the number ``U`` of distinct rows (checked by the caller against the count).

    Returns
    -------
    rows : LongTensor (capacity,)
        The ``U`` distinct rows, sorted, then zeros.
    sums : Tensor (capacity,)
        Each row's values summed in the order ``coalesce`` sums them
        (:func:`~dataparams.optim.merge_rows`), then zeros.
    count : LongTensor ()
        ``U``, on the device.
    """
    out_rows = rows.new_zeros(capacity + 1)
    out_sums = values.new_zeros(capacity + 1)
    if rows.numel() == 0:
        return out_rows[:capacity], out_sums[:capacity], rows.new_zeros(())
    rows, sums = merge_rows(rows, values)  # sorted; each pair carries its row's sum
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    slot = first.cumsum(0) - 1
    # The first pair of each row goes to the row's slot; repeats, and rows past the capacity,
    # to the spare last slot, which is dropped.
    dest = torch.where(first, slot, capacity).clamp_max(capacity)
    out_rows.index_put_((dest,), rows)
    out_sums.index_put_((dest,), sums)
    return out_rows[:capacity], out_sums[:capacity], slot[-1] + 1


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
    max_share : int, optional
        As in :class:`ReplicatedExchange`.
    **options
        As in :class:`~dataparams.objectives.DataParameterObjective`.
    """

    def __init__(self, data_parameters: DataParameters, *, ctx: DistributedContext, max_share: int | None = None,
                 **options: Any) -> None:
        super().__init__(data_parameters, **options)
        self.ctx = ctx
        self.exchange = ReplicatedExchange(data_parameters, ctx, max_share=max_share)
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
