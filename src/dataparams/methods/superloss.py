"""SuperLoss: a confidence-aware wrapper around any per-sample task loss.

Implements Castells, Weinzaepfel & Revaud, "SuperLoss: A Generic Loss for Robust Curriculum
Learning" (NeurIPS 2020).

Notation, fixed for this module: ``B`` samples in a minibatch; ``loss`` is the per-sample task
loss ``l``, shape ``(B,)`` (e.g. cross-entropy with ``reduction="none"``).

Each sample gets a confidence ``sigma > 0`` and the task loss is replaced by

    L(l, sigma) = (l - tau) * sigma + lam * (log sigma)^2,

where ``tau`` is a threshold separating easy (``l < tau``) from hard samples and ``lam > 0``
regularises the confidences. The paper does not learn ``sigma``: it uses the minimiser in
closed form,

    sigma*(l) = exp(-W(0.5 * max(-2/e, beta))),    beta = (l - tau) / lam,

with ``W`` the principal branch of the Lambert W function, and the SuperLoss is
``L(l, sigma*(l))``. Easy samples get ``sigma* > 1`` (at most ``e``), hard ones ``sigma* < 1``,
and ``sigma* = 1`` exactly when ``l = tau``. For ``l > tau`` ``sigma*`` is the global minimum
over ``sigma > 0``. For ``l < tau`` the objective is unbounded below as ``sigma -> inf`` and
``sigma*`` is its local minimum (the other branch, ``W_{-1}``, gives the local maximum); for
``beta < -2/e`` there is no stationary point at all, which is what the clamp handles.

Gradient: ``sigma*`` is treated as a constant (detached), as in the reference implementation,
so the gradient flows through ``l`` only and ``dL/dl = sigma*``. This is not an approximation:
``sigma*`` is a stationary point of ``L(l, .)``, so ``dL/dsigma = 0`` there and, by the envelope
theorem, the total derivative of ``l -> L(l, sigma*(l))`` is also ``sigma*``. Where the clamp is
active (``beta < -2/e``) ``sigma* = e`` does not depend on ``l`` at all.

This module imports only torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["lambert_w", "superloss_sigma", "superloss", "SuperLoss", "float64_device"]

# 1/e split into a float64 head and tail (1/e = _INV_E_HI + _INV_E_LO to ~1e-33), so that the
# distance of x to the branch point, x + 1/e, is computed without cancellation; W is infinitely
# steep there and a rounding error of 1e-17 in x + 1/e would cost ~1e-8 in W.
_INV_E_HI = 0.36787944117144233
_INV_E_LO = -1.2428753672788363e-17

# Series of W0 about the branch point in p = sqrt(2 (e x + 1)), from Corless, Gonnet, Hare,
# Jeffrey & Knuth, "On the Lambert W function" (Adv. Comput. Math., 1996).
_BRANCH_SERIES = (
    -1.0,
    1.0,
    -1.0 / 3.0,
    11.0 / 72.0,
    -43.0 / 540.0,
    769.0 / 17280.0,
    -221.0 / 8505.0,
    680863.0 / 43545600.0,
    -1963.0 / 204120.0,
    226287557.0 / 37623398400.0,
)
# Below this p the truncated series alone is exact to float64 (the first omitted term is
# ~p^10 / 260); above it Halley's iteration polishes the series value.
_SERIES_ONLY_P = 1e-3
# Up to this x the series is the initial guess, above it Winitzki's approximation.
_BRANCH_REGION_X = -0.3
# Above this x Newton's method runs on log(w) + w = log(x), which cannot overflow.
_LOG_FORM_X = math.e
# Fixed iteration counts (no data-dependent host sync): from the initial guesses below, two
# Halley steps or four Newton steps already reach float64 round-off; the rest are margin.
_HALLEY_STEPS = 5
_NEWTON_STEPS = 8


def _lambert_w0_float64(x: Tensor, *, input_eps: float) -> Tensor:
    """Principal branch W0 of a float64 tensor; NaN below -1/e, ``inf`` at ``inf``.

    ``input_eps`` is the machine epsilon of the dtype ``x`` came in, which sets how far below
    -1/e an input may lie and still count as the branch point.
    """
    # Distance to the branch point in units of 1/e: e x + 1 = e (x + 1/e).
    e_x_plus_1 = math.e * ((x + _INV_E_HI) + _INV_E_LO)
    # Inputs within a few rounding errors (of their own dtype) below -1/e are taken as the branch
    # point rather than sent to NaN: float64(-1/e) lies 1.2e-17 below it, float32(-1/e) 9e-9.
    below = e_x_plus_1 < -4.0 * input_eps
    p = torch.sqrt(2.0 * e_x_plus_1.clamp(min=0.0))

    # Near the branch point: the series in p.
    series = torch.zeros_like(p)
    for coefficient in reversed(_BRANCH_SERIES):
        series = series * p + coefficient

    # Elsewhere: Winitzki's approximation, a few percent from W0 on [-0.3, inf). Evaluated on a
    # clamped copy so that the unused branch of torch.where never produces NaN.
    xm = x.clamp(min=_BRANCH_REGION_X)
    log1px = torch.log1p(xm)
    winitzki = log1px * (1.0 - torch.log1p(log1px) / (2.0 + log1px))

    w = torch.where(x < _BRANCH_REGION_X, series, winitzki)

    # Halley's method on f(w) = w e^w - x for x <= e. Clamping keeps e^w finite on the unused
    # lanes; w > -1 strictly because p >= _SERIES_ONLY_P wherever the result is used.
    xh = x.clamp(max=_LOG_FORM_X)
    wh = w.clamp(min=-1.0 + 0.5 * _SERIES_ONLY_P, max=1.5)
    for _ in range(_HALLEY_STEPS):
        ew = torch.exp(wh)
        f = wh * ew - xh
        wp1 = wh + 1.0
        wh = wh - f / (ew * wp1 - (wh + 2.0) * f / (2.0 * wp1))

    # Newton's method on g(w) = w + log w - log x for x > e (w > 1).
    xl = x.clamp(min=_LOG_FORM_X)
    log_x = torch.log(xl)
    wl = w.clamp(min=1.0)
    for _ in range(_NEWTON_STEPS):
        wl = wl - (wl + torch.log(wl) - log_x) * wl / (wl + 1.0)

    out = torch.where(x > _LOG_FORM_X, wl, wh)
    out = torch.where(p < _SERIES_ONLY_P, series, out)
    out = torch.where(torch.isposinf(x), x, out)
    return torch.where(below | torch.isnan(x), torch.full_like(x, math.nan), out)


def float64_device(device: torch.device) -> torch.device:
    """Where float64 work for tensors on ``device`` runs: the device itself, or the CPU for MPS.

    MPS has no float64. The tensors here are per-sample (B,), so the round trip is cheap.
    """
    return torch.device("cpu") if device.type == "mps" else device


class _LambertW(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x64 = x.to(float64_device(x.device), torch.float64)
        w = _lambert_w0_float64(x64, input_eps=torch.finfo(x.dtype).eps)
        ctx.save_for_backward(w)
        return w.to(x.device, x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        # Implicit differentiation of w e^w = x: dW/dx = 1 / (e^w (1 + w)); infinite at -1/e.
        grad = grad_output.to(w.device, torch.float64) / (torch.exp(w) * (1.0 + w))
        return grad.to(grad_output.device, grad_output.dtype)


def lambert_w(x: Tensor) -> Tensor:
    """Principal branch ``W0`` of the Lambert W function, the solution ``w >= -1`` of ``w e^w = x``.

    Parameters
    ----------
    x : Tensor, any shape
        Points in ``[-1/e, inf)``. Values more than a few rounding errors (of the dtype of
        ``x``) below ``-1/e``, where no real ``W0`` exists, give NaN, like ``torch.log`` of a
        negative number; values within that tolerance are taken as ``-1/e``, so that
        ``float32(-1/e)``, which lies 9e-9 below the branch point, gives ``-1``.

    Returns
    -------
    Tensor, shape of ``x``
        ``W0(x)``, in the dtype of ``x`` (the default float dtype for integer input). Computed in
        float64, to ~1e-15 relative error away from the branch point: a series in
        ``sqrt(2 (e x + 1))`` very near ``-1/e``, Halley's iteration up to ``x = e`` and Newton's
        iteration on ``log w + w = log x`` beyond, each from a close initial guess and for a fixed
        number of steps (no host synchronisation). Differentiable:
        ``dW/dx = 1 / (e^W (1 + W))``.
    """
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return _LambertW.apply(x)


def superloss_sigma(loss: Tensor, tau: float | Tensor, lam: float) -> Tensor:
    """Closed-form confidence ``sigma*`` of each sample, detached.

    Parameters
    ----------
    loss : Tensor, shape (B,)
        Per-sample task loss ``l``.
    tau : float or Tensor broadcastable to (B,)
        Threshold between easy and hard samples.
    lam : float
        Regularisation strength, ``> 0``.

    Returns
    -------
    Tensor, shape (B,)
        ``sigma* = exp(-W0(0.5 * max(-2/e, (l - tau) / lam)))``, in ``(0, e]``, with no gradient
        (see the module docstring for why the gradient of the SuperLoss needs none).
    """
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    with torch.no_grad():
        wide = float64_device(loss.device)
        # A Python float goes straight to float64 (as_tensor alone would round it to float32).
        tau64 = torch.as_tensor(tau, dtype=tau.dtype if isinstance(tau, Tensor) else torch.float64)
        tau64 = tau64.to(wide, torch.float64)
        beta = (loss.detach().to(wide, torch.float64) - tau64) / lam
        # 0.5 * max(-2/e, beta) == max(-1/e, beta / 2); the clamp is in float64 so the argument
        # is exactly float64(-1/e) on the clamped samples, which lambert_w maps to -1.
        w = _lambert_w0_float64(
            torch.clamp(0.5 * beta, min=-1.0 / math.e), input_eps=torch.finfo(torch.float64).eps
        )
        return torch.exp(-w).to(loss.device, loss.dtype if loss.is_floating_point() else torch.get_default_dtype())


def superloss(loss: Tensor, *, tau: float | Tensor, lam: float) -> Tensor:
    """Per-sample SuperLoss ``(l - tau) * sigma* + lam * (log sigma*)^2``.

    Parameters
    ----------
    loss : Tensor, shape (B,)
        Per-sample task loss ``l``; the gradient flows back through it.
    tau : float or Tensor broadcastable to (B,)
        Threshold, e.g. ``math.log(K)`` for K-class cross-entropy or a running mean of the loss
        (see :class:`SuperLoss`).
    lam : float
        Regularisation strength, ``> 0``.

    Returns
    -------
    Tensor, shape (B,)
        The SuperLoss of each sample (not reduced). Its gradient with respect to ``l`` is
        ``sigma*``: a down-weighted task loss for hard samples, an up-weighted one for easy ones.
        Where the clamp is inactive it equals ``lam * W (W + 2)`` with ``W = -log sigma*``.
    """
    return _superloss_and_sigma(loss, tau, lam)[0]


def _superloss_and_sigma(loss: Tensor, tau: float | Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """The per-sample SuperLoss and the sigma* it used (for callers that also score samples)."""
    sigma = superloss_sigma(loss, tau, lam)
    return (loss - tau) * sigma + lam * torch.log(sigma).square(), sigma


class SuperLoss(nn.Module):
    """SuperLoss with a fixed threshold or one that tracks the loss as a moving average.

    Parameters
    ----------
    tau : "ema" or float, default "ema"
        ``"ema"``: ``tau`` is an exponential moving average of the batch mean of the task loss,
        ``tau <- momentum * tau + (1 - momentum) * mean(l)``, started at the first batch's mean
        (the default momentum 0.9 follows the paper's classification setting). A float fixes ``tau``, e.g.
        ``math.log(K)``, the cross-entropy of a uniform prediction over K classes.
    lam : float
        Regularisation strength, ``> 0``. The paper tunes it per task; there is no universal
        default.
    momentum : float, default 0.9
        Momentum of the moving average, in ``[0, 1)``; ignored for a fixed ``tau``.

    Notes
    -----
    The moving average is updated in training mode only, with the current batch included
    before the batch's SuperLoss is computed; in eval mode the stored ``tau`` is used (or the
    batch mean if no batch has been seen yet). The update is done on the device without a host
    synchronisation. ``tau`` is a buffer, so it is saved in the ``state_dict``.
    """

    tau: Tensor

    def __init__(self, *, tau: str | float = "ema", lam: float, momentum: float = 0.9) -> None:
        super().__init__()
        if isinstance(tau, str):
            if tau != "ema":
                raise ValueError(f"tau must be 'ema' or a float, got {tau!r}")
            self.ema = True
            initial = math.nan  # "no batch seen yet", resolved on device in forward
        else:
            self.ema = False
            initial = float(tau)
            if not math.isfinite(initial):
                raise ValueError(f"a fixed tau must be finite, got {tau}")
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.lam = float(lam)
        self.momentum = float(momentum)
        # float32, not float64: the buffer follows the module to every device, MPS included,
        # which has no float64; a threshold needs no more precision.
        self.register_buffer("tau", torch.tensor(initial, dtype=torch.float32))

    def forward(self, loss: Tensor) -> Tensor:
        """Per-sample SuperLoss of a per-sample task loss: (B,) -> (B,)."""
        return self.loss_and_sigma(loss)[0]

    def loss_and_sigma(self, loss: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` and the confidence sigma* (B,) it used, computed once."""
        tau = self.tau
        if self.ema:
            with torch.no_grad():
                batch_mean = loss.detach().float().mean()
                updated = self.momentum * tau + (1.0 - self.momentum) * batch_mean
                tau = torch.where(torch.isnan(tau), batch_mean, updated if self.training else tau)
                if self.training:
                    self.tau.copy_(tau)
        return _superloss_and_sigma(loss, tau.to(loss.dtype), self.lam)

    def extra_repr(self) -> str:
        tau = "'ema'" if self.ema else f"{self.tau.item():g}"
        momentum = f", momentum={self.momentum}" if self.ema else ""
        return f"tau={tau}, lam={self.lam}{momentum}"
