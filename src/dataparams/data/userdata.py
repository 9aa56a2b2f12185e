"""What loading a user's data gives: a :class:`UserData`, checked and measured, or one
:class:`UserDataError` that names the file and the row.

Notation: ``N`` samples, ``K`` classes, ``D`` features, ``S`` the common image side, ``C``
channels (1 or 3).

Both readers return a :class:`UserData`: :func:`~dataparams.data.user.load_user_data` for files (a
CSV list, class folders, an ``.npz``) and :func:`~dataparams.data.tables.load_table_data` for
arrays, torch Datasets and tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dataparams.data.base import Split
from dataparams.data.decode import UserImageDataset, convert_image, decode_image
from dataparams.data.registry import DatasetInfo

__all__ = ["UserData", "UserDataError"]


class UserDataError(ValueError):
    """The user's data cannot be used as given; the message names the file and the row."""


@dataclass
class UserData:
    """A checked, measured dataset of a user's images or features.

    Attributes
    ----------
    kind : {"images", "features"}
    targets : ndarray (N,) int64
        The labels as given (possibly wrong: finding those is the point), in ``[0, K)``.
    classes : list of str
        ``len(classes) == K``; ``targets[i]`` names ``classes[targets[i]]``.
    ids : list of str
        One per sample, for reports: the path as written in the list, the path relative to the
        class-folder root, the npz ``ids``, or ``"row i"`` (``X[i]``).
    source : str
        The path that was loaded.
    paths : list of str, optional
        Image files, ready to open (images only).
    images : ndarray (N, S, S, C) uint8, optional
        Every image decoded at the common side, when that fits the memory budget.
    dataset : UserImageDataset, optional
        When the images do not fit: decodes, resizes and normalises per item.
    features : ndarray (N, D) float32, optional
    image_size : int, optional
        ``S``.
    channels : int, optional
        ``C``.
    mean, std : ndarray float32, (C,) for images (pixels scaled to [0, 1]) or (D,) for features
        Measured on the data; ``std`` is 1 where the data is constant.
    choices : dict
        ``{name: {"value": ..., "why": "..."}}`` for every choice made, JSON-serialisable. The
        ``data`` entry also holds the ``fingerprint`` (see :attr:`fingerprint`).
    rows : ndarray (N,) int64, optional
        Each sample's row in the data held in memory, when rows were left out (a repeated image
        file of a table); None: sample ``i`` is row ``i``.
    """

    kind: str
    targets: np.ndarray
    classes: list[str]
    ids: list[str]
    source: str
    paths: list[str] | None = None
    images: np.ndarray | None = None
    dataset: UserImageDataset | None = None
    features: np.ndarray | None = None
    image_size: int | None = None
    channels: int | None = None
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> dict[str, str]:
        """What identifies the data, part by part: ``{"list file": "sha256 ...", "image files":
        "N files, sha256 ...", "classes": "K classes, sha256 ..."}`` for a list (a class folder has
        no list file, an ``.npz`` has an ``"npz file"`` part and no image files).

        The list and ``.npz`` parts hash the file's bytes; the image part hashes every image's
        path (as written, or relative to the class-folder root), size and modification time, in
        sample order, so an edited label, an added, removed or replaced file, or a new class list
        changes it. A run stores it (in ``choices``) and is not resumed on other data.
        """
        return dict(self.choices.get("data", {}).get("fingerprint", {}))

    @property
    def in_memory(self) -> bool:
        """True when the pixels or features are held in one array."""
        return self.images is not None or self.features is not None

    @property
    def info(self) -> DatasetInfo:
        """Normalisation and input shape in the form the preset datasets use (images only)."""
        if self.kind != "images":
            raise ValueError(f"{self.source}: features have no image normalisation; use mean/std per feature")
        assert self.channels is not None and self.image_size is not None  # set for every kind="images"
        return DatasetInfo(
            tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std), self.channels, self.image_size
        )

    def describe(self) -> list[str]:
        """The choices as lines ``name: value  (why)``, for printing at the start of a run."""
        width = max((len(k) for k in self.choices), default=0)
        return [f"{k:<{width}}  {c['value']}  ({c['why']})" for k, c in self.choices.items()]

    def to_split(self, name: str | None = None) -> Split:
        """The data as a :class:`~dataparams.data.base.Split`: ``images``, ``paths`` (streaming;
        open them with :class:`UserImageDataset`) or ``features``."""
        name = name or Path(self.source).stem
        if self.kind == "features":
            return Split(self.targets, list(self.classes), features=self.features, name=name)
        if self.images is not None:
            return Split(self.targets, list(self.classes), images=self.images, name=name)
        return Split(self.targets, list(self.classes), paths=list(self.paths or []), name=name)

    def thumbnail(self, i: int, size: int | None = None) -> np.ndarray:
        """Image ``i`` as uint8 (h, w, C), for a report of suspect labels.

        Parameters
        ----------
        i : int
            Sample index.
        size : int, optional
            None gives the image the model sees (S x S, already decoded when in memory). An
            integer re-reads the file and scales its longer side to ``size``, keeping the aspect
            ratio; enlarging uses nearest-neighbour so that small images stay sharp.
        """
        if self.kind != "images":
            raise ValueError(f"{self.source}: thumbnails exist only for images, this data is {self.kind}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        if size is None:
            if self.images is not None:
                return self.images[i]
            return decode_image(self.paths[i], self.image_size, self.channels)  # type: ignore[index, arg-type]
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        with Image.open(self.paths[i]) as im:  # type: ignore[index]
            ImageOps.exif_transpose(im, in_place=True)
            im = convert_image(im, self.channels)  # type: ignore[arg-type]
            w, h = im.size
            scale = size / max(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
            arr = np.asarray(im.resize(new, resample))
        return arr[..., None] if arr.ndim == 2 else arr
