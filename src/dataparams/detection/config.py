"""The configuration of a detection run (sec. 3.3).

A :class:`DetectionConfig` is everything that determines a run's result; it is written to the
run directory's ``config.json`` and into every checkpoint, and a run resumes only under the same
config (the fields in :data:`dataparams.config.EXECUTION_FIELDS` -- ``data.workers``,
``data.eval_batch_size``, ``notes`` -- may differ). The sections mirror the classification
config (:mod:`dataparams.config`) so that the command line can treat both alike: its
``section.field=value`` overrides are :func:`dataparams.config.apply_overrides`, which works on
any dataclass config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dataparams.config import ConfigError, config_from_dict
from dataparams.detection.kitti import DEFAULT_CLASSES
from dataparams.detection.kitti_eval import MIN_OVERLAP
from dataparams.detection.models import DETECTOR_ARCHS, FOCAL_ARCHS
from dataparams.detection.transforms import AUGMENTATIONS

__all__ = [
    "DETECTION_FORMATS",
    "DETECTION_SCHEDULES",
    "BoxCurriculumConfig",
    "DetectionConfig",
    "DetectionDataConfig",
    "DetectionModelConfig",
    "DetectionOptimConfig",
    "detection_config_from_dict",
    "detection_config_to_dict",
    "missing_field_defaults",
    "validate_detection_config",
]

#: Data formats of :class:`DetectionDataConfig`.
DETECTION_FORMATS: tuple[str, ...] = ("kitti", "coco")
#: Learning-rate schedules of :class:`DetectionOptimConfig`.
DETECTION_SCHEDULES: tuple[str, ...] = ("cosine", "multistep", "constant")


@dataclass
class DetectionDataConfig:
    """A KITTI-layout or COCO-format data set.

    ``format = "kitti"`` (:class:`~dataparams.detection.kitti.KittiDetection`): ``root`` holds
    ``training/image_2``, ``training/label_2`` and ``ImageSets/{split}.txt``.
    ``format = "coco"`` (:class:`~dataparams.detection.coco.CocoDetection`): each split is the
    instances file ``root/ann_file`` and the image folder ``root/image_dir``, ``{split}``
    replaced by ``train_split`` / ``val_split`` (COCO 2017: splits ``train2017`` / ``val2017``);
    ``invalid_boxes`` is ``error`` or ``clip`` for boxes of zero area or outside their image;
    the evaluation is COCO mAP by pycocotools. ``ann_file``, ``image_dir`` and ``invalid_boxes``
    apply to COCO only.
    ``classes`` are the detected classes (labels 1..K); for COCO, empty means every category.
    ``augment`` is the training augmentation (:mod:`~dataparams.detection.transforms`):
    ``flip`` (the default) a horizontal flip only, which keeps every box, so every annotation of
    an image is in its batch; ``ssd`` SSD's augmentation (Liu et al. 2016: photometric
    distortion, zoom-out onto a mean-coloured canvas, IoU crop, flip), the paper's setting,
    since it trained a standard SSD: a box that the crop leaves out is missing from that step
    (with its ``box_index``), so its data parameter is not updated then. ``kitti/*`` use
    ``ssd``; the synthetic presets keep ``flip``, with which their published numbers were
    measured. ``hflip`` is the flip probability under either.
    ``batch_size`` images per step. ``workers`` is the number of DataLoader worker processes;
    none (the default) means ``min(4, usable CPUs)`` on a CUDA device and 0 (load in the training
    process) elsewhere (:func:`~dataparams.detection.train.loader_kwargs`).
    """

    root: str = ""
    format: str = "kitti"
    ann_file: str = "annotations/instances_{split}.json"
    image_dir: str = "{split}"
    invalid_boxes: str = "error"
    train_split: str = "train"
    val_split: str = "val"
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    augment: str = "flip"
    hflip: float = 0.5
    batch_size: int = 32
    eval_batch_size: int = 64
    workers: int | None = None


@dataclass
class DetectionModelConfig:
    """The detector (:func:`~dataparams.detection.models.build_detector`).

    ``arch`` is ``ssd300_vgg16``, ``tiny_ssd`` or ``tiny_retinanet`` (torchvision's RetinaNet head
    and focal loss on the tiny backbone, :mod:`~dataparams.detection.focal_box_parameters`);
    ``image_size`` is ``[H, W]`` of the network input (every image is resized to it); ``width``
    sizes the tiny backbones. ``ignore_overlap``: in
    training, an anchor matched to no box and lying more than this fraction (of its own area)
    inside an ignore region (DontCare, the devkit's neighbour types, COCO crowd boxes) is no
    negative (:mod:`~dataparams.detection.box_parameters`); none treats such anchors as
    background, as torchvision's SSD does. ``weights`` (``ssd300_vgg16`` only; the tiny
    detectors always start from random weights) is what the detector starts from: none for random
    weights, a torchvision ``VGG16_Weights`` name such as ``VGG16_Weights.IMAGENET1K_FEATURES``
    (read from torch hub's cache, never downloaded), or a state_dict file of the VGG16 features
    or of the whole detector (:func:`~dataparams.detection.models.weights_file`). The rest is
    torchvision's post-processing.
    """

    arch: str = "tiny_ssd"
    image_size: list[int] = field(default_factory=lambda: [128, 256])
    width: int = 64
    weights: str | None = None
    ignore_overlap: float | None = 0.5
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    detections_per_img: int = 100


@dataclass
class DetectionOptimConfig:
    """SGD of the detector and its schedule, stepped per iteration.

    ``warmup_epochs`` ramps the learning rate linearly from ``lr / 100``; then ``schedule``:
    ``cosine`` to zero at the end, ``multistep`` (times ``gamma`` at each epoch of
    ``milestones``) or ``constant``. ``clip_grad_norm`` caps the gradient norm of the model (not
    of the data parameters); ``none`` turns it off.
    """

    epochs: int = 24
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 1.0
    clip_grad_norm: float | None = None


@dataclass
class BoxCurriculumConfig:
    """One data parameter per box annotation (sec. 3.3); off is the baseline (sigma = 1).

    ``lr_instance``, ``momentum`` and ``wd_instance`` are the paper's 0.1, 0, 0. ``clamp`` bounds
    sigma (temperatures; ``none`` for no bound). ``negative_sigma_grad`` lets the gradient flow
    through the negatives' mean sigma (see :mod:`dataparams.detection.box_parameters`).
    """

    instance_curriculum: bool = False
    init_instance: float = 1.0
    lr_instance: float = 0.1
    momentum: float = 0.0
    wd_instance: float = 0.0
    clamp: list[float] | None = field(default_factory=lambda: [1.0 / 20.0, 20.0])
    negative_sigma_grad: bool = False


@dataclass
class DetectionConfig:
    """Everything that determines a detection run's result.

    ``eval_every``: evaluate on the validation split (KITTI AP, or COCO mAP) every that many epochs and after
    the last one.
    """

    preset: str = "custom"
    seed: int = 1
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    model: DetectionModelConfig = field(default_factory=DetectionModelConfig)
    optim: DetectionOptimConfig = field(default_factory=DetectionOptimConfig)
    curriculum: BoxCurriculumConfig = field(default_factory=BoxCurriculumConfig)
    eval_every: int = 2
    notes: str = ""


def detection_config_to_dict(cfg: DetectionConfig) -> dict[str, Any]:
    """The JSON-ready dict of ``cfg`` (what ``config.json`` holds)."""
    return dataclasses.asdict(cfg)


def missing_field_defaults() -> dict[str, Any]:
    """What a field missing from an older run's ``config.json`` reads as: what that run did, not
    today's default (:class:`~dataparams.runs.RunDir`'s ``defaults``). Every field added since keeps
    the old behaviour as its class default (``data.augment`` "flip", ``model.weights`` none), except
    ``model.ignore_overlap``: a run from before ignore regions trained without them, so resuming it
    under a config that has them is refused as a changed config instead of changing its loss
    mid-run."""
    cfg = DetectionConfig()
    cfg.model.ignore_overlap = None
    return detection_config_to_dict(cfg)


def detection_config_from_dict(data: dict[str, Any]) -> DetectionConfig:
    """Rebuild a :class:`DetectionConfig` from :func:`detection_config_to_dict` output."""
    return config_from_dict(data, DetectionConfig)


def validate_detection_config(cfg: DetectionConfig) -> None:
    """Names and ranges of ``cfg``, checked before any data is read; raises ``ConfigError``."""
    if cfg.model.arch not in DETECTOR_ARCHS:
        raise ConfigError(f"unknown model.arch {cfg.model.arch!r}; choose one of {', '.join(DETECTOR_ARCHS)}")
    if cfg.optim.schedule not in DETECTION_SCHEDULES:
        raise ConfigError(f"unknown optim.schedule {cfg.optim.schedule!r}; choose one of "
                          f"{', '.join(DETECTION_SCHEDULES)}")
    d = cfg.data
    if d.format not in DETECTION_FORMATS:
        raise ConfigError(f"unknown data.format {d.format!r}; choose one of {', '.join(DETECTION_FORMATS)}")
    coco = d.format == "coco"
    if not d.root:
        raise ConfigError("data.root is required: the folder holding " + (
            f"{d.ann_file} and {d.image_dir} of each split" if coco
            else "training/image_2, training/label_2 and ImageSets/"))
    if (not coco and not d.classes) or len(set(d.classes)) != len(d.classes):
        raise ConfigError(f"data.classes must be distinct and non-empty, got {d.classes}")
    if coco:
        if d.invalid_boxes not in ("error", "clip"):
            raise ConfigError(f"data.invalid_boxes must be error or clip, got {d.invalid_boxes!r}")
        if d.ann_file.format(split=d.train_split) == d.ann_file.format(split=d.val_split):
            raise ConfigError(f"data.ann_file {d.ann_file!r} names the same file for the train and val splits; "
                              "write {split} where the split's name goes")
    else:
        no_threshold = [c for c in d.classes if c.lower() not in {k.lower() for k in MIN_OVERLAP}]
        if no_threshold:
            raise ConfigError(f"data.classes {no_threshold} have no KITTI IoU threshold; evaluated classes are "
                              f"{', '.join(MIN_OVERLAP)}")
    if len(cfg.model.image_size) != 2 or min(cfg.model.image_size) < 32:
        raise ConfigError(f"model.image_size must be [H, W], each >= 32, got {cfg.model.image_size}")
    for name, value, low in (("optim.epochs", cfg.optim.epochs, 1), ("data.batch_size", cfg.data.batch_size, 1),
                             ("data.eval_batch_size", cfg.data.eval_batch_size, 1), ("eval_every", cfg.eval_every, 1),
                             ("data.workers", 0 if cfg.data.workers is None else cfg.data.workers, 0),
                             ("model.width", cfg.model.width, 4)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if cfg.model.arch in FOCAL_ARCHS and cfg.model.width % 8:
        raise ConfigError(f"model.width of {cfg.model.arch} must be a multiple of 8 (its head's GroupNorm has 8 "
                          f"groups), got {cfg.model.width}")
    if cfg.model.ignore_overlap is not None and not 0.0 <= cfg.model.ignore_overlap < 1.0:
        raise ConfigError(f"model.ignore_overlap is a fraction of an anchor's area in [0, 1), or none; got "
                          f"{cfg.model.ignore_overlap}")
    if not 0.0 <= cfg.data.hflip <= 1.0:
        raise ConfigError(f"data.hflip is a probability, got {cfg.data.hflip}")
    if cfg.data.augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown data.augment {cfg.data.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if cfg.model.weights is not None and cfg.model.arch != "ssd300_vgg16":
        raise ConfigError(f"model.weights applies to ssd300_vgg16 only; {cfg.model.arch} trains from random "
                          "weights (set model.weights=none)")
    o = cfg.optim
    if not (o.lr > 0 and 0 <= o.momentum < 1 and o.weight_decay >= 0 and o.warmup_epochs >= 0 and o.gamma > 0):
        raise ConfigError("optim needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, warmup_epochs >= 0, gamma > 0")
    if o.clip_grad_norm is not None and not o.clip_grad_norm > 0:
        raise ConfigError(f"optim.clip_grad_norm must be > 0 or none, got {o.clip_grad_norm}")
    c = cfg.curriculum
    if not (c.init_instance > 0 and math.isfinite(c.init_instance)):
        raise ConfigError(f"curriculum.init_instance is a temperature and must be > 0, got {c.init_instance}")
    if not (c.lr_instance >= 0 and 0 <= c.momentum < 1 and c.wd_instance >= 0):
        raise ConfigError("curriculum needs lr_instance >= 0, 0 <= momentum < 1, wd_instance >= 0")
    if c.clamp is not None and (len(c.clamp) != 2 or not 0 < c.clamp[0] <= c.clamp[1]):
        raise ConfigError(f"curriculum.clamp must be [low, high] temperatures with 0 < low <= high, or none; "
                          f"got {c.clamp}")
