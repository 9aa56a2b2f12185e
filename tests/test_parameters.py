"""DataParameters against the paper's equations (1)-(5), computed by hand in numpy."""

import math

import numpy as np
import pytest
import torch

from dataparams import DataParameters, scaled_cross_entropy
from dataparams.parameters import combine_sigma


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _eq4_dL_dsigma(z, y, sigma):
    """Eq. (4)/(5): dL_i/dsigma_i = (1 - p_y)/sigma^2 * (z_y - sum_{j!=y} q_j z_j), per sample.

    q_j = p_j / (1 - p_y) is the paper's distribution over the non-target classes.
    """
    p = _softmax(z / sigma[:, None])
    out = np.empty(len(y))
    for i in range(len(y)):
        py = p[i, y[i]]
        mask = np.arange(z.shape[1]) != y[i]
        q = p[i, mask] / (1.0 - py)
        out[i] = (1.0 - py) / sigma[i] ** 2 * (z[i, y[i]] - (q * z[i, mask]).sum())
    return out


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    B, K, N = 12, 5, 20
    z = torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, K, (B,), generator=g)
    idx = torch.randperm(N, generator=g)[:B]
    return z, y, idx, K, N


def _random_log_sigma(dp, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dp.class_log_sigma.copy_(torch.rand(dp.num_classes, generator=g, dtype=torch.float64) - 0.5)
        dp.instance_log_sigma.copy_(torch.rand(dp.num_instances, generator=g, dtype=torch.float64) - 0.5)


def test_class_gradient_matches_eq4(batch):
    z, y, idx, K, N = batch
    dp = DataParameters(K, N, class_curriculum=True).double()
    _random_log_sigma(dp)
    sigma = dp(y, idx)
    scaled_cross_entropy(z, y, sigma, reduction="sum").backward()
    grad = dp.class_log_sigma.grad.to_dense().numpy()

    s_class = dp.class_log_sigma.detach().exp().numpy()
    dsig = _eq4_dL_dsigma(z.numpy(), y.numpy(), s_class[y.numpy()])
    expected = np.zeros(K)
    # chain rule through sigma = exp(log sigma): d/dlog sigma = sigma * d/dsigma; the class
    # parameter collects the gradient of every sample of its class in the batch.
    for i, c in enumerate(y.numpy()):
        expected[c] += s_class[c] * dsig[i]
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)
    assert dp.instance_log_sigma.grad is None


def test_instance_gradient_matches_eq4(batch):
    z, y, idx, K, N = batch
    dp = DataParameters(K, N, instance_curriculum=True).double()
    _random_log_sigma(dp)
    scaled_cross_entropy(z, y, dp(y, idx), reduction="sum").backward()
    grad = dp.instance_log_sigma.grad.to_dense().numpy()
    s_inst = dp.instance_log_sigma.detach().exp().numpy()
    dsig = _eq4_dL_dsigma(z.numpy(), y.numpy(), s_inst[idx.numpy()])
    expected = np.zeros(N)
    expected[idx.numpy()] = s_inst[idx.numpy()] * dsig
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)
    assert dp.class_log_sigma.grad is None


def test_joint_gradient_matches_eq5(batch):
    z, y, idx, K, N = batch
    dp = DataParameters(K, N, class_curriculum=True, instance_curriculum=True).double()
    _random_log_sigma(dp)
    scaled_cross_entropy(z, y, dp(y, idx), reduction="sum").backward()
    s_class = dp.class_log_sigma.detach().exp().numpy()
    s_inst = dp.instance_log_sigma.detach().exp().numpy()
    star = s_class[y.numpy()] + s_inst[idx.numpy()]  # sigma* = sigma_class + sigma_inst
    dstar = _eq4_dL_dsigma(z.numpy(), y.numpy(), star)  # eq. (5): same gradient for both
    exp_class = np.zeros(K)
    for i, c in enumerate(y.numpy()):
        exp_class[c] += s_class[c] * dstar[i]
    exp_inst = np.zeros(N)
    exp_inst[idx.numpy()] = s_inst[idx.numpy()] * dstar
    np.testing.assert_allclose(dp.class_log_sigma.grad.to_dense().numpy(), exp_class, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dp.instance_log_sigma.grad.to_dense().numpy(), exp_inst, rtol=1e-10, atol=1e-12)


def test_logit_gradient_matches_eq3(batch):
    z, y, idx, K, N = batch
    z = z.clone().requires_grad_(True)
    dp = DataParameters(K, N, instance_curriculum=True).double()
    _random_log_sigma(dp)
    sigma = dp(y, idx)
    scaled_cross_entropy(z, y, sigma, reduction="sum").backward()
    s = sigma.detach().numpy()
    p = _softmax(z.detach().numpy() / s[:, None])
    onehot = np.eye(K)[y.numpy()]
    np.testing.assert_allclose(z.grad.numpy(), (p - onehot) / s[:, None], rtol=1e-10, atol=1e-12)


def test_modes_forward_values():
    K, N = 4, 6
    y = torch.tensor([0, 3, 3, 1])
    idx = torch.tensor([5, 0, 2, 2])
    c = torch.tensor([0.1, -0.2, 0.3, 0.4])
    n = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 0.25])
    expected = {
        "off": torch.ones(4),
        "class": c[y].exp(),
        "instance": n[idx].exp(),
        "joint": c[y].exp() + n[idx].exp(),
    }
    for cls, inst, mode in [(False, False, "off"), (True, False, "class"), (False, True, "instance"), (True, True, "joint")]:
        dp = DataParameters(K, N, class_curriculum=cls, instance_curriculum=inst)
        with torch.no_grad():
            dp.class_log_sigma.copy_(c)
            dp.instance_log_sigma.copy_(n)
        assert dp.mode == mode
        out = dp(y, idx)
        assert out.shape == (4,)
        torch.testing.assert_close(out, expected[mode])
        if mode == "off":
            assert torch.equal(out, torch.ones(4)) and not out.requires_grad


def test_off_mode_is_plain_cross_entropy():
    z = torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    dp = DataParameters(3, 8)
    sigma = dp(y, torch.arange(8))
    per_sample = scaled_cross_entropy(z, y, sigma, reduction="none")
    torch.testing.assert_close(per_sample, torch.nn.functional.cross_entropy(z, y, reduction="none"), rtol=0, atol=0)
    torch.testing.assert_close(scaled_cross_entropy(z, y, sigma), torch.nn.functional.cross_entropy(z, y))


def test_combine_sigma_requires_batch_size_when_off():
    with pytest.raises(ValueError, match="batch_size"):
        combine_sigma(None, None)


def test_regularizer_counts_each_occurrence():
    dp = DataParameters(3, 5, class_curriculum=True, instance_curriculum=True)
    with torch.no_grad():
        dp.class_log_sigma.copy_(torch.tensor([0.5, -1.0, 2.0]))
        dp.instance_log_sigma.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    y = torch.tensor([1, 1, 1, 2])  # class 1 three times
    idx = torch.tensor([0, 4, 4, 3])
    reg = dp.regularizer(y, idx, wd_class=0.1, wd_instance=0.01)
    by_hand = 0.5 * 0.1 * (3 * 1.0 + 4.0) + 0.5 * 0.01 * (0.01 + 2 * 0.25 + 0.16)
    assert reg.item() == pytest.approx(by_hand, rel=1e-6)
    reg.backward()
    # d/dc_1 = 3 * wd * c_1 ; d/dc_2 = wd * c_2
    torch.testing.assert_close(dp.class_log_sigma.grad.to_dense(), torch.tensor([0.0, 3 * 0.1 * -1.0, 0.1 * 2.0]))
    torch.testing.assert_close(
        dp.instance_log_sigma.grad.to_dense(), torch.tensor([0.01 * 0.1, 0, 0, 0.01 * 0.4, 2 * 0.01 * 0.5])
    )


def test_regularizer_is_zero_for_levels_that_are_off():
    dp = DataParameters(3, 5, instance_curriculum=True, init_class=2.0)
    y, idx = torch.tensor([0, 1]), torch.tensor([0, 1])
    assert dp.regularizer(y, idx, wd_class=1.0).item() == 0.0


def test_init_is_projected_into_clamp_range():
    dp = DataParameters(2, 3, class_curriculum=True, instance_curriculum=True, init_instance=0.001)
    torch.testing.assert_close(dp.instance_sigma(), torch.full((3,), 0.05))
    big = DataParameters(2, 3, class_curriculum=True, init_class=100.0)
    torch.testing.assert_close(big.class_sigma(), torch.full((2,), 20.0))
    free = DataParameters(2, 3, instance_curriculum=True, init_instance=0.001, clamp=None)
    torch.testing.assert_close(free.instance_sigma(), torch.full((3,), 0.001))
    assert free.log_bounds is None
    lo, hi = dp.log_bounds
    assert lo == pytest.approx(math.log(1 / 20)) and hi == pytest.approx(math.log(20))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(init_class=0.0), "init_class"),
        (dict(init_instance=-1.0), "init_instance"),
        (dict(clamp=(2.0, 1.0)), "clamp"),
        (dict(clamp=(0.0, 1.0)), "clamp"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataParameters(3, 4, **kwargs)


@pytest.mark.parametrize(
    "targets,indices,exc,match",
    [
        (torch.tensor([0, 1]), torch.tensor([0, 10]), IndexError, "indices holds 10"),
        (torch.tensor([0, 1]), torch.tensor([-1, 2]), IndexError, "indices holds -1"),
        (torch.tensor([0, 3]), torch.tensor([0, 1]), IndexError, "targets holds 3"),
        (torch.tensor([0, 1]), torch.tensor([0.0, 1.0]), ValueError, "indices must be an integer"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), ValueError, "same batch size"),
        (torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), ValueError, r"shape \(B,\)"),
    ],
)
def test_bad_batch_raises_and_changes_nothing(targets, indices, exc, match):
    dp = DataParameters(3, 10, class_curriculum=True, instance_curriculum=True)
    before = {k: v.clone() for k, v in dp.state_dict().items()}
    with pytest.raises(exc, match=match):
        dp(targets, indices)
    with pytest.raises(exc, match=match):
        dp.regularizer(targets, indices, wd_class=1.0, wd_instance=1.0)
    for k, v in dp.state_dict().items():
        assert torch.equal(v, before[k])
        assert getattr(dp, k).grad is None


def test_int32_indices_are_accepted():
    dp = DataParameters(3, 10, instance_curriculum=True)
    out = dp(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([4, 9], dtype=torch.int32))
    assert out.shape == (2,)


def test_state_dict_layout_is_mode_independent():
    a = DataParameters(3, 7)
    b = DataParameters(3, 7, class_curriculum=True, instance_curriculum=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
