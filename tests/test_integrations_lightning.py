"""dataparams.integrations.lightning against plain PyTorch loops written here.

A real ``lightning`` Trainer on the CPU trains a small MLP on 64 random vectors (4 classes,
batches of 16, no shuffling). Each run is compared with a loop that uses only
``torch.optim.SGD`` for the model and :class:`~dataparams.SparseSGD` for the data parameters,
so the callback is checked against the package's primitives, not against itself. The
trajectory and mixed-precision checks also run on a CUDA GPU when there is one (Lightning's
``"16-mixed"`` is then the real fp16 path with its gradient scaler).
"""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from dataparams import DataParameters, SparseSGD, scaled_cross_entropy  # noqa: E402
from dataparams.data import WithIndex  # noqa: E402
from dataparams.integrations.lightning import DataParametersCallback, data_parameters_loss  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    # The resumed trainers leave out the ModelCheckpoint that wrote the checkpoint, on purpose.
    "ignore:.*callbacks used to create the checkpoint:UserWarning",
)

N, D, K, BATCH, EPOCHS = 64, 8, 4, 16, 3
LR, MOMENTUM = 0.1, 0.9
# The joint curriculum with both penalties on exercises both SparseSGD groups and the
# regulariser; the learning rates are large so that sigma moves visibly in 12 steps.
DP_CONFIG = dict(class_curriculum=True, instance_curriculum=True, init_class=1.0, init_instance=0.5)
OPT_CONFIG = dict(lr_class=2.0, lr_instance=20.0, momentum=0.9, wd_class=1e-3, wd_instance=1e-3)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")])]


def _loader() -> DataLoader:
    return DataLoader(WithIndex(TensorDataset(*_data())), batch_size=BATCH, shuffle=False)


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


class LitNet(L.LightningModule):
    """What a user writes: the model, its own optimizer, and the loss through the integration."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        return data_parameters_loss(self, self.net(x), y, index)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)


class Trajectory(L.Callback):
    """Class and instance log sigma after each epoch."""

    def __init__(self, dp_callback: DataParametersCallback) -> None:
        self.dp = dp_callback.data_parameters
        self.epochs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append((self.dp.class_log_sigma.detach().clone(), self.dp.instance_log_sigma.detach().clone()))


def _trainer(device: str = "cpu", **overrides) -> L.Trainer:
    kwargs = dict(max_epochs=EPOCHS, accelerator="gpu" if device == "cuda" else "cpu", devices=1, enable_progress_bar=False, logger=False,
                  enable_checkpointing=False, enable_model_summary=False, deterministic=True,
                  num_sanity_val_steps=0)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _fit(dp_config=DP_CONFIG, opt_config=OPT_CONFIG, *, ckpt_path=None, extra_callbacks=(), device="cpu",
         **trainer_kwargs):
    model = LitNet()
    callback = DataParametersCallback(DataParameters(K, N, **dp_config), **opt_config)
    trajectory = Trajectory(callback)
    trainer = _trainer(device, callbacks=[callback, trajectory, *extra_callbacks], **trainer_kwargs)
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return model, callback, trajectory.epochs, trainer


def _plain_loop(*, accumulate: int = 1, amp_scaler: torch.amp.GradScaler | None = None, device: str = "cpu"):
    """The reference: model SGD + data-parameter SparseSGD, stepped together every ``accumulate`` batches.

    Lightning divides each batch's loss by ``accumulate_grad_batches``, so the loop does too.
    With ``amp_scaler`` the forward runs under fp16 autocast and both optimizers skip a step
    unless every gradient of that step, the model's and the data parameters', is finite.
    """
    net = _net().to(device)
    dp = DataParameters(K, N, **DP_CONFIG).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    dp_opt = SparseSGD(dp.param_groups(lr_class=OPT_CONFIG["lr_class"], lr_instance=OPT_CONFIG["lr_instance"]),
                       momentum=OPT_CONFIG["momentum"])
    epochs, skips = [], {"both": 0, "model only": 0}
    for _ in range(EPOCHS):
        for b, batch in enumerate(_loader()):
            x, y, index = (t.to(device) for t in batch)
            with torch.autocast(device, dtype=torch.float16, enabled=amp_scaler is not None):
                sigma, penalty = dp.sigma_and_regularizer(
                    y, index, wd_class=OPT_CONFIG["wd_class"], wd_instance=OPT_CONFIG["wd_instance"])
                loss = (scaled_cross_entropy(net(x), y, sigma) + penalty) / accumulate
            if amp_scaler is None:
                loss.backward()
            else:
                amp_scaler.scale(loss).backward()
            if (b + 1) % accumulate:
                continue
            if amp_scaler is None:
                opt.step()
                dp_opt.step()
            else:
                amp_scaler.unscale_(opt)
                amp_scaler.unscale_(dp_opt)
                model_ok = all(torch.isfinite(p.grad).all() for p in net.parameters())
                dp_ok = all(torch.isfinite(p.grad.coalesce().values()).all()
                            for p in (dp.class_log_sigma, dp.instance_log_sigma))
                amp_scaler.step(opt)  # skips when the model's gradients are not finite
                if model_ok and dp_ok:
                    dp_opt.step()
                else:
                    skips["model only" if dp_ok else "both"] += 1
                amp_scaler.update()
            opt.zero_grad()
            dp_opt.zero_grad()
        epochs.append((dp.class_log_sigma.detach().clone(), dp.instance_log_sigma.detach().clone()))
    return net, epochs, skips


def _assert_same_run(lit_model, lit_epochs, net, plain_epochs, atol=1e-6):
    assert len(lit_epochs) == len(plain_epochs) == EPOCHS
    for (c_lit, i_lit), (c_ref, i_ref) in zip(lit_epochs, plain_epochs):
        torch.testing.assert_close(c_lit, c_ref, rtol=0, atol=atol)
        torch.testing.assert_close(i_lit, i_ref, rtol=0, atol=atol)
    for p_lit, p_ref in zip(lit_model.net.parameters(), net.parameters()):
        # Lightning moves the model back to the CPU when fit ends.
        torch.testing.assert_close(p_lit.detach().to(p_ref.device), p_ref.detach(), rtol=0, atol=atol)


def _assert_sigma_moved(epochs):
    # Otherwise an integration that never steps the data parameters would pass.
    class_log_sigma, instance_log_sigma = epochs[-1]
    assert (class_log_sigma - 0.0).abs().max() > 1e-2
    assert (instance_log_sigma - torch.log(torch.tensor(0.5))).abs().max() > 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_trajectory_equals_plain_loop(device):
    model, callback, epochs, trainer = _fit(device=device)
    assert callback.data_parameters.instance_log_sigma.device.type == device
    net, ref_epochs, _ = _plain_loop(device=device)
    _assert_sigma_moved(ref_epochs)
    _assert_same_run(model, epochs, net, ref_epochs)
    # The model's optimizer holds the model's parameters and nothing else.
    model_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert model_params == {id(p) for p in model.parameters()}
    assert id(callback.data_parameters.instance_log_sigma) not in model_params


def test_gradient_accumulation_sums_batches():
    model, _, epochs, _ = _fit(accumulate_grad_batches=2)
    net, ref_epochs, _ = _plain_loop(accumulate=2)
    _assert_sigma_moved(ref_epochs)
    _assert_same_run(model, epochs, net, ref_epochs)
    # Summing two batches is not stepping after each: the comparison can tell them apart.
    _, one_by_one, _ = _plain_loop(accumulate=1)
    assert not torch.allclose(one_by_one[-1][1], ref_epochs[-1][1], atol=1e-4)


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    full_model, full_cb, full_epochs, _ = _fit()

    _, _, first_epoch, _ = _fit(max_epochs=1, enable_checkpointing=True,
                                extra_callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    ckpt = tmp_path / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["DataParametersCallback"]
    assert torch.equal(saved["objective"]["dp.instance_log_sigma"], full_epochs[0][1])
    assert saved["optimizer"]["state"], "the momentum is in the checkpoint"

    resumed_model, resumed_cb, resumed_epochs, _ = _fit(ckpt_path=ckpt)
    assert len(resumed_epochs) == EPOCHS - 1  # epochs 2 and 3 only
    for (c, i), (c_full, i_full) in zip(resumed_epochs, full_epochs[1:]):
        assert torch.equal(c, c_full) and torch.equal(i, i_full)
    full_opt, resumed_opt = full_cb.optimizer, resumed_cb.optimizer
    for p_full, p_res in zip(full_cb.data_parameters.parameters(), resumed_cb.data_parameters.parameters()):
        assert torch.equal(p_full, p_res)
        assert torch.equal(full_opt.state[p_full]["momentum_buffer"], resumed_opt.state[p_res]["momentum_buffer"])
    assert torch.equal(full_cb.objective.last_loss, resumed_cb.objective.last_loss)
    for p_full, p_res in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p_full, p_res)


def test_checkpoint_of_other_data_parameters_is_refused(tmp_path):
    _fit(max_epochs=1, enable_checkpointing=True, extra_callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    with pytest.raises(ValueError, match="checkpoint holds data parameters"):
        _fit(dict(instance_curriculum=True), OPT_CONFIG, ckpt_path=tmp_path / "last.ckpt")


def test_curriculum_off_is_plain_cross_entropy():
    model, callback, epochs, _ = _fit(dp_config={})
    assert callback.optimizer is None
    assert all(torch.equal(c, torch.zeros(K)) and torch.equal(i, torch.zeros(N)) for c, i in epochs)

    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    for _ in range(EPOCHS):
        for x, y, _index in _loader():
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for p_lit, p_ref in zip(model.net.parameters(), net.parameters()):
        torch.testing.assert_close(p_lit.detach(), p_ref.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_unscales_and_skips_with_the_model(device):
    # fp16 autocast with a gradient scaler (Lightning's "16-mixed"; on the CPU through its plugin).
    # The initial scale overflows the fp16 logit gradients for the first steps: the model's step
    # is skipped while the data parameters' float32 gradients are still finite, and theirs must
    # be skipped too. Growth is off so that a lower final scale counts the skips.
    def scaler():
        return torch.amp.GradScaler(device, init_scale=2.0**22, growth_interval=10**6)

    lit_scaler = scaler()
    plugin = MixedPrecision("16-mixed", device, scaler=lit_scaler)
    model, _, epochs, _ = _fit(plugins=[plugin], device=device)
    ref_scaler = scaler()
    net, ref_epochs, skips = _plain_loop(amp_scaler=ref_scaler, device=device)
    assert skips["model only"] >= 1, "the test must exercise a step the model skips on its own"
    assert lit_scaler.get_scale() == ref_scaler.get_scale() < 2.0**22
    _assert_sigma_moved(ref_epochs)
    _assert_same_run(model, epochs, net, ref_epochs)


def test_loss_outside_training_is_refused():
    class Validating(LitNet):
        def validation_step(self, batch, batch_idx):
            x, y, index = batch
            return data_parameters_loss(self, self.net(x), y, index)

    callback = DataParametersCallback(DataParameters(K, N, **DP_CONFIG), **OPT_CONFIG)
    with pytest.raises(RuntimeError, match="training_step only"):
        _trainer(callbacks=[callback]).validate(Validating(), _loader(), verbose=False)


def test_loss_without_callback_is_refused():
    with pytest.raises(RuntimeError, match="exactly one DataParametersCallback"):
        _trainer(max_epochs=1).fit(LitNet(), _loader())


def test_manual_optimization_is_refused():
    class Manual(LitNet):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    callback = DataParametersCallback(DataParameters(K, N, **DP_CONFIG), **OPT_CONFIG)
    with pytest.raises(ValueError, match="automatic optimization"):
        _trainer(callbacks=[callback]).fit(Manual(), _loader())


def test_fit_start_moves_parameters_and_momentum_to_the_module_device():
    _, callback, _, _ = _fit(max_epochs=1)
    dp, opt = callback.data_parameters, callback.optimizer
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in dp.parameters()]
    callback.on_fit_start(SimpleNamespace(), SimpleNamespace(device=torch.device("cpu")))
    for p, m in zip(dp.parameters(), momentum):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    # "meta" stands in for an accelerator whose tensors Module.to cannot move in place (XLA):
    # the optimizer must follow the module's new parameters and take its momentum along.
    callback.on_fit_start(SimpleNamespace(), SimpleNamespace(device=torch.device("meta")))
    assert [g["params"][0] for g in opt.param_groups] == [dp.class_log_sigma, dp.instance_log_sigma]
    assert all(p.device.type == "meta" for p in dp.parameters())
    assert all(opt.state[p]["momentum_buffer"].device.type == "meta" for p in dp.parameters())
    assert all(g["bounds"] == dp.log_bounds for g in opt.param_groups)
    assert callback.objective.last_loss.device.type == "meta"


def test_import_without_lightning_names_the_extra(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    monkeypatch.delitem(sys.modules, "dataparams.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'dataparams\[lightning\]'"):
        importlib.import_module("dataparams.integrations.lightning")
