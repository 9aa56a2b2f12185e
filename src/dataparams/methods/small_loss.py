"""The small-loss criterion as a per-sample suspicion score.

Notation, fixed for this module: ``N`` training samples, ``E`` recorded epochs; a loss history
is the (E, N) array of each sample's training loss at each recorded epoch.

Deep networks fit correctly labelled samples before mislabelled ones (Arpit et al., "A Closer
Look at Memorization in Deep Networks", ICML 2017), so a sample whose loss stays high during
training is likely mislabelled. This "small-loss criterion" is the selection rule of
Co-teaching (Han et al., NeurIPS 2018; see :mod:`dataparams.methods.coteaching`), MentorNet
(Jiang et al., ICML 2018), Co-teaching+ (Yu et al., ICML 2019), JoCoR (Wei et al., CVPR 2020)
and of the loss-based filters that many later methods build on. Here it is a score, the
baseline that the learned instance temperatures of data parameters are compared against for
ranking mislabelled samples.

This module imports only torch (numpy arrays are accepted as input).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np

__all__ = ["small_loss_score"]


def small_loss_score(loss_history: Tensor | np.ndarray) -> Tensor:
    """Mean training loss of each sample over the recorded epochs; larger means more suspicious.

    Parameters
    ----------
    loss_history : Tensor or array, shape (E, N)
        Per-sample training loss, one row per recorded epoch. NaN marks an epoch in which a
        sample's loss was not recorded and is left out of its mean.

    Returns
    -------
    Tensor, shape (N,)
        The score, float (float64 for integer input); NaN for a sample never recorded. Sort it
        in decreasing order to rank samples from most to least likely mislabelled.
    """
    history = torch.as_tensor(loss_history)
    if history.dim() != 2 or history.shape[0] == 0:
        raise ValueError(f"loss_history must have shape (E, N) with E >= 1, got {tuple(history.shape)}")
    if not history.is_floating_point():
        history = history.to(torch.float64)
    return torch.nanmean(history, dim=0)
