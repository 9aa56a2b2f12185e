"""Loaders, each checked on a tiny dataset written in the real on-disk format."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fakes
from dataparams.data import idx as idx_module
from dataparams.data.base import DatasetNotFoundError, Split
from dataparams.data.cifar import (
    check_labels_match,
    load_cifar10,
    load_cifar100,
    load_cifar_n_labels,
)
from dataparams.data.folders import (
    ImageFileDataset,
    imagenet_transforms,
    load_filelist,
    load_image_folder,
    load_imagenet,
    load_webvision,
)
from dataparams.data.idx import load_fashion_mnist, load_idx_file, load_mnist
from dataparams.data.indexed import WithIndex

# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def _idx_bytes(magic, arr):
    return (
        struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    )


def _write(path, data, gz):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)


def _write_idx_split(folder, prefix, images, labels, *, gz):
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(2051, images), gz)
    _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(2049, labels), gz)


def _tiny_idx(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.fixture
def idx_root(tmp_path):
    train = _tiny_idx(5, 0)
    test = _tiny_idx(3, 1)
    _write_idx_split(tmp_path, "train", *train, gz=True)
    _write_idx_split(tmp_path, "t10k", *test, gz=False)
    return tmp_path, train, test


def test_idx_gz_and_raw(idx_root):
    root, (train_x, train_y), (test_x, test_y) = idx_root
    train = load_fashion_mnist(root)
    test = load_fashion_mnist(root, train=False)
    assert train.images.shape == (5, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (3, 28, 28, 1)
    # Pixels are row-major after the header: byte 16 + i*784 + r*28 + c is image i, row r, col c.
    raw = gzip.open(root / "train-images-idx3-ubyte.gz").read()
    assert train.images[2, 3, 7, 0] == raw[16 + 2 * 784 + 3 * 28 + 7]
    np.testing.assert_array_equal(train.images[..., 0], train_x)
    np.testing.assert_array_equal(test.images[..., 0], test_x)
    np.testing.assert_array_equal(train.targets, train_y)
    assert train.targets.dtype == np.int64
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot" and train.num_classes == 10
    assert train.name == "fashion-mnist/train" and test.name == "fashion-mnist/test"


def test_mnist_class_names(idx_root):
    root, _, _ = idx_root
    split = load_mnist(root)
    assert split.classes == [str(k) for k in range(10)]
    assert split.name == "mnist/train"


def test_load_idx_file_raw_and_gz(idx_root):
    root, (train_x, train_y), (test_x, _) = idx_root
    np.testing.assert_array_equal(load_idx_file(root / "train-labels-idx1-ubyte.gz"), train_y)
    np.testing.assert_array_equal(load_idx_file(root / "t10k-images-idx3-ubyte"), test_x)


def test_idx_multibyte_dtype(tmp_path):
    arr = np.array([[1, -2], [300, 70000]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + arr.tobytes())
    out = load_idx_file(path)
    np.testing.assert_array_equal(out, [[1, -2], [300, 70000]])
    assert out.dtype.isnative


def test_idx_truncated_file_names_the_file(tmp_path):
    x, y = _tiny_idx(4, 0)
    _write_idx_split(tmp_path, "train", x, y, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    # A download cut short: the gzip stream ends early.
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_fashion_mnist(tmp_path)
    # A complete gzip stream whose payload is shorter than the header declares.
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(2051, x)[:-100], gz=True)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_fashion_mnist(tmp_path)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="junk.*not an IDX file"):
        load_idx_file(path)
    # Image and label files swapped: valid IDX, wrong magic number for the role.
    x, y = _tiny_idx(4, 0)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(2049, y), gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(2049, y), gz=False)
    with pytest.raises(ValueError, match="magic number 2051"):
        load_mnist(tmp_path)


def test_idx_count_mismatch(tmp_path):
    x, y = _tiny_idx(4, 0)
    _write_idx_split(tmp_path, "train", x, y[:3], gz=False)
    with pytest.raises(ValueError, match="4 images.*3 labels"):
        load_mnist(tmp_path)


def test_idx_torchvision_layout(tmp_path):
    x, y = _tiny_idx(2, 0)
    _write_idx_split(tmp_path / "FashionMNIST" / "raw", "train", x, y, gz=False)
    assert len(load_fashion_mnist(tmp_path)) == 2


def test_idx_default_root_from_env(tmp_path, monkeypatch):
    x, y = _tiny_idx(3, 0)
    _write_idx_split(tmp_path / "fashion-mnist", "train", x, y, gz=True)
    monkeypatch.setenv("DATAPARAMS_DATA_DIR", str(tmp_path))
    assert len(load_fashion_mnist()) == 3


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAPARAMS_DATA_DIR", raising=False)
    monkeypatch.setattr(idx_module, "SYSTEM_DATA_DIR", tmp_path / "system")
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.data_dir" in msg and "train-images-idx3-ubyte" in msg
    assert str(tmp_path / "system" / "fashion-mnist") in msg
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_mnist(tmp_path, train=False)


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train = load_fashion_mnist(REAL_FASHION_MNIST)
    test = load_fashion_mnist(REAL_FASHION_MNIST, train=False)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    for split in (train, test):
        assert split.targets.min() == 0 and split.targets.max() == 9
        # Fashion-MNIST is balanced: 6,000 / 1,000 images per class.
        assert (np.bincount(split.targets) == len(split) // 10).all()


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 python pickles


def _cifar_rows(n, seed):
    """(n, 3072) uint8 rows as in the real files: 1024 R, 1024 G, 1024 B, each row-major."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


_dump = fakes.dump_python2_pickle


CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        data = _cifar_rows(2 if name != "test_batch" else 3, i)
        labels = [(i + j) % 10 for j in range(len(data))]
        _dump(
            folder / name,
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{j}.png".encode() for j in range(len(data))],
            },
        )
        batches[name] = (data, labels)
    _dump(
        folder / "batches.meta",
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 2, b"num_vis": 3072},
    )
    return tmp_path, batches


def test_cifar10_layout_and_order(cifar10_root):
    root, batches = cifar10_root
    train = load_cifar10(root)
    assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes == CIFAR10_NAMES and train.name == "cifar10/train"
    # Batches 1..5 in order.
    np.testing.assert_array_equal(
        train.targets, sum((batches[f"data_batch_{b}"][1] for b in range(1, 6)), [])
    )
    # Channel layout: pixel (row r, col c) of image 3 (batch 2, first image) is bytes
    # r*32+c (red), 1024+r*32+c (green), 2048+r*32+c (blue) of its row.
    row = batches["data_batch_2"][0][1]
    for r, c in ((0, 0), (1, 5), (31, 30)):
        np.testing.assert_array_equal(
            train.images[3, r, c], [row[r * 32 + c], row[1024 + r * 32 + c], row[2048 + r * 32 + c]]
        )
    assert train.images.flags.c_contiguous


def test_cifar10_test_split_and_folder_itself(cifar10_root):
    root, batches = cifar10_root
    test = load_cifar10(root / "cifar-10-batches-py", train=False)
    assert len(test) == 3 and test.name == "cifar10/test"
    np.testing.assert_array_equal(test.targets, batches["test_batch"][1])


def test_cifar10_missing_batch(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3.*cifar-10-python.tar.gz"):
        load_cifar10(root)
    # torchvision verifies the whole archive, whichever split is read.
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_cifar10(root, train=False)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(root / "elsewhere")


def test_cifar10_files_that_are_not_the_published_archive_are_refused(cifar10_root, real_cifar_checksums):
    # torchvision verifies the published checksums; the fakes cannot match them.
    root, _ = cifar10_root
    with pytest.raises(ValueError, match="checksums"):
        load_cifar10(root)


def test_cifar10_corrupt_pickle(cifar10_root):
    root, _ = cifar10_root
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10(root)


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"fine{k:02d}" for k in range(100)]
    for part, n in (("train", 4), ("test", 2)):
        data = _cifar_rows(n, n)
        data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 10, 20, 30
        _dump(
            folder / part,
            {b"data": data, b"fine_labels": [99, 0, 42, 7][:n], b"coarse_labels": [1] * n, b"filenames": []},
        )
    _dump(folder / "meta", {b"fine_label_names": [s.encode() for s in fine_names], b"coarse_label_names": []})
    train = load_cifar100(tmp_path)
    assert train.images.shape == (4, 32, 32, 3) and train.num_classes == 100
    np.testing.assert_array_equal(train.targets, [99, 0, 42, 7])
    assert (train.images[0] == [10, 20, 30]).all()
    assert train.classes == fine_names
    test = load_cifar100(folder, train=False)
    assert len(test) == 2 and test.name == "cifar100/test"


# ---------------------------------------------------------------------------------------------
# CIFAR-10N / CIFAR-100N label files


def _split(n, k):
    return Split(np.arange(n) % k, [str(i) for i in range(k)], images=np.zeros((n, 1, 1, 3), np.uint8))


@pytest.fixture
def cifar10n_file(tmp_path):
    rng = np.random.default_rng(0)
    sets = {
        key: rng.integers(0, 10, size=20)
        for key in fakes.CIFAR10N_KEYS
    }
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(sets, path)
    return path, sets


def test_cifar10n_label_sets(cifar10n_file):
    path, sets = cifar10n_file
    for label_set, key in (("worst", "worse_label"), ("aggre", "aggre_label"), ("random2", "random_label2")):
        labels = load_cifar_n_labels(path, label_set=label_set)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, sets[key])
    np.testing.assert_array_equal(
        load_cifar_n_labels(path, label_set="clean", split=_split(20, 10)), sets["clean_label"]
    )


def test_cifar_n_errors(cifar10n_file, tmp_path):
    path, _ = cifar10n_file
    with pytest.raises(ValueError, match="CIFAR-100N"):
        load_cifar_n_labels(path, label_set="noisy")
    with pytest.raises(ValueError, match="valid: clean, aggre"):
        load_cifar_n_labels(path, label_set="worse")
    with pytest.raises(ValueError, match="training split"):
        load_cifar_n_labels(path, label_set="aggre", split=_split(19, 10))
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10_human.pt"):
        load_cifar_n_labels(tmp_path / "missing.pt", label_set="aggre")


def test_cifar100n(tmp_path):
    noisy = np.array([5, 99, 0, 3])
    path = tmp_path / "CIFAR-100_human.pt"
    torch.save(
        {
            "clean_label": np.array([5, 98, 0, 3]),
            "noisy_label": noisy,
            "noisy_coarse_label": np.zeros(4, int),
            "clean_coarse_label": np.zeros(4, int),
        },
        path,
    )
    np.testing.assert_array_equal(load_cifar_n_labels(path, label_set="noisy", split=_split(4, 100)), noisy)


def test_check_labels_match_range():
    with pytest.raises(ValueError, match="10 classes"):
        check_labels_match(np.array([0, 1, 10, 2]), _split(4, 10))


# ---------------------------------------------------------------------------------------------
# Image folders, WebVision lists, CSV/TSV lists, ImageFileDataset


def _png(path, color, mode="RGB", size=(4, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "folders"
    _png(root / "cat" / "b.png", (255, 0, 0))
    _png(root / "cat" / "a.png", (250, 0, 0))
    _png(root / "cat" / "sub" / "c.PNG", (240, 0, 0))
    _png(root / "dog" / "d.png", 128, mode="L")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_image_folder_matches_torchvision(class_folders):
    from torchvision.datasets import ImageFolder

    split = load_image_folder(class_folders)
    assert split.classes == ["cat", "dog", "empty"]
    np.testing.assert_array_equal(split.targets, [0, 0, 0, 1])
    reference = ImageFolder(str(class_folders), allow_empty=True)
    assert reference.classes == split.classes
    assert [(p, t) for p, t in reference.samples] == list(zip(split.paths, split.targets.tolist()))
    assert not split.in_memory


def test_image_file_dataset(class_folders):
    split = load_image_folder(class_folders)
    plain = ImageFileDataset(split, None)
    image, target, index = plain[3]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (128, 128, 128)  # grey -> RGB
    assert (target, index) == (1, 3)
    assert plain[0][0].getpixel((0, 0)) == (250, 0, 0)  # a.png sorts before b.png

    noisy = np.array([2, 2, 1, 0])
    ds = ImageFileDataset(split, imagenet_transforms(False), targets=noisy)
    x, y, i = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 224, 224)
    assert y.tolist() == [2, 2, 1, 0] and i.tolist() == [0, 1, 2, 3]
    # Normalised red channel of a pure red image: (1 - mean) / std.
    assert x[1, 0, 100, 100].item() == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-4)
    with pytest.raises(ValueError, match="shape"):
        ImageFileDataset(split, None, targets=noisy[:3])
    with pytest.raises(ValueError, match="paths"):
        ImageFileDataset(_split(4, 2), None)


def test_imagenet_train_transform_shape(class_folders):
    ds = ImageFileDataset(load_image_folder(class_folders), imagenet_transforms(True))
    assert ds[0][0].shape == (3, 224, 224)


def test_imagenet_layout(tmp_path):
    for part in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            _png(tmp_path / part / wnid / f"{part}_{wnid}.JPEG", (1, 2, 3))
    train = load_imagenet(tmp_path)
    val = load_imagenet(tmp_path, train=False)
    assert train.classes == val.classes == ["n01440764", "n01443537"]
    assert train.name == "imagenet/train" and val.name == "imagenet/val"
    # A class missing from val keeps the indices of train.
    for f in (tmp_path / "val" / "n01440764").iterdir():
        f.unlink()
    (tmp_path / "val" / "n01440764").rmdir()
    val = load_imagenet(tmp_path, train=False)
    assert val.classes == train.classes and val.targets.tolist() == [1]


def test_imagenet_flat_val_and_missing(tmp_path):
    _png(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", (1, 2, 3))
    with pytest.raises(DatasetNotFoundError, match="sort them into one subfolder per class"):
        load_imagenet(tmp_path, train=False)
    with pytest.raises(DatasetNotFoundError, match="train.*ILSVRC2012"):
        load_imagenet(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="class folders"):
        load_image_folder(tmp_path / "val")


@pytest.fixture
def webvision_root(tmp_path):
    root = tmp_path / "webvision"
    google = [("google/q0001/00000001.jpg", 0), ("google/q0060/00000002.jpg", 59), ("google/q0003/3.jpg", 2)]
    flickr = [("flickr/q0001/00000009.jpg", 0), ("flickr/q0999/00000010.jpg", 998)]
    val = [("val000001.jpg", 49), ("val000002.jpg", 50)]
    (root / "info").mkdir(parents=True)
    for name, rows in (("train_filelist_google.txt", google), ("train_filelist_flickr.txt", flickr)):
        (root / "info" / name).write_text("".join(f"{p} {y}\n" for p, y in rows))
        for p, _ in rows:
            Image.new("RGB", (3, 3)).save(_mkparent(root / p), "JPEG")
    (root / "info" / "val_filelist.txt").write_text("".join(f"{p} {y}\n" for p, y in val) + "\n")
    for p, _ in val:
        Image.new("RGB", (3, 3)).save(_mkparent(root / "val_images_256" / p), "JPEG")
    return root


def _mkparent(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_webvision_train_and_val(webvision_root):
    root = webvision_root
    train = load_webvision(root)
    assert train.targets.tolist() == [0, 59, 2, 0, 998]
    assert train.paths[1] == str(root / "google/q0060/00000002.jpg")
    assert train.classes == [f"class_{k}" for k in range(1000)] and train.name == "webvision/train"
    val = load_webvision(root, train=False)
    assert val.paths == [
        str(root / "val_images_256" / "val000001.jpg"),
        str(root / "val_images_256" / "val000002.jpg"),
    ]
    assert val.targets.tolist() == [49, 50]
    assert ImageFileDataset(val, None)[1][1:] == (50, 1)


def test_mini_webvision_and_sources(webvision_root):
    root = webvision_root
    (root / "info" / "synsets.txt").write_text("".join(f"n{k:08d} name {k}\n" for k in range(1000)))
    mini = load_webvision(root, num_classes=50)
    assert mini.targets.tolist() == [0, 2, 0] and mini.num_classes == 50
    assert mini.classes[2] == "n00000002 name 2" and mini.name == "webvision50/train"
    assert load_webvision(root, train=False, num_classes=50).targets.tolist() == [49]
    flickr = load_webvision(root, sources=("flickr",))
    assert flickr.targets.tolist() == [0, 998]
    with pytest.raises(ValueError, match="sources"):
        load_webvision(root, sources=("bing",))
    with pytest.raises(ValueError, match="num_classes"):
        load_webvision(root, num_classes=0)


def test_webvision_missing(tmp_path, webvision_root):
    with pytest.raises(DatasetNotFoundError, match="train_filelist_google.txt.*info/"):
        load_webvision(tmp_path / "nothing")
    # Lists present, images not extracted.
    for p in (webvision_root / "google").rglob("*.jpg"):
        p.unlink()
    with pytest.raises(DatasetNotFoundError, match="00000001.jpg not found"):
        load_webvision(webvision_root)


def test_filelist_csv_with_header_and_integer_labels(tmp_path):
    _png(tmp_path / "imgs" / "a.png", (1, 1, 1))
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.png,2\nimgs/b.png,0\n\n")
    split = load_filelist(tmp_path / "list.csv")
    assert split.paths == [str(tmp_path / "imgs/a.png"), str(tmp_path / "imgs/b.png")]
    assert split.targets.tolist() == [2, 0] and split.classes == ["0", "1", "2"]
    assert split.name == "list"


def test_filelist_tsv_without_header_and_class_names(tmp_path):
    _png(tmp_path / "data" / "x.png", (1, 1, 1))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.tsv").write_text("x.png\tzebra\ny.png\tant\nz.png\tzebra\n")
    split = load_filelist(lists / "train.tsv", root=tmp_path / "data")
    assert split.classes == ["ant", "zebra"]
    assert split.targets.tolist() == [1, 0, 1]
    assert split.paths[0] == str(tmp_path / "data" / "x.png")
    # Absolute paths are kept, and an explicit delimiter overrides the extension.
    (lists / "abs.txt").write_text(f"{tmp_path / 'data' / 'x.png'};cat\n")
    assert load_filelist(lists / "abs.txt", delimiter=";").paths == [str(tmp_path / "data" / "x.png")]


def test_filelist_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("a.png,1,extra\n")
    with pytest.raises(ValueError, match="bad.csv:1: expected 2 fields"):
        load_filelist(tmp_path / "bad.csv")
    with pytest.raises(DatasetNotFoundError, match="nope.csv"):
        load_filelist(tmp_path / "nope.csv")
    (tmp_path / "missing_images.csv").write_text("a.png,1\n")
    with pytest.raises(DatasetNotFoundError, match="a.png not found"):
        load_filelist(tmp_path / "missing_images.csv")


# ---------------------------------------------------------------------------------------------
# WithIndex


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((2,), float(i)), i % 3


def test_with_index():
    ds = WithIndex(_Pairs())
    assert len(ds) == 5
    x, y, i = ds[4]
    assert y == 1 and i == 4 and x[0].item() == 4.0
    noisy = WithIndex(_Pairs(), targets=np.array([9, 8, 7, 6, 5]))
    assert [noisy[i][1] for i in range(5)] == [9, 8, 7, 6, 5]
    loader = torch.utils.data.DataLoader(
        noisy, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    x, y, i = next(iter(loader))
    # Whatever the order, each index still travels with its own sample and label.
    assert (x[:, 0].long() == i).all() and (y == 9 - i).all()
    with pytest.raises(ValueError, match="4 targets"):
        WithIndex(_Pairs(), targets=np.zeros(4))


def test_error_messages_do_not_leak_a_deep_traceback(tmp_path):
    # DatasetNotFoundError is raised from the loader itself, not chained from an OSError.
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar100(tmp_path)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert os.fspath(tmp_path) in str(info.value)
