"""Objectives: the data-parameter loss, and the peers' per-sample state against independent computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataparams import DataParameters
from dataparams.config import ConfigError, TrainConfig, apply_overrides
from dataparams.methods.peers import AUMObjective, CoTeachingObjective, SuperLossObjective
from dataparams.methods.registry import METHODS, OBJECTIVES, build_objective
from dataparams.methods.superloss import superloss_sigma
from dataparams.objectives import DataParameterObjective, Objective
from dataparams.optim import SparseSGD


def _batch(b=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g), torch.randint(0, k, (b,), generator=g), torch.arange(b)


def test_data_parameter_objective_is_scaled_ce_plus_penalty():
    z, y, idx = _batch()
    dp = DataParameters(4, 6, class_curriculum=True, instance_curriculum=True, init_class=2.0, init_instance=0.5)
    obj = DataParameterObjective(dp, wd_class=0.1, wd_instance=0.01, lr_class=0.3, lr_instance=0.7)
    loss, per = obj(z, None, y, idx)
    sigma = torch.full((6,), 2.5)
    ce = F.cross_entropy(z / sigma[:, None], y, reduction="none")
    penalty = 0.5 * 0.1 * 6 * math.log(2.0) ** 2 + 0.5 * 0.01 * 6 * math.log(0.5) ** 2
    torch.testing.assert_close(per, ce)
    assert loss.item() == pytest.approx(ce.mean().item() + penalty, rel=1e-6)
    # One SparseSGD, one group per level, each with its own learning rate.
    (opt,) = obj.optimizers().values()
    assert isinstance(opt, SparseSGD)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("class", 0.3), ("instance", 0.7)]


def test_baseline_objective_has_no_extra_optimizer_and_no_score():
    z, y, idx = _batch()
    obj = DataParameterObjective(DataParameters(4, 6))
    loss, _ = obj(z, None, y, idx)
    assert loss.item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)
    assert obj.optimizers() == {} and obj.method_score() is None


def test_every_objective_keeps_its_state_in_the_state_dict():
    # Per-sample state lives in (N,) buffers: a fresh objective loading state_dict() holds it all.
    z, y, idx = _batch()
    factories = (lambda: SuperLossObjective(10, "cpu", lam=1.0, tau="ema"), lambda: AUMObjective(10),
                 lambda: DataParameterObjective(DataParameters(4, 10, instance_curriculum=True)))
    for make in factories:
        obj = make()
        _, per = obj(z, z, y, idx + 2)
        obj.record(idx + 2, per)
        obj.on_epoch_end(0)
        state = obj.state_dict()
        assert state["last_loss"].shape == (10,) and state["loss_sum"].shape == (10,)
        fresh = make()
        assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
        fresh.load_state_dict(state)
        for k, v in state.items():
            assert torch.equal(v, fresh.state_dict()[k]), k


def test_superloss_objective_records_confidence_by_index():
    z, y, idx = _batch()
    obj = SuperLossObjective(10, torch.device("cpu"), lam=1.0, tau=math.log(4))
    obj(z, None, y, idx + 3)
    ce = F.cross_entropy(z, y, reduction="none")
    expected = superloss_sigma(ce, math.log(4), 1.0)
    torch.testing.assert_close(obj.confidence[3:9], expected)
    assert torch.equal(obj.confidence[:3], torch.ones(3))
    np.testing.assert_allclose(obj.method_score()[3:9], -np.log(expected.numpy()), rtol=1e-6)
    assert "confidence" in obj.state_dict() and "superloss.tau" in obj.state_dict()


def test_coteaching_second_network_trains_with_the_model_optimizer():
    from dataparams.build import build_optimizer

    torch.manual_seed(0)
    cfg = apply_overrides(TrainConfig(), ["method=coteaching", 'method_options={"forget_rate": 0.5, "num_gradual": 1}'])
    model_a = torch.nn.Linear(3, 4)
    obj = build_objective(cfg, num_classes=4, num_train=8, device="cpu", model_factory=lambda: torch.nn.Linear(3, 4))
    assert isinstance(obj, CoTeachingObjective)
    opt, sched = build_optimizer(cfg, model_a, obj)
    # Network B is a second group of the model's optimizer: same settings, same schedule.
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] is obj.model_b.weight
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"] == cfg.optim.lr
    obj.on_epoch_start(5)  # past the ramp: forget half the batch
    assert obj.forget_rate == 0.5
    x = torch.randn(8, 3)
    y = torch.randint(0, 4, (8,))
    before_b = [p.detach().clone() for p in obj.model_b.parameters()]
    loss, per = obj(model_a(x), x, y, torch.arange(8))
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before_b, obj.model_b.parameters()))
    assert model_a.weight.grad is not None and per.shape == (8,)
    assert "model_b.weight" in obj.state_dict()


def test_coteaching_second_network_runs_in_the_engines_precision():
    # With --amp the engine runs the main model under autocast; the second network must run
    # under the same autocast, or the two networks of co-teaching are no longer alike.
    from dataparams.engine import ClassificationStep, Execution, train_one_epoch

    torch.manual_seed(0)
    cfg = apply_overrides(TrainConfig(), ["method=coteaching"])
    model_a = torch.nn.Linear(3, 4)
    obj = build_objective(cfg, num_classes=4, num_train=8, device="cpu", model_factory=lambda: torch.nn.Linear(3, 4))
    opt_a = torch.optim.SGD([*model_a.parameters(), *obj.model_b.parameters()], lr=0.1)
    seen = {}
    model_a.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.dtype))
    obj.model_b.register_forward_hook(lambda m, i, o: seen.__setitem__("b", o.dtype))
    batch = [(torch.randn(8, 3), torch.randint(0, 4, (8,)), torch.arange(8))]
    cpu = torch.device("cpu")
    train_one_epoch(ClassificationStep(model_a, obj, opt_a, cpu, execution=Execution.create(cpu, "bf16")), batch)
    assert seen == {"a": torch.bfloat16, "b": torch.bfloat16}
    train_one_epoch(ClassificationStep(model_a, obj, opt_a, cpu, execution=Execution.create(cpu, "off")), batch)
    assert seen == {"a": torch.float32, "b": torch.float32}


def test_aum_objective_matches_the_margin_by_hand():
    obj = AUMObjective(5)
    z1 = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.5, 0.0]])  # a batch of one (the package fails on it)
    obj(z1, None, torch.tensor([0, 2]), torch.tensor([0, 1]))
    obj(z2, None, torch.tensor([0]), torch.tensor([0]))
    aum = obj.aum()
    # sample 0: margins 2-1=1 and 1-1.5=-0.5 -> mean 0.25; sample 1: 1-3=-2; others unseen
    assert aum[0] == pytest.approx(0.25) and aum[1] == pytest.approx(-2.0)
    assert np.isnan(aum[2:]).all()


def test_aum_by_tensors_equals_the_aum_package():
    # A seeded sequence of batches, some repeating a sample within the batch: the (N,) tensors
    # give the package's per-sample sums, counts and AUM.
    aum_pkg = pytest.importorskip("aum")
    g = torch.Generator().manual_seed(7)
    n, k = 40, 5
    ours = AUMObjective(n)
    calc = aum_pkg.AUMCalculator(save_dir=".", compressed=True)
    for _ in range(30):
        b = int(torch.randint(2, 12, (1,), generator=g))
        idx = torch.randint(0, n, (b,), generator=g)
        z = torch.randn(b, k, generator=g) * 3
        y = torch.randint(0, k, (b,), generator=g)
        ours(z, None, y, idx)
        calc.update(z, y, idx.tolist())
    expected = np.full(n, np.nan)
    for i, c in calc.counts.items():
        expected[i] = calc.sums[i] / c
        assert ours.margin_count[i].item() == c
    np.testing.assert_allclose(ours.aum(), expected, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_unknown_method_option_is_refused():
    cfg = apply_overrides(TrainConfig(), ["method=gce", 'method_options={"qq": 1}'])
    with pytest.raises(ConfigError, match="qq"):
        build_objective(cfg, num_classes=3, num_train=4, device="cpu")


def test_one_registry_names_every_method():
    # The bench's methods are built from the registry's objectives and preset variants.
    for m in METHODS.values():
        for o in m.overrides:
            if o.startswith("method="):
                assert o.split("=", 1)[1] in OBJECTIVES
    for name in OBJECTIVES:
        cfg = apply_overrides(TrainConfig(), [f"method={name}"])
        obj = build_objective(cfg, num_classes=3, num_train=4, device="cpu", model_factory=lambda: torch.nn.Linear(2, 3))
        assert isinstance(obj, Objective)
