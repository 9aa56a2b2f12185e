"""Co-teaching: two networks that each train on the samples the other finds easy.

Implements Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, "Co-teaching: Robust Training of Deep
Neural Networks with Extremely Noisy Labels" (NeurIPS 2018), Algorithm 1.

Notation, fixed for this module: ``B`` samples in a minibatch; ``ce_a`` and ``ce_b`` are the (B,)
per-sample losses of the two networks on the same minibatch under its (possibly noisy) labels.

In each minibatch network A keeps the ``R(T) * B`` samples with the smallest loss under A, network
B does the same under B, and each network is updated on the samples the *other* kept. The keep
rate ``R(T) = 1 - forget_rate(T)`` starts at 1 and falls to ``1 - forget_rate`` over the first
epochs (:func:`forget_rate_schedule`), because networks fit clean samples before noisy ones.
The paper sets ``forget_rate`` to the noise rate when it is known.

This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["forget_rate_schedule", "small_loss_selection", "coteaching_exchange"]


def forget_rate_schedule(
    epoch: int, *, forget_rate: float, num_gradual: int = 10, exponent: float = 1.0
) -> float:
    """Fraction of each minibatch to drop at ``epoch``: ``min(epoch / num_gradual, 1)**exponent * forget_rate``.

    Parameters
    ----------
    epoch : int
        0-based epoch: epoch 0 drops nothing, epoch ``num_gradual`` and later drop
        ``forget_rate``.
    forget_rate : float
        Final fraction to drop, in ``[0, 1)``.
    num_gradual : int, default 10
        Length of the ramp in epochs (the paper's ``T_k``); 0 means no ramp.
    exponent : float, default 1.0
        Shape of the ramp (the paper's ``c``); 1 is linear.

    Returns
    -------
    float

    Notes
    -----
    The released code builds the ramp as ``linspace(0, forget_rate**exponent, num_gradual)``,
    which reaches its final value one epoch early and raises ``forget_rate`` (not the ramp) to
    the power; the formula here is the ramp of the paper's keep rate,
    ``R(T) = 1 - min(T / T_k, 1)^c * tau``.
    """
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must be in [0, 1), got {forget_rate}")
    if epoch < 0:
        raise ValueError(f"epoch is 0-based and must be >= 0, got {epoch}")
    if num_gradual < 0:
        raise ValueError(f"num_gradual must be >= 0, got {num_gradual}")
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    progress = 1.0 if num_gradual == 0 else min(epoch / num_gradual, 1.0)
    return progress**exponent * forget_rate


def small_loss_selection(loss: Tensor, keep_fraction: float) -> Tensor:
    """Indices of the ``round(keep_fraction * B)`` samples with the smallest loss (at least one).

    Parameters
    ----------
    loss : Tensor, shape (B,)
        Per-sample loss; only its order matters.
    keep_fraction : float
        In ``[0, 1]``. The count is Python's ``round`` (half to even) of ``keep_fraction * B``,
        raised to 1 so that a minibatch always contributes a gradient. The released code uses
        ``int()`` (floor) instead.

    Returns
    -------
    LongTensor, shape (k,)
        Indices into the minibatch, in order of increasing loss; ties are broken by position
        (stable sort), so the selection is deterministic.
    """
    if loss.dim() != 1:
        raise ValueError(f"loss must have shape (B,), got {tuple(loss.shape)}")
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    num_keep = max(1, round(keep_fraction * loss.shape[0]))
    return torch.argsort(loss.detach(), stable=True)[:num_keep]


def coteaching_exchange(
    ce_a: Tensor, ce_b: Tensor, *, forget_rate: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Co-teaching losses of the two networks on one minibatch, from their per-sample losses.

    Parameters
    ----------
    ce_a, ce_b : Tensor, shape (B,)
        Per-sample losses (cross-entropy in the paper) of networks A and B on the same
        minibatch, e.g. ``F.cross_entropy(logits_a, targets, reduction="none")``; the caller
        computes them once and may use them for other things too.
    forget_rate : float
        Fraction of the minibatch to drop, in ``[0, 1)``, usually
        :func:`forget_rate_schedule` of the current epoch.

    Returns
    -------
    loss_a : Tensor, scalar
        Mean of ``ce_a`` over ``keep_b``, the samples B selected: update A on it.
    loss_b : Tensor, scalar
        Mean of ``ce_b`` over ``keep_a``.
    keep_a : LongTensor, shape (k,)
        Samples with the smallest loss under A (see :func:`small_loss_selection`).
    keep_b : LongTensor, shape (k,)
        Samples with the smallest loss under B.
    """
    if not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must be in [0, 1), got {forget_rate}")
    keep_fraction = 1.0 - forget_rate
    keep_a = small_loss_selection(ce_a, keep_fraction)
    keep_b = small_loss_selection(ce_b, keep_fraction)
    # The exchange is the point of the method: each network's selection errors differ, so the
    # peer filters out noisy samples that a network would otherwise confirm on itself.
    loss_a = ce_a[keep_b].mean()
    loss_b = ce_b[keep_a].mean()
    return loss_a, loss_b, keep_a, keep_b
