"""A small KITTI-format detection set of Fashion-MNIST scenes, for CPU runs of sec. 3.3.

The paper's detection experiment (Saxena, Tuzel & DeCoste, NeurIPS 2019, sec. 3.3, Figure 3)
shows the per-box curriculum learning unoccluded boxes first, then partly and finally heavily
occluded ones. :func:`write_synthetic_kitti` writes a data set in KITTI's on-disk layout whose
boxes span exactly those factors, in controlled amounts, so that the same loaders and the same
devkit evaluation run on a 2-core CPU::

    ROOT/training/image_2/000000.png       RGB, 128 x 256 by default
    ROOT/training/label_2/000000.txt       15-column KITTI label lines
    ROOT/training/truth.json               the labels before corruption
    ROOT/ImageSets/{train,val,trainval}.txt

Objects. Three Fashion-MNIST classes stand in for KITTI's three evaluated classes, chosen for
shapes that suit the KITTI box aspect ratios, so the devkit's per-class rules (Car at IoU 0.7,
the others at 0.5) apply unchanged: **Car = Sneaker** (class 7, boxes 1.4-2.0 times as wide as
tall), **Pedestrian = Trouser** (class 1, 0.35-0.5), **Cyclist = Bag** (class 8, 0.75-1.05).
Each object is a training image of its class, cropped to its ink, resized to the box and tinted
with a random colour; its pixels are those above 50/255 after resizing.

Scene geometry follows a forward-looking camera: box heights are log-uniform between
``min_box_height`` and ``max_box_height`` (12-96 px by default, so about 14% fall below
``dontcare_below`` = 16 px, 22% lie in [16, 25), 23% in [25, 40) and 42% at 40 px or more);
a box stands on the ground, its bottom ``0.75-0.95`` box heights below the horizon at 30% of the
image height, so nearer (taller) objects stand lower and are drawn later, over farther ones.

* **Occlusion** is measured, not drawn at random: the fraction of an object's in-image pixels
  covered by objects drawn after it gives the level 0 (< 5% hidden), 1 (5-40%), 2 (40-80%) or
  3 ("unknown" in KITTI; 80% or more).
* **Truncation**: with probability ``truncation_prob`` an object is placed across the left or
  right border with 10% to ``max_truncation`` of its width outside; the label's truncation is
  the fraction of the un-clipped box area outside the image (bottom clipping counts too) and
  the box is clipped to the image.
* **DontCare**: every object shorter than ``dontcare_below`` pixels is written as a DontCare
  region instead of an object, and with probability ``crowd_prob`` an image gets a crowd of
  3-6 small overlapping objects near the horizon covered by one DontCare region.

Corruption (for measuring sigma as a detector of bad annotations). Among the labelled objects
of the *train* split, exactly ``round(flip_fraction * n)`` get another of the three classes
(uniformly), ``round(missing_fraction * n)`` others are deleted from the label file and
``round(shift_fraction * n)`` others have their box moved by more than half its width or height
(same size, inside the image: the annotator's box missed the object); ``round(spurious_fraction
* n)`` boxes of a random class are added on background (touching no object and no DontCare
region) of random train images, at the end of their label files. The images are unchanged and
the validation split stays clean. ``training/truth.json`` holds, for every image, the true type
of every written line (``null`` for a spurious one), its kind of error (``kinds``: ``clean``,
``flip``, ``shift`` or ``spurious``), its true box (``true_boxes``: the box before the shift,
``null`` for a spurious one) and the deleted lines with their original positions; the label
files alone do not reveal the changes. :func:`box_error_kinds` reads the kinds per box. With the same seed, the scenes are
identical whatever the corruption, because corruption draws from its own generator.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed``: the same seed writes
byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.data.idx import load_fashion_mnist
from dataparams.detection.kitti import (
    DEFAULT_CLASSES,
    DIFFICULTIES,
    KittiDetection,
    KittiObject,
    box_difficulty,
    format_label_line,
    read_label_file,
    read_split_file,
    write_split_file,
)

__all__ = [
    "BOX_ERROR_KINDS",
    "OCCLUSION_THRESHOLDS",
    "SYNTHETIC_CLASS_SOURCES",
    "KittiSetStatistics",
    "SyntheticKittiConfig",
    "SyntheticKittiSet",
    "describe_kitti_set",
    "box_error_kinds",
    "flipped_box_mask",
    "occlusion_level",
    "class_pools",
    "read_truth",
    "split_ids",
    "synthetic_scenes",
    "write_synthetic_kitti",
]

# KITTI class -> Fashion-MNIST class index (Sneaker, Trouser, Bag).
SYNTHETIC_CLASS_SOURCES: dict[str, int] = {"Car": 7, "Pedestrian": 1, "Cyclist": 8}
# Hidden-pixel fractions separating occlusion levels 0 | 1 | 2 | 3.
OCCLUSION_THRESHOLDS: tuple[float, float, float] = (0.05, 0.40, 0.80)

_ASPECT = {"Car": (1.4, 2.0), "Pedestrian": (0.35, 0.5), "Cyclist": (0.75, 1.05)}  # width / height
_DIMENSIONS = {"Car": (1.53, 1.63, 3.88), "Pedestrian": (1.76, 0.66, 0.84), "Cyclist": (1.74, 0.60, 1.76)}
_HORIZON = 0.30  # fraction of the image height
_INK = 30  # a Fashion-MNIST pixel above this belongs to the object when cropping
_MASK = 50  # after resizing, a pixel above this is the object's


@dataclass(frozen=True)
class SyntheticKittiConfig:
    """What :func:`write_synthetic_kitti` writes; see the module docstring for the rules.

    Attributes
    ----------
    num_images : int
    height, width : int
        Image size in pixels.
    val_fraction : float
        Share of images in ``ImageSets/val.txt``; the rest are in ``train.txt``.
    min_objects, max_objects : int
        Objects per image (uniform, inclusive), crowds not counted.
    class_probs : (float, float, float)
        Probabilities of Car, Pedestrian, Cyclist.
    min_box_height, max_box_height : float
        Range of the log-uniform box heights, pixels.
    dontcare_below : float
        Objects shorter than this are written as DontCare regions.
    crowd_prob : float
        Probability that an image has a crowd under one DontCare region.
    truncation_prob, max_truncation : float
        Probability that an object is placed across the left/right border, and the largest
        share of its width outside.
    flip_fraction, missing_fraction, shift_fraction : float
        Share of the train split's labelled objects whose class is flipped / which are deleted /
        whose box is moved by more than half its size.
    spurious_fraction : float
        Boxes added on background, as a share of the train split's labelled objects.
    seed : int
    """

    num_images: int = 800
    height: int = 128
    width: int = 256
    val_fraction: float = 0.5
    min_objects: int = 2
    max_objects: int = 7
    class_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)
    min_box_height: float = 12.0
    max_box_height: float = 96.0
    dontcare_below: float = 16.0
    crowd_prob: float = 0.15
    truncation_prob: float = 0.15
    max_truncation: float = 0.7
    flip_fraction: float = 0.0
    missing_fraction: float = 0.0
    shift_fraction: float = 0.0
    spurious_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"images must be at least 32 x 32, got {self.height} x {self.width}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1], got {self.val_fraction}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        probs = np.asarray(self.class_probs, float)
        if probs.shape != (3,) or np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"class_probs must be 3 probabilities summing to 1, got {self.class_probs}")
        if not 4 <= self.min_box_height <= self.max_box_height <= self.height:
            raise ValueError(
                f"need 4 <= min_box_height <= max_box_height <= height, got "
                f"{self.min_box_height}, {self.max_box_height}, {self.height}"
            )
        for name in ("crowd_prob", "truncation_prob", "flip_fraction", "missing_fraction", "shift_fraction",
                     "spurious_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.1 < self.max_truncation < 1.0:
            raise ValueError(f"max_truncation must lie in (0.1, 1), got {self.max_truncation}")
        if self.flip_fraction + self.missing_fraction + self.shift_fraction > 1.0:
            raise ValueError("flip_fraction + missing_fraction + shift_fraction must not exceed 1")


@dataclass(frozen=True)
class SyntheticKittiSet:
    """What was written: the root, the split ids and the corruption counts."""

    root: Path
    train_ids: list[str]
    val_ids: list[str]
    num_objects: int  # labelled objects (not DontCare), before deletion
    num_flipped: int
    num_deleted: int
    num_shifted: int = 0
    num_spurious: int = 0


def occlusion_level(hidden_fraction: float) -> int:
    """KITTI occlusion level of an object with this fraction of its pixels hidden (0-3)."""
    return int(np.searchsorted(OCCLUSION_THRESHOLDS, hidden_fraction, side="right"))


# ---------------------------------------------------------------------------------------------
# scene drawing
# ---------------------------------------------------------------------------------------------
@dataclass
class _Placed:
    type: str  # a KITTI class, or "" for a crowd member
    x0: int
    y0: int
    w: int
    h: int
    sprite: np.ndarray  # (h, w) float in [0, 1]
    colour: np.ndarray  # (3,)
    crowd: int = -1  # crowd id, -1 for a single object


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float (H, W, 3) in [0, 255]: coloured noise at two scales, a lighter sky, a darker road.

    No per-pixel noise: it would make the PNG files three times slower to write and larger,
    and the objects have to be told from texture at 4-16 px scales anyway.
    """
    from PIL import Image

    texture = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((16, 0.35), (4, 0.15)):
        coarse = rng.uniform(0, 255, size=(max(2, height // cell), max(2, width // cell), 3)).astype(np.uint8)
        texture += weight * np.asarray(
            Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32
        )
    rows = np.arange(height, dtype=np.float32)[:, None, None] / height
    sky_road = np.where(rows < _HORIZON, 60.0, -40.0 * (rows - _HORIZON))
    return np.clip(texture + 60.0 + sky_road, 0, 255)


def _sprite(rng: np.random.Generator, pool: np.ndarray, w: int, h: int) -> np.ndarray:
    """(h, w) float in [0, 1]: a random image of ``pool`` (K, 28, 28) cropped to its ink."""
    from PIL import Image

    img = pool[rng.integers(len(pool))]
    rows, cols = np.flatnonzero(img.max(1) > _INK), np.flatnonzero(img.max(0) > _INK)
    if len(rows) and len(cols):
        img = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR), np.float32) / 255.0


def _place_object(
    rng: np.random.Generator, cfg: SyntheticKittiConfig, name: str, pool: np.ndarray
) -> _Placed:
    h = int(round(math.exp(rng.uniform(math.log(cfg.min_box_height), math.log(cfg.max_box_height)))))
    w = max(2, int(round(h * rng.uniform(*_ASPECT[name]))))
    if rng.random() < cfg.truncation_prob:
        outside = int(round(w * rng.uniform(0.1, cfg.max_truncation)))
        x0 = -outside if rng.random() < 0.5 else cfg.width - w + outside
    else:
        x0 = int(rng.integers(0, max(1, cfg.width - w + 1)))
    bottom = _HORIZON * cfg.height + h * rng.uniform(0.75, 0.95)
    y0 = int(round(bottom)) - h
    colour = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
    return _Placed(name, x0, y0, w, h, _sprite(rng, pool, w, h), colour)


def _place_crowd(
    rng: np.random.Generator, cfg: SyntheticKittiConfig, pools: dict[str, np.ndarray], crowd: int
) -> list[_Placed]:
    cx = rng.uniform(0.15, 0.85) * cfg.width
    members = []
    for _ in range(int(rng.integers(3, 7))):
        name = DEFAULT_CLASSES[int(rng.choice(3, p=[0.2, 0.6, 0.2]))]
        h = int(rng.integers(9, max(10, int(cfg.dontcare_below * 1.4))))
        w = max(2, int(round(h * rng.uniform(*_ASPECT[name]))))
        x0 = int(round(cx + rng.normal(0, 1.2 * h))) - w // 2
        y0 = int(round(_HORIZON * cfg.height + h * rng.uniform(0.6, 0.9))) - h
        colour = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
        members.append(_Placed(name, x0, y0, w, h, _sprite(rng, pools[name], w, h), colour, crowd))
    return members


def _clip(p: _Placed, height: int, width: int) -> tuple[int, int, int, int]:
    return max(p.x0, 0), max(p.y0, 0), min(p.x0 + p.w, width), min(p.y0 + p.h, height)


def _render(placed: list[_Placed], background: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Draw in list order; return the uint8 image and each object's in-image and visible pixels."""
    height, width = background.shape[:2]
    image = background
    owner = np.full((height, width), -1, np.int32)
    in_image = []
    for k, p in enumerate(placed):
        x1, y1, x2, y2 = _clip(p, height, width)
        if x2 <= x1 or y2 <= y1:
            in_image.append(0)
            continue
        patch = p.sprite[y1 - p.y0 : y2 - p.y0, x1 - p.x0 : x2 - p.x0]
        mask = patch > _MASK / 255.0
        in_image.append(int(mask.sum()))
        region = image[y1:y2, x1:x2]
        region[mask] = (patch[mask, None] * p.colour[None, :] * 255.0).clip(0, 255)
        owner[y1:y2, x1:x2][mask] = k
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(placed)).tolist()
    return image.round().astype(np.uint8), in_image, visible


def _label_object(
    p: _Placed, cfg: SyntheticKittiConfig, hidden: float, rng: np.random.Generator
) -> KittiObject:
    x1, y1, x2, y2 = _clip(p, cfg.height, cfg.width)
    truncation = 1.0 - (x2 - x1) * (y2 - y1) / float(p.w * p.h)
    # A pinhole camera with KITTI's focal length to width ratio (721 / 1242), horizon at the
    # principal point, so the 3D fields agree with the box.
    focal = 0.58 * cfg.width
    dims = tuple(d * rng.uniform(0.9, 1.1) for d in _DIMENSIONS[p.type])
    z = focal * dims[0] / p.h
    x = (p.x0 + p.w / 2 - cfg.width / 2) * z / focal
    y = (p.y0 + p.h - _HORIZON * cfg.height) * z / focal
    ry = rng.uniform(-math.pi, math.pi)
    alpha = math.remainder(ry - math.atan2(x, z), 2 * math.pi)
    return KittiObject(
        type=p.type,
        truncated=round(truncation, 2),
        occluded=occlusion_level(hidden),
        alpha=alpha,
        bbox=(float(x1), float(y1), float(x2), float(y2)),
        dimensions=dims,  # type: ignore[arg-type]
        location=(x, y, z),
        rotation_y=ry,
    )


def _dontcare(box: tuple[float, float, float, float]) -> KittiObject:
    return KittiObject.from_box("DontCare", box, truncated=-1.0, occluded=-1)


def _scene(
    rng: np.random.Generator, cfg: SyntheticKittiConfig, pools: dict[str, np.ndarray]
) -> tuple[np.ndarray, list[KittiObject]]:
    placed: list[_Placed] = []
    if rng.random() < cfg.crowd_prob:
        placed += _place_crowd(rng, cfg, pools, crowd=0)
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        name = DEFAULT_CLASSES[int(rng.choice(3, p=cfg.class_probs))]
        placed.append(_place_object(rng, cfg, name, pools[name]))
    # Far (higher bottom edge) first: nearer objects are drawn over them. Crowds stand farthest.
    placed.sort(key=lambda p: (p.crowd < 0, p.y0 + p.h))
    image, in_image, visible = _render(placed, _background(rng, cfg.height, cfg.width))

    objects: list[KittiObject] = []
    regions: list[tuple[float, float, float, float]] = []
    crowd_boxes: list[tuple[int, int, int, int]] = []
    for p, total, seen in zip(placed, in_image, visible):
        x1, y1, x2, y2 = _clip(p, cfg.height, cfg.width)
        if total == 0 or x2 - x1 < 2 or y2 - y1 < 2:
            continue  # nothing of it is in the image
        if p.crowd >= 0:
            crowd_boxes.append((x1, y1, x2, y2))
        elif p.h < cfg.dontcare_below:
            regions.append((float(x1), float(y1), float(x2), float(y2)))
        else:
            objects.append(_label_object(p, cfg, 1.0 - seen / total, rng))
    if crowd_boxes:
        b = np.array(crowd_boxes)
        regions.append(
            (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        )
    # KITTI files list the DontCare regions after the objects.
    return image, objects + [_dontcare(r) for r in regions]


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def class_pools(fashion_mnist_root: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """The Fashion-MNIST training images each synthetic class draws its sprites from, by class name."""
    split = load_fashion_mnist(fashion_mnist_root, train=True)
    images = split.images[..., 0]
    return {name: images[split.targets == k] for name, k in SYNTHETIC_CLASS_SOURCES.items()}


def synthetic_scenes(
    cfg: SyntheticKittiConfig, pools: dict[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray, list[KittiObject]]]:
    """``(image_id, uint8 image (H, W, 3), objects then DontCare regions)`` of every scene, in id
    order, from the scene stream of ``cfg.seed``: what every writer of the synthetic set draws."""
    scene_rng = np.random.default_rng([cfg.seed, 0])
    for i in range(cfg.num_images):
        image, objects = _scene(scene_rng, cfg, pools)
        yield f"{i:06d}", image, objects


def split_ids(cfg: SyntheticKittiConfig) -> tuple[list[str], list[str]]:
    """``(train_ids, val_ids)``, each sorted, from the split stream of ``cfg.seed``."""
    ids = [f"{i:06d}" for i in range(cfg.num_images)]
    order = np.random.default_rng([cfg.seed, 1]).permutation(cfg.num_images)
    n_val = int(round(cfg.val_fraction * cfg.num_images))
    return sorted(ids[i] for i in order[n_val:]), sorted(ids[i] for i in order[:n_val])


def write_synthetic_kitti(
    root: str | os.PathLike,
    config: SyntheticKittiConfig | None = None,
    *,
    fashion_mnist_root: str | os.PathLike | None = None,
) -> SyntheticKittiSet:
    """Write a KITTI-layout data set of Fashion-MNIST scenes under ``root``.

    Parameters
    ----------
    root : path-like
        Created if needed; existing files of the same names are overwritten.
    config : SyntheticKittiConfig, optional
        Defaults: 800 images of 128 x 256, half of them in ``val``, no corruption.
    fashion_mnist_root : path-like, optional
        Folder of the Fashion-MNIST IDX files (default: where
        :func:`dataparams.data.load_fashion_mnist` looks).

    Returns
    -------
    SyntheticKittiSet

    Raises
    ------
    DatasetNotFoundError
        If Fashion-MNIST is not installed.
    """
    from PIL import Image

    cfg = config if config is not None else SyntheticKittiConfig()
    root = Path(root)
    image_dir = root / "training" / "image_2"
    label_dir = root / "training" / "label_2"
    sets_dir = root / "ImageSets"
    for d in (image_dir, label_dir, sets_dir):
        d.mkdir(parents=True, exist_ok=True)
    pools = class_pools(fashion_mnist_root)
    # Separate streams: scenes, split and corruption do not shift one another.
    corrupt_rng = np.random.default_rng([cfg.seed, 2])

    ids = [f"{i:06d}" for i in range(cfg.num_images)]
    labels: dict[str, list[KittiObject]] = {}
    for image_id, image, objects in synthetic_scenes(cfg, pools):
        Image.fromarray(image).save(image_dir / f"{image_id}.png", compress_level=1)
        labels[image_id] = objects

    train_ids, val_ids = split_ids(cfg)
    write_split_file(sets_dir / "train.txt", train_ids)
    write_split_file(sets_dir / "val.txt", val_ids)
    write_split_file(sets_dir / "trainval.txt", ids)

    # Corruption: exact counts among the train split's labelled objects.
    eligible = [(i, k) for i in train_ids for k, o in enumerate(labels[i]) if o.type != "DontCare"]
    n_flip = int(round(cfg.flip_fraction * len(eligible)))
    n_delete = int(round(cfg.missing_fraction * len(eligible)))
    n_shift = int(round(cfg.shift_fraction * len(eligible)))
    chosen = corrupt_rng.permutation(len(eligible))
    flips = {eligible[j]: None for j in chosen[:n_flip]}
    deletions = {eligible[j] for j in chosen[n_flip : n_flip + n_delete]}
    for key in flips:
        others = [c for c in DEFAULT_CLASSES if c != labels[key[0]][key[1]].type]
        flips[key] = others[int(corrupt_rng.integers(len(others)))]
    # Drawn after the flips, so that a set without shifts or spurious boxes is written as before.
    shifts: dict[tuple[str, int], tuple[float, float, float, float]] = {}
    for j in chosen[n_flip + n_delete :]:
        if len(shifts) == n_shift:
            break
        box = _shifted_box(labels[eligible[j][0]][eligible[j][1]].bbox, cfg.height, cfg.width, corrupt_rng)
        if box is not None:  # a box too large to move by half its size inside the image stays
            shifts[eligible[j]] = box
    spurious = _spurious_boxes(cfg, train_ids, labels, int(round(cfg.spurious_fraction * len(eligible))),
                               corrupt_rng)

    truth: dict[str, Any] = {
        "description": "true type, kind of error (clean, flip, shift, spurious) and true box of every written label "
                       "line, and the deleted lines at their original 0-based positions",
        "config": asdict(cfg),
        "class_sources": dict(SYNTHETIC_CLASS_SOURCES),
        "images": {},
    }
    num_objects = sum(1 for objs in labels.values() for o in objs if o.type != "DontCare")
    for image_id in ids:
        written, true_types, kinds, true_boxes, deleted = [], [], [], [], []
        for k, obj in enumerate(labels[image_id]):
            if (image_id, k) in deletions:
                deleted.append({"line": k, "label": format_label_line(obj)})
                continue
            true_types.append(obj.type)
            true_boxes.append(list(obj.bbox))
            new_type, new_box = flips.get((image_id, k)), shifts.get((image_id, k))
            kinds.append("flip" if new_type else "shift" if new_box else "clean")
            written.append(replace(obj, type=new_type) if new_type else replace(obj, bbox=new_box) if new_box else obj)
        for obj in spurious.get(image_id, []):
            written.append(obj)
            true_types.append(None)
            kinds.append("spurious")
            true_boxes.append(None)
        text = "".join(format_label_line(o) + "\n" for o in written)
        (label_dir / f"{image_id}.txt").write_text(text, encoding="utf-8")
        truth["images"][image_id] = {"true_types": true_types, "kinds": kinds, "true_boxes": true_boxes,
                                     "deleted": deleted}
    (root / "training" / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return SyntheticKittiSet(root, train_ids, val_ids, num_objects, n_flip, n_delete, len(shifts),
                             sum(len(v) for v in spurious.values()))


def _shifted_box(
    box: tuple[float, float, float, float], height: int, width: int, rng: np.random.Generator
) -> tuple[float, float, float, float] | None:
    """``box`` moved along x or y by more than half its width / height (at most its whole size),
    with a jitter of up to a quarter of its size along the other axis, kept inside the image;
    None when no direction has room for such a move."""
    x1, y1, x2, y2 = box
    size = (x2 - x1, y2 - y1)
    room = {(0, -1): x1, (0, 1): width - x2, (1, -1): y1, (1, 1): height - y2}
    # Strictly more than half: at least one pixel beyond it.
    options = [key for key, r in room.items() if r >= 0.5 * size[key[0]] + 1]
    if not options:
        return None
    axis, sign = options[int(rng.integers(len(options)))]
    lo = 0.5 * size[axis] + 1
    move = [0.0, 0.0]
    move[axis] = sign * rng.uniform(lo, max(lo, min(room[(axis, sign)], size[axis])))
    other = 1 - axis
    jitter = rng.uniform(-0.25, 0.25) * size[other]
    move[other] = float(np.clip(jitter, -room[(other, -1)], room[(other, 1)]))
    return (x1 + move[0], y1 + move[1], x2 + move[0], y2 + move[1])


def _spurious_boxes(
    cfg: SyntheticKittiConfig, train_ids: list[str], labels: dict[str, list[KittiObject]], n: int,
    rng: np.random.Generator,
) -> dict[str, list[KittiObject]]:
    """``n`` boxes on background of random train images: a class drawn by ``class_probs``, a
    height log-uniform in [max(25, dontcare_below), min(64, image height)] px (a size the devkit
    evaluates and the detector trains on), that class's aspect ratio, touching no labelled box
    and no DontCare region of the image (nor another spurious box)."""
    out: dict[str, list[KittiObject]] = {}
    if n == 0 or not train_ids:
        return out
    lo, hi = max(25.0, cfg.dontcare_below), min(64.0, float(cfg.height))
    placed, tries = 0, 0
    while placed < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"could not place {n} spurious boxes on background (placed {placed}): the scenes "
                             "are too crowded; lower spurious_fraction")
        image_id = train_ids[int(rng.integers(len(train_ids)))]
        name = DEFAULT_CLASSES[int(rng.choice(3, p=np.asarray(cfg.class_probs) / sum(cfg.class_probs)))]
        h = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        w = min(float(cfg.width), h * rng.uniform(*_ASPECT[name]))
        x1, y1 = rng.uniform(0, cfg.width - w), rng.uniform(0, cfg.height - h)
        box = (round(x1, 2), round(y1, 2), round(x1 + w, 2), round(y1 + h, 2))
        taken = [o.bbox for o in labels[image_id]] + [o.bbox for o in out.get(image_id, [])]
        if any(_overlap(box, t) for t in taken):
            continue
        out.setdefault(image_id, []).append(KittiObject.from_box(name, box))
        placed += 1
    return out


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def read_truth(root: str | os.PathLike) -> dict[str, Any]:
    """The ``training/truth.json`` written by :func:`write_synthetic_kitti`."""
    path = Path(root) / "training" / "truth.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no truth file (only synthetic sets have one)")
    return json.loads(path.read_text(encoding="utf-8"))


def flipped_box_mask(dataset: KittiDetection, truth: dict[str, Any] | None = None) -> np.ndarray:
    """bool (B,): which of ``dataset``'s boxes carry a flipped class, by ``box_index``.

    The positives for scoring per-box temperatures as a detector of bad annotations, in the
    order of the data parameters. ``truth`` defaults to ``read_truth(dataset.root)``.
    """
    return box_error_kinds(dataset, truth) == "flip"


#: The kinds of box error :func:`write_synthetic_kitti` injects, and ``clean``.
BOX_ERROR_KINDS = ("clean", "flip", "shift", "spurious")


def box_error_kinds(dataset: KittiDetection, truth: dict[str, Any] | None = None) -> np.ndarray:
    """str (B,): each of ``dataset``'s boxes' kind of error (:data:`BOX_ERROR_KINDS`), by ``box_index``.

    ``truth`` defaults to ``read_truth(dataset.root)``. A truth file written before shifts and
    spurious boxes existed (no ``kinds``) gives ``flip`` where the true type differs from the
    given one and ``clean`` elsewhere.
    """
    truth = truth if truth is not None else read_truth(dataset.root)
    images = truth["images"]
    out = np.full(dataset.num_boxes, "clean", dtype="<U8")
    for b in range(dataset.num_boxes):
        image_id, line = dataset.box_source(b)
        entry = images[image_id]
        if "kinds" in entry:
            out[b] = entry["kinds"][line]
        elif entry["true_types"][line] != dataset.classes[int(dataset.box_labels[b]) - 1]:
            out[b] = "flip"
    return out


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KittiSetStatistics:
    """Counts over the labelled objects of a KITTI-layout set (DontCare counted apart).

    ``per_difficulty`` uses the lowest level of :func:`box_difficulty` (``"none"`` for boxes
    in no level); ``per_height`` bins box heights at the thresholds 25 and 40 px.
    """

    num_images: int
    num_objects: int
    num_dontcare: int
    num_truncated: int
    per_class: dict[str, int]
    per_difficulty: dict[str, int]
    per_occlusion: dict[int, int]
    per_height: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_kitti_set(
    root: str | os.PathLike, split: str | None = None, *, label_dir: str = "training/label_2"
) -> KittiSetStatistics:
    """Summary counts of a KITTI-layout set (synthetic or real).

    Parameters
    ----------
    root : path-like
    split : str, optional
        Only the images of ``ROOT/ImageSets/{split}.txt``; default every label file.
    label_dir : str
    """
    folder = Path(root) / label_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such label folder")
    if split is not None:
        ids: Sequence[str] = read_split_file(Path(root) / "ImageSets" / f"{split}.txt")
    else:
        ids = sorted(p.stem for p in folder.glob("*.txt"))
    per_class: dict[str, int] = {}
    per_difficulty = dict.fromkeys((*DIFFICULTIES, "none"), 0)
    per_occlusion = dict.fromkeys(range(4), 0)
    per_height = {"<25": 0, "25-40": 0, ">=40": 0}
    num_objects = num_dontcare = num_truncated = 0
    for image_id in ids:
        for o in read_label_file(folder / f"{image_id}.txt"):
            if o.type == "DontCare":
                num_dontcare += 1
                continue
            num_objects += 1
            per_class[o.type] = per_class.get(o.type, 0) + 1
            level = box_difficulty(o.height, o.occluded, o.truncated)
            per_difficulty[DIFFICULTIES[level] if level >= 0 else "none"] += 1
            per_occlusion[o.occluded] = per_occlusion.get(o.occluded, 0) + 1
            per_height["<25" if o.height < 25 else "25-40" if o.height < 40 else ">=40"] += 1
            num_truncated += o.truncated > 0
    return KittiSetStatistics(
        num_images=len(ids),
        num_objects=num_objects,
        num_dontcare=num_dontcare,
        num_truncated=num_truncated,
        per_class=per_class,
        per_difficulty=per_difficulty,
        per_occlusion=per_occlusion,
        per_height=per_height,
    )
