"""Data parameters in PyTorch Lightning: one callback and one changed line in ``training_step``.

:class:`DataParametersCallback` owns the data parameters (sec. 2, a temperature per class and
per training sample, stored as log sigma), their :class:`~dataparams.SparseSGD` (sec. 3.1) and
the loss, cross-entropy of ``logits / sigma`` plus the L2 penalty on log sigma
(:class:`~dataparams.objectives.DataParameterObjective`). The LightningModule keeps its model,
its ``configure_optimizers`` and its validation code; its ``training_step`` unpacks the sample
index the dataloader yields and computes the loss with :func:`data_parameters_loss`:

.. code-block:: python

    import lightning as L
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    from dataparams import DataParameters
    from dataparams.data import WithIndex
    from dataparams.integrations.lightning import DataParametersCallback, data_parameters_loss


    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))

        def training_step(self, batch, batch_idx):
            x, y, index = batch                                        # WithIndex adds the index
            return data_parameters_loss(self, self.net(x), y, index)   # was F.cross_entropy(...)

        def configure_optimizers(self):                                # the model's parameters only
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


    train_set = FashionMNIST("data", train=True, download=True, transform=ToTensor())
    data_params = DataParametersCallback(
        DataParameters(10, len(train_set), instance_curriculum=True), lr_instance=0.2, momentum=0.9
    )
    trainer = L.Trainer(max_epochs=20, callbacks=[data_params])
    trainer.fit(Classifier(), DataLoader(WithIndex(train_set), batch_size=128, shuffle=True))
    sigma = data_params.data_parameters.instance_sigma()   # (N,), a large sigma marks a suspect label

What the callback does, and why this way:

* **Ownership.** The data parameters are attributes of the callback, not submodules of the
  LightningModule, so ``self.parameters()`` never contains them and the model's optimizer cannot
  pick them up by accident (a dense momentum optimizer over sparse-gradient rows would move
  rows that are absent from the batch, which sec. 3.1 forbids). Lightning's gradient clipping
  and ``zero_grad`` of the model do not touch them either.
* **Stepping.** The SparseSGD steps once per real optimizer step of the model, after backward:
  once every ``accumulate_grad_batches`` batches, with the sparse gradients of those batches
  summed (Lightning divides each batch's loss by ``accumulate_grad_batches``; the data
  parameters see the same loss). Under ``precision="16-mixed"`` their gradients are unscaled by
  the model's gradient scaler, which also counts their infinities when it adapts its scale, and
  their step is skipped whenever that scaler finds an inf or NaN, in the model's gradients (the
  step the scaler skips) or in their own. Gradients are cleared after each step and whenever
  Lightning clears the model's.
* **Checkpoints.** Log sigma, the momentum and the per-sample losses of the objective are the
  callback's ``state_dict``, stored in every Lightning checkpoint under
  ``checkpoint["callbacks"]["DataParametersCallback"]`` and restored by
  ``trainer.fit(..., ckpt_path=...)`` when the new trainer has the callback. As with torch
  optimizers, the restored optimizer keeps the learning rates and momentum it was saved with.
* **Device.** At the start of ``fit`` the data parameters and the optimizer's momentum move to
  the LightningModule's device. They stay in float32 whatever the model's precision.
* **Scope.** Automatic optimization on one process. Manual optimization, several processes
  (DDP; see :mod:`dataparams.distributed`) and strategies that do their own loss scaling and
  accumulation (DeepSpeed) are refused at ``setup`` rather than trained wrongly.
* Validation, test and prediction use the model's logits unscaled (sec. 2.2): sigma exists for
  training samples only, and :func:`data_parameters_loss` refuses to run outside a training
  batch. With both curricula off sigma is exactly 1 and the loss is the plain cross-entropy.

Requires ``lightning`` (``import lightning as L``, ``pip install 'dataparams[lightning]'``); the
older ``pytorch_lightning`` package is used when ``lightning`` is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dataparams.objectives import DataParameterObjective
from dataparams.optim import SparseSGD
from dataparams.parameters import DataParameters

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError(
            "dataparams.integrations.lightning needs PyTorch Lightning: pip install 'dataparams[lightning]'"
        ) from err

__all__ = ["DataParametersCallback", "data_parameters_loss"]


class DataParametersCallback(pl.Callback):
    """Train class- and instance-level data parameters alongside a LightningModule.

    Parameters
    ----------
    data_parameters : DataParameters
        ``K`` classes and ``N`` training samples; the dataloader's indices lie in ``[0, N)``.
        Which levels are learned, their initial sigma and the clamp are set here.
    lr_class, lr_instance, momentum : float
        :class:`~dataparams.SparseSGD` settings of the two levels (the paper's separate
        optimizers, as two parameter groups).
    wd_class, wd_instance : float
        Weight of the L2 penalty on the log sigma of the batch members, added to the loss.
    loss_fn : callable ``(scaled_logits (B, K), targets (B,)) -> (B,)``, optional
        Per-sample loss on the scaled logits; cross-entropy by default.

    Attributes
    ----------
    objective : DataParameterObjective
        The loss and its state: the data parameters and each sample's latest training loss.
    data_parameters : DataParameters
        Read sigma here: ``.class_sigma()`` (K,), ``.instance_sigma()`` (N,).
    optimizer : SparseSGD or None
        ``None`` when both curricula are off (nothing to learn).
    """

    def __init__(
        self,
        data_parameters: DataParameters,
        *,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float = 0.9,
        wd_class: float = 0.0,
        wd_instance: float = 0.0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(data_parameters, DataParameters):
            raise TypeError(f"data_parameters must be a DataParameters, got {type(data_parameters).__name__}")
        self.objective = DataParameterObjective(
            data_parameters, lr_class=lr_class, lr_instance=lr_instance, momentum=momentum,
            wd_class=wd_class, wd_instance=wd_instance, loss_fn=loss_fn,
        )
        optimizers = self.objective.optimizers()
        self.optimizer: SparseSGD | None = optimizers.get("data_parameters")  # type: ignore[assignment]
        self._reset_batch_state()

    @property
    def data_parameters(self) -> DataParameters:
        """The :class:`~dataparams.DataParameters` being trained."""
        return self.objective.dp

    def _reset_batch_state(self) -> None:
        self._in_train_batch = False
        self._backward_ran = False
        self._step_pending = False
        self._scale_before = 0.0

    # ---------------------------------------------------------------- the loss

    def loss(self, logits: Tensor, targets: Tensor, indices: Tensor) -> Tensor:
        """The training loss of a batch: mean loss on ``logits / sigma`` + the penalty (eq. 1).

        Parameters
        ----------
        logits : Tensor (B, K)
        targets : LongTensor (B,)
            Labels in ``[0, K)``.
        indices : LongTensor (B,)
            Dataset indices in ``[0, N)``, as :class:`~dataparams.data.WithIndex` yields them.

        Returns
        -------
        Tensor ()
            The scalar to return from ``training_step``. Each sample's loss is also recorded in
            ``objective.last_loss`` (the last-loss score of :meth:`~dataparams.scores.ScoreTracker.scores`).

        Raises
        ------
        RuntimeError
            Outside a training batch: validation samples have no data parameters, and looking
            their indices up in the training table would silently use other samples' sigma.
        """
        if not self._in_train_batch:
            raise RuntimeError(
                "the data-parameter loss is for training_step only; sigma belongs to training samples, "
                "so validation, test and prediction use the model's logits unscaled"
            )
        loss, per_sample = self.objective(logits, None, targets, indices)
        self.objective.record(indices.to(self.objective.last_loss.device), per_sample)
        return loss

    # ---------------------------------------------------------------- set-up

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                "DataParametersCallback steps the data parameters with the model's optimizer under automatic "
                "optimization; with manual optimization use DataParameters and SparseSGD directly"
            )
        if trainer.world_size > 1:
            # Each process would update its own replica from its own share of the batch: the
            # class temperatures diverge and every instance row follows a fraction of its data.
            raise ValueError(
                f"DataParametersCallback trains on one process, got world_size={trainer.world_size}; "
                "dataparams.distributed keeps data parameters exact across processes"
            )
        if trainer.strategy.handles_gradient_accumulation:
            # Such strategies (DeepSpeed) scale the loss and accumulate inside their own engine,
            # which the data parameters are not part of: their gradients would stay scaled.
            raise ValueError(
                f"DataParametersCallback does not support the {type(trainer.strategy).__name__} strategy, "
                "which does its own loss scaling and gradient accumulation"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After strategy.setup has placed the model, so pl_module.device is final. A checkpoint
        # restored before this point was loaded into the parameters where they were; from here
        # on everything lives on the model's device.
        self._to_device(pl_module.device)
        self._reset_batch_state()

    def _to_device(self, device: torch.device) -> None:
        if self.optimizer is None:
            self.objective.to(device)
            return
        state = self.optimizer.state_dict()
        self.objective.to(device)
        # Module.to keeps each Parameter object on CPU, CUDA and MPS (it swaps their .data) but
        # makes new ones where the tensor types differ (XLA, meta). Point the groups at the
        # module's current parameters and reload the state, which Optimizer.load_state_dict
        # casts to their device: correct either way. The groups carry the clamp range too.
        dp = self.data_parameters
        current = {"class": dp.class_log_sigma, "instance": dp.instance_log_sigma}
        for group in self.optimizer.param_groups:
            group["params"] = [current[group["name"]]]
        self.optimizer.load_state_dict(state)

    # ---------------------------------------------------------------- the optimisation loop
    #
    # Lightning's order within a batch, automatic optimization:
    #   on_train_batch_start -> training_step -> on_before_zero_grad + zero_grad (first batch of
    #   an accumulation window only) -> backward -> on_after_backward -> [at the window's end:
    #   scaler.unscale_(model opt) -> on_before_optimizer_step -> clipping -> model step
    #   (scaler.step + scaler.update under AMP)] -> on_train_batch_end.
    #
    # The data parameters step in on_train_batch_end, not in on_before_optimizer_step: at the
    # latter hook the scaler has not yet decided whether the model's step is skipped (scaler.step
    # decides, then scaler.update halves the scale), so stepping there would apply updates the
    # model does not take. on_before_optimizer_step is where Lightning signals that a real step
    # happens in this batch, so it only records that (and unscales under AMP, which must happen
    # before scaler.update). on_train_batch_end still precedes ModelCheckpoint's saving (Lightning
    # runs that callback last) and validation, so both see the stepped data parameters.

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.objective.on_epoch_start(trainer.current_epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._in_train_batch = True
        self._backward_ran = False

    def on_before_zero_grad(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                            optimizer: torch.optim.Optimizer) -> None:
        # Lightning clears the model's gradients at the start of each accumulation window; clear
        # ours with them so that both sum the same batches, also when a window ended without a
        # step (an epoch cut short by on_train_batch_start returning -1).
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._backward_ran = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is None:
            return
        scaler = _grad_scaler(trainer)
        if scaler is None:
            # Without a scaler Lightning calls the model optimizer's step right after this hook.
            self._step_pending = True
            return
        if not self._backward_ran:
            # training_step returned None: under a scaler Lightning then skips unscale, step and
            # update, so the model does not step and neither do we. Unscaling here would leave the
            # scaler expecting an update() that never comes.
            return
        # The same scaler and the same inverse scale as the model's gradients; their infinities
        # join the model's in scaler.update(), which lowers the scale when any is found.
        scaler.unscale_(self.optimizer)
        self._scale_before = scaler.get_scale()
        self._step_pending = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._in_train_batch = False
        if not self._step_pending or self.optimizer is None:
            return
        self._step_pending = False
        scaler = _grad_scaler(trainer)
        # scaler.update() lowers the scale exactly when it found an inf/NaN among the gradients
        # of this step, in which case scaler.step skipped the model's update; it otherwise keeps
        # or raises it. A lower scale therefore means: skip ours too.
        if scaler is None or scaler.get_scale() >= self._scale_before:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.objective.on_epoch_end(trainer.current_epoch)

    # ---------------------------------------------------------------- checkpoints

    def _layout(self) -> dict[str, Any]:
        dp = self.data_parameters
        return {"num_classes": dp.num_classes, "num_instances": dp.num_instances, "mode": dp.mode}

    def state_dict(self) -> dict[str, Any]:
        """Log sigma, per-sample losses and the SparseSGD state (momentum, hyper-parameters)."""
        return {
            "layout": self._layout(),
            "objective": self.objective.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the data parameters must have the same shape and mode.

        Raises
        ------
        ValueError
            If the checkpoint holds data parameters of other sizes or another curriculum.
        """
        saved, mine = state_dict["layout"], self._layout()
        if saved != mine:
            raise ValueError(f"the checkpoint holds data parameters {saved}, this callback has {mine}")
        self.objective.load_state_dict(state_dict["objective"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state_dict["optimizer"])


def _grad_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The gradient scaler of the trainer's precision plugin, or None (fp32, bf16, no scaling)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def data_parameters_loss(module: pl.LightningModule, logits: Tensor, targets: Tensor, indices: Tensor) -> Tensor:
    """The loss of a training batch, from the trainer's :class:`DataParametersCallback`.

    Call it in ``training_step`` where the loss would be ``F.cross_entropy(logits, targets)``.

    Parameters
    ----------
    module : LightningModule
        The module whose ``training_step`` is running (``self``).
    logits : Tensor (B, K)
    targets : LongTensor (B,)
    indices : LongTensor (B,)
        The samples' dataset indices, e.g. from :class:`~dataparams.data.WithIndex`.

    Returns
    -------
    Tensor ()
        :meth:`DataParametersCallback.loss`.

    Raises
    ------
    RuntimeError
        If the trainer does not have exactly one :class:`DataParametersCallback`.
    """
    found = [cb for cb in module.trainer.callbacks if isinstance(cb, DataParametersCallback)]
    if len(found) != 1:
        raise RuntimeError(
            f"data_parameters_loss needs exactly one DataParametersCallback in the Trainer's callbacks, "
            f"found {len(found)}: L.Trainer(callbacks=[DataParametersCallback(...)])"
        )
    return found[0].loss(logits, targets, indices)
