"""The engine: callback order, per-sample loss by index, accuracy against clean labels, devices."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataparams import DataParameters
from dataparams.engine import (
    Callback,
    ClassificationStep,
    Execution,
    evaluate,
    fit,
    predict,
    predict_by_index,
    resolve_device,
    train_one_epoch,
)
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
    step = ClassificationStep(model, obj, opt, torch.device("cpu"), eval_loaders={"test": loader})
    history = fit(step, loader, epochs=2, scheduler=sched, callbacks=[rec])
    assert rec.events == [("start", 0), ("batch", 8), ("batch", 8), ("batch", 4), ("end", 0, 1),
                          ("start", 1), ("batch", 8), ("batch", 8), ("batch", 4), ("end", 1, 2)]
    assert [h["lr"] for h in history] == [1.0, pytest.approx(0.1)]
    assert {"train_loss", "train_acc", "test_acc", "test_loss", "time_s"} <= set(history[0])


def test_train_one_epoch_tracks_loss_by_index_and_clean_accuracy():
    torch.manual_seed(0)
    loader, x, y = _loader()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # frozen: losses are those of the initial model
    flipped = 1 - y
    obj = DataParameterObjective(DataParameters(2, 20))
    obj.last_loss.fill_(-1.0)
    stats = train_one_epoch(ClassificationStep(model, obj, opt, torch.device("cpu"), clean_targets=flipped), loader)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="none")
        acc = 100.0 * float((model(x).argmax(1) == y).float().mean())
    torch.testing.assert_close(obj.last_loss, expected)
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
    stats = train_one_epoch(ClassificationStep(model, obj, opt, torch.device("cpu"), execution=ex), loader)
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert obj.dp.instance_log_sigma.dtype == torch.float32
    assert not torch.equal(obj.dp.instance_log_sigma.detach(), torch.zeros(20))


def test_mean_loss_is_the_mean_of_the_epochs_last_losses():
    # fit() closes every epoch with objective.on_epoch_end: loss_sum / epochs_seen is the mean over
    # epochs of each sample's loss, checked against the losses recomputed by hand epoch by epoch.
    torch.manual_seed(0)
    loader, x, y = _loader()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    obj = DataParameterObjective(DataParameters(2, 20))
    seen = []

    class Keep(Callback):
        def on_epoch_end(self, epoch, record):
            seen.append(obj.last_loss.clone())

    fit(ClassificationStep(model, obj, opt, torch.device("cpu")), loader, epochs=3, callbacks=[Keep()])
    scores = obj.scores()
    np.testing.assert_allclose(scores["mean-loss"], torch.stack(seen).double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(scores["last-loss"], seen[-1].numpy())
    assert int(obj.epochs_seen) == 3


def test_predict_without_indices_counts_positions_across_batches():
    # A loader of (x, y) pairs: the indices are the positions in its order, not 0.. in every batch.
    from dataparams.engine import predict

    x, y = torch.randn(7, 3), torch.zeros(7, dtype=torch.long)
    batches = [(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])]
    _, _, idx = predict(torch.nn.Linear(3, 2), batches, torch.device("cpu"))
    assert idx.tolist() == list(range(7))


def test_progress_bar_does_not_read_the_device_every_batch(monkeypatch):
    # EpochStats.running() waits for the device; the bar refreshes its numbers at most once per
    # progress_interval_s, not once per batch.
    from dataparams import engine

    calls = []
    original = engine.EpochStats.running
    monkeypatch.setattr(engine.EpochStats, "running", lambda self: calls.append(1) or original(self))

    class Bar:
        def update(self, n):
            pass

        def set_postfix(self, **kw):
            pass

    loader, _, _ = _loader(n=80, b=4)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    obj = DataParameterObjective(DataParameters(2, 80))
    step = ClassificationStep(model, obj, opt, torch.device("cpu"))
    train_one_epoch(step, loader, progress=Bar(), progress_interval_s=3600.0)
    assert calls == []  # 20 batches, none read the running statistics
    train_one_epoch(step, loader, progress=Bar(), progress_interval_s=0.0)
    assert len(calls) == 20


def test_predict_by_index_reduces_each_batch_to_the_arrays_of_the_full_softmax():
    # Streamed (no N x K array): the same numbers, bit for bit, as the softmax of all the logits,
    # put in index order; a sample the loader never yields keeps -1 / nan.
    torch.manual_seed(0)
    n, k = 23, 7
    x = torch.randn(n, 5)
    perm = torch.randperm(n)[: n - 2]  # two samples never yielded, the rest out of order
    loader = [(x[perm[i:i + 4]], torch.zeros(len(perm[i:i + 4]), dtype=torch.long), perm[i:i + 4])
              for i in range(0, len(perm), 4)]
    model = torch.nn.Linear(5, k)
    given = torch.randint(0, k, (n,))
    got = predict_by_index(model, loader, torch.device("cpu"), given)
    logits, _, idx = predict(model, loader, torch.device("cpu"))
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    assert torch.equal(got["predicted"][idx], pred)
    assert torch.equal(got["predicted_prob"][idx], conf)
    assert torch.equal(got["given_prob"][idx], probs.gather(1, given[idx][:, None]).squeeze(1))
    missing = torch.ones(n, dtype=torch.bool)
    missing[idx] = False
    assert missing.sum() == 2 and (got["predicted"][missing] == -1).all()
    assert torch.isnan(got["given_prob"][missing]).all()


@pytest.mark.parametrize("scaled", [False, True], ids=["no-scaler", "grad-scaler"])
def test_backward_and_step_clips_the_models_gradient_and_not_the_data_parameters(scaled):
    # clip_grad_norm scales the first optimizer's gradient to the cap (computed here by hand from
    # autograd's gradient); the second optimizer (data parameters) steps with its full gradient.
    # With a gradient scaler (fp16's), the gradient is unscaled before it is clipped: the same step.
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4))
    s = torch.nn.Parameter(torch.randn(3))
    x = torch.randn(4)

    def loss_fn():
        return 10.0 * (w * x).sum() ** 2 + 5.0 * (s ** 2).sum()

    gw, gs = torch.autograd.grad(loss_fn(), [w, s])
    assert gw.norm() > 1.0
    w0, s0 = w.detach().clone(), s.detach().clone()
    opt_w, opt_s = torch.optim.SGD([w], lr=0.1), torch.optim.SGD([s], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
    Execution(torch.device("cpu"), scaler=scaler).backward_and_step(loss_fn(), [opt_w, opt_s], clip_grad_norm=1.0)
    torch.testing.assert_close(w.detach(), w0 - 0.1 * gw / gw.norm(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.detach(), s0 - 0.1 * gs)


def test_fit_drives_any_train_step_with_a_per_step_schedule():
    # A step of another task (least squares on a scalar) through the same loop: the events in
    # order, the per-step schedule stepped once per batch, evaluation's numbers in the record.
    from dataparams.engine import TrainStep

    events = []

    class Regression(TrainStep):
        def __init__(self):
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.opt = torch.optim.SGD([self.w], lr=0.1)
            self.execution = Execution(torch.device("cpu"))
            self.sum = 0.0

        def optimizers(self):
            return [self.opt]

        def on_epoch_start(self, epoch):
            events.append(("start", epoch))

        def train(self):
            self.sum = 0.0

        def loss(self, batch):
            x, y = batch
            self.last = ((self.w * x - y) ** 2).mean()
            return self.last

        def record(self, callbacks):
            self.sum += float(self.last.detach())

        def epoch_stats(self, ctx):
            return {"train_loss": self.sum / 2}

        def on_epoch_end(self, epoch):
            events.append(("end", epoch))

        def evaluate(self, epoch):
            return {"w": float(self.w.detach())}

    step = Regression()
    batches = [(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])), (torch.tensor([3.0]), torch.tensor([6.0]))]
    per_step = torch.optim.lr_scheduler.LambdaLR(step.opt, lambda i: 0.5 ** i)
    history = fit(step, batches, epochs=2, step_scheduler=per_step)
    assert events == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert [h["lr"] for h in history] == [0.1, pytest.approx(0.1 * 0.5 ** 2)]
    # Two steps of plain SGD by hand, lr 0.1 then 0.05, from w = 0 (the model is y = 2x).
    w = 0.0
    for lr, (x, y) in zip((0.1, 0.05), batches):
        w -= lr * float((2 * (w * x - y) * x).mean())
    assert history[0]["w"] == pytest.approx(w, rel=1e-6)


def test_fit_sets_the_epoch_of_a_dataloaders_batch_sampler():
    # A plain DataLoader has no set_epoch; its batch sampler does (detection's EpochBatchSampler):
    # fit reaches it, so every epoch draws its own order.
    from torch.utils.data import DataLoader, TensorDataset

    class Sampler:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __len__(self):
            return 2

        def __iter__(self):
            return iter([[0, 1, 2], [3, 4]])

    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    sampler = Sampler()
    loader = DataLoader(TensorDataset(x, y, torch.arange(5)), batch_sampler=sampler)
    model = torch.nn.Linear(3, 2)
    step = ClassificationStep(model, DataParameterObjective(DataParameters(2, 5)),
                              torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    fit(step, loader, epochs=3, start_epoch=1)
    assert sampler.epochs == [1, 2]
