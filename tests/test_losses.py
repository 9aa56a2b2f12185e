"""Per-sample losses on scaled logits, and the functional form for any loss."""

import pytest
import torch
import torch.nn.functional as F

from dataparams import DataParameters, scale_logits, scaled_cross_entropy, scaled_loss


def test_scale_logits_divides_each_row():
    z = torch.tensor([[2.0, 4.0], [3.0, 9.0]])
    out = scale_logits(z, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [1.0, 3.0]]))


def test_scale_logits_per_anchor_shape():
    z = torch.randn(2, 5, 3)
    s = torch.rand(2, 5) + 0.5
    torch.testing.assert_close(scale_logits(z, s), z / s[..., None])
    with pytest.raises(ValueError, match="shape of logits"):
        scale_logits(z, torch.ones(2))


def test_scaled_cross_entropy_by_hand():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    y = torch.tensor([0])
    s = torch.tensor([2.0])
    by_hand = -0.5 + torch.log(torch.exp(torch.tensor(0.5)) + 1 + torch.exp(torch.tensor(-0.5)))
    torch.testing.assert_close(scaled_cross_entropy(z, y, s), by_hand)


def test_functional_form_any_loss_reaches_sigma():
    # A loss other than cross-entropy: squared error between softmax and the one-hot target.
    def brier(scaled, targets):
        return (scaled.softmax(-1) - F.one_hot(targets, scaled.shape[-1]).float()).square().sum(-1)

    z = torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    dp = DataParameters(4, 6, instance_curriculum=True)
    sigma = dp(y, torch.arange(6))
    loss = scaled_loss(brier, z, y, sigma, reduction="sum")
    torch.testing.assert_close(loss, brier(z / sigma.detach()[:, None], y).sum())
    loss.backward()
    g = dp.instance_log_sigma.grad.coalesce()
    assert g.indices().tolist() == [list(range(6))]
    # Numerical check of one row's gradient: d/dlog sigma via central differences.
    eps = 1e-3
    z64, y0 = z.double(), y
    def f(ls):
        s = torch.ones(6, dtype=torch.float64)
        s[2] = torch.exp(torch.tensor(ls, dtype=torch.float64))
        return brier(z64 / s[:, None], y0).sum().item()
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    assert g.values()[2].item() == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_scaled_loss_rejects_reduced_loss_fn():
    z = torch.randn(3, 2)
    y = torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="one loss per sample"):
        scaled_loss(F.cross_entropy, z, y, torch.ones(3))


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        scaled_cross_entropy(torch.randn(2, 2), torch.tensor([0, 1]), torch.ones(2), reduction="avg")
