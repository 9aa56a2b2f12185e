"""Area under the margin (AUM): the per-sample margin, accumulated by index.

Implements the statistic of Pleiss, Zhang, Elenberg & Weinberger, "Identifying Mislabeled Data
using the Area Under the Margin Ranking" (NeurIPS 2020). The margin of a sample at an update is
its assigned logit minus the largest other logit; its AUM is the mean margin over every update it
received. Mislabeled samples tend to have a low (negative) AUM, because the network keeps
preferring another class for them until it memorises them. The ``aum`` package records the
margins in Python dictionaries, one sample at a time; here they are two (N,) tensors updated by
index in one kernel per batch, which gives the same sums (see ``tests/test_objectives.py``).

Notation, fixed for this module: ``B`` samples in a minibatch, ``K`` classes, ``N`` training
samples. This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["aum_margin", "accumulate_margins"]


def aum_margin(logits: Tensor, targets: Tensor) -> Tensor:
    """Assigned logit minus the largest other logit, (B, K), (B,) -> (B,).

    With ``K = 1`` there is no other class and the margin is ``+inf``.
    """
    assigned = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, targets.unsqueeze(1), float("-inf"))
    return assigned - others.max(dim=1).values


@torch.no_grad()
def accumulate_margins(margin_sum: Tensor, margin_count: Tensor, logits: Tensor, targets: Tensor,
                       indices: Tensor) -> None:
    """Add this batch's margins to ``margin_sum`` and one update to ``margin_count``, by index.

    Parameters
    ----------
    margin_sum, margin_count : Tensor (N,)
        Running sums, updated in place; a sample listed k times in the batch gets k terms.
    logits : Tensor (B, K)
    targets, indices : LongTensor (B,)
    """
    # The margin in the logits' float32, then summed in the buffer's dtype, as the package does
    # (float32 tensors, then Python floats).
    margin = aum_margin(logits.detach().float(), targets).to(margin_sum.dtype)
    # accumulate=True sums repeated indices and has a deterministic CUDA implementation.
    margin_sum.index_put_((indices,), margin, accumulate=True)
    margin_count.index_put_((indices,), torch.ones_like(margin, dtype=margin_count.dtype), accumulate=True)
