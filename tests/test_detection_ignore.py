"""Ignore regions (DontCare, the devkit's neighbour types, COCO crowd boxes) in the SSD loss.

* an anchor lying on a DontCare region and matched to no box is never a (hard) negative, while
  the same anchors are the hardest negatives when nothing is ignored; the set of ignored anchors
  is recomputed here by hand from the label file's numbers;
* anchors matched to a real box stay positive even where it overlaps a DontCare region;
* DontCare, Van, Truck, Person_sitting and Misc lines interleaved with the labelled boxes (and a
  blank line) change neither the boxes' global indices nor the file line that ``find-issues``
  reports for each box; only DontCare, Van and Person_sitting become ignore regions;
* COCO crowd annotations are ignore regions too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dataparams import DataParameters
from dataparams.detection.box_parameters import SSDBoxParameterLoss, ignored_anchors
from dataparams.detection.coco import CocoDetection
from dataparams.detection.curriculum import BoxTable
from dataparams.detection.issues import _label_lines
from dataparams.detection.kitti import (
    KittiDetection,
    KittiObject,
    default_ignore_types,
    format_label_line,
    write_split_file,
)
from dataparams.detection.kitti_eval import NEIGHBOUR_CLASSES
from dataparams.detection.models import build_detector, ssd_training_outputs
from dataparams.detection.transforms import hflip

CLASSES = ("Car", "Pedestrian", "Cyclist")


def _obj(type_, box, occluded=0):
    if type_ == "DontCare":
        return KittiObject.from_box(type_, box, truncated=-1, occluded=-1)
    return KittiObject.from_box(type_, box, occluded=occluded)


def _write_set(root, files, size=(96, 192)):
    """KITTI layout under ``root``; ``files`` maps image id -> list of objects or None (blank line)."""
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "label_2").mkdir(parents=True)
    (root / "ImageSets").mkdir()
    for image_id, objects in files.items():
        text = "".join(("\n" if o is None else format_label_line(o) + "\n") for o in objects)
        (root / "training" / "label_2" / f"{image_id}.txt").write_text(text)
        Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(root / "training" / "image_2" / f"{image_id}.png")
    write_split_file(root / "ImageSets" / "train.txt", list(files))
    return root


def test_default_ignore_types_follow_the_devkit_neighbours():
    assert default_ignore_types(CLASSES) == ("DontCare", "Van", "Person_sitting")
    assert default_ignore_types(("Cyclist",)) == ("DontCare",)
    # The same pairs as the evaluation's (kitti_eval ignores a Van for Car, a Person_sitting for
    # Pedestrian): what training ignores is what evaluation ignores.
    pairs = {(c.lower(), t.lower()) for c in CLASSES for t in default_ignore_types((c,)) if t != "DontCare"}
    assert pairs == set(NEIGHBOUR_CLASSES.items())


# ---------------------------------------------------------------------------------------------
# the loss's negatives
# ---------------------------------------------------------------------------------------------
# A 96 x 192 image, network input 64 x 128 (every coordinate times 2/3). The Car reaches into the
# DontCare region, so that its positive anchor lies on it (63% of its area).
CAR = (70.0, 30.0, 110.0, 70.0)
DONTCARE = (80.0, 9.0, 192.0, 96.0)


def _hand_coverage(anchor, region):
    """Intersection over the anchor's area, with plain floats."""
    w = min(anchor[2], region[2]) - max(anchor[0], region[0])
    h = min(anchor[3], region[3]) - max(anchor[1], region[1])
    area = (anchor[2] - anchor[0]) * (anchor[3] - anchor[1])
    return max(w, 0.0) * max(h, 0.0) / area


@pytest.fixture()
def dontcare_batch(tmp_path):
    root = _write_set(tmp_path, {"000000": [_obj("Car", CAR), _obj("DontCare", DONTCARE)]})
    dataset = KittiDetection(root, "train")
    image, target = dataset[0]
    torch.manual_seed(0)
    model = build_detector("tiny_ssd", 3, image_size=(64, 128), width=8)
    model.train()
    head, anchors, matched, resized = ssd_training_outputs(model, [image], [target])
    return anchors[0], matched[0], resized[0], head


def test_the_ignore_region_is_resized_with_the_image(dontcare_batch):
    _, _, resized, _ = dontcare_batch
    f = 2.0 / 3.0
    expected = [[DONTCARE[0] * f, DONTCARE[1] * f, DONTCARE[2] * f, DONTCARE[3] * f]]
    torch.testing.assert_close(resized["ignore"], torch.tensor(expected))
    torch.testing.assert_close(resized["boxes"], torch.tensor([[v * f for v in CAR]]))


def test_an_anchor_on_a_dontcare_region_is_never_a_negative(dontcare_batch):
    anchors, matched, resized, head = dontcare_batch
    region = [v * 2.0 / 3.0 for v in DONTCARE]
    coverage = [_hand_coverage(a, region) for a in anchors.tolist()]
    on_region = torch.tensor([c > 0.5 for c in coverage])
    positive = matched >= 0
    hand_ignored = on_region & ~positive
    # Preconditions that make the checks below able to fail: positive anchors on the region,
    # and more ignorable anchors than hard negatives to pick.
    assert bool((on_region & positive).any())
    num_positive = int(positive.sum())
    assert num_positive > 0 and int(hand_ignored.sum()) > 3 * num_positive
    torch.testing.assert_close(
        ignored_anchors(anchors, matched, resized["ignore"], min_overlap=0.5), hand_ignored, rtol=0, atol=0)

    # Logits that make the region's anchors the most object-like background (the hardest
    # negatives) and every other anchor confidently background.
    num_anchors = anchors.shape[0]
    logits = torch.tensor([5.0, 0.0, 0.0, 0.0]).repeat(1, num_anchors, 1)
    logits[0, on_region] = torch.tensor([0.0, 5.0, 0.0, 0.0])
    outputs = {"cls_logits": logits, "bbox_regression": torch.zeros(1, num_anchors, 4)}
    dp = DataParameters(3, 1, instance_curriculum=False)
    coder = build_detector("tiny_ssd", 3, image_size=(64, 128), width=8).box_coder

    _, plain = SSDBoxParameterLoss(dp, box_coder=coder, ignore_overlap=None)(outputs, [anchors], [matched], [resized])
    # Without ignoring, the hard negatives are anchors of the region (they have the largest loss).
    assert int(plain.hard_negative[0].sum()) == 3 * num_positive
    assert not bool((plain.hard_negative[0] & ~hand_ignored).any())
    assert not bool(plain.ignored.any())

    _, parts = SSDBoxParameterLoss(dp, box_coder=coder, ignore_overlap=0.5)(outputs, [anchors], [matched], [resized])
    torch.testing.assert_close(parts.ignored[0], hand_ignored, rtol=0, atol=0)
    assert not bool((parts.hard_negative[0] & hand_ignored).any())
    assert torch.equal(parts.foreground[0], positive)  # positives on the region stay positive
    assert int(parts.hard_negative[0].sum()) == 3 * num_positive
    # The classification term by hand: positives, plus the 3 * positives largest background
    # losses among the anchors that are neither positive nor ignored.
    targets = torch.zeros(num_anchors, dtype=torch.int64)
    targets[positive] = 1  # the Car
    ce = F.cross_entropy(logits[0], targets, reduction="none")
    pool = ce[~positive & ~hand_ignored].sort(descending=True).values[: 3 * num_positive]
    expected = (ce[positive].sum() + pool.sum()) / num_positive
    torch.testing.assert_close(parts.classification, expected)
    assert parts.classification < plain.classification


def test_ignored_anchors_by_hand():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [6.0, 0.0, 16.0, 10.0], [4.0, 0.0, 14.0, 10.0],
                            [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    region = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # Covered 100%, 40%, 60%, 0%; the last is covered wholly but matched to a box.
    matched = torch.tensor([-1, -1, -1, -1, 0])
    assert ignored_anchors(anchors, matched, region).tolist() == [True, False, True, False, False]
    assert ignored_anchors(anchors, matched, region, min_overlap=0.3).tolist() == [True, True, True, False, False]
    assert ignored_anchors(anchors, matched, torch.zeros(0, 4)).tolist() == [False] * 5


# ---------------------------------------------------------------------------------------------
# box indices and label lines
# ---------------------------------------------------------------------------------------------
BOXES = {
    "a": _obj("Car", (10, 20, 60, 70)),
    "b": _obj("Pedestrian", (100, 10, 115, 60), 1),
    "c": _obj("Cyclist", (30, 30, 70, 80)),
    "d": _obj("Car", (5, 5, 45, 40)),
    "e": _obj("Car", (120, 40, 180, 90)),
}
DC = _obj("DontCare", (150, 0, 190, 20))
VAN = _obj("Van", (60, 30, 95, 60))
TRUCK = _obj("Truck", (0, 50, 30, 95))
SITTING = _obj("Person_sitting", (130, 40, 145, 70))
MISC = _obj("Misc", (80, 80, 90, 90))
TRAM = _obj("Tram", (60, 0, 110, 40))
DC2 = _obj("DontCare", (0, 0, 12, 12))


def test_box_index_and_label_lines_unchanged_with_dontcare_lines_interleaved(tmp_path):
    clean = _write_set(tmp_path / "clean", {"000000": [BOXES["a"], BOXES["b"]], "000001": [BOXES["c"]],
                                             "000002": [BOXES["d"], BOXES["e"]]})
    # None is a blank line (counted by find-issues' file line numbers, skipped by the reader).
    mixed = _write_set(tmp_path / "mixed", {"000000": [DC, BOXES["a"], VAN, TRUCK, None, BOXES["b"], SITTING],
                                             "000001": [MISC, BOXES["c"], DC2],
                                             "000002": [BOXES["d"], TRAM, BOXES["e"]]})
    a, b = KittiDetection(clean, "train"), KittiDetection(mixed, "train")
    assert a.num_boxes == b.num_boxes == 5  # ignore regions get no data parameter
    for i in range(3):
        ta, tb = a.get_target(i), b.get_target(i)
        for key in ("box_index", "labels", "boxes", "difficulty"):
            assert torch.equal(ta[key], tb[key]), key
    # Position of each box among its file's objects, and its 1-based line in the file, by hand.
    assert [b.box_source(k) for k in range(5)] == [("000000", 1), ("000000", 4), ("000001", 1),
                                                   ("000002", 0), ("000002", 2)]
    table = BoxTable.from_dataset(b)
    notes: list[str] = []
    lines = _label_lines(mixed / "training" / "label_2", list(b.image_ids), table.image_index, table.line_index,
                         table.labels - 1, list(b.classes), table.boxes.astype(np.float64), notes)
    assert lines.tolist() == [2, 6, 2, 1, 3] and notes == []
    for k, name in enumerate("abcde"):
        image_id = b.box_source(k)[0]
        text = (mixed / "training" / "label_2" / f"{image_id}.txt").read_text().splitlines()
        assert text[lines[k] - 1] == format_label_line(BOXES[name])

    # Ignore regions: DontCare, Van and Person_sitting in line order; Truck, Misc and Tram are
    # background; target["dontcare"] keeps the DontCare regions alone.
    t0, t1, t2 = (b.get_target(i) for i in range(3))
    assert t0["ignore"].tolist() == [list(DC.bbox), list(VAN.bbox), list(SITTING.bbox)]
    assert t0["dontcare"].tolist() == [list(DC.bbox)]
    assert t1["ignore"].tolist() == [list(DC2.bbox)] and t2["ignore"].shape == (0, 4)
    assert a.get_target(0)["ignore"].shape == (0, 4)
    # Without Pedestrian, a Person_sitting is background again; ignore_types=() ignores nothing.
    only_car = KittiDetection(mixed, "train", classes=("Car",))
    assert only_car.get_target(0)["ignore"].tolist() == [list(DC.bbox), list(VAN.bbox)]
    assert KittiDetection(mixed, "train", ignore_types=()).get_target(0)["ignore"].shape == (0, 4)
    with pytest.raises(ValueError, match="overlap"):
        KittiDetection(mixed, "train", classes=("Car", "Van"), ignore_types=("Van",))
    # The regions move with the image.
    image, _ = b[0]
    flipped = hflip(image, t0)[1]["ignore"]
    assert flipped[0].tolist() == [192 - DC.bbox[2], DC.bbox[1], 192 - DC.bbox[0], DC.bbox[3]]


def test_coco_crowd_annotations_are_ignore_regions(tmp_path):
    (tmp_path / "images").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
        "categories": [{"id": 3, "name": "Car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [60, 5, 30, 20], "iscrowd": 1, "area": 600},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [5, 10, 20, 30], "iscrowd": 0, "area": 600},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    Image.new("RGB", (100, 50)).save(tmp_path / "images" / "a.png")  # every image is checked when the set is built
    ds = CocoDetection(tmp_path / "instances.json", tmp_path / "images")
    t = ds.get_target(0)
    assert ds.num_boxes == 1 and t["box_index"].tolist() == [0] and t["ann_id"].tolist() == [11]
    assert t["ignore"].tolist() == [[60.0, 5.0, 90.0, 25.0]] == t["dontcare"].tolist()
