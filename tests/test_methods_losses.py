"""Per-sample losses and selection rules of the peer methods, against scipy and hand computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from scipy.special import lambertw as scipy_lambertw

from dataparams.methods import (
    SuperLoss,
    coteaching_exchange,
    forget_rate_schedule,
    generalized_cross_entropy,
    lambert_w,
    reverse_cross_entropy,
    small_loss_selection,
    superloss,
    superloss_sigma,
    symmetric_cross_entropy,
)

# ----------------------------------------------------------------------------- Lambert W


def test_lambert_w_matches_scipy_away_from_branch_point():
    x = np.concatenate(
        [np.linspace(-0.36, 5.0, 501), np.logspace(-300, 300, 121), -np.logspace(-300, -0.5, 61)]
    )
    w = lambert_w(torch.tensor(x, dtype=torch.float64)).numpy()
    ref = scipy_lambertw(x).real
    np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-14)


def test_lambert_w_near_branch_point():
    # W is infinitely steep at -1/e; scipy itself is only good to ~1e-9 there, so compare loosely
    # and check the defining equation w e^w = x tightly (it is well conditioned in x).
    x = -1.0 / math.e + np.logspace(-16, -2, 57)
    w = lambert_w(torch.tensor(x, dtype=torch.float64))
    np.testing.assert_allclose(w.numpy(), scipy_lambertw(x).real, rtol=0, atol=1e-8)
    np.testing.assert_allclose((w * torch.exp(w)).numpy(), x, rtol=0, atol=1e-16)
    assert bool((w > -1).all())


def test_lambert_w_special_values():
    x = torch.tensor([-1.0 / math.e, 0.0, math.e, math.inf, math.nan, -0.5], dtype=torch.float64)
    w = lambert_w(x)
    assert w[:4].tolist() == [-1.0, 0.0, pytest.approx(1.0, abs=1e-15), math.inf]
    assert math.isnan(w[4]) and math.isnan(w[5])
    # float32(-1/e) lies 9e-9 below the branch point and must still map to -1, not NaN.
    w32 = lambert_w(torch.tensor([-1.0 / math.e, 1.0], dtype=torch.float32))
    assert w32.dtype == torch.float32
    assert w32[0].item() == -1.0
    assert w32[1].item() == pytest.approx(0.5671432904097838, rel=1e-7)


def test_lambert_w_gradient():
    x = torch.tensor([-0.3, -0.1, 0.0, 0.7, 2.5, 40.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambert_w, (x,))


# ----------------------------------------------------------------------------- SuperLoss


def _loss_grid(tau, lam):
    # beta = (l - tau) / lam from well below the clamp through the branch point to large losses.
    beta = np.concatenate(
        [
            [-5.0, -1.0, -2.0 / math.e],
            -2.0 / math.e + np.logspace(-12, -1, 12),
            np.linspace(-0.6, 10.0, 40),
            [0.0, 50.0],
        ]
    )
    return torch.tensor(tau + lam * beta, dtype=torch.float64), beta


@pytest.mark.parametrize("tau, lam", [(math.log(10), 1.0), (0.3, 0.25), (2.0, 4.0)])
def test_superloss_sigma_is_stationary_point(tau, lam):
    loss, beta = _loss_grid(tau, lam)
    sigma = superloss_sigma(loss, tau, lam)
    unclamped = torch.tensor(beta >= -2.0 / math.e)
    # d/dsigma [(l - tau) sigma + lam (log sigma)^2] = (l - tau) + 2 lam log(sigma) / sigma = 0.
    residual = (loss - tau) + 2.0 * lam * torch.log(sigma) / sigma
    torch.testing.assert_close(residual[unclamped], torch.zeros_like(residual[unclamped]), rtol=0, atol=1e-10)
    # Below the clamp the confidence saturates at e.
    torch.testing.assert_close(sigma[~unclamped], torch.full_like(sigma[~unclamped], math.e))
    assert bool(((sigma > 0) & (sigma <= math.e * (1 + 1e-15))).all())


def test_superloss_sigma_is_the_minimiser():
    # Independent of the closed form: minimise over s = log sigma numerically with scipy. For
    # l < tau the objective is unbounded below as sigma -> inf and sigma* is its local minimum,
    # which lies in sigma <= e, so the search is bounded there.
    tau, lam = 1.2, 0.5
    for task_loss in [0.0, 0.9, 1.2, 2.0, 7.0]:
        res = minimize_scalar(
            lambda s, l0=task_loss: (l0 - tau) * math.exp(s) + lam * s * s,
            bounds=(-30.0, 1.0),
            method="bounded",
            options={"xatol": 1e-12},
        )
        sigma = superloss_sigma(torch.tensor([task_loss], dtype=torch.float64), tau, lam)
        assert sigma.item() == pytest.approx(math.exp(res.x), rel=1e-6)


def test_superloss_sigma_is_one_at_threshold():
    tau = math.log(10)
    loss = torch.tensor([tau, tau], dtype=torch.float64)
    assert superloss_sigma(loss, tau, 1.0).tolist() == [1.0, 1.0]
    assert superloss(loss, tau=tau, lam=1.0).tolist() == [0.0, 0.0]
    # Easy samples (l < tau) get sigma > 1, hard ones sigma < 1.
    s = superloss_sigma(torch.tensor([tau - 1.0, tau + 1.0]), tau, 1.0)
    assert s[0] > 1.0 > s[1]


def test_superloss_value_and_gradient():
    tau, lam = 0.5, 0.25
    loss = torch.tensor([0.0, 0.35, 0.5, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    out = superloss(loss, tau=tau, lam=lam)
    assert out.shape == (5,)
    sigma = superloss_sigma(loss, tau, lam)
    assert not sigma.requires_grad
    # By hand: l = 0 has beta = -2 < -2/e, so sigma = e and the loss is (0 - tau) e + lam.
    assert out[0].item() == pytest.approx(-tau * math.e + lam, rel=1e-14)
    # Elsewhere (l - tau) = 2 lam W e^W and log sigma = -W give SL = lam W (W + 2).
    w = scipy_lambertw(0.5 * (loss.detach().numpy()[1:] - tau) / lam).real
    np.testing.assert_allclose(out.detach().numpy()[1:], lam * w * (w + 2), rtol=1e-12, atol=1e-15)
    # The gradient flows through l only and equals sigma* ...
    out.sum().backward()
    torch.testing.assert_close(loss.grad, sigma)
    # ... which is also the total derivative of l -> SL(l, sigma*(l)) (envelope theorem).
    eps = 1e-6
    with torch.no_grad():
        numeric = (superloss(loss + eps, tau=tau, lam=lam) - superloss(loss - eps, tau=tau, lam=lam)) / (
            2 * eps
        )
    torch.testing.assert_close(numeric, sigma, rtol=1e-7, atol=1e-8)


def test_superloss_rejects_bad_lambda():
    with pytest.raises(ValueError, match="lam"):
        superloss(torch.ones(3), tau=1.0, lam=0.0)
    with pytest.raises(ValueError, match="lam"):
        SuperLoss(lam=-1.0)
    with pytest.raises(ValueError, match="tau"):
        SuperLoss(tau="mean", lam=1.0)
    with pytest.raises(ValueError, match="momentum"):
        SuperLoss(lam=1.0, momentum=1.0)


def test_superloss_module_fixed_tau():
    crit = SuperLoss(tau=math.log(10), lam=1.0)
    loss = torch.tensor([0.5, 2.3, 6.0])
    torch.testing.assert_close(crit(loss), superloss(loss, tau=math.log(10), lam=1.0))
    assert crit.tau.item() == pytest.approx(math.log(10))


def test_superloss_module_ema_tau():
    crit = SuperLoss(lam=1.0)  # tau="ema", momentum 0.9
    b1 = torch.tensor([1.0, 3.0])  # mean 2
    b2 = torch.tensor([4.0, 8.0])  # mean 6
    torch.testing.assert_close(crit(b1), superloss(b1, tau=2.0, lam=1.0))  # started at the first mean
    assert crit.tau.item() == pytest.approx(2.0)
    torch.testing.assert_close(crit(b2), superloss(b2, tau=0.9 * 2.0 + 0.1 * 6.0, lam=1.0))
    assert crit.tau.item() == pytest.approx(2.4)
    # Eval mode uses the stored tau and does not update it; it survives a state_dict round trip.
    crit.eval()
    torch.testing.assert_close(crit(b2), superloss(b2, tau=2.4, lam=1.0))
    assert crit.tau.item() == pytest.approx(2.4)
    fresh = SuperLoss(lam=1.0)
    fresh.load_state_dict(crit.state_dict())
    assert fresh.tau.item() == pytest.approx(2.4)


def test_superloss_state_has_no_float64_and_float64_work_leaves_mps():
    # MPS has no float64: the module's state must not be float64 (it moves with .to(device)),
    # and the float64 closed form runs on the CPU for MPS tensors and on the device otherwise.
    from dataparams.methods.superloss import float64_device

    assert all(t.dtype != torch.float64 for t in SuperLoss(lam=1.0).state_dict().values())
    assert float64_device(torch.device("mps")) == torch.device("cpu")
    assert float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    # float32 input: the result keeps the input's dtype and device.
    out = superloss_sigma(torch.tensor([0.5, 3.0]), 1.0, 1.0)
    assert out.dtype == torch.float32 and out.device.type == "cpu"


def test_superloss_module_gradient_reaches_logits():
    logits = torch.randn(6, 4, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = F.cross_entropy(logits, targets, reduction="none")
    SuperLoss(tau=math.log(4), lam=1.0)(ce).mean().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


# ----------------------------------------------------------------------------- GCE and SCE


def _logits_targets():
    logits = torch.tensor(
        [[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [-3.0, 4.0, 1.0], [1.0, -2.0, 0.3]], dtype=torch.float64
    )
    targets = torch.tensor([0, 2, 0, 1])
    return logits, targets


def test_gce_small_q_is_cross_entropy():
    logits, targets = _logits_targets()
    gce = generalized_cross_entropy(logits, targets, q=1e-6)
    ce = F.cross_entropy(logits, targets, reduction="none")
    assert gce.shape == (4,)
    # L_q = CE - q CE^2 / 2 + O(q^2), so the gap is below 1e-6 * 7.4^2 / 2.
    torch.testing.assert_close(gce, ce, rtol=1e-5, atol=1e-8)


def test_gce_q_one_is_mae():
    logits, targets = _logits_targets()
    p = logits.softmax(-1)
    p_y = p[torch.arange(4), targets]
    torch.testing.assert_close(generalized_cross_entropy(logits, targets, q=1.0), 1 - p_y)
    mae = (p - F.one_hot(targets, 3)).abs().sum(-1)
    torch.testing.assert_close(generalized_cross_entropy(logits, targets, q=1.0), mae / 2)


def test_gce_by_hand_default_q():
    # Uniform logits over 3 classes: p_y = 1/3, L_0.7 = (1 - 3^-0.7) / 0.7.
    out = generalized_cross_entropy(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1]))
    assert out.item() == pytest.approx((1 - 3**-0.7) / 0.7, rel=1e-14)


@pytest.mark.parametrize("q", [0.0, -0.5, 1.5])
def test_gce_rejects_q_outside_unit_interval(q):
    logits, targets = _logits_targets()
    with pytest.raises(ValueError, match="q must be in"):
        generalized_cross_entropy(logits, targets, q=q)


def test_rce_by_hand():
    logits, targets = _logits_targets()
    p_y = logits.softmax(-1)[torch.arange(4), targets]
    torch.testing.assert_close(reverse_cross_entropy(logits, targets), 4.0 * (1 - p_y))
    torch.testing.assert_close(reverse_cross_entropy(logits, targets, A=-2.5), 2.5 * (1 - p_y))
    # Uniform logits over 3 classes: p = 1/3 everywhere, RCE = -(2/3) * A.
    assert reverse_cross_entropy(torch.zeros(1, 3), torch.tensor([0])).item() == pytest.approx(8.0 / 3.0)
    with pytest.raises(ValueError, match="negative"):
        reverse_cross_entropy(logits, targets, A=0.0)


def test_sce_is_weighted_sum():
    logits, targets = _logits_targets()
    p_y = logits.softmax(-1)[torch.arange(4), targets]
    ce = F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(symmetric_cross_entropy(logits, targets), 0.1 * ce + 1.0 * 4.0 * (1 - p_y))
    torch.testing.assert_close(
        symmetric_cross_entropy(logits, targets, alpha=6.0, beta=0.1, A=-6.0),
        6.0 * ce + 0.1 * 6.0 * (1 - p_y),
    )
    with pytest.raises(ValueError, match="alpha and beta"):
        symmetric_cross_entropy(logits, targets, alpha=-1.0)


def test_robust_losses_gradients_are_finite_for_confident_wrong_predictions():
    logits = torch.tensor([[60.0, -60.0, 0.0]], requires_grad=True)
    targets = torch.tensor([1])
    for fn in (generalized_cross_entropy, symmetric_cross_entropy):
        logits.grad = None
        fn(logits, targets).sum().backward()
        assert bool(torch.isfinite(logits.grad).all())


# ----------------------------------------------------------------------------- Co-teaching


def test_forget_rate_schedule_by_hand():
    values = [forget_rate_schedule(e, forget_rate=0.5, num_gradual=4) for e in range(7)]
    assert values == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    assert forget_rate_schedule(1, forget_rate=0.4, num_gradual=2, exponent=2.0) == pytest.approx(0.1)
    assert forget_rate_schedule(0, forget_rate=0.2, num_gradual=0) == 0.2
    assert forget_rate_schedule(10, forget_rate=0.2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="forget_rate"):
        forget_rate_schedule(0, forget_rate=1.0)
    with pytest.raises(ValueError, match="epoch"):
        forget_rate_schedule(-1, forget_rate=0.2)


def test_small_loss_selection_keeps_the_right_fraction():
    loss = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    assert small_loss_selection(loss, 0.7).tolist() == [9, 1, 5, 3, 7, 2, 8]
    assert small_loss_selection(loss, 1.0).tolist() == loss.argsort().tolist()
    assert small_loss_selection(loss, 0.0).tolist() == [9]  # at least one sample
    assert small_loss_selection(loss, 0.34).tolist() == [9, 1, 5]  # round(3.4) = 3
    assert small_loss_selection(loss, 0.36).tolist() == [9, 1, 5, 3]  # round(3.6) = 4


def test_small_loss_selection_ties_are_stable():
    loss = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.0, 0.5])
    assert small_loss_selection(loss, 0.5).tolist() == [4, 1, 2]
    assert small_loss_selection(loss, 0.5).tolist() == [4, 1, 2]


def test_coteaching_exchanges_selections():
    targets = torch.tensor([0, 0, 0, 0])
    # Network A is sure of samples 0 and 1, network B of samples 2 and 3.
    logits_a = torch.tensor([[5.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 2.0]], requires_grad=True)
    logits_b = torch.tensor([[0.0, 2.0], [0.0, 1.0], [4.0, 0.0], [5.0, 0.0]], requires_grad=True)
    ce_a = F.cross_entropy(logits_a, targets, reduction="none")
    ce_b = F.cross_entropy(logits_b, targets, reduction="none")
    loss_a, loss_b, keep_a, keep_b = coteaching_exchange(ce_a, ce_b, forget_rate=0.5)
    assert keep_a.tolist() == [0, 1]
    assert keep_b.tolist() == [3, 2]
    # A is updated on B's picks (its own worst samples here) and vice versa.
    torch.testing.assert_close(loss_a, (ce_a[2] + ce_a[3]) / 2)
    torch.testing.assert_close(loss_b, (ce_b[0] + ce_b[1]) / 2)
    assert loss_a.dim() == 0 and loss_b.dim() == 0
    # Each loss reaches only its own network, and only the samples the peer kept.
    (loss_a + loss_b).backward()
    assert logits_a.grad[[0, 1]].abs().sum() == 0 and logits_a.grad[[2, 3]].abs().sum() > 0
    assert logits_b.grad[[2, 3]].abs().sum() == 0 and logits_b.grad[[0, 1]].abs().sum() > 0


def test_coteaching_no_forgetting_is_plain_cross_entropy():
    torch.manual_seed(0)
    logits_a, logits_b = torch.randn(8, 5), torch.randn(8, 5)
    targets = torch.randint(0, 5, (8,))
    ce_a = F.cross_entropy(logits_a, targets, reduction="none")
    ce_b = F.cross_entropy(logits_b, targets, reduction="none")
    loss_a, loss_b, keep_a, keep_b = coteaching_exchange(ce_a, ce_b, forget_rate=0.0)
    assert len(keep_a) == len(keep_b) == 8
    torch.testing.assert_close(loss_a, F.cross_entropy(logits_a, targets))
    torch.testing.assert_close(loss_b, F.cross_entropy(logits_b, targets))


def test_gce_loss_bound_is_the_supremum_of_gce():
    from dataparams.methods.robust_losses import gce_loss_bound, generalized_cross_entropy

    for q in (0.4, 0.7, 1.0):
        # p_y -> 0 as the target logit falls: the loss rises to 1/q and never passes it.
        logits = torch.tensor([[-t, 0.0, 0.0] for t in (0.0, 5.0, 20.0, 60.0)])
        loss = generalized_cross_entropy(logits, torch.zeros(4, dtype=torch.long), q=q)
        # (non-decreasing: in float32 the last two saturate at the bound for q = 1)
        assert loss[1] > loss[0] and torch.all(loss[1:] >= loss[:-1]) and torch.all(loss <= gce_loss_bound(q))
        assert loss[-1].item() == pytest.approx(1.0 / q, rel=1e-6)
    with pytest.raises(ValueError, match="q must be in"):
        gce_loss_bound(0.0)
