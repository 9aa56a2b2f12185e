"""One image file as the pixels a model sees: upright, L or RGB, resized to S x S.

Notation: ``S`` the common image side, ``C`` channels (1 or 3).

:func:`decode_image` is the one decode of a user's image: every file decoded up front
(:mod:`~dataparams.data.images`), each item of :class:`UserImageDataset` in DataLoader workers, and
a report's thumbnail (:meth:`~dataparams.data.userdata.UserData.thumbnail`) get the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["UserImageDataset", "convert_image", "decode_image"]


def convert_image(im: Image.Image, channels: int) -> Image.Image:
    """``im`` as mode L (channels 1) or RGB (channels 3); 16-bit grey is scaled, not clipped."""
    if im.mode == "F":
        raise ValueError("32-bit float pixels have no fixed range; save the image with 8 or 16 bits")
    if im.mode.startswith("I"):
        # PIL's own I -> L conversion clips at 255, which turns a 16-bit image white.
        wide = np.asarray(im).astype(np.float32)
        im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        # Through RGBA, as Pillow asks for palettes with transparency (it warns otherwise).
        im = im.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def decode_image(path: str, image_size: int, channels: int) -> np.ndarray:
    """Read one image file at the common side: uint8 (S, S, C).

    An EXIF orientation tag is applied first (a camera stores a portrait photo as landscape
    pixels plus the tag), so the image is seen upright. The image is converted to L or RGB
    (alpha dropped, palette expanded, 16-bit grey scaled to 8 bits) and resized to S x S with
    bilinear filtering, antialiased when shrinking. The aspect ratio is not kept: stretching
    keeps every part of the object, where a crop could cut off the part that decides the label.
    JPEGs at least twice S are decoded at a reduced DCT scale first (still at least S on each
    side), several times faster than a full decode followed by the same resize, which it
    matches up to resampling differences.

    Parameters
    ----------
    path : str
    image_size : int
        ``S``.
    channels : {1, 3}

    Returns
    -------
    ndarray (S, S, C) uint8
    """
    with Image.open(path) as im:
        if im.format == "JPEG" and min(im.size) >= 2 * image_size:
            im.draft(im.mode, (image_size, image_size))
        ImageOps.exif_transpose(im, in_place=True)
        im = convert_image(im, channels)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.array(im)  # a writable copy: the caller may hand it to torch.from_numpy
    return arr[..., None] if arr.ndim == 2 else arr


class UserImageDataset(Dataset):
    """Map-style dataset over image files, yielding ``(x, y, index)`` for DataLoader workers.

    ``x`` is float32 (C, S, S): the file decoded by :func:`decode_image` (the same pixels as the
    in-memory path), scaled to [0, 1] and normalised by ``mean``/``std``.

    Parameters
    ----------
    paths : sequence of str (N,)
    targets : ndarray (N,) int
        Labels to yield, e.g. noisy ones.
    image_size : int
        ``S``.
    channels : {1, 3}
    mean, std : sequence of float (C,)
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray,
        *,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.shape != (len(paths),):
            raise ValueError(f"targets must have shape ({len(paths)},), got {targets.shape}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self.paths = list(paths)
        self.targets = targets
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        arr = decode_image(self.paths[index], self.image_size, self.channels)
        x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std, int(self.targets[index]), index
