"""COCO-format input: the reader, pycocotools' mAP on hand-built cases, the synthetic COCO set,
and the coco-synth preset trained by the detection trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dataparams.data.base import DatasetNotFoundError
from dataparams.detection.coco import (
    COCO_STATS,
    CocoDetection,
    CocoFormatError,
    coco_evaluate,
    write_synthetic_coco,
)
from dataparams.detection.config import validate_detection_config
from dataparams.detection.kitti import DEFAULT_CLASSES, KittiDetection
from dataparams.detection.presets import get_detection_preset
from dataparams.detection.synthetic import SyntheticKittiConfig, write_synthetic_kitti
from dataparams.detection.transforms import hflip


def _fashion_mnist():
    try:
        from dataparams.data.idx import load_fashion_mnist

        load_fashion_mnist(train=False)
    except DatasetNotFoundError:  # pragma: no cover - depends on the machine
        pytest.skip("Fashion-MNIST is not installed (see README: ./run test installs it)")


def _write(tmp_path, data, sizes=None):
    """The JSON as ``tmp_path/ann.json`` and a grey PNG per image in ``tmp_path/img``."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for im in data["images"]:
        Image.new("RGB", (im["width"], im["height"]), (90, 90, 90)).save(tmp_path / "img" / im["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _hand_built():
    # Category ids 5 and 2, given out of order: labels follow the ids (cat = 1, dog = 2).
    # Images 7 and 3, given out of order: the dataset orders them by id (3 first).
    return {
        "images": [{"id": 7, "file_name": "b.png", "width": 64, "height": 48},
                   {"id": 3, "file_name": "a.png", "width": 64, "height": 48}],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 11, "image_id": 7, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 12, "image_id": 3, "category_id": 2, "bbox": [0, 0, 8, 8], "iscrowd": 0, "area": 64},
            {"id": 13, "image_id": 7, "category_id": 2, "bbox": [30, 20, 30, 20], "iscrowd": 1, "area": 600},
            {"id": 14, "image_id": 7, "category_id": 2, "bbox": [1.5, 2.5, 4, 6], "iscrowd": 0, "area": 24},
        ],
    }


# ---------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------
def test_reader_yields_the_kitti_dataset_structure(tmp_path):
    ds = CocoDetection(_write(tmp_path, _hand_built()), tmp_path / "img")
    assert ds.classes == ("cat", "dog") and ds.category_ids == (2, 5) and ds.num_classes == 2
    assert ds.image_ids == [3, 7] and len(ds) == 2
    # Crowd annotation 13 is no target and gets no data parameter: 3 boxes, not 4.
    assert ds.num_boxes == 3
    assert ds.box_ann_ids.tolist() == [12, 11, 14]
    assert [ds.box_source(b) for b in range(3)] == [(3, 0), (7, 0), (7, 2)]
    assert ds.box_ann_id(2) == 14

    image, t = ds[1]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert t["image_id"] == 7
    assert t["boxes"].tolist() == [[10.0, 5.0, 30.0, 15.0], [1.5, 2.5, 5.5, 8.5]]
    assert t["labels"].tolist() == [2, 1]
    assert t["box_index"].tolist() == [1, 2] and t["ann_id"].tolist() == [11, 14]
    assert t["dontcare"].tolist() == [[30.0, 20.0, 60.0, 40.0]]
    # No KITTI attributes in the file: unknown occlusion / truncation, no difficulty level.
    assert t["difficulty"].tolist() == [-1, -1] and t["occluded"].tolist() == [-1, -1]
    assert {"truncated", "height"} <= set(t)
    # The index and the annotation id pass through a flip; the crowd box moves with the image.
    _, flipped = hflip(image, t)
    assert torch.equal(flipped["box_index"], t["box_index"]) and torch.equal(flipped["ann_id"], t["ann_id"])
    assert flipped["dontcare"].tolist() == [[4.0, 20.0, 34.0, 40.0]]

    only_dogs = CocoDetection(tmp_path / "ann.json", tmp_path / "img", classes=["dog"])
    assert only_dogs.num_boxes == 1 and only_dogs.box_labels.tolist() == [1] and only_dogs.category_ids == (5,)
    with pytest.raises(CocoFormatError, match="'bird'"):
        CocoDetection(tmp_path / "ann.json", tmp_path / "img", classes=["bird"])


@pytest.mark.parametrize(
    ("bbox", "message"),
    [([10, 10, 0, 5], "zero area"), ([10, 10, 5, -1], "zero area"), ([60, 10, 10, 5], "outside"),
     ([-2, 10, 10, 5], "outside")],
)
def test_invalid_boxes_name_the_annotation_or_are_clipped(tmp_path, bbox, message):
    data = _hand_built()
    data["annotations"].append({"id": 99, "image_id": 3, "category_id": 5, "bbox": bbox, "iscrowd": 0})
    path = _write(tmp_path, data)
    with pytest.raises(CocoFormatError, match=f"annotation 99 .*{message}"):
        CocoDetection(path, tmp_path / "img")
    clipped = CocoDetection(path, tmp_path / "img", invalid_boxes="clip")
    x, y, w, h = bbox
    expected = [max(x, 0), max(y, 0), min(x + w, 64), min(y + h, 48)]
    if expected[2] > expected[0] and expected[3] > expected[1]:  # clipped, kept
        assert clipped.num_boxes == 4 and clipped.dropped_ann_ids == []
        assert clipped.get_target(0)["boxes"][-1].tolist() == expected
    else:  # nothing left: dropped, no data parameter
        assert clipped.num_boxes == 3 and clipped.dropped_ann_ids == [99]


def test_malformed_files_are_refused(tmp_path):
    data = _hand_built()
    data["annotations"].append({"id": 50, "image_id": 4, "category_id": 5, "bbox": [0, 0, 2, 2]})
    with pytest.raises(CocoFormatError, match="annotation 50 refers to image 4"):
        CocoDetection(_write(tmp_path, data), tmp_path / "img")
    data = _hand_built()
    data["annotations"].append({"id": 51, "image_id": 3, "category_id": 9, "bbox": [0, 0, 2, 2]})
    with pytest.raises(CocoFormatError, match="annotation 51 has category_id 9"):
        CocoDetection(_write(tmp_path, data), tmp_path / "img")
    data = _hand_built()
    data["annotations"][1]["id"] = 11
    with pytest.raises(CocoFormatError, match="annotation id 11 repeats"):
        CocoDetection(_write(tmp_path, data), tmp_path / "img")
    with pytest.raises(FileNotFoundError):
        CocoDetection(tmp_path / "missing.json", tmp_path / "img")


# ---------------------------------------------------------------------------------------------
# COCO mAP by pycocotools, on cases with known answers
# ---------------------------------------------------------------------------------------------
def _gt(boxes_per_image, *, categories=(1,), crowd=()):
    """A ground truth of 100 x 100 images; boxes ``(x1, y1, x2, y2, category)`` per image id, and
    crowd regions ``(image id, x1, y1, x2, y2, category)``."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in boxes_per_image]
    anns = []
    for i, boxes in boxes_per_image.items():
        for x1, y1, x2, y2, c in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    for i, x1, y1, x2, y2, c in crowd:
        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": (x2 - x1) * (y2 - y1), "iscrowd": 1})
    names = {1: "a", 2: "b", 3: "c"}
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": names[c]} for c in categories]}


def _dets(per_image):
    """``{image id: [(x1, y1, x2, y2, category, score), ...]}`` as coco_evaluate's arrays."""
    return {i: {"boxes": np.array([d[:4] for d in ds], float).reshape(-1, 4),
                "scores": np.array([d[5] for d in ds], float), "labels": np.array([d[4] for d in ds], int)}
            for i, ds in per_image.items()}


# Every box is 40 x 40 = 1600 px^2: a "medium" object (32^2 < area < 96^2), so the small and
# large rows have no ground truth and pycocotools reports -1 there, returned as None.
GT_TWO_CLASSES = {1: [(10, 10, 50, 50, 1), (55, 55, 95, 95, 2)], 2: [(0, 0, 40, 40, 1)], 3: [(30, 30, 70, 70, 2)]}


def test_perfect_detections_give_map_one():
    pytest.importorskip("pycocotools")
    dets = {i: [(*b[:4], b[4], 0.9) for b in boxes] for i, boxes in GT_TWO_CLASSES.items()}
    r = coco_evaluate(_gt(GT_TWO_CLASSES, categories=(1, 2)), _dets(dets))
    for key in ("map", "map50", "map75", "map_medium", "mar1", "mar10", "mar100", "mar_medium"):
        assert r[key] == pytest.approx(1.0), key
    for key in ("map_small", "map_large", "mar_small", "mar_large"):
        assert r[key] is None, key  # pycocotools' -1: no ground truth of that size
    assert r["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert set(COCO_STATS) <= set(r) and r["num_images"] == 3 and r["num_detections"] == 4
    # A category without ground truth (here "c", id 3) is -1 in pycocotools: None here, left out
    # of the mean, so the mAP stays 1 -- even with a detection of that category.
    dets[1].append((0, 0, 10, 10, 3, 0.99))
    r = coco_evaluate(_gt(GT_TWO_CLASSES, categories=(1, 2, 3)), _dets(dets))
    assert r["map"] == pytest.approx(1.0) and r["per_class"]["c"] is None
    # Restricted to category 1 (COCOeval.params.catIds): the other category's detections do not count.
    r = coco_evaluate(_gt(GT_TWO_CLASSES, categories=(1, 2)), _dets(dets | {1: dets[1][:1]}), category_ids=[1])
    assert r["map"] == pytest.approx(1.0) and list(r["per_class"]) == ["a"]


def test_no_detections_give_map_zero(tmp_path):
    pytest.importorskip("pycocotools")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt(GT_TWO_CLASSES, categories=(1, 2))))
    for dets in ({}, {1: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}}):
        r = coco_evaluate(path, dets)
        for key in ("map", "map50", "map75", "map_medium", "mar100"):
            assert r[key] == 0.0, key
        assert r["map_small"] is None and r["map_large"] is None
        assert r["per_class"] == {"a": 0.0, "b": 0.0} and r["num_detections"] == 0


def test_half_of_the_objects_detected_gives_51_of_101():
    # 4 objects of one class, 2 of them detected exactly, nothing else. At every IoU threshold
    # t in 0.50:0.05:0.95 both detections are true positives: the precision-recall points are
    # (recall 0.25, precision 1) and (0.5, 1). COCO samples the interpolated precision
    # p(r) = max{precision at recall >= r} at the 101 recall levels r = 0, 0.01, ..., 1.00:
    # p(r) = 1 for the 51 levels 0.00..0.50 and 0 for r > 0.5 (no detection reaches it), so
    # AP_t = 51/101 for every t, and AP@[.5:.95] = AP50 = AP75 = 51/101 = 0.50495...;
    # the recall at 100 (or 10) detections per image is 2/4 = 0.5.
    pytest.importorskip("pycocotools")
    gt = {1: [(10, 10, 50, 50, 1), (55, 55, 95, 95, 1)], 2: [(0, 0, 40, 40, 1), (50, 0, 90, 40, 1)]}
    dets = {1: [(10, 10, 50, 50, 1, 0.9)], 2: [(50, 0, 90, 40, 1, 0.8)]}
    r = coco_evaluate(_gt(gt), _dets(dets))
    for key in ("map", "map50", "map75", "map_medium"):
        assert r[key] == pytest.approx(51 / 101, abs=1e-12), key
    assert r["mar100"] == pytest.approx(0.5) and r["mar10"] == pytest.approx(0.5)
    assert r["per_class"]["a"] == pytest.approx(51 / 101, abs=1e-12)


def test_a_false_positive_ranked_first_halves_the_ap_and_crowd_regions_are_ignored():
    # One object; a false positive (score 0.9) ranked above the exact detection (0.8): the
    # points are (recall 0, precision 0) and (1, 1/2), so p(r) = 1/2 at all 101 levels: AP = 0.5.
    pytest.importorskip("pycocotools")
    gt = {1: [(10, 10, 50, 50, 1)]}
    dets = _dets({1: [(55, 55, 95, 95, 1, 0.9), (10, 10, 50, 50, 1, 0.8)]})
    assert coco_evaluate(_gt(gt), dets)["map"] == pytest.approx(0.5)
    # The same detection on a crowd region (iscrowd = 1) is ignored, not a false positive: AP 1.
    crowd = _gt(gt, crowd=[(1, 55, 55, 95, 95, 1)])
    assert coco_evaluate(crowd, dets)["map"] == pytest.approx(1.0)


def test_detections_must_use_category_ids_of_ground_truth_images():
    pytest.importorskip("pycocotools")
    gt = _gt({1: [(10, 10, 50, 50, 1)]})
    with pytest.raises(ValueError, match="not a category id"):
        coco_evaluate(gt, _dets({1: [(10, 10, 50, 50, 7, 0.9)]}))
    with pytest.raises(ValueError, match="image 5"):
        coco_evaluate(gt, _dets({5: [(10, 10, 50, 50, 1, 0.9)]}))


# ---------------------------------------------------------------------------------------------
# the synthetic set in COCO's format
# ---------------------------------------------------------------------------------------------
SMALL = SyntheticKittiConfig(num_images=12, val_fraction=0.25, seed=3, crowd_prob=0.5)


def test_synthetic_coco_round_trip_equals_the_generator_and_the_kitti_writer(tmp_path):
    _fashion_mnist()
    from dataparams.detection.synthetic import class_pools, synthetic_scenes

    coco = write_synthetic_coco(tmp_path / "coco", SMALL)
    kitti = write_synthetic_kitti(tmp_path / "kitti", SMALL)
    assert coco.train_ids == [int(i) + 1 for i in kitti.train_ids]
    assert coco.val_ids == [int(i) + 1 for i in kitti.val_ids]
    generated = {kid: (image, objects) for kid, image, objects in synthetic_scenes(SMALL, class_pools(None))}
    names = {c: k + 1 for k, c in enumerate(DEFAULT_CLASSES)}
    crowd_seen = 0
    for split, ids in (("train", coco.train_ids), ("val", coco.val_ids)):
        ds = CocoDetection.from_split(tmp_path / "coco", split)
        ref = KittiDetection(tmp_path / "kitti", split)
        assert ds.classes == DEFAULT_CLASSES and ds.image_ids == ids and ds.num_boxes == ref.num_boxes
        assert np.array_equal(ds.box_labels, ref.box_labels) and np.array_equal(ds.box_difficulty, ref.box_difficulty)
        for i, image_id in enumerate(ids):
            kid = f"{image_id - 1:06d}"
            image, objects = generated[kid]
            kept = [o for o in objects if o.type != "DontCare"]
            regions = sorted({o.bbox for o in objects if o.type == "DontCare"})
            t, r = ds.get_target(i), ref.get_target(i)
            # The generator's boxes and classes, in its order.
            assert t["boxes"].tolist() == [list(o.bbox) for o in kept]
            assert t["labels"].tolist() == [names[o.type] for o in kept]
            assert t["occluded"].tolist() == [o.occluded for o in kept]
            # The KITTI writer's, for the same config and seed.
            for key in ("boxes", "labels", "difficulty", "occluded", "truncated", "height"):
                assert torch.equal(t[key], r[key]), key
            # Each DontCare region is one crowd annotation per category.
            assert sorted({tuple(b) for b in t["dontcare"].tolist()}) == regions
            assert len(t["dontcare"]) == len(regions) * len(DEFAULT_CLASSES)
            crowd_seen += len(regions)
            assert (tmp_path / "coco" / split / f"{kid}.png").read_bytes() == (
                tmp_path / "kitti" / "training" / "image_2" / f"{kid}.png").read_bytes()
            assert torch.equal(ds[i][0], ref[i][0])
    assert crowd_seen > 0 and coco.num_crowd == crowd_seen * len(DEFAULT_CLASSES)
    assert coco.num_objects == kitti.num_objects
    with pytest.raises(ValueError, match="clean sets only"):
        write_synthetic_coco(tmp_path / "bad", SyntheticKittiConfig(num_images=2, flip_fraction=0.1))

    # The ground truth as detections scores 1 under pycocotools (the crowd regions are ignored).
    pytest.importorskip("pycocotools")
    data = json.loads(coco.ann_file("train").read_text())
    dets: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        if not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            dets[a["image_id"]].append((x, y, x + w, y + h, a["category_id"], 1.0))
    assert coco_evaluate(coco.ann_file("train"), _dets(dets))["map"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# training on it
# ---------------------------------------------------------------------------------------------
def test_coco_synth_presets_mirror_kitti_synth(tmp_path):
    for variant in ("baseline", "instance"):
        cfg = get_detection_preset(f"coco-synth/{variant}", root=tmp_path)
        ref = get_detection_preset(f"kitti-synth/{variant}", root=tmp_path)
        validate_detection_config(cfg)
        assert cfg.data.format == "coco" and cfg.preset == f"coco-synth/{variant}"
        assert (cfg.model, cfg.optim, cfg.curriculum) == (ref.model, ref.optim, ref.curriculum)
    from dataparams.config import ConfigError, apply_overrides

    with pytest.raises(ConfigError, match="same file"):
        validate_detection_config(apply_overrides(cfg, ["data.ann_file=annotations/all.json"]))
    with pytest.raises(ConfigError, match="data.format"):
        validate_detection_config(apply_overrides(cfg, ["data.format=voc"]))
    # COCO categories need no KITTI IoU threshold, and no classes means every category.
    validate_detection_config(apply_overrides(cfg, ["data.classes=person,dog"]))
    validate_detection_config(apply_overrides(cfg, ["data.classes="]))


def test_coco_synth_instance_trains_one_epoch_and_reports_coco_map(tmp_path):
    pytest.importorskip("pycocotools")
    _fashion_mnist()
    from dataparams.detection.train import train_detection
    from dataparams.runs import RunDir

    torch.set_num_threads(1)
    root = tmp_path / "data"
    written = write_synthetic_coco(root, SyntheticKittiConfig(num_images=24, val_fraction=0.25, seed=5))
    # The tiny settings of tests/test_detection_train.py.
    cfg = get_detection_preset("coco-synth/instance", root=root)
    cfg.seed, cfg.model.width, cfg.data.batch_size, cfg.data.eval_batch_size = 4, 16, 6, 6
    cfg.optim.epochs, cfg.eval_every = 1, 1
    summary = train_detection(cfg, tmp_path / "run", quiet=True)

    run = RunDir(tmp_path / "run")
    (record,) = run.read_metrics()
    assert "kitti" not in record and "coco" in record
    for key in COCO_STATS:
        value = record["coco"][key]
        assert value is None or 0.0 <= value <= 1.0, key
    assert record["coco"]["map"] is not None and set(record["coco"]["per_class"]) == set(DEFAULT_CLASSES)
    assert record["coco"]["num_images"] == len(written.val_ids)
    assert summary["coco"] == record["coco"] and summary["curriculum"] == "instance"
    # One data parameter per non-crowd training annotation; the curriculum moved.
    train_set = CocoDetection.from_split(root, "train")
    assert summary["num_boxes"] == train_set.num_boxes == run.load_arrays("labels.npz")["labels"].shape[0]
    assert not np.all(run.load_snapshot(1)["box_sigma"] == 1.0)
    assert record["sigma_by_difficulty"]["easy"] is not None  # the synthetic set's KITTI attributes
    # The detections in COCO's result format, which pycocotools reads back.
    results = json.loads((run.snapshot_dir / "detections_epoch_0001" / "results.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} == set(results[0])
    assert {d["image_id"] for d in results} <= set(written.val_ids)
    # find-issues on the run finds the images through the instances file (no KITTI folders) and
    # draws the suspects on them.
    from dataparams.detection.issues import find_box_issues, write_box_issues_html

    report = find_box_issues(tmp_path / "run")
    assert report.label_dir is None and report.image_dir == root / "train"
    assert not [n for n in report.notes if "label folder" in n]
    assert set(report.image_files) == {str(i) for i in train_set.image_ids}
    page = write_box_issues_html(report, tmp_path / "issues.html", top=5).read_text()
    assert page.count("<img") == 5 and "without pictures" not in page
    # And `report` draws Figure 3 (boxes with line width ~ sigma) from the COCO images.
    from dataparams.detection.figures import object_detection_report

    figures = object_detection_report([tmp_path / "run"], tmp_path / "report")["figures"]
    assert any(path.endswith("_boxes.png") for path in figures.values()), figures


def test_a_missing_image_is_named_when_the_file_is_read(tmp_path):
    # Found when the data set is built, not when the first evaluation reads the validation image.
    ann = _write(tmp_path, _hand_built())
    (tmp_path / "img" / _hand_built()["images"][0]["file_name"]).unlink()  # b.png, image 7
    with pytest.raises(FileNotFoundError, match=rf"image 7 of {ann} is missing"):
        CocoDetection(ann, tmp_path / "img")
