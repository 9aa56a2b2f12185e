"""What a step of either layout shares: the loss weighting that makes ``P`` ranks compute what
one process computes (see :mod:`dataparams.distributed`), the :class:`StepPlan` the ranks agree on
at the start of a step, and the checks and padding that let a step run without reading the device.

On a GPU a step never waits for the host: every rank's share travels padded to the step's
*capacity* ``C``, a size all ranks know on the host (:func:`agree_on_capacity`), with its length
``B_r`` beside it on the device. The global batch size ``B`` and which padded positions hold a
sample stay device tensors; checks are device-side assertions (on the CPU they raise at once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LossWeights", "StepPlan", "agree_on_capacity", "check_batch", "device_check", "distributed_loss",
           "fill_padding", "loss_weights"]


class LossWeights(NamedTuple):
    """Factors that make ``P`` ranks reproduce one process (see :mod:`dataparams.distributed`).

    Attributes
    ----------
    per_sample : float
        ``P / B``, on the rank's *sum* of per-sample losses.
    regularizer : float
        ``P``, on the rank's regulariser (a sum over its batch occurrences).
    data_gradient : float
        ``1 / P``, on the data-parameter gradients summed over ranks.
    """

    per_sample: float
    regularizer: float
    data_gradient: float


def loss_weights(global_batch_size: int, world_size: int) -> LossWeights:
    """The per-rank loss weights for a global batch of ``B`` samples over ``P`` ranks.

    With them, DDP's average of the model gradients and the data-parameter gradients summed
    over ranks times ``data_gradient`` equal the single-process gradients of
    ``mean(loss) + regularizer`` over the global batch, for any split of the batch. With
    ``P = 1`` they are ``(1/B, 1, 1)``, the single-process loss itself.
    """
    if global_batch_size < 1 or world_size < 1:
        raise ValueError(f"need global_batch_size >= 1 and world_size >= 1, got {global_batch_size}, {world_size}")
    return LossWeights(world_size / global_batch_size, float(world_size), 1.0 / world_size)


def distributed_loss(
    per_sample_loss: Tensor, penalty: Tensor, *, global_batch_size: int | Tensor, world_size: int
) -> Tensor:
    """This rank's share of the objective, to backpropagate through the DDP model.

    Parameters
    ----------
    per_sample_loss : Tensor (B_r,)
        The loss of each local sample (``reduction="none"``), e.g. from
        :func:`~dataparams.scaled_loss`.
    penalty : Tensor ()
        The local regulariser (sum over the local batch occurrences).
    global_batch_size : int or Tensor ()
        ``B``: an int, or the device tensor :attr:`StepPlan.global_batch_size`, in which case the
        weight ``P / B`` is computed on the device (the same float as from an int: a correctly
        rounded division either way) and the checks are device-side assertions.
    world_size : int
        ``P``.

    Returns
    -------
    Tensor ()
        ``(P / B) * per_sample_loss.sum() + P * penalty``.
    """
    if per_sample_loss.dim() != 1:
        raise ValueError(f"per_sample_loss must have shape (B_r,), got {tuple(per_sample_loss.shape)}")
    n = per_sample_loss.shape[0]
    if not isinstance(global_batch_size, Tensor):
        if n > global_batch_size:
            raise ValueError(f"{n} local samples exceed the global batch of {global_batch_size}")
        w = loss_weights(global_batch_size, world_size)
        return per_sample_loss.sum() * w.per_sample + penalty * w.regularizer
    if world_size < 1:
        raise ValueError(f"need world_size >= 1, got {world_size}")
    b = global_batch_size.to(per_sample_loss.device)
    device_check(b >= max(n, 1), lambda: ValueError(
        f"{n} local samples exceed the global batch of {int(b)}" if n else "the global batch is empty"))
    # A float32 tensor times a Python float multiplies by the float rounded to float32 (reduced
    # precisions: in float32, then rounded): the same arithmetic, with P / B from the device.
    opmath = torch.promote_types(per_sample_loss.dtype, torch.float32)
    b = b.to(opmath)
    weight = torch.full((), float(world_size), dtype=opmath, device=b.device).div(b)
    weighted = (per_sample_loss.sum().to(opmath) * weight).to(per_sample_loss.dtype)
    return weighted + penalty * float(world_size)


@dataclass
class StepPlan:
    """What the ranks agreed on at the start of a step (returned by ``begin_step``).

    What travels between the ranks is the *padded* global batch: ``P * capacity`` positions,
    position ``q * capacity + j`` holding sample ``j`` of rank ``q``'s share when ``j < B_q``
    (:attr:`valid`) and padding otherwise. The sizes ``B_q`` stay on the device, so that
    nothing of a step waits for the host.

    Attributes
    ----------
    targets, indices : LongTensor (B_r,)
        This rank's labels and global sample indices, on the data parameters' device.
    counts : LongTensor (P,)
        ``B_q`` of every rank, on the data parameters' device.
    capacity : int
        ``C``, the padded size of every share (``B_q <= C``), known to every rank on the host.
    rank : int
    bytes_exchanged : int
        Data-parameter bytes received by this rank in this step so far (ring accounting).
    """

    targets: Tensor
    indices: Tensor
    counts: Tensor
    capacity: int
    rank: int
    bytes_exchanged: int = 0

    @property
    def global_batch_size(self) -> Tensor:
        """``B``, a 0-dim device tensor, for :func:`distributed_loss`."""
        return self.counts.sum()

    @property
    def world_size(self) -> int:
        return self.counts.shape[0]

    @property
    def offset(self) -> int:
        """Position of this rank's first sample in the padded global batch."""
        return self.rank * self.capacity

    @property
    def valid(self) -> Tensor:
        """BoolTensor (P * capacity,): the positions of the padded global batch that hold a sample."""
        positions = torch.arange(self.capacity, device=self.counts.device)
        return (positions < self.counts.unsqueeze(1)).reshape(-1)


def device_check(ok: Tensor, error: Callable[[], Exception]) -> None:
    """Assert ``ok`` (a bool tensor of one element) without reading it back.

    ``torch._assert_async``: on a GPU a failure is a device-side assertion (the CUDA context is
    lost, as with any out-of-range index in a kernel; rerun on the CPU to see the message); on the
    CPU it fails at once and ``error()`` is raised, where reading values back costs nothing.
    """
    try:
        torch._assert_async(ok, "dataparams.distributed: a step's check failed (rerun on the CPU for the message)")
    except RuntimeError:
        raise error() from None


def agree_on_capacity(counts: Tensor, local: int, capacity: int | None) -> int:
    """The step's capacity: every share is padded to it, so it must bound every rank's ``B_q``.

    Parameters
    ----------
    counts : LongTensor (P,)
        This step's ``B_q`` of every rank, gathered (on the device).
    local : int
        This rank's ``B_r``.
    capacity : int or None
        The capacity every rank already holds: the caller's ``max_share``, or the one the first
        step fixed. None on the first step of a process without a ``max_share``.

    Returns
    -------
    int
        ``capacity``, after a device-side check that no share exceeds it; or, with None, the
        largest share of this step.

    Raises
    ------
    ValueError
        On the rank whose share exceeds ``capacity`` at once, on the others from the device
        check (at once on the CPU), so that all stop in the same step rather than wait for each
        other in the next collective.
    """
    if capacity is None:
        # The one host read of the exchange, on a process's first step only: the sizes it reads
        # fix the padding of every later step. The package's loaders make the first batch of an
        # epoch a full one, whose largest share (ceil(B / P)) bounds every later share.
        return max(int(counts.max()), 1)
    advice = "pass max_share= (at least ceil(B / P) for global batches of B) to the data parameters"
    if local > capacity:
        raise ValueError(f"this rank's share of {local} samples exceeds the {capacity} that every share is "
                         f"padded to (the first step's largest share): {advice}")
    device_check(counts.max() <= capacity, lambda: ValueError(
        f"a share of {int(counts.max())} samples exceeds the {capacity} that every share is padded to: {advice}"))
    return capacity


def fill_padding(rows: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``rows`` with every padding entry naming the row of the last valid entry.

    A padded list of ``(row, value)`` pairs handed to the optimizer must name some row at every
    position. Naming a row that the list holds anyway, with the value -0.0 (``x + -0.0 == x`` for
    every float, -0.0 included), changes neither the sums of repeated rows nor which rows are
    present; and a write of the last valid entry's value repeats the write that wins anyway.

    Parameters
    ----------
    rows : LongTensor (M,)
    valid : BoolTensor (M,)

    Returns
    -------
    rows : LongTensor (M,)
        Valid entries as given; the others the last valid entry's row, or 0 when none is valid.
    last : LongTensor (1,)
        Position of the last valid entry; -1 when there is none.
    """
    positions = torch.arange(rows.shape[0], device=rows.device)
    last = torch.where(valid, positions, -1).max().reshape(1)
    pad = torch.where(last >= 0, rows.index_select(0, last.clamp_min(0)), 0)
    return torch.where(valid, rows, pad), last


def check_batch(targets: Tensor, indices: Tensor, num_classes: int, num_instances: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """``targets`` and ``indices`` (B_r,) as long tensors on ``device``; ValueError for the wrong
    shapes or dtypes, IndexError for a label or index outside ``[0, K)`` or ``[0, N)``.

    The range check is a device-side assertion (as :class:`~dataparams.DataParameters`'): on
    the CPU an ``IndexError`` at once, on a GPU no wait for the host.
    """
    for name, t in (("targets", targets), ("indices", indices)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of shape (B_r,)")
    if targets.shape != indices.shape:
        raise ValueError(f"targets and indices differ in size: {targets.shape[0]} and {indices.shape[0]}")
    targets, indices = targets.to(device, torch.long), indices.to(device, torch.long)
    checks = [(name, t, limit) for name, t, limit in (("targets", targets, num_classes),
                                                      ("indices", indices, num_instances)) if t.numel()]
    if checks:
        oks = []
        for _, t, limit in checks:
            lo, hi = torch.aminmax(t)
            oks.append((lo >= 0) & (hi < limit))
        device_check(torch.stack(oks).all(), lambda: _out_of_range(checks))
    return targets, indices


def _out_of_range(checks: list[tuple[str, Tensor, int]]) -> IndexError:
    # Built only where the check failed at once (on the CPU): reading the values costs nothing.
    for name, t, limit in checks:
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= limit:
            return IndexError(f"{name} hold {lo if lo < 0 else hi}, outside [0, {limit})")
    return IndexError("targets or indices out of range")
