"""COCO-format detection data: a dataset for the box trainer, pycocotools' mAP, a synthetic set.

Most detection data comes as a COCO "instances" file (``annotations/instances_{split}.json``)
next to an image folder. This module lets the per-box data-parameter trainer (sec. 3.3 of
Saxena, Tuzel & DeCoste, NeurIPS 2019; :mod:`dataparams.detection.train`) read such data:

* :class:`CocoDetection` reads the JSON with :mod:`json` (no pycocotools needed to train) and
  yields the same ``(image, target)`` items as :class:`~dataparams.detection.kitti.KittiDetection`,
  every kept box with its global ``box_index`` (the row of its data parameter) and its
  annotation id (``ann_id``, the stable key of the box across files and runs).
* :func:`coco_evaluate` is COCO's box mAP computed by pycocotools' ``COCOeval`` itself (not a
  re-implementation): the twelve numbers of ``COCOeval.summarize`` and the AP per category.
* :func:`write_synthetic_coco` writes the synthetic Fashion-MNIST scenes of
  :mod:`dataparams.detection.synthetic` (the same generator, seed for seed, as
  :func:`~dataparams.detection.synthetic.write_synthetic_kitti`) in COCO's layout.

COCO format (``instances_*.json``; https://cocodataset.org/#format-data), the parts read here::

    images:      [{"id": int, "file_name": str, "width": int, "height": int}, ...]
    annotations: [{"id": int, "image_id": int, "category_id": int,
                   "bbox": [x, y, w, h],        # pixels, (x, y) the top-left corner
                   "iscrowd": 0 or 1, "area": float}, ...]
    categories:  [{"id": int, "name": str}, ...]

Rules of :class:`CocoDetection`:

* **Classes.** The categories become contiguous labels ``1..K`` (0 is background, torchvision's
  convention): all categories in the order of their ids, or the names given in ``classes`` in
  that order; annotations of other categories are dropped (as KITTI's other types are).
  ``dataset.classes`` keeps the names, ``dataset.category_ids`` the COCO id of each label.
* **Crowd annotations** (``iscrowd = 1``) are not training targets and get no data parameter:
  they are neither in ``boxes`` nor counted in ``num_boxes``. Their boxes are returned, like
  KITTI's DontCare regions, in ``target["dontcare"]`` and as the image's ignore regions in
  ``target["ignore"]``: ``COCOeval`` ignores detections on them, so the trainer's SSD loss keeps
  the background anchors they cover out of its negatives (as for KITTI's DontCare regions).
* **Invalid boxes** of non-crowd annotations: a box of zero or negative width or height, or one
  reaching outside its image, raises :class:`CocoFormatError` naming the annotation id (the
  default, ``invalid_boxes="error"``). With ``invalid_boxes="clip"`` boxes are clipped to the
  image, and a box left with zero area is dropped (no data parameter); the dropped annotation
  ids are listed in ``dataset.dropped_ann_ids``. The real COCO files hold a few such boxes, so
  training on them needs ``"clip"``.
* **Order.** Images in the order of their ids; a box's ``box_index`` enumerates the kept
  annotations in (image, file order), fixed at construction, so it is the same in every epoch,
  worker and augmentation.
* **Difficulty.** COCO has no KITTI difficulty. An annotation may carry the non-standard integer
  ``occluded`` and float ``truncated`` fields (the synthetic set writes them); then ``difficulty``
  is :func:`~dataparams.detection.kitti.box_difficulty` of them and the box height, and the
  trainer's curriculum statistics per difficulty and occlusion level apply. Without them
  ``occluded``, ``truncated`` and ``difficulty`` are -1 ("unknown", in no level).

Notation: ``M`` kept boxes of one image, ``D`` crowd boxes of one image, ``K`` classes, ``B``
kept boxes of the whole file (the number of per-box data parameters). Boxes in targets are
``(x1, y1, x2, y2)`` pixels, continuous coordinates (``x2 = x + w``), as in the KITTI dataset.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataparams.detection.kitti import (
    DEFAULT_CLASSES,
    KittiObject,
    box_difficulty,
    box_target,
    image_tensor,
    read_image_array,
)
from dataparams.detection.transforms import Target, Transform

__all__ = [
    "COCO_STATS",
    "CocoDetection",
    "CocoFormatError",
    "SyntheticCocoSet",
    "coco_detections",
    "coco_evaluate",
    "write_coco_results",
    "write_synthetic_coco",
]

#: The twelve numbers of ``COCOeval.summarize`` for boxes, in its order (``COCOeval.stats``):
#: AP over IoU 0.50:0.05:0.95, at IoU 0.5 and 0.75, for small (< 32^2 px), medium and large
#: (> 96^2 px) objects (100 detections per image), then the average recall at 1, 10 and 100
#: detections per image and by object size.
COCO_STATS: tuple[str, ...] = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                               "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")

INVALID_BOXES: tuple[str, ...] = ("error", "clip")


class CocoFormatError(ValueError):
    """A COCO file that this reader cannot use; the message names the file and annotation id."""


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
@dataclass
class _CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (M, 4) float32 xyxy
    labels: np.ndarray  # (M,) int64 in [1, K]
    ann_ids: np.ndarray  # (M,) int64
    positions: np.ndarray  # (M,) int64, 0-based position among the image's annotations in the file
    occluded: np.ndarray  # (M,) int64, -1 unknown
    truncated: np.ndarray  # (M,) float64, -1 unknown
    heights: np.ndarray  # (M,) float64
    difficulty: np.ndarray  # (M,) int64
    crowd: np.ndarray  # (D, 4) float32 xyxy


def _int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise CocoFormatError(f"{where}: {what} must be an integer, got {value!r}")
    return int(value)


class CocoDetection(Dataset):
    """Map-style dataset over a COCO instances file and its image folder.

    Item ``i`` is ``(image, target)``: the image as float (C, H, W) in [0, 1], and the keys of
    :class:`~dataparams.detection.kitti.KittiDetection`'s targets:

    ==============  ===============  ==========================================================
     key             shape / type     meaning
    ==============  ===============  ==========================================================
     boxes           (M, 4) float32   xyxy pixels of the kept (non-crowd) annotations
     labels          (M,) int64       1..K by position in ``classes``; 0 is background
     box_index       (M,) int64       global index in [0, B), the row of the box's data
                                      parameter; never changed by a transform
     ann_id          (M,) int64       the COCO annotation id (stable key of the box)
     difficulty      (M,) int64       KITTI level from ``occluded``/``truncated`` fields, else -1
     occluded        (M,) int64       the annotation's ``occluded`` field, else -1
     truncated       (M,) float32     the annotation's ``truncated`` field, else -1
     height          (M,) float32     box height in the file (before any resize)
     dontcare        (D, 4) float32   the crowd boxes of kept classes, moved with the image
     ignore          (D, 4) float32   the same boxes: the image's ignore regions
     image_id        int              the COCO image id
    ==============  ===============  ==========================================================

    Parameters
    ----------
    ann_file : path-like
        The instances JSON.
    image_dir : path-like
        The folder the images' ``file_name`` are relative to.
    classes : sequence of str, optional
        Category names to keep, label ``k + 1`` for ``classes[k]``; default every category in
        the order of the ids.
    transforms : callable ``(image, target) -> (image, target)``, optional
    invalid_boxes : {"error", "clip"}
        What a non-crowd box of zero area or outside its image does (see the module docstring).

    Raises
    ------
    FileNotFoundError
        Missing annotation file or image folder (or, at access, image).
    CocoFormatError
        A malformed file, an unknown class name, or (``"error"``) an invalid box: the message
        names the annotation id.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        classes: Sequence[str] | None = None,
        transforms: Transform | None = None,
        invalid_boxes: str = "error",
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        # The folder of the annotation file; it holds no training/truth.json, so the trainer's
        # box table records no corruption for a COCO set.
        self.root = self.ann_file.parent
        if invalid_boxes not in INVALID_BOXES:
            raise ValueError(f"invalid_boxes must be one of {', '.join(INVALID_BOXES)}, got {invalid_boxes!r}")
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"{self.ann_file}: no such COCO annotation file")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: no such image folder")
        self.transforms = transforms
        self.invalid_boxes = invalid_boxes
        try:
            data = json.loads(self.ann_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CocoFormatError(f"{self.ann_file}: not valid JSON: {e}") from None
        self._parse(data, classes)

    # -- parsing ----------------------------------------------------------------------------
    def _parse(self, data: Any, classes: Sequence[str] | None) -> None:
        src = str(self.ann_file)
        if not isinstance(data, dict) or any(not isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
            raise CocoFormatError(f"{src}: expected an object with lists 'images', 'annotations', 'categories'")

        names: dict[int, str] = {}
        for c in data["categories"]:
            cid = _int(c.get("id"), "category id", f"{src}: category {c!r}")
            if cid in names:
                raise CocoFormatError(f"{src}: category id {cid} repeats")
            names[cid] = str(c.get("name", ""))
        by_name: dict[str, int] = {}
        for cid in sorted(names):
            if names[cid] in by_name:
                raise CocoFormatError(f"{src}: category name {names[cid]!r} repeats (ids {by_name[names[cid]]}, {cid})")
            by_name[names[cid]] = cid
        if classes is None or len(classes) == 0:
            classes = [names[cid] for cid in sorted(names)]
        classes = tuple(classes)
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be non-empty and distinct, got {classes}")
        unknown = [c for c in classes if c not in by_name]
        if unknown:
            raise CocoFormatError(f"{src}: classes {unknown} are not categories of the file; it has "
                                  f"{', '.join(repr(names[c]) for c in sorted(names))} (an empty class list, "
                                  "--set data.classes=, takes them all)")
        self.classes = classes
        self.category_ids: tuple[int, ...] = tuple(by_name[c] for c in classes)
        label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)}

        images: dict[int, dict[str, Any]] = {}
        for im in data["images"]:
            iid = _int(im.get("id"), "image id", f"{src}: image {im.get('file_name', im)!r}")
            if iid in images:
                raise CocoFormatError(f"{src}: image id {iid} repeats")
            where = f"{src}: image {iid}"
            if not isinstance(im.get("file_name"), str):
                raise CocoFormatError(f"{where}: needs a 'file_name'")
            width, height = _int(im.get("width"), "width", where), _int(im.get("height"), "height", where)
            if width < 1 or height < 1:
                raise CocoFormatError(f"{where}: width and height must be positive, got {width} x {height}")
            images[iid] = {"file_name": im["file_name"], "width": width, "height": height, "anns": []}

        seen: set[int] = set()
        for a in data["annotations"]:
            aid = _int(a.get("id"), "annotation id", f"{src}: annotation {a!r}")
            if aid in seen:
                raise CocoFormatError(f"{src}: annotation id {aid} repeats")
            seen.add(aid)
            iid = _int(a.get("image_id"), "image_id", f"{src}: annotation {aid}")
            if iid not in images:
                raise CocoFormatError(f"{src}: annotation {aid} refers to image {iid}, which is not in 'images'")
            cid = _int(a.get("category_id"), "category_id", f"{src}: annotation {aid}")
            if cid not in names:
                raise CocoFormatError(f"{src}: annotation {aid} has category_id {cid}, which is not in 'categories'")
            images[iid]["anns"].append(a)

        self.dropped_ann_ids: list[int] = []
        self._records: list[_CocoImage] = []
        for iid in sorted(images):
            self._records.append(self._image_record(iid, images[iid], label_of, src))
        self.image_ids: list[int] = [r.image_id for r in self._records]
        # Every image checked now, not when a batch (or, for the validation split, the first
        # evaluation) first reads it, epochs into a run.
        missing = [r for r in self._records if not (self.image_dir / r.file_name).is_file()]
        if missing:
            more = f"; {len(missing) - 1:,} more images of the file are missing" if len(missing) > 1 else ""
            raise FileNotFoundError(f"{self.image_dir / missing[0].file_name}: image {missing[0].image_id} of "
                                    f"{self.ann_file} is missing{more}")

        counts = np.array([len(r.labels) for r in self._records], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.box_image_index = np.repeat(np.arange(len(self._records), dtype=np.int64), counts)

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(r, name) for r in self._records]) if self._records else np.zeros(0, np.int64)

        self.box_line_index = cat("positions")
        self.box_labels = cat("labels")
        self.box_difficulty = cat("difficulty")
        self.box_ann_ids = cat("ann_ids")

    def _image_record(self, iid: int, im: dict[str, Any], label_of: dict[int, int], src: str) -> _CocoImage:
        width, height = im["width"], im["height"]
        kept: list[tuple[int, int, int, tuple[float, ...], int, float]] = []
        crowd: list[tuple[float, ...]] = []
        for position, a in enumerate(im["anns"]):
            aid, cid = int(a["id"]), int(a["category_id"])
            bbox = a.get("bbox")
            where = f"{src}: annotation {aid} (image {iid}, {im['file_name']})"
            if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in bbox)):
                raise CocoFormatError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            iscrowd = _int(a.get("iscrowd", 0), "iscrowd", where)
            if cid not in label_of:
                continue
            box = (x, y, x + w, y + h)
            clipped = (min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height))
            if iscrowd:
                if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                    crowd.append(clipped)
                continue
            if self.invalid_boxes == "error":
                if not (w > 0 and h > 0):
                    raise CocoFormatError(f"{where}: box [x, y, w, h] = {list(bbox)} has zero area (pass "
                                          f"invalid_boxes='clip', on the command line --set data.invalid_boxes=clip, "
                                          "to drop such boxes)")
                if box != clipped:
                    raise CocoFormatError(f"{where}: box [x, y, w, h] = {list(bbox)} reaches outside the "
                                          f"{width} x {height} image (pass invalid_boxes='clip', on the command line "
                                          "--set data.invalid_boxes=clip, to clip it)")
            elif not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
                self.dropped_ann_ids.append(aid)
                continue
            else:
                box = clipped
            occluded = _int(a.get("occluded", -1), "occluded", where)
            truncated = float(a.get("truncated", -1.0))
            kept.append((aid, position, label_of[cid], box, occluded, truncated))
        heights = np.array([k[3][3] - k[3][1] for k in kept], np.float64)
        occluded = np.array([k[4] for k in kept], np.int64)
        truncated = np.array([k[5] for k in kept], np.float64)
        return _CocoImage(
            image_id=iid,
            file_name=im["file_name"],
            width=width,
            height=height,
            boxes=np.array([k[3] for k in kept], np.float32).reshape(-1, 4),
            labels=np.array([k[2] for k in kept], np.int64),
            ann_ids=np.array([k[0] for k in kept], np.int64),
            positions=np.array([k[1] for k in kept], np.int64),
            occluded=occluded,
            truncated=truncated,
            heights=heights,
            difficulty=np.asarray(box_difficulty(heights, occluded, truncated), np.int64).reshape(-1),
            crowd=np.array(crowd, np.float32).reshape(-1, 4),
        )

    @classmethod
    def from_split(
        cls,
        root: str | os.PathLike,
        split: str,
        *,
        ann_file: str = "annotations/instances_{split}.json",
        image_dir: str = "{split}",
        classes: Sequence[str] | None = None,
        transforms: Transform | None = None,
        invalid_boxes: str = "error",
    ) -> CocoDetection:
        """The split ``split`` of a COCO folder: ``ann_file`` and ``image_dir`` are relative to
        ``root`` (or absolute), with ``{split}`` replaced, e.g. COCO 2017's
        ``annotations/instances_val2017.json`` and ``val2017/``."""
        root = Path(root)
        return cls(root / ann_file.format(split=split), root / image_dir.format(split=split), classes=classes,
                   transforms=transforms, invalid_boxes=invalid_boxes)

    # -- sizes and lookups ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        """K, not counting background."""
        return len(self.classes)

    @property
    def num_boxes(self) -> int:
        """B, the kept (non-crowd) annotations = the number of per-box data parameters."""
        return int(self._offsets[-1])

    def box_source(self, box_index: int) -> tuple[int, int]:
        """``(image_id, position)``: the box's image and its 0-based position among that image's
        annotations in the file (crowd and other classes counted), like a KITTI line index."""
        if not 0 <= box_index < self.num_boxes:
            raise IndexError(f"box_index {box_index} outside [0, {self.num_boxes})")
        image = int(self.box_image_index[box_index])
        return self.image_ids[image], int(self.box_line_index[box_index])

    def box_ann_id(self, box_index: int) -> int:
        """The COCO annotation id of a box."""
        if not 0 <= box_index < self.num_boxes:
            raise IndexError(f"box_index {box_index} outside [0, {self.num_boxes})")
        return int(self.box_ann_ids[box_index])

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._records[index].file_name

    def get_target(self, index: int) -> Target:
        """The untransformed target of image ``index``, without reading the image."""
        r = self._records[index]
        return box_target(r, int(self._offsets[index]), dontcare=r.crowd, ignore=r.crowd,
                          ann_id=torch.from_numpy(r.ann_ids.copy()))

    def load_image(self, index: int) -> torch.Tensor:
        """Image ``index`` as float (C, H, W) in [0, 1] (RGB for colour files)."""
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image {self.image_ids[index]} of {self.ann_file} is missing")
        array = read_image_array(path)
        r = self._records[index]
        if array.shape[:2] != (r.height, r.width):
            raise CocoFormatError(f"{path}: image is {array.shape[1]} x {array.shape[0]}, the annotation file "
                                  f"says {r.width} x {r.height}")
        return image_tensor(array)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.load_image(index), self.get_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def with_transforms(self, transforms: Transform | None) -> CocoDetection:
        """A shallow copy sharing the parsed annotations, with other transforms."""
        other = object.__new__(CocoDetection)
        other.__dict__.update(self.__dict__)
        other.transforms = transforms
        return other


# ---------------------------------------------------------------------------------------------
# evaluation: pycocotools' COCOeval
# ---------------------------------------------------------------------------------------------
Detections = Mapping[int, Mapping[str, Any]]


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("COCO evaluation needs pycocotools: pip install 'dataparams[coco]'") from None
    return COCO, COCOeval


def _load_gt(ground_truth: Any) -> Any:
    COCO, _ = _pycocotools()
    if isinstance(ground_truth, COCO):
        return ground_truth
    if isinstance(ground_truth, (str, os.PathLike)):
        dataset = json.loads(Path(ground_truth).read_text(encoding="utf-8"))
    elif isinstance(ground_truth, Mapping):
        dataset = dict(ground_truth)
    else:
        raise TypeError(f"ground_truth must be a path, a dict or a pycocotools COCO, got {type(ground_truth).__name__}")
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _results(detections: Detections, image_ids: set[int], category_ids: set[int]) -> list[dict[str, Any]]:
    """COCO's result format (``bbox`` as ``[x, y, w, h]``) from per-image xyxy arrays."""
    out: list[dict[str, Any]] = []
    for image_id, det in detections.items():
        if int(image_id) not in image_ids:
            raise ValueError(f"detections for image {image_id}, which is not in the ground truth")
        boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], np.float64).reshape(-1)
        labels = np.asarray(det["labels"]).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if int(label) not in category_ids:
                raise ValueError(f"image {image_id}: label {label} is not a category id of the ground truth "
                                 f"(labels are COCO category ids, not 1..K)")
            out.append({"image_id": int(image_id), "category_id": int(label),
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    return out


def coco_evaluate(
    ground_truth: str | os.PathLike | Mapping[str, Any] | Any,
    detections: Detections,
    *,
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """COCO box mAP by pycocotools' ``COCOeval`` (``iouType="bbox"``, its default parameters).

    Parameters
    ----------
    ground_truth : path, dict or ``pycocotools.coco.COCO``
        The instances file; crowd annotations are COCO's ignore regions.
    detections : mapping image id -> {"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}
        ``labels`` are COCO category ids. Images of the ground truth without an entry have no
        detections; an image id not in the ground truth raises ``ValueError``.
    category_ids : sequence of int, optional
        Evaluate only these categories (``COCOeval.params.catIds``); default all.

    Returns
    -------
    dict
        The twelve :data:`COCO_STATS` (``map`` = AP@[.5:.95], ``map50``, ...), ``per_class``
        (category name -> AP@[.5:.95] over all sizes at 100 detections, read from
        ``COCOeval.eval["precision"]`` as ``summarize`` does), ``num_images`` and
        ``num_detections``. Where pycocotools reports -1 -- no ground truth for a category or an
        object size -- the value is ``None`` (JSON ``null``); means leave such entries out, as
        ``summarize`` does. With ground truth and no detections the APs are 0.
    """
    COCO, COCOeval = _pycocotools()
    gt = _load_gt(ground_truth)
    all_categories = set(gt.getCatIds())
    results = _results(detections, set(gt.getImgIds()), all_categories)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes refuses an empty list; an empty result set is what "no detections" means
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset.get("images", [])), "categories": list(gt.dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        if category_ids is not None:
            missing = sorted(set(int(c) for c in category_ids) - all_categories)
            if missing:
                raise ValueError(f"category ids {missing} are not in the ground truth")
            ev.params.catIds = [int(c) for c in category_ids]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict[str, Any] = {name: (None if v == -1 else float(v)) for name, v in zip(COCO_STATS, ev.stats)}
    precision = ev.eval["precision"]  # (T IoU thresholds, R recall points, K classes, A areas, M max dets)
    per_class: dict[str, float | None] = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]  # area "all", 100 detections: the cells stats[0] averages
        p = p[p > -1]
        per_class[gt.cats[cid]["name"]] = float(p.mean()) if p.size else None
    out["per_class"] = per_class
    out["num_images"] = len(ev.params.imgIds)
    out["num_detections"] = len(results)
    return out


def coco_detections(objects: Mapping[int, Sequence[KittiObject]], dataset: CocoDetection) -> dict[int, dict[str, Any]]:
    """The trainer's detections (``predict_detections``: image id -> objects named by class) as
    the arrays :func:`coco_evaluate` takes, with ``dataset``'s COCO category ids as labels."""
    index = {name: cid for name, cid in zip(dataset.classes, dataset.category_ids)}
    out = {}
    for image_id, objs in objects.items():
        out[int(image_id)] = {
            "boxes": np.array([o.bbox for o in objs], np.float64).reshape(-1, 4),
            "scores": np.array([o.score for o in objs], np.float64),
            "labels": np.array([index[o.type] for o in objs], np.int64),
        }
    return out


def write_coco_results(folder: str | os.PathLike, detections: Detections) -> Path:
    """Write ``folder/results.json`` in COCO's result format (``[{"image_id", "category_id",
    "bbox": [x, y, w, h], "score"}]``, what ``COCO.loadRes`` reads). The folder is written under
    a temporary name and renamed, so it is complete or absent."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ids = {int(i) for i in detections}
    cats = {int(c) for d in detections.values() for c in np.asarray(d["labels"]).reshape(-1).tolist()}
    (tmp / "results.json").write_text(json.dumps(_results(detections, ids, cats)) + "\n", encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# the synthetic set in COCO's layout
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticCocoSet:
    """What :func:`write_synthetic_coco` wrote: COCO image ids of each split and counts."""

    root: Path
    train_ids: list[int]
    val_ids: list[int]
    num_objects: int  # non-crowd annotations
    num_crowd: int  # crowd annotations (one per category and DontCare region)

    def ann_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"


def write_synthetic_coco(
    root: str | os.PathLike,
    config: Any = None,
    *,
    fashion_mnist_root: str | os.PathLike | None = None,
) -> SyntheticCocoSet:
    """Write the synthetic Fashion-MNIST scenes in COCO's layout under ``root``::

        ROOT/annotations/instances_train.json, instances_val.json
        ROOT/train/000123.png, ROOT/val/000045.png

    The scenes, boxes and train/val split are those :func:`~dataparams.detection.synthetic.
    write_synthetic_kitti` writes for the same :class:`~dataparams.detection.synthetic.
    SyntheticKittiConfig` (the same generator and seed streams; the PNG files are
    byte-identical). COCO image id = KITTI id + 1 (``000000.png`` is image 1; pycocotools
    treats id 0 as "unmatched" for annotations, so ids start at 1 throughout); annotation ids
    count from 1 over the images in id order. Categories ``Car`` = 1, ``Pedestrian`` = 2,
    ``Cyclist`` = 3. Each labelled object is one annotation (``bbox`` = its KITTI box as
    ``[x, y, w, h]``, ``area = w * h``) with the KITTI ``occluded`` and ``truncated`` values as
    extra fields; each DontCare region becomes one crowd annotation (``iscrowd = 1``) per
    category, so that ``COCOeval`` ignores detections there as the KITTI devkit does.

    Raises
    ------
    ValueError
        For ``flip_fraction`` or ``missing_fraction`` > 0: corruption and its truth are written
        by the KITTI writer only.
    DatasetNotFoundError
        If Fashion-MNIST is not installed.
    """
    from PIL import Image

    from dataparams.detection.synthetic import SyntheticKittiConfig, class_pools, split_ids, synthetic_scenes

    cfg = config if config is not None else SyntheticKittiConfig()
    if cfg.flip_fraction > 0 or cfg.missing_fraction > 0:
        raise ValueError("write_synthetic_coco writes clean sets only (flip_fraction = missing_fraction = 0); "
                         "corrupted sets and their truth are written by write_synthetic_kitti")
    root = Path(root)
    train_ids, val_ids = split_ids(cfg)
    split_of = {**dict.fromkeys(train_ids, "train"), **dict.fromkeys(val_ids, "val")}
    for d in ("annotations", "train", "val"):
        (root / d).mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": name, "supercategory": "object"} for k, name in enumerate(DEFAULT_CLASSES)]
    category_of = {c["name"]: c["id"] for c in categories}
    files: dict[str, dict[str, list[Any]]] = {s: {"images": [], "annotations": []} for s in ("train", "val")}
    next_id = 1
    num_objects = num_crowd = 0
    for kitti_id, image, objects in synthetic_scenes(cfg, class_pools(fashion_mnist_root)):
        split = split_of[kitti_id]
        image_id = int(kitti_id) + 1
        file_name = f"{kitti_id}.png"
        Image.fromarray(image).save(root / split / file_name, compress_level=1)
        files[split]["images"].append({"id": image_id, "file_name": file_name, "width": cfg.width,
                                       "height": cfg.height})
        for o in objects:
            x1, y1, x2, y2 = o.bbox
            box = {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
            if o.type == "DontCare":
                members = [{"category_id": c["id"], "iscrowd": 1} for c in categories]
                num_crowd += len(members)
            else:
                members = [{"category_id": category_of[o.type], "iscrowd": 0, "occluded": o.occluded,
                            "truncated": o.truncated}]
                num_objects += 1
            for m in members:
                files[split]["annotations"].append({"id": next_id, "image_id": image_id, **box, **m})
                next_id += 1
    for split, content in files.items():
        data = {
            "info": {"description": f"dataparams synthetic Fashion-MNIST detection set, {split} split "
                                    "(dataparams.detection.coco.write_synthetic_coco)",
                     "config": asdict(cfg)},
            "licenses": [],
            "images": content["images"],
            "annotations": content["annotations"],
            "categories": categories,
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data) + "\n", encoding="utf-8")
    return SyntheticCocoSet(root, [int(i) + 1 for i in train_ids], [int(i) + 1 for i in val_ids], num_objects,
                            num_crowd)
