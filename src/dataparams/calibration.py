"""Temperature scaling on held-out data, and the expected calibration error (sec. 2.2).

Data parameters are not used at inference, so the model's probabilities are uncalibrated; the
paper suggests calibrating on a held-out validation set (Guo et al., ICML 2017). Notation:
``N`` samples, ``K`` classes, ``logits`` (N, K), ``targets`` (N,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["expected_calibration_error", "fit_temperature"]


def fit_temperature(logits: Tensor, targets: Tensor, *, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on held-out data."""
    if len(targets) == 0:
        raise ValueError("fit_temperature needs at least one held-out sample (set data.val_fraction > 0)")
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probs: Tensor, targets: Tensor, *, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins: sum_b |B_b|/N * |acc(B_b) - conf(B_b)|."""
    conf, pred = probs.max(1)
    correct = (pred == targets).double()
    conf = conf.double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    ece = torch.zeros((), dtype=torch.float64)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.double().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return float(ece)
