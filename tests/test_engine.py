"""The engine: callback order, per-sample loss by index, accuracy against clean labels, devices."""

import pytest
import torch
import torch.nn.functional as F

from dataparams import DataParameters
from dataparams.engine import Callback, Execution, evaluate, fit, resolve_device, train_one_epoch
from dataparams.objectives import DataParameterObjective


def _loader(n=20, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + b], y[i : i + b], torch.arange(i, min(i + b, n))) for i in range(0, n, b)], x, y


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_epoch_start(self, epoch):
        self.events.append(("start", epoch))

    def on_batch_end(self, logits, targets, indices, per_sample_loss):
        self.events.append(("batch", len(indices)))

    def on_epoch_end(self, epoch, record):
        self.events.append(("end", epoch, record["epoch"]))


def test_fit_events_schedule_and_records():
    torch.manual_seed(0)
    loader, _, _ = _loader()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
    rec = Recorder()
    obj = DataParameterObjective(DataParameters(2, 20, instance_curriculum=True))
    history = fit(model, obj, opt, loader, torch.device("cpu"), epochs=2, scheduler=sched,
                  eval_loaders={"test": loader}, callbacks=[rec])
    assert rec.events == [("start", 0), ("batch", 8), ("batch", 8), ("batch", 4), ("end", 0, 1),
                          ("start", 1), ("batch", 8), ("batch", 8), ("batch", 4), ("end", 1, 2)]
    assert [h["lr"] for h in history] == [1.0, pytest.approx(0.1)]
    assert {"train_loss", "train_acc", "test_acc", "test_loss", "time_s"} <= set(history[0])


def test_train_one_epoch_tracks_loss_by_index_and_clean_accuracy():
    torch.manual_seed(0)
    loader, x, y = _loader()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # frozen: losses are those of the initial model
    last = torch.full((20,), -1.0)
    flipped = 1 - y
    stats = train_one_epoch(model, DataParameterObjective(DataParameters(2, 20)), opt, loader,
                            torch.device("cpu"), clean_targets=flipped, last_loss=last)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none")
        acc = 100.0 * float((model(x).argmax(1) == y).float().mean())
    torch.testing.assert_close(last, expected)
    assert stats["train_acc"] == pytest.approx(acc)
    assert stats["train_acc_clean"] == pytest.approx(100.0 - acc)
    assert stats["train_loss"] == pytest.approx(float(expected.mean()), rel=1e-6)
    ev = evaluate(model, [(x, y)], torch.device("cpu"))
    assert ev["acc"] == pytest.approx(acc)


def test_devices_and_amp_modes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="needs CUDA"):
            Execution.create(torch.device("cpu"), "fp16")
    assert Execution.create(torch.device("cpu"), "bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="amp"):
        Execution.create(torch.device("cpu"), "fp8")


def test_bf16_autocast_trains_on_cpu():
    torch.manual_seed(0)
    loader, _, _ = _loader()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    obj = DataParameterObjective(DataParameters(2, 20, instance_curriculum=True), lr_instance=1.0)
    ex = Execution.create(torch.device("cpu"), "bf16")
    stats = train_one_epoch(model, obj, opt, loader, torch.device("cpu"), execution=ex)
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert obj.dp.instance_log_sigma.dtype == torch.float32
    assert not torch.equal(obj.dp.instance_log_sigma.detach(), torch.zeros(20))
