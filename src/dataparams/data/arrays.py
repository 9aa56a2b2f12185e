"""A user's labelled data as ``(X, y)`` arrays (numpy or torch) or a torch ``Dataset`` yielding
``(x, y)``: read into a :class:`~dataparams.data.userdata.UserData` of features or images.

Notation: ``N`` samples, ``K`` classes, ``D`` features, ``H`` x ``W`` an image's size, ``C``
channels. :func:`~dataparams.data.tables.load_table_data` is the entry point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset

from dataparams.data.features import features_data, to_float32
from dataparams.data.labels import (
    check_class_list,
    check_classes_used,
    class_choice,
    encode_values,
    label_values,
)
from dataparams.data.memory_images import MemoryImage, images_data, memory_image, pixels_to_uint8
from dataparams.data.userdata import UserData, UserDataError

__all__ = ["from_arrays", "from_torch"]


# ---------------------------------------------------------------------------------------------
# (X, y) arrays and torch datasets
# ---------------------------------------------------------------------------------------------
def from_arrays(
    x: Any, y: Any, given: list[str] | None, opts: dict[str, Any]
) -> UserData:
    """``(X, y)`` arrays (numpy or torch): ``X`` (N, D) features, or (N, H, W[, C]) images (a
    tensor's are (N, C, H, W)) read as images held in memory. ``given`` is the class list,
    ``opts`` the image options of :func:`~dataparams.data.tables.load_table_data`."""
    source = "arrays"
    torch_layout = isinstance(x, Tensor)
    if torch_layout:
        x = x.detach().cpu()
        x = (x.permute(0, 2, 3, 1) if x.ndim == 4 else x).numpy()
    x = np.asarray(x)
    if x.ndim < 2:
        raise UserDataError(f"{source}: X of shape {x.shape}; expected (N, D) features or (N, H, W[, C]) images")
    labels = label_values(y, lambda i: f"{source}: y[{i}]", f"{source}: y", row=lambda i: f"y[{i}]")
    if len(x) != len(labels):
        raise UserDataError(f"{source}: X has {len(x):,} rows but y has {len(labels):,} labels")
    if len(x) == 0:
        raise UserDataError(f"{source}: zero samples (X is empty)")
    targets, classes, why = encode_values(labels, given, lambda i: f"{source}: y[{i}]", "the classes argument",
                                          row=lambda i: f"y[{i}]")
    check_classes_used(targets, classes, f"{source}: y")
    ids = [f"row {i}" for i in range(len(x))]
    n = len(x)
    if x.ndim == 2:
        if x.dtype.kind not in "biuf":
            raise UserDataError(f"{source}: X must be numeric, got dtype {x.dtype}")
        if x.shape[1] == 0:
            raise UserDataError(f"{source}: X has zero features (shape {x.shape})")
        features = to_float32(x, lambda i, j: f"{source}: X[{i}, {j}] (row {i}, column {j})")
        choices = {
            "kind": {"value": "features", "why": f"X is {n:,} x {x.shape[1]} {x.dtype}, stored as float32"},
            "classes": class_choice(classes, targets, why),
        }
        return features_data(source, features, targets, classes, ids, choices)
    if x.ndim == 4 and x.shape[3] not in (1, 2, 3, 4):
        hint = " (channels first? a numpy X is (N, H, W, C); a torch tensor is (N, C, H, W))"
        raise UserDataError(f"{source}: X of shape {x.shape} holds no images with 1-4 channels{hint}")
    if x.ndim > 4:
        raise UserDataError(f"{source}: X of shape {x.shape}; images are (N, H, W) or (N, H, W, C)")
    if x.dtype.kind == "f":
        rows = ~((x >= 0) & (x <= 1)).reshape(n, -1).all(1)  # NaN fails both comparisons
        if rows.any():
            i = int(np.flatnonzero(rows)[0])
            pixels_to_uint8(x[i], f"{source}: X[{i}]")  # raises, describing the row
    images = [memory_image(x[i], torch_layout=False, where=f"{source}: X[{i}]", label="(pixels)") for i in range(n)]
    layout = "a torch tensor (N, C, H, W)" if torch_layout else "an array (N, H, W, C)"
    choices = {
        "kind": {"value": "images", "why": f"X is {layout}: {n:,} images {tuple(x.shape[1:])} {x.dtype}"},
        "classes": class_choice(classes, targets, why),
    }
    if x.dtype.kind == "f":
        choices["pixels"] = {"value": "x 255, rounded", "why": "float pixels in [0, 1] stored as uint8"}
    return images_data(source, ids, images, targets, classes, lambda i: f"{source}: X[{i}]", choices, opts)


def from_torch(ds: Any, given: list[str] | None, opts: dict[str, Any], progress: bool) -> UserData:
    """A torch ``Dataset`` yielding ``(x, y)``, read once (by index, or in order when iterable):
    every ``x`` an image or every ``x`` a feature vector. Its ``classes`` (torchvision's) name
    the classes unless ``given``."""
    from tqdm import tqdm

    source = type(ds).__name__

    def where(i: int) -> str:
        return f"{source}: sample {i}"

    if isinstance(ds, IterableDataset):
        items: Any = iter(ds)
        n = None
    else:
        try:
            n = len(ds)
        except TypeError:
            raise UserDataError(f"{source}: a map-style Dataset needs __len__") from None
        items = (ds[i] for i in range(n))
    kind = None
    images: list[str | MemoryImage] = []
    vectors: list[np.ndarray] = []
    labels: list[Any] = []
    floats = False
    for i, item in enumerate(tqdm(items, total=n, desc="reading the dataset", unit="sample",
                                  disable=not progress, leave=False)):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            got = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
            raise UserDataError(f"{where(i)}: is {got}; the dataset must yield (x, y)")
        x, y = item
        dims = x.ndim if isinstance(x, (Tensor, np.ndarray)) else None
        this = "images" if isinstance(x, Image.Image) or dims in (2, 3) else "features" if dims == 1 else None
        if this is None:
            shape = f" of shape {tuple(x.shape)}" if dims is not None else ""
            raise UserDataError(
                f"{where(i)}: x is a {type(x).__name__}{shape}; expected a PIL image, an image tensor "
                "(C, H, W) or array (H, W, C), or a 1-D feature vector"
            )
        if kind is None:
            kind, first_x = this, x
        elif this != kind:
            raise UserDataError(f"{where(i)}: x holds {this} where sample 0 holds {kind}")
        if this == "images":
            floats |= (isinstance(x, Tensor) and x.is_floating_point()) or (
                isinstance(x, np.ndarray) and x.dtype.kind == "f")
            images.append(memory_image(x, torch_layout=isinstance(x, Tensor), where=where(i), label="(pixels)"))
        else:
            v = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
            if vectors and len(v) != len(vectors[0]):
                raise UserDataError(f"{where(i)}: x holds {len(v)} features where sample 0 holds {len(vectors[0])}")
            vectors.append(v)
        labels.append(y)
    if kind is None:
        raise UserDataError(f"{source}: zero samples")

    # torchvision's datasets name their classes; the class indices they yield index that list.
    class_source = "the classes argument"
    names = getattr(ds, "classes", None)
    if given is None and isinstance(names, (list, tuple)) and names and all(isinstance(c, str) for c in names):
        given, class_source = check_class_list(list(names), f"{source}.classes"), f"{source}.classes"
    values = label_values(labels, lambda i: f"{where(i)}, y", f"{source}: y", row=lambda i: f"sample {i}")
    targets, classes, why = encode_values(values, given, lambda i: f"{where(i)}, y", class_source,
                                          row=lambda i: f"sample {i}")
    check_classes_used(targets, classes, f"{source}: y")
    ids = [f"row {i}" for i in range(len(targets))]
    count = len(targets)
    if isinstance(first_x, Image.Image):
        what = f"PIL image ({first_x.mode}, {first_x.width}x{first_x.height})"
    else:
        what = f"{type(first_x).__name__} {tuple(first_x.shape)}"
    choices: dict[str, Any] = {
        "kind": {"value": kind, "why": f"torch Dataset {source}: {count:,} samples, x is a {what}"},
        "classes": class_choice(classes, targets, why),
    }
    if kind == "features":
        x = np.stack(vectors)
        if x.dtype.kind not in "biuf":
            raise UserDataError(f"{source}: features of dtype {x.dtype}; they must be numbers")
        features = to_float32(x, lambda i, j: f"{where(i)}, x[{j}]")
        return features_data(source, features, targets, classes, ids, choices)
    if floats:
        choices["pixels"] = {"value": "x 255, rounded", "why": "float pixels in [0, 1] stored as uint8"}
    return images_data(source, ids, images, targets, classes, where, choices, opts)
