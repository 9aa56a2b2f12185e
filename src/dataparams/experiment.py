"""From a :class:`~dataparams.config.TrainConfig` to a finished run directory.

:func:`train` reads top to bottom like torchvision's reference ``main()``: check the config, load
the data and resolve its labels (:mod:`dataparams.data.prepare`), build the loaders
(:mod:`dataparams.data.loaders`), the model, the objective and the optimizers
(:mod:`dataparams.build`, :mod:`dataparams.methods.registry`), prepare or resume the run
directory (:mod:`dataparams.runs`), train with :func:`dataparams.engine.fit`, and write the final
predictions and summary. Everything that can fail on bad input (unknown names, missing data, a run
directory holding another run) fails before anything is written.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs :func:`train` with the same arguments
and sees exactly the global batches of one process (``data.batch_size`` samples, the same order
and in-memory augmentation), of which it trains its contiguous share with global sample indices
(:mod:`dataparams.distributed`). The model is wrapped in ``DistributedDataParallel`` with its
BatchNorm layers normalising over the global batch; the objective is the data-parameter
objective in its distributed form, ``distributed.mode=replicated`` (every process holds all data
parameters) or ``sharded`` (each holds its share of the instance rows). Rank 0 alone prepares the
run directory (its outcome, or its error, is broadcast), evaluates, logs, writes snapshots, the
checkpoint and the summary; in sharded mode every process also writes its shard files, which the
checkpoint commits. A checkpoint resumes with any number of processes.
"""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataparams.build import build_model, build_optimizer, seed_everything, validate_config
from dataparams.calibration import expected_calibration_error, fit_temperature
from dataparams.config import ConfigError, TrainConfig, config_to_dict
from dataparams.data.loaders import FileLoader, RunLoaders, build_loaders
from dataparams.data.prepare import TrainingLabels, resolve_labels, split_noise_reference
from dataparams.data.registry import LoadedDataset, load_dataset
from dataparams.distributed import (
    DistributedContext,
    FileShareLoader,
    LocalShareLoader,
    ReplicatedObjective,
    ShardedObjective,
    first_failure,
    init_distributed,
    launched_world_size,
    sync_batch_norm,
    wrap_model,
)
from dataparams.engine import ClassificationStep, Execution, fit, predict, predict_by_index, resolve_device
from dataparams.methods.registry import build_objective
from dataparams.objectives import Objective
from dataparams.presets import complete_user_config
from dataparams.runs import RunDir
from dataparams.runs.logger import RunLogger, progress_factory, read_selected_model, write_line
from dataparams.runs.state import capture_state, restore_state
from dataparams.scores import probabilities_fit

__all__ = ["check_distributable", "export_model", "summarize_history", "train"]

#: Detection numbers of the objective's own score kept in summary.json.
_SUMMARY_DETECTION = ("auroc", "average_precision", "precision_at_k", "top_fraction_purity", "separated_fraction")


def train(
    cfg: TrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    amp: str = "off",
    deterministic: bool = False,
    quiet: bool = False,
    tensorboard: bool = True,
    channels_last: bool = True,
    label: str = "",
    dataset: LoadedDataset | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) training of ``cfg`` into run directory ``out``; return the summary.

    ``device``, ``amp``, ``deterministic``, ``channels_last`` choose how it runs (not part of the
    config); ``quiet`` turns off progress output; ``label`` prefixes the progress bars; ``dataset``
    is ``cfg.data``'s dataset when the caller has already loaded it.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same arguments and
    trains its share of every global batch (see the module notes); ``device="auto"`` is
    ``cuda:LOCAL_RANK`` (or the CPU). Rank 0 writes the run directory and returns the summary,
    the other ranks return None.
    """
    validate_config(cfg)
    if launched_world_size() > 1:
        check_distributable(cfg)
        ctx = init_distributed(device, timeout=timedelta(minutes=float(cfg.distributed.timeout_min)))
    else:
        ctx = DistributedContext(device=resolve_device(device))
    try:
        summary = _train(cfg, out, ctx, resume=resume, overwrite=overwrite, amp=amp, deterministic=deterministic,
                         quiet=quiet or not ctx.is_main, tensorboard=tensorboard and ctx.is_main,
                         channels_last=channels_last, label=label, dataset=dataset)
        # The other ranks wait for rank 0's final predictions and summary, so that the job ends
        # (and its process group is torn down) together.
        ctx.barrier()
        return summary
    except Exception as e:
        # Under torchrun, a rank that fails because another one did (a collective whose peer is
        # gone) says which rank failed first and with what: on several nodes that message is
        # otherwise only in the failing node's log. Errors raised alike on every rank stay as they are.
        earlier = first_failure(ctx, e)
        if earlier is not None:
            rank, message = earlier
            raise RuntimeError(f"rank {rank} failed first: {message} (then on rank {ctx.rank}: "
                               f"{type(e).__name__}: {e})") from e
        raise
    finally:
        ctx.close()


#: Why each peer method is refused under torchrun (see :func:`check_distributable`).
_NOT_DISTRIBUTED = {
    "coteaching": "it keeps the small-loss fraction of each batch by ranking the batch's losses, which each "
                  "process would do on its own share, and its second network is not synchronised by DDP",
    "superloss": "its per-sample confidence and its tau='ema' threshold (a running mean over batches) are "
                 "not combined across processes",
    "aum": "its per-sample margin sums are not combined across processes",
    "gce": "its loss is averaged over each process's share instead of being weighted over the global batch",
    "sce": "its loss is averaged over each process's share instead of being weighted over the global batch",
}


def check_distributable(cfg: TrainConfig) -> None:
    """``ConfigError`` unless ``cfg`` trains under torchrun with the single-process result.

    The distributed path weights each process's share of the global batch, exchanges the data
    parameters' gradients and combines the per-sample buffers for the data-parameter objective
    (``method=ce``, any curriculum, ``curriculum.loss`` ce or gce). The peer methods' objectives do
    none of that, so they are refused rather than run inexactly.
    """
    if cfg.method == "ce":
        return
    reason = _NOT_DISTRIBUTED.get(cfg.method, "its objective is not written for several processes")
    raise ConfigError(f"method={cfg.method} cannot run under torchrun with the result of one process: {reason}. "
                      "Run it without torchrun, or use method=ce (data parameters; curriculum.loss=gce gives "
                      "GCE on the scaled logits)")


def _train(cfg: TrainConfig, out: str | os.PathLike[str], ctx: DistributedContext, *, resume: bool, overwrite: bool,
           amp: str, deterministic: bool, quiet: bool, tensorboard: bool, channels_last: bool, label: str,
           dataset: LoadedDataset | None) -> dict[str, Any] | None:
    dev = ctx.device
    execution = Execution.create(dev, amp, channels_last=channels_last)
    seed_everything(cfg.seed, deterministic=deterministic)

    # Data: the dataset's splits, the labels this run trains on, the loaders.
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=not quiet)
    if dataset.user is not None:
        # The user's own data: what the config leaves open is measured from it, printed, and stored.
        cfg = complete_user_config(cfg, dataset.user)
        if not quiet:
            write_line(f"{dataset.user.source}: {len(dataset.user):,} samples, {dataset.user.num_classes} classes")
            for name, c in cfg.choices.items():
                write_line(f"  {name}: {c['value']}  ({c['why']})")
    labels = resolve_labels(cfg.data, dataset.train.targets, dataset.train.num_classes, seed=cfg.seed,
                            shipped=dataset.shipped_noisy_labels, name=cfg.data.dataset,
                            reference=split_noise_reference(cfg.data, dataset.train))
    loaders = build_loaders(dataset, labels, cfg.data, dev, seed=cfg.seed)
    if ctx.is_distributed:
        check_ranks_agree(ctx, cfg, labels, loaders.train)
    train_loader = _share(loaders.train, ctx)
    in_features = None
    if dataset.train.features is not None:
        in_channels, image_size, in_features = 0, 0, dataset.train.features.shape[1]
    elif dataset.train.in_memory:
        _, image_size, _, in_channels = dataset.train.images.shape  # type: ignore[union-attr]
    else:
        in_channels, image_size = dataset.info.in_channels, dataset.info.image_size

    # Model, objective, optimizers.
    logged: list[str] = []

    def model_factory() -> torch.nn.Module:
        return execution.model(build_model(cfg, labels.num_classes, in_channels=in_channels, image_size=image_size,
                                           in_features=in_features, log=logged.append))

    model = sync_batch_norm(model_factory(), ctx)
    if logged and not quiet:
        write_line(logged[0])
    objective = _build_objective(cfg, labels, ctx, model_factory)
    optimizer, scheduler = build_optimizer(cfg, model, objective)
    if ctx.is_distributed and not quiet:
        for note in _inexact(cfg, model, loaders.train):
            write_line(f"note: {note}")

    # The run directory: a fresh one, or the state of the last finished epoch.
    config = config_to_dict(cfg)
    run = RunDir(out, defaults=config_to_dict(TrainConfig()))
    # The run directory's lock (taken by prepare, on rank 0) is held until the run ends, however it ends.
    try:
        start_epoch = 0
        if _prepare_run(run, config, labels, ctx, resume=resume, overwrite=overwrite):
            start_epoch = restore_state(run.load_checkpoint(config), model, optimizer, scheduler, objective,
                                        execution.scaler, shard_dir=run.shard_dir)
            if ctx.is_main:
                run.truncate_after(start_epoch)
            if not quiet:
                write_line(f"resuming {run.path} from epoch {start_epoch}")
            if run.fallback_reason and ctx.is_main:
                write_line(f"note: {run.fallback_reason}")

        def state_fn(epoch: int) -> dict[str, Any]:
            return capture_state(epoch, config, model, optimizer, scheduler, objective, execution.scaler,
                                 shard_dir=run.shard_dir)

        # On user data the network a user keeps is the epoch the noisy validation split chooses, when
        # one is held out (data.val_fraction > 0), rather than the last epoch, which under label noise
        # has often memorised more of the wrong labels.
        select = dataset.user is not None and "val" in loaders.evaluate
        logger = RunLogger(run, objective, labels.is_corrupted, state_fn, epochs=cfg.optim.epochs, quiet=quiet,
                           tensorboard=tensorboard, is_main=ctx.is_main, start_epoch=start_epoch,
                           select_model=model.state_dict if select else None)
        # The accuracy on the true labels is only worth an (N,) int64 tensor on the device when some
        # label is known to differ from its true class (injected or shipped noise, a labels file).
        noisy = bool(labels.is_corrupted.any())
        try:
            if start_epoch < cfg.optim.epochs:
                # Wrapped after restoring: DDP broadcasts rank 0's parameters when it is built.
                clean = torch.as_tensor(labels.clean[labels.train_index], device=dev) if noisy else None
                step = ClassificationStep(wrap_model(model, ctx), objective, optimizer, dev, execution=execution,
                                          clean_targets=clean, eval_loaders=loaders.evaluate)
                fit(step, train_loader, epochs=cfg.optim.epochs, start_epoch=start_epoch, scheduler=scheduler,
                    callbacks=[logger],
                    progress_factory=None if quiet else progress_factory(cfg.optim.epochs, label),
                    ctx=ctx if ctx.is_distributed else None)
        finally:
            logger.close()
        # Every rank predicts its share of the training set (a collective under torchrun).
        pred = predict_training_set(model, dataset, labels, cfg, loaders, dev, execution, ctx, run)
        if not ctx.is_main:
            return None
        return _finish_user(run, cfg, labels, loaders, model, dev, execution, objective, dataset,
                            in_features=in_features, select=select, pred=pred)
    finally:
        run.unlock()


def predict_training_set(model: torch.nn.Module, dataset: LoadedDataset, labels: TrainingLabels, cfg: TrainConfig,
                         loaders: RunLoaders, dev: torch.device, execution: Execution,
                         ctx: DistributedContext, run: RunDir) -> dict[str, torch.Tensor] | None:
    """The final model's predictions on every training sample (:func:`~dataparams.engine.predict_by_index`'s
    three (N,) columns): returned in one process (:func:`finish` writes them), written to
    ``predictions.npz``'s shard files under torchrun (``None`` returned on every rank).

    Under torchrun every rank predicts its contiguous share (:func:`~dataparams.distributed.shard_range`
    of the training order) and writes it as its own shard file of ``predictions.npz``
    (:meth:`~dataparams.runs.RunDir.save_array_shard`; :meth:`~dataparams.runs.RunDir.load_arrays`
    joins them), so the model's pass over the N samples is split P ways and no rank holds more
    than its N / P rows, never N x K. Each share is predicted in order by the same network in eval
    mode, so the columns are those one process computes, up to float rounding of batches that
    split differently. The ranks agree on the outcome of the writes before rank 0 goes on to the
    summary: a write that failed on any rank (a full disk) stops every rank with its message.
    """
    if not ctx.is_distributed:
        return predict_by_index(model, loaders.train_eval, dev, torch.as_tensor(labels.given), execution=execution)
    from dataparams.data.loaders import pool_loader
    from dataparams.distributed import shard_range

    n = labels.num_train
    lo, hi = shard_range(n, ctx.world_size, ctx.rank)
    index = labels.train_index[lo:hi]
    # An empty share (fewer samples than ranks) predicts nothing and writes a file of no rows.
    share = [] if hi == lo else pool_loader(dataset, labels, index, cfg.data, dev, shuffle=False,
                                            batch_size=cfg.data.eval_batch_size, seed=cfg.seed)
    # This share's labels only, not all N.
    local = predict_by_index(model, share, dev, torch.as_tensor(labels.labels[index]), execution=execution)
    save_shares(run, "predictions.npz", {k: v.numpy() for k, v in local.items()}, lo, hi, n, ctx)
    return None


def save_shares(run: RunDir, name: str, arrays: dict[str, np.ndarray], start: int, end: int, num: int,
                ctx: DistributedContext) -> None:
    """Every rank writes its rows ``[start, end)`` of the per-sample array file ``name`` as its own
    shard file (:meth:`~dataparams.runs.RunDir.save_array_shard`), after rank 0 has removed the
    file and any shard files an earlier write left; then the ranks agree on the outcome.

    A step that failed on any rank (a full disk, a file that cannot be removed) raises on every
    rank with that rank's message, no rank waiting in a collective the failed one never reaches,
    and the shard files the others wrote are removed again: ``name`` is then absent rather than
    a partial set of shards, and no rank goes on to mark the run finished.
    """

    def agreed(step: Any) -> None:
        error = None
        try:
            step()
        except Exception as e:  # any rank's failure must reach the others, not leave them waiting
            error = f"rank {ctx.rank}: {type(e).__name__}: {e}"
        errors = [e for e in ctx.all_gather_object(error) if e is not None]
        if errors:
            if ctx.is_main:
                run.remove_array_files(name)
            raise OSError(f"writing the shard files of {run.path / name} failed: " + "; ".join(errors))

    # A whole file, or shards of another number of processes, from an earlier end of this run;
    # the agreement is also the barrier that keeps every rank from writing before they are gone.
    agreed(lambda: run.remove_array_files(name) if ctx.is_main else None)
    agreed(lambda: run.save_array_shard(name, rank=ctx.rank, world_size=ctx.world_size, start=start, end=end,
                                        num_instances=num, **arrays))

def _finish_user(run: RunDir, cfg: TrainConfig, labels: TrainingLabels, loaders: RunLoaders, model: torch.nn.Module,
                 dev: torch.device, execution: Execution, objective: Objective, dataset: LoadedDataset, *,
                 in_features: int | None, select: bool, pred: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """:func:`finish`, then for user data the network to keep (``model.pt``)."""
    summary = finish(run, cfg, labels, loaders, model, dev, execution, objective, pred=pred)
    if dataset.user is not None:
        kept = read_selected_model(run) if select else None
        export_model(run.path / "model.pt", cfg, model, dataset, in_features=in_features,
                     state_dict=None if kept is None else kept["state_dict"])
        summary["kept_model"] = ({"epoch": kept["epoch"], "chosen_by": "noisy validation accuracy",
                                  "val_acc": kept["val_acc"]} if kept is not None
                                 else {"epoch": summary["epochs"], "chosen_by": "last epoch (no validation split)"})
        run.write_json("summary.json", summary)
    return summary


def run_fingerprint(cfg: TrainConfig, labels: TrainingLabels, loader: Any) -> dict[str, Any]:
    """What every process of a torchrun job must agree on before training: the config (without
    the execution fields, which may differ per process), the training set's size, a checksum of
    its labels and sample order, and the loader kind (in memory or streamed, which each process
    chooses from its own free memory and which give different batch orders)."""
    import hashlib

    from dataparams.config import EXECUTION_FIELDS

    config = config_to_dict(cfg)
    for field_name in EXECUTION_FIELDS:
        section, _, key = field_name.rpartition(".")
        (config.get(section, {}) if section else config).pop(key, None)
    labels_hash = hashlib.sha256(np.ascontiguousarray(labels.given, dtype=np.int64).tobytes()
                                 + np.ascontiguousarray(labels.train_index, dtype=np.int64).tobytes()).hexdigest()
    return {"config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "samples": int(labels.num_train), "labels": labels_hash[:16], "loader": type(loader).__name__}


def check_ranks_agree(ctx: DistributedContext, cfg: TrainConfig, labels: TrainingLabels, loader: Any) -> None:
    """``ConfigError`` on every rank, naming the ranks and what differs, unless all processes
    hold the same :func:`run_fingerprint` (one small all-gather at start)."""
    prints = ctx.all_gather_object(run_fingerprint(cfg, labels, loader))
    differ = [f"rank {r}: {k} {p[k]} (rank 0: {prints[0][k]})" for r, p in enumerate(prints) for k in p
              if p[k] != prints[0][k]]
    if differ:
        raise ConfigError("the processes of this torchrun job disagree on their data or settings: "
                          + "; ".join(differ[:6]) + (" ..." if len(differ) > 6 else "")
                          + " -- give every process the same files and options (and, for data near the memory "
                          "budget, --set data.memory_budget_mb=... so that all load it the same way)")


def _share(loader: Any, ctx: DistributedContext) -> Any:
    """The training loader of this rank: its share of each of the single-process loader's batches."""
    if not ctx.is_distributed:
        return loader
    if isinstance(loader, FileLoader):
        return FileShareLoader(loader.dataset, batch_size=loader.batch_size, seed=loader.seed, rank=ctx.rank,
                               world_size=ctx.world_size, workers=loader.workers, pin_memory=loader.pin)
    return LocalShareLoader(loader, rank=ctx.rank, world_size=ctx.world_size)


def _build_objective(cfg: TrainConfig, labels: TrainingLabels, ctx: DistributedContext,
                     model_factory: Any) -> Objective:
    """The objective of ``cfg.method``; under torchrun or with sharded data parameters, its
    distributed form (:mod:`dataparams.distributed`) with the registry's settings."""
    c, k, n = cfg.curriculum, labels.num_classes, labels.num_train
    # Each rank's share of a global batch is at most ceil(B / P) (the loaders split every batch
    # that way): the padded size of the exchanges, known here, so that not even the first step
    # reads a size back from the device.
    b = int(cfg.data.batch_size)
    max_share = -(-b // ctx.world_size) if b > 0 else None
    if cfg.distributed.mode == "sharded":
        # Built without samples: only the settings it derives from cfg (the per-sample loss) are
        # needed, and the (N,) state is exactly what must not exist on every process.
        template = build_objective(cfg, num_classes=k, num_train=0, device="cpu")
        return ShardedObjective(k, n, ctx=ctx, class_curriculum=c.class_curriculum, init_class=c.init_class,
                                init_instance=c.init_instance,
                                clamp=None if c.clamp is None else (c.clamp[0], c.clamp[1]), max_share=max_share,
                                **_update_options(cfg, template))
    objective = build_objective(cfg, num_classes=k, num_train=n, device=ctx.device, model_factory=model_factory)
    if not ctx.is_distributed:
        # The class probabilities averaged over training, for the confident flag rule; under
        # torchrun each rank would see only its share of them, so they are kept in one process only.
        if probabilities_fit(n, k):
            objective.track_probabilities(k)
        return objective
    return ReplicatedObjective(objective.dp, ctx=ctx, max_share=max_share,  # type: ignore[arg-type]
                               **_update_options(cfg, objective))


def _update_options(cfg: TrainConfig, objective: Any) -> dict[str, Any]:
    # The arguments methods.registry gives DataParameterObjective for cfg, with its loss function.
    c = cfg.curriculum
    return dict(lr_class=c.lr_class, lr_instance=c.lr_instance, momentum=c.momentum, wd_class=c.wd_class,
                wd_instance=c.wd_instance, loss_fn=objective.loss_fn)


def _prepare_run(run: RunDir, config: dict[str, Any], labels: TrainingLabels, ctx: DistributedContext, *,
                 resume: bool, overwrite: bool) -> bool:
    """Rank 0 prepares the run directory; every rank learns whether to resume (or rank 0's error)."""
    outcome: Any = None
    if ctx.is_main:
        try:
            outcome = run.prepare(config, resume=resume, overwrite=overwrite)
            if not outcome:
                # A kill before the first checkpoint can leave a metrics line behind: start clean.
                run.truncate_after(0)
                run.save_arrays("labels.npz", given=labels.given, clean=labels.clean[labels.train_index],
                                is_corrupted=labels.is_corrupted, source_index=labels.train_index)
        except Exception as e:
            outcome = e
    outcome = ctx.broadcast_object(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return bool(outcome)


def _inexact(cfg: TrainConfig, model: torch.nn.Module, loader: Any) -> list[str]:
    """What makes this torchrun job differ from one process by more than rounding."""
    notes = []
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()) or cfg.model.dropout > 0:
        notes.append("dropout masks are drawn by each process for its share: the run equals the single-process "
                     "one in distribution, not sample for sample")
    if isinstance(loader, FileLoader) and cfg.data.augment:
        notes.append("random augmentation of image files is drawn by each process's loader: the batches are the "
                     "single-process run's, their random crops and flips are not")
    return notes


def export_model(path: str | os.PathLike[str], cfg: TrainConfig, model: torch.nn.Module, dataset: LoadedDataset, *,
                 in_features: int | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save the trained network with what is needed to use it on new inputs: the architecture,
    the class names, the input shape and the normalisation (``dataparams.build.load_model``).
    Data parameters are not part of it: at inference the logits are used unscaled (sec. 2.2).
    ``state_dict``: other weights of ``model``'s architecture to save (the validation-chosen epoch's)."""
    from dataparams.runs import atomic_write_bytes

    info = dataset.info
    state = {"arch": cfg.model.arch, "classes": list(dataset.train.classes), "in_channels": info.in_channels,
             "image_size": info.image_size, "in_features": in_features, "mean": list(info.mean),
             "std": list(info.std),
             "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()}}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def finish(run: RunDir, cfg: TrainConfig, labels: TrainingLabels, loaders: RunLoaders, model: torch.nn.Module,
           dev: torch.device, execution: Execution, objective: Objective | None = None, *,
           pred: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Predictions of the final model on the training set (``pred``, from :func:`predict_training_set`;
    ``None`` when the processes of a torchrun run have written them as shard files) and on the
    held-out pool, calibration, summary.json.

    ``predictions.npz`` also holds ``mean_probs`` (N, K), each sample's class probabilities
    averaged over training, when the objective tracked them (one process only).
    """
    if pred is not None:
        mean_probs = None if objective is None else objective.mean_probabilities()
        run.save_arrays("predictions.npz", **{k: v.numpy() for k, v in pred.items()},
                        **({} if mean_probs is None else {"mean_probs": mean_probs}))
        # Shard files of an earlier torchrun end of this run, removed once the whole file (which
        # takes precedence when both are there) is written: a failed write leaves them readable.
        run.remove_array_files("predictions.npz", shards_only=True)
    if loaders.heldout is not None:
        h_logits, _, h_pos = predict(model, loaders.heldout, dev, execution=execution)
        run.save_arrays("heldout_predictions.npz", source_index=labels.heldout_index,
                        probs=h_logits[torch.argsort(h_pos)].softmax(1).numpy().astype(np.float32))
    summary = {"preset": cfg.preset, "seed": cfg.seed, "method": cfg.method,
               **summarize_history(run.read_metrics(), cfg.report_epochs),
               "num_train": labels.num_train, "num_corrupted": int(labels.is_corrupted.sum())}
    if cfg.calibrate and "val" in loaders.evaluate:
        v_logits, v_y, _ = predict(model, loaders.evaluate["val"], dev, execution=execution)
        t_logits, t_y, _ = predict(model, loaders.evaluate["test"], dev, execution=execution)
        temp = fit_temperature(v_logits, v_y)
        cal = {
            "temperature": temp,
            "test_ece_before": expected_calibration_error(t_logits.softmax(1), t_y),
            "test_ece_after": expected_calibration_error((t_logits / temp).softmax(1), t_y),
        }
        run.write_json("calibration.json", cal)
        summary["calibration"] = cal
    run.write_json("summary.json", summary)
    return summary


def summarize_history(history: list[dict[str, Any]], report_epochs: list[int] = ()) -> dict[str, Any]:
    """The numbers of summary.json that the epoch records determine.

    ``final_*`` at the last epoch; ``best_test_acc`` (chosen on the test set: shown to make
    memorisation visible, never to pick a model); ``test_acc_epoch_E`` for each report epoch;
    ``val_selected_*`` at the epoch of the best noisy-validation accuracy (the earliest on ties);
    the last epoch's detection numbers.
    """
    last = history[-1]
    summary: dict[str, Any] = {
        "epochs": len(history), "final_test_acc": last.get("test_acc"), "final_train_acc": last.get("train_acc"),
        "train_time_s": float(sum(r.get("time_s", 0.0) for r in history)),
    }
    if "test_acc" in last:
        peak = max(history, key=lambda r: (r["test_acc"], -r["epoch"]))
        summary["best_test_acc"], summary["best_test_epoch"] = peak["test_acc"], peak["epoch"]
    for e in report_epochs:
        rec = next((r for r in history if r["epoch"] == e), None)
        summary[f"test_acc_epoch_{e}"] = None if rec is None else rec.get("test_acc")
    if "val_acc" in last:
        best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
        summary["val_selected_epoch"] = best["epoch"]
        summary["val_selected_test_acc"] = best.get("test_acc")  # None for user data: no test set
        summary["val_selected_val_acc"] = best["val_acc"]
    if "detection" in last:
        summary["detection"] = {k: last["detection"][k] for k in _SUMMARY_DETECTION}
    for key in ("detection_last_loss", "detection_mean_loss", "detection_sigma_mean"):
        if key in last:
            summary[key] = last[key]
    return summary
