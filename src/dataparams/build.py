"""From a :class:`~dataparams.config.TrainConfig` to the objects of a run: checks, model, optimizer,
schedule, seeds.

:func:`validate_config` is the one place where a config's names and ranges are checked before any
data is read; what can only be checked against the data (label files, class counts) is checked
by :func:`dataparams.data.prepare.resolve_labels`, and the core classes check their own arguments.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from dataparams.config import ConfigError, TrainConfig
from dataparams.data.registry import DATASET_NAMES, TABLE_OPTIONS
from dataparams.distributed.context import MODES as DISTRIBUTED_MODES
from dataparams.methods.registry import OBJECTIVES
from dataparams.models import ARCHITECTURES, is_known_arch, load_local_weights
from dataparams.models import build_model as _build_model
from dataparams.noise import NOISE_MODELS
from dataparams.objectives import Objective

__all__ = [
    "SCHEDULES",
    "build_model",
    "build_optimizer",
    "check_choice",
    "load_model",
    "get_rng_state",
    "seed_everything",
    "set_rng_state",
    "validate_config",
]

SCHEDULES: dict[str, Any] = {
    "multistep": lambda o, opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(o.milestones), gamma=o.gamma),
    "cosine": lambda o, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs),
    "constant": lambda o, opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[], gamma=1.0),
}


def check_choice(field: str, value: Any, choices: Iterable[str]) -> None:
    """``ConfigError`` naming the field and the valid values when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {field} {value!r}; choose one of {', '.join(choices)}")


def validate_config(cfg: TrainConfig) -> None:
    """Names and ranges of ``cfg``, checked before any data is read; raises ``ConfigError``."""
    user = cfg.data.dataset == "user"
    # "auto" first: the torchvision name list costs seconds of imports that a user run does not need.
    if not ((user and cfg.model.arch == "auto") or is_known_arch(cfg.model.arch)):
        raise ConfigError(f"unknown model.arch {cfg.model.arch!r}; choose one of {', '.join(ARCHITECTURES)}, a "
                          "torchvision classification architecture" + (", or auto" if user else ""))
    check_choice("method", cfg.method, OBJECTIVES)
    check_choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    check_choice("data.dataset", cfg.data.dataset, DATASET_NAMES)
    check_choice("data.noise", cfg.data.noise, NOISE_MODELS)
    if cfg.optim.epochs < (0 if user else 1):
        raise ConfigError(f"optim.epochs must be >= 1{' (or 0: chosen from the data)' if user else ''}, "
                          f"got {cfg.optim.epochs}")
    if cfg.model.weights is not None and not os.path.isfile(cfg.model.weights):
        raise ConfigError(f"model.weights: {cfg.model.weights} is not a file")
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1, 3 or none (measured), got {cfg.data.channels}")
    if cfg.data.batch_size < (0 if user else 1):
        raise ConfigError(f"data.batch_size must be >= 1{' (or 0: chosen from the data)' if user else ''}, "
                          f"got {cfg.data.batch_size}")
    if not 0.0 <= cfg.data.noise_rate <= 1.0:
        raise ConfigError(f"data.noise_rate must be in [0, 1], got {cfg.data.noise_rate}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if (cfg.data.noise == "transition") != bool(cfg.data.noise_transition):
        raise ConfigError("data.noise=transition and data.noise_transition (a file with the (K, K) matrix "
                          "P(noisy | clean)) go together")
    if cfg.data.label_set is not None and cfg.data.dataset not in ("cifar10n", "cifar100n"):
        raise ConfigError("data.label_set applies to cifar10n / cifar100n only")
    table = [f"data.{k}" for k in TABLE_OPTIONS if getattr(cfg.data, k) is not None]
    if table and not user:
        raise ConfigError(f"{', '.join(table)}: options of a table of user data (data.dataset=user), not of "
                          f"{cfg.data.dataset}")
    c = cfg.curriculum
    for name in ("init_class", "init_instance"):
        if not getattr(c, name) > 0:
            raise ConfigError(f"curriculum.{name} is a temperature and must be > 0, got {getattr(c, name)}")
    check_choice("curriculum.loss", c.loss, ("ce", "gce"))
    if not 0 < c.loss_q <= 1:
        raise ConfigError(f"curriculum.loss_q must be in (0, 1], got {c.loss_q}")
    if c.clamp is not None and (len(c.clamp) != 2 or not 0 < c.clamp[0] <= c.clamp[1]):
        raise ConfigError(f"curriculum.clamp must be [low, high] temperatures with 0 < low <= high, or none; "
                          f"got {c.clamp}")
    if cfg.method != "ce" and (c.class_curriculum or c.instance_curriculum):
        raise ConfigError(f"method {cfg.method!r} does not combine with data parameters; turn the curriculum off")
    if cfg.calibrate and cfg.data.val_fraction <= 0:
        raise ConfigError("calibrate=true needs a held-out split: set data.val_fraction > 0")
    check_choice("distributed.mode", cfg.distributed.mode, DISTRIBUTED_MODES)
    if cfg.distributed.mode == "sharded" and (cfg.method != "ce" or not c.instance_curriculum):
        raise ConfigError("distributed.mode=sharded shards the instance data parameters, so it needs method=ce with "
                          "curriculum.instance_curriculum=true; use distributed.mode=replicated for this run")


def build_model(cfg: TrainConfig, num_classes: int, *, in_channels: int, image_size: int,
                in_features: int | None = None, log: Callable[[str], None] | None = None) -> nn.Module:
    """The network of ``cfg.model`` for the data's shape: randomly initialised, or from the local
    checkpoint ``cfg.model.weights`` where its tensors fit (``log`` gets what was loaded)."""
    model = _build_model(cfg.model.arch, num_classes, in_channels=in_channels, image_size=image_size,
                         dropout=cfg.model.dropout, in_features=in_features)
    if cfg.model.weights is not None:
        report = load_local_weights(model, cfg.model.weights)
        if log is not None:
            log(f"model.weights {cfg.model.weights}: {report.summary()}")
    return model


def build_optimizer(cfg: TrainConfig, model: nn.Module, objective: Objective) -> tuple[torch.optim.Optimizer, Any]:
    """SGD over the model (and the objective's model-like parameters) and its schedule."""
    o = cfg.optim
    params: list[Any] = [{"params": list(model.parameters())}, *objective.model_param_groups()]
    opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    return opt, SCHEDULES[o.schedule](o, opt)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network a user-data run exported (``RUN_DIR/model.pt``), in eval mode, and its metadata.

    Returns
    -------
    model : nn.Module
        Apply it to inputs normalised with ``meta["mean"]``, ``meta["std"]`` (pixels in [0, 1],
        resized to ``meta["image_size"]``); its logits index ``meta["classes"]``.
    meta : dict
        ``arch``, ``classes``, ``in_channels``, ``image_size``, ``in_features``, ``mean``, ``std``.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = {k: v for k, v in state.items() if k != "state_dict"}
    model = _build_model(meta["arch"], len(meta["classes"]), in_channels=meta["in_channels"] or 3,
                         image_size=meta["image_size"] or 32, in_features=meta["in_features"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), meta


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s output. CUDA states are restored for the devices present:
    a checkpoint written with 8 visible GPUs resumes on a host (or a process) that sees fewer,
    and the devices it no longer has keep nothing to restore."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for i, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, i)
