"""From a :class:`~dataparams.config.TrainConfig` to a finished run directory.

``train(config, out)`` loads and corrupts the data, builds the model, the objective and the
optimizers, and runs :func:`dataparams.engine.fit` with a logger that writes the run directory
(:mod:`dataparams.runs`). Everything that can fail on bad input (unknown names, missing data, a
run directory holding another run) fails before anything is written.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dataparams.analysis.metrics import detection_report
from dataparams.calibration import expected_calibration_error, fit_temperature
from dataparams.config import ConfigError, TrainConfig, config_to_dict
from dataparams.data.base import Split
from dataparams.data.memory import Augment, InMemoryLoader
from dataparams.data.registry import DatasetInfo, load_splits
from dataparams.engine import Callback, Execution, fit, predict, resolve_device
from dataparams.models import ARCHITECTURES, build_model
from dataparams.noise import NOISE_MODELS, apply_noise
from dataparams.objectives import DataParameterObjective, Objective
from dataparams.parameters import DataParameters
from dataparams.runs import RunDir

__all__ = ["PreparedData", "build_objective", "prepare_data", "sigma_stats", "train"]

METHODS = ("ce", "gce", "sce", "superloss", "coteaching", "aum")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """The data of one run, aligned with the data-parameter index ``0..N-1``.

    ``source_index[i]`` is sample i's position in the dataset's training split (it differs from
    i when a subset, a validation split or the oracle removed samples).
    """

    train_loader: Any
    train_eval_loader: Any
    eval_loaders: dict[str, Any]
    heldout_loader: Any
    heldout_source_index: np.ndarray
    train_split: Split
    given_targets: np.ndarray
    clean_targets: np.ndarray
    is_corrupted: np.ndarray
    source_index: np.ndarray
    num_classes: int
    in_channels: int
    image_size: int
    info: DatasetInfo

    @property
    def num_train(self) -> int:
        return len(self.given_targets)


class FileLoader:
    """A DataLoader over an image-file dataset whose shuffling depends on ``(seed, epoch)``."""

    def __init__(self, dataset: Any, *, batch_size: int, shuffle: bool, workers: int, seed: int, device: torch.device):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.workers, self.seed, self.epoch = workers, seed, 0
        self.pin = device.type == "cuda"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(self.epoch))
        return iter(
            torch.utils.data.DataLoader(
                self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=g,
                num_workers=self.workers, pin_memory=self.pin, persistent_workers=False,
            )
        )


def _make_loader(
    split: Split, targets: np.ndarray, cfg: TrainConfig, info: DatasetInfo, device: torch.device, *,
    train: bool, batch_size: int, seed: int,
) -> Any:
    if split.in_memory:
        augment = Augment(cfg.data.crop_padding, cfg.data.flip) if (train and cfg.data.augment) else None
        return InMemoryLoader(
            split.images, targets, batch_size=batch_size, shuffle=train, augment=augment,
            mean=info.mean, std=info.std, device=device, seed=seed,
        )
    from dataparams.data.folders import ImageFileDataset, imagenet_transforms

    ds = ImageFileDataset(split, imagenet_transforms(train and cfg.data.augment), targets=targets)
    return FileLoader(ds, batch_size=batch_size, shuffle=train, workers=cfg.data.workers, seed=seed, device=device)


def _load_index_file(path: str, n: int, what: str) -> np.ndarray:
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: cannot read {path} ({e})") from None
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"{what}: {path} must hold a 1-D integer array of sample indices")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise ConfigError(f"{what}: {path} holds indices outside [0, {n})")
    return idx.astype(np.int64)


def _load_labels_file(path: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"data.labels_file: cannot read {path} ({e})") from None
    if not rows or not {"source_index", "label"} <= set(rows[0]):
        raise ConfigError(f"data.labels_file: {path} needs a header with source_index and label columns")
    try:
        src = np.array([int(r["source_index"]) for r in rows], dtype=np.int64)
        lab = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"data.labels_file: {path} holds a non-integer source_index or label") from None
    if src.min() < 0 or src.max() >= n or lab.min() < 0 or lab.max() >= k:
        raise ConfigError(f"data.labels_file: {path} holds indices outside [0, {n}) or labels outside [0, {k})")
    return src, lab


def prepare_data(cfg: TrainConfig, device: torch.device | str = "cpu") -> PreparedData:
    """Load, subset, corrupt and split the data of ``cfg``; build the loaders."""
    device = torch.device(device)
    d = cfg.data
    _check_choice("data.noise", d.noise, NOISE_MODELS)
    if not 0.0 <= d.noise_rate <= 1.0:
        raise ConfigError(f"data.noise_rate must be in [0, 1], got {d.noise_rate}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    loaded = load_splits(d.dataset, d.data_dir, label_set=d.label_set)
    train = loaded.train
    shipped = loaded.shipped_noisy_labels
    if d.subset is not None:
        if d.subset < 1:
            raise ConfigError(f"data.subset must be >= 1, got {d.subset}")
        keep = np.arange(min(d.subset, len(train)))
        train = train.subset(keep)
        shipped = None if shipped is None else shipped[keep]
    k = train.num_classes
    clean = train.targets
    if shipped is not None:
        noisy = np.asarray(shipped, dtype=np.int64)
        if d.noise != "none":
            raise ConfigError(f"{d.dataset} ships its own noisy labels; leave data.noise at 'none'")
    else:
        noise_seed = cfg.seed if d.noise_seed is None else d.noise_seed
        noisy, _ = apply_noise(d.noise, clean, d.noise_rate, k, seed=noise_seed)
    corrupted = noisy != clean

    from dataparams.data.splits import holdout_split

    train_idx, val_idx = holdout_split(len(train), d.val_fraction, seed=d.val_seed)
    if d.oracle:
        train_idx = train_idx[~corrupted[train_idx]]
    heldout_idx = np.zeros(0, dtype=np.int64)
    if d.keep_file:
        keep = np.isin(train_idx, _load_index_file(d.keep_file, len(train), "data.keep_file"))
        train_idx, heldout_idx = train_idx[keep], train_idx[~keep]
    if d.labels_file:
        # A cleaned label list (e.g. from `dataparams find-issues --cleaned-labels`): train on the
        # listed samples with the listed labels; the truth mask follows the new labels.
        src, lab = _load_labels_file(d.labels_file, len(train), k)
        noisy = noisy.copy()
        noisy[src] = lab
        corrupted = noisy != clean
        train_idx = train_idx[np.isin(train_idx, src)]
    if d.threshold_file:
        # AUM's threshold samples: a fake class K that no sample truly belongs to.
        thr = _load_index_file(d.threshold_file, len(train), "data.threshold_file")
        noisy = noisy.copy()
        noisy[thr] = k
        k += 1
    if len(train_idx) == 0:
        raise ConfigError("no training samples left after the subset, validation split and oracle filter")
    tr = train.subset(train_idx)
    eval_loaders = {
        "test": _make_loader(loaded.test, loaded.test.targets, cfg, loaded.info, device, train=False,
                             batch_size=d.eval_batch_size, seed=cfg.seed)
    }
    if len(val_idx):
        # The held-out split keeps its noisy labels: it is carved from the training data a user has.
        eval_loaders["val"] = _make_loader(train.subset(val_idx), noisy[val_idx], cfg, loaded.info, device,
                                           train=False, batch_size=d.eval_batch_size, seed=cfg.seed)
    if tr.in_memory:
        in_channels, image_size = tr.images.shape[3], tr.images.shape[1]  # type: ignore[union-attr]
    else:
        in_channels, image_size = loaded.info.in_channels, loaded.info.image_size
    heldout_loader = None
    if len(heldout_idx):
        heldout_loader = _make_loader(train.subset(heldout_idx), noisy[heldout_idx], cfg, loaded.info, device,
                                      train=False, batch_size=d.eval_batch_size, seed=cfg.seed)
    return PreparedData(
        train_loader=_make_loader(tr, noisy[train_idx], cfg, loaded.info, device, train=True,
                                  batch_size=d.batch_size, seed=cfg.seed),
        train_eval_loader=_make_loader(tr, noisy[train_idx], cfg, loaded.info, device, train=False,
                                       batch_size=d.eval_batch_size, seed=cfg.seed),
        eval_loaders=eval_loaders,
        heldout_loader=heldout_loader,
        heldout_source_index=heldout_idx,
        train_split=tr,
        given_targets=noisy[train_idx],
        clean_targets=clean[train_idx],
        is_corrupted=corrupted[train_idx],
        source_index=train_idx,
        num_classes=k,
        in_channels=in_channels,
        image_size=image_size,
        info=loaded.info,
    )


# ----------------------------------------------------------------------------------------------
# model, objective, optimizers
# ----------------------------------------------------------------------------------------------
def build_objective(cfg: TrainConfig, num_classes: int, num_train: int, device: torch.device, *,
                    model_factory: Any = None) -> Objective:
    """The training objective of ``cfg.method`` (data parameters for ``ce``)."""
    if cfg.method == "ce":
        c = cfg.curriculum
        dp = DataParameters(
            num_classes, num_train, class_curriculum=c.class_curriculum, instance_curriculum=c.instance_curriculum,
            init_class=c.init_class, init_instance=c.init_instance,
            clamp=None if c.clamp is None else (c.clamp[0], c.clamp[1]),
        ).to(device)
        return DataParameterObjective(
            dp, lr_class=c.lr_class, lr_instance=c.lr_instance, momentum=c.momentum,
            wd_class=c.wd_class, wd_instance=c.wd_instance,
        )
    _check_choice("method", cfg.method, METHODS)
    if cfg.curriculum.class_curriculum or cfg.curriculum.instance_curriculum:
        raise ConfigError(f"method {cfg.method!r} does not combine with data parameters; turn the curriculum off")
    from dataparams.methods.objectives import build_peer_objective

    return build_peer_objective(cfg, num_classes=num_classes, num_train=num_train, device=device,
                                model_factory=model_factory)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    return opt, build_scheduler(cfg, opt)


_SCHEDULES: dict[str, Any] = {
    "multistep": lambda o, opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(o.milestones), gamma=o.gamma),
    "cosine": lambda o, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs),
    "constant": lambda o, opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[], gamma=1.0),
}


def _check_choice(field: str, value: Any, choices: Iterable[str]) -> None:
    """``ConfigError`` naming the field and the valid values when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {field} {value!r}; choose one of {', '.join(choices)}")


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    _check_choice("optim.schedule", cfg.optim.schedule, _SCHEDULES)
    return _SCHEDULES[cfg.optim.schedule](cfg.optim, opt)


# ----------------------------------------------------------------------------------------------
# logging
# ----------------------------------------------------------------------------------------------
def sigma_stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


class RunLogger(Callback):
    """Writes metrics, snapshots, detection metrics, TensorBoard events and checkpoints."""

    def __init__(self, run: RunDir, cfg: TrainConfig, data: PreparedData, objective: Objective,
                 state_fn: Any, last_loss: torch.Tensor, *, quiet: bool, tensorboard: bool) -> None:
        self.run, self.cfg, self.objective = run, cfg, objective
        self.state_fn, self.last_loss, self.quiet = state_fn, last_loss, quiet
        self.corrupted = data.is_corrupted
        self.noisy = bool(self.corrupted.any())
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run.path / "tensorboard"))
            except ImportError:
                self.writer = None
        self.epoch_times: list[float] = []

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        snap = self.objective.snapshot()
        loss = self.last_loss.float().cpu().numpy()
        for name in ("class_sigma", "instance_sigma"):
            if name in snap:
                stats = sigma_stats(snap[name])
                if name == "instance_sigma" and self.noisy:
                    stats["clean"] = sigma_stats(snap[name][~self.corrupted])
                    stats["corrupted"] = sigma_stats(snap[name][self.corrupted])
                record[name] = stats
        if self.noisy:
            scores = self.objective.scores(snap)
            if scores is not None:
                record["detection"] = detection_report(scores, self.corrupted)
            # The small-loss criterion, for every method: the latest per-sample training loss.
            small = detection_report(loss, self.corrupted)
            record["detection_loss"] = {k: small[k] for k in ("auroc", "average_precision", "precision_at_k")}
        self.run.append_metrics(record)
        self.run.save_snapshot(record["epoch"], loss=loss.astype(np.float16), **snap)
        self.run.save_checkpoint(self.state_fn(epoch + 1))
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, record["epoch"])
            for name, values in snap.items():
                self.writer.add_histogram(name, values, record["epoch"])
            self.writer.flush()
        self.epoch_times.append(record["time_s"])
        if not self.quiet:
            left = self.cfg.optim.epochs - record["epoch"]
            eta = left * float(np.mean(self.epoch_times[-5:]))
            parts = [f"epoch {record['epoch']:>3}/{self.cfg.optim.epochs}", f"loss {record['train_loss']:.3f}",
                     f"train {record['train_acc']:.1f}%"]
            if "train_acc_clean" in record and self.noisy:
                parts.append(f"train(clean labels) {record['train_acc_clean']:.1f}%")
            for k in ("val_acc", "test_acc"):
                if k in record:
                    parts.append(f"{k.split('_')[0]} {record[k]:.2f}%")
            if "detection" in record:
                parts.append(f"AUROC {record['detection']['auroc']:.3f}")
            parts.append(f"{record['time_s']:.1f}s, ETA {_fmt_time(eta)}")
            _write("  ".join(parts))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _write(line: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:
        print(line, file=sys.stderr, flush=True)


def _progress_factory(cfg: TrainConfig, quiet: bool, label: str = "") -> Any:
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def make(epoch: int, total: int) -> Any:
        desc = f"{label}epoch {epoch + 1}/{cfg.optim.epochs}"
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, unit="batch")

    return make


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def validate_config(cfg: TrainConfig) -> None:
    """Cheap checks of names and ranges, before any data is read."""
    _check_choice("model.arch", cfg.model.arch, ARCHITECTURES)
    _check_choice("method", cfg.method, METHODS)
    if cfg.optim.epochs < 1:
        raise ConfigError(f"optim.epochs must be >= 1, got {cfg.optim.epochs}")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    _check_choice("optim.schedule", cfg.optim.schedule, _SCHEDULES)
    if cfg.curriculum.clamp is not None and len(cfg.curriculum.clamp) != 2:
        raise ConfigError(f"curriculum.clamp must be two temperatures or none, got {cfg.curriculum.clamp}")
    from dataparams.data.registry import DATASETS

    _check_choice("data.dataset", cfg.data.dataset, DATASETS)
    if cfg.data.label_set is not None and cfg.data.dataset not in ("cifar10n", "cifar100n"):
        raise ConfigError("data.label_set applies to cifar10n / cifar100n only")
    c = cfg.curriculum
    for name in ("init_class", "init_instance"):
        if not getattr(c, name) > 0:
            raise ConfigError(f"curriculum.{name} is a temperature and must be > 0, got {getattr(c, name)}")
    if c.clamp is not None and not 0 < c.clamp[0] <= c.clamp[1]:
        raise ConfigError(f"curriculum.clamp must be [low, high] with 0 < low <= high, got {c.clamp}")
    if cfg.calibrate and cfg.data.val_fraction <= 0:
        raise ConfigError("calibrate=true needs a held-out split: set data.val_fraction > 0")


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
) -> dict[str, Any]:
    """Run (or resume) training of ``cfg`` into run directory ``out``; return the summary.

    ``device``, ``amp``, ``deterministic``, ``channels_last`` choose how it runs (not part of the
    config); ``quiet`` turns off progress output; ``label`` prefixes the progress bars.
    """
    validate_config(cfg)
    dev = resolve_device(device)
    execution = Execution.create(dev, amp, channels_last=channels_last)
    seed_everything(cfg.seed, deterministic=deterministic)
    data = prepare_data(cfg, dev)
    def model_factory() -> torch.nn.Module:
        return execution.model(build_model(cfg.model.arch, data.num_classes, in_channels=data.in_channels,
                                           image_size=data.image_size, dropout=cfg.model.dropout))

    model = model_factory()

    objective = build_objective(cfg, data.num_classes, data.num_train, dev, model_factory=model_factory)
    optimizer, scheduler = build_optimizer(cfg, model)
    objective.attach(model, optimizer)
    config_dict = config_to_dict(cfg)

    run = RunDir(out)
    has_checkpoint = run.prepare(config_dict, resume=resume, overwrite=overwrite)
    last_loss = torch.zeros(data.num_train, device=dev)
    start_epoch = 0
    if has_checkpoint:
        state = run.load_checkpoint(config_dict)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for name, mod in objective.modules().items():
            mod.load_state_dict(state["modules"][name])
        for name, opt in objective.optimizers().items():
            opt.load_state_dict(state["objective_optimizers"][name])
        objective.load_extra_state(state.get("objective_state", {}))
        if execution.scaler is not None and "scaler" in state:
            execution.scaler.load_state_dict(state["scaler"])
        last_loss.copy_(state["last_loss"].to(dev))
        _set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        run.truncate_after(start_epoch)
        if not quiet:
            _write(f"resuming {run.path} from epoch {start_epoch}")
    else:
        # A kill before the first checkpoint can leave a metrics line behind: start clean.
        run.truncate_after(0)
        run.save_arrays(
            "labels.npz", given=data.given_targets, clean=data.clean_targets, is_corrupted=data.is_corrupted,
            source_index=data.source_index,
        )

    def state_fn(epoch: int) -> dict[str, Any]:
        st = {
            "epoch": epoch,
            "config": config_dict,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "modules": {n: m.state_dict() for n, m in objective.modules().items()},
            "objective_optimizers": {n: o.state_dict() for n, o in objective.optimizers().items()},
            "objective_state": objective.extra_state(),
            "last_loss": last_loss.detach().cpu(),
            "rng": _rng_state(),
        }
        if execution.scaler is not None:
            st["scaler"] = execution.scaler.state_dict()
        return st

    logger = RunLogger(run, cfg, data, objective, state_fn, last_loss, quiet=quiet, tensorboard=tensorboard)
    callbacks = [logger]
    try:
        if start_epoch < cfg.optim.epochs:
            fit(
                model, objective, optimizer, data.train_loader, dev, epochs=cfg.optim.epochs,
                start_epoch=start_epoch, scheduler=scheduler, eval_loaders=data.eval_loaders, execution=execution,
                clean_targets=torch.as_tensor(data.clean_targets, device=dev), last_loss=last_loss,
                callbacks=callbacks, progress_factory=_progress_factory(cfg, quiet, label),
            )
    finally:
        logger.close()
    return finish(run, cfg, data, model, objective, dev, execution)


def finish(run: RunDir, cfg: TrainConfig, data: PreparedData, model: torch.nn.Module, objective: Objective,
           dev: torch.device, execution: Execution) -> dict[str, Any]:
    """Predictions on the training set, calibration, and summary.json."""
    logits, _, idx = predict(model, data.train_eval_loader, dev, execution=execution)
    probs = logits.softmax(1)
    order = torch.argsort(idx)
    probs, given = probs[order], torch.as_tensor(data.given_targets)
    conf, pred = probs.max(1)
    run.save_arrays(
        "predictions.npz", predicted=pred.numpy(), predicted_prob=conf.numpy(),
        given_prob=probs.gather(1, given[:, None]).squeeze(1).numpy(),
    )
    if data.heldout_loader is not None:
        h_logits, _, h_pos = predict(model, data.heldout_loader, dev, execution=execution)
        order = torch.argsort(h_pos)
        run.save_arrays("heldout_predictions.npz", source_index=data.heldout_source_index,
                        probs=h_logits[order].softmax(1).numpy().astype(np.float32))
    history = run.read_metrics()
    last = history[-1]
    summary: dict[str, Any] = {
        "preset": cfg.preset, "seed": cfg.seed, "method": cfg.method, "epochs": len(history),
        "final_test_acc": last.get("test_acc"), "final_train_acc": last.get("train_acc"),
        "train_time_s": float(sum(r.get("time_s", 0.0) for r in history)),
        "num_train": data.num_train, "num_corrupted": int(data.is_corrupted.sum()),
    }
    if "test_acc" in last:
        # Chosen on the test set: shown to make memorisation visible, never to pick a model.
        peak = max(history, key=lambda r: (r["test_acc"], -r["epoch"]))
        summary["best_test_acc"], summary["best_test_epoch"] = peak["test_acc"], peak["epoch"]
    for e in cfg.report_epochs:
        rec = next((r for r in history if r["epoch"] == e), None)
        summary[f"test_acc_epoch_{e}"] = None if rec is None else rec.get("test_acc")
    if "val_acc" in last:
        best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
        summary["val_selected_epoch"] = best["epoch"]
        summary["val_selected_test_acc"] = best["test_acc"]
        summary["val_selected_val_acc"] = best["val_acc"]
    if "detection" in last:
        summary["detection"] = {k: last["detection"][k] for k in
                                ("auroc", "average_precision", "precision_at_k", "top_fraction_purity",
                                 "separated_fraction")}
    if "detection_loss" in last:
        summary["detection_loss"] = last["detection_loss"]
    if cfg.calibrate and "val" in data.eval_loaders:
        v_logits, v_y, _ = predict(model, data.eval_loaders["val"], dev, execution=execution)
        t_logits, t_y, _ = predict(model, data.eval_loaders["test"], dev, execution=execution)
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
