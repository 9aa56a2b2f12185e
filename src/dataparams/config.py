"""Dataclass configs for a training run, and dotted overrides ``section.field=value``.

The command line builds these; library code takes them (or plain values) and never an argparse
namespace. The resolved config is written into every run directory and every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "CurriculumConfig",
    "DataConfig",
    "DistributedConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "diff_configs",
    "shorthand_overrides",
]


class ConfigError(ValueError):
    """A bad preset name, field name or value; the message lists what is valid."""


@dataclass
class DataConfig:
    """Which data, which corruption, which split.

    ``noise`` is one of :data:`dataparams.noise.NOISE_MODELS`; ``noise_rate`` its p;
    ``noise_transition`` the file holding the (K, K) matrix P(noisy | clean) that
    ``noise=transition`` needs (``.npy``, or text with one row per line). ``noise=instance``
    (instance-dependent, :func:`dataparams.noise.instance_dependent_noise`) flips a sample to the
    class a reference model confuses it with: ``noise_reference`` is a ``.npy`` of that model's
    (N, K) probabilities over the training split (after ``subset``), or None to fit the package's
    reference (:func:`dataparams.data.prepare.reference_probabilities`). ``subset``
    keeps the first n training samples (the CPU presets' memorisation regime). ``val_fraction``
    carves a held-out split from the (noisy) training set with its own ``val_seed``; the test set
    is never corrupted. ``oracle`` trains on the clean samples only (the paper's "baseline on
    clean data"). ``keep_file`` (a ``.npy`` of source indices, i.e. positions in the dataset's
    training split) restricts training to those samples; the rest of the training pool is held
    out and predicted at the end (cross-validation, retraining on a filtered set).
    ``labels_file`` (a CSV with ``source_index`` and ``label`` columns, as written by
    ``dataparams find-issues --cleaned-labels``) trains on the listed samples with those labels.
    ``threshold_file`` (``.npy`` of source indices) relabels those samples to an extra class K,
    the "threshold samples" of AUM (Pleiss et al. 2020). ``augment`` turns on random crops
    (``crop_padding`` pixels) and, when ``flip``, horizontal flips; ImageNet-style datasets use
    the ImageNet transforms instead.

    ``dataset="user"`` is the user's own data at ``data_dir`` (a ``path,label`` list, a folder of
    class folders, or an ``.npz`` of features, see :mod:`dataparams.data.user`; or a table, a
    ``.parquet`` file or a folder written by ``datasets`` ``save_to_disk``, see
    :mod:`dataparams.data.tables`), measured when it is loaded: ``image_size`` (None: the median
    longer side, at most ``max_image_size``) and ``channels`` (None: 1 when every image is
    grayscale, else 3); images are decoded once when they fit ``memory_budget_mb`` (None: a share
    of the free memory), streamed otherwise. A table is read by column: ``label_column`` holds
    the labels (None: ``label``), ``image_column`` the images or image paths, or
    ``feature_columns`` the features (None for both: chosen from the table's columns, and the
    choice recorded), ``id_column`` each row's id for the reports (None: ``row i``), and
    ``split`` picks the split of a ``DatasetDict`` folder (None: ``train``). These five apply to
    tables only; other user data refuses them.
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    noise: str = "none"
    noise_rate: float = 0.0
    noise_transition: str | None = None
    noise_reference: str | None = None
    noise_seed: int | None = None
    label_set: str | None = None
    val_fraction: float = 0.0
    val_seed: int = 0
    oracle: bool = False
    keep_file: str | None = None
    labels_file: str | None = None
    threshold_file: str | None = None
    image_size: int | None = None
    max_image_size: int = 64
    channels: int | None = None
    memory_budget_mb: int | None = None
    label_column: str | None = None
    image_column: str | None = None
    feature_columns: list[str] | None = None
    id_column: str | None = None
    split: str | None = None
    augment: bool = True
    crop_padding: int = 4
    flip: bool = True
    batch_size: int = 128
    eval_batch_size: int = 256
    workers: int = 0


@dataclass
class ModelConfig:
    """``arch`` is ``small_cnn``, ``wrn28_10``, ``resnet18``, ``vgg16``, ``mlp`` (features), any
    torchvision classification architecture by name, or ``auto`` (chosen from the data's kind and
    size; user data only). ``weights`` is a local checkpoint file to start from (tensors whose
    shapes differ, e.g. a 1000-class head, are skipped); nothing is ever downloaded."""

    arch: str = "small_cnn"
    dropout: float = 0.0
    weights: str | None = None


@dataclass
class OptimConfig:
    """Model optimizer (SGD) and learning-rate schedule.

    ``schedule``: ``multistep`` (multiply by ``gamma`` at each epoch in ``milestones``),
    ``cosine`` or ``constant``.
    """

    epochs: int = 40
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class CurriculumConfig:
    """Data parameters (sec. 2 and 3.1). Both levels off is the plain cross-entropy baseline.

    An extension beyond the paper (the default is the paper's): ``loss`` is the per-sample loss
    applied to ``logits / sigma``, ``ce`` (the paper) or ``gce`` (generalized cross-entropy with
    ``loss_q``; the ``dp-gce`` method).
    """

    class_curriculum: bool = False
    instance_curriculum: bool = False
    init_class: float = 1.0
    init_instance: float = 1.0
    lr_class: float = 0.1
    lr_instance: float = 0.1
    wd_class: float = 0.0
    wd_instance: float = 0.0
    momentum: float = 0.9
    clamp: list[float] | None = field(default_factory=lambda: [1.0 / 20.0, 20.0])
    loss: str = "ce"
    loss_q: float = 0.7


@dataclass
class DistributedConfig:
    """How the data parameters are laid out when ``torchrun`` starts several processes.

    ``mode``: ``replicated`` (every process holds all data parameters and per-sample buffers;
    the batch's gradients are exchanged each step) or ``sharded`` (each process holds the
    instance parameters, their momentum and the per-sample buffers of its share of the samples,
    for 1e8-1e9 samples; needs the instance curriculum). Both give the single-process result;
    a run resumes in the mode that wrote its checkpoint. Without torchrun ``replicated`` is the
    plain single-process run. ``timeout_min``: how long a collective waits for the other ranks
    before the job fails (minutes; rank 0's end-of-run prediction and checkpoint writes at large
    N are what the others wait for).
    """

    mode: str = "replicated"
    timeout_min: float = 30.0


@dataclass
class TrainConfig:
    """Everything that determines a run's result (plus how it is logged).

    ``method`` selects the training objective: ``ce`` (cross-entropy, with data parameters when
    the curriculum is on) or a peer from :mod:`dataparams.methods` (``gce``, ``sce``,
    ``superloss``, ``coteaching``); ``method_options`` holds that method's hyper-parameters.
    ``report_epochs`` are epochs (1-based) whose test accuracy is reported besides the last, e.g.
    the paper's epoch 84 for noisy CIFAR. ``choices`` records, for user data, every value that
    was measured from the data or chosen for it, with its reason (``{name: {"value", "why"}}``).
    """

    preset: str = "custom"
    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    method: str = "ce"
    method_options: dict[str, Any] = field(default_factory=dict)
    report_epochs: list[int] = field(default_factory=list)
    calibrate: bool = False
    notes: str = ""
    choices: dict[str, Any] = field(default_factory=dict)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# Fields that change how a run is executed or shown but not its result; a checkpoint may be
# resumed with other values of these (``distributed.mode`` only in the mode that wrote it,
# which the checkpoint itself enforces).
EXECUTION_FIELDS = ("data.workers", "data.data_dir", "notes", "data.eval_batch_size", "data.memory_budget_mb",
                    "choices", "distributed.mode", "distributed.timeout_min")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if math.isnan(f):
            raise ConfigError(f"{where}: NaN is not a valid value")
        return f
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise ConfigError(f"{where}: cannot parse list {value!r}") from None
            else:
                value = [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value]
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: expected a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown field {prefix}{unknown[0]}; valid fields here: {', '.join(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], cls: type = TrainConfig) -> Any:
    """Rebuild a config (a :class:`TrainConfig`, or another dataclass config ``cls``) from
    :func:`config_to_dict` output (e.g. config.json)."""
    return _from_dict(cls, data)


def shorthand_overrides(*, data_dir: str | None = None, epochs: int | None = None, seed: int | None = None,
                        workers: int | None = None) -> list[str]:
    """The ``--set`` overrides that the command line's shorthand options stand for."""
    pairs = (("data.data_dir", data_dir), ("optim.epochs", epochs), ("seed", seed), ("data.workers", workers))
    return [f"{field}={value}" for field, value in pairs if value is not None and value != ""]


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` (a :class:`TrainConfig` or another dataclass config, e.g. the
    detection config) with ``section.field=value`` overrides applied.

    Values are parsed by the field's type (``true``/``false``, numbers, comma lists or JSON,
    ``none``). Unknown fields raise :class:`ConfigError` naming the valid ones.
    """
    root = type(cfg)
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        cls: Any = root
        node = data
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                prefix = ".".join(parts[:depth])
                shown = [f"{prefix}.{n}" if prefix else n for n in names]
                raise ConfigError(f"unknown field {key!r}; valid: {', '.join(shown)}")
            tp = _hints(cls)[part]
            if depth == len(parts) - 1:
                node[part] = _coerce(value, tp, key)
                if dataclasses.is_dataclass(tp):
                    node[part] = config_to_dict(node[part])
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{'.'.join(parts[: depth + 1])} is not a section")
                cls, node = tp, node[part]
    return config_from_dict(data, root)


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of fields that differ between two config dicts.

    A section missing on one side (a config written before the section existed) is compared
    field by field as if empty.
    """
    out = []
    for k in sorted(set(a) | set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        sections = (isinstance(va, dict) or va is None) and (isinstance(vb, dict) or vb is None)
        if sections and (va is not None or vb is not None) and k not in ("method_options", "choices"):
            out += diff_configs(va or {}, vb or {}, name + ".")
        elif va != vb:
            out.append(name)
    return out
