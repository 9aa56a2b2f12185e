"""The training engine: one epoch, evaluation, and the epoch loop with a few callback events.

One loop for every task: :func:`fit` and :func:`train_one_epoch` drive a :class:`TrainStep`,
which holds what is task-specific (a batch's forward pass and loss, and what is kept of it), and
do the rest themselves (zeroing, backward through the gradient scaler, clipping, the optimizer
steps, per-step and per-epoch schedules, progress, evaluation, callbacks). For classification,
:class:`ClassificationStep`: a loader yields ``(inputs, targets, indices)`` and an
:class:`~dataparams.objectives.Objective` turns logits into the loss; the detection trainer's
``DetectionStep`` (:mod:`dataparams.detection.train`) runs through the same :func:`fit`.
Callbacks (logging, checkpoints) hook into ``on_batch_end`` (classification) and
``on_epoch_end``. Whether a curriculum is on is invisible here: a disabled one is sigma = 1 inside
the objective.

Per-step cost is O(B): the per-sample state (the objective's buffers, its ``last_loss``) is
written by index, and the epoch statistics stay on the device; the host reads them at the end of
the epoch, or about once a second for a progress bar.

Under ``torchrun`` (a :class:`~dataparams.distributed.DistributedContext` with more than one
process) the loop is the same on every rank: the model is a ``DistributedDataParallel``, the
loader yields this rank's share of each global batch, and the objective weights and combines
(:mod:`dataparams.distributed`). The engine adds two things: the epoch statistics are summed
over the ranks, and evaluation runs on rank 0 alone, through the unwrapped model, so that its
numbers are those of one process.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from dataparams.config import ConfigError
from dataparams.distributed.context import DistributedContext
from dataparams.distributed.models import unwrap_model
from dataparams.objectives import Objective

__all__ = [
    "Callback",
    "ClassificationStep",
    "EpochStats",
    "Execution",
    "evaluate",
    "fit",
    "predict",
    "predict_by_index",
    "resolve_device",
    "train_one_epoch",
    "TrainStep",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; other names are checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but Apple MPS is not available on this machine")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


@dataclass
class Execution:
    """How tensors run: the device, mixed precision and memory format.

    ``dtype`` None is float32; ``float16`` uses a gradient scaler; ``bfloat16`` does not need
    one. Autocast covers the model's forward; the division by sigma and the loss run in float32
    because sigma is float32. ``channels_last`` stores images NHWC, which is markedly faster for
    convolutions and pooling on CPUs and on recent GPUs; it changes no result beyond rounding.
    """

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: Any = None
    channels_last: bool = False

    @classmethod
    def create(cls, device: torch.device, amp: str = "off", *, channels_last: bool = False) -> Execution:
        if amp in ("off", "none", ""):
            return cls(device, channels_last=channels_last)
        if amp == "bf16":
            return cls(device, torch.bfloat16, channels_last=channels_last)
        if amp == "fp16":
            if device.type != "cuda":
                raise ConfigError("amp 'fp16' needs CUDA (a gradient scaler); use 'bf16' on the CPU")
            return cls(device, torch.float16, torch.amp.GradScaler("cuda"), channels_last=channels_last)
        raise ConfigError(f"unknown amp mode {amp!r}; use off, fp16 or bf16")

    def input(self, x: Tensor) -> Tensor:
        """Move a batch of inputs to the device (in the chosen memory format)."""
        if self.channels_last and x.dim() == 4:
            return x.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        return x.to(self.device, non_blocking=True)

    def model(self, model: nn.Module) -> nn.Module:
        """Move a model to the device (in the chosen memory format)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: Tensor, optimizers: Sequence[Optimizer], *,
                          clip_grad_norm: float | None = None) -> None:
        """Backpropagate ``loss`` and step every optimizer (through the gradient scaler, if any).

        An optimizer with a ``synchronize()`` method (the distributed data-parameter optimizers)
        combines the ranks' gradients there; with a scaler it is called before
        ``scaler.step``, so that the scaler checks the combined gradients, which every rank
        holds alike, and all ranks skip or take the step together.

        ``clip_grad_norm`` caps the norm of the gradient of the first optimizer's parameters
        (the model's; data parameters are never clipped) before any step, after unscaling them
        when there is a scaler, as torchvision's detection references do.
        """
        if self.scaler is None:
            loss.backward()
            if clip_grad_norm is not None:
                _clip(optimizers[0], clip_grad_norm)
            for opt in optimizers:
                opt.step()
            return
        self.scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            self.scaler.unscale_(optimizers[0])
            _clip(optimizers[0], clip_grad_norm)
        for opt in optimizers:
            synchronize = getattr(opt, "synchronize", None)
            if synchronize is not None:
                synchronize()
            self.scaler.step(opt)
        self.scaler.update()


def _clip(optimizer: Optimizer, max_norm: float) -> None:
    """Clip the total gradient norm of an optimizer's parameters (in their order) to ``max_norm``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)


class Callback:
    """Hooks into the epoch loop; override what you need."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_batch_end(self, logits: Tensor, targets: Tensor, indices: Tensor, per_sample_loss: Tensor) -> None:
        pass

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        pass


class EpochStats:
    """Running sums over an epoch, kept on the device so that a step never waits for the host.

    ``sums`` holds the summed per-sample loss, the number of predictions equal to the given
    labels and the number equal to the clean labels; reading them (:meth:`as_dict`, or
    :meth:`running` for a progress bar) is the only synchronisation.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.seen = 0

    def add(self, per_sample: Tensor, pred: Tensor, targets: Tensor, clean: Tensor | None) -> None:
        hits_clean = (pred == clean).sum() if clean is not None else torch.zeros((), device=pred.device)
        self.sums += torch.stack([per_sample.sum().double(), (pred == targets).sum().double(), hits_clean.double()])
        self.seen += targets.shape[0]

    def running(self) -> tuple[float, float]:
        """Mean loss and accuracy (%) so far."""
        loss_sum, correct = self.sums[:2].tolist()
        n = max(self.seen, 1)
        return loss_sum / n, 100.0 * correct / n

    def all_reduce(self, ctx: DistributedContext) -> None:
        """Sum the sums and counts over the ranks (one collective), e.g. at the end of an epoch."""
        if not ctx.is_distributed:
            return
        packed = torch.cat([self.sums, self.sums.new_tensor([float(self.seen)])]).to(ctx.device)
        dist.all_reduce(packed)
        packed = packed.to(self.sums.device)
        self.sums.copy_(packed[:3])
        self.seen = int(packed[3].item())

    def as_dict(self, has_clean: bool) -> dict[str, float]:
        loss_sum, correct, correct_clean = self.sums.tolist()
        n = max(self.seen, 1)
        out = {"train_loss": loss_sum / n, "train_acc": 100.0 * correct / n}
        if has_clean:
            out["train_acc_clean"] = 100.0 * correct_clean / n
        return out


class TrainStep(abc.ABC):
    """The task's half of a training step: a batch's forward pass and loss, and what is kept of it.

    :func:`train_one_epoch` and :func:`fit` do the other half, the same for every task: zeroing
    the gradients, the backward pass through the gradient scaler, clipping, every optimizer's
    step, a per-step learning-rate schedule, the progress bar, the epoch loop, evaluation and
    callbacks. :class:`ClassificationStep` is a classifier trained through an
    :class:`~dataparams.objectives.Objective`; ``dataparams.detection.train.DetectionStep`` a
    detector with one data parameter per box (as torchvision's references share one
    ``train_one_epoch`` between their tasks).

    What a subclass provides: ``execution`` (the device and mixed precision), ``optimizers()``
    (the model's first: it is the one clipped and whose learning rate is logged), ``loss(batch)``
    and, after the optimizers stepped, ``record(callbacks)``, which keeps what the epoch needs on
    the device without waiting for it; ``running()`` (read about once a second for a progress
    bar) and ``epoch_stats(ctx)`` (once, at the end of the epoch) read it back.
    """

    execution: Execution

    @abc.abstractmethod
    def optimizers(self) -> list[Optimizer]:
        """The optimizers stepped after every backward pass, the model's first."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the epoch's first batch (e.g. an objective's per-epoch schedule)."""

    @abc.abstractmethod
    def train(self) -> None:
        """Training mode, and the epoch's running sums back to zero."""

    @abc.abstractmethod
    def loss(self, batch: Any) -> Tensor:
        """The loss of one batch from the loader, to backpropagate."""

    def record(self, callbacks: Sequence[Callback]) -> None:
        """After the step: keep what the epoch's numbers need, on the device (under
        ``torch.no_grad()``: nothing here is differentiated)."""

    def running(self) -> dict[str, str]:
        """The progress bar's numbers so far (this reads from the device)."""
        return {}

    def epoch_stats(self, ctx: DistributedContext | None) -> dict[str, Any]:
        """The epoch's training numbers (summed over the ranks under torchrun)."""
        return {}

    def on_epoch_end(self, epoch: int) -> None:
        """After the epoch's last batch, before evaluation."""

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Numbers to add to the epoch's record after training (rank 0 only under torchrun)."""
        return {}


class ClassificationStep(TrainStep):
    """A classifier's step: logits, an :class:`~dataparams.objectives.Objective`'s loss, and the
    epoch's loss and accuracies on the device.

    Parameters
    ----------
    model, objective, optimizer
        The objective's own optimizers (data parameters) are stepped after ``optimizer``.
    device : torch.device
    execution : Execution, optional
        Default: float32 on ``device``.
    clean_targets : LongTensor (N,), optional
        True labels, to report training accuracy against them as well as the given ones.
    eval_loaders : dict of name -> loader, optional
        Evaluated after every epoch (``{name}_loss``, ``{name}_acc``); under torchrun on rank 0
        alone, through the model outside its ``DistributedDataParallel`` wrapper.

    The loader yields ``(inputs, targets, indices)``; callbacks' ``on_batch_end`` get each batch's
    detached logits, targets, indices and per-sample loss.
    """

    def __init__(self, model: nn.Module, objective: Objective, optimizer: Optimizer, device: torch.device, *,
                 execution: Execution | None = None, clean_targets: Tensor | None = None,
                 eval_loaders: dict[str, Any] | None = None) -> None:
        self.model, self.objective, self.optimizer, self.device = model, objective, optimizer, device
        self.execution = execution or Execution(device)
        self.clean_targets = clean_targets
        self.eval_loaders = eval_loaders or {}
        self.stats = EpochStats(device)
        self._batch: tuple[Tensor, ...] = ()

    def optimizers(self) -> list[Optimizer]:
        return [self.optimizer, *self.objective.optimizers().values()]

    def on_epoch_start(self, epoch: int) -> None:
        self.objective.on_epoch_start(epoch)

    def train(self) -> None:
        self.objective.autocast = self.execution.autocast
        self.model.train()
        self.objective.train()
        self.stats = EpochStats(self.device)

    def loss(self, batch: Any) -> Tensor:
        x, y, idx = batch
        x = self.execution.input(x)
        y = y.to(self.device, non_blocking=True)
        idx = idx.to(self.device, non_blocking=True)
        with self.execution.autocast():
            logits = self.model(x)
        loss, per_sample = self.objective(logits.float(), x, y, idx)
        self._batch = (logits, y, idx, per_sample)
        return loss

    def record(self, callbacks: Sequence[Callback]) -> None:
        logits, y, idx, per_sample = self._batch
        self._batch = ()
        with torch.no_grad():
            clean = self.clean_targets[idx] if self.clean_targets is not None else None
            self.stats.add(per_sample, logits.argmax(1), y, clean)
            self.objective.record(idx, per_sample, logits.detach())
        for cb in callbacks:
            cb.on_batch_end(logits.detach(), y, idx, per_sample)

    def running(self) -> dict[str, str]:
        mean_loss, acc = self.stats.running()
        return {"loss": f"{mean_loss:.3f}", "acc": f"{acc:.1f}"}

    def epoch_stats(self, ctx: DistributedContext | None) -> dict[str, Any]:
        if ctx is not None:
            self.stats.all_reduce(ctx)
        return self.stats.as_dict(self.clean_targets is not None)

    def on_epoch_end(self, epoch: int) -> None:
        self.objective.on_epoch_end(epoch)

    def evaluate(self, epoch: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for name, loader in self.eval_loaders.items():
            ev = evaluate(unwrap_model(self.model), loader, self.device, execution=self.execution)
            record[f"{name}_loss"], record[f"{name}_acc"] = ev["loss"], ev["acc"]
        return record


def train_one_epoch(
    step: TrainStep,
    loader: Iterable[Any],
    *,
    clip_grad_norm: float | None = None,
    step_scheduler: Any = None,
    callbacks: Sequence[Callback] = (),
    progress: Any = None,
    progress_interval_s: float = 1.0,
    ctx: DistributedContext | None = None,
) -> dict[str, Any]:
    """Train for one epoch; return the step's numbers for it (a classifier's: mean training loss
    without regulariser, and accuracies).

    Parameters
    ----------
    step : TrainStep
        E.g. ``ClassificationStep(model, objective, optimizer, device)``.
    loader : iterable of batches, as ``step.loss`` takes them
        A classifier's: ``(inputs, targets, indices)``.
    clip_grad_norm : float, optional
        Cap on the norm of the model's gradient (:meth:`Execution.backward_and_step`).
    step_scheduler : LR scheduler, optional
        Stepped after every optimizer step (a per-iteration warm-up and decay).
    progress : tqdm-like, optional
        Advanced once per batch; its running numbers are refreshed at most every
        ``progress_interval_s`` seconds, since reading them waits for the device. Under
        torchrun they are this rank's share's.
    ctx : DistributedContext, optional
        Under torchrun: the returned numbers are over every rank's samples.
    """
    execution = step.execution
    step.train()
    optimizers = step.optimizers()
    shown_at = time.perf_counter()
    for batch in loader:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = step.loss(batch)
        execution.backward_and_step(loss, optimizers, clip_grad_norm=clip_grad_norm)
        if step_scheduler is not None:
            step_scheduler.step()
        step.record(callbacks)
        if progress is not None:
            progress.update(1)
            now = time.perf_counter()
            if now - shown_at >= progress_interval_s:
                shown_at = now
                progress.set_postfix(**step.running(), refresh=False)
    return step.epoch_stats(ctx)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, ...]],
    device: torch.device,
    *,
    execution: Execution | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits of the model in eval mode, unscaled (sec. 2.2): ``(logits (N, K), targets, indices)``.

    ``indices`` are those the loader yields, or positions in its order when it yields
    ``(inputs, targets)`` only.
    """
    execution = execution or Execution(device)
    model.eval()
    outs, ys, idxs = [], [], []
    seen = 0
    for batch in loader:
        x, y = execution.input(batch[0]), batch[1]
        with execution.autocast():
            outs.append(model(x).float().cpu())
        ys.append(y.cpu())
        # Without indices, a sample's index is its position in the loader's order.
        idxs.append(batch[2].cpu() if len(batch) > 2 else torch.arange(seen, seen + len(y)))
        seen += len(y)
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(ys), torch.cat(idxs)


@torch.no_grad()
def predict_by_index(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, ...]],
    device: torch.device,
    given: Tensor,
    *,
    execution: Execution | None = None,
) -> dict[str, Tensor]:
    """Per-sample predictions of the model in eval mode, streamed: never an (N, K) array.

    The loader yields ``(inputs, targets, indices)`` with indices in ``[0, N)``, ``N =
    len(given)``. Each batch's softmax is reduced on the device to three numbers per sample,
    written by index into (N,) buffers, so the memory is O(N) whatever ``K`` (the end of a run
    over ImageNet-sized data held ``N K`` float32 logits before).

    Returns
    -------
    dict of CPU Tensors (N,)
        ``predicted`` (int64, argmax of the unscaled logits), ``predicted_prob`` and
        ``given_prob`` (float32: the softmax probability of the prediction and of ``given``).
        Samples the loader did not yield keep -1 / nan.
    """
    execution = execution or Execution(device)
    model.eval()
    n = len(given)
    given = given.to(device)
    out = {"predicted": torch.full((n,), -1, dtype=torch.long, device=device),
           "predicted_prob": torch.full((n,), float("nan"), device=device),
           "given_prob": torch.full((n,), float("nan"), device=device)}
    for batch in loader:
        x, idx = execution.input(batch[0]), batch[2].to(device, non_blocking=True)
        with execution.autocast():
            probs = model(x).float().softmax(1)
        conf, pred = probs.max(1)
        out["predicted"].index_put_((idx,), pred)
        out["predicted_prob"].index_put_((idx,), conf)
        out["given_prob"].index_put_((idx,), probs.gather(1, given[idx][:, None]).squeeze(1))
    return {k: v.cpu() for k, v in out.items()}


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, ...]],
    device: torch.device,
    *,
    execution: Execution | None = None,
) -> dict[str, float]:
    """Loss and top-1 accuracy (percent) of the unscaled logits."""
    logits, y, _ = predict(model, loader, device, execution=execution)
    if len(y) == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "acc": 100.0 * float((logits.argmax(1) == y).float().mean()),
    }


def _set_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on the loader, or else on its batch sampler or sampler (as Lightning does for a
    ``DataLoader``)."""
    for owner in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)
            return


def fit(
    step: TrainStep,
    train_loader: Any,
    *,
    epochs: int,
    start_epoch: int = 0,
    scheduler: Any = None,
    step_scheduler: Any = None,
    clip_grad_norm: float | None = None,
    callbacks: Sequence[Callback] = (),
    progress_factory: Any = None,
    ctx: DistributedContext | None = None,
) -> list[dict[str, Any]]:
    """Train from ``start_epoch`` to ``epochs`` (0-based, exclusive), evaluating every epoch.

    ``set_epoch(epoch)`` is called on ``train_loader`` (the package's loaders), or on a
    ``DataLoader``'s batch sampler or sampler that has it (detection's batch sampler, a
    ``DistributedSampler``), so that each epoch's order depends on the epoch only, which is what makes a resumed run equal an uninterrupted one. ``scheduler`` is
    stepped once per epoch, ``step_scheduler`` once per optimizer step. ``progress_factory(epoch,
    total_batches)`` returns a tqdm-like bar or None.

    Each epoch's record: ``epoch`` (1-based), ``lr`` (the model's, at the start of the epoch), the
    step's :meth:`~TrainStep.epoch_stats`, ``train_time_s``, the step's
    :meth:`~TrainStep.evaluate`, ``time_s``; it is passed to the callbacks' ``on_epoch_end``,
    which write it (metrics, snapshots, checkpoints).

    Under torchrun (``ctx`` with several processes) every rank runs this loop; the training
    statistics are summed over the ranks, and evaluation runs on rank 0 only (the other ranks'
    records have no evaluation numbers).

    Returns the list of per-epoch records.
    """
    evaluates = ctx is None or ctx.is_main
    model_optimizer = step.optimizers()[0]
    history = []
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        _set_epoch(train_loader, epoch)
        step.on_epoch_start(epoch)
        for cb in callbacks:
            cb.on_epoch_start(epoch)
        bar = progress_factory(epoch, len(train_loader)) if progress_factory else None
        try:
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": model_optimizer.param_groups[0]["lr"]}
            record.update(train_one_epoch(step, train_loader, clip_grad_norm=clip_grad_norm,
                                          step_scheduler=step_scheduler, callbacks=callbacks, progress=bar, ctx=ctx))
            step.on_epoch_end(epoch)
            record["train_time_s"] = time.perf_counter() - t0
            if evaluates:
                record.update(step.evaluate(epoch))
            if bar is not None:
                shown = {k: f"{record[k]:.2f}" for k in ("train_acc", "test_acc") if k in record}
                if "train_loss" in record:
                    shown = {"loss": f"{record['train_loss']:.3f}", **shown}
                bar.set_postfix(**shown, refresh=True)
        finally:
            if bar is not None:
                bar.close()
        if scheduler is not None:
            scheduler.step()
        record["time_s"] = time.perf_counter() - t0
        for cb in callbacks:
            cb.on_epoch_end(epoch, record)
        history.append(record)
    return history
