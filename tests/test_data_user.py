"""A user's own data: every PATH form, the measured defaults, and one clear error per bad input.

Every dataset here is written by the test in the format a user would bring (PNG files via PIL,
CSV/TSV lists, class folders, ``np.savez`` archives). Order and pixels are checked against
torchvision's ``ImageFolder`` and against PIL directly, not against the loader's own helpers.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dataparams.data.base import Split
from dataparams.data.decode import UserImageDataset
from dataparams.data.folders import load_image_folder
from dataparams.data.memory import FeatureLoader
from dataparams.data.user import load_user_data
from dataparams.data.userdata import UserData, UserDataError


def _save(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    img.save(path)
    return path


def _grey(rng, h, w=None):
    return rng.integers(0, 256, (h, w or h), dtype=np.uint8)


def _rgb(rng, h, w=None):
    return rng.integers(0, 256, (h, w or h, 3), dtype=np.uint8)


def _tree(root, classes=("cat", "dog", "ant"), per_class=3, size=12, seed=0, rgb=False):
    rng = np.random.default_rng(seed)
    for c in classes:
        for j in range(per_class):
            _save(root / c / f"{j:02d}.png", _rgb(rng, size) if rgb else _grey(rng, size))
    return root


def _load(path, **kw):
    return load_user_data(path, progress=False, **kw)


def _error(path, match, **kw):
    with pytest.raises(UserDataError, match=match) as info:
        _load(path, **kw)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# class folders


def test_class_folders_in_imagefolder_order_with_exact_pixels(tmp_path):
    from torchvision.datasets import ImageFolder

    root = _tree(tmp_path / "data", per_class=4)
    (root / "dog" / "notes.txt").write_text("ignored, as torchvision ignores it")
    data = _load(root)
    reference = ImageFolder(str(root))
    assert data.kind == "images" and data.classes == reference.classes == ["ant", "cat", "dog"]
    assert [(p, int(t)) for p, t in zip(data.paths, data.targets)] == reference.samples
    assert data.ids[:2] == ["ant/00.png", "ant/01.png"]
    assert data.images.shape == (12, 12, 12, 1) and data.images.dtype == np.uint8
    assert data.image_size == 12 and data.channels == 1
    # already at the common side: the file's own pixels, untouched
    for i in (0, 7):
        np.testing.assert_array_equal(data.images[i, ..., 0], np.asarray(Image.open(data.paths[i])))
    # mean/std over every pixel, by brute force
    every = np.stack([np.asarray(Image.open(p)) for p in data.paths]) / 255.0
    np.testing.assert_allclose(data.mean, [every.mean()], rtol=1e-5)
    np.testing.assert_allclose(data.std, [every.std()], rtol=1e-5)


def test_mixed_sizes_are_resized_to_the_median_longer_side(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "mixed"
    sizes = {"a/0.png": (20, 20), "a/1.png": (30, 18), "a/2.png": (27, 27), "b/0.png": (28, 28), "b/1.png": (64, 40)}
    for rel, (w, h) in sizes.items():
        _save(root / rel, _grey(rng, h, w))
    data = _load(root)
    # longer sides 20, 30, 27, 28, 64: median 28, a multiple of 4 already
    assert data.image_size == 28 and data.images.shape == (5, 28, 28, 1)
    assert "median longer side of 5 images is 28 px" in data.choices["image_size"]["why"]
    assert data.choices["resize"]["why"] == "4 of 5 images resized; 2 are not square and are stretched (not cropped)"
    wide = data.ids.index("a/1.png")
    expected = Image.open(data.paths[wide]).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(data.images[wide, ..., 0], np.asarray(expected))
    np.testing.assert_array_equal(data.images[data.ids.index("b/0.png"), ..., 0], np.asarray(Image.open(root / "b/0.png")))


def test_side_rounds_to_4_caps_and_can_be_given(tmp_path):
    rng = np.random.default_rng(2)
    for k in range(3):
        _save(tmp_path / "small" / f"c{k % 2}" / f"{k}.png", _grey(rng, 30))
        _save(tmp_path / "big" / f"c{k % 2}" / f"{k}.png", _grey(rng, 150, 90))
    assert _load(tmp_path / "small").image_size == 32  # 30 -> nearest multiple of 4
    big = _load(tmp_path / "big")
    assert big.image_size == 64 and "capped" in big.choices["image_size"]["why"]
    assert _load(tmp_path / "big", max_image_size=99).image_size == 96
    given = _load(tmp_path / "big", image_size=20)
    assert given.image_size == 20 and given.images.shape[1:3] == (20, 20)
    assert given.choices["image_size"]["why"].startswith("given")


def test_channels_grey_rgb_palette_alpha_and_16_bit(tmp_path):
    rng = np.random.default_rng(3)
    grey = tmp_path / "grey"
    _save(grey / "a" / "0.png", _grey(rng, 8))
    _save(grey / "b" / "0.png", _grey(rng, 8), mode="1")  # bilevel is grey too
    wide = (rng.integers(0, 65536, (8, 8))).astype(np.uint16)
    _save(grey / "b" / "1.png", wide)
    data = _load(grey)
    assert data.channels == 1 and "all 3 images are greyscale" in data.choices["channels"]["why"]
    # 16-bit grey is scaled to 8 bits, not clipped at 255
    np.testing.assert_array_equal(data.images[data.ids.index("b/1.png"), ..., 0], np.rint(wide / 257.0).astype(np.uint8))

    mixed = tmp_path / "mixed"
    _save(mixed / "a" / "0.png", _grey(rng, 8))
    _save(mixed / "a" / "1.png", _rgb(rng, 8), mode="P")
    rgba = np.concatenate([_rgb(rng, 8), np.full((8, 8, 1), 128, np.uint8)], axis=2)
    _save(mixed / "b" / "0.png", rgba)
    data = _load(mixed)
    assert data.channels == 3 and data.images.shape == (3, 8, 8, 3)
    assert "2 of 3 images are colour" in data.choices["channels"]["why"]
    g = np.asarray(Image.open(mixed / "a" / "0.png"))
    np.testing.assert_array_equal(data.images[0], np.repeat(g[..., None], 3, axis=2))  # grey repeated to RGB
    np.testing.assert_array_equal(data.images[2], rgba[..., :3])  # alpha dropped

    as_grey = _load(mixed, channels=1)
    assert as_grey.channels == 1
    luma = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"))
    np.testing.assert_array_equal(as_grey.images[2, ..., 0], luma)


def test_large_jpegs_decode_at_reduced_scale_close_to_a_full_decode(tmp_path):
    # Smooth content, so the comparison measures resampling, not JPEG noise.
    yy, xx = np.mgrid[0:240, 0:320]
    for k in range(2):
        pixels = ((np.sin(xx / (20.0 + 9 * k)) + np.cos(yy / 15.0) + 2) * 60).astype(np.uint8)
        _save(tmp_path / f"c{k}" / "x.jpg", np.stack([pixels, pixels[::-1], 255 - pixels], axis=2))
    data = _load(tmp_path, image_size=32)
    assert data.images.shape == (2, 32, 32, 3)
    for i, path in enumerate(data.paths):
        full = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
        assert np.abs(data.images[i] - full).mean() < 3.0


def test_classes_argument_and_classes_txt_fix_the_order_of_folders(tmp_path):
    root = _tree(tmp_path / "data", classes=("cat", "dog"), per_class=2)
    data = _load(root, classes=["dog", "cat", "eel"])
    assert data.classes == ["dog", "cat", "eel"]
    # sample order is still torchvision's (sorted folders); only the class numbering changes
    assert data.ids == ["cat/00.png", "cat/01.png", "dog/00.png", "dog/01.png"]
    assert data.targets.tolist() == [1, 1, 0, 0]
    assert "1 without samples (eel)" in data.choices["classes"]["why"]
    (root / "classes.txt").write_text("dog\ncat\n")
    assert _load(root).classes == ["dog", "cat"]
    _error(root, r"class folder 'dog' is not in the classes argument", classes=["cat", "eel"])


# ---------------------------------------------------------------------------------------------
# lists


def _write_images(root, n, rng, *, rgb=False, size=12):
    rels = []
    for i in range(n):
        rel = f"img/{i:03d}.png"
        _save(root / rel, _rgb(rng, size) if rgb else _grey(rng, size))
        rels.append(rel)
    return rels


def test_csv_with_names_extra_columns_absolute_paths_and_rgb(tmp_path):
    rng = np.random.default_rng(4)
    rels = _write_images(tmp_path, 6, rng, rgb=True)
    labels = ["zebra", "ant", "zebra", "moth", "ant", "zebra"]
    rows = [f"{rel},{lab},note {i}" for i, (rel, lab) in enumerate(zip(rels, labels))]
    rows[3] = f"{tmp_path / rels[3]},{labels[3]},absolute"
    (tmp_path / "labels.csv").write_text("Path, label ,comment\n" + "\n".join(rows) + "\n\n")
    data = _load(tmp_path / "labels.csv")
    assert data.classes == ["ant", "moth", "zebra"]
    assert data.targets.tolist() == [2, 0, 2, 1, 0, 2]
    assert data.ids[0] == "img/000.png" and data.ids[3] == str(tmp_path / rels[3])
    assert data.channels == 3 and data.images.shape == (6, 12, 12, 3)
    np.testing.assert_array_equal(data.images[4], np.asarray(Image.open(tmp_path / rels[4])))
    assert len(data.mean) == 3 and len(data.std) == 3


def test_tsv_integer_labels_and_sniffed_txt(tmp_path):
    rng = np.random.default_rng(5)
    rels = _write_images(tmp_path, 4, rng)
    (tmp_path / "list.tsv").write_text("label\tpath\n" + "".join(f"{k}\t{r}\n" for k, r in zip((3, 0, 3, 1), rels)))
    data = _load(tmp_path / "list.tsv")
    assert data.classes == ["0", "1", "2", "3"] and data.targets.tolist() == [3, 0, 3, 1]
    assert "1 without samples (2)" in data.choices["classes"]["why"]
    (tmp_path / "list.txt").write_text("path;label\n" + "".join(f"{r};{k}\n" for k, r in zip((1, 0, 1, 0), rels)))
    assert _load(tmp_path / "list.txt").targets.tolist() == [1, 0, 1, 0]
    # A ".csv" saved with semicolons (a spreadsheet with a decimal comma): its header decides.
    (tmp_path / "semi.csv").write_text("path;label\n" + "".join(f"{r};{k}\n" for k, r in zip((1, 0, 1, 0), rels)))
    assert _load(tmp_path / "semi.csv").targets.tolist() == [1, 0, 1, 0]
    (tmp_path / "tabs.csv").write_text("label\tpath\n" + "".join(f"{k}\t{r}\n" for k, r in zip((0, 1, 1, 0), rels)))
    assert _load(tmp_path / "tabs.csv").targets.tolist() == [0, 1, 1, 0]


def test_classes_txt_beside_the_list_names_or_indexes(tmp_path):
    rng = np.random.default_rng(6)
    rels = _write_images(tmp_path, 3, rng)
    (tmp_path / "classes.txt").write_text("zebra\n\nant\nmoth\n")
    (tmp_path / "names.csv").write_text("path,label\n" + "".join(f"{r},{c}\n" for r, c in zip(rels, ("ant", "zebra", "ant"))))
    data = _load(tmp_path / "names.csv")
    assert data.classes == ["zebra", "ant", "moth"] and data.targets.tolist() == [1, 0, 1]
    (tmp_path / "ints.csv").write_text("path,label\n" + "".join(f"{r},{k}\n" for r, k in zip(rels, (2, 0, 1))))
    assert _load(tmp_path / "ints.csv").targets.tolist() == [2, 0, 1]
    # names that look like integers are names when the class list has them
    (tmp_path / "classes.txt").write_text("7\n3\n")
    (tmp_path / "digits.csv").write_text("path,label\n" + "".join(f"{r},{k}\n" for r, k in zip(rels, (3, 7, 3))))
    data = _load(tmp_path / "digits.csv")
    assert data.classes == ["7", "3"] and data.targets.tolist() == [1, 0, 1]
    # the argument wins over the file
    assert _load(tmp_path / "digits.csv", classes=["3", "7"]).targets.tolist() == [0, 1, 0]


# ---------------------------------------------------------------------------------------------
# messy labels, as spreadsheets write them


def _list(tmp_path, name, rels, labels):
    (tmp_path / name).write_text("path,label\n" + "".join(f"{r},{lab}\n" for r, lab in zip(rels, labels)))
    return tmp_path / name


def test_whole_numbers_written_as_decimals_are_class_indices(tmp_path):
    rels = _write_images(tmp_path, 4, np.random.default_rng(20))
    data = _load(_list(tmp_path, "a.csv", rels, ["1.0", "0", "2.00", "+1"]))
    assert data.classes == ["0", "1", "2"] and data.targets.tolist() == [1, 0, 2, 1]
    assert "whole numbers written as decimals ('1.0') read as integers" in data.choices["classes"]["why"]
    msg = _error(_list(tmp_path, "b.csv", rels, ["1", "0.5", "2", "1.5"]),
                 r"b.csv line 3: label '0.5' is not a whole number")
    assert "(2 rows like it)" in msg and "classes.txt" in msg
    # with a class list naming them, numbers are names
    (tmp_path / "classes.txt").write_text("0.5\n1.5\n1\n2\n")
    assert _load(tmp_path / "b.csv").targets.tolist() == [2, 0, 3, 1]


def test_missing_labels_name_every_row_and_write_nothing(tmp_path):
    rels = _write_images(tmp_path, 6, np.random.default_rng(21))
    msg = _error(_list(tmp_path, "a.csv", rels, ["cat", "nan", "dog", "NA", "N/A", ""]),
                 r"a.csv line 3: label 'nan' is a missing value, not a class; 3 more rows without a label")
    assert "without a label: line 5, line 6, line 7." in msg
    assert "'N/A', 'NA', 'nan' are read as a missing value" in msg
    _error(_list(tmp_path, "b.csv", rels[:3], ["cat", "", "dog"]),
           r"b.csv line 3: empty label\. Label every row")
    # a class list that names a marker makes it a class
    (tmp_path / "classes.txt").write_text("cat\ndog\nNA\n")
    data = _load(_list(tmp_path, "c.csv", rels[:3], ["cat", "NA", "dog"]))
    assert data.classes == ["cat", "dog", "NA"] and data.targets.tolist() == [0, 2, 1]
    # npz: NaN among float labels, and string markers
    x = np.zeros((4, 2))
    np.savez(tmp_path / "f.npz", X=x, y=np.array([0, np.nan, 1, np.nan]))
    _error(tmp_path / "f.npz", r"f.npz: row 1 \(y\[1\]\): no label \(nan\); 1 more row without a label: row 3\. "
           r"Label every row")
    np.savez(tmp_path / "s.npz", X=x, y=np.array(["a", "b", "None", "a"]))
    _error(tmp_path / "s.npz", r"s.npz: row 2 \(y\[2\]\): label 'None' is a missing value")


def test_errors_on_missing_labels_leave_no_files(tmp_path):
    rels = _write_images(tmp_path, 2, np.random.default_rng(22))
    _list(tmp_path, "a.csv", rels, ["cat", "nan"])
    before = sorted(os.walk(tmp_path))
    _error(tmp_path / "a.csv", "missing value")
    assert sorted(os.walk(tmp_path)) == before


def test_spaces_are_stripped_and_case_variants_are_an_error_unless_listed(tmp_path):
    rels = _write_images(tmp_path, 4, np.random.default_rng(23))
    (tmp_path / "a.csv").write_text("path,label\n" + "".join(
        f"{r},{lab}\n" for r, lab in zip(rels, ["shirt ", " shirt", "coat", "\tcoat"])))
    data = _load(tmp_path / "a.csv")
    assert data.classes == ["coat", "shirt"] and data.targets.tolist() == [1, 1, 0, 0]
    msg = _error(_list(tmp_path, "b.csv", rels, ["Shirt", "coat", "shirt", "Shirt"]),
                 r"b.csv line 4: labels 'Shirt' \(2 rows, first line 2\) and 'shirt' \(1 row\) differ only "
                 r"in case")
    assert "list both in a class list (classes.txt beside a list" in msg
    # spelled as one number among names
    _error(_list(tmp_path, "c.csv", rels, ["7", "coat", "7.0", "coat"]),
           r"labels '7' .* and '7.0' .* are the same number")
    # a class list that names both spellings makes them two classes; naming one is a clear miss
    (tmp_path / "classes.txt").write_text("shirt\nShirt\ncoat\n")
    assert _load(tmp_path / "b.csv").targets.tolist() == [1, 2, 0, 1]
    (tmp_path / "classes.txt").write_text("shirt\ncoat\n")
    _error(tmp_path / "b.csv", r"b.csv line 2: label 'Shirt' is not a class \(did you mean 'shirt'\?")


def test_case_variant_or_spaced_class_folders(tmp_path):
    root = _tree(tmp_path / "d", classes=("shirt", "Shirt", "coat"), per_class=2)
    msg = _error(root, r"class folders 'Shirt' \(2 images\) and 'shirt' \(2 images\) differ only in case")
    assert "classes.txt" in msg
    (root / "classes.txt").write_text("coat\nshirt\nShirt\n")
    assert _load(root).classes == ["coat", "shirt", "Shirt"]
    spaced = _tree(tmp_path / "e", classes=("shirt", "shirt ", "coat"), per_class=2)
    data = _load(spaced)
    assert data.classes == ["coat", "shirt"] and np.bincount(data.targets).tolist() == [2, 4]
    assert "stripped of surrounding spaces" in data.choices["classes"]["why"]


def test_a_file_listed_twice(tmp_path):
    rels = _write_images(tmp_path, 4, np.random.default_rng(24))
    rows = list(zip(rels, ["cat", "dog", "cat", "dog"])) + [(f"./{rels[0]}", "cat"), (rels[1], "dog")]
    data = _load(_list(tmp_path, "a.csv", *zip(*rows)))
    assert data.ids == rels and data.targets.tolist() == [0, 1, 0, 1]
    dup = data.choices["duplicates"]
    assert dup["value"] == 2 and "img/000.png: line 2 and line 6" in dup["why"]
    assert "left out" in dup["why"]
    rows[5] = (rels[1], "cat")
    msg = _error(_list(tmp_path, "b.csv", *zip(*rows)),
                 r"b.csv line 7: img/001.png is listed twice with different labels")
    assert "'dog' at line 3 and 'cat' here" in msg


# ---------------------------------------------------------------------------------------------
# EXIF orientation and truncated files


def _with_orientation(path, pixels, orientation, **save):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif, **save)
    return path


def test_exif_orientation_is_applied_in_every_decode_path(tmp_path):
    from dataparams.data.decode import decode_image

    rng = np.random.default_rng(25)
    stored = _rgb(rng, 8, 12)  # 8 rows x 12 columns as stored; tag 6: turn 90 degrees clockwise to view
    upright = np.rot90(stored, k=-1)  # 12 x 8, independent of Pillow's transpose
    _with_orientation(tmp_path / "d" / "a" / "0.png", stored, 6)
    _save(tmp_path / "d" / "b" / "0.png", _rgb(rng, 12, 8))
    side = 12
    memory = _load(tmp_path / "d", image_size=side)
    stream = _load(tmp_path / "d", image_size=side, memory_budget_bytes=0)
    native = np.asarray(Image.fromarray(upright).resize((side, side), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(memory.images[0], native)
    x, _, _ = stream.dataset[0]
    pixels = ((x * torch.tensor(stream.std).view(-1, 1, 1) + torch.tensor(stream.mean).view(-1, 1, 1)) * 255)
    np.testing.assert_array_equal(pixels.round().byte().permute(1, 2, 0).numpy(), native)
    np.testing.assert_array_equal(stream.thumbnail(0), native)
    np.testing.assert_array_equal(memory.thumbnail(0, size=12), upright)  # the file at its own size, upright
    # a JPEG as a camera writes it: the decoded array is Pillow's own decode, turned
    jpg = _with_orientation(tmp_path / "j.jpg", stored, 6, quality=95)
    with Image.open(jpg) as im:
        turned = np.asarray(im.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert turned.shape == (12, 8, 3)
    np.testing.assert_array_equal(decode_image(str(jpg), 12, 3), np.asarray(
        Image.fromarray(turned).resize((12, 12), Image.Resampling.BILINEAR)))


@pytest.mark.faults
def test_a_truncated_jpeg_stops_streaming_before_training(tmp_path, monkeypatch):
    import dataparams.data.images as user_module

    # The statistics sample is one image (the seeded draw picks the last), not the bad one: the
    # check must not depend on it.
    monkeypatch.setattr(user_module, "_STATS_SAMPLE", 1)
    rng = np.random.default_rng(26)
    (tmp_path / "img").mkdir()
    rels = []
    for i in range(4):
        Image.fromarray(_rgb(rng, 32)).save(tmp_path / "img" / f"{i}.jpg", quality=90)
        rels.append(f"img/{i}.jpg")
    whole = (tmp_path / rels[1]).read_bytes()
    (tmp_path / rels[1]).write_bytes(whole[: len(whole) // 2])
    with Image.open(tmp_path / rels[1]) as im:
        im.verify()  # what opening and verifying sees: nothing wrong
    _list(tmp_path, "a.csv", rels, [0, 1, 0, 1])
    for budget in (None, 0):
        _error(tmp_path / "a.csv", r"a.csv line 3: image .*img/1.jpg is corrupt or unreadable .*truncated",
               memory_budget_bytes=budget)


# ---------------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_follows_labels_files_and_class_list_not_the_clock(tmp_path):
    rels = _write_images(tmp_path, 4, np.random.default_rng(27))
    _list(tmp_path, "a.csv", rels, ["cat", "dog", "cat", "dog"])
    first = _load(tmp_path / "a.csv").fingerprint
    assert set(first) == {"list file", "image files", "classes"}
    assert first["image files"].startswith("4 files, sha256 ")
    assert _load(tmp_path / "a.csv").fingerprint == first  # loading again: the same
    _list(tmp_path, "a.csv", rels, ["cat", "dog", "dog", "dog"])  # one label edited in place
    edited = _load(tmp_path / "a.csv").fingerprint
    assert edited["list file"] != first["list file"] and edited["image files"] == first["image files"]
    st = os.stat(tmp_path / rels[1])
    os.utime(tmp_path / rels[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an image replaced
    touched = _load(tmp_path / "a.csv").fingerprint
    assert touched["image files"] != edited["image files"] and touched["list file"] == edited["list file"]
    (tmp_path / "classes.txt").write_text("dog\ncat\n")  # same labels, other meaning
    assert _load(tmp_path / "a.csv").fingerprint["classes"] != touched["classes"]
    # class folders: relative paths with sizes and times; npz: the bytes
    root = _tree(tmp_path / "d", per_class=2)
    before = _load(root).fingerprint
    assert set(before) == {"image files", "classes"}
    (root / "cat" / "00.png").rename(root / "dog" / "09.png")  # a file moved to another class
    assert _load(root).fingerprint["image files"] != before["image files"]
    np.savez(tmp_path / "f.npz", X=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    npz = _load(tmp_path / "f.npz").fingerprint
    np.savez(tmp_path / "f.npz", X=np.zeros((4, 2)), y=np.array([0, 1, 1, 1]))
    assert set(npz) == {"npz file", "classes"}
    assert _load(tmp_path / "f.npz").fingerprint["npz file"] != npz["npz file"]


# ---------------------------------------------------------------------------------------------
# features


def test_npz_features_integer_and_string_labels(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 5.0, size=(30, 6))
    np.savez(tmp_path / "ints.npz", X=x, y=np.arange(30) % 3)
    data = _load(tmp_path / "ints.npz")
    assert data.kind == "features" and data.features.dtype == np.float32 and data.features.shape == (30, 6)
    assert data.classes == ["0", "1", "2"] and data.ids[:2] == ["row 0", "row 1"]
    np.testing.assert_allclose(data.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.std, x.std(0), rtol=1e-5)
    assert data.images is None and data.paths is None and data.in_memory

    names = np.array(["wolf", "cat"] * 15)
    ids = np.array([f"item-{i}" for i in range(30)])
    np.savez(tmp_path / "names.npz", X=x.astype(np.float32), y=names, ids=ids, classes=np.array(["wolf", "cat", "emu"]))
    data = _load(tmp_path / "names.npz")
    assert data.classes == ["wolf", "cat", "emu"] and data.targets[:2].tolist() == [0, 1]
    assert data.ids[5] == "item-5"
    # ids name one row each, as a table's id column must
    np.savez(tmp_path / "dup.npz", X=x, y=names, ids=np.array(["a"] * 30))
    _error(tmp_path / "dup.npz", r"dup.npz: ids\[1\]: id 'a' is also row 0's; ids name one row each")
    np.savez(tmp_path / "float_ints.npz", X=x, y=(np.arange(30) % 2).astype(np.float64))
    assert _load(tmp_path / "float_ints.npz").classes == ["0", "1"]
    split = data.to_split()
    assert isinstance(split, Split) and split.features is data.features
    sub = split.subset([4, 1])
    np.testing.assert_array_equal(sub.features, data.features[[4, 1]])
    with pytest.raises(ValueError, match="thumbnails exist only for images"):
        data.thumbnail(0)


# ---------------------------------------------------------------------------------------------
# streaming


def test_streaming_gives_the_in_memory_pixels_up_to_normalisation(tmp_path):
    rng = np.random.default_rng(8)
    root = tmp_path / "data"
    for k in range(9):
        _save(root / f"c{k % 3}" / f"{k}.png", _rgb(rng, 12 + 4 * (k % 3), 16))
    memory = _load(root)
    stream = _load(root, memory_budget_bytes=100)
    assert memory.images is not None and memory.dataset is None
    assert stream.images is None and isinstance(stream.dataset, UserImageDataset)
    assert memory.choices["storage"]["value"] == "memory" and stream.choices["storage"]["value"] == "streaming"
    # with fewer images than the stats sample, both measure on every image
    np.testing.assert_allclose(stream.mean, memory.mean, rtol=1e-6)
    np.testing.assert_allclose(stream.std, memory.std, rtol=1e-6)
    mean = torch.tensor(memory.mean).view(-1, 1, 1)
    std = torch.tensor(memory.std).view(-1, 1, 1)
    loader = torch.utils.data.DataLoader(stream.dataset, batch_size=4, num_workers=0)
    for x, y, index in loader:
        pixels = ((x * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert torch.equal(pixels, torch.from_numpy(memory.images[index.numpy()]))
        assert torch.equal(y, torch.from_numpy(memory.targets[index.numpy()]))
    np.testing.assert_array_equal(stream.thumbnail(3), memory.thumbnail(3))
    assert stream.to_split().paths == memory.paths


def test_thumbnail_at_a_given_size_keeps_the_aspect(tmp_path):
    rng = np.random.default_rng(9)
    _save(tmp_path / "d" / "a" / "0.png", _grey(rng, 10, 20))
    _save(tmp_path / "d" / "b" / "0.png", _grey(rng, 20))
    data = _load(tmp_path / "d")
    assert data.thumbnail(0).shape == (20, 20, 1)
    assert data.thumbnail(0, size=40).shape == (20, 40, 1)  # enlarged, nearest: 2x2 blocks
    np.testing.assert_array_equal(data.thumbnail(0, size=40)[::2, ::2, 0], np.asarray(Image.open(data.paths[0])))


def test_choices_are_complete_and_json(tmp_path):
    data = _load(_tree(tmp_path / "d"))
    assert set(data.choices) == {"kind", "classes", "image_size", "resize", "channels", "storage", "mean",
                                 "std", "data"}
    for name, choice in data.choices.items():
        extra = {"fingerprint"} if name == "data" else set()
        assert set(choice) == {"value", "why"} | extra and choice["why"], name
    assert set(data.fingerprint) == {"image files", "classes"}  # a folder has no list file
    json.dumps(data.choices)
    lines = data.describe()
    assert len(lines) == len(data.choices) and lines[2].startswith("image_size  12  (median longer side")
    info = data.info
    assert (info.in_channels, info.image_size) == (1, 12) and info.mean == tuple(float(v) for v in data.mean)


# ---------------------------------------------------------------------------------------------
# bad input: one UserDataError naming the file and the row, nothing written


def test_path_missing_or_of_unknown_kind(tmp_path):
    _error(tmp_path / "nowhere", r"nowhere: no such file or folder")
    (tmp_path / "data.json").write_text("{}")
    _error(tmp_path / "data.json", r"data.json: unknown kind of data")


def test_list_without_the_needed_columns_or_rows(tmp_path):
    (tmp_path / "a.csv").write_text("filename,class\nx.png,cat\n")
    msg = _error(tmp_path / "a.csv", r"a.csv: the header \(line 1\) needs the columns 'path' and 'label'")
    assert "'filename', 'class'" in msg
    (tmp_path / "b.csv").write_text("path,label\n")
    _error(tmp_path / "b.csv", r"b.csv: zero samples")
    (tmp_path / "c.csv").write_text("\n\n")
    _error(tmp_path / "c.csv", r"c.csv: the list is empty")


def test_empty_label_or_path_names_the_line(tmp_path):
    rng = np.random.default_rng(10)
    rels = _write_images(tmp_path, 2, rng)
    (tmp_path / "a.csv").write_text(f"path,label\n{rels[0]},cat\n{rels[1]}, \n")
    _error(tmp_path / "a.csv", r"a.csv line 3: empty label")
    (tmp_path / "b.csv").write_text(f"path,label\n{rels[0]},cat\n,dog\n")
    _error(tmp_path / "b.csv", r"b.csv line 3: empty path")
    (tmp_path / "c.csv").write_text(f"path,label\n{rels[0]}\n")
    _error(tmp_path / "c.csv", r"c.csv line 2: empty label")


@pytest.mark.faults
def test_missing_and_corrupt_images_name_line_and_file(tmp_path, monkeypatch):
    import dataparams.data.images as user_module

    # Streaming decodes only a sample for its statistics: make it one image, so that the bad
    # files below are caught by opening and verifying every file, not by that sample.
    monkeypatch.setattr(user_module, "_STATS_SAMPLE", 1)
    rng = np.random.default_rng(11)
    rels = _write_images(tmp_path, 3, rng)
    (tmp_path / "a.csv").write_text(f"path,label\n{rels[0]},0\nimg/gone.png,1\n{rels[1]},1\nimg/gone2.png,0\n")
    msg = _error(tmp_path / "a.csv", r"a.csv line 3: image .*img/gone.png not found")
    assert "1 more bad images" in msg and "line 5" in msg
    (tmp_path / "img" / "junk.png").write_bytes(b"this is not a png")
    data = (tmp_path / rels[2]).read_bytes()
    (tmp_path / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    for budget in (None, 0):  # in memory and streaming: both read every file before returning
        (tmp_path / "b.csv").write_text(f"path,label\n{rels[0]},0\nimg/junk.png,1\n")
        _error(tmp_path / "b.csv", r"b.csv line 3: image .*junk.png is not an image Pillow can read", memory_budget_bytes=budget)
        (tmp_path / "c.csv").write_text(f"path,label\n{rels[0]},0\n{rels[1]},1\nimg/cut.png,1\n")
        _error(tmp_path / "c.csv", r"c.csv line 4: image .*cut.png is corrupt or unreadable", memory_budget_bytes=budget)


def test_labels_outside_the_class_list_or_negative(tmp_path):
    rng = np.random.default_rng(12)
    rels = _write_images(tmp_path, 3, rng)
    (tmp_path / "a.csv").write_text(f"path,label\n{rels[0]},ant\n{rels[1]},bee\n{rels[2]},wasp\n")
    msg = _error(tmp_path / "a.csv", r"a.csv line 4: label 'wasp' is not a class", classes=["ant", "bee"])
    assert "the classes argument lists 2: ant, bee" in msg
    (tmp_path / "b.csv").write_text(f"path,label\n{rels[0]},0\n{rels[1]},-1\n")
    _error(tmp_path / "b.csv", r"b.csv line 3: label -1 is negative")
    (tmp_path / "classes.txt").write_text("ant\nbee\n")
    (tmp_path / "c.csv").write_text(f"path,label\n{rels[0]},0\n{rels[1]},1\n{rels[2]},2\n")
    _error(tmp_path / "c.csv", r"c.csv line 4: label 2 is not a class; .*classes.txt lists 2")
    (tmp_path / "classes.txt").write_text("ant\nant\n")
    _error(tmp_path / "c.csv", r"classes.txt: class 'ant' is listed more than once")


def test_empty_class_folder_is_an_error_here_but_not_for_imagenet_folders(tmp_path):
    root = _tree(tmp_path / "data", classes=("cat", "dog"), per_class=2)
    (root / "emu").mkdir()
    (root / "emu" / "readme.gif").write_bytes(b"GIF89a")
    msg = _error(root, r"data/emu: class folder holds no images")
    assert "readme.gif" in msg
    assert load_image_folder(root).classes == ["cat", "dog", "emu"]  # the ImageNet loader keeps it


def test_hidden_entries_are_skipped_and_loose_images_left_out_with_a_note(tmp_path):
    clean = _tree(tmp_path / "clean", classes=("cat", "dog"), per_class=2)
    root = _tree(tmp_path / "data", classes=("cat", "dog"), per_class=2)
    # What Jupyter and macOS leave behind: a checkpoint folder, resource forks that are no image.
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "look-checkpoint.ipynb").write_text("{}")
    (root / "cat" / "._00.png").write_bytes(b"\x00\x05\x16\x07 not a png")
    _save(root / "cat" / ".thumbs" / "00.png", _grey(np.random.default_rng(1), 12))
    for name in ("x.png", "y.jpg"):
        _save(root / name, _grey(np.random.default_rng(2), 12))
    data, ref = _load(root), _load(clean)
    assert data.ids == ref.ids == ["cat/00.png", "cat/01.png", "dog/00.png", "dog/01.png"]
    np.testing.assert_array_equal(data.images, ref.images)
    assert data.classes == ref.classes == ["cat", "dog"]
    note = data.choices["left_out"]
    assert note["value"] == 2
    assert f"2 image files are directly in {root}, not in a class folder, and left out (x.png, y.jpg)" in note["why"]
    assert "hidden folders (.ipynb_checkpoints/) are skipped" in note["why"]
    assert "left_out" not in ref.choices
    assert load_image_folder(root).classes == ["cat", "dog"]  # the ImageNet loader skips them too


def test_folder_without_classes_or_with_one(tmp_path):
    flat = tmp_path / "flat"
    _save(flat / "a.png", _grey(np.random.default_rng(0), 8))
    _error(flat, r"no class folders .*sort them into one subfolder per class")
    one = _tree(tmp_path / "one", classes=("cat",), per_class=2)
    (one / "labels.csv").write_text("path,label\n")
    _error(one, r"one: 1 class \(cat\); need at least two.*It holds labels.csv: to use that list, pass the file")


def test_all_samples_of_one_class(tmp_path):
    rels = _write_images(tmp_path, 2, np.random.default_rng(13))
    (tmp_path / "a.csv").write_text(f"path,label\n{rels[0]},cat\n{rels[1]},cat\n")
    _error(tmp_path / "a.csv", r"a.csv: 1 class \(cat\); need at least two")
    (tmp_path / "b.csv").write_text(f"path,label\n{rels[0]},1\n{rels[1]},1\n")
    _error(tmp_path / "b.csv", r"b.csv: all 2 samples have the label '1'")


def test_bad_feature_archives(tmp_path):
    x = np.zeros((4, 3))
    y = np.array([0, 1, 0, 1])
    cases = {
        "keys.npz": (dict(features=x, y=y), r"keys.npz: needs the arrays 'X' .* it has 'features', 'y'"),
        "length.npz": (dict(X=x, y=y[:3]), r"length.npz: X has 4 rows but y has 3 labels"),
        "shape.npz": (dict(X=np.zeros((4, 2, 2)), y=y), r"shape.npz: X must be 2-D .*got shape \(4, 2, 2\)"),
        "text.npz": (dict(X=np.array([["a", "b"]] * 4), y=y), r"text.npz: X must be numeric"),
        "empty.npz": (dict(X=np.zeros((0, 3)), y=np.zeros(0, int)), r"empty.npz: zero samples"),
        "one.npz": (dict(X=x, y=np.zeros(4, int)), r"one.npz: 1 class \(0\); need at least two"),
        "neg.npz": (dict(X=x, y=np.array([0, 1, -2, 1])), r"neg.npz: row 2 \(y\[2\]\): label -2 is negative"),
        "floaty.npz": (dict(X=x, y=np.array([0.5, 1, 0, 1])),
                       r"floaty.npz: row 0 \(y\[0\]\): label 0.5 is not a whole"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        _error(tmp_path / name, match)
    bad = x.copy()
    bad[2, 1] = np.nan
    bad[3, 0] = np.inf
    np.savez(tmp_path / "nan.npz", X=bad, y=y)
    _error(tmp_path / "nan.npz", r"nan.npz: row 2 of X holds NaN \(column 1\); 2 rows are bad")
    big = x.copy()
    big[1, 2] = np.inf
    np.savez(tmp_path / "inf.npz", X=big, y=y)
    _error(tmp_path / "inf.npz", r"inf.npz: row 1 of X holds an infinite value")
    huge = x.copy()
    huge[3, 0] = 1e300
    np.savez(tmp_path / "huge.npz", X=huge, y=y)
    _error(tmp_path / "huge.npz", r"huge.npz: row 3 of X holds 1e\+300, too large for float32")
    np.savez(tmp_path / "cls.npz", X=x, y=np.array(["a", "b", "c", "a"]), classes=np.array(["a", "b"]))
    _error(tmp_path / "cls.npz", r"cls.npz: row 2 \(y\[2\]\): label 'c' is not a class")
    np.save(tmp_path / "plain.npy", x)
    _error(tmp_path / "plain.npy", r"plain.npy: unknown kind")
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    _error(tmp_path / "broken.npz", r"broken.npz: cannot read the .npz file")


def test_errors_write_nothing(tmp_path):
    rng = np.random.default_rng(14)
    rels = _write_images(tmp_path, 2, rng)
    (tmp_path / "a.csv").write_text(f"path,label\n{rels[0]},0\nimg/gone.png,1\n")
    before = sorted(os.walk(tmp_path))
    _error(tmp_path / "a.csv", "not found")
    assert sorted(os.walk(tmp_path)) == before


# ---------------------------------------------------------------------------------------------
# FeatureLoader


def _features(n=37, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(2.0, 3.0, (n, d)).astype(np.float32), rng.integers(0, 4, n)


def test_feature_loader_yields_every_row_once_standardised():
    x, y = _features()
    loader = FeatureLoader(x, y, batch_size=8, shuffle=True, seed=3)
    assert len(loader) == 5 and loader.num_features == 5
    expected = (x - x.mean(0)) / x.std(0)
    seen = []
    for xb, yb, idx in loader:
        assert xb.dtype == torch.float32 and xb.shape[1] == 5
        torch.testing.assert_close(xb, torch.from_numpy(expected)[idx], rtol=1e-5, atol=1e-5)
        assert torch.equal(yb, torch.as_tensor(y)[idx])
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(37))
    # a test loader standardises with the training statistics
    test = FeatureLoader(x[:4] + 1.0, y[:4], batch_size=4, mean=loader.mean, std=loader.std)
    torch.testing.assert_close(next(iter(test))[0], torch.from_numpy((x[:4] + 1.0 - x.mean(0)) / x.std(0)), rtol=1e-5, atol=1e-5)
    raw = FeatureLoader(x, y, batch_size=37, standardize=False, index=np.arange(37) + 100)
    xb, _, idx = next(iter(raw))
    assert torch.equal(xb, torch.from_numpy(x)) and idx.tolist() == list(range(100, 137))


def test_feature_loader_order_depends_only_on_seed_and_epoch():
    x, y = _features()
    a = FeatureLoader(x, y, batch_size=8, shuffle=True, seed=1)
    b = FeatureLoader(x, y, batch_size=8, shuffle=True, seed=1)
    a.set_epoch(4)
    first = [(xb.clone(), i.clone()) for xb, _, i in a]
    for e in (0, 1, 2):
        b.set_epoch(e)
        list(b)
    b.set_epoch(4)
    for (xa, ia), (xb, _, ib) in zip(first, b):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    # the same permutation as the image loader's for the same (seed, epoch)
    expected = torch.randperm(37, generator=torch.Generator().manual_seed(1 * 1_000_003 + 4))
    assert torch.equal(torch.cat([i for _, i in first]), expected)
    a.set_epoch(5)
    assert not torch.equal(next(iter(a))[2], first[0][1])
    dropped = FeatureLoader(x, y, batch_size=8, drop_last=True)
    assert len(dropped) == 4 and [len(i) for _, _, i in dropped] == [8] * 4


def test_feature_loader_constant_feature_and_bad_input():
    x, y = _features(n=6, d=2)
    x[:, 1] = 7.0
    xb = next(iter(FeatureLoader(x, y, batch_size=6)))[0]
    assert torch.equal(xb[:, 1], torch.zeros(6))
    with pytest.raises(ValueError, match="batch_size"):
        FeatureLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"real \(N, D\)"):
        FeatureLoader(x[:, 0], y, batch_size=2)
    with pytest.raises(ValueError, match="both mean and std"):
        FeatureLoader(x[:, :1], y, batch_size=2, mean=[0.0])
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match="first in row 3"):
        FeatureLoader(x, y, batch_size=2)


def test_user_data_feeds_the_loaders(tmp_path):
    rng = np.random.default_rng(15)
    np.savez(tmp_path / "f.npz", X=rng.normal(size=(10, 3)), y=np.arange(10) % 2)
    data = _load(tmp_path / "f.npz")
    loader = FeatureLoader(data.features, data.targets, batch_size=4, mean=data.mean, std=data.std)
    assert sum(len(i) for _, _, i in loader) == 10
    assert isinstance(data, UserData)


@pytest.mark.faults
def test_a_png_above_the_pixel_limit_is_refused_by_name_and_a_jpeg_is_not(tmp_path, monkeypatch):
    import dataparams.data.images as user_module

    # The limit lowered to 20x20 so that the test's images stand for 100-megapixel ones.
    monkeypatch.setattr(user_module, "MAX_DECODE_PIXELS", 400)
    root = _tree(tmp_path / "d", per_class=2, size=12)
    big = np.random.default_rng(3).integers(0, 255, (30, 21), dtype=np.uint8)
    Image.fromarray(big).save(root / "dog" / "huge.png")
    _error(root, r"huge.png is 21 x 30 pixels \(0 MP\): a PNG image is decoded at full size, and above 0 MP")
    (root / "dog" / "huge.png").unlink()
    Image.fromarray(big).save(root / "dog" / "huge.jpg", quality=90)  # decoded at reduced size: accepted
    assert len(_load(root)) == 7


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
@pytest.mark.faults
def test_a_symbolic_link_loop_in_class_folders_is_refused(tmp_path):
    root = _tree(tmp_path / "d", per_class=2, size=12)
    os.symlink(root / "cat", root / "cat" / "again")  # cat/again -> cat: endless without the check
    with pytest.raises(ValueError, match=r"cat/again is the folder .*cat again \(a symbolic link loop"):
        load_image_folder(root)
    os.unlink(root / "cat" / "again")
    os.symlink(root / "ant", root / "cat" / "more")  # a link to another folder: walked, as torchvision does
    assert len(load_image_folder(root).paths) == 8


def test_integer_labels_that_leave_most_indices_empty_get_a_note(tmp_path):
    # 0, 100, ..., 900 read as indices make 901 classes: allowed (a sample of a many-class set looks
    # the same), with the remedy in the choices when the numbers name the classes.
    x = np.random.default_rng(8).normal(size=(40, 3))
    np.savez(tmp_path / "sparse.npz", X=x, y=(np.arange(40) % 10) * 100)
    data = _load(tmp_path / "sparse.npz")
    assert len(data.classes) == 901 and "891 without samples" in data.choices["classes"]["why"]
    assert "if the numbers name the classes rather than index them" in data.choices["classes"]["why"]
    np.savez(tmp_path / "gaps.npz", X=x, y=np.array([0, 1, 2, 4] * 10))
    assert "name the classes" not in _load(tmp_path / "gaps.npz").choices["classes"]["why"]
