"""SSD detectors for the detection experiment (sec. 3.3), built from torchvision's SSD machinery.

The paper trains an SSD (Liu et al. 2016) on KITTI. Everything that makes an SSD an SSD is taken
from torchvision and not written again: the :class:`~torchvision.models.detection.SSD` class
(input transform, head, box coder, ``SSDMatcher``, post-processing with ``batched_nms``), the
default boxes of :class:`~torchvision.models.detection.anchor_utils.DefaultBoxGenerator`, and
the VGG16 feature extractor of :func:`~torchvision.models.detection.ssd300_vgg16`. This module
adds three things:

* :class:`AspectBoxGenerator` -- ``DefaultBoxGenerator`` for non-square inputs. torchvision's
  default boxes are fractions of the image *per axis*, so on a 1248 x 384 KITTI image an
  "aspect 1" box would be 3.3 times as wide as tall. Here scales are fractions of the image
  height and aspect ratios hold in pixels; on a square input it equals its parent.
* :class:`TinySSDBackbone` -- a seven-layer conv net with batch norm giving four feature maps
  (strides 8 to 64), sized so that an epoch of the 800-image synthetic set runs in seconds on
  two CPU cores.
* :func:`ssd_training_outputs` -- the training half of ``SSD.forward`` (transform, backbone,
  head, default boxes, matching) returning the pieces instead of torchvision's fixed loss, so
  that :mod:`~dataparams.detection.box_parameters` can scale each anchor's logits by the sigma
  of the box it is matched to.
* :func:`weights_file` and :func:`load_detector_weights` -- starting ``ssd300_vgg16`` from
  torchvision's ImageNet VGG16 features (the weights torchvision's SSD recipe assumes) or from a
  local state_dict, without ever downloading: a torchvision weights name is looked up in torch
  hub's cache only.

Notation: ``B`` images in a batch, ``A`` default boxes (anchors) per image, ``C = K + 1``
classes with background 0, ``M_b`` ground-truth boxes in image ``b``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.ssd import SSD, SSDHead, ssd300_vgg16
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops

from dataparams.config import ConfigError
from dataparams.detection.transforms import REGION_KEYS

__all__ = [
    "DETECTOR_ARCHS",
    "FOCAL_ARCHS",
    "AspectBoxGenerator",
    "TinySSDBackbone",
    "build_detector",
    "detector_from_config",
    "load_detector_weights",
    "ssd_training_outputs",
    "weights_file",
]

#: Architectures :func:`build_detector` knows.
DETECTOR_ARCHS: tuple[str, ...] = ("ssd300_vgg16", "tiny_ssd", "tiny_retinanet")
#: The architectures trained with the focal loss on sigmoid logits
#: (:mod:`~dataparams.detection.focal_box_parameters`) rather than SSD's softmax loss.
FOCAL_ARCHS: tuple[str, ...] = ("tiny_retinanet",)

# torchvision's SSD300 default boxes (ssd300_vgg16), reused for other input sizes.
_SSD300_ASPECTS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
_SSD300_SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
# The tiny backbone's four levels: box heights of 12-96 px on a 128 px tall image are 0.1-0.75 of
# it; each level covers its scale and the geometric mean with the next one.
_TINY_ASPECTS = [[2, 3], [2, 3], [2, 3], [2, 3]]
_TINY_SCALES = [0.12, 0.24, 0.42, 0.64, 0.9]
# tiny_retinanet's anchor base sizes (px) on the levels at strides 8-64: 4 x the stride, as
# RetinaNet's 32-512 px on strides 8-128, covering the 12-96 px objects of the synthetic set.
_TINY_RETINA_SIZES = (16, 32, 64, 128)


class AspectBoxGenerator(DefaultBoxGenerator):
    """torchvision's ``DefaultBoxGenerator`` with scales relative to the image *height*.

    Parameters
    ----------
    aspect_ratios, scales, steps, clip
        As in ``DefaultBoxGenerator``.
    image_size : (int, int)
        ``(H, W)`` of the network input. Default box widths are multiplied by ``H / W`` in the
        normalised coordinates, so that a box of scale ``s`` and aspect ``a`` is ``s * H *
        sqrt(a)`` pixels wide and ``s * H / sqrt(a)`` tall; for ``H == W`` nothing changes.

    Notes
    -----
    Only the width-height pairs are changed; tiling, clipping and the conversion to pixel
    coordinates are the parent's.
    """

    def __init__(
        self,
        aspect_ratios: list[list[int]],
        *,
        image_size: tuple[int, int],
        scales: list[float] | None = None,
        steps: list[int] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__(aspect_ratios, scales=scales, steps=steps, clip=clip)
        height, width = int(image_size[0]), int(image_size[1])
        if height < 1 or width < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = (height, width)
        factor = torch.tensor([height / width, 1.0])
        self._wh_pairs = [pairs * factor for pairs in self._wh_pairs]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinySSDBackbone(nn.Module):
    """A small conv net giving four feature maps at strides 8, 16, 32 and 64.

    Parameters
    ----------
    width : int
        Channels of the stride-8 map; the deeper maps have ``2 * width``.

    Notes
    -----
    Batch norm lets a network this small train from scratch with SGD at a high learning rate
    (it always starts from random weights). The output is an ``OrderedDict`` of
    ``(B, c, H / s, W / s)`` maps, as torchvision's SSD expects, and ``out_channels`` lists ``c``.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        if width < 4:
            raise ValueError(f"width must be >= 4, got {width}")
        w = int(width)
        self.stem = nn.Sequential(
            _conv_bn(3, w // 2 - w // 8, 2),  # stride 2
            _conv_bn(w // 2 - w // 8, w // 2, 2),  # stride 4
            _conv_bn(w // 2, w // 2, 1),
            _conv_bn(w // 2, w, 2),  # stride 8
            _conv_bn(w, w, 1),
        )
        self.level1 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1))  # stride 16
        self.level2 = _conv_bn(2 * w, 2 * w, 2)  # stride 32
        self.level3 = _conv_bn(2 * w, 2 * w, 2)  # stride 64
        self.out_channels = [w, 2 * w, 2 * w, 2 * w]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        f0 = self.stem(x)
        f1 = self.level1(f0)
        f2 = self.level2(f1)
        f3 = self.level3(f2)
        return OrderedDict([("0", f0), ("1", f1), ("2", f2), ("3", f3)])


def build_detector(
    arch: str,
    num_classes: int,
    *,
    image_size: Sequence[int] = (300, 300),
    width: int = 64,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 100,
    topk_candidates: int = 200,
    weights: str | os.PathLike[str] | None = None,
    load_weights: bool = True,
) -> SSD | RetinaNet:
    """A torchvision ``SSD`` (or ``RetinaNet``) for ``num_classes`` object classes, random or from ``weights``.

    Parameters
    ----------
    arch : {"ssd300_vgg16", "tiny_ssd", "tiny_retinanet"}
        ``ssd300_vgg16``: torchvision's ``ssd300_vgg16(weights=None, weights_backbone=None)``,
        all layers trainable unless ``weights`` are given; for an ``image_size`` other than 300 x 300 its input transform and
        default boxes are rebuilt for that size (same scales and aspect ratios, relative to the
        image height, tiled over the feature maps). ``tiny_ssd``: :class:`TinySSDBackbone`
        with torchvision's ``SSDHead`` and four levels of six default boxes.
        ``tiny_retinanet``: torchvision's ``RetinaNet`` (focal loss on sigmoid class logits,
        its ``RetinaNetHead`` with GroupNorm as in its v2 model) on the same backbone, each level
        projected to ``width`` channels by a 1 x 1 convolution (no FPN), and nine anchors per
        location (three sizes an octave apart times three aspect ratios) of 16, 32, 64, 128 px
        base size on the four levels.
    num_classes : int
        ``K``, object classes without background; the model has ``K + 1`` outputs.
    image_size : (int, int)
        ``(H, W)`` the images are resized to (torchvision's ``fixed_size`` is ``(W, H)``).
    width : int
        Width of ``tiny_ssd`` and ``tiny_retinanet`` (ignored otherwise).
    score_thresh, nms_thresh, detections_per_img, topk_candidates
        torchvision's post-processing settings.
    weights : str or path-like, optional
        ``ssd300_vgg16`` only: a torchvision ``VGG16_Weights`` name or a state_dict file
        (:func:`weights_file`, :func:`load_detector_weights`). As torchvision's
        ``ssd300_vgg16`` does with any pretrained weights (``trainable_backbone_layers=4``), the
        first VGG stage (conv1_1, conv1_2) is then frozen.
    load_weights : bool
        False builds the model ``weights`` would give (the same frozen layers) without reading
        the file: for a resume, whose checkpoint replaces every weight.

    Returns
    -------
    torchvision.models.detection.SSD or RetinaNet
        Nothing is downloaded. ``tiny_retinanet`` keeps torchvision's ``K + 1`` class columns
        with column 0 (background) never a target: its sigmoid, trained towards 0 on every
        anchor, falls below the score threshold as training goes on; until then its candidates
        take some of the post-processing's ``topk_candidates`` / ``detections_per_img`` slots,
        and :func:`~dataparams.detection.train.predict_detections` drops them.

    Raises
    ------
    ConfigError
        ``weights`` for a tiny detector, or weights that cannot be found or loaded.
    """
    if arch not in DETECTOR_ARCHS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTOR_ARCHS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    height, width_px = (int(v) for v in image_size)
    if height < 32 or width_px < 32:
        raise ValueError(f"image_size must be at least 32 x 32, got {tuple(image_size)}")
    post: dict[str, Any] = dict(score_thresh=score_thresh, nms_thresh=nms_thresh,
                                detections_per_img=detections_per_img, topk_candidates=topk_candidates)
    if weights is not None and arch != "ssd300_vgg16":
        raise ConfigError(f"model.weights applies to ssd300_vgg16 only; {arch} trains from random weights")
    # Looked up before the (slow) build, so that a missing file fails at once.
    path = weights_file(weights) if weights is not None and load_weights else None
    if arch == "ssd300_vgg16":
        # Built without weights (torchvision would download them); loaded below from a local file.
        model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1, **post)
        if (height, width_px) != (300, 300):
            transform = model.transform
            model.transform = GeneralizedRCNNTransform(
                min(height, width_px), max(height, width_px), transform.image_mean, transform.image_std,
                size_divisible=1, fixed_size=(width_px, height),
            )
            # SSD300's steps (8 ... 300) place default boxes for a 300 px input; without steps
            # the boxes are tiled evenly over whatever feature maps the input gives.
            model.anchor_generator = AspectBoxGenerator(_SSD300_ASPECTS, scales=_SSD300_SCALES,
                                                        image_size=(height, width_px))
        if weights is not None:
            if path is not None:
                load_detector_weights(model, path)
            _freeze_first_vgg_stage(model)
        return model
    if arch == "tiny_retinanet":
        backbone = UniformChannels(TinySSDBackbone(width), width)
        sizes = tuple(tuple(base * 2 ** (i / 3) for i in range(3)) for base in _TINY_RETINA_SIZES)
        generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        head = RetinaNetHead(width, generator.num_anchors_per_location()[0], num_classes + 1,
                             norm_layer=partial(nn.GroupNorm, 8))
        model = RetinaNet(backbone, num_classes + 1, anchor_generator=generator, head=head,
                          min_size=min(height, width_px), max_size=max(height, width_px), **post)
        # The fixed input size of the SSD models, so that boxes, anchors and evaluation see the
        # same pixels whichever detector is trained.
        transform = model.transform
        model.transform = GeneralizedRCNNTransform(min(height, width_px), max(height, width_px),
                                                   transform.image_mean, transform.image_std, size_divisible=1,
                                                   fixed_size=(width_px, height))
        return model
    backbone = TinySSDBackbone(width)
    anchors = AspectBoxGenerator(_TINY_ASPECTS, scales=_TINY_SCALES, image_size=(height, width_px))
    head = SSDHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1)
    return SSD(backbone, anchors, (width_px, height), num_classes + 1, head=head, **post)


class UniformChannels(nn.Module):
    """A multi-level backbone with every level projected to ``channels`` by a 1 x 1 convolution,
    as torchvision's ``RetinaNet`` (one head shared by the levels) needs; ``out_channels`` is
    that one number."""

    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.body = body
        self.proj = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in body.out_channels)
        self.out_channels = int(channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        return OrderedDict((k, proj(v)) for (k, v), proj in zip(features.items(), self.proj))


# ---------------------------------------------------------------------------------------------
# starting weights
# ---------------------------------------------------------------------------------------------
_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
_VGG_KEY = re.compile(r"^(?:features\.)?(\d+)\.(weight|bias)$")
# The convolutions of torchvision's vgg16().features (conv1_1 ... conv5_3), by module index.
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def detector_from_config(model_config: Any, num_classes: int, *, load_weights: bool = True) -> SSD | RetinaNet:
    """:func:`build_detector` with the settings of a run's ``model`` section (a
    :class:`~dataparams.detection.config.DetectionModelConfig`): the detector a run trains, or,
    with ``load_weights=False``, its architecture to load the run's checkpoint into.

    One place reads the config's fields, so that the trainer and the tools that rebuild a run's
    detector (prediction on other images, benchmarks) cannot build different networks.
    """
    m = model_config
    return build_detector(m.arch, num_classes, image_size=m.image_size, width=m.width, score_thresh=m.score_thresh,
                          nms_thresh=m.nms_thresh, detections_per_img=m.detections_per_img, weights=m.weights,
                          load_weights=load_weights)


def weights_file(weights: str | os.PathLike[str]) -> Path:
    """The local file of ``model.weights``; nothing is ever downloaded.

    Parameters
    ----------
    weights : str or path-like
        A torchvision weights name of the SSD backbone, ``VGG16_Weights.IMAGENET1K_FEATURES``
        (the ImageNet features torchvision's ``ssd300_vgg16`` starts from, ported from the SSD
        authors' VGG; its input normalisation is the SSD model's) or another ``VGG16_Weights``
        member, resolved with ``torchvision.models.get_weight``; or the path of a state_dict file.

    Returns
    -------
    Path
        For a name, the file torchvision would have downloaded into torch hub's cache,
        ``torch.hub.get_dir()/checkpoints/<file name of the weights' URL>``.

    Raises
    ------
    ConfigError
        An unknown or non-VGG16 weights name, a name whose file is not in the cache (the message
        names the file, the folder and the URL to fetch it from by hand), or a missing path.
    """
    text = os.fspath(weights)
    if _WEIGHTS_NAME.match(text) and not Path(text).exists():
        from torchvision.models import get_weight

        try:
            enum = get_weight(text)
        except (KeyError, ValueError, AttributeError) as e:
            raise ConfigError(f"model.weights {text!r} is no torchvision weights name ({e})") from None
        if type(enum).__name__ != "VGG16_Weights":
            raise ConfigError(f"model.weights {text!r}: ssd300_vgg16 takes VGG16_Weights (its backbone), e.g. "
                              "VGG16_Weights.IMAGENET1K_FEATURES, or a state_dict file")
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        path = folder / os.path.basename(urlparse(enum.url).path)
        if not path.is_file():
            raise ConfigError(
                f"model.weights {text}: {path.name} is not in torch hub's cache {folder}, and nothing is downloaded "
                f"here. Put the file there (from {enum.url}), or point model.weights at a local state_dict file, "
                "or set model.weights=none to train from random weights")
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights {text!r}: no such file (expected a torchvision VGG16_Weights name or a "
                          "state_dict file)")
    return path


def load_detector_weights(model: SSD, path: str | os.PathLike[str]) -> str:
    """Load a state_dict file into an ``ssd300_vgg16`` model.

    Parameters
    ----------
    model : SSD
        Built by :func:`build_detector` (``ssd300_vgg16``).
    path : path-like
        Read with ``torch.load(weights_only=True)``. Either VGG16 weights -- torchvision's
        ``vgg16().state_dict()`` (``features.N.*``; ``classifier.*`` is ignored, as the SSD has
        no classifier) or ``vgg16().features.state_dict()`` (``N.*``) -- whose 13 convolutions
        go to the backbone: ``features.N`` is ``backbone.features.N`` up to conv4_3 and
        ``backbone.extra.0.{N - 23}`` for conv5_1 to conv5_3, as torchvision's
        ``SSDFeatureExtractorVGG`` splits the VGG; or a whole detector's state_dict (``backbone.*``
        and ``head.*``, also as the ``"model"`` entry of a checkpoint such as a run's
        ``checkpoint.pt``), loaded strictly: same architecture and number of classes.

    Returns
    -------
    str
        ``"backbone"`` or ``"detector"``: what was loaded.

    Raises
    ------
    ConfigError
        A file that is no such state_dict, or whose shapes do not fit the model.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same configuration error
        raise ConfigError(f"model.weights {path}: cannot be read as a state_dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"model.weights {path}: expected a state_dict, got {type(state).__name__}")
    keys = [str(k) for k in state]
    if any(k.startswith("backbone.") for k in keys):
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f"model.weights {path}: a detector state_dict that does not fit this model: {e}") from None
        return "detector"
    vgg = {}
    for key, value in state.items():
        match = _VGG_KEY.match(str(key))
        if match is None:
            if str(key).startswith("classifier."):
                continue
            raise ConfigError(f"model.weights {path}: neither VGG16 weights nor a detector state_dict (key {key!r})")
        vgg[(int(match.group(1)), match.group(2))] = value
    wanted = {(i, kind) for i in _VGG16_CONVS for kind in ("weight", "bias")}
    if set(vgg) != wanted:
        missing = sorted(wanted - set(vgg))
        extra = sorted(set(vgg) - wanted)
        raise ConfigError(f"model.weights {path}: not VGG16's 13 convolutions (missing {missing[:4]}, unexpected "
                          f"{extra[:4]})")
    # torchvision's split of the VGG: features[:maxpool4] up to conv4_3, the rest in extra[0].
    split = len(model.backbone.features)
    mapped = {(f"backbone.features.{i}.{kind}" if i < split else f"backbone.extra.0.{i - split}.{kind}"): value
              for (i, kind), value in vgg.items()}
    own = model.state_dict()
    for key, value in mapped.items():
        if key not in own or own[key].shape != value.shape:
            raise ConfigError(f"model.weights {path}: {key} does not fit the model "
                              f"({tuple(value.shape)} vs {tuple(own[key].shape) if key in own else 'absent'})")
    model.load_state_dict(mapped, strict=False)
    return "backbone"


def _freeze_first_vgg_stage(model: SSD) -> None:
    """Freeze the layers before the first max-pool (conv1_1, conv1_2), as torchvision's
    ``_vgg_extractor`` does with ``trainable_layers=4``, its default for pretrained weights."""
    features = model.backbone.features
    first_pool = next(i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d))
    for layer in features[:first_pool]:
        for p in layer.parameters():
            p.requires_grad_(False)


def _resize_regions(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """torchvision's ``resize_boxes`` with the ratios as Python numbers: its ratios are device
    tensors built from host data, a blocking copy on a GPU for every call. The ratios are the
    same float32 quotients, so the boxes are the same bit for bit."""
    ratio_h, ratio_w = (float(np.float32(s) / np.float32(s0)) for s, s0 in zip(new_size, original_size))
    xmin, ymin, xmax, ymax = boxes.unbind(1)
    return torch.stack((xmin * ratio_w, ymin * ratio_h, xmax * ratio_w, ymax * ratio_h), dim=1)


def _check_box_sizes(targets: Sequence[dict[str, Any]]) -> None:
    """Raise ``ValueError`` for a target box of zero width or height, without reading back on a GPU.

    One device-side assertion over the batch (``torch._assert_async``, as
    :mod:`dataparams.optim` checks rows): on the CPU it fails at once and is turned into a
    ``ValueError`` naming the image; on a GPU a bad box is a device-side assertion.
    """
    oks = [(b[:, 2:] > b[:, :2]).all() for b in (t["boxes"] for t in targets) if b.numel()]
    if not oks:
        return
    try:
        torch._assert_async(torch.stack(oks).all(), "a target holds a box of zero width or height")
    except RuntimeError:
        # Only a CPU assertion raises here, where reading the boxes back costs nothing.
        for i, target in enumerate(targets):
            boxes = target["boxes"]
            if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):
                raise ValueError(f"target {i} ({target.get('image_id', '?')}) holds a box of zero width or "
                                 "height") from None
        raise


def ssd_training_outputs(
    model: SSD | RetinaNet,
    images: Sequence[Tensor],
    targets: Sequence[dict[str, Any]],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor], list[dict[str, Any]]]:
    """The training forward of a torchvision ``SSD`` (or ``RetinaNet``, whose training forward
    has the same steps and modules) up to, and without, its loss.

    The same steps as ``SSD.forward`` in training mode, with the model's own modules: resize and
    normalise (``model.transform``, which moves the target boxes and passes every other target
    entry, ``box_index`` included, through unchanged), backbone, head, default boxes
    (``model.anchor_generator``) and matching (``box_iou`` + ``model.proposal_matcher``). The
    ignore regions (``ignore``, and ``dontcare``), which torchvision's transform does not know,
    are resized here by the same factors as the boxes.

    Parameters
    ----------
    model : SSD
    images : sequence of B Tensors (3, H_b, W_b) in [0, 1]
    targets : sequence of B dicts with ``boxes`` (M_b, 4) xyxy and ``labels`` (M_b,) in 1..K
    autocast : callable returning a context manager
        Mixed precision for the backbone and head only (e.g. ``Execution.autocast``). The head's
        outputs are returned in float32 and the default boxes are always built in float32: in
        bfloat16 a coordinate near 1,000 px is off by up to 4 px.

    Returns
    -------
    head_outputs : dict
        ``cls_logits`` (B, A, C) and ``bbox_regression`` (B, A, 4).
    anchors : list of B Tensors (A, 4)
        Default boxes in the resized image's pixels.
    matched_idxs : list of B LongTensors (A,)
        Per anchor, the index of its ground-truth box in the image, or -1 (background).
    targets : list of B dicts
        The targets with ``boxes`` (and ``ignore``, ``dontcare`` where present) in the resized
        image's pixels.

    Raises
    ------
    ValueError
        A target box with non-positive width or height (torchvision asserts the same); on a GPU
        this is a device-side assertion instead, as the check does not wait for the device.
    """
    image_list, resized = model.transform(list(images), [dict(t) for t in targets])
    assert resized is not None
    for image, new_size, target in zip(images, image_list.image_sizes, resized):
        for key in REGION_KEYS:  # torchvision's transform resizes "boxes" only
            if key in target:
                target[key] = _resize_regions(target[key], image.shape[-2:], new_size)
    for i, target in enumerate(resized):
        boxes = target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: boxes must have shape (M, 4), got {tuple(boxes.shape)}")
    _check_box_sizes(resized)
    with autocast():
        features = model.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        feature_list = list(features.values())
        head_outputs = model.head(feature_list)
    head_outputs = {k: v.float() for k, v in head_outputs.items()}
    anchors = model.anchor_generator(image_list, [f if f.dtype == torch.float32 else f.float() for f in feature_list])
    matched_idxs = []
    for anchors_per_image, target in zip(anchors, resized):
        if target["boxes"].numel() == 0:
            matched_idxs.append(torch.full((anchors_per_image.shape[0],), -1, dtype=torch.int64,
                                           device=anchors_per_image.device))
            continue
        quality = box_ops.box_iou(target["boxes"], anchors_per_image)
        matched_idxs.append(model.proposal_matcher(quality))
    return head_outputs, anchors, matched_idxs, resized
