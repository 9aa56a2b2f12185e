"""A user's data as arrays, a torch Dataset, a DataFrame, a parquet file or a Hugging Face dataset.

Every table is built by the test the way a user would build it (numpy, torch, pandas, pyarrow
through pandas, ``datasets.Dataset.from_dict`` / ``save_to_disk`` / ``to_parquet``), all in memory
or under ``tmp_path``: nothing is downloaded. Images are checked against the pixels that were
given and against :func:`load_user_data` on a CSV list of the same image files, the loader of
record for images on disk.
"""

import os
import sys

# Before datasets is first imported: it reads these once, and these tests never go online.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dataparams.data.tables import is_table_path, load_table_data  # noqa: E402
from dataparams.data.user import load_user_data  # noqa: E402
from dataparams.data.userdata import UserDataError  # noqa: E402

pd = pytest.importorskip("pandas")


def _load(data, **kw):
    return load_table_data(data, progress=False, **kw)


def _error(data, match, **kw):
    with pytest.raises(UserDataError, match=match) as info:
        _load(data, **kw)
    return str(info.value)


def _datasets():
    pytest.importorskip("pyarrow")
    return pytest.importorskip("datasets")


def _files(tmp_path, seed=0):
    """Eight PNGs of mixed sizes (grey, RGB, one RGBA) and one large JPEG, with a CSV list of them:
    (csv, names, labels)."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "img"
    root.mkdir(parents=True)
    names, labels = [], []
    for i in range(8):
        shape = (12, 12) if i % 3 == 0 else (10 + i, 14, 3) if i % 3 == 1 else (12, 16, 4)
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
        names.append(name)
        labels.append(["cat", "dog", "emu"][i % 3])
    # At least twice the side: decode_image's reduced-scale JPEG decode applies.
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "big.jpg", quality=90)
    names.append("big.jpg")
    labels.append("dog")
    csv = root / "list.csv"
    pd.DataFrame({"path": names, "label": labels}).to_csv(csv, index=False)
    return csv, names, labels


def _same_images(got, ref):
    np.testing.assert_array_equal(got.images, ref.images)
    np.testing.assert_array_equal(got.targets, ref.targets)
    assert got.classes == ref.classes
    assert (got.image_size, got.channels) == (ref.image_size, ref.channels)
    np.testing.assert_array_equal(got.mean, ref.mean)
    np.testing.assert_array_equal(got.std, ref.std)
    for k in ("image_size", "resize", "channels", "mean", "std"):
        assert got.choices[k]["value"] == ref.choices[k]["value"], k


# ---------------------------------------------------------------------------------------------
# arrays


def test_feature_arrays_as_tuple_or_with_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3))
    y = np.array([2, 0, 1, 2, 0, 1, 1])
    ud = _load((x, y))
    assert ud.kind == "features" and ud.ids == [f"row {i}" for i in range(7)]
    np.testing.assert_array_equal(ud.features, x.astype(np.float32))
    np.testing.assert_array_equal(ud.targets, y)
    assert ud.classes == ["0", "1", "2"]
    np.testing.assert_allclose(ud.mean, x.mean(0), rtol=1e-5)
    split = ud.to_split()
    assert split.features is ud.features and split.name == "arrays"

    named = _load(torch.from_numpy(x), labels=["b", "a", "c", "b", "a", "c", "c"])
    assert named.classes == ["a", "b", "c"]  # names, sorted
    np.testing.assert_array_equal(named.targets, [1, 0, 2, 1, 0, 2, 2])
    ordered = _load((x, ["b", "a", "c", "b", "a", "c", "c"]), classes=["c", "b", "a"])
    np.testing.assert_array_equal(ordered.targets, [1, 2, 0, 1, 2, 0, 0])
    assert ud.fingerprint == _load((x, y)).fingerprint != _load((x, y[::-1])).fingerprint


def test_image_arrays_equal_the_same_images_as_files(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (6, 12, 12), dtype=np.uint8)
    y = [0, 1, 0, 1, 1, 0]
    ud = _load((grey, y))
    assert ud.kind == "images" and ud.paths is None and ud.channels == 1
    np.testing.assert_array_equal(ud.images, grey[..., None])
    assert ud.to_split().images is ud.images
    assert ud.thumbnail(2).shape == (12, 12, 1)

    # Not square and not a multiple of 4: resized by the rule and the filter files get.
    rgb = rng.integers(0, 256, (5, 10, 14, 3), dtype=np.uint8)
    y = ["b", "a", "b", "a", "a"]
    for i, a in enumerate(rgb):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    pd.DataFrame({"path": [f"{i}.png" for i in range(5)], "label": y}).to_csv(tmp_path / "l.csv", index=False)
    ref = load_user_data(tmp_path / "l.csv", progress=False)
    _same_images(_load((rgb, y)), ref)
    # The same pixels as floats in [0, 1] (ToTensor's scaling) and as a torch (N, C, H, W) tensor.
    floats = _load((rgb.astype(np.float32) / 255, y))
    _same_images(floats, ref)
    assert "pixels" in floats.choices
    _same_images(_load((torch.from_numpy(rgb).permute(0, 3, 1, 2), y)), ref)


# ---------------------------------------------------------------------------------------------
# torch datasets


class _PILDataset(torch.utils.data.Dataset):
    """What torchvision's MNIST yields without a transform: (PIL image, int), with ``classes``."""

    classes = ["zero", "one", "two"]

    def __init__(self, pixels, labels):
        self.pixels, self.labels = pixels, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return Image.fromarray(self.pixels[i]), self.labels[i]


class _TensorDataset(torch.utils.data.Dataset):
    def __init__(self, xs, ys):
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.ys)

    def __getitem__(self, i):
        return self.xs[i], self.ys[i]


def test_torch_dataset_of_pil_images_tensors_or_features():
    from torchvision.transforms.functional import to_tensor

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    labels = [0, 1, 2, 0, 1, 2]
    ud = _load(_PILDataset(pixels, labels))
    np.testing.assert_array_equal(ud.images, pixels[..., None])
    assert ud.classes == ["zero", "one", "two"]  # the dataset's own class names
    np.testing.assert_array_equal(ud.targets, labels)
    assert ud.source == "_PILDataset"

    rgb = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    tensors = _TensorDataset([to_tensor(a) for a in rgb], [torch.tensor(k % 2) for k in range(4)])
    ud = _load(tensors, classes=["no", "yes"])
    np.testing.assert_array_equal(ud.images, rgb)
    assert ud.classes == ["no", "yes"]

    x = rng.normal(size=(5, 4)).astype(np.float32)
    ud = _load(_TensorDataset(list(torch.from_numpy(x)), ["b", "a", "b", "a", "a"]))
    assert ud.kind == "features" and ud.classes == ["a", "b"]
    np.testing.assert_array_equal(ud.features, x)


# ---------------------------------------------------------------------------------------------
# DataFrames


def test_dataframe_feature_columns_chosen_and_recorded():
    df = pd.DataFrame({
        "id": ["u7", "u3", "u9", "u1"],
        "height": [1.5, 2.0, 0.5, 1.0],
        "width": [3, 4, 5, 6],
        "label": ["tall", "short", "short", "tall"],
        "note": ["a", "b", "c", "d"],
    })
    ud = _load(df, id_column="id")
    assert ud.kind == "features" and ud.ids == ["u7", "u3", "u9", "u1"]
    assert ud.choices["feature_columns"]["value"] == ["height", "width"]
    assert "numeric" in ud.choices["feature_columns"]["why"]
    np.testing.assert_array_equal(ud.features, df[["height", "width"]].to_numpy(np.float32))
    assert ud.classes == ["short", "tall"]
    np.testing.assert_array_equal(ud.targets, [1, 0, 0, 1])

    # A categorical names its classes in its own order, as a ClassLabel does.
    cat = df.assign(label=pd.Categorical(df["label"], categories=["tall", "short"]))
    ud = _load(cat)
    assert ud.classes == ["tall", "short"]
    np.testing.assert_array_equal(ud.targets, [0, 1, 1, 0])
    assert "categories of column 'label'" in ud.choices["classes"]["why"]

    given = _load(df, feature_columns=["width"], label_column="label")
    assert given.features.shape == (4, 1) and given.choices["feature_columns"]["why"] == "given"
    assert given.ids == ["row 0", "row 1", "row 2", "row 3"]


def test_dataframe_embedding_column():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(5, 6)).astype(np.float32)
    df = pd.DataFrame({"embedding": list(emb), "label": [1, 0, 1, 0, 0], "score": [0.1] * 5})
    # A vector column beside a numeric one is ambiguous until named.
    _error(df, r"'score'.*'embedding'.*feature_columns")
    ud = _load(df, feature_columns="embedding")
    np.testing.assert_array_equal(ud.features, emb)
    ud = _load(df.drop(columns="score"))
    np.testing.assert_array_equal(ud.features, emb)
    assert ud.choices["feature_columns"] == {"value": ["embedding"], "why": "the only column holding a vector per row"}
    both = _load(df, feature_columns=["score", "embedding"])  # side by side, in the order named
    np.testing.assert_array_equal(both.features, np.c_[np.full(5, 0.1, np.float32), emb])


def test_dataframe_of_image_paths_equals_the_csv_list(tmp_path):
    csv, names, labels = _files(tmp_path)
    ref = load_user_data(csv, progress=False)
    df = pd.DataFrame({"file": [str(csv.parent / n) for n in names], "label": labels, "w": range(len(names))})
    ud = _load(df)
    _same_images(ud, ref)
    assert ud.paths == ref.paths
    assert ud.choices["image_column"]["value"] == "file" and "'w'" in ud.choices["image_column"]["why"]
    assert set(ud.fingerprint) == {"labels", "image files", "classes"}


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets, parquet, save_to_disk


def _hf_images(tmp_path):
    """A datasets.Dataset of the PNG/JPEG bytes (Image feature) with a ClassLabel and an id column,
    and the load_user_data reference on the same files."""
    datasets = _datasets()
    csv, names, labels = _files(tmp_path)
    classes = ["cat", "dog", "emu"]
    features = datasets.Features({
        "picture": datasets.Image(),
        "label": datasets.ClassLabel(names=classes),
        "key": datasets.Value("string"),
    })
    ds = datasets.Dataset.from_dict(
        {
            "picture": [{"bytes": (csv.parent / n).read_bytes(), "path": None} for n in names],
            "label": [classes.index(c) for c in labels],
            "key": [f"k{i}" for i in range(len(names))],
        },
        features=features,
    )
    return ds, load_user_data(csv, progress=False)


def test_hf_dataset_of_encoded_images_equals_the_csv_list(tmp_path):
    ds, ref = _hf_images(tmp_path)
    ud = _load(ds, id_column="key")
    _same_images(ud, ref)
    assert ud.paths is None and ud.ids == [f"k{i}" for i in range(len(ds))]
    assert ud.choices["image_column"]["value"] == "picture"
    assert "Image feature" in ud.choices["image_column"]["why"]
    assert "ClassLabel" in ud.choices["classes"]["why"]
    # PIL images in a DataFrame column: the same pixels as the files give. The PNGs only: the
    # files' large JPEG is decoded at a reduced DCT scale, which an already decoded image skips.
    png = [i for i, p in enumerate(ref.paths) if p.endswith(".png")]
    df = pd.DataFrame({"im": [Image.open(ref.paths[i]) for i in png], "label": [ds["label"][i] for i in png]})
    pil = _load(df, classes=ref.classes, image_size=ref.image_size, channels=ref.channels)
    np.testing.assert_array_equal(pil.images, ref.images[png])


def test_parquet_files(tmp_path):
    ds, ref = _hf_images(tmp_path)
    ds.to_parquet(tmp_path / "hf.parquet")
    assert is_table_path(tmp_path / "hf.parquet")
    ud = _load(tmp_path / "hf.parquet", id_column="key")
    _same_images(ud, ref)  # ClassLabel names come back from the schema datasets wrote
    assert ud.source == str(tmp_path / "hf.parquet")

    rng = np.random.default_rng(4)
    df = pd.DataFrame({"a": rng.normal(size=6), "b": rng.normal(size=6), "y": list("xyxyyx")})
    df.to_parquet(tmp_path / "plain.parquet")
    ud = _load(str(tmp_path / "plain.parquet"), label_column="y")
    np.testing.assert_array_equal(ud.features, df[["a", "b"]].to_numpy(np.float32))
    assert ud.classes == ["x", "y"]

    # Paths in a parquet file start at its folder, as a CSV list's do.
    _, names, labels = _files(tmp_path / "rel")
    pd.DataFrame({"path": [f"img/{n}" for n in names], "label": labels}).to_parquet(tmp_path / "rel" / "t.parquet")
    rel = load_user_data(tmp_path / "rel" / "img" / "list.csv", progress=False)
    _same_images(_load(tmp_path / "rel" / "t.parquet"), rel)


def test_save_to_disk_folders(tmp_path):
    datasets = _datasets()
    ds, ref = _hf_images(tmp_path)
    ds.save_to_disk(str(tmp_path / "one"))
    assert is_table_path(tmp_path / "one") and not is_table_path(tmp_path / "img")
    _same_images(_load(tmp_path / "one"), ref)

    train, test = ds.select(range(6)), ds.select(range(6, 9))
    datasets.DatasetDict({"test": test, "train": train}).save_to_disk(str(tmp_path / "dict"))
    ud = _load(tmp_path / "dict")
    assert len(ud) == 6 and ud.choices["split"]["value"] == "train"
    assert "'train' taken" in ud.choices["split"]["why"] and "test" in ud.choices["split"]["why"]
    np.testing.assert_array_equal(ud.images, ref.images[:6])
    ud = _load(tmp_path / "dict", split="test")
    np.testing.assert_array_equal(ud.images, ref.images[6:])
    assert ud.choices["split"] == {"value": "test", "why": "given"}

    datasets.DatasetDict({"a": train, "b": test}).save_to_disk(str(tmp_path / "nodefault"))
    _error(tmp_path / "nodefault", r"splits a, b and none named 'train'; pass split= \(CLI: --split\)$")
    _error(tmp_path / "dict", r"no split 'val'; the DatasetDict holds test, train", split="val")


# ---------------------------------------------------------------------------------------------
# one error per bad input, naming the column and the row


def _png_bytes(pixels):
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_tables_name_the_column_and_the_row(tmp_path):
    f = [1.0, 2.0, 3.0, 4.0]
    y = [0, 1, 0, 1]
    good = _png_bytes(np.zeros((4, 4), np.uint8))
    cases = [
        (pd.DataFrame({"f": f, "y": y}), {}, r"^DataFrame: no column 'label'; the columns are 'f', 'y'; label_column= \(CLI: --label-column\) names "
         r"the column of labels$"),
        (pd.DataFrame({"f": f, "label": y}), {"id_column": "name"}, r"no column 'name'; the columns are 'f', 'label'"),
        (pd.DataFrame({"f": f, "label": [0, None, 1, 0]}), {}, r"column 'label', row 1: no label \(nan\)"),
        (pd.DataFrame({"f": f, "label": ["a", "b", None, "a"]}), {}, r"column 'label', row 2: no label"),
        (pd.DataFrame({"f": [1.0, 2.0, np.nan, 4.0], "label": y}), {}, r"column 'f', row 2: holds NaN"),
        (pd.DataFrame({"e": [[1, 2], [3, 4], [5], [7, 8]], "label": y}), {}, r"column 'e', row 2: holds 1 values where row 0 holds 2"),
        (pd.DataFrame({"e": [[1, 2], None, [5, 6], [7, 8]], "label": y}), {}, r"column 'e', row 1: no value \(None\)"),
        (pd.DataFrame({"e": [[1, 2], [3, 4], [5, np.inf], [7, 8]], "label": y}), {}, r"column 'e', row 2, element 1: holds an infinite"),
        (pd.DataFrame({"img": [good, good, b"not a png", good], "label": y}), {},
         r"column 'img', row 2: image \(9 bytes\) is not an image Pillow can read"),
        (pd.DataFrame({"img": [good, good, good, good[:30]], "label": y}), {}, r"column 'img', row 3: image \(30 bytes\)"),
        (pd.DataFrame({"path": ["a.png", "missing.png"], "label": [0, 1]}), {}, r"column 'path', row 0: image a.png not found"),
        (pd.DataFrame({"f": f, "label": [1, 1, 1, 1]}), {}, r"column 'label': all 4 samples have the label '1'"),
        (pd.DataFrame({"f": f, "label": ["a"] * 4}), {}, r"column 'label': 1 class \(a\); need at least two"),
        (pd.DataFrame({"f": f, "label": y, "k": ["a", "b", "a", "c"]}), {"id_column": "k"}, r"column 'k', row 2: id 'a' is also row 0's"),
        (pd.DataFrame({"f": f, "label": [0, 1, "x", 0]}, dtype=object), {}, r"column 'label', row 2: label 'x' where an earlier row"),
        (pd.DataFrame({"f": f, "label": pd.Categorical(["a", None, "b", "a"])}), {}, r"column 'label', row 1: no label \(-1 in a categorical"),
        (pd.DataFrame({"f": f, "label": y}), {"feature_columns": ["f", "label"]}, r"column 'label' is named twice"),
        # measured by user.py's rule for files, refusals included
        (pd.DataFrame({"img": [Image.new("L", (4, 4))] * 3 + [Image.new("F", (4, 4))], "label": y}), {},
         r"column 'img', row 3: image \(pixels\) has 32-bit float pixels with no fixed range; save it with 8"),
    ]
    for data, kw, match in cases:
        _error(data, match, **kw)


def test_bad_arrays_and_datasets():
    x = np.arange(12.0).reshape(6, 2)
    _error((x, [0, 1, 0, 1, 0]), r"^arrays: X has 6 rows but y has 5 labels$")
    _error((x, [0] * 6), r"^arrays: y: 1 class \(0\); need at least two$")
    _error((x, [0] * 6), r"^arrays: y: all 6 samples have the label 'a'", classes=["a", "b"])
    _error((x, [0, 1, 0, 1, 0, 2]), r"^arrays: y\[5\]: label 2 is not a class", classes=["a", "b"])
    bad = x.copy()
    bad[4, 1] = np.nan
    _error((bad, [0, 1] * 3), r"arrays: X\[4, 1\] \(row 4, column 1\): holds NaN")
    _error((np.full((3, 4, 4), 2.0), [0, 1, 0]), r"arrays: X\[0\]: float pixels range 2\.\.2; .* \[0, 1\]")
    _error(np.zeros((3, 2)), r"without labels")
    pairs = _TensorDataset([torch.zeros(3), torch.zeros(3), torch.zeros(4)], [0, 1, 0])
    _error(pairs, r"^_TensorDataset: sample 2: x holds 4 features where sample 0 holds 3$")
    _error(_TensorDataset([torch.zeros(3)] * 2, [0, torch.tensor([0.0, 1.0])]),
           r"sample 1, y: label .* is a Tensor of shape \(2,\)")
    with pytest.raises(TypeError, match="expected"):
        _load({"x": 1})


def test_paths_that_are_not_tables(tmp_path):
    _error(tmp_path / "nope.parquet", r"no such file or folder")
    (tmp_path / "list.csv").write_text("path,label\n")
    _error(tmp_path / "list.csv", r"read by load_user_data")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    pytest.importorskip("pyarrow")
    _error(tmp_path / "broken.parquet", r"broken.parquet: cannot read the parquet file")


def test_missing_optional_packages_name_the_extra(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"needs the package 'pyarrow': pip install 'dataparams\[tables\]'"):
        _load(tmp_path / "t.parquet")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"'datasets': pip install 'dataparams\[tables\]'"):
        _load(tmp_path / "saved")


def test_bad_hf_datasets():
    datasets = _datasets()
    features = datasets.Features({"f": datasets.Value("float32"), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"f": [1.0, 2.0, 3.0], "label": [0, -1, 1]}, features=features)
    _error(ds, r"^Dataset: column 'label', row 1: no label \(-1 in a ClassLabel column\)\. Label every row")
    _error(ds, r"^Dataset: no column 'target'; the columns are 'f', 'label'; label_column= \(CLI: --label-column\)", label_column="target")
    _error(ds, r"split='train' \(CLI: --split\) was given but this is one Dataset", split="train")
    _error(ds, r"labels= is for an X array", labels=[0, 1, 0])


# ---------------------------------------------------------------------------------------------
# labels: every form reads them by the rules for a CSV list's labels


def _forms(tmp_path, labels):
    """The same two features per row and ``labels`` as each form a user may hand over: a DataFrame,
    (X, y) arrays, a torch Dataset, a parquet file and a save_to_disk folder: [(data, how the
    form names row i first and after, as regexes)]."""
    datasets = _datasets()
    tmp_path.mkdir(parents=True, exist_ok=True)
    x = np.arange(2.0 * len(labels)).reshape(-1, 2)
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": labels})
    df.to_parquet(tmp_path / "t.parquet")
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path / "saved"))
    column = ("column 'label', row {}", "row {}")
    return [
        (df, column),
        ((x, np.array(labels, dtype=object)), (r"y\[{}\]", r"y\[{}\]")),
        (_TensorDataset(list(torch.from_numpy(x)), list(labels)), ("sample {}, y", "sample {}")),
        (tmp_path / "t.parquet", column),
        (tmp_path / "saved", column),
    ]


def test_whole_number_labels_written_as_text_are_class_indices_in_every_form(tmp_path):
    y = np.repeat(np.arange(12), 2)
    # "10" is class 10 (not the 2nd name in string order) and "3.0" is 3: what a CSV of them gives.
    text = [f"{k}.0" if i % 2 else str(k) for i, k in enumerate(y)]
    for data, _ in _forms(tmp_path, text):
        ud = _load(data)
        assert ud.classes == [str(k) for k in range(12)], data
        np.testing.assert_array_equal(ud.targets, y, err_msg=str(data))
        assert "whole numbers written as decimals ('0.0') read as integers" in ud.choices["classes"]["why"]


def test_bad_labels_are_refused_alike_in_every_form(tmp_path):
    """The refusals of a CSV list's labels (test_data_user), with rows named as each form numbers them."""
    ok = ["pullover", "shirt"] * 3
    cases = [
        (["PULLOVER"] + ok[1:], r"{2}: labels 'PULLOVER' \(1 row, first {r0}\) and 'pullover' \(2 rows\) differ only "
         r"in case; write one spelling"),
        (ok[:3] + ["nan"] + ok[4:], r"{3}: label 'nan' is a missing value, not a class\. Label every row"),
        (ok[:2] + ["NA", "shirt", " "] + ok[5:], r"{2}: label 'NA' is a missing value, not a class; 1 more row "
         r"without a label: {r4}\. Label every row"),
        (ok[:1] + ["", "Pullover"] + ok[3:], r"{1}: empty label\. Label every row"),
        (ok[:1] + [None, "shirt", None] + ok[4:], r"{1}: no label; 1 more row without a label: "
         r"{r3}\. Label every row"),
        (["7", "pullover", "7.0"] + ok[3:], r"{2}: labels '7' \(1 row, first {r0}\) and '7\.0' \(1 row\) are the same "
         "number"),
    ]
    for k, (labels, match) in enumerate(cases):
        for data, (first, later) in _forms(tmp_path / str(k), labels):
            here = match.format(*(first.format(i) for i in range(6)), **{f"r{i}": later.format(i) for i in range(6)})
            with pytest.raises(UserDataError, match=here):
                _load(data)
    # The class list alone makes two spellings two classes, as classes.txt does for a CSV.
    for data, _ in _forms(tmp_path / "listed", ["PULLOVER"] + ok[1:]):
        ud = _load(data, classes=["pullover", "shirt", "PULLOVER"])
        assert ud.targets.tolist() == [2, 1, 0, 1, 0, 1]


def test_an_image_file_named_twice_is_one_sample_or_refused_as_in_a_csv(tmp_path):
    csv, names, labels = _files(tmp_path)
    root = csv.parent
    # The loader of record: a CSV list naming the first file again with its label.
    pd.DataFrame({"path": names + ["./" + names[0]], "label": labels + [labels[0]]}).to_csv(root / "twice.csv",
                                                                                           index=False)
    ref = load_user_data(root / "twice.csv", progress=False)
    pd.DataFrame({"path": names + ["./" + names[0]], "label": labels + [labels[0]]}).to_parquet(root / "t.parquet")
    ud = _load(root / "t.parquet")
    _same_images(ud, ref)
    assert len(ud) == len(names) and ud.ids == [f"row {i}" for i in range(len(names))]
    assert ud.choices["duplicates"]["value"] == 1
    assert "listed a file again with the same label" in ud.choices["duplicates"]["why"]

    other = {"cat": "dog", "dog": "emu", "emu": "cat"}[labels[0]]
    df = pd.DataFrame({"path": names + [names[0]], "label": labels + [other]})
    df.to_parquet(root / "conflict.parquet")
    _error(root / "conflict.parquet", rf"column 'path', row 9: {root / names[0]} is listed twice with different "
           rf"labels, '{labels[0]}' at row 0 and '{other}' here; keep the row with the right label")


def test_table_messages_name_the_keyword_and_the_command_line_flag(tmp_path):
    from dataparams.cli import get_args_parser

    datasets = _datasets()
    png = _png_bytes(np.zeros((4, 4), np.uint8))
    two = pd.DataFrame({"a": [png] * 2, "b": [png] * 2, "label": [0, 1]})
    _error(two, r"columns 'a', 'b' all hold images; pass image_column= \(CLI: --image-column\)$")
    both = pd.DataFrame({"n": [1.0, 2.0], "v": [[1.0], [2.0]], "label": [0, 1]})
    _error(both, r"could be the features; pass feature_columns= \(CLI: --feature-columns\)$")
    _error(pd.DataFrame({"t": ["x", "y"], "label": [0, 1]}),
           r"Pass image_column= \(CLI: --image-column\) or feature_columns= \(CLI: --feature-columns\)$")
    ds = datasets.Dataset.from_dict({"f": [1.0, 2.0], "label": [0, 1]})
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "dict"))
    _error(tmp_path / "dict", r"none named 'train'; pass split= \(CLI: --split\)$")
    # The flags named are the command line's own.
    get_args_parser().parse_args(["find-issues", "--data", "t.parquet", "--split", "a", "--image-column", "a",
                                  "--feature-columns", "n", "--label-column", "y", "--id-column", "k"])


def test_a_repeated_image_row_in_the_middle_keeps_the_rows_of_the_others(tmp_path):
    # The kept samples know their rows: the API's frame must index the caller's rows past the gap.
    csv, names, labels = _files(tmp_path)
    root = csv.parent
    frame = pd.DataFrame({"path": [str(root / n) for n in names[:3]] + [str(root / names[0])]
                          + [str(root / n) for n in names[3:]],
                          "label": labels[:3] + [labels[0]] + labels[3:]})
    ud = load_table_data(frame)
    assert len(ud) == len(names) and ud.rows.tolist() == [0, 1, 2, *range(4, len(names) + 1)]
    assert load_table_data(frame.drop(index=3)).rows is None  # nothing left out: row i is sample i
    import dataparams

    issues = dataparams.find_label_issues(frame.set_index(pd.Index([f"r{i}" for i in range(len(frame))])),
                                          overrides=["optim.epochs=1"], device="cpu")
    assert "r3" not in issues.index and list(issues.index) == [f"r{i}" for i in (0, 1, 2, *range(4, len(frame)))]
    paths = {f"r{i}": p for i, p in enumerate(frame["path"])}
    assert [issues.loc[r, "given_label"] for r in issues.index] == [frame["label"][int(r[1:])] for r in issues.index]
    assert all(paths[r] for r in issues.index)


def test_infinite_labels_are_refused_as_no_whole_number():
    x = np.zeros((4, 2), np.float32)
    for y in (np.array([0.0, 1.0, np.inf, 1.0]), pd.Series([0.0, 1.0, -np.inf, 1.0]),
              np.array([0, 1, float("inf"), 1], dtype=object)):
        with pytest.raises(UserDataError, match="is not a whole number|a label is one class index or name"):
            load_table_data((x, y))
