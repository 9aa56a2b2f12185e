"""Noise-robust classification losses: generalized and symmetric cross-entropy.

Implements

* Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy
  Labels" (NeurIPS 2018): :func:`generalized_cross_entropy`, the ``L_q`` loss;
* Wang, Ma, Chen, Luo, Yi & Bailey, "Symmetric Cross Entropy for Robust Learning with Noisy
  Labels" (ICCV 2019): :func:`symmetric_cross_entropy`, with its reverse term
  :func:`reverse_cross_entropy`.

Notation, fixed for this module: ``B`` samples, ``K`` classes; ``logits`` is (B, K), ``targets``
(B,) integer labels, ``p = softmax(logits)`` and ``p_y`` the probability of the labelled class.
Every function returns one loss per sample, shape (B,); the caller reduces. All of them take
logits, so they also work on temperature-scaled logits through
:func:`dataparams.losses.scaled_loss`.

This module imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gce_loss_bound", "generalized_cross_entropy", "reverse_cross_entropy", "symmetric_cross_entropy"]


def _target_log_prob(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p_y``, shape (B,), from the log-softmax (stable for large logits)."""
    return F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def generalized_cross_entropy(logits: Tensor, targets: Tensor, *, q: float = 0.7) -> Tensor:
    """Generalized cross-entropy ``L_q = (1 - p_y^q) / q`` of each sample.

    Parameters
    ----------
    logits : Tensor, shape (B, K)
    targets : LongTensor, shape (B,)
    q : float, default 0.7
        In ``(0, 1]``; 0.7 is the paper's value. ``q -> 0`` recovers the cross-entropy
        ``-log p_y`` and ``q = 1`` gives ``1 - p_y``, half the MAE ``||e_y - p||_1`` of a
        probability vector.

    Returns
    -------
    Tensor, shape (B,)
        Per-sample loss (the paper's untruncated ``L_q``).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    # p_y^q = exp(q log p_y); -expm1 keeps 1 - p_y^q accurate when q log p_y is tiny, which is
    # what makes the small-q limit equal the cross-entropy to round-off.
    return -torch.expm1(q * _target_log_prob(logits, targets)) / q


def gce_loss_bound(q: float) -> float:
    """The supremum ``1 / q`` of :func:`generalized_cross_entropy` (reached as ``p_y -> 0``): wrong
    labels the network does not fit sit near it, whatever their number."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    return 1.0 / q


def reverse_cross_entropy(logits: Tensor, targets: Tensor, *, A: float = -4.0) -> Tensor:
    """Reverse cross-entropy ``RCE = -sum_k p_k log q_k`` of each sample.

    ``q`` is the one-hot label distribution, whose ``log 0`` is replaced by the constant ``A``
    (``log 1 = 0``), so ``RCE = -A * (1 - p_y)``: a scaled MAE, bounded by ``-A``.

    Parameters
    ----------
    logits : Tensor, shape (B, K)
    targets : LongTensor, shape (B,)
    A : float, default -4.0
        Stand-in for ``log 0``; must be negative. -4 is the paper's value.

    Returns
    -------
    Tensor, shape (B,)
    """
    if not A < 0:
        raise ValueError(f"A stands for log 0 and must be negative, got {A}")
    p = logits.softmax(dim=-1)
    log_q = torch.full_like(p, A).scatter(-1, targets.unsqueeze(-1), 0.0)
    return -(p * log_q).sum(dim=-1)


def symmetric_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    A: float = -4.0,
) -> Tensor:
    """Symmetric cross-entropy ``alpha * CE + beta * RCE`` of each sample.

    Parameters
    ----------
    logits : Tensor, shape (B, K)
    targets : LongTensor, shape (B,)
    alpha, beta : float, default 0.1 and 1.0
        Weights of the cross-entropy and of the reverse cross-entropy, both ``>= 0``; the
        defaults are the paper's CIFAR-10 values (it uses ``alpha = 6, beta = 0.1`` on
        CIFAR-100).
    A : float, default -4.0
        Stand-in for ``log 0`` in the reverse term, see :func:`reverse_cross_entropy`.

    Returns
    -------
    Tensor, shape (B,)

    Notes
    -----
    The released code clips the predicted probabilities to ``[1e-7, 1]`` before the reverse
    term; it is not needed here because ``p`` enters the reverse term linearly, never under a log.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    ce = F.cross_entropy(logits, targets, reduction="none")
    return alpha * ce + beta * reverse_cross_entropy(logits, targets, A=A)
