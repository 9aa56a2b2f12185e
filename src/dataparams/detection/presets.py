"""Named detection presets (sec. 3.3) and the library entry points the command line calls.

=========================  ==============================================================
 preset                     what
=========================  ==============================================================
 ``kitti/baseline``         SSD300-VGG16 on KITTI train/val (3,712 / 3,769), sigma = 1
 ``kitti/instance``         the same with one data parameter per box (lr 0.1, no momentum,
                            no weight decay: the paper's settings)
 ``kitti-synth/baseline``   a tiny SSD on the synthetic Fashion-MNIST KITTI set, CPU-sized
 ``kitti-synth/instance``   the same with box data parameters
 ``coco-synth/baseline``    ``kitti-synth/baseline`` on the same scenes in COCO's format
                            (:mod:`~dataparams.detection.coco`), scored by COCO mAP
 ``coco-synth/instance``    the same with box data parameters
=========================  ==============================================================

Every preset carries ``notes`` naming the source of each number: the paper where it states one,
torchvision's SSD reference recipe or the SSD paper (Liu et al. 2016) for the detector, and our
own choice, with its reason, where neither says anything.

Entry points: :func:`train_detection` (re-exported from :mod:`~dataparams.detection.train`),
:func:`list_detection_presets`, :func:`get_detection_preset`, and :func:`ensure_synthetic_data`,
which writes the synthetic set a ``kitti-synth`` preset reads when its folder is empty
(:func:`ensure_synthetic_coco` for ``coco-synth``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dataparams.config import ConfigError
from dataparams.detection.config import (
    BoxCurriculumConfig,
    DetectionConfig,
    DetectionDataConfig,
    DetectionModelConfig,
    DetectionOptimConfig,
)
from dataparams.detection.synthetic import SyntheticKittiConfig, SyntheticKittiSet, write_synthetic_kitti
from dataparams.detection.train import train_detection

if TYPE_CHECKING:
    from dataparams.detection.coco import SyntheticCocoSet

__all__ = [
    "DETECTION_PRESETS",
    "SYNTHETIC_DATA",
    "SYNTHETIC_DATA_FLIP20",
    "ensure_synthetic_coco",
    "ensure_synthetic_data",
    "get_detection_preset",
    "list_detection_presets",
    "train_detection",
]

#: The synthetic set of the ``kitti-synth`` presets: 1,200 images of 128 x 256, 900 train / 300
#: val (about 3,600 / 1,200 labelled boxes), written by :func:`ensure_synthetic_data`.
SYNTHETIC_DATA = SyntheticKittiConfig(num_images=1200, val_fraction=0.25, seed=0)
#: The same scenes with 20% of the train split's boxes given another class (``flip_fraction``).
SYNTHETIC_DATA_FLIP20 = replace(SYNTHETIC_DATA, flip_fraction=0.2)
#: The same scenes with three kinds of box error in the train split, each a tenth of its labelled
#: objects: a flipped class, a box moved by more than half its size, a spurious box on background.
SYNTHETIC_DATA_ERRORS = replace(SYNTHETIC_DATA, flip_fraction=0.1, shift_fraction=0.1, spurious_fraction=0.1)

_KITTI_NOTES = """\
Paper (sec. 3.3): SSD on KITTI 2D detection, train/val split of Chen et al. [3] (3,712 / 3,769 images,
ImageSets/train.txt and val.txt in data.root), classes Car, Pedestrian, Cyclist (the paper reports Car;
all three are trained and evaluated here), one data parameter per box annotation, instance level only,
lr_instance 0.1, no momentum, no weight decay, init sigma 1 (sec. 3.1); negatives use the batch's mean
box sigma. Detector: torchvision's ssd300_vgg16 started, as torchvision's SSD recipe is, from the ImageNet
VGG16 features (model.weights VGG16_Weights.IMAGENET1K_FEATURES, the SSD authors' VGG as ported by
torchvision), with conv1 frozen as torchvision does with pretrained weights. Nothing is downloaded: the
file (vgg16_features-amdegroot-88682ab5.pth) must be in torch hub's cache (torch.hub.get_dir()/checkpoints,
by default ~/.cache/torch/hub/checkpoints; the run stops naming it otherwise), or model.weights can name a local state_dict file; model.weights=none
trains every layer from random weights, for which this schedule was not made.
Our choices where the paper is silent: input 384 x 1248 (H x W) instead of 300 x 300, because KITTI
images are 375 x 1242 and squashing them to a square shrinks widths four-fold (a 25 px tall pedestrian
would be 2-3 px wide); default boxes keep SSD300's scales and aspect ratios relative to the image height,
tiled over the feature maps. Schedule after torchvision's SSD300 reference recipe (SGD lr 0.002 for a
batch of 32, momentum 0.9, weight decay 5e-4, x0.1 steps late in training) with a one-epoch warm-up
(ours: the new head and extra layers start random); 240 epochs of 116 iterations (about 28k iterations,
a quarter of the SSD paper's VOC schedule, for a data set a fifth of VOC's size), steps at epochs 160 and
220. SSD's augmentation (data.augment ssd, as torchvision's recipe and the SSD paper: photometric
distortion, zoom-out up to 4x on a mean-coloured canvas, IoU crop, horizontal flip), since the paper
trained a standard SSD: a box the crop cuts away is absent from that step with its box_index (its data
parameter gets no update then), a clipped box keeps its index; the crop's aspect ratio is bounded
relative to the 384 x 1248 input rather than absolutely (torchvision's bound assumes a square input).
data.augment=flip keeps every box in every step.
Sigma clamped to [1/20, 20] as in the released classification code. No gradient through the negatives'
mean sigma (see dataparams.detection.box_parameters). DontCare regions and the devkit's neighbour types (Van
for Car, Person_sitting for Pedestrian) are ignore regions: an anchor matched to no box and more than half
inside one is not a negative (model.ignore_overlap 0.5; the paper does not say what its SSD did with them).
Evaluation every 10 epochs with the devkit's rules (AP|R40 and 11-point); the headline is Car AP at IoU 0.7. Not run here (no GPU in this project's CI): the numbers above are the recipe,
not a reproduced result."""

_SYNTH_NOTES = """\
CPU stand-in for sec. 3.3. Data: the synthetic KITTI-format set (dataparams.detection.synthetic) with
1,200 images of 128 x 256, 900 train / 300 val, seed 0 (ensure_synthetic_data writes it; the flip20
variant gives 20% of the train boxes another class). Detector: tiny_ssd (a 7-layer conv net with batch
norm, torchvision SSDHead, 4 levels of 6 default boxes, scales 0.12-0.9 of the image height for the
12-96 px objects) at the native 128 x 256, so that an epoch of 900 images takes about 20 s on one core.
Schedule (our choice, tuned once on the clean set's validation split): SGD lr 0.05, momentum 0.9,
weight decay 5e-4, batch 16, one warm-up epoch then cosine to zero over 12 epochs; horizontal flips
only (data.augment flip; the committed numbers were measured so; ssd is SSD's augmentation).
Data parameters: the paper's settings (no momentum, no weight decay, init 1, clamp [1/20, 20]) except
the learning rate. The SSD loss is divided by the batch's positive anchors (130-200 in a batch of 16
here), so the gradient on a box's log sigma is small: median 0.01-0.02, 90th percentile 0.03-0.07
per visit (measured at initialisation and after training), and each box is visited once per epoch,
12 times in all. At the paper's 0.1, log sigma would move by about 0.002 per visit, 2% over the run
(a KITTI schedule visits each box hundreds of times); lr_instance 1.0 lets the curriculum form within
the CPU budget. benchmarks/bench_detection.py --paper-lr runs the paper's 0.1 for comparison. No gradient through the negatives' mean sigma.
DontCare regions are ignore regions (model.ignore_overlap 0.5, as for kitti/*).
Evaluation every 4 epochs on the clean val split with the KITTI devkit's rules."""


def _kitti(curriculum: bool) -> DetectionConfig:
    return DetectionConfig(
        preset=f"kitti/{'instance' if curriculum else 'baseline'}",
        seed=1,
        data=DetectionDataConfig(root="", train_split="train", val_split="val", augment="ssd", hflip=0.5,
                                 batch_size=32, eval_batch_size=32),
        model=DetectionModelConfig(arch="ssd300_vgg16", image_size=[384, 1248], score_thresh=0.01,
                                   nms_thresh=0.45, detections_per_img=100,
                                   weights="VGG16_Weights.IMAGENET1K_FEATURES"),
        optim=DetectionOptimConfig(epochs=240, lr=0.002, momentum=0.9, weight_decay=5e-4, schedule="multistep",
                                   milestones=[160, 220], gamma=0.1, warmup_epochs=1.0),
        curriculum=BoxCurriculumConfig(instance_curriculum=curriculum, init_instance=1.0, lr_instance=0.1,
                                       momentum=0.0, wd_instance=0.0),
        eval_every=10,
        notes=_KITTI_NOTES,
    )


def _synth(curriculum: bool) -> DetectionConfig:
    return DetectionConfig(
        preset=f"kitti-synth/{'instance' if curriculum else 'baseline'}",
        seed=1,
        data=DetectionDataConfig(root="", train_split="train", val_split="val", hflip=0.5, batch_size=16,
                                 eval_batch_size=50),
        model=DetectionModelConfig(arch="tiny_ssd", image_size=[128, 256], width=64, score_thresh=0.01,
                                   nms_thresh=0.45, detections_per_img=100),
        optim=DetectionOptimConfig(epochs=12, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                                   warmup_epochs=1.0),
        curriculum=BoxCurriculumConfig(instance_curriculum=curriculum, init_instance=1.0, lr_instance=1.0,
                                       momentum=0.0, wd_instance=0.0),
        eval_every=4,
        notes=_SYNTH_NOTES,
    )


_COCO_SYNTH_NOTES = """\
kitti-synth/* (notes below) on the same 1,200 scenes written in COCO's format by
dataparams.detection.coco.write_synthetic_coco (ensure_synthetic_coco): annotations/instances_{train,val}.json
and the images in train/ and val/; data.format coco. Every non-crowd annotation gets one data parameter;
each KITTI DontCare region is one crowd annotation per category, which gets none, is an ignore region
of the loss as the DontCare region is in kitti-synth, and which COCOeval ignores. The evaluation is COCO's
box mAP by pycocotools' COCOeval (AP@[.5:.95], AP50, AP75, by size, AR; the headline is the mAP) in place
of the KITTI devkit's AP; the difficulty and occlusion statistics of sigma still apply,
since the synthetic annotations carry KITTI's occluded and truncated values.

"""


def _coco_synth(curriculum: bool) -> DetectionConfig:
    cfg = _synth(curriculum)
    cfg.preset = f"coco-synth/{'instance' if curriculum else 'baseline'}"
    cfg.data = replace(cfg.data, format="coco", ann_file="annotations/instances_{split}.json", image_dir="{split}",
                       invalid_boxes="error")
    cfg.notes = _COCO_SYNTH_NOTES + _SYNTH_NOTES
    return cfg


#: Preset name -> factory of a fresh config.
DETECTION_PRESETS: dict[str, Callable[[], DetectionConfig]] = {
    "kitti/baseline": lambda: _kitti(False),
    "kitti/instance": lambda: _kitti(True),
    "kitti-synth/baseline": lambda: _synth(False),
    "kitti-synth/instance": lambda: _synth(True),
    "coco-synth/baseline": lambda: _coco_synth(False),
    "coco-synth/instance": lambda: _coco_synth(True),
}


def list_detection_presets() -> list[str]:
    """The preset names, ``EXPERIMENT/VARIANT``."""
    return list(DETECTION_PRESETS)


def get_detection_preset(name: str, *, root: str | os.PathLike[str] | None = None) -> DetectionConfig:
    """A fresh :class:`DetectionConfig` of preset ``name``, with ``data.root`` set when given.

    Raises
    ------
    ConfigError
        An unknown name; the message lists the valid ones.
    """
    if name not in DETECTION_PRESETS:
        raise ConfigError(f"unknown detection preset {name!r}; choose one of {', '.join(DETECTION_PRESETS)}")
    cfg = DETECTION_PRESETS[name]()
    if root is not None:
        cfg.data.root = str(root)
    return cfg


def ensure_synthetic_data(
    root: str | os.PathLike[str],
    config: SyntheticKittiConfig = SYNTHETIC_DATA,
    *,
    fashion_mnist_root: str | os.PathLike[str] | None = None,
) -> SyntheticKittiSet | None:
    """Write the synthetic set under ``root`` unless it is already there.

    Returns the written set, or None when ``root/training/label_2`` already held label files
    (nothing is checked or changed then: the same config and seed always write the same files).
    """
    labels = Path(root) / "training" / "label_2"
    if labels.is_dir() and any(labels.glob("*.txt")):
        return None
    return write_synthetic_kitti(root, config, fashion_mnist_root=fashion_mnist_root)


def ensure_synthetic_coco(
    root: str | os.PathLike[str],
    config: SyntheticKittiConfig = SYNTHETIC_DATA,
    *,
    fashion_mnist_root: str | os.PathLike[str] | None = None,
) -> SyntheticCocoSet | None:
    """Write the synthetic set in COCO's format under ``root`` (for ``coco-synth``) unless
    ``root/annotations/instances_train.json`` is already there (then nothing is checked or
    changed, and None is returned)."""
    from dataparams.detection.coco import write_synthetic_coco

    if (Path(root) / "annotations" / "instances_train.json").is_file():
        return None
    return write_synthetic_coco(root, config, fashion_mnist_root=fashion_mnist_root)
