"""KITTI 2D evaluation: hand-derived devkit numbers, a literal port of the devkit's loops, files.

The expected APs below are derived by hand from the devkit's rules (cpp/evaluate_object.cpp of
the KITTI object devkit). Every hand-built case was also run once through the official C++
devkit, compiled in /tmp and not part of this repository, which printed the same precision
curves (AP agreement to the 6 decimals it writes).

Common base of the hand-built cases: 41 images, each with one easy Car (80 x 50 px, fully
visible, not truncated) and one exact detection of it scoring (i + 1) / 100 in image i, so that
every difficulty counts N = 41 boxes. Two facts of the devkit are used throughout:

* getThresholds keeps true-positive score i (sorted descending) for recall step k (c = k / 40)
  unless ``(i + 2) / N - c < c - (i + 1) / N``. With N = 41 and one true positive per step,
  candidate i = k is skipped only if 80k + 120 < 82k, i.e. k > 60: never. So 41 true
  positives give 41 thresholds and 40 give 40.
* AP|R40 = sum(precision[1:41]) / 40 and AP11 = sum(precision[0:41:4]) / 11, after
  precision[i] = max(precision[i:]); slots beyond the last threshold hold 0.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dataparams.detection.kitti import KittiFormatError, KittiObject, write_label_file, write_split_file
from dataparams.detection.kitti_eval import (
    EVAL_CLASSES,
    evaluate,
    evaluate_detailed,
    evaluate_dirs,
    format_table,
    kitti_eval_command,
)

N_BASE = 41
CAR_BOX = (100.0, 100.0, 180.0, 150.0)


def _gt(type_, box, *, occluded=0, truncated=0.0):
    if type_ == "DontCare":
        return KittiObject.from_box(type_, box, truncated=-1, occluded=-1)
    return KittiObject.from_box(type_, box, occluded=occluded, truncated=truncated)


def _det(type_, box, score):
    return KittiObject.from_box(type_, box, score=score)


def base_case(n=N_BASE):
    gt = {f"{i:06d}": [_gt("Car", CAR_BOX)] for i in range(n)}
    dets = {f"{i:06d}": [_det("Car", CAR_BOX, (i + 1) / 100)] for i in range(n)}
    return gt, dets


def case_missed_box():
    gt, dets = base_case()
    dets["000040"] = []
    return gt, dets


def case_duplicate():
    gt, dets = base_case()
    # A second, slightly shifted detection of image 40's car (IoU 3950 / 4050 = 0.975).
    dets["000040"].append(_det("Car", (101.0, 100.0, 181.0, 150.0), 0.215))
    return gt, dets


def case_dontcare(with_region=True):
    gt, dets = base_case()
    if with_region:
        gt["000000"].append(_gt("DontCare", (300.0, 100.0, 400.0, 160.0)))
    dets["000000"].append(_det("Car", (310.0, 105.0, 390.0, 155.0), 0.99))
    return gt, dets


def case_hard_only_missed():
    gt, dets = base_case()
    gt["000000"].append(_gt("Car", (500.0, 100.0, 560.0, 130.0), occluded=2))
    return gt, dets


def case_neighbour(gt_type="Van"):
    gt, dets = base_case()
    gt["000000"].append(_gt(gt_type, (600.0, 100.0, 680.0, 150.0)))
    dets["000000"].append(_det("Car", (600.0, 100.0, 680.0, 150.0), 0.99))
    return gt, dets


def case_small_detection():
    gt, dets = base_case()
    dets["000000"].append(_det("Car", (700.0, 100.0, 760.0, 130.0), 0.99))  # 30 px, no ground truth
    return gt, dets


def case_height_boundary():
    gt, dets = base_case()
    gt["000000"].append(_gt("Car", (800.0, 100.0, 860.0, 140.0)))  # exactly 40 px, not detected
    return gt, dets


def _car(results):
    return {d: (round(v["ap40"], 4), round(v["ap11"], 4)) for d, v in results["Car"].items()}


ALL_100 = {"easy": (100.0, 100.0), "moderate": (100.0, 100.0), "hard": (100.0, 100.0)}
# 40 of 41 thresholds with precision 1, slot 40 empty: 39/40 and 10/11.
MISS = (97.5, round(1000 / 11, 4))
# One false positive at every threshold: precision (k+1)/(k+2), its suffix maximum 41/42 everywhere.
ONE_FP = (round(100 * 41 / 42, 4), round(100 * 41 / 42, 4))


def test_perfect_detections_give_100():
    assert _car(evaluate(*base_case())) == ALL_100


def test_no_detections_give_0():
    gt, _ = base_case()
    results = evaluate(gt, {})
    assert all(v == {"ap40": 0.0, "ap11": 0.0} for per in results.values() for v in per.values())
    assert set(results) == set(EVAL_CLASSES)


def test_forty_boxes_all_found_give_the_devkits_97_5():
    # N = 40: candidate i = k is skipped iff 2i + 3 < 2k, never; 40 thresholds, slot 40 empty.
    assert _car(evaluate(*base_case(40))) == {d: MISS for d in ("easy", "moderate", "hard")}


def test_missed_box():
    # 40 true positives for N = 41: 40 thresholds (see the module docstring), precision 1 each.
    assert _car(evaluate(*case_missed_box())) == {d: MISS for d in ("easy", "moderate", "hard")}


def test_duplicate_detection_is_a_false_positive_below_its_score():
    # Thresholds are the 41 scores t_k = (41 - k) / 100. Image 40 keeps its exact detection
    # (IoU 1 beats 0.975), the duplicate (0.215) is a false positive from t_20 = 0.21 on:
    # precision 1 for k < 20 and (k+1)/(k+2) for k >= 20, suffix max 1 for i < 20, 41/42 after.
    # AP40 = (19 + 21 * 41/42) / 40 = 39.5 / 40; AP11 = (5 + 6 * 41/42) / 11.
    ap40, ap11 = 100 * 39.5 / 40, 100 * (5 + 6 * 41 / 42) / 11
    expected = (round(ap40, 4), round(ap11, 4))
    assert _car(evaluate(*case_duplicate())) == {d: expected for d in ("easy", "moderate", "hard")}


def test_detection_in_dontcare_region_is_not_a_false_positive():
    # Its intersection over its own area is 1 > 0.7: neither true nor false positive.
    assert _car(evaluate(*case_dontcare(with_region=True))) == ALL_100
    # The same detection without the region is a false positive at every threshold.
    assert _car(evaluate(*case_dontcare(with_region=False))) == {
        d: ONE_FP for d in ("easy", "moderate", "hard")
    }


def test_missed_hard_only_box_changes_hard_only():
    # 30 px, occlusion 2: ignored in easy (height) and moderate (occlusion); hard counts N = 42
    # with 41 true positives. getThresholds with N = 42 keeps i = k while 80k + 120 >= 84k
    # (k <= 30), then i = k + 1 for k = 31..39: 40 thresholds, so 39/40 and 10/11.
    assert _car(evaluate(*case_hard_only_missed())) == {
        "easy": ALL_100["easy"],
        "moderate": ALL_100["moderate"],
        "hard": MISS,
    }


def test_van_detected_as_car_is_not_penalised():
    # The Van is ground truth "ignored" for Car: it absorbs the detection in both passes.
    assert _car(evaluate(*case_neighbour("Van"))) == ALL_100
    # A Truck is not a neighbour: the same detection is a false positive.
    assert _car(evaluate(*case_neighbour("Truck"))) == {d: ONE_FP for d in ("easy", "moderate", "hard")}


def test_detection_below_min_height_is_ignored():
    # 30 px: below easy's 40 (ignored), above moderate/hard's 25 (a false positive there).
    assert _car(evaluate(*case_small_detection())) == {
        "easy": ALL_100["easy"],
        "moderate": ONE_FP,
        "hard": ONE_FP,
    }


def test_ground_truth_of_exactly_min_height_is_ignored_as_in_the_code():
    # The devkit ignores height <= 40 for easy: the missed 40 px box counts only from moderate on.
    assert _car(evaluate(*case_height_boundary())) == {
        "easy": ALL_100["easy"],
        "moderate": MISS,
        "hard": MISS,
    }


def test_detailed_result_holds_the_devkit_curve():
    r = evaluate_detailed(*case_missed_box())["Car"]["moderate"]
    assert r.num_gt == 41
    assert len(r.thresholds) == 40 and np.all(np.diff(r.thresholds) < 0)
    np.testing.assert_array_equal(r.precision, np.r_[np.ones(40), 0.0])
    np.testing.assert_allclose(r.recall[:40], np.arange(1, 41) / 41)


# ---------------------------------------------------------------------------------------------
# against a literal port of the devkit's loops
# ---------------------------------------------------------------------------------------------
MIN_H, MAX_OCC, MAX_TRUNC = (40, 25, 25), (0, 1, 2), (0.15, 0.3, 0.5)


def _box_overlap(a, b, criterion=-1):
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter) if criterion == -1 else inter / area_a


def _clean(cls, gt, det, diff):
    ign_gt, dc, ign_det, n_gt = [], [], [], 0
    for g in gt:
        t = g.type.lower()
        valid = 1 if t == cls else 0 if (cls, t) in (("pedestrian", "person_sitting"), ("car", "van")) else -1
        height = g.bbox[3] - g.bbox[1]
        ignore = g.occluded > MAX_OCC[diff] or g.truncated > MAX_TRUNC[diff] or height <= MIN_H[diff]
        if valid == 1 and not ignore:
            ign_gt.append(0)
            n_gt += 1
        elif valid == 0 or (ignore and valid == 1):
            ign_gt.append(1)
        else:
            ign_gt.append(-1)
    dc = [g for g in gt if g.type.lower() == "dontcare"]
    for d in det:
        height = int(abs(d.bbox[1] - d.bbox[3]))
        ign_det.append(1 if height < MIN_H[diff] else 0 if d.type.lower() == cls else -1)
    return ign_gt, dc, ign_det, n_gt


def _statistics(gt, det, dc, ign_gt, ign_det, compute_fp, min_ov, thresh=0.0):
    assigned = [False] * len(det)
    below = [compute_fp and d.score < thresh for d in det]
    tp = fp = fn = 0
    v = []
    for i, g in enumerate(gt):
        if ign_gt[i] == -1:
            continue
        det_idx, valid, max_ov, assigned_ignored = -1, -10000.0, 0.0, False
        for j, d in enumerate(det):
            if ign_det[j] == -1 or assigned[j] or below[j]:
                continue
            o = _box_overlap(d.bbox, g.bbox)
            if not compute_fp and o > min_ov and d.score > valid:
                det_idx, valid = j, d.score
            elif compute_fp and o > min_ov and (o > max_ov or assigned_ignored) and ign_det[j] == 0:
                max_ov, det_idx, valid, assigned_ignored = o, j, 1.0, False
            elif compute_fp and o > min_ov and valid == -10000.0 and ign_det[j] == 1:
                det_idx, valid, assigned_ignored = j, 1.0, True
        if valid == -10000.0 and ign_gt[i] == 0:
            fn += 1
        elif valid != -10000.0 and (ign_gt[i] == 1 or ign_det[det_idx] == 1):
            assigned[det_idx] = True
        elif valid != -10000.0:
            tp += 1
            v.append(det[det_idx].score)
            assigned[det_idx] = True
    if compute_fp:
        fp = sum(1 for j in range(len(det)) if not (assigned[j] or ign_det[j] in (-1, 1) or below[j]))
        stuff = 0
        for c in dc:
            for j, d in enumerate(det):
                if assigned[j] or ign_det[j] in (-1, 1) or below[j]:
                    continue
                if _box_overlap(d.bbox, c.bbox, 0) > min_ov:
                    assigned[j] = True
                    stuff += 1
        fp -= stuff
    return tp, fp, fn, v


def _literal_devkit(gt, dets, cls_name, diff, min_ov):
    cls = cls_name.lower()
    ids = sorted(gt)
    cleaned = [_clean(cls, gt[i], dets.get(i, []), diff) for i in ids]
    n_gt = sum(c[3] for c in cleaned)
    v = []
    for i, (ign_gt, dc, ign_det, _) in zip(ids, cleaned):
        v += _statistics(gt[i], dets.get(i, []), dc, ign_gt, ign_det, False, min_ov)[3]
    v.sort(reverse=True)
    thresholds, current = [], 0.0
    for i in range(len(v)):
        l_rec = (i + 1) / n_gt
        r_rec = (i + 2) / n_gt if i < len(v) - 1 else l_rec
        if (r_rec - current) < (current - l_rec) and i < len(v) - 1:
            continue
        thresholds.append(v[i])
        current += 1.0 / 40.0
    precision = [0.0] * 41
    for t, th in enumerate(thresholds):
        tp = fp = 0
        for i, (ign_gt, dc, ign_det, _) in zip(ids, cleaned):
            a, b, _, _ = _statistics(gt[i], dets.get(i, []), dc, ign_gt, ign_det, True, min_ov, th)
            tp, fp = tp + a, fp + b
        precision[t] = tp / (tp + fp) if tp + fp else 0.0
    precision = [max(precision[i:]) for i in range(41)]
    return 100 * sum(precision[1:]) / 40, 100 * sum(precision[0::4]) / 11


def _random_set(rng, n_images):
    """Crowded random scenes: duplicates, neighbours, DontCare, boxes at the height thresholds."""
    types = [
        "Car",
        "Car",
        "Van",
        "Pedestrian",
        "Pedestrian",
        "Person_sitting",
        "Cyclist",
        "Truck",
        "DontCare",
    ]
    gt, dets = {}, {}
    for i in range(n_images):
        objs, found = [], []
        for _ in range(rng.integers(0, 7)):
            t = types[rng.integers(len(types))]
            h = float(rng.choice([rng.uniform(12, 110), 40.0, 25.0, 39.99, 40.01]))
            x1, y1 = round(float(rng.uniform(0, 400)), 2), round(float(rng.uniform(0, 100)), 2)
            box = (x1, y1, round(x1 + h * rng.uniform(0.4, 2.0), 2), round(y1 + h, 2))
            objs.append(
                _gt(
                    t,
                    box,
                    occluded=int(rng.integers(0, 4)),
                    truncated=float(rng.choice([0, 0.1, 0.2, 0.4, 0.6])),
                )
            )
        for o in objs:
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                b = tuple(
                    round(v + e, 2) for v, e in zip(o.bbox, rng.normal(0, rng.choice([0.5, 2.0, 5.0]), 4))
                )
                if b[2] > b[0] and b[3] > b[1]:
                    t = o.type if o.type in EVAL_CLASSES else EVAL_CLASSES[rng.integers(3)]
                    found.append(_det(t, b, round(float(rng.uniform(0, 1)), 2)))  # ties on purpose
        for _ in range(rng.integers(0, 3)):
            x1, y1, h = rng.uniform(0, 400), rng.uniform(0, 100), rng.uniform(10, 90)
            found.append(
                _det(EVAL_CLASSES[rng.integers(3)], (x1, y1, x1 + h, y1 + h), float(rng.uniform(0, 1)))
            )
        rng.shuffle(found)
        gt[f"{i:06d}"], dets[f"{i:06d}"] = objs, found
    return gt, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_literal_port_of_the_devkit_loops(seed):
    gt, dets = _random_set(np.random.default_rng(seed), 60)
    results = evaluate(gt, dets)
    for name, min_ov in (("Car", 0.7), ("Pedestrian", 0.5), ("Cyclist", 0.5)):
        for diff, level in (("easy", 0), ("moderate", 1), ("hard", 2)):
            ap40, ap11 = _literal_devkit(gt, dets, name, level, min_ov)
            assert results[name][diff]["ap40"] == pytest.approx(ap40, abs=1e-9), (name, diff)
            assert results[name][diff]["ap11"] == pytest.approx(ap11, abs=1e-9), (name, diff)


# ---------------------------------------------------------------------------------------------
# files, errors, table
# ---------------------------------------------------------------------------------------------
def _write_dirs(tmp_path, gt, dets, *, skip_det=()):
    gt_dir, det_dir = tmp_path / "gt", tmp_path / "det"
    gt_dir.mkdir()
    det_dir.mkdir()
    for image_id, objs in gt.items():
        write_label_file(gt_dir / f"{image_id}.txt", objs)
    for image_id, objs in dets.items():
        if image_id not in skip_det:
            write_label_file(det_dir / f"{image_id}.txt", objs)
    return gt_dir, det_dir


def test_dirs_split_and_missing_detection_files(tmp_path):
    gt, dets = base_case()
    gt_dir, det_dir = _write_dirs(tmp_path, gt, dets, skip_det={"000040"})
    # A missing detection file is an image without detections: the missed-box case.
    assert _car(evaluate_dirs(gt_dir, det_dir)) == {d: MISS for d in ("easy", "moderate", "hard")}
    split = tmp_path / "split.txt"
    write_split_file(split, [f"{i:06d}" for i in range(40)])
    # Only the 40 images of the split, all found: the devkit's N = 40 figure.
    assert _car(evaluate_dirs(gt_dir, det_dir, split)) == {d: MISS for d in ("easy", "moderate", "hard")}


def test_command_helper_writes_json_and_table(tmp_path):
    gt_dir, det_dir = _write_dirs(tmp_path, *base_case())
    out = tmp_path / "ap.json"
    results, table = kitti_eval_command(gt_dir, det_dir, json_out=out)
    payload = json.loads(out.read_text())
    # The shape: {"Car": {"easy": {"ap40": ..., "ap11": ...}, ...}, ...}.
    assert payload == results and set(payload["Car"]) == {"easy", "moderate", "hard"}
    assert set(payload["Car"]["easy"]) == {"ap40", "ap11"}
    assert results["Car"]["easy"]["ap40"] == 100.0
    assert "Car" in table and "100.00" in table and "moderate" in table
    assert format_table(results).splitlines()[0].startswith("KITTI 2D detection AP")


def test_errors_name_the_culprit(tmp_path):
    gt, dets = base_case(3)
    gt_dir, det_dir = _write_dirs(tmp_path, gt, dets)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kitti_eval_command(tmp_path / "nowhere", det_dir)
    with pytest.raises(FileNotFoundError, match="split"):
        kitti_eval_command(gt_dir, det_dir, split=tmp_path / "no_split.txt")
    # A detection line without its score, on line 2.
    (det_dir / "000001.txt").write_text(
        "Car -1 -1 -10 1.00 2.00 50.00 60.00 -1 -1 -1 -1000 -1000 -1000 -10 0.5\n"
        "Car -1 -1 -10 1.00 2.00 50.00 60.00 -1 -1 -1 -1000 -1000 -1000 -10\n"
    )
    with pytest.raises(KittiFormatError, match=r"000001\.txt:2: .*score"):
        kitti_eval_command(gt_dir, det_dir)
    (det_dir / "000001.txt").unlink()
    (gt_dir / "000002.txt").write_text("Car 0.00 0 -1.57 1 2 3\n")
    with pytest.raises(KittiFormatError, match=r"000002\.txt:1: expected 15 fields"):
        evaluate_dirs(gt_dir, tmp_path / "det")
    with pytest.raises(ValueError, match="without ground truth"):
        evaluate({"000000": []}, {"000001": []})
    with pytest.raises(ValueError, match="no score"):
        evaluate({"000000": []}, {"000000": [KittiObject.from_box("Car", (0, 0, 10, 50))]})


def test_speed_on_many_images():
    # Not a benchmark: a guard that the vectorised path stays far from per-threshold loops.
    rng = np.random.default_rng(5)
    gt, dets = {}, {}
    for i in range(1500):
        boxes = [(80.0 * k + rng.uniform(0, 10), rng.uniform(0, 100)) for k in range(4)]
        gt[f"{i:06d}"] = [_gt("Car", (x, y, x + 60, y + 45)) for x, y in boxes]
        dets[f"{i:06d}"] = [
            _det("Car", (x + rng.normal(), y, x + 60, y + 45), float(rng.uniform())) for x, y in boxes
        ]
    import time

    start = time.perf_counter()
    results = evaluate(gt, dets)
    assert time.perf_counter() - start < 10.0
    assert math.isclose(results["Car"]["easy"]["ap40"], 100.0)


def test_kitti_eval_command_line(tmp_path, capsys):
    from dataparams.cli import main

    gt_dir, det_dir = _write_dirs(tmp_path, *base_case())
    out = tmp_path / "ap.json"
    assert main(["kitti-eval", str(gt_dir), str(det_dir), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Car" in printed and json.loads(out.read_text())["Car"]["moderate"]["ap40"] == 100.0
    # A folder that does not exist: one error line naming it, exit 2.
    assert main(["kitti-eval", str(tmp_path / "nowhere"), str(det_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0]
