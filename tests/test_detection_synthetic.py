"""The synthetic KITTI-format set: real format, requested statistics, seeding, corruption truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from dataparams.data.base import DatasetNotFoundError
from dataparams.detection.kitti import (
    DEFAULT_CLASSES,
    KittiDetection,
    format_label_line,
    parse_label_line,
    read_label_file,
    read_split_file,
)
from dataparams.detection.synthetic import (
    OCCLUSION_THRESHOLDS,
    SyntheticKittiConfig,
    box_error_kinds,
    describe_kitti_set,
    flipped_box_mask,
    occlusion_level,
    read_truth,
    write_synthetic_kitti,
)

try:
    from dataparams.data.idx import load_fashion_mnist

    load_fashion_mnist(train=False)
except DatasetNotFoundError:  # pragma: no cover - depends on the machine
    pytest.skip(
        "Fashion-MNIST is not installed (see README: ./run test installs it)", allow_module_level=True
    )

CLEAN = SyntheticKittiConfig(num_images=80, seed=3)
CORRUPT = SyntheticKittiConfig(num_images=80, seed=3, flip_fraction=0.1, missing_fraction=0.05)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    return write_synthetic_kitti(root, CLEAN)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    return write_synthetic_kitti(root, CORRUPT)


def _labels(root):
    return {p.stem: read_label_file(p) for p in sorted((root / "training" / "label_2").glob("*.txt"))}


def _intersects(a, b):
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_layout_parses_as_kitti(clean):
    root = clean.root
    ids = [f"{i:06d}" for i in range(CLEAN.num_images)]
    assert (
        sorted(
            read_split_file(root / "ImageSets" / "train.txt")
            + read_split_file(root / "ImageSets" / "val.txt")
        )
        == ids
    )
    assert len(clean.val_ids) == 40 and read_split_file(root / "ImageSets" / "trainval.txt") == ids
    with Image.open(root / "training" / "image_2" / "000000.png") as im:
        assert im.size == (CLEAN.width, CLEAN.height) and im.mode == "RGB"
    labels = _labels(root)
    assert sorted(labels) == ids
    for objects in labels.values():
        for o in objects:
            x1, y1, x2, y2 = o.bbox
            assert 0 <= x1 < x2 <= CLEAN.width and 0 <= y1 < y2 <= CLEAN.height
            assert o.type in (*DEFAULT_CLASSES, "DontCare")
            if o.type != "DontCare":
                assert 0 <= o.truncated <= 1 and o.occluded in (0, 1, 2, 3) and o.location[2] > 0
    ds = KittiDetection(root, "train")
    assert ds.num_boxes == sum(1 for i in ds.image_ids for o in labels[i] if o.type != "DontCare")
    image, target = ds[0]
    assert image.shape == (3, CLEAN.height, CLEAN.width)


def test_statistics_cover_what_was_asked(clean):
    stats = describe_kitti_set(clean.root)
    assert stats.num_images == CLEAN.num_images and stats.num_objects == clean.num_objects
    assert all(stats.per_class[c] > 0 for c in DEFAULT_CLASSES)
    assert stats.per_class["Car"] > stats.per_class["Cyclist"]  # class_probs 0.5 / 0.2
    assert all(stats.per_occlusion[level] > 0 for level in (0, 1, 2))
    assert all(stats.per_difficulty[d] > 0 for d in ("easy", "moderate", "hard"))
    # Heights span the difficulty thresholds: some below 25 px, many in [25, 40), many above.
    assert stats.per_height["<25"] > 0
    assert (
        stats.per_height["25-40"] > 0.1 * stats.num_objects
        and stats.per_height[">=40"] > 0.25 * stats.num_objects
    )
    assert stats.num_dontcare > 0 and stats.num_truncated > 0
    assert stats.as_dict()["per_occlusion"] == stats.per_occlusion


def test_truncation_occlusion_and_dontcare_follow_the_geometry(clean):
    labels = _labels(clean.root)
    for objects in labels.values():
        boxes = [o.bbox for o in objects]
        for k, o in enumerate(objects):
            x1, y1, x2, y2 = o.bbox
            at_border = x1 == 0 or x2 == CLEAN.width or y1 == 0 or y2 == CLEAN.height
            if o.type == "DontCare":
                continue
            # Truncated boxes are clipped at the border; boxes away from it are whole.
            if o.truncated > 0:
                assert at_border
            if not at_border:
                assert o.truncated == 0
            assert o.height >= CLEAN.dontcare_below or at_border
            # Occlusion is measured from the pixels of other objects: an object whose box meets no
            # other box is fully visible, a largely hidden one meets some other box.
            others = [b for j, b in enumerate(boxes) if j != k]
            if not any(_intersects(o.bbox, b) for b in others):
                assert o.occluded == 0
            if o.occluded >= 2:
                assert any(_intersects(o.bbox, b) for b in others)
    truncated = [o for objs in labels.values() for o in objs if o.type != "DontCare" and o.truncated > 0]
    assert any(o.bbox[0] == 0 for o in truncated) and any(o.bbox[2] == CLEAN.width for o in truncated)
    dontcare = [o for objs in labels.values() for o in objs if o.type == "DontCare"]
    assert any(o.height < CLEAN.dontcare_below for o in dontcare)  # small, far objects
    assert any(o.height >= CLEAN.dontcare_below for o in dontcare)  # crowds


def test_occlusion_levels_from_hidden_fraction():
    lo, mid, hi = OCCLUSION_THRESHOLDS
    assert [occlusion_level(f) for f in (0.0, lo - 1e-9, lo, mid - 1e-9, mid, hi - 1e-9, hi, 1.0)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]


def test_same_seed_same_bytes_other_seed_other_set(tmp_path, clean):
    small = SyntheticKittiConfig(num_images=12, seed=3, flip_fraction=0.2, missing_fraction=0.1)
    a = write_synthetic_kitti(tmp_path / "a", small).root
    b = write_synthetic_kitti(tmp_path / "b", small).root
    c = write_synthetic_kitti(tmp_path / "c", SyntheticKittiConfig(num_images=12, seed=4)).root
    for sub in (
        "training/label_2/000005.txt",
        "training/image_2/000005.png",
        "training/truth.json",
        "ImageSets/val.txt",
    ):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    assert (a / "training/image_2/000005.png").read_bytes() != (
        c / "training/image_2/000005.png"
    ).read_bytes()
    # The scenes do not depend on the number of images that follow nor on the corruption.
    assert (a / "training/image_2/000011.png").read_bytes() == (
        clean.root / "training/image_2/000011.png"
    ).read_bytes()


def test_corruption_truth_matches_the_changes(clean, corrupt):
    truth = read_truth(corrupt.root)["images"]
    noisy, original = _labels(corrupt.root), _labels(clean.root)
    eligible = sum(1 for i in corrupt.train_ids for o in original[i] if o.type != "DontCare")
    assert (
        corrupt.num_flipped == round(0.1 * eligible) > 0 and corrupt.num_deleted == round(0.05 * eligible) > 0
    )

    flipped = deleted = 0
    for image_id, objects in noisy.items():
        entry = truth[image_id]
        assert len(entry["true_types"]) == len(objects)
        flipped += sum(t != o.type for t, o in zip(entry["true_types"], objects))
        deleted += len(entry["deleted"])
        if image_id in corrupt.val_ids:
            assert objects == original[image_id]  # validation labels stay clean
        # Undo the corruption with the truth alone: the clean set of the same seed comes back.
        restored = [replace(o, type=t) for o, t in zip(objects, entry["true_types"])]
        for d in sorted(entry["deleted"], key=lambda d: d["line"]):
            restored.insert(d["line"], parse_label_line(d["label"]))
        assert restored == original[image_id]
        assert (corrupt.root / "training/image_2" / f"{image_id}.png").read_bytes() == (
            clean.root / "training/image_2" / f"{image_id}.png"
        ).read_bytes()
    assert flipped == corrupt.num_flipped and deleted == corrupt.num_deleted

    ds = KittiDetection(corrupt.root, "train")
    mask = flipped_box_mask(ds)
    assert mask.shape == (ds.num_boxes,) and mask.sum() == corrupt.num_flipped
    b = int(np.flatnonzero(mask)[0])
    image_id, line = ds.box_source(b)
    assert truth[image_id]["true_types"][line] != DEFAULT_CLASSES[ds.box_labels[b] - 1]


def test_config_is_validated():
    with pytest.raises(ValueError, match="class_probs"):
        SyntheticKittiConfig(class_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="must not exceed 1"):
        SyntheticKittiConfig(flip_fraction=0.6, missing_fraction=0.6)
    with pytest.raises(ValueError, match="must not exceed 1"):
        SyntheticKittiConfig(flip_fraction=0.5, shift_fraction=0.6)
    with pytest.raises(ValueError, match="spurious_fraction"):
        SyntheticKittiConfig(spurious_fraction=1.5)
    with pytest.raises(ValueError, match="max_box_height"):
        SyntheticKittiConfig(max_box_height=500)


def test_shifted_and_spurious_boxes_follow_their_definition_and_the_truth_undoes_them(tmp_path, clean, corrupt):
    cfg = replace(CORRUPT, shift_fraction=0.1, spurious_fraction=0.05)
    mixed = write_synthetic_kitti(tmp_path / "mixed", cfg)
    truth = read_truth(mixed.root)["images"]
    noisy, original, flipped_only = _labels(mixed.root), _labels(clean.root), _labels(corrupt.root)
    eligible = sum(1 for i in mixed.train_ids for o in original[i] if o.type != "DontCare")
    assert mixed.num_shifted == round(0.1 * eligible) > 0 and mixed.num_spurious == round(0.05 * eligible) > 0
    # Shifts and spurious boxes are drawn after the flips and deletions: those stay as without them.
    assert (mixed.num_flipped, mixed.num_deleted) == (corrupt.num_flipped, corrupt.num_deleted)

    counts = dict.fromkeys(("clean", "flip", "shift", "spurious"), 0)
    for image_id, objects in noisy.items():
        entry = truth[image_id]
        assert len(entry["kinds"]) == len(entry["true_types"]) == len(entry["true_boxes"]) == len(objects)
        assert entry["deleted"] == read_truth(corrupt.root)["images"][image_id]["deleted"]
        kept = [o for o, k in zip(objects, entry["kinds"]) if k != "spurious"]
        assert [o.type for o in kept] == [o.type for o in flipped_only[image_id]]
        if image_id in mixed.val_ids:
            assert objects == original[image_id]
        for o, kind, true_type, true_box in zip(objects, entry["kinds"], entry["true_types"], entry["true_boxes"]):
            counts[kind] += 1
            assert 0 <= o.bbox[0] < o.bbox[2] <= cfg.width and 0 <= o.bbox[1] < o.bbox[3] <= cfg.height
            if kind == "shift":
                w, h = true_box[2] - true_box[0], true_box[3] - true_box[1]
                assert o.type == true_type
                assert (o.bbox[2] - o.bbox[0], o.bbox[3] - o.bbox[1]) == pytest.approx((w, h), abs=0.02)
                dx, dy = abs(o.bbox[0] - true_box[0]), abs(o.bbox[1] - true_box[1])
                assert dx > 0.5 * w or dy > 0.5 * h  # more than half its size off
            if kind == "spurious":
                assert true_type is None and true_box is None and o.type in DEFAULT_CLASSES
                assert 25 - 0.02 <= o.bbox[3] - o.bbox[1] <= 64 + 0.02
                # On background: it touches no labelled object and no DontCare region of the scene.
                assert not any(_intersects(o.bbox, other.bbox) for other in original[image_id])
        # Undo with the truth alone: the clean labels of the same seed come back.
        restored = [format_label_line(replace(o, type=t, bbox=tuple(b)))
                    for o, t, b, k in zip(objects, entry["true_types"], entry["true_boxes"], entry["kinds"])
                    if k != "spurious"]
        for d in sorted(entry["deleted"], key=lambda d: d["line"]):
            restored.insert(d["line"], d["label"])
        assert restored == [format_label_line(o) for o in original[image_id]]
    assert counts["flip"] == mixed.num_flipped and counts["shift"] == mixed.num_shifted
    assert counts["spurious"] == mixed.num_spurious

    ds = KittiDetection(mixed.root, "train")
    kinds = box_error_kinds(ds)
    assert {k: int((kinds == k).sum()) for k in ("flip", "shift", "spurious")} == {
        "flip": mixed.num_flipped, "shift": mixed.num_shifted, "spurious": mixed.num_spurious}
    np.testing.assert_array_equal(flipped_box_mask(ds), kinds == "flip")
    # A truth file from before shifts and spurious boxes (no kinds): flips by the true type.
    old = read_truth(corrupt.root)
    for entry in old["images"].values():
        entry.pop("kinds"), entry.pop("true_boxes")
    old_ds = KittiDetection(corrupt.root, "train")
    np.testing.assert_array_equal(box_error_kinds(old_ds, old) == "flip", flipped_box_mask(old_ds))
    assert set(box_error_kinds(old_ds, old)) == {"clean", "flip"}
