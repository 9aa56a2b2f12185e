"""SparseSGD: the issue's worked example, agreement with torch.optim.SGD, state round-trip."""

import copy

import pytest
import torch

from dataparams import DataParameters, SparseSGD
from dataparams.optim import merge_rows
from dataparams.parameters import gather_rows


def _step_rows(param, opt, rows, grad_value=1.0):
    """One step in which each listed row gets gradient ``grad_value``."""
    opt.zero_grad()
    (gather_rows(param, torch.tensor(rows)) * grad_value).sum().backward()
    opt.step()


def test_worked_example_from_the_issue():
    # lr 1, momentum 0.9, rows start at 0, each present row gets gradient 1:
    # [0,1] then [2] then [0] -> [-1,-1,-1,0] after step 2 and [-2.9,-1,-1,0] after step 3.
    p = torch.nn.Parameter(torch.zeros(4))
    opt = SparseSGD([p], lr=1.0, momentum=0.9)
    _step_rows(p, opt, [0, 1])
    torch.testing.assert_close(p.detach(), torch.tensor([-1.0, -1.0, 0.0, 0.0]))
    _step_rows(p, opt, [2])
    torch.testing.assert_close(p.detach(), torch.tensor([-1.0, -1.0, -1.0, 0.0]))
    _step_rows(p, opt, [0])
    torch.testing.assert_close(p.detach(), torch.tensor([-2.9, -1.0, -1.0, 0.0]))
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([1.9, 1.0, 1.0, 0.0]))


def test_present_row_with_zero_gradient_is_still_present():
    # Presence comes from the batch: a present row with gradient exactly 0 still decays its
    # momentum and moves by it. (The released code would leave it frozen.)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SparseSGD([p], lr=1.0, momentum=0.9)
    _step_rows(p, opt, [0])
    _step_rows(p, opt, [0], grad_value=0.0)
    torch.testing.assert_close(p.detach(), torch.tensor([-1.9, 0.0, 0.0]))
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([0.9, 0.0, 0.0]))


def test_repeated_rows_sum_their_gradients():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SparseSGD([p], lr=0.5)
    _step_rows(p, opt, [1, 1, 1, 2])
    torch.testing.assert_close(p.detach(), torch.tensor([0.0, -1.5, -0.5]))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_agrees_with_torch_sgd_when_every_row_is_present(nesterov, weight_decay):
    g = torch.Generator().manual_seed(3)
    N = 50
    init = torch.randn(N, generator=g)
    ours = torch.nn.Parameter(init.clone())
    ref = torch.nn.Parameter(init.clone())
    opt = SparseSGD([ours], lr=0.3, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov)
    ref_opt = torch.optim.SGD([ref], lr=0.3, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov)
    for _ in range(25):
        # Every row present, in a random order and some twice: their gradients add up.
        rows = torch.cat([torch.randperm(N, generator=g), torch.randint(0, N, (10,), generator=g)])
        coef = torch.randn(rows.numel(), generator=g)
        for param, o, gather in ((ours, opt, gather_rows), (ref, ref_opt, lambda w, i: w[i])):
            o.zero_grad()
            (torch.sin(gather(param, rows)) * coef).sum().backward()
            o.step()
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(opt.state[ours]["momentum_buffer"], ref_opt.state[ref]["momentum_buffer"])


def test_absent_rows_are_not_touched_by_decay_or_clamp():
    p = torch.nn.Parameter(torch.tensor([5.0, 5.0, -5.0]))
    opt = SparseSGD([p], lr=0.1, momentum=0.9, weight_decay=0.5, bounds=(-1.0, 1.0))
    _step_rows(p, opt, [0], grad_value=0.0)
    # row 0: wd gradient 2.5 -> 5 - 0.25 = 4.75, then clamped to 1; rows 1 and 2 untouched
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, 5.0, -5.0]))
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], torch.tensor([2.5, 0.0, 0.0]))


def test_clamp_through_data_parameters_bounds():
    dp = DataParameters(2, 4, instance_curriculum=True)
    opt = SparseSGD([dp.instance_log_sigma], lr=100.0, bounds=dp.log_bounds)
    y, idx = torch.tensor([0, 1]), torch.tensor([1, 2])
    opt.zero_grad()
    (dp(y, idx) * torch.tensor([1.0, -1.0])).sum().backward()
    opt.step()
    torch.testing.assert_close(dp.instance_sigma(), torch.tensor([1.0, 1 / 20, 20.0, 1.0]))


def test_state_dict_round_trip_is_exact():
    g = torch.Generator().manual_seed(0)

    def run(param, opt, steps):
        for _ in range(steps):
            _step_rows(param, opt, torch.randint(0, 30, (8,), generator=g).tolist(),
                       grad_value=float(torch.randn((), generator=g)))

    a = torch.nn.Parameter(torch.zeros(30))
    opt_a = SparseSGD([a], lr=0.2, momentum=0.9, bounds=(-0.5, 0.5))
    run(a, opt_a, 5)
    saved_param, saved_state = a.detach().clone(), copy.deepcopy(opt_a.state_dict())

    b = torch.nn.Parameter(saved_param.clone())
    opt_b = SparseSGD([b], lr=999.0)  # hyper-parameters come from the state dict
    opt_b.load_state_dict(saved_state)
    assert opt_b.param_groups[0]["lr"] == 0.2 and opt_b.param_groups[0]["bounds"] == (-0.5, 0.5)
    assert torch.equal(opt_b.state[b]["momentum_buffer"], opt_a.state[a]["momentum_buffer"])

    state = g.get_state()
    run(a, opt_a, 5)
    g.set_state(state)
    run(b, opt_b, 5)
    assert torch.equal(a.detach(), b.detach())
    assert torch.equal(opt_a.state[a]["momentum_buffer"], opt_b.state[b]["momentum_buffer"])


def test_out_of_range_gradient_changes_nothing():
    a = torch.nn.Parameter(torch.zeros(4))
    b = torch.nn.Parameter(torch.zeros(4))
    opt = SparseSGD([a, b], lr=1.0, momentum=0.9)
    _step_rows(a, opt, [0, 1])
    before = a.detach().clone(), opt.state[a]["momentum_buffer"].clone()
    opt.zero_grad()
    a.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([1.0]), (4,), check_invariants=True)
    b.grad = torch.sparse_coo_tensor(torch.tensor([[7]]), torch.tensor([1.0]), (4,), check_invariants=False)
    with pytest.raises(IndexError, match="row 7"):
        opt.step()
    # the valid gradient of ``a`` was not applied either: the step is all or nothing
    assert torch.equal(a.detach(), before[0]) and torch.equal(opt.state[a]["momentum_buffer"], before[1])
    assert torch.equal(b.detach(), torch.zeros(4)) and b not in opt.state


def test_dense_gradient_is_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SparseSGD([p], lr=1.0)
    p[torch.tensor([0])].sum().backward()
    with pytest.raises(TypeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(lr=-1.0), "learning rate"), (dict(momentum=1.0), "momentum"),
     (dict(weight_decay=-1.0), "weight_decay"), (dict(nesterov=True), "Nesterov"),
     (dict(bounds=(1.0, 0.0)), "bounds")],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseSGD([torch.nn.Parameter(torch.zeros(2))], **{"lr": 0.1, **kwargs})


def test_closure_is_evaluated_with_grad_enabled():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SparseSGD([p], lr=1.0)

    def closure():
        opt.zero_grad()
        loss = gather_rows(p, torch.tensor([2])).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 0.0
    torch.testing.assert_close(p.detach(), torch.tensor([0.0, 0.0, -1.0]))


# ----------------------------------------------------------------------------- the clamp travels
def _big_steps(dp, opt, steps=3):
    # Gradients of +-1000 on every present row: without a clamp log sigma leaves [-3, 3] at once.
    for s in range(steps):
        opt.zero_grad()
        idx = torch.arange(dp.num_instances)
        y = idx * dp.num_classes // dp.num_instances  # consecutive samples share a class
        sign = torch.where(y % 2 == 0, 1.0, -1.0) * (1 if s % 2 == 0 else -1)
        (dp(y, idx) * sign * 1000.0).sum().backward()
        opt.step()


@pytest.mark.parametrize("build", ["param_groups", "forgetful"])
def test_both_constructions_keep_sigma_inside_the_module_clamp(build):
    dp = DataParameters(3, 6, class_curriculum=True, instance_curriculum=True, clamp=(0.2, 5.0))
    if build == "param_groups":
        opt = SparseSGD(dp.param_groups(lr_class=10.0, lr_instance=10.0), momentum=0.9)
    else:
        # The construction that forgets the bounds: they travel with the parameters.
        opt = SparseSGD([dp.class_log_sigma, dp.instance_log_sigma], lr=10.0, momentum=0.9)
    _big_steps(dp, opt)
    for sigma in (dp.class_sigma(), dp.instance_sigma()):
        assert (sigma >= 0.2 - 1e-6).all() and (sigma <= 5.0 + 1e-6).all()
        assert torch.isclose(sigma, torch.tensor(0.2)).any() or torch.isclose(sigma, torch.tensor(5.0)).any()


def test_clamp_survives_deepcopy_and_pickle():
    import io

    dp = DataParameters(2, 4, instance_curriculum=True, clamp=(0.5, 2.0))
    for other in (copy.deepcopy(dp), torch.load(io.BytesIO(_saved(dp)), weights_only=False)):
        opt = SparseSGD([other.instance_log_sigma], lr=100.0)
        _big_steps(other, opt, steps=1)
        sigma = other.instance_sigma()
        assert (sigma >= 0.5 - 1e-6).all() and (sigma <= 2.0 + 1e-6).all()


def _replaced_by_assignment(dp):
    dp.instance_log_sigma = torch.nn.Parameter(dp.instance_log_sigma.detach().clone())
    return dp


def _replaced_by_load_state_dict_assign(dp):
    fresh = {k: torch.nn.Parameter(v.clone()) for k, v in dp.state_dict().items()}
    dp.load_state_dict(fresh, assign=True)
    return dp


def _replaced_on_conversion(dp):
    # torch's opt-in behaviour where .to() / .double() put new Parameter objects in place.
    old = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        before = dp.instance_log_sigma
        dp.double()
        assert dp.instance_log_sigma is not before  # the case under test: a new Parameter
        return dp.float()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(old)


@pytest.mark.parametrize("replace", [_replaced_by_assignment, _replaced_by_load_state_dict_assign,
                                     _replaced_on_conversion])
def test_clamp_survives_a_new_parameter_in_place(replace):
    """The clamp rides on the Parameter object; every way of putting a new one on the module keeps it."""
    dp = replace(DataParameters(2, 4, instance_curriculum=True, clamp=(0.5, 2.0)))
    assert getattr(dp.instance_log_sigma, "clamp_bounds", None) == dp.log_bounds
    opt = SparseSGD([dp.instance_log_sigma], lr=100.0)
    _big_steps(dp, opt, steps=1)
    sigma = dp.instance_sigma()
    assert (sigma >= 0.5 - 1e-6).all() and (sigma <= 2.0 + 1e-6).all()
    assert torch.isclose(sigma, torch.tensor(0.5)).any() or torch.isclose(sigma, torch.tensor(2.0)).any()


def _saved(module):
    import io

    buf = io.BytesIO()
    torch.save(module, buf)
    return buf.getvalue()


def test_explicit_group_bounds_win_over_the_parameter_s_own():
    dp = DataParameters(2, 4, instance_curriculum=True)  # (1/20, 20)
    opt = SparseSGD([dp.instance_log_sigma], lr=100.0, bounds=(-0.1, 0.1))
    _big_steps(dp, opt, steps=1)
    assert dp.instance_log_sigma.detach().abs().max() <= 0.1 + 1e-6


def test_unclamped_module_is_not_clamped():
    dp = DataParameters(2, 4, instance_curriculum=True, clamp=None)
    opt = SparseSGD(dp.param_groups(lr_instance=100.0))
    _big_steps(dp, opt, steps=1)
    assert dp.instance_log_sigma.detach().abs().max() > 10


def test_param_groups_hold_only_the_levels_that_are_on():
    assert DataParameters(2, 4).param_groups() == []
    groups = DataParameters(2, 4, instance_curriculum=True).param_groups(lr_instance=0.3, momentum=0.5)
    assert [(g["name"], g["lr"], g["momentum"]) for g in groups] == [("instance", 0.3, 0.5)]


def test_the_class_calls_the_functional_step():
    # SparseSGD.step is sparse_sgd_step over each group: the same rows move the same way.
    from dataparams.optim import sparse_sgd_step

    g = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(10, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    buf = torch.zeros(10)
    opt = SparseSGD([a], lr=0.3, momentum=0.9, weight_decay=0.1, bounds=(-1.0, 1.0))
    for _ in range(4):
        rows = torch.randint(0, 10, (6,), generator=g)
        coef = torch.randn(6, generator=g)
        opt.zero_grad()
        (gather_rows(a, rows) * coef).sum().backward()
        opt.step()
        b.grad = None
        (gather_rows(b, rows) * coef).sum().backward()
        with torch.no_grad():
            sparse_sgd_step([b], [b.grad], [buf], lr=0.3, momentum=0.9, weight_decay=0.1, bounds=(-1.0, 1.0))
        assert torch.equal(a.detach(), b.detach())
    assert torch.equal(opt.state[a]["momentum_buffer"], buf)


@pytest.mark.parametrize("rows,b", [(10, 128), (3, 7), (100_000, 512), (1, 1)])
def test_merged_rows_equal_coalesce_bit_for_bit(rows, b):
    # merge_rows replaces coalesce (whose output size needs a host read): every entry carries its
    # row's sum, added in coalesce's order, so the distinct rows and sums are coalesce's exactly.
    g = torch.Generator().manual_seed(rows + b)
    index = torch.randint(0, rows, (b,), generator=g)
    values = torch.randn(b, generator=g) * 10.0 ** torch.randint(-3, 4, (b,), generator=g)
    merged_rows, sums = merge_rows(index, values)
    assert merged_rows.shape == sums.shape == (b,)
    assert torch.equal(merged_rows, index.sort().values)
    ref = torch.sparse_coo_tensor(index[None], values, (rows,), check_invariants=False).coalesce()
    first = torch.ones(b, dtype=torch.bool)
    first[1:] = merged_rows[1:] != merged_rows[:-1]
    assert torch.equal(merged_rows[first], ref.indices()[0])
    assert torch.equal(sums[first], ref.values())  # bit for bit, not allclose
    # every listing of a row carries the same sum
    for r in merged_rows.unique():
        assert len(set(sums[merged_rows == r].tolist())) == 1


_DYNAMO_SCRIPT = r"""
import json, warnings
import torch
from dataparams import DataParameters, SparseSGD

warnings.simplefilter("ignore")
torch.manual_seed(0)
dp = DataParameters(10, 1000, class_curriculum=True, instance_curriculum=True)
opt = SparseSGD(dp.param_groups(lr_instance=0.1, lr_class=0.1, momentum=0.9), momentum=0.9)
y, idx, logits = torch.randint(0, 10, (32,)), torch.randint(0, 1000, (32,)), torch.randn(32, 10)

def step():
    sigma = dp(y, idx)
    torch.nn.functional.cross_entropy(logits / sigma[:, None], y).backward()
    opt.step()
    opt.zero_grad()

step()  # the momentum buffers exist: the traced update is the steady-state one
update = torch._dynamo.explain(opt.step)()
whole = torch._dynamo.explain(step)()
print(json.dumps({"update": [update.graph_count, update.graph_break_count],
                  "whole_breaks": whole.graph_break_count,
                  "reasons": [str(b.reason) for b in whole.break_reasons]}))
"""


@pytest.mark.slow
def test_what_torch_compile_traces_of_a_data_parameter_step():
    # README's claim, pinned (torch 2.14): Dynamo traces SparseSGD.step as one graph without a
    # break, while the gather's sparse gradient (torch.sparse_coo_tensor) breaks a compiled step
    # that includes dp(y, index). Run in a fresh interpreter: Dynamo's caches and patches stay out
    # of the other tests.
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _DYNAMO_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["update"] == [1, 0]
    assert out["whole_breaks"] > 0
    assert any("sparse_coo_tensor" in r for r in out["reasons"])
