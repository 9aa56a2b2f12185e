"""KITTI labels, difficulty, split files and the detection dataset with its global box index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataparams.detection.kitti import (
    KittiDetection,
    KittiFormatError,
    KittiObject,
    box_difficulty,
    format_label_line,
    parse_label_line,
    read_label_file,
    read_split_file,
    write_label_file,
    write_split_file,
)
from dataparams.detection.transforms import (
    Compose,
    RandomHorizontalFlip,
    RandomScale,
    collate_detection,
    hflip,
    resize,
    scale,
)

# training/label_2/000000.txt and 000001.txt of KITTI, and the devkit readme's Car line.
REAL_LINES = [
    "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01",
    "Truck 0.00 0 -1.57 599.41 156.40 629.75 189.25 2.85 2.63 12.34 0.47 1.49 69.44 -1.56",
    "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57",
    "Cyclist 0.00 3 -1.65 676.60 163.95 688.98 193.93 1.86 0.60 2.02 4.59 1.32 45.84 -1.55",
    "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10",
    "DontCare -1 -1 -10 511.35 174.96 527.81 187.45 -1 -1 -1 -1000 -1000 -1000 -10",
    "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59",
]


# ---------------------------------------------------------------------------------------------
# label lines
# ---------------------------------------------------------------------------------------------
def test_parses_real_kitti_lines():
    ped = parse_label_line(REAL_LINES[0])
    assert ped == KittiObject(
        "Pedestrian",
        0.0,
        0,
        -0.20,
        (712.40, 143.00, 810.73, 307.92),
        (1.89, 0.48, 1.20),
        (1.84, 1.47, 8.41),
        0.01,
    )
    assert ped.height == pytest.approx(164.92) and ped.score is None
    cyclist = parse_label_line(REAL_LINES[3])
    assert cyclist.occluded == 3 and cyclist.location == (4.59, 1.32, 45.84)
    dc = parse_label_line(REAL_LINES[4])
    assert (dc.type, dc.truncated, dc.occluded, dc.alpha, dc.rotation_y) == (
        "DontCare",
        -1.0,
        -1,
        -10.0,
        -10.0,
    )
    assert dc.dimensions == (-1.0, -1.0, -1.0) and dc.location == (-1000.0, -1000.0, -1000.0)


def test_lines_round_trip_exactly(tmp_path):
    for line in REAL_LINES:
        assert format_label_line(parse_label_line(line)) == line
    path = tmp_path / "000001.txt"
    path.write_text("\n".join(REAL_LINES) + "\n\n")  # a trailing blank line, as some tools write
    objects = read_label_file(path)
    assert [o.type for o in objects] == [
        "Pedestrian",
        "Truck",
        "Car",
        "Cyclist",
        "DontCare",
        "DontCare",
        "Car",
    ]
    write_label_file(tmp_path / "copy.txt", objects)
    assert (tmp_path / "copy.txt").read_text() == "\n".join(REAL_LINES) + "\n"
    assert read_label_file(tmp_path / "copy.txt") == objects


def test_detection_score_column():
    det = parse_label_line(REAL_LINES[2] + " 0.8734")
    assert det.score == pytest.approx(0.8734)
    assert parse_label_line(format_label_line(det)) == det
    obj = KittiObject.from_box("Car", (1, 2, 30, 40), score=0.123456789)
    assert parse_label_line(format_label_line(obj)).score == pytest.approx(0.123456789, rel=1e-7)
    assert format_label_line(obj).startswith(
        "Car 0.00 0 -10 1.00 2.00 30.00 40.00 -1 -1 -1 -1000 -1000 -1000 -10"
    )


def test_malformed_lines_name_file_and_line(tmp_path):
    path = tmp_path / "000007.txt"
    path.write_text(REAL_LINES[2] + "\n" + REAL_LINES[4] + "\nCar 0.00 0 -1.58 587.01 173.33\n")
    with pytest.raises(KittiFormatError, match=r"000007\.txt:3: expected 15 fields .* got 6"):
        read_label_file(path)
    path.write_text(REAL_LINES[2].replace("181.54", "abc") + "\n")
    with pytest.raises(KittiFormatError, match=r"000007\.txt:1: .*abc"):
        read_label_file(path)
    path.write_text(REAL_LINES[2].replace("Car 0.00 0 ", "Car 0.00 0.5 ") + "\n")
    with pytest.raises(KittiFormatError, match=r"000007\.txt:1: occluded must be an integer"):
        read_label_file(path)
    path.write_text(REAL_LINES[2] + "\n")
    with pytest.raises(KittiFormatError, match=r"000007\.txt:1: .*16th column"):
        read_label_file(path, require_score=True)


# ---------------------------------------------------------------------------------------------
# difficulty
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "height, occluded, truncated, level",
    [
        (40.0, 0, 0.15, 0),  # every easy limit met with equality
        (39.99, 0, 0.0, 1),  # just below easy's height
        (40.0, 1, 0.0, 1),  # partly occluded
        (40.0, 0, 0.16, 1),  # over easy's truncation
        (25.0, 1, 0.30, 1),  # every moderate limit met with equality
        (25.0, 2, 0.30, 2),  # largely occluded
        (25.0, 1, 0.31, 2),  # over moderate's truncation
        (25.0, 2, 0.50, 2),  # every hard limit met with equality
        (24.99, 0, 0.0, -1),  # too small for any level
        (100.0, 2, 0.51, -1),  # over hard's truncation
        (100.0, 3, 0.0, -1),  # occlusion unknown
        (50.0, -1, -1.0, -1),  # DontCare's invalid fields
    ],
)
def test_difficulty_boundaries(height, occluded, truncated, level):
    assert box_difficulty(height, occluded, truncated) == level


def test_difficulty_vectorised_agrees_with_scalar():
    rng = np.random.default_rng(0)
    h = rng.choice([24.99, 25.0, 30.0, 39.99, 40.0, 80.0], 200)
    occ = rng.integers(-1, 4, 200)
    trunc = rng.choice([0.0, 0.15, 0.16, 0.3, 0.31, 0.5, 0.51], 200)
    levels = box_difficulty(h, occ, trunc)
    assert levels.dtype == np.int64 and levels.shape == (200,)
    assert levels.tolist() == [box_difficulty(a, b, c) for a, b, c in zip(h, occ, trunc)]


# ---------------------------------------------------------------------------------------------
# split files
# ---------------------------------------------------------------------------------------------
def test_split_files(tmp_path):
    path = tmp_path / "val.txt"
    write_split_file(path, ["000003", "000001", "007480"])
    assert read_split_file(path) == ["000003", "000001", "007480"]
    path.write_text("000001\n\n000002\n")
    assert read_split_file(path) == ["000001", "000002"]
    path.write_text("000001\n000002 000003\n")
    with pytest.raises(KittiFormatError, match=r"val\.txt:2"):
        read_split_file(path)
    path.write_text("000001\n000002\n000001\n")
    with pytest.raises(KittiFormatError, match=r"val\.txt:3: image id 000001 repeats line 1"):
        read_split_file(path)


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
H, W = 60, 120


def _obj(type_, box, occluded=0, truncated=0.0):
    if type_ == "DontCare":
        return KittiObject.from_box(type_, box, truncated=-1, occluded=-1)
    return KittiObject.from_box(type_, box, occluded=occluded, truncated=truncated)


LABELS = {
    "000000": [
        _obj("Car", (10, 5, 50, 50)),
        _obj("Van", (60, 10, 90, 40)),
        _obj("Pedestrian", (95, 2, 105, 30), 1),
    ],
    "000001": [],
    "000002": [
        _obj("DontCare", (0, 0, 20, 10)),
        _obj("Cyclist", (30, 20, 70, 55), 2, 0.4),
        _obj("Car", (80, 30, 119, 59)),
    ],
    # A Car exactly at easy's limits (40 px, truncation 0.15), which float32 would push out.
    "000003": [
        _obj("Misc", (5, 5, 15, 15)),
        _obj("Pedestrian", (40, 10, 52, 40)),
        _obj("Car", (60, 13.3, 100, 53.3), 0, 0.15),
    ],
}


@pytest.fixture()
def kitti_root(tmp_path):
    """A tiny set in the real layout: PNGs whose pixels mark each kept box with its own value."""
    (tmp_path / "training" / "image_2").mkdir(parents=True)
    (tmp_path / "training" / "label_2").mkdir(parents=True)
    (tmp_path / "ImageSets").mkdir()
    for image_id, objects in LABELS.items():
        write_label_file(tmp_path / "training" / "label_2" / f"{image_id}.txt", objects)
        pixels = np.zeros((H, W, 3), np.uint8)
        for k, o in enumerate(objects):
            x1, y1, x2, y2 = (int(v) for v in o.bbox)
            pixels[y1:y2, x1:x2] = 40 * (k + 1)
        Image.fromarray(pixels).save(tmp_path / "training" / "image_2" / f"{image_id}.png")
    write_split_file(tmp_path / "ImageSets" / "train.txt", ["000002", "000000"])
    return tmp_path


def _expected_enumeration(root, ids, classes=("Car", "Pedestrian", "Cyclist")):
    """(image id, line) of every kept annotation, enumerated independently of the dataset."""
    out = []
    for image_id in ids:
        for line, o in enumerate(read_label_file(root / "training" / "label_2" / f"{image_id}.txt")):
            if o.type in classes:
                box = tuple(float(v) for v in np.float32(o.bbox))  # targets hold float32 boxes
                out.append((image_id, line, classes.index(o.type) + 1, box))
    return out


def test_targets_and_global_box_index(kitti_root):
    ds = KittiDetection(kitti_root)
    assert ds.image_ids == ["000000", "000001", "000002", "000003"]
    expected = _expected_enumeration(kitti_root, ds.image_ids)
    assert ds.num_boxes == len(expected) == 6  # Van and Misc dropped, DontCare apart
    seen = {}
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert target["image_id"] == ds.image_ids[i]
        assert target["boxes"].shape == (len(target["labels"]), 4) and target["labels"].dtype == torch.int64
        for b, label, box in zip(
            target["box_index"].tolist(), target["labels"].tolist(), target["boxes"].tolist()
        ):
            seen[b] = (target["image_id"], ds.box_source(b)[1], label, tuple(box))
    assert [seen[b] for b in range(ds.num_boxes)] == expected
    _, t2 = ds[2]
    assert t2["dontcare"].tolist() == [[0.0, 0.0, 20.0, 10.0]]
    # Cyclist: occlusion 2 -> hard; Car: 29 px, fully visible -> moderate.
    assert t2["difficulty"].tolist() == [2, 1] and t2["occluded"].tolist() == [2, 0]
    assert t2["truncated"].tolist() == pytest.approx([0.4, 0.0]) and t2["height"].tolist() == [35.0, 29.0]
    assert ds.box_source(0) == ("000000", 0) and ds.box_source(1) == ("000000", 2)
    assert ds.box_labels.tolist() == [e[2] for e in expected]
    with pytest.raises(IndexError):
        ds.box_source(6)
    # 45 px visible; 28 px partly occluded; occlusion 2; 29 px; 30 px; the Car at easy's limits.
    assert ds.box_difficulty.tolist() == [0, 1, 2, 1, 1, 0]
    assert ds.get_target(3)["difficulty"].tolist() == [1, 0]


def test_split_defines_order_and_index(kitti_root):
    ds = KittiDetection(kitti_root, "train")
    assert ds.image_ids == ["000002", "000000"]
    assert [ds.box_source(b) for b in range(ds.num_boxes)] == [
        (i, line) for i, line, _, _ in _expected_enumeration(kitti_root, ["000002", "000000"])
    ]
    one_class = KittiDetection(
        kitti_root, split_file=kitti_root / "ImageSets" / "train.txt", classes=["Pedestrian"]
    )
    assert one_class.num_boxes == 1 and one_class[1][1]["labels"].tolist() == [1]


def _box_map(target):
    return {b: tuple(box) for b, box in zip(target["box_index"].tolist(), target["boxes"].tolist())}


def test_box_index_stable_across_epochs_and_augmentations(kitti_root):
    aug = Compose(
        [
            RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(0)),
            RandomScale(0.5, 2.0, generator=torch.Generator().manual_seed(1)),
        ]
    )
    ds = KittiDetection(kitti_root, transforms=aug)
    plain = ds.with_transforms(None)
    loader = DataLoader(
        ds,
        batch_size=2,
        shuffle=True,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(0),
    )
    epochs = []
    for _ in range(3):
        per_image = {}
        for images, targets in loader:
            for image, target in zip(images, targets):
                i = ds.image_ids.index(target["image_id"])
                reference = plain.get_target(i)
                # Same annotations, same order, same global indices, whatever the augmentation.
                assert torch.equal(target["box_index"], reference["box_index"])
                assert torch.equal(target["labels"], reference["labels"])
                sx, sy = image.shape[-1] / W, image.shape[-2] / H
                flipped = reference["boxes"] * torch.tensor([sx, sy, sx, sy])
                mirrored = torch.stack(
                    [
                        image.shape[-1] - flipped[:, 2],
                        flipped[:, 1],
                        image.shape[-1] - flipped[:, 0],
                        flipped[:, 3],
                    ],
                    1,
                )
                assert torch.allclose(target["boxes"], flipped, atol=1e-4) or torch.allclose(
                    target["boxes"], mirrored, atol=1e-4
                )
                per_image[target["image_id"]] = target["box_index"].tolist()
        epochs.append(per_image)
    assert epochs[0] == epochs[1] == epochs[2]


def test_flip_and_resize_move_boxes_with_the_pixels(kitti_root):
    ds = KittiDetection(kitti_root)
    image, target = ds[2]

    def marked_box(img, value):
        ys, xs = np.nonzero(np.isclose(img[0].numpy(), value / 255.0, atol=1e-5))
        return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]

    flipped_image, flipped = hflip(image, target)
    assert flipped["box_index"] is target["box_index"]  # passed through, never recomputed
    for k, box in enumerate(flipped["boxes"].tolist()):
        assert marked_box(flipped_image, 40 * (k + 2)) == box  # line k+1 was painted 40 * (k + 2)
    assert flipped["dontcare"].tolist() == [[W - 20.0, 0.0, W - 0.0, 10.0]]
    twice_image, twice = hflip(flipped_image, flipped)
    assert torch.equal(twice_image, image) and torch.equal(twice["boxes"], target["boxes"])

    big_image, big = resize(image, target, (2 * H, 3 * W))
    assert big_image.shape == (3, 2 * H, 3 * W)
    assert big["boxes"].tolist() == (target["boxes"] * torch.tensor([3.0, 2.0, 3.0, 2.0])).tolist()
    assert torch.equal(big["box_index"], target["box_index"]) and torch.equal(big["height"], target["height"])
    # The pixels that keep a block's value after upsampling fill its scaled box (interpolated
    # rims of other blocks may hit the same value, but only along a thin line).
    for k, box in enumerate(big["boxes"].tolist()):
        x1, y1, x2, y2 = (int(v) for v in box)
        exact = np.isclose(big_image[0].numpy(), 40 * (k + 2) / 255.0, atol=1e-5)
        inside = exact[y1:y2, x1:x2].sum()
        assert inside >= 0.9 * (x2 - x1) * (y2 - y1) and inside >= 0.9 * exact.sum()
    half_image, half = scale(image, target, 0.5)
    assert half_image.shape == (3, H // 2, W // 2)
    assert half["dontcare"].tolist() == [[0.0, 0.0, 10.0, 5.0]]


def test_random_flip_is_seeded(kitti_root):
    ds = KittiDetection(kitti_root)
    image, target = ds[0]

    def draws(seed):
        flip = RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(seed))
        return [flip(image, target)[1]["boxes"][0, 0].item() for _ in range(20)]

    assert draws(3) == draws(3)
    assert len(set(draws(3))) == 2


def test_missing_files_raise(kitti_root):
    with pytest.raises(FileNotFoundError, match="label folder"):
        KittiDetection(kitti_root / "nowhere")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        KittiDetection(kitti_root, "test")
    # A missing image is found when the data set is built, not when a batch first reads it; an
    # image of another format is named (KITTI's are .png).
    image = kitti_root / "training" / "image_2" / "000003.png"
    image.rename(image.with_suffix(".jpg"))
    with pytest.raises(FileNotFoundError, match=r"000003.png: image of 000003 is missing \(000003.jpg is there: "
                                                r"KITTI images are read as .png\)"):
        KittiDetection(kitti_root)
    (kitti_root / "training" / "label_2" / "000002.txt").write_text("Car 0 0\n")
    with pytest.raises(KittiFormatError, match=r"000002\.txt:1"):
        KittiDetection(kitti_root)


def test_a_missing_split_says_where_splits_come_from_and_make_split_writes_one(tmp_path):
    from dataparams.detection.kitti import CHEN_SPLIT_SIZES, KittiDetection, make_split

    labels = tmp_path / "training" / "label_2"
    labels.mkdir(parents=True)
    (tmp_path / "training" / "image_2").mkdir()
    ids = [f"{i:06d}" for i in range(100)]
    for i in ids:
        (labels / f"{i}.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"val\.txt: no such split file.*Chen et al.*--make-split"):
        KittiDetection(tmp_path, "val")
    train_file, val_file = make_split(tmp_path, seed=3)
    train, val = read_split_file(train_file), read_split_file(val_file)
    # Chen et al.'s proportions (3,712 : 3,769 of 7,481), every labelled image once, each file sorted.
    assert len(train) == round(100 * CHEN_SPLIT_SIZES[0] / sum(CHEN_SPLIT_SIZES)) == 50
    assert sorted(train + val) == ids and train == sorted(train) and val == sorted(val)
    # Seeded: the same seed draws the same split, another seed another; an existing split is kept.
    again = tmp_path / "again"
    (again / "training").mkdir(parents=True)
    (again / "training" / "label_2").symlink_to(labels)
    assert read_split_file(make_split(again, seed=3)[0]) == train
    other = tmp_path / "other"
    (other / "training").mkdir(parents=True)
    (other / "training" / "label_2").symlink_to(labels)
    assert read_split_file(make_split(other, seed=4)[0]) != train
    with pytest.raises(KittiFormatError, match="never overwritten"):
        make_split(tmp_path, seed=3)
    assert read_split_file(train_file) == train
