"""Transforms of detection items ``(image, target)``: flip, resize, SSD's augmentation, batching.

An item is what :class:`~dataparams.detection.kitti.KittiDetection` and
:class:`~dataparams.detection.coco.CocoDetection` yield: the image as float (C, H, W) in [0, 1]
and a target dict whose entries are of three kinds:

* ``boxes`` (M, 4) and the other **per-box** entries, every other tensor entry with a leading
  dimension (``labels``, ``box_index``, ``difficulty``, ``occluded``, ``truncated``, ``height``,
  COCO's ``ann_id``), row ``j`` of each describing box ``j``. A transform that removes boxes (the
  IoU crop) removes them from every per-box entry together (:func:`select_boxes`), so
  ``box_index`` still names each kept box's data parameter, and a removed box's parameter gets no
  gradient that step. The annotation fields describe the label, not the transformed box: a
  clipped box keeps its index, ``height`` and ``truncated``.
* the **regions** ``dontcare`` and ``ignore`` (R, 4) (:data:`REGION_KEYS`): moved, scaled and
  cropped with the image, clipped to it, dropped when cropped away; they have no data parameter.
* everything else (``image_id``): passed through.

Boxes are ``(x1, y1, x2, y2)`` in pixels, read as continuous coordinates (torchvision's
convention): a horizontal flip maps ``x`` to ``W - x``, a resize multiplies by the scale factor, a
zoom-out adds the offset of the image on its canvas, a crop subtracts its corner and clips.

SSD's augmentation (Liu et al. 2016, sec. 2.2 and 3.6; torchvision's
``references/detection/presets.py``, ``data_augmentation="ssd"``) is, in this order,
:class:`RandomPhotometricDistort`, :class:`RandomZoomOut` (the "expansion" of sec. 3.6, the canvas
filled with the mean colour), :class:`RandomIoUCrop` and :class:`RandomHorizontalFlip`, with the
parameters of ``torchvision.transforms.v2`` (:func:`ssd_augmentation`). One change for inputs that
are not square: the crop's aspect ratio is bounded relative to the network input's (``input_aspect``),
not in absolute terms; the two agree for SSD300's square input. The pixel operations are
``torchvision.transforms.v2.functional`` kernels.

Randomness: every ``Random*`` transform draws from the ``torch.Generator`` it is given, so that the
trainer, which seeds one generator per (seed, epoch, image, transform)
(:class:`~dataparams.detection.train.AugmentedDetection`), gets the same augmentation for an image
whatever ran before, in any worker: what exact resume rests on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "AUGMENTATIONS",
    "REGION_KEYS",
    "SSD_MEAN",
    "Compose",
    "RandomHorizontalFlip",
    "RandomIoUCrop",
    "RandomPhotometricDistort",
    "RandomScale",
    "RandomZoomOut",
    "Target",
    "Transform",
    "collate_detection",
    "crop",
    "hflip",
    "photometric_distort",
    "resize",
    "scale",
    "select_boxes",
    "ssd_augmentation",
    "zoom_out",
]

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]

#: The training augmentations the trainer knows (``data.augment``): a horizontal flip only, or
#: SSD's (:func:`ssd_augmentation`).
AUGMENTATIONS: tuple[str, ...] = ("flip", "ssd")
#: Target entries that are regions of the image, not annotations.
REGION_KEYS: tuple[str, ...] = ("dontcare", "ignore")
#: The zoom-out canvas colour: torchvision's SSD mean, (123, 117, 104) / 255, which is also
#: ``ssd300_vgg16``'s input normalisation, so that the canvas enters the network as zeros.
SSD_MEAN: tuple[float, float, float] = (123.0 / 255.0, 117.0 / 255.0, 104.0 / 255.0)

_BOX_KEYS = ("boxes", *REGION_KEYS)


def _with_boxes(target: Target, fn: Callable[[torch.Tensor], torch.Tensor]) -> Target:
    """``target`` with ``fn`` applied to ``boxes`` and the regions (every coordinate entry)."""
    out = dict(target)
    for key in _BOX_KEYS:
        if key in out:
            out[key] = fn(out[key])
    return out


def select_boxes(target: Target, keep: torch.Tensor) -> Target:
    """``target`` with only the boxes ``keep``, in every per-box entry at once.

    Parameters
    ----------
    target : dict
    keep : bool Tensor (M,) or int64 Tensor of box positions

    Returns
    -------
    dict
        Every tensor entry with a leading dimension, except the regions, indexed by ``keep``;
        the regions and everything else passed through.

    Raises
    ------
    ValueError
        A per-box entry whose length is not M: an image-level tensor would otherwise be cut as if
        it held one row per box (such an entry belongs outside the target, or in
        :data:`REGION_KEYS` if it is a region).
    """
    m = len(target["boxes"])
    out = dict(target)
    for key, value in target.items():
        if key in REGION_KEYS or not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        if value.shape[0] != m:
            raise ValueError(f"target[{key!r}] has {value.shape[0]} rows for {m} boxes; per-box entries need one "
                             f"per box (regions go in {REGION_KEYS})")
        out[key] = value[keep]
    return out


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror the image left-right and move ``boxes``, ``dontcare`` and ``ignore`` with it.

    Parameters
    ----------
    image : Tensor (C, H, W)
    target : dict with ``boxes`` (M, 4) and optionally ``dontcare`` (D, 4) and ``ignore``
        (R, 4), xyxy

    Returns
    -------
    image, target
        New objects; ``x1' = W - x2``, ``x2' = W - x1``; every other entry, ``box_index``
        included, is passed through unchanged.
    """
    width = image.shape[-1]

    def flip(boxes: torch.Tensor) -> torch.Tensor:
        return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)

    return image.flip(-1), _with_boxes(target, flip)


def resize(image: torch.Tensor, target: Target, size: tuple[int, int]) -> tuple[torch.Tensor, Target]:
    """Resize to ``size = (H', W')`` (bilinear, antialiased) and scale the boxes with it.

    Parameters
    ----------
    image : Tensor (C, H, W), float
    target : dict with ``boxes`` (M, 4) and optionally ``dontcare`` (D, 4) and ``ignore`` (R, 4)
    size : (int, int)

    Returns
    -------
    image (C, H', W'), target
        x coordinates times ``W'/W``, y coordinates times ``H'/H``; ``box_index`` and the
        per-box annotation fields (``difficulty``, ``height``, ... of the original label) are
        unchanged.
    """
    new_h, new_w = int(size[0]), int(size[1])
    if new_h < 1 or new_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    old_h, old_w = image.shape[-2:]
    out = F.interpolate(
        image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )[0]
    factor = torch.tensor([new_w / old_w, new_h / old_h, new_w / old_w, new_h / old_h])

    def move(boxes: torch.Tensor) -> torch.Tensor:
        return boxes * factor.to(boxes.dtype)

    return out, _with_boxes(target, move)


def scale(image: torch.Tensor, target: Target, factor: float) -> tuple[torch.Tensor, Target]:
    """Resize by ``factor`` (both sides, rounded to whole pixels); see :func:`resize`."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    h, w = image.shape[-2:]
    return resize(image, target, (max(1, round(h * factor)), max(1, round(w * factor))))


def zoom_out(
    image: torch.Tensor,
    target: Target,
    *,
    canvas_size: tuple[int, int],
    top: int,
    left: int,
    fill: Sequence[float] = SSD_MEAN,
) -> tuple[torch.Tensor, Target]:
    """Place the image on a larger canvas of colour ``fill``, its corner at ``(left, top)``.

    Parameters
    ----------
    image : Tensor (C, H, W)
    target : dict
    canvas_size : (int, int)
        ``(H', W')``, at least ``(H, W)``.
    top, left : int
        Offset of the image on the canvas, ``0 <= top <= H' - H``, ``0 <= left <= W' - W``.
    fill : sequence of C floats (or of 3 for a greyscale image, whose canvas takes their mean)

    Returns
    -------
    image (C, H', W'), target
        Boxes and regions shifted by ``(left, top)``; no box is lost.
    """
    c, h, w = image.shape
    canvas_h, canvas_w = int(canvas_size[0]), int(canvas_size[1])
    if not (0 <= top <= canvas_h - h and 0 <= left <= canvas_w - w):
        raise ValueError(f"a {h} x {w} image at (top {top}, left {left}) does not fit a {canvas_h} x {canvas_w} canvas")
    colour = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(-1)
    if colour.numel() != c:
        if c != 1:
            raise ValueError(f"fill has {colour.numel()} values for {c} channels")
        colour = colour.mean(0, keepdim=True)
    canvas = colour.reshape(c, 1, 1).expand(c, canvas_h, canvas_w).clone()
    canvas[:, top : top + h, left : left + w] = image
    shift = torch.tensor([left, top, left, top], dtype=torch.float64)
    return canvas, _with_boxes(target, lambda boxes: boxes + shift.to(boxes.dtype))


def crop(
    image: torch.Tensor, target: Target, *, top: int, left: int, height: int, width: int
) -> tuple[torch.Tensor, Target]:
    """Cut out ``[left, left + width) x [top, top + height)``, keeping the boxes centred in it.

    Parameters
    ----------
    image : Tensor (C, H, W)
    target : dict
    top, left, height, width : int
        The crop, inside the image.

    Returns
    -------
    image (C, height, width), target
        The boxes whose centre lies strictly inside the crop (SSD's rule, as torchvision's
        ``RandomIoUCrop``), in every per-box entry (:func:`select_boxes`), shifted by
        ``(-left, -top)`` and clipped to ``[0, width] x [0, height]``; the regions shifted and
        clipped alike, those with nothing left inside dropped.
    """
    h, w = image.shape[-2:]
    if not (0 <= top and 0 <= left and height >= 1 and width >= 1 and top + height <= h and left + width <= w):
        raise ValueError(f"crop (top {top}, left {left}, {height} x {width}) is not inside a {h} x {w} image")
    # A copy, not a view: a view would keep (and a DataLoader worker would send) the whole canvas.
    out_image = image[..., top : top + height, left : left + width].clone()
    boxes = target["boxes"]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (left < cx) & (cx < left + width) & (top < cy) & (cy < top + height)
    out = select_boxes(target, inside)

    def move(b: torch.Tensor) -> torch.Tensor:
        b = b - torch.tensor([left, top, left, top], dtype=b.dtype)
        x = b[:, 0::2].clamp(0, width)
        y = b[:, 1::2].clamp(0, height)
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)

    out = _with_boxes(out, move)
    for key in REGION_KEYS:
        if key in out:
            r = out[key]
            out[key] = r[(r[:, 2] > r[:, 0]) & (r[:, 3] > r[:, 1])]
    return out_image, out


def photometric_distort(
    image: torch.Tensor,
    *,
    brightness: float | None = None,
    contrast: float | None = None,
    saturation: float | None = None,
    hue: float | None = None,
    contrast_first: bool = True,
    permutation: Sequence[int] | None = None,
) -> torch.Tensor:
    """SSD's photometric distortion of a float image in [0, 1] with the given factors.

    In the order of torchvision's ``RandomPhotometricDistort``: brightness, contrast (here when
    ``contrast_first``), saturation, hue, contrast (here otherwise), channel permutation; a
    factor of None skips its step. Boxes are not involved: the distortion moves no pixel.
    """
    if brightness is not None:
        image = TF.adjust_brightness(image, brightness)
    if contrast is not None and contrast_first:
        image = TF.adjust_contrast(image, contrast)
    if saturation is not None:
        image = TF.adjust_saturation(image, saturation)
    if hue is not None:
        image = TF.adjust_hue(image, hue)
    if contrast is not None and not contrast_first:
        image = TF.adjust_contrast(image, contrast)
    if permutation is not None:
        image = TF.permute_channels(image, list(permutation))
    return image


# ---------------------------------------------------------------------------------------------
# random transforms, each drawing from its own generator
# ---------------------------------------------------------------------------------------------
def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    # torchvision's ColorJitter._generate_value, from ``generator``.
    return torch.empty(1).uniform_(low, high, generator=generator).item()


def _check_range(name: str, values: Sequence[float]) -> tuple[float, float]:
    if len(values) != 2 or not values[0] <= values[1]:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {values}")
    return float(values[0]), float(values[1])


class Compose:
    """Apply ``(image, target)`` transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    """:func:`hflip` with probability ``p``, drawn from ``generator`` (seeded randomness).

    Parameters
    ----------
    p : float
    generator : torch.Generator, optional
        Without one, torch's global generator is used (seeded per worker by the DataLoader).
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip(image, target)
        return image, target


class RandomScale:
    """:func:`scale` by a factor drawn uniformly from ``[low, high]``.

    Parameters
    ----------
    low, high : float
    generator : torch.Generator, optional
    """

    def __init__(
        self, low: float = 0.8, high: float = 1.25, *, generator: torch.Generator | None = None
    ) -> None:
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got {low}, {high}")
        self.low, self.high = low, high
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        u = torch.rand((), generator=self.generator).item()
        return scale(image, target, self.low + (self.high - self.low) * u)


class RandomPhotometricDistort:
    """:func:`photometric_distort` with factors drawn as torchvision's ``RandomPhotometricDistort``.

    Each of brightness, contrast, saturation and hue is applied with probability ``p``, its
    factor uniform in its range; contrast comes before or after saturation and hue with
    probability 1/2; the channels are permuted with probability ``p``.

    Parameters
    ----------
    brightness, contrast, saturation, hue : (float, float)
        torchvision's defaults: (0.875, 1.125), (0.5, 1.5), (0.5, 1.5), (-0.05, 0.05).
    p : float
    generator : torch.Generator, optional
    """

    def __init__(
        self,
        brightness: Sequence[float] = (0.875, 1.125),
        contrast: Sequence[float] = (0.5, 1.5),
        saturation: Sequence[float] = (0.5, 1.5),
        hue: Sequence[float] = (-0.05, 0.05),
        p: float = 0.5,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.ranges = {name: _check_range(name, r) for name, r in
                       (("brightness", brightness), ("contrast", contrast), ("saturation", saturation), ("hue", hue))}
        if not -0.5 <= self.ranges["hue"][0] <= self.ranges["hue"][1] <= 0.5:
            raise ValueError(f"hue must lie in [-0.5, 0.5], got {hue}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        g = self.generator
        # torchvision's draws in its order (each factor's coin then its value, the contrast
        # position, the permutation's coin then the permutation), so that a generator seeded
        # like torch's global one gives torchvision's result.
        factors = {name: (_uniform(low, high, g) if torch.rand(1, generator=g).item() < self.p else None)
                   for name, (low, high) in self.ranges.items()}
        contrast_first = torch.rand((), generator=g).item() < 0.5
        permutation = None
        if torch.rand(1, generator=g).item() < self.p:
            permutation = torch.randperm(image.shape[-3], generator=g).tolist()
        return photometric_distort(image, **factors, contrast_first=contrast_first, permutation=permutation), target


class RandomZoomOut:
    """:func:`zoom_out` with probability ``p`` onto a canvas ``r`` times the image's size.

    ``r`` is uniform in ``side_range`` and the image's position uniform on the canvas (SSD's
    "expansion", sec. 3.6, which makes small objects; torchvision's ``RandomZoomOut``).

    Parameters
    ----------
    fill : sequence of float
        The canvas colour, :data:`SSD_MEAN` by default.
    side_range : (float, float)
        torchvision's (1, 4).
    p : float
    generator : torch.Generator, optional
    """

    def __init__(
        self,
        fill: Sequence[float] = SSD_MEAN,
        side_range: Sequence[float] = (1.0, 4.0),
        p: float = 0.5,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        low, high = _check_range("side_range", side_range)
        if low < 1.0:
            raise ValueError(f"side_range must be >= 1, got {side_range}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.fill, self.side_range, self.p = tuple(fill), (low, high), p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        g = self.generator
        if torch.rand(1, generator=g).item() >= self.p:
            return image, target
        h, w = image.shape[-2:]
        # torchvision's draws and float32 arithmetic, so that the sizes round as there.
        low, high = self.side_range
        r = low + torch.rand(1, generator=g) * (high - low)
        canvas_h, canvas_w = int(h * r), int(w * r)
        u = torch.rand(2, generator=g)
        left, top = int((canvas_w - w) * u[0]), int((canvas_h - h) * u[1])
        return zoom_out(image, target, canvas_size=(canvas_h, canvas_w), top=top, left=left, fill=self.fill)


class RandomIoUCrop:
    """SSD's random crop (sec. 2.2): a patch overlapping some box by at least a drawn IoU.

    A minimum IoU is drawn from ``sampler_options`` (1.0: keep the whole image); then up to
    ``trials`` patches of ``[min_scale, max_scale]`` times each side, anywhere in the image, are
    tried until one holds the centre of at least one box and overlaps one of those by that IoU;
    if none does, another minimum is drawn. The patch is cut out with :func:`crop`. This is
    torchvision's ``RandomIoUCrop`` (parameters and order of draws), except for the aspect
    check, see ``input_aspect``. An image without boxes is returned as it is.

    Parameters
    ----------
    min_scale, max_scale : float
        torchvision's 0.3 and 1.
    min_aspect_ratio, max_aspect_ratio : float
        Bounds of the patch's aspect ratio (w / h) divided by ``input_aspect``: how much the
        resize to the network input will stretch it. torchvision's 0.5 and 2.
    sampler_options : sequence of float
        torchvision's (0, 0.1, 0.3, 0.5, 0.7, 0.9, 1).
    trials : int
        torchvision's 40.
    input_aspect : float, optional
        W / H of the network input; None: the image's own. torchvision bounds the absolute aspect
        ratio, which is this with ``input_aspect = 1``, SSD300's square input; for a KITTI-shaped
        input (3.25 : 1) it would pass only patches that the resize stretches 1.6 times or more.
    generator : torch.Generator, optional
    """

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        trials: int = 40,
        *,
        input_aspect: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not (0 < min_scale <= max_scale <= 1 and 0 < min_aspect_ratio <= max_aspect_ratio and trials >= 1):
            raise ValueError("need 0 < min_scale <= max_scale <= 1, 0 < min_aspect_ratio <= max_aspect_ratio, "
                             "trials >= 1")
        if not sampler_options or not any(o >= 1.0 for o in sampler_options):
            # Without the keep-the-image option an image whose boxes no patch can hold would loop forever.
            raise ValueError(f"sampler_options must include 1.0 (keep the image), got {sampler_options}")
        if input_aspect is not None and not input_aspect > 0:
            raise ValueError(f"input_aspect must be > 0, got {input_aspect}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.min_aspect_ratio, self.max_aspect_ratio = float(min_aspect_ratio), float(max_aspect_ratio)
        self.options, self.trials = tuple(float(o) for o in sampler_options), int(trials)
        self.input_aspect = input_aspect
        self.generator = generator

    def params(self, image: torch.Tensor, target: Target) -> dict[str, int] | None:
        """The crop ``(top, left, height, width)`` drawn for this item, or None for no crop."""
        g = self.generator
        boxes = target["boxes"]
        if len(boxes) == 0:
            return None
        h, w = image.shape[-2:]
        reference = w / h if self.input_aspect is None else self.input_aspect
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        while True:
            min_iou = self.options[int(torch.randint(len(self.options), (1,), generator=g))]
            if min_iou >= 1.0:
                return None
            for _ in range(self.trials):
                # torchvision's draws and float32 arithmetic, so that the sizes round as there.
                r = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(2, generator=g)
                new_w, new_h = int(w * r[0]), int(h * r[1])
                if new_h < 1 or not self.min_aspect_ratio <= new_w / new_h / reference <= self.max_aspect_ratio:
                    continue
                u = torch.rand(2, generator=g)
                left, top = int((w - new_w) * u[0]), int((h - new_h) * u[1])
                inside = (left < cx) & (cx < left + new_w) & (top < cy) & (cy < top + new_h)
                if not inside.any():
                    continue
                patch = torch.tensor([[left, top, left + new_w, top + new_h]], dtype=boxes.dtype)
                if box_iou(boxes[inside], patch).max() < min_iou:
                    continue
                return {"top": top, "left": left, "height": new_h, "width": new_w}

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        params = self.params(image, target)
        return (image, target) if params is None else crop(image, target, **params)


def ssd_augmentation(
    *,
    hflip: float = 0.5,
    fill: Sequence[float] = SSD_MEAN,
    input_aspect: float | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> Compose:
    """SSD's training augmentation: photometric distortion, zoom-out, IoU crop, horizontal flip.

    torchvision's ``references/detection`` ``"ssd"`` preset, with the parameters above.

    Parameters
    ----------
    hflip : float
        Flip probability.
    fill : sequence of float
        Zoom-out canvas colour.
    input_aspect : float, optional
        W / H of the network input, for the crop's aspect check (:class:`RandomIoUCrop`).
    generators : four torch.Generators, optional
        For the distortion, zoom-out, crop and flip in that order: one each, so that the crop's
        varying number of draws does not shift the flip's.
    """
    g = list(generators) if generators is not None else [None] * 4
    if len(g) != 4:
        raise ValueError(f"need four generators (distortion, zoom-out, crop, flip), got {len(g)}")
    return Compose([
        RandomPhotometricDistort(generator=g[0]),
        RandomZoomOut(fill, generator=g[1]),
        RandomIoUCrop(input_aspect=input_aspect, generator=g[2]),
        RandomHorizontalFlip(hflip, generator=g[3]),
    ])


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------
def collate_detection(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader ``collate_fn``: images and targets as lists (images differ in size)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
