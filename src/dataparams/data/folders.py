"""Image-file datasets: ImageNet class folders, WebVision 1.0 file lists, CSV/TSV file lists.

Notation: ``N`` samples, ``K`` classes. These loaders return a :class:`~dataparams.data.base.Split`
with ``paths`` (one image file per sample) rather than pixels; :class:`ImageFileDataset` opens
them batch by batch. Only the lists are read at load time (plus one image, to catch a wrong
root early), so loading 1.3M ImageNet paths takes seconds.

The ImageNet transforms are those of the paper's ImageNet and WebVision experiments
(sec. 3.3, 3.5): the standard torchvision recipe.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dataparams.data.base import DatasetFormatError, DatasetNotFoundError, Split

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "ImageFileDataset",
    "imagenet_transforms",
    "is_hidden",
    "load_filelist",
    "load_image_folder",
    "load_imagenet",
    "load_webvision",
]

# The same set torchvision's ImageFolder accepts, so both see the same files in the same order
# (hidden ones aside: is_hidden).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IMAGENET_HOW_TO = (
    "ImageNet (ILSVRC2012) is distributed by its maintainers under their terms of access. "
    "Arrange it as <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG: one folder per "
    "class, the validation images sorted into class folders too (the layout "
    "torchvision.datasets.ImageFolder reads)."
)
_WEBVISION_HOW_TO = (
    "Extract the WebVision 1.0 archives (the resized images, the validation images and the "
    "info lists) into root so that it holds info/, google/, flickr/ and val_images_256/."
)


def is_hidden(name: str) -> bool:
    """Whether a file or folder is hidden (its name starts with a dot). Such entries are tools'
    leftovers, not data -- Jupyter's ``.ipynb_checkpoints/``, macOS's ``._photo.jpg`` resource
    forks -- and are skipped everywhere in class folders, where torchvision's ImageFolder would
    take ``.ipynb_checkpoints`` for an (empty) class."""
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not is_hidden(name)


def _check_first_exists(paths: list[str], what: str, how_to_get: str) -> None:
    # Checking every file would stat millions of paths; the first one catches a wrong root.
    if paths and not os.path.isfile(paths[0]):
        raise DatasetNotFoundError(f"{what}: image {paths[0]} not found. {how_to_get}")


def _subfolders(path: Path) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))


def _walk(top: Path) -> Any:
    """``os.walk(top, followlinks=True)`` (torchvision's ImageFolder follows links too), refusing
    a folder reached twice: a symbolic link to one of its own parents would otherwise be walked
    until the path is too long, and two links to one folder would list its images twice."""
    seen: dict[tuple[int, int], str] = {}
    for entry in os.walk(top, followlinks=True):
        entry[1][:] = [d for d in entry[1] if not is_hidden(d)]  # in place: os.walk then skips them
        st = os.stat(entry[0])
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise DatasetFormatError(f"{entry[0]} is the folder {seen[key]} again (a symbolic link loop, or two links to "
                             "one folder): remove the link so that each image is listed once")
        seen[key] = entry[0]
        yield entry


def _image_folder(root: Path, *, name: str, classes: list[str] | None = None, how_to_get: str) -> Split:
    if not root.is_dir():
        raise DatasetNotFoundError(f"{name}: folder {root} not found. {how_to_get}")
    found = _subfolders(root)
    if classes is None:
        classes = found
    elif extra := sorted(set(found) - set(classes)):
        raise DatasetFormatError(f"{root}: class folders {extra[:5]} are not among the {len(classes)} known classes")
    if not classes:
        with os.scandir(root) as entries:
            flat = any(_is_image(e.name) for e in entries if e.is_file())
        hint = " It holds images directly: sort them into one subfolder per class." if flat else ""
        raise DatasetNotFoundError(f"{name}: no class folders in {root}.{hint} {how_to_get}")
    paths: list[str] = []
    targets: list[int] = []
    for k, cls in enumerate(classes):
        # Walk order as torchvision's make_dataset, so sample i is the same image in both.
        for dirpath, _, fnames in sorted(_walk(root / cls)):
            for fname in sorted(fnames):
                if _is_image(fname):
                    paths.append(os.path.join(dirpath, fname))
                    targets.append(k)
    if not paths:
        raise DatasetNotFoundError(
            f"{name}: no images ({', '.join(IMG_EXTENSIONS)}) under the class folders of {root}. {how_to_get}"
        )
    return Split(np.asarray(targets, dtype=np.int64), list(classes), paths=paths, name=name)


def load_image_folder(root: str | os.PathLike) -> Split:
    """Images in class folders, ``root/<class>/**/<image>``, as torchvision's ImageFolder.

    Parameters
    ----------
    root : path-like

    Returns
    -------
    Split
        ``classes`` the sorted folder names (a folder without images is still a class),
        ``paths`` in torchvision's order, ``targets`` int64 (N,).
    """
    root = Path(root)
    return _image_folder(
        root,
        name=root.name,
        how_to_get="Expected one subfolder per class holding that class's images.",
    )


def load_imagenet(root: str | os.PathLike, *, train: bool = True) -> Split:
    """ImageNet (ILSVRC2012) from ``root/train`` or ``root/val`` in class-folder layout.

    Parameters
    ----------
    root : path-like
        Holds ``train/`` and ``val/``, each with one folder per class (WordNet id).
    train : bool
        The training split, else the validation split. The validation split takes its class
        list from ``root/train`` when present, so class indices agree between the two.

    Returns
    -------
    Split
        ``paths``, ``targets`` int64 (N,), ``classes`` the sorted folder names.
    """
    root = Path(root)
    part = "train" if train else "val"
    classes = None
    if not train and (root / "train").is_dir():
        classes = _subfolders(root / "train") or None
    return _image_folder(root / part, name=f"imagenet/{part}", classes=classes, how_to_get=_IMAGENET_HOW_TO)


def _read_list(path: Path, *, base: Path, num_classes: int) -> tuple[list[str], list[int]]:
    """Lines ``relative/path label`` -> (paths under ``base``, labels), keeping labels < K."""
    paths, labels = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)
            try:
                rel, label = fields[0], int(fields[1])
            except (IndexError, ValueError):
                raise DatasetFormatError(f"{path}:{lineno}: expected 'path label', got {line.strip()!r}") from None
            if label < 0:
                raise DatasetFormatError(f"{path}:{lineno}: negative label {label}")
            if label < num_classes:
                paths.append(str(base / rel))
                labels.append(label)
    return paths, labels


def load_webvision(
    root: str | os.PathLike,
    *,
    train: bool = True,
    num_classes: int = 1000,
    sources: Sequence[str] = ("google", "flickr"),
) -> Split:
    """WebVision 1.0: 2.4M web images with noisy labels of the 1000 ImageNet classes (sec. 3.5).

    Reads ``root/info/train_filelist_<source>.txt`` (lines ``google/q0001/x.jpg 0``, paths
    relative to ``root``) for the training split, ``root/info/val_filelist.txt`` (lines
    ``val000001.jpg 0``, images in ``root/val_images_256/``) for the validation split.

    Parameters
    ----------
    root : path-like
    train : bool
        The (noisy) training split, else the (clean) validation split.
    num_classes : int
        Keep only samples with label < ``num_classes``; 50 gives the common "mini WebVision".
    sources : sequence of {"google", "flickr"}
        Which training lists to read, in that order.

    Returns
    -------
    Split
        ``paths``, ``targets`` int64 (N,); ``classes`` the first ``num_classes`` lines of
        ``root/info/synsets.txt`` when it exists, else ``"class_<k>"``.
    """
    root = Path(root)
    if not 1 <= num_classes <= 1000:
        raise ValueError(f"num_classes must lie in [1, 1000], got {num_classes}")
    if isinstance(sources, str):
        sources = (sources,)
    if not sources or not set(sources) <= {"google", "flickr"}:
        raise ValueError(f"sources must be a non-empty subset of ('google', 'flickr'), got {sources!r}")
    if train:
        lists = [(root / "info" / f"train_filelist_{s}.txt", root) for s in sources]
    else:
        lists = [(root / "info" / "val_filelist.txt", root / "val_images_256")]
    name = ("webvision" if num_classes == 1000 else f"webvision{num_classes}") + (
        "/train" if train else "/val"
    )
    missing = [str(p) for p, _ in lists if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"{name}: {', '.join(missing)} not found. {_WEBVISION_HOW_TO}")

    paths: list[str] = []
    targets: list[int] = []
    for list_path, base in lists:
        p, t = _read_list(list_path, base=base, num_classes=num_classes)
        paths += p
        targets += t
    _check_first_exists(paths, name, _WEBVISION_HOW_TO)

    synsets = root / "info" / "synsets.txt"
    if synsets.is_file():
        names = [line.strip() for line in synsets.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) < num_classes:
            raise DatasetFormatError(f"{synsets}: {len(names)} class names, need {num_classes}")
        classes = names[:num_classes]
    else:
        classes = [f"class_{k}" for k in range(num_classes)]
    return Split(np.asarray(targets, dtype=np.int64), classes, paths=paths, name=name)


def load_filelist(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    delimiter: str | None = None,
) -> Split:
    """Any image dataset listed in a CSV or TSV file of ``path,label`` rows.

    Parameters
    ----------
    path : path-like
        The list. An optional first row ``path,label`` is a header. Labels are either all
        integers (classes ``"0"`` to ``str(max)``) or class names (sorted, then numbered).
    root : path-like, optional
        Folder the image paths are relative to; by default the list's own folder. Absolute
        paths are kept as they are.
    delimiter : str, optional
        Field separator; by default a tab for ``.tsv`` files, else a comma.

    Returns
    -------
    Split
        ``paths`` in file order, ``targets`` int64 (N,), ``classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"file list {path} not found: expected a CSV/TSV of path,label rows")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    base = Path(root) if root is not None else path.parent

    rows: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter=delimiter), 1):
            if not row or all(not field.strip() for field in row):
                continue
            fields = [field.strip() for field in row]
            if len(fields) != 2:
                raise DatasetFormatError(
                    f"{path}:{lineno}: expected 2 fields (path, label) separated by {delimiter!r}, "
                    f"got {len(fields)}"
                )
            if not rows and [x.lower() for x in fields] == ["path", "label"]:
                continue
            rows.append((fields[0], fields[1]))
    if not rows:
        raise DatasetFormatError(f"{path}: no samples")

    raw = [label for _, label in rows]
    try:
        numeric = [int(label) for label in raw]
    except ValueError:
        numeric = None
    if numeric is not None:
        if min(numeric) < 0:
            raise DatasetFormatError(f"{path}: negative label {min(numeric)}")
        classes = [str(k) for k in range(max(numeric) + 1)]
        targets = numeric
    else:
        classes = sorted(set(raw))
        lookup = {c: k for k, c in enumerate(classes)}
        targets = [lookup[label] for label in raw]
    paths = [str(base / p) for p, _ in rows]
    _check_first_exists(paths, str(path), "Paths are relative to the list's folder unless root is given.")
    return Split(np.asarray(targets, dtype=np.int64), classes, paths=paths, name=path.stem)


def imagenet_transforms(train: bool) -> Callable[[Any], Any]:
    """The standard ImageNet transforms: PIL image -> normalised float tensor (3, 224, 224).

    Training: ``RandomResizedCrop(224)``, ``RandomHorizontalFlip``; evaluation: ``Resize(256)``,
    ``CenterCrop(224)``. Both end with ``ToTensor`` and ``Normalize`` by the ImageNet mean/std.
    """
    from torchvision import transforms as T  # deferred: importing torchvision is slow

    if train:
        head = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    else:
        head = [T.Resize(256), T.CenterCrop(224)]
    return T.Compose([*head, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageFileDataset(Dataset):
    """Map-style dataset over a :class:`Split` with ``paths``, yielding ``(image, target, index)``.

    Parameters
    ----------
    split : Split
        Must have ``paths``.
    transform : callable or None
        Applied to the RGB PIL image, e.g. :func:`imagenet_transforms`; None yields the PIL image.
    targets : ndarray (N,) int, optional
        Labels to yield instead of ``split.targets``, e.g. noisy labels.
    """

    def __init__(
        self,
        split: Split,
        transform: Callable[[Any], Any] | None,
        *,
        targets: np.ndarray | None = None,
    ) -> None:
        if split.paths is None:
            raise ValueError(f"{split.name}: ImageFileDataset needs a split with paths, not in-memory images")
        if targets is None:
            targets = split.targets
        targets = np.asarray(targets, dtype=np.int64)
        if targets.shape != (len(split),):
            raise ValueError(f"targets must have shape ({len(split)},), got {targets.shape}")
        self.split = split
        self.transform = transform
        self.targets = targets

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        with Image.open(self.split.paths[index]) as im:  # type: ignore[index]
            image = im.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index
