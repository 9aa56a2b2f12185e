"""Per-sample losses on temperature-scaled logits (eq. 1, 3-5).

Notation: ``B`` samples, ``K`` classes; ``logits`` is (B, K), ``targets`` and ``sigma`` are (B,).

Data parameters act only through ``logits / sigma``: any loss computed from logits can take
them, which is what :func:`scaled_loss` is for. Cross-entropy on scaled logits is the paper's
loss; its gradient with respect to sigma is eq. (4) (class and instance) and eq. (5) (joint).
Losses are computed per sample (``reduction="none"``) and reduced explicitly by the caller or
by ``reduction``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["per_sample_cross_entropy", "scale_logits", "scaled_cross_entropy", "scaled_loss"]


def scale_logits(logits: Tensor, sigma: Tensor) -> Tensor:
    """Divide each sample's logits by its temperature: (B, K) / (B,) -> (B, K).

    Extra trailing dimensions of ``logits`` (e.g. per-anchor logits (B, A, K) with sigma (B, A))
    are handled the same way: sigma gets one trailing axis.
    """
    if sigma.shape != logits.shape[:-1]:
        raise ValueError(
            f"sigma must have the shape of logits without the class axis, {tuple(logits.shape[:-1])}, "
            f"got {tuple(sigma.shape)}"
        )
    return logits / sigma.unsqueeze(-1)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def scaled_cross_entropy(
    logits: Tensor, targets: Tensor, sigma: Tensor, *, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of ``softmax(logits / sigma)`` against ``targets`` (eq. 1).

    With sigma = 1 this is the standard cross-entropy, so a disabled curriculum is the baseline.
    """
    return scaled_loss(per_sample_cross_entropy, logits, targets, sigma, reduction=reduction)


def per_sample_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each sample, (B, K), (B,) -> (B,): the paper's ``loss_fn``."""
    return F.cross_entropy(logits, targets, reduction="none")


def scaled_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    logits: Tensor,
    targets: Tensor,
    sigma: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    """Apply any per-sample loss to temperature-scaled logits.

    Parameters
    ----------
    loss_fn : callable ``(scaled_logits (B, K), targets (B,)) -> (B,)``
        A per-sample loss, e.g. ``lambda z, y: F.cross_entropy(z, y, reduction="none",
        label_smoothing=0.1)`` or a focal / generalized cross-entropy.
    logits, targets, sigma
        As in :func:`scaled_cross_entropy`.
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    Tensor
        The reduced loss; the gradient reaches sigma through the scaled logits.
    """
    loss = loss_fn(scale_logits(logits, sigma), targets)
    if loss.shape != logits.shape[:-1]:
        raise ValueError(
            f"loss_fn must return one loss per sample, shape {tuple(logits.shape[:-1])}, got "
            f"{tuple(loss.shape)}; pass reduction='none' to it"
        )
    return _reduce(loss, reduction)
