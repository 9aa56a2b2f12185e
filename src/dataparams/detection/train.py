"""Training an SSD (or a RetinaNet) with one data parameter per box annotation (sec. 3.3), into a run directory.

:func:`train_detection` reads top to bottom like torchvision's reference ``main()``: config ->
data -> detector, data parameters, optimizers -> epochs -> run directory. The epochs are the
classifier's loop, :func:`dataparams.engine.fit`, over a :class:`DetectionStep` (the detector's
forward pass, matching and per-box loss; the shared step does the backward pass, gradient
clipping, both optimizers' steps through the scaler and the per-iteration schedule), with a
callback that writes each epoch's metrics, snapshot and checkpoint. The baseline is the same
code with the instance level off, where :class:`~dataparams.parameters.DataParameters` returns
sigma = 1 and the loss is torchvision's SSD loss.

Run directory (:class:`~dataparams.runs.RunDir`)::

    config.json             the resolved DetectionConfig
    labels.npz              per box (in data-parameter order): given and true class, flipped
                            mask, difficulty, occlusion, truncation, height, box, image, line
    metrics.jsonl           per epoch: losses, lr, sigma statistics by difficulty / occlusion /
                            class, Spearman correlations, flipped-box AUROC, and at evaluation
                            epochs KITTI AP|R40 and 11-point AP per class and difficulty
                            (``data.format = "coco"``: ``coco``, pycocotools' mAP, instead)
    snapshots/epoch_NNNN.npz          box_sigma (N,), box_loss (N,) after each epoch
    snapshots/detections_epoch_NNNN/  KITTI label files of the latest evaluation (score last);
                                      for COCO data one results.json in COCO's result format
    checkpoint.pt           model, SGD, schedule, data parameters, SparseSGD, box losses, RNG
    summary.json            the final numbers; ``headline`` is the paper's metric (Car AP at
                            IoU 0.7, easy / moderate / hard; COCO mAP for COCO data,
                            :mod:`~dataparams.detection.summary`)

Reproducibility: the order of the images and each image's augmentation (a flip, or SSD's
augmentation, ``data.augment``) are functions of (seed, epoch, image) only, and a checkpoint after
every epoch holds all state, so that a resumed run ends bit for bit where an uninterrupted one
does on the CPU (``tests/test_detection_train.py``).

``snapshots/epoch_NNNN.npz`` ``box_loss`` is the loss of each box in that epoch: NaN for a box
that no anchor matched, or that SSD's crop left out of every step of the epoch.

Loading: the training and validation DataLoaders are built once per run. On a CUDA device they
use worker processes by default (``data.workers`` none: :func:`loader_kwargs`), kept alive across
epochs, with pinned memory; elsewhere the images are read in the training process. The epoch
travels with every index (:class:`EpochBatchSampler`), so the workers kept from one epoch draw
the next epoch's flips without being told.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dataparams.build import get_rng_state, set_rng_state
from dataparams.data.base import DatasetFormatError
from dataparams.detection.box_parameters import SSDBoxParameterLoss
from dataparams.detection.coco import CocoDetection, coco_detections, coco_evaluate, write_coco_results
from dataparams.detection.config import (
    DetectionConfig,
    detection_config_to_dict,
    missing_field_defaults,
    validate_detection_config,
)
from dataparams.detection.curriculum import BoxTable, curriculum_statistics
from dataparams.detection.focal_box_parameters import FocalBoxParameterLoss
from dataparams.detection.kitti import (
    DIFFICULTIES,
    KittiDetection,
    KittiObject,
    read_label_file,
    write_label_file,
)
from dataparams.detection.kitti_eval import evaluate
from dataparams.detection.models import FOCAL_ARCHS, detector_from_config, ssd_training_outputs, weights_file
from dataparams.detection.summary import format_headline, headline
from dataparams.detection.transforms import (
    AUGMENTATIONS,
    RandomHorizontalFlip,
    collate_detection,
    ssd_augmentation,
)
from dataparams.distributed.context import DistributedContext
from dataparams.engine import Callback, Execution, TrainStep, fit, resolve_device
from dataparams.optim import SparseSGD
from dataparams.parameters import DataParameters
from dataparams.runs import RunDir, RunDirError

__all__ = [
    "AugmentedDetection",
    "DetectionStep",
    "EpochBatchSampler",
    "epoch_batches",
    "loader_kwargs",
    "predict_detections",
    "train_detection",
    "write_detections",
]

_DETECTIONS_PREFIX = "detections_epoch_"


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so that nearby inputs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class AugmentedDetection(Dataset):
    """The training images with their augmentation drawn per (seed, epoch, image).

    Parameters
    ----------
    base : KittiDetection or CocoDetection
        Without transforms of its own.
    hflip : float
        Flip probability.
    seed : int
    augment : {"flip", "ssd"}
        ``flip``: a horizontal flip only, which keeps every box. ``ssd``: SSD's augmentation
        (:func:`~dataparams.detection.transforms.ssd_augmentation`: photometric distortion,
        zoom-out, IoU crop, then the flip), whose crop drops the boxes centred outside it from
        every per-box entry: their data parameters get no gradient in that step.
    input_aspect : float, optional
        W / H of the network input, for the SSD crop's aspect check.

    Notes
    -----
    Each item seeds its own generators, one per transform, from (seed, epoch, image, transform),
    so the augmentation does not depend on the order of the images, on the number of loader
    workers, or on what ran before: the key to resuming a run exactly. The flip has the same
    stream under both settings, so an image is flipped in the same epochs either way.
    ``box_index`` passes through every transform. An item is asked for by image index
    (augmented as in the epoch of :meth:`set_epoch`) or by ``(epoch, index)``, as
    :class:`EpochBatchSampler` yields them: worker processes that persist across epochs hold
    their own copy of this object, which a later ``set_epoch`` in the main process would not
    reach.
    """

    def __init__(self, base: Dataset, *, hflip: float, seed: int, augment: str = "flip",
                 input_aspect: float | None = None) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
        self.base, self.hflip, self.seed = base, float(hflip), int(seed)
        self.augment, self.input_aspect = augment, input_aspect
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        epoch, index = (int(index[0]), int(index[1])) if isinstance(index, tuple) else (self.epoch, int(index))
        image, target = self.base[index]

        def generator(stream: int) -> torch.Generator:
            return torch.Generator().manual_seed(_mix(self.seed, epoch, index, stream))

        if self.augment == "ssd":
            # Stream 1 is the flip's under both settings; 2-4 distortion, zoom-out, crop.
            transform = ssd_augmentation(hflip=self.hflip, input_aspect=self.input_aspect,
                                         generators=[generator(2), generator(3), generator(4), generator(1)])
            return transform(image, target)
        if self.hflip > 0:
            image, target = RandomHorizontalFlip(self.hflip, generator=generator(1))(image, target)
        return image, target


def epoch_batches(num_images: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The image indices of each batch of an epoch: a permutation seeded by (seed, epoch).

    The last batch may be smaller; no image is dropped, so every box is seen once per epoch.
    """
    g = torch.Generator().manual_seed(_mix(seed, epoch, 0))
    order = torch.randperm(num_images, generator=g).tolist()
    return [order[i : i + batch_size] for i in range(0, num_images, batch_size)]


class EpochBatchSampler:
    """The batches of :func:`epoch_batches` for the epoch of :meth:`set_epoch`, each index
    paired with that epoch (``[(epoch, index), ...]``, what :class:`AugmentedDetection` takes).

    A DataLoader's batch sampler is iterated in the main process at the start of every pass, so
    one loader (with persistent workers) serves every epoch.
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int) -> None:
        if num_images < 0 or batch_size < 1:
            raise ValueError(f"need num_images >= 0 and batch_size >= 1, got {num_images}, {batch_size}")
        self.num_images, self.batch_size, self.seed = int(num_images), int(batch_size), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in epoch_batches(self.num_images, self.batch_size, seed=self.seed, epoch=epoch):
            yield [(epoch, i) for i in batch]


def _usable_cpus() -> int:
    # The CPUs this process may run on (a container's or taskset's limit), not the machine's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def loader_kwargs(device: torch.device | str, workers: int | None = None) -> dict[str, Any]:
    """The DataLoader settings of the detection trainer on ``device``.

    Parameters
    ----------
    device : torch.device or str
    workers : int, optional
        ``data.workers``. None (the default): ``min(4, usable CPUs)`` on a CUDA device, where
        decoding PNGs in the training process would leave the GPU waiting, and 0 elsewhere,
        where the workers would compete with the training for the same cores.

    Returns
    -------
    dict
        ``num_workers``; ``pin_memory`` on CUDA (page-locked batches make the non-blocking
        copies to the GPU asynchronous); ``persistent_workers`` whenever there are workers, so
        that they start once per run rather than once per epoch.
    """
    device = torch.device(device)
    if workers is None:
        workers = min(4, _usable_cpus()) if device.type == "cuda" else 0
    if workers < 0:
        raise ValueError(f"workers must be >= 0 or None, got {workers}")
    return {"num_workers": int(workers), "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}


def _close_loader(loader: DataLoader | None) -> None:
    """Stop a loader's persistent workers now rather than at garbage collection (as Lightning's
    ``_shutdown_workers_and_reset_iterator`` does), so that runs in one process (``--seeds``) do
    not accumulate idle workers."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if loader is not None:
        loader._iterator = None


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in target.items()}


@torch.no_grad()
def predict_detections(
    model: nn.Module,
    dataset: KittiDetection,
    *,
    batch_size: int,
    device: torch.device,
    execution: Execution | None = None,
    workers: int | None = 0,
    loader: DataLoader | None = None,
) -> dict[str, list[KittiObject]]:
    """The model's detections on every image of ``dataset``, as KITTI objects with scores.

    Runs in float32 whatever ``execution`` says: torchvision's SSD builds and decodes its default
    boxes in the features' dtype, which in bfloat16 would move boxes by pixels.

    ``loader``, when given, is the DataLoader over ``dataset`` to read from (the trainer's, built
    once per run); otherwise one is built with ``batch_size`` and :func:`loader_kwargs` of
    ``workers``, without persistent workers.

    Returns
    -------
    dict image id -> list of KittiObject
        Boxes in the original image's pixels (torchvision's post-processing: SSD's softmax or
        RetinaNet's per-class sigmoids, score threshold, top-k, ``batched_nms``), class names from
        ``dataset.classes``; a detection of the background column (RetinaNet's) is dropped.
    """
    execution = execution or Execution(device)
    model.eval()
    if loader is None:
        kwargs = {**loader_kwargs(execution.device, workers), "persistent_workers": False}
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection, **kwargs)
    out: dict[str, list[KittiObject]] = {}
    for images, targets in loader:
        results = model([execution.input(x) for x in images])
        for target, res in zip(targets, results):
            boxes = res["boxes"].float().cpu().tolist()
            scores = res["scores"].float().cpu().tolist()
            labels = res["labels"].cpu().tolist()
            # Column 0 is background: SSD's post-processing never returns it, RetinaNet's (one
            # sigmoid per column) can, with the low score of a column never trained positive.
            out[target["image_id"]] = [
                KittiObject.from_box(dataset.classes[lab - 1], box, score=score)
                for box, score, lab in zip(boxes, scores, labels) if lab > 0
            ]
    return out


def write_detections(folder: str | os.PathLike[str], detections: dict[str, list[KittiObject]]) -> Path:
    """Write one KITTI label file per image (score as the 16th column; empty file for none).

    The folder is written under a temporary name and renamed, so it is complete or absent.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for image_id, objects in detections.items():
        write_label_file(tmp / f"{image_id}.txt", objects)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _lr_factor(step: int, *, steps_per_epoch: int, cfg: DetectionConfig) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based)."""
    o = cfg.optim
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if o.schedule == "cosine":
        total = max(1, o.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total) / total))
    if o.schedule == "multistep":
        epoch = step // steps_per_epoch
        return o.gamma ** sum(1 for m in o.milestones if epoch >= m)
    return 1.0


def _flat_ap(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """Mean over classes of AP|R40 and AP11 per difficulty, e.g. ``map40_moderate``."""
    out = {}
    for diff in DIFFICULTIES:
        for kind in ("ap40", "ap11"):
            values = [results[c][diff][kind] for c in results]
            out[f"m{kind}_{diff}"] = float(np.mean(values)) if values else math.nan
    return out


def _prune_detection_dirs(snapshot_dir: Path, keep: str | None = None, after: int | None = None) -> None:
    """Remove detection folders except ``keep`` (or, with ``after``, those of later epochs)."""
    if not snapshot_dir.exists():
        return
    for d in snapshot_dir.glob(f"{_DETECTIONS_PREFIX}*"):
        try:
            epoch = int(d.name[len(_DETECTIONS_PREFIX):])
        except ValueError:
            continue
        if (after is not None and epoch > after) or (after is None and d.name != keep):
            shutil.rmtree(d, ignore_errors=True)


def _fmt_ap(results: dict[str, dict[str, dict[str, float]]]) -> str:
    return "  ".join(
        f"{c} {results[c]['easy']['ap40']:.1f}/{results[c]['moderate']['ap40']:.1f}/{results[c]['hard']['ap40']:.1f}"
        for c in results
    )


def train_detection(
    cfg: DetectionConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
    amp: str = "off",
    threads: int | None = None,
) -> dict[str, Any]:
    """Train a detector with (or, curriculum off, without) per-box data parameters.

    Parameters
    ----------
    cfg : DetectionConfig
    out : path-like
        The run directory.
    resume : bool
        Continue the run in ``out`` from its last checkpoint.
    overwrite : bool
        Start over in a directory that holds a run.
    device : str
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    quiet : bool
        No progress bar and no per-epoch line.
    amp : {"off", "bf16", "fp16"}
        Mixed precision of the detector's backbone and head in training
        (:class:`~dataparams.engine.Execution`); default boxes, the loss, sigma and the
        evaluation stay in float32.
    threads : int, optional
        ``torch.set_num_threads`` for this run (CPU).

    Returns
    -------
    dict
        The content of ``summary.json``: ``headline`` (Car AP at IoU 0.7, easy / moderate / hard,
        AP|R40 and 11-point; for COCO data COCO mAP; :func:`~dataparams.detection.summary.headline`),
        final KITTI AP per class and difficulty, the mean over classes (for COCO data: ``coco``,
        pycocotools' mAP), and the final curriculum statistics. Unless ``quiet``, the headline is
        printed last.

    Raises
    ------
    ConfigError
        A bad field of ``cfg``.
    RunDirError
        ``out`` holds another run, or this one without ``resume`` / ``overwrite``.
    FileNotFoundError
        Missing data.
    """
    validate_detection_config(cfg)
    if threads is not None:
        torch.set_num_threads(int(threads))
    config = detection_config_to_dict(cfg)
    run = RunDir(out, defaults=missing_field_defaults())
    # The run directory's lock (taken by prepare) is held until the run ends, however it ends,
    # and so are the loaders' worker processes.
    loaders: list[DataLoader] = []
    try:
        return _train(cfg, config, run, resume=resume, overwrite=overwrite, device=device, quiet=quiet, amp=amp,
                      loaders=loaders)
    finally:
        for loader in loaders:
            _close_loader(loader)
        run.unlock()


def _train(cfg: DetectionConfig, config: dict[str, Any], run: RunDir, *, resume: bool, overwrite: bool, device: str,
           quiet: bool, amp: str, loaders: list[DataLoader]) -> dict[str, Any]:
    """The body of :func:`train_detection`, in ``run`` (whose lock the caller releases); the
    DataLoaders it builds are appended to ``loaders`` for the caller to close."""
    dev = resolve_device(device)
    execution = Execution.create(dev, amp)
    if cfg.model.weights is not None and not resume:
        weights_file(cfg.model.weights)  # a missing weights file stops the run before any data is read

    # -- data --------------------------------------------------------------------------------
    root = Path(cfg.data.root)
    coco = cfg.data.format == "coco"
    if coco:  # COCO instances files; crowd annotations get no data parameter (detection.coco)
        d = cfg.data
        kwargs = dict(ann_file=d.ann_file, image_dir=d.image_dir, invalid_boxes=d.invalid_boxes)
        train_set = CocoDetection.from_split(root, d.train_split, classes=d.classes or None, **kwargs)
        val_set = CocoDetection.from_split(root, d.val_split, classes=train_set.classes, **kwargs)
    else:
        train_set = KittiDetection(root, cfg.data.train_split, classes=cfg.data.classes)
        val_set = KittiDetection(root, cfg.data.val_split, classes=cfg.data.classes)
    if len(train_set) == 0 or len(val_set) == 0:
        raise DatasetFormatError(f"{root}: the {cfg.data.train_split!r} and {cfg.data.val_split!r} splits must not be empty")
    table = BoxTable.from_dataset(train_set)
    if not coco:
        val_gt = {i: read_label_file(val_set.label_dir / f"{i}.txt") for i in val_set.image_ids}
    has_checkpoint = run.prepare(config, resume=resume, overwrite=overwrite)
    if not has_checkpoint:
        run.save_arrays("labels.npz", **table.as_arrays())
    augmented = AugmentedDetection(train_set, hflip=cfg.data.hflip, seed=cfg.seed, augment=cfg.data.augment,
                                   input_aspect=cfg.model.image_size[1] / cfg.model.image_size[0])

    # -- model, data parameters, optimizers --------------------------------------------------
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = detector_from_config(cfg.model, train_set.num_classes, load_weights=not has_checkpoint)
    model = execution.model(model)
    c = cfg.curriculum
    data_parameters = DataParameters(
        train_set.num_classes, train_set.num_boxes, instance_curriculum=c.instance_curriculum,
        init_instance=c.init_instance, clamp=tuple(c.clamp) if c.clamp is not None else None,
    ).to(dev)
    criterion: SSDBoxParameterLoss | FocalBoxParameterLoss
    if cfg.model.arch in FOCAL_ARCHS:
        criterion = FocalBoxParameterLoss(data_parameters, box_coder=model.box_coder,
                                          box_loss_type=model.head.regression_head._loss_type,
                                          negative_sigma_grad=c.negative_sigma_grad, wd_instance=c.wd_instance,
                                          ignore_overlap=cfg.model.ignore_overlap)
    else:
        criterion = SSDBoxParameterLoss(data_parameters, box_coder=model.box_coder,
                                        neg_to_pos_ratio=model.neg_to_pos_ratio,
                                        negative_sigma_grad=c.negative_sigma_grad, wd_instance=c.wd_instance,
                                        ignore_overlap=cfg.model.ignore_overlap)
    o = cfg.optim
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                                momentum=o.momentum, weight_decay=o.weight_decay)
    groups = data_parameters.param_groups(lr_instance=c.lr_instance, momentum=c.momentum)
    # The baseline has no group (sigma = 1 is not learned), hence no second optimizer.
    dp_optimizer = SparseSGD(groups, momentum=c.momentum) if groups else None
    steps_per_epoch = math.ceil(len(train_set) / cfg.data.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps_per_epoch=steps_per_epoch, cfg=cfg)
    )
    # On the device, as are the epoch's loss sums: a step writes them without waiting for it.
    box_loss = torch.full((train_set.num_boxes,), float("nan"), device=dev)

    start_epoch = 0
    if has_checkpoint:
        state = run.load_checkpoint(config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_parameters.load_state_dict(state["data_parameters"])
        if dp_optimizer is not None:
            dp_optimizer.load_state_dict(state["dp_optimizer"])
        if execution.scaler is not None and "scaler" in state:
            execution.scaler.load_state_dict(state["scaler"])
        box_loss.copy_(state["box_loss"])
        set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
    # Epochs after the checkpoint (a kill between writing metrics and the checkpoint) go.
    run.truncate_after(start_epoch)
    _prune_detection_dirs(run.snapshot_dir, after=start_epoch)

    def checkpoint(epoch: int) -> dict[str, Any]:
        state = {
            "epoch": epoch,
            "config": config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data_parameters": data_parameters.state_dict(),
            "dp_optimizer": dp_optimizer.state_dict() if dp_optimizer is not None else None,
            "box_loss": box_loss.to("cpu", copy=True),
            "rng": get_rng_state(),
        }
        if execution.scaler is not None:
            state["scaler"] = execution.scaler.state_dict()
        return state

    bar_factory = None
    if not quiet:
        from dataparams.runs.logger import progress_factory

        bar_factory = progress_factory(o.epochs, f"{cfg.preset} seed {cfg.seed} ")
    # One loader per split for the whole run: the sampler carries the epoch to the workers.
    load = loader_kwargs(dev, cfg.data.workers)
    sampler = EpochBatchSampler(len(train_set), cfg.data.batch_size, seed=cfg.seed)
    loader = DataLoader(augmented, batch_sampler=sampler, collate_fn=collate_detection, **load)
    val_loader = DataLoader(val_set, batch_size=cfg.data.eval_batch_size, shuffle=False,
                            collate_fn=collate_detection, **load)
    loaders += [loader, val_loader]

    def evaluation(epoch: int) -> dict[str, Any]:
        """KITTI AP (or COCO mAP) on the validation split at evaluation epochs, its detections kept."""
        if (epoch + 1) % cfg.eval_every != 0 and epoch + 1 != o.epochs:
            return {}
        t_eval = time.perf_counter()
        record: dict[str, Any] = {}
        detections = predict_detections(model, val_set, batch_size=cfg.data.eval_batch_size, device=dev,
                                        execution=execution, loader=val_loader)
        folder = run.snapshot_dir / f"{_DETECTIONS_PREFIX}{epoch + 1:04d}"
        if coco:  # pycocotools' COCOeval on the val instances file; results.json in the folder
            arrays = coco_detections(detections, val_set)
            folder = write_coco_results(folder, arrays)
            record["coco"] = coco_evaluate(val_set.ann_file, arrays, category_ids=val_set.category_ids)
        else:
            folder = write_detections(folder, detections)
            results = evaluate(val_gt, detections, classes=cfg.data.classes)
            record["kitti"] = results
            record.update(_flat_ap(results))
        _prune_detection_dirs(run.snapshot_dir, keep=folder.name)
        record["eval_time_s"] = time.perf_counter() - t_eval
        return record

    step = DetectionStep(model, criterion, optimizer, dp_optimizer, execution=execution, box_loss=box_loss,
                         table=table, evaluation=evaluation)
    writer = _RunWriter(run, step, checkpoint, epochs=o.epochs, quiet=quiet)
    t_run = time.perf_counter()
    history = fit(step, loader, epochs=o.epochs, start_epoch=start_epoch,
                  step_scheduler=scheduler, clip_grad_norm=o.clip_grad_norm, callbacks=[writer],
                  progress_factory=bar_factory)
    record: dict[str, Any] = history[-1] if history else {}
    last_eval = next((r for r in reversed(history) if "kitti" in r or "coco" in r), None)

    if last_eval is None:
        # A resumed run whose last epoch was already done: take the numbers from the log.
        evals = [r for r in run.read_metrics() if "kitti" in r or "coco" in r]
        if not evals:
            raise RunDirError(f"{run.path} has no evaluation to summarise")
        last_eval = evals[-1]
        record = run.read_metrics()[-1]
    summary = {
        "preset": cfg.preset,
        "seed": cfg.seed,
        "epochs": o.epochs,
        "curriculum": "instance" if c.instance_curriculum else "off",
        "num_train_images": len(train_set),
        "num_val_images": len(val_set),
        "num_boxes": train_set.num_boxes,
        "num_flipped": int(table.is_flipped.sum()),
        "eval_epoch": last_eval["epoch"],
        "headline": headline(last_eval),
        **{k: last_eval[k] for k in ("kitti", "coco") if k in last_eval},
        **{k: v for k, v in last_eval.items() if k.startswith("map")},
        "final": {k: record.get(k) for k in ("box_sigma", "sigma_by_difficulty", "sigma_by_occlusion",
                                             "spearman_occlusion", "spearman_difficulty", "flipped")
                  if k in record},
        "train_time_s": time.perf_counter() - t_run,
    }
    run.write_json("summary.json", summary)
    if not quiet:
        from dataparams.runs.logger import write_line

        write_line(f"{cfg.preset} seed {cfg.seed}, epoch {last_eval['epoch']}: {format_headline(summary['headline'])}")
    return json.loads(json.dumps(summary))


class DetectionStep(TrainStep):
    """A detector's training step for :func:`~dataparams.engine.fit`: the detector's head outputs
    and matching (:func:`~dataparams.detection.models.ssd_training_outputs`), the per-box loss,
    and on the device each box's loss of the epoch and the epoch's loss sums.

    Parameters
    ----------
    model : torchvision SSD or RetinaNet
    criterion : SSDBoxParameterLoss or FocalBoxParameterLoss
        Holds the box data parameters.
    optimizer, dp_optimizer
        The detector's SGD; the data parameters' SparseSGD (None for the baseline, whose sigma
        = 1 is not learned).
    execution : Execution
    box_loss : Tensor (N,)
        On the device; each box's loss in the current epoch (NaN for a box no anchor matched or
        that SSD's crop kept out of every batch of the epoch).
    table : BoxTable
        The boxes' metadata, for the epoch's curriculum statistics.
    evaluation : callable ``epoch -> dict``, optional
        What :meth:`evaluate` adds after the sigma statistics (AP on the validation split at
        evaluation epochs).

    The loader yields ``(images, targets)`` (:func:`~dataparams.detection.transforms.collate_detection`),
    each target carrying its boxes' global ``box_index``. After :meth:`evaluate`, ``sigma`` and
    ``epoch_box_loss`` hold the epoch's per-box arrays (float32, on the host) for the snapshot.
    """

    def __init__(self, model: nn.Module, criterion: SSDBoxParameterLoss | FocalBoxParameterLoss,
                 optimizer: torch.optim.Optimizer, dp_optimizer: torch.optim.Optimizer | None, *,
                 execution: Execution, box_loss: Tensor, table: BoxTable,
                 evaluation: Callable[[int], dict[str, Any]] | None = None) -> None:
        self.model, self.criterion, self.execution = model, criterion, execution
        self._optimizers = [optimizer] + ([dp_optimizer] if dp_optimizer is not None else [])
        self.box_loss, self.table, self.evaluation = box_loss, table, evaluation
        # classification, regression, negative sigma, batches
        self.sums = torch.zeros(4, dtype=torch.float64, device=execution.device)
        self._batch: tuple[Any, ...] = ()
        self.sigma = np.zeros(0, dtype=np.float32)
        self.epoch_box_loss = np.zeros(0, dtype=np.float32)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._optimizers

    def train(self) -> None:
        self.model.train()
        self.sums.zero_()
        # This epoch's losses only: a box that SSD's crop leaves out of every batch reads NaN, as
        # an unmatched box does, rather than an earlier epoch's loss.
        self.box_loss.fill_(float("nan"))

    def loss(self, batch: Any) -> Tensor:
        images, targets = batch
        dev = self.execution.device
        images = [self.execution.input(x) for x in images]
        targets = [_to_device(t, dev) for t in targets]
        head_outputs, anchors, matched, resized = ssd_training_outputs(self.model, images, targets,
                                                                       autocast=self.execution.autocast)
        loss, parts = self.criterion(head_outputs, anchors, matched, resized)
        self._batch = (targets, parts)
        return loss

    @torch.no_grad()
    def record(self, callbacks: Sequence[Callback]) -> None:
        targets, parts = self._batch  # on the device: nothing here waits for it
        self._batch = ()
        self.box_loss[torch.cat([t["box_index"] for t in targets])] = parts.box_loss
        self.sums += torch.stack([parts.classification.detach().double(), parts.bbox_regression.detach().double(),
                                  parts.negative_sigma.detach().double(), self.sums.new_ones(())])

    def running(self) -> dict[str, str]:
        classification, regression, _, batches = self.sums.tolist()
        return {"loss": f"{(classification + regression) / max(1.0, batches):.3f}"}

    def epoch_stats(self, ctx: DistributedContext | None = None) -> dict[str, Any]:
        # One process: the detection trainer refuses torchrun, so there is nothing to sum over.
        classification, regression, negative_sigma, batches = self.sums.tolist()  # the epoch's one read-back
        n = max(1.0, batches)
        return {
            "train_loss": (classification + regression) / n,
            "loss_classification": classification / n,
            "loss_box": regression / n,
            "negative_sigma": negative_sigma / n,
        }

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """The epoch's sigma statistics (:func:`~dataparams.detection.curriculum.curriculum_statistics`),
        then ``evaluation``'s numbers; after ``train_time_s``, which they do not count."""
        sigma = self.criterion.data_parameters.instance_sigma().cpu().numpy()
        epoch_box_loss = self.box_loss.cpu().numpy()
        self.sigma, self.epoch_box_loss = sigma.astype(np.float32), epoch_box_loss.astype(np.float32)
        record = curriculum_statistics(sigma, self.table, box_loss=epoch_box_loss)
        if self.evaluation is not None:
            record.update(self.evaluation(epoch))
        return record


class _RunWriter(Callback):
    """After each epoch: the metrics line, the per-box snapshot, the checkpoint, the progress line."""

    def __init__(self, run: RunDir, step: DetectionStep, checkpoint: Callable[[int], dict[str, Any]], *,
                 epochs: int, quiet: bool) -> None:
        self.run, self.step, self.checkpoint, self.epochs, self.quiet = run, step, checkpoint, epochs, quiet

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.run.append_metrics(record)
        self.run.save_snapshot(epoch + 1, box_sigma=self.step.sigma, box_loss=self.step.epoch_box_loss)
        self.run.save_checkpoint(self.checkpoint(epoch + 1))
        if self.quiet:
            return
        from dataparams.runs.logger import write_line

        parts_text = [f"epoch {epoch + 1:>3}/{self.epochs}", f"loss {record['train_loss']:.3f}",
                      f"sigma {record.get('box_sigma', {}).get('mean', 1.0):.3f}"]
        if record.get("spearman_difficulty") is not None:
            parts_text.append(f"rho(sigma, difficulty) {record['spearman_difficulty']:+.3f}")
        if "flipped" in record and record["flipped"].get("auroc_sigma") is not None:
            parts_text.append(f"AUROC(flipped) {record['flipped']['auroc_sigma']:.3f}")
        if "kitti" in record:
            parts_text.append(f"AP40 e/m/h {_fmt_ap(record['kitti'])}")
        if "coco" in record:
            parts_text.append("mAP/AP50 " + "/".join("n/a" if record["coco"][k] is None else
                                                      f"{100 * record['coco'][k]:.1f}" for k in ("map", "map50")))
        parts_text.append(f"{record['time_s']:.1f}s")
        write_line("  ".join(parts_text))
