"""find-issues on a detection run: per-box and per-image tables, summary, report, command line."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

import fakes
from dataparams.detection.issues import aggregate_image_scores, find_box_issues
from dataparams.detection.kitti import parse_label_line
from dataparams.detection.train import train_detection
from dataparams.runs import RunDir, RunDirError
from test_detection_train import _config  # the tiny kitti-synth/instance settings

BOX_COLUMNS = ["rank", "image_id", "line", "box_index", "object_index", "given_label", "x1", "y1", "x2", "y2",
               "score", "sigma", "sigma_mean", "mean_loss", "last_loss", "loss_epochs", "label_score",
               "is_label_issue", "flagged", "difficulty", "occluded", "true_label", "is_corrupted"]
EPOCHS = 4
IMAGE_COLUMNS = ["rank", "image_id", "image_index", "label_score", "is_label_issue", "n_boxes", "n_flagged",
                 "n_scored", "top_box_rank", "n_corrupted"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 80 images, 60 train (243 boxes), 20% of the train boxes given another class.
    return fakes.synthetic_kitti(tmp_path_factory, "synth_issues", num_images=80)


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = _config(data_root, epochs=EPOCHS)
    cfg.data.batch_size = 8
    cfg.eval_every = 100  # evaluated once, after the last epoch
    out = tmp_path_factory.mktemp("det_issues") / "run"
    train_detection(cfg, out, quiet=True)
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(text):
    return math.nan if text == "" else float(text)


def _bool(text):
    assert text in ("True", "False")
    return text == "True"


def test_box_issues_rank_every_box_and_point_at_its_label_line(run, data_root, tmp_path):
    report = find_box_issues(run)
    files = report.save(tmp_path / "issues")
    assert {"box_issues_csv", "image_issues_csv", "summary", "report_html"} <= set(files)
    with open(files["box_issues_csv"], newline="") as f:
        assert next(csv.reader(f)) == BOX_COLUMNS
    rows = _read_csv(files["box_issues_csv"])
    labels = RunDir(run).load_arrays("labels.npz")
    n = labels["labels"].shape[0]
    assert len(rows) == n == report.n
    # Sorted by rank; ranks and box indices are permutations.
    assert [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    assert sorted(int(r["box_index"]) for r in rows) == list(range(n))
    scored = [float(r["score"]) for r in rows if r["score"] != ""]
    assert scored == sorted(scored, reverse=True)
    assert all(r["score"] == "" for r in rows[len(scored):])  # unscored boxes come last
    truth = json.loads((data_root / "training" / "truth.json").read_text())
    classes = labels["classes"].tolist()
    for r in rows:
        # The key (image id, 1-based line) is a real line of the label file holding this box.
        lines = (data_root / "training" / "label_2" / f"{r['image_id']}.txt").read_text().splitlines()
        obj = parse_label_line(lines[int(r["line"]) - 1])
        assert obj.type == r["given_label"]
        assert np.allclose(obj.bbox, [float(r[k]) for k in ("x1", "y1", "x2", "y2")], atol=0.006)
        b = int(r["box_index"])
        assert classes[labels["labels"][b] - 1] == r["given_label"]
        assert labels["image_ids"][labels["image_index"][b]] == r["image_id"]
        assert int(r["object_index"]) == labels["line_index"][b]
        # The injected truth: is_corrupted <=> truth.json's class of that line differs.
        true_type = truth["images"][r["image_id"]]["true_types"][int(r["object_index"])]
        assert _bool(r["is_corrupted"]) == (true_type != r["given_label"])
        assert r["true_label"] == true_type
        assert _bool(r["flagged"]) == _bool(r["is_label_issue"])
        ls = _float(r["label_score"])
        assert math.isnan(ls) or 0.0 <= ls <= 1.0
        if r["mean_loss"] != "":
            assert ls == pytest.approx(math.exp(-float(r["mean_loss"])), rel=1e-4)
        assert 0 <= int(r["loss_epochs"]) <= EPOCHS
    assert sum(_bool(r["is_corrupted"]) for r in rows) == int(labels["is_flipped"].sum()) > 0
    # The mean loss and the means of sigma are those of the snapshots.
    snaps = [RunDir(run).load_snapshot(e) for e in range(1, EPOCHS + 1)]
    loss = np.stack([s["box_loss"] for s in snaps]).astype(np.float64)
    with warnings.catch_warnings():  # the mean of a box never matched is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.allclose(report.mean_loss, np.nanmean(loss, axis=0), equal_nan=True)
    assert np.allclose(report.sigma, snaps[-1]["box_sigma"])
    assert np.allclose(report.sigma_mean, np.exp(np.mean(np.log([s["box_sigma"] for s in snaps]), axis=0)))
    # The class-mean rule on the label quality, per class, on the boxes with a loss.
    s = report.summary()
    assert s["rule"] == "class-mean" and s["score"] == "mean-loss"
    for c in range(len(classes)):
        sel = (report.labels == c) & np.isfinite(report.label_score)
        expected = report.label_score[sel] < report.label_score[sel].mean()
        assert np.array_equal(report.is_flagged[sel], expected)
    assert not report.is_flagged[~np.isfinite(report.label_score)].any()


def test_image_issues_agree_with_the_boxes_by_hand(run, tmp_path):
    report = find_box_issues(run)
    files = report.save(tmp_path / "issues")
    with open(files["image_issues_csv"], newline="") as f:
        assert next(csv.reader(f)) == IMAGE_COLUMNS
    boxes, images = _read_csv(files["box_issues_csv"]), _read_csv(files["image_issues_csv"])
    ids = RunDir(run).load_arrays("labels.npz")["image_ids"].tolist()
    assert sorted(r["image_id"] for r in images) == sorted(ids)  # every training image, once
    assert [int(r["rank"]) for r in images] == list(range(1, len(ids) + 1))
    by_image: dict[str, list[dict]] = {}
    for r in boxes:
        by_image.setdefault(r["image_id"], []).append(r)
    for r in images:
        mine = by_image.get(r["image_id"], [])
        known = [_float(b["label_score"]) for b in mine if b["label_score"] != ""]
        assert float(r["label_score"]) == pytest.approx(min(known) if known else 1.0, rel=1e-5)
        assert _bool(r["is_label_issue"]) == any(_bool(b["flagged"]) for b in mine)
        assert int(r["n_boxes"]) == len(mine)
        assert int(r["n_flagged"]) == sum(_bool(b["flagged"]) for b in mine)
        assert int(r["n_corrupted"]) == sum(_bool(b["is_corrupted"]) for b in mine)
        assert r["top_box_rank"] == (str(min(int(b["rank"]) for b in mine)) if mine else "")
    scores = [float(r["label_score"]) for r in images]
    assert scores == sorted(scores)  # most suspect image (lowest score) first
    # The cleanlab-shaped arrays, in the order of labels.npz's image_ids.
    mask = np.load(files["label_issues_mask"])
    quality = np.load(files["label_quality_scores"])
    row = {r["image_id"]: r for r in images}
    assert mask.dtype == bool and mask.shape == quality.shape == (len(ids),)
    assert [bool(m) for m in mask] == [_bool(row[i]["is_label_issue"]) for i in ids]
    assert np.allclose(quality, [float(row[i]["label_score"]) for i in ids], rtol=1e-5)
    assert np.all((quality >= 0) & (quality <= 1))


def test_aggregate_image_scores_by_hand():
    # Image 0: boxes 0.9 (flagged) and 0.2 -> min 0.2, an issue although its worst box is not
    # flagged; image 1: one unscored box -> 1.0; image 2: no box; image 3: 0.5, not flagged.
    out = aggregate_image_scores([0, 0, 1, 3], [0.9, 0.2, np.nan, 0.5], [True, False, False, False], 4)
    assert out["label_score"].tolist() == [0.2, 1.0, 1.0, 0.5]
    assert out["is_label_issue"].tolist() == [True, False, False, False]
    assert out["n_boxes"].tolist() == [2, 1, 0, 1]
    assert out["n_flagged"].tolist() == [1, 0, 0, 0]
    assert out["n_scored"].tolist() == [2, 0, 0, 1]
    with pytest.raises(ValueError, match="one entry per box"):
        aggregate_image_scores([0], [0.1, 0.2], [False, False], 1)
    with pytest.raises(ValueError, match="lie in"):
        aggregate_image_scores([2], [0.1], [False], 2)


def test_summary_report_and_other_scores(run, tmp_path):
    report = find_box_issues(run)
    files = report.save(tmp_path / "issues")
    s = json.loads(files["summary"].read_text())
    assert s["kind"] == "detection" and s["n_boxes"] == report.n and s["epochs"] == EPOCHS
    assert s["n_flagged"] == sum(c["n_flagged"] for c in s["per_class"]) == int(report.is_flagged.sum())
    assert sum(c["n"] for c in s["per_class"]) == report.n
    assert [c["class"] for c in s["per_class"]] == ["Car", "Pedestrian", "Cyclist"]
    assert s["n_images_flagged"] == int(report.images()["is_label_issue"].sum())
    for key in ("auroc", "auroc_sigma", "auroc_mean_loss", "image_auroc", "precision", "recall"):
        assert 0.0 <= s[key] <= 1.0
    assert s["auroc"] == s["auroc_mean_loss"]
    page = files["report_html"].read_text()
    assert page.count("data:image/png;base64,") == min(24, report.n)
    assert "box_issues.csv" in page and "Per class" in page
    # Sigma ranks by the mixture; one epoch's snapshot only; rules that need what a detection run lacks.
    sig = find_box_issues(run, score="sigma")
    assert sig.summary()["rule"] == "mixture"
    assert np.all(np.diff(sig.sigma[sig.order]) <= 0)  # sigma is known for every box
    first = find_box_issues(run, epoch=1)
    assert first.epochs == [1]
    assert np.allclose(first.mean_loss, RunDir(run).load_snapshot(1)["box_loss"], equal_nan=True)
    with pytest.raises(ValueError, match="rule"):
        find_box_issues(run, rule="bound")
    with pytest.raises(RunDirError, match="epoch_0009"):
        find_box_issues(run, epoch=9)


def test_blank_lines_moved_data_and_a_baseline_config(run, data_root, tmp_path):
    # A copy of the run whose data root holds the label files with blank lines inserted (no
    # images): the lines still point at the boxes, and the report lists them without pictures.
    labels_src = data_root / "training" / "label_2"
    moved = tmp_path / "data"
    (moved / "training" / "label_2").mkdir(parents=True)
    for f in labels_src.glob("*.txt"):
        text = f.read_text().splitlines()
        (moved / "training" / "label_2" / f.name).write_text("\n" + "\n\n".join(text) + "\n")
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint*", "detections_*"))
    config = json.loads((copy / "config.json").read_text())
    config["data"]["root"] = str(moved)
    (copy / "config.json").write_text(json.dumps(config))
    report = find_box_issues(copy)
    assert report.image_dir is None and not any("no longer match" in n or "missing" in n for n in report.notes)
    for b in range(report.n):
        lines = (moved / "training" / "label_2" / f"{report.image_ids[report.image_index[b]]}.txt").read_text()
        obj = parse_label_line(lines.splitlines()[report.line[b] - 1])
        assert obj.type == report.classes[report.labels[b]] and report.line[b] == 2 * report.object_index[b] + 2
    page = report.save(tmp_path / "issues")["report_html"].read_text()
    assert "data:image/png" not in page and "images not found" in page
    # Without the data at all: lines fall back to the object position, with a note.
    config["data"]["root"] = str(tmp_path / "gone")
    (copy / "config.json").write_text(json.dumps(config))
    gone = find_box_issues(copy)
    assert np.array_equal(gone.line, gone.object_index + 1) and any("not found" in n for n in gone.notes)
    assert gone.is_flipped is not None  # the truth is in labels.npz
    # A run without box data parameters has no sigma to rank by, but the loss works.
    config["curriculum"]["instance_curriculum"] = False
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="loss score"):
        find_box_issues(copy, score="sigma")
    assert find_box_issues(copy).n == report.n


def test_cli_find_issues_on_a_detection_run(run, tmp_path, capsys):
    from dataparams.analysis.find_issues import find_issues
    from dataparams.cli import main

    out = tmp_path / "issues"
    assert main(["find-issues", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detection run" in printed and "mean-loss" in printed and "truth:" in printed
    assert {"box_issues.csv", "image_issues.csv", "summary.json", "report.html", "label_issues_mask.npy",
            "label_quality_scores.npy"} <= {p.name for p in out.iterdir()}
    assert main(["find-issues", str(run), "--score", "sigma-mean", "--rule", "class-mean"]) == 0
    assert json.loads((run / "issues" / "summary.json").read_text())["rule"] == "class-mean"
    capsys.readouterr()
    assert main(["find-issues", str(run), "--cleaned-labels", "drop"]) == 2
    assert "classification runs" in capsys.readouterr().err
    assert main(["find-issues", str(run), "--rule", "confident"]) == 2
    assert "detection run" in capsys.readouterr().err
    # The classification entry point points at the detection one.
    with pytest.raises(RunDirError, match="find_box_issues"):
        find_issues(run)
