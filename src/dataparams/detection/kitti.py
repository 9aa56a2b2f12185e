"""KITTI 2D object labels, difficulty levels, split files and a map-style detection dataset.

The data side of the paper's detection experiment (Saxena, Tuzel & DeCoste, NeurIPS 2019,
sec. 3.3): every kept bounding-box annotation of the training set gets one data parameter, so
every box needs a *global* index that stays the same across epochs and augmentations.
:class:`KittiDetection` assigns it once, by enumerating the kept annotations of the whole
dataset in (image order, line order), and yields it with every box as ``box_index``.

Label format (KITTI object devkit, ``readme.txt``): one object per line, whitespace separated,

=====  ==========  ===============================================================
 col    name        meaning
=====  ==========  ===============================================================
 1      type        ``Car``, ``Van``, ``Truck``, ``Pedestrian``, ``Person_sitting``,
                    ``Cyclist``, ``Tram``, ``Misc`` or ``DontCare``
 2      truncated   float in [0, 1], fraction of the object leaving the image
 3      occluded    int: 0 fully visible, 1 partly occluded, 2 largely occluded,
                    3 unknown
 4      alpha       observation angle in [-pi, pi]
 5-8    bbox        x1 y1 x2 y2, 0-based pixel coordinates in the left colour image
 9-11   dimensions  h w l in metres
 12-14  location    x y z in camera coordinates, metres
 15     rotation_y  rotation around the camera's Y axis in [-pi, pi]
 16     score       detections only: confidence, higher is better
=====  ==========  ===============================================================

Unused fields hold the devkit's invalid values (``-1`` for truncation, occlusion and
dimensions, ``-10`` for angles, ``-1000`` for the location), as ``DontCare`` lines do.

Difficulty (KITTI benchmark page; the evaluation's ``MIN_HEIGHT``, ``MAX_OCCLUSION``,
``MAX_TRUNCATION``): *easy* box height >= 40 px, fully visible, truncation <= 15%;
*moderate* >= 25 px, at most partly occluded, <= 30%; *hard* >= 25 px, at most largely
occluded, <= 50%. The levels are nested, and :func:`box_difficulty` returns the lowest one a box
belongs to. The official evaluation code is stricter by one pixel at the height boundary (it
ignores ground truth with ``height <= MIN_HEIGHT``); :mod:`dataparams.detection.kitti_eval`
follows the code, this module the published definition.

Ignore regions. A ``DontCare`` line marks a region whose objects were not labelled (too far,
too small, a crowd), and a ``Van`` is what a Car detector will fire on. Hard-negative mining
picks exactly such anchors (the most object-like background), and training them as background
teaches the detector to suppress real objects, although the devkit counts a detection there as
neither a true nor a false positive. The dataset therefore returns, besides the kept boxes, the
image's *ignore regions* (:func:`default_ignore_types`): every ``DontCare`` region, and the
boxes of the devkit's neighbour type of each trained class (``Van`` when ``Car`` is trained,
``Person_sitting`` when ``Pedestrian`` is; ``kitti_eval.NEIGHBOUR_CLASSES``), the types whose
detections the devkit neither rewards nor penalises. ``Truck``, ``Tram`` and ``Misc`` stay
background: the devkit counts a Car detection on a Truck or a Tram as a false positive, so the
detector has to learn to reject them. This is our choice: the paper (sec. 3.3) says nothing
about DontCare or the other types, and its released code (apple/ml-data-parameters) covers the
classification experiments only. Ignore regions get no data parameter and no ``box_index``, and
do not shift the kept boxes' indices or lines; the SSD loss keeps the unmatched anchors that
they cover out of its negatives (:mod:`dataparams.detection.box_parameters`).

Notation: ``M`` kept boxes in one image, ``D`` DontCare boxes in one image, ``R`` ignore regions
in one image (``D`` of them DontCare), ``K`` classes,
``B`` kept boxes in the whole dataset (the number of per-box data parameters). Boxes are
``(x1, y1, x2, y2)`` in pixels, read as continuous coordinates (torchvision's convention); the
transforms of ``(image, target)`` items, which move them with the pixels, are in
:mod:`dataparams.detection.transforms`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataparams.detection.transforms import Target, Transform

__all__ = [
    "DEFAULT_CLASSES",
    "DIFFICULTIES",
    "MAX_OCCLUSION",
    "MAX_TRUNCATION",
    "MIN_HEIGHT",
    "KittiDetection",
    "KittiFormatError",
    "KittiObject",
    "box_difficulty",
    "default_ignore_types",
    "format_label_line",
    "parse_label_line",
    "read_label_file",
    "read_split_file",
    "make_split",
    "box_target",
    "image_tensor",
    "read_image_array",
    "CHEN_SPLIT_SIZES",
    "write_label_file",
    "write_split_file",
]

DEFAULT_CLASSES: tuple[str, ...] = ("Car", "Pedestrian", "Cyclist")
DIFFICULTIES: tuple[str, ...] = ("easy", "moderate", "hard")
# Indexed by difficulty 0/1/2, as in the devkit's evaluate_object.cpp.
MIN_HEIGHT: tuple[float, ...] = (40.0, 25.0, 25.0)
MAX_OCCLUSION: tuple[int, ...] = (0, 1, 2)
MAX_TRUNCATION: tuple[float, ...] = (0.15, 0.30, 0.50)

_IMAGE_ID = re.compile(r"^\d+$")


class KittiFormatError(ValueError):
    """A label or split file that does not follow the KITTI format; the message names file:line."""


# ---------------------------------------------------------------------------------------------
# label lines
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KittiObject:
    """One line of a KITTI label file.

    Attributes
    ----------
    type : str
        Object class as written (``Car``, ``DontCare``, ...).
    truncated : float
        Fraction in [0, 1] of the object outside the image; -1 when unknown (DontCare).
    occluded : int
        0 fully visible, 1 partly occluded, 2 largely occluded, 3 unknown; -1 for DontCare.
    alpha : float
        Observation angle in [-pi, pi]; -10 when invalid.
    bbox : tuple of 4 floats
        ``(x1, y1, x2, y2)`` in pixels.
    dimensions : tuple of 3 floats
        ``(h, w, l)`` in metres; -1 when invalid.
    location : tuple of 3 floats
        ``(x, y, z)`` in camera coordinates, metres; -1000 when invalid.
    rotation_y : float
        Rotation around the camera's Y axis in [-pi, pi]; -10 when invalid.
    score : float or None
        The 16th column, present on detections only.
    """

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    dimensions: tuple[float, float, float] = (-1.0, -1.0, -1.0)
    location: tuple[float, float, float] = (-1000.0, -1000.0, -1000.0)
    rotation_y: float = -10.0
    score: float | None = None

    @property
    def height(self) -> float:
        """Box height ``y2 - y1`` in pixels, the quantity the difficulty levels threshold."""
        return self.bbox[3] - self.bbox[1]

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @classmethod
    def from_box(
        cls,
        type: str,
        bbox: Sequence[float],
        *,
        truncated: float = 0.0,
        occluded: int = 0,
        score: float | None = None,
    ) -> KittiObject:
        """An object with only a class and a 2D box; the 3D fields hold the invalid values.

        This is what a 2D detector writes (the devkit readme: "All other values must be set to
        their default values"). For ``DontCare`` pass ``truncated=-1, occluded=-1``.
        """
        x1, y1, x2, y2 = (float(v) for v in bbox)
        return cls(type, float(truncated), int(occluded), -10.0, (x1, y1, x2, y2), score=score)


def _int_field(token: str) -> int:
    # Some writers emit the occlusion flag as "0.00"; accept it when it is integral.
    try:
        return int(token)
    except ValueError:
        value = float(token)
        if not value.is_integer():
            raise ValueError(f"occluded must be an integer, got {token!r}") from None
        return int(value)


def parse_label_line(
    line: str, *, source: str | os.PathLike | None = None, line_number: int | None = None
) -> KittiObject:
    """Parse one label line (15 columns, or 16 with a detection score).

    Parameters
    ----------
    line : str
    source, line_number : optional
        Named in the error message (``source:line_number: ...``).

    Raises
    ------
    KittiFormatError
        If the line does not have 15 or 16 fields or a field is not a number.
    """
    where = f"{source if source is not None else '<label>'}:{line_number if line_number is not None else '?'}"
    tokens = line.split()
    if len(tokens) not in (15, 16):
        raise KittiFormatError(
            f"{where}: expected 15 fields (16 with a score), got {len(tokens)}: {line.strip()!r}"
        )
    try:
        values = [float(t) for t in tokens[1:]]
        occluded = _int_field(tokens[2])
    except ValueError as e:
        raise KittiFormatError(f"{where}: {e} in {line.strip()!r}") from None
    if any(math.isnan(v) for v in values):
        raise KittiFormatError(f"{where}: NaN field in {line.strip()!r}")
    return KittiObject(
        type=tokens[0],
        truncated=values[0],
        occluded=occluded,
        alpha=values[2],
        bbox=(values[3], values[4], values[5], values[6]),
        dimensions=(values[7], values[8], values[9]),
        location=(values[10], values[11], values[12]),
        rotation_y=values[13],
        score=values[14] if len(values) == 15 else None,
    )


def read_label_file(path: str | os.PathLike, *, require_score: bool = False) -> list[KittiObject]:
    """All objects of a label file, in line order (blank lines skipped).

    Parameters
    ----------
    path : path-like
    require_score : bool
        Detections: every line must have the 16th column.

    Raises
    ------
    FileNotFoundError
    KittiFormatError
        Naming ``path:line`` of the first malformed line.
    """
    path = Path(path)
    objects = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            obj = parse_label_line(line, source=path, line_number=number)
            if require_score and obj.score is None:
                raise KittiFormatError(
                    f"{path}:{number}: a detection needs a score as 16th column: {line.strip()!r}"
                )
            objects.append(obj)
    return objects


def _num(v: float, decimals: int) -> str:
    # The devkit's invalid values are written as integers ("-1", "-10", "-1000"), as KITTI does.
    if float(v).is_integer() and v in (-1.0, -10.0, -1000.0):
        return str(int(v))
    return f"{v:.{decimals}f}"


def format_label_line(obj: KittiObject, *, decimals: int = 2) -> str:
    """The label line of ``obj`` (no newline), 2 decimals as in the KITTI files.

    The score, when present, keeps 8 significant digits so that the ranking of detections
    survives the round trip.
    """
    fields = [
        obj.type,
        _num(obj.truncated, 2),
        str(int(obj.occluded)),
        _num(obj.alpha, 2),
        *(f"{v:.{decimals}f}" for v in obj.bbox),
        *(_num(v, 2) for v in obj.dimensions),
        *(_num(v, 2) for v in obj.location),
        _num(obj.rotation_y, 2),
    ]
    if obj.score is not None:
        fields.append(f"{obj.score:.8g}")
    return " ".join(fields)


def write_label_file(path: str | os.PathLike, objects: Iterable[KittiObject], *, decimals: int = 2) -> None:
    """Write ``objects`` one per line (an empty file for none, as KITTI has)."""
    text = "".join(format_label_line(o, decimals=decimals) + "\n" for o in objects)
    Path(path).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# difficulty
# ---------------------------------------------------------------------------------------------
def box_difficulty(height: Any, occluded: Any, truncated: Any) -> Any:
    """The lowest KITTI difficulty level a box belongs to: 0 easy, 1 moderate, 2 hard, -1 none.

    Parameters
    ----------
    height : float or array (M,)
        Box height ``y2 - y1`` in pixels.
    occluded : int or array (M,)
    truncated : float or array (M,)

    Returns
    -------
    int, or int64 array (M,)
        ``easy`` needs height >= 40, occlusion 0, truncation <= 0.15; ``moderate`` >= 25, <= 1,
        <= 0.30; ``hard`` >= 25, <= 2, <= 0.50. Occlusion 3 ("unknown") is in no level, and
        neither is a box with a negative occlusion or truncation (DontCare's ``-1``), which
        carries no visibility information.
    """
    h, occ, trunc = np.broadcast_arrays(
        np.asarray(height, float), np.asarray(occluded), np.asarray(truncated, float)
    )
    level = np.full(h.shape, -1, dtype=np.int64)
    known = (occ >= 0) & (trunc >= 0)
    # From hard down to easy, so a box ends with the lowest level whose limits it meets.
    for d in (2, 1, 0):
        ok = known & (h >= MIN_HEIGHT[d]) & (occ <= MAX_OCCLUSION[d]) & (trunc <= MAX_TRUNCATION[d])
        level[ok] = d
    return int(level) if level.ndim == 0 else level


# ---------------------------------------------------------------------------------------------
# split files
# ---------------------------------------------------------------------------------------------
def read_split_file(path: str | os.PathLike) -> list[str]:
    """Image ids of an ImageSets-style file (one id such as ``000123`` per line), in file order.

    The common KITTI train/val split (Chen et al., 3DOP/MV3D) has 3,712 / 3,769 ids.

    Raises
    ------
    FileNotFoundError
    KittiFormatError
        Naming ``path:line`` for a line that is not one numeric id, or a repeated id.
    """
    path = Path(path)
    ids: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            token = line.strip()
            if not token:
                continue
            if not _IMAGE_ID.match(token):
                raise KittiFormatError(f"{path}:{number}: expected one numeric image id, got {token!r}")
            if token in seen:
                raise KittiFormatError(f"{path}:{number}: image id {token} repeats line {seen[token]}")
            seen[token] = number
            ids.append(token)
    return ids


def write_split_file(path: str | os.PathLike, image_ids: Iterable[str]) -> None:
    """Write one image id per line."""
    Path(path).write_text("".join(f"{i}\n" for i in image_ids), encoding="utf-8")


#: The common train/val split of KITTI's 7,481 training images (Chen et al., "3D Object Proposals
#: for Accurate Object Class Detection", NeurIPS 2015; the paper's [3]): 3,712 train, 3,769 val.
#: KITTI's own download has no split; that one is distributed with the 3DOP / MV3D code as
#: ImageSets/train.txt and val.txt.
CHEN_SPLIT_SIZES = (3712, 3769)

_SPLIT_HELP = ("KITTI's download has no train/val split. The paper's (Chen et al. 2015, 3,712 / 3,769 images) "
               "comes with the 3DOP / MV3D code as ImageSets/train.txt and val.txt: put them in ROOT/ImageSets/, "
               "or run `dataparams train ... --make-split` to write a seeded random split of the same proportions "
               "(not the same images, so numbers are not comparable with the paper's)")


def make_split(root: str | os.PathLike, *, seed: int = 0, label_dir: str = "training/label_2",
               names: tuple[str, str] = ("train", "val")) -> tuple[Path, Path]:
    """Write ``ROOT/ImageSets/{train,val}.txt``: every labelled image of ``ROOT/label_dir`` in a
    seeded random train / val split with the proportions of Chen et al.'s (3,712 : 3,769), each
    file sorted; refuses to overwrite an existing split file. Returns the two paths.

    Images of one drive are not kept together (the ids carry no drive), so near-duplicate frames
    can fall on both sides; Chen et al.'s split keeps drives apart, which is why it is preferred
    when it is at hand.
    """
    root = Path(root)
    ids = sorted(p.stem for p in (root / label_dir).glob("*.txt"))
    if len(ids) < 2:
        raise FileNotFoundError(f"{root / label_dir}: fewer than two label files to split")
    train_path, val_path = (root / "ImageSets" / f"{n}.txt" for n in names)
    for path in (train_path, val_path):
        if path.exists():
            raise KittiFormatError(f"{path} exists: a split is never overwritten (remove it to draw a new one)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    n_train = int(round(len(ids) * CHEN_SPLIT_SIZES[0] / sum(CHEN_SPLIT_SIZES)))
    n_train = min(max(n_train, 1), len(ids) - 1)
    train = sorted(ids[i] for i in order[:n_train])
    val = sorted(ids[i] for i in order[n_train:])
    train_path.parent.mkdir(parents=True, exist_ok=True)
    write_split_file(train_path, train)
    write_split_file(val_path, val)
    return train_path, val_path


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
def default_ignore_types(classes: Sequence[str]) -> tuple[str, ...]:
    """The label types whose boxes are ignore regions when training ``classes``.

    ``DontCare``, and the devkit's neighbour type of each trained class (``Van`` for ``Car``,
    ``Person_sitting`` for ``Pedestrian``): the types on which the evaluation
    (:mod:`~dataparams.detection.kitti_eval`, after the devkit) counts a detection of the class
    as neither right nor wrong, so that training calls them neither object nor background. Other
    types (``Truck``, ``Tram``, ``Misc``, and the neighbours of untrained classes) stay
    background, as the devkit counts detections on them as false positives.

    Examples
    --------
    >>> default_ignore_types(("Car", "Pedestrian", "Cyclist"))
    ('DontCare', 'Van', 'Person_sitting')
    >>> default_ignore_types(("Cyclist",))
    ('DontCare',)
    """
    # Imported here: kitti_eval imports this module.
    from dataparams.detection.kitti_eval import NEIGHBOUR_CLASSES

    # The evaluation's table is lower-case; the label files spell the types this way.
    spelled = {"van": "Van", "person_sitting": "Person_sitting"}
    out = ["DontCare"]
    for c in classes:
        neighbour = NEIGHBOUR_CLASSES.get(c.lower())
        if neighbour is not None:
            out.append(spelled.get(neighbour, neighbour))
    return tuple(dict.fromkeys(out))


@dataclass
class _ImageRecord:
    image_id: str
    boxes: np.ndarray  # (M, 4) float32
    labels: np.ndarray  # (M,) int64 in [1, K]
    lines: np.ndarray  # (M,) int64, 0-based index of each kept object among the file's objects
    occluded: np.ndarray  # (M,) int64
    # float64, as parsed: in float32 a truncation of 0.15 or a height of 40 would cross the
    # difficulty limits.
    truncated: np.ndarray  # (M,) float64
    heights: np.ndarray  # (M,) float64, y2 - y1 of the label
    difficulty: np.ndarray  # (M,) int64
    dontcare: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (D, 4)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (R, 4)


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """The pixels of an image file as uint8 (H, W, C): C = 1 for greyscale, 3 otherwise (RGB)."""
    from PIL import Image  # torchvision's own dependency; imported here to keep import light

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
    return array[:, :, None] if array.ndim == 2 else array


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) pixels as the float (C, H, W) tensor in [0, 1] that the detectors take."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)


def box_target(record: Any, start: int, *, dontcare: np.ndarray, ignore: np.ndarray,
               **extra: torch.Tensor) -> Target:
    """The untransformed target of one image record (``boxes``, ``labels``, ``difficulty``,
    ``occluded``, ``truncated``, ``heights``, ``dontcare``, ``ignore``, ``image_id``), its boxes'
    data-parameter rows numbered from ``start``; ``extra`` entries are added as they are (a COCO
    box's ``ann_id``)."""
    return {
        "boxes": torch.from_numpy(record.boxes.copy()),
        "labels": torch.from_numpy(record.labels.copy()),
        "box_index": torch.arange(start, start + len(record.labels), dtype=torch.int64),
        **extra,
        "difficulty": torch.from_numpy(record.difficulty.copy()),
        "occluded": torch.from_numpy(record.occluded.copy()),
        "truncated": torch.from_numpy(record.truncated.astype(np.float32)),
        "height": torch.from_numpy(record.heights.astype(np.float32)),
        "dontcare": torch.from_numpy(dontcare.copy()),
        "ignore": torch.from_numpy(ignore.copy()),
        "image_id": record.image_id,
    }


class KittiDetection(Dataset):
    """Map-style dataset over ``ROOT/training/image_2/*.png`` and ``ROOT/training/label_2/*.txt``.

    Item ``i`` is ``(image, target)``: the image as float (C, H, W) in [0, 1], and

    ==============  ===============  ==========================================================
     key             shape / type     meaning
    ==============  ===============  ==========================================================
     boxes           (M, 4) float32   xyxy pixels, the kept objects (those of ``classes``)
     labels          (M,) int64       1..K by position in ``classes``; 0 is background
                                      (torchvision's detection convention)
     box_index       (M,) int64       global annotation index in [0, B), the row of the box's
                                      data parameter; never changed by a transform
     difficulty      (M,) int64       0 easy, 1 moderate, 2 hard, -1 none
                                      (:func:`box_difficulty` of the label)
     occluded        (M,) int64       the label's occlusion level
     truncated       (M,) float32     the label's truncation
     height          (M,) float32     box height in the label (before any resize)
     dontcare        (D, 4) float32   the image's DontCare regions, moved with the image
     ignore          (R, 4) float32   the image's ignore regions in line order: DontCare and
                                      the ``ignore_types`` boxes; no ``box_index``, no data
                                      parameter; moved with the image
     image_id        str              e.g. ``"000123"``
    ==============  ===============  ==========================================================

    ``box_index`` is assigned once, at construction, by enumerating the kept objects of the
    whole dataset in image order (the split file's order, or sorted ids) and line order, so
    ``box_index`` of an annotation is the same in every epoch, worker and augmentation. A
    transform that drops boxes (SSD's crop) drops them from every ``(M,)`` entry together.

    Parameters
    ----------
    root : path-like
        The KITTI object folder holding ``training/`` (and ``ImageSets/``).
    split : str, optional
        Name of a split in ``ROOT/ImageSets/{split}.txt`` (``"train"``, ``"val"``, ...).
    split_file : path-like, optional
        An explicit split file instead; without either, every label file is used.
    classes : sequence of str
        The kept classes, label ``k + 1`` for ``classes[k]``. Other objects (``Van``,
        ``Truck``, ``Person_sitting``, ...) are no boxes; ``DontCare`` goes to ``dontcare``.
    ignore_types : sequence of str, optional
        Types (case-insensitive) whose boxes are ignore regions (``target["ignore"]``); default
        :func:`default_ignore_types` of ``classes``. Pass ``()`` for none.
    transforms : callable ``(image, target) -> (image, target)``, optional
        E.g. ``Compose([RandomHorizontalFlip(), RandomScale()])``
        (:mod:`~dataparams.detection.transforms`).
    image_dir, label_dir : str
        Relative to ``root``.

    Raises
    ------
    FileNotFoundError
        If a folder, split file, label file or (at access) image is missing.
    KittiFormatError
        Naming ``file:line`` of a malformed label.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        split_file: str | os.PathLike | None = None,
        classes: Sequence[str] = DEFAULT_CLASSES,
        transforms: Transform | None = None,
        image_dir: str = "training/image_2",
        label_dir: str = "training/label_2",
        ignore_types: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / image_dir
        self.label_dir = self.root / label_dir
        if split is not None and split_file is not None:
            raise ValueError("pass either split or split_file, not both")
        if not self.label_dir.is_dir():
            raise FileNotFoundError(
                f"{self.label_dir}: no such label folder (expected ROOT/{label_dir}/*.txt)"
            )
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"{self.image_dir}: no such image folder (expected ROOT/{image_dir}/*.png)"
            )
        classes = tuple(classes)
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be non-empty and distinct, got {classes}")
        if "DontCare" in classes:
            raise ValueError("DontCare regions are returned in target['dontcare'], not as a class")
        self.classes = classes
        self.transforms = transforms
        ignore_types = default_ignore_types(classes) if ignore_types is None else tuple(ignore_types)
        trained = {c.lower() for c in classes}
        if any(t.lower() in trained for t in ignore_types):
            raise ValueError(f"ignore_types {ignore_types} overlap the trained classes {classes}")
        self.ignore_types: tuple[str, ...] = ignore_types
        ignored = {t.lower() for t in ignore_types}

        if split is not None:
            split_file = self.root / "ImageSets" / f"{split}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"{split_file}: no such split file. {_SPLIT_HELP}")
        if split_file is not None:
            self.image_ids = read_split_file(split_file)
        else:
            self.image_ids = sorted(p.stem for p in self.label_dir.glob("*.txt"))

        class_to_label = {name: k + 1 for k, name in enumerate(classes)}
        self._records: list[_ImageRecord] = []
        for image_id in self.image_ids:
            path = self.label_dir / f"{image_id}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: label file of image {image_id} is missing")
            objects = read_label_file(path)
            kept = [(line, o) for line, o in enumerate(objects) if o.type in class_to_label]
            # Found here, naming the file, rather than by the detector's own check in whichever
            # training step first batches the image (a traceback, hours into a run).
            for line, o in kept:
                if not (o.bbox[2] > o.bbox[0] and o.bbox[3] > o.bbox[1]):
                    raise KittiFormatError(
                        f"{path}: object {line + 1} ({o.type}) has the box x1 y1 x2 y2 = "
                        f"{' '.join(f'{v:g}' for v in o.bbox)}, of zero or negative width or height; "
                        "fix or delete the line")
            dontcare = [o.bbox for o in objects if o.type == "DontCare"]
            # Not kept, so they take no line of the box enumeration below: box_index and
            # box_line_index are those of a loader that dropped them.
            ignore = [o.bbox for o in objects if o.type.lower() in ignored]
            self._records.append(
                _ImageRecord(
                    image_id=image_id,
                    boxes=np.array([o.bbox for _, o in kept], np.float32).reshape(-1, 4),
                    labels=np.array([class_to_label[o.type] for _, o in kept], np.int64),
                    lines=np.array([line for line, _ in kept], np.int64),
                    occluded=np.array([o.occluded for _, o in kept], np.int64),
                    truncated=np.array([o.truncated for _, o in kept], np.float64),
                    heights=np.array([o.height for _, o in kept], np.float64),
                    difficulty=np.array(
                        [box_difficulty(o.height, o.occluded, o.truncated) for _, o in kept], np.int64
                    ),
                    dontcare=np.array(dontcare, np.float32).reshape(-1, 4),
                    ignore=np.array(ignore, np.float32).reshape(-1, 4),
                )
            )
        # Every image checked now, not when a batch (or, for the validation split, the first
        # evaluation) first reads it, epochs into a run.
        missing = [i for i in self.image_ids if not (self.image_dir / f"{i}.png").is_file()]
        if missing:
            other = sorted(p.name for p in self.image_dir.glob(f"{glob.escape(missing[0])}.*"))
            hint = f" ({', '.join(other)} is there: KITTI images are read as .png)" if other else ""
            more = f"; {len(missing) - 1:,} more images of the split are missing" if len(missing) > 1 else ""
            raise FileNotFoundError(f"{self.image_dir / missing[0]}.png: image of {missing[0]} is missing{hint}{more}")
        counts = np.array([len(r.labels) for r in self._records], np.int64)
        # The first global index of each image's boxes: box_index = offset[i] + position in image.
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.box_image_index = np.repeat(np.arange(len(self._records), dtype=np.int64), counts)
        self.box_line_index = (
            np.concatenate([r.lines for r in self._records]) if self._records else np.zeros(0, np.int64)
        )
        self.box_labels = (
            np.concatenate([r.labels for r in self._records]) if self._records else np.zeros(0, np.int64)
        )
        self.box_difficulty = (
            np.concatenate([r.difficulty for r in self._records]) if self._records else np.zeros(0, np.int64)
        )

    # -- sizes and lookups ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        """K, not counting background."""
        return len(self.classes)

    @property
    def num_boxes(self) -> int:
        """B, the number of kept annotations = the number of per-box data parameters."""
        return int(self._offsets[-1])

    def box_source(self, box_index: int) -> tuple[str, int]:
        """``(image_id, line_index)`` of an annotation: the 0-based line among its file's objects.

        Raises
        ------
        IndexError
            If ``box_index`` is outside ``[0, num_boxes)``.
        """
        if not 0 <= box_index < self.num_boxes:
            raise IndexError(f"box_index {box_index} outside [0, {self.num_boxes})")
        image = int(self.box_image_index[box_index])
        return self.image_ids[image], int(self.box_line_index[box_index])

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.image_ids[index]}.png"

    def get_target(self, index: int) -> Target:
        """The untransformed target of image ``index``, without reading the image."""
        r = self._records[index]
        return box_target(r, int(self._offsets[index]), dontcare=r.dontcare, ignore=r.ignore)

    def load_image(self, index: int) -> torch.Tensor:
        """Image ``index`` as float (C, H, W) in [0, 1] (RGB for colour files)."""
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image of {self.image_ids[index]} is missing")
        return image_tensor(read_image_array(path))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.load_image(index), self.get_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def with_transforms(self, transforms: Transform | None) -> KittiDetection:
        """A shallow copy sharing the parsed labels, with other transforms (e.g. for validation)."""
        other = object.__new__(KittiDetection)
        other.__dict__.update(self.__dict__)
        other.transforms = transforms
        return other
