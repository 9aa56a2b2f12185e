"""What a step of either layout shares: the loss weighting that makes ``P`` ranks compute what
one process computes (see :mod:`dataparams.distributed`), and the :class:`StepPlan` the ranks
agree on at the start of a step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LossWeights", "StepPlan", "check_batch", "distributed_loss", "loss_weights"]


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
    per_sample_loss: Tensor, penalty: Tensor, *, global_batch_size: int, world_size: int
) -> Tensor:
    """This rank's share of the objective, to backpropagate through the DDP model.

    Parameters
    ----------
    per_sample_loss : Tensor (B_r,)
        The loss of each local sample (``reduction="none"``), e.g. from
        :func:`~dataparams.scaled_loss`.
    penalty : Tensor ()
        The local regulariser (sum over the local batch occurrences).
    global_batch_size, world_size : int
        ``B`` (e.g. :attr:`StepPlan.global_batch_size`) and ``P``.

    Returns
    -------
    Tensor ()
        ``(P / B) * per_sample_loss.sum() + P * penalty``.
    """
    if per_sample_loss.dim() != 1:
        raise ValueError(f"per_sample_loss must have shape (B_r,), got {tuple(per_sample_loss.shape)}")
    if per_sample_loss.shape[0] > global_batch_size:
        raise ValueError(f"{per_sample_loss.shape[0]} local samples exceed the global batch of {global_batch_size}")
    w = loss_weights(global_batch_size, world_size)
    return per_sample_loss.sum() * w.per_sample + penalty * w.regularizer


@dataclass
class StepPlan:
    """What the ranks agreed on at the start of a step (returned by ``begin_step``).

    Attributes
    ----------
    targets, indices : LongTensor (B_r,)
        This rank's labels and global sample indices, on the data parameters' device.
    counts : list of int
        ``B_r`` of every rank.
    rank : int
    bytes_exchanged : int
        Data-parameter bytes received by this rank in this step so far (ring accounting).
    """

    targets: Tensor
    indices: Tensor
    counts: list[int]
    rank: int
    bytes_exchanged: int = 0

    @property
    def global_batch_size(self) -> int:
        """``B``, for :func:`distributed_loss`."""
        return sum(self.counts)

    @property
    def world_size(self) -> int:
        return len(self.counts)

    @property
    def offset(self) -> int:
        """Position of this rank's first sample in the global batch."""
        return sum(self.counts[: self.rank])


def check_batch(targets: Tensor, indices: Tensor, num_classes: int, num_instances: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """``targets`` and ``indices`` (B_r,) as long tensors on ``device``; ValueError for the wrong
    shapes or dtypes, IndexError for a label or index outside ``[0, K)`` or ``[0, N)``."""
    for name, t in (("targets", targets), ("indices", indices)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of shape (B_r,)")
    if targets.shape != indices.shape:
        raise ValueError(f"targets and indices differ in size: {targets.shape[0]} and {indices.shape[0]}")
    targets, indices = targets.to(device, torch.long), indices.to(device, torch.long)
    if targets.numel():
        # One host transfer for all four bounds.
        lo_t, hi_t, lo_i, hi_i = torch.stack([targets.min(), targets.max(), indices.min(), indices.max()]).tolist()
        if lo_t < 0 or hi_t >= num_classes:
            raise IndexError(f"targets hold {lo_t if lo_t < 0 else hi_t}, outside [0, {num_classes})")
        if lo_i < 0 or hi_i >= num_instances:
            raise IndexError(f"indices hold {lo_i if lo_i < 0 else hi_i}, outside [0, {num_instances})")
    return targets, indices
