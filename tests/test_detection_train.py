"""The detection trainer: a complete run directory, exact resume, the baseline, presets, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fakes
from dataparams.config import ConfigError, apply_overrides
from dataparams.detection.config import (
    DetectionConfig,
    detection_config_from_dict,
    detection_config_to_dict,
    validate_detection_config,
)
from dataparams.detection.kitti import DEFAULT_CLASSES, DIFFICULTIES, read_label_file
from dataparams.detection.presets import get_detection_preset, list_detection_presets
from dataparams.detection.train import train_detection
from dataparams.runs import RunDir, RunExistsError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth", num_images=24)


def _config(root, *, instance: bool = True, epochs: int = 2) -> DetectionConfig:
    cfg = get_detection_preset("kitti-synth/instance" if instance else "kitti-synth/baseline", root=root)
    cfg.seed = 4
    cfg.model.width = 16
    cfg.data.batch_size = 6
    cfg.data.eval_batch_size = 6
    cfg.optim.epochs = epochs
    cfg.eval_every = 1
    return cfg


class _Killed(Exception):
    pass


def _train_until_first_checkpoint(cfg, out, monkeypatch):
    """Train ``cfg`` into ``out`` and die right after its first checkpoint is written."""
    original = RunDir.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        raise _Killed

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train_detection(cfg, out, quiet=True)
    monkeypatch.undo()


def _without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


def test_two_epochs_write_a_run_directory_and_resume_is_exact(data_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = _config(data_root)
    full = tmp_path / "full"
    summary = train_detection(cfg, full, quiet=True)

    run = RunDir(full)
    assert json.loads(run.config_file.read_text()) == detection_config_to_dict(cfg)
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r["kitti"]) == set(DEFAULT_CLASSES)
        for c in DEFAULT_CLASSES:
            for d in DIFFICULTIES:
                assert set(r["kitti"][c][d]) == {"ap40", "ap11"}
        for key in ("train_loss", "loss_classification", "loss_box", "negative_sigma", "box_sigma",
                    "sigma_by_difficulty", "sigma_by_occlusion", "spearman_occlusion", "spearman_difficulty",
                    "map40_moderate", "map11_hard"):
            assert key in r
        assert r["flipped"]["num_flipped"] > 0 and 0.0 <= r["flipped"]["auroc_sigma"] <= 1.0
    table = run.load_arrays("labels.npz")
    n = table["labels"].shape[0]
    assert run.snapshot_epochs() == [1, 2]
    snap = run.load_snapshot(2)
    assert snap["box_sigma"].shape == (n,) and snap["box_loss"].shape == (n,)
    assert not np.all(snap["box_sigma"] == 1.0)  # the curriculum moved
    # KITTI detection files of the last evaluation: one per val image, score as the 16th column.
    folders = sorted(run.snapshot_dir.glob("detections_epoch_*"))
    assert [f.name for f in folders] == ["detections_epoch_0002"]
    val_ids = (data_root / "ImageSets" / "val.txt").read_text().split()
    assert sorted(p.stem for p in folders[0].glob("*.txt")) == sorted(val_ids)
    objects = [o for i in val_ids for o in read_label_file(folders[0] / f"{i}.txt", require_score=True)]
    assert objects and all(o.type in DEFAULT_CLASSES for o in objects)
    state = run.load_checkpoint()
    assert {"model", "optimizer", "scheduler", "data_parameters", "dp_optimizer", "box_loss", "rng", "epoch",
            "config"} <= set(state)
    assert summary == run.read_json("summary.json") and summary["eval_epoch"] == 2
    with pytest.raises(RunExistsError):
        train_detection(cfg, full, quiet=True)

    # Killed right after the first checkpoint, then resumed: bit for bit the uninterrupted run.
    killed = tmp_path / "killed"
    _train_until_first_checkpoint(cfg, killed, monkeypatch)
    assert [r["epoch"] for r in RunDir(killed).read_metrics()] == [1]
    train_detection(cfg, killed, resume=True, quiet=True)

    a, b = run.load_checkpoint(), RunDir(killed).load_checkpoint()
    for key in ("model", "data_parameters"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    assert torch.equal(a["box_loss"].nan_to_num(-1), b["box_loss"].nan_to_num(-1))
    for opt in ("optimizer", "dp_optimizer"):
        for k, s in a[opt]["state"].items():
            for name, t in s.items():
                assert torch.equal(t, b[opt]["state"][k][name]), (opt, name)
    assert a["scheduler"] == b["scheduler"]
    assert _without_times(run.read_metrics()) == _without_times(RunDir(killed).read_metrics())
    for epoch in (1, 2):
        sa, sb = run.load_snapshot(epoch), RunDir(killed).load_snapshot(epoch)
        assert np.array_equal(sa["box_sigma"], sb["box_sigma"])
    for f in folders[0].glob("*.txt"):
        assert f.read_text() == (killed / "snapshots" / "detections_epoch_0002" / f.name).read_text()


def test_ssd_augmentation_resumes_exactly(data_root, tmp_path, monkeypatch):
    # SSD's augmentation drops boxes from steps and draws far more random numbers than a flip;
    # each image's draws still come from (seed, epoch, image), so a killed run resumes bit for bit.
    torch.set_num_threads(1)
    cfg = _config(data_root)
    cfg.data.augment = "ssd"
    cfg.model.width = 8
    cfg.eval_every = 2
    full, killed = tmp_path / "full", tmp_path / "killed"
    train_detection(cfg, full, quiet=True)
    _train_until_first_checkpoint(cfg, killed, monkeypatch)
    train_detection(cfg, killed, resume=True, quiet=True)
    a, b = RunDir(full).load_checkpoint(), RunDir(killed).load_checkpoint()
    assert a["config"]["data"]["augment"] == "ssd"
    for key in ("model", "data_parameters"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    assert torch.equal(a["box_loss"].nan_to_num(-1), b["box_loss"].nan_to_num(-1))
    assert _without_times(RunDir(full).read_metrics()) == _without_times(RunDir(killed).read_metrics())
    for epoch in (1, 2):
        sa, sb = RunDir(full).load_snapshot(epoch), RunDir(killed).load_snapshot(epoch)
        assert np.array_equal(sa["box_sigma"], sb["box_sigma"])
        assert np.array_equal(sa["box_loss"], sb["box_loss"], equal_nan=True)


def test_baseline_runs_the_same_code_with_sigma_one(data_root, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "baseline"
    summary = train_detection(_config(data_root, instance=False, epochs=1), out, quiet=True)
    run = RunDir(out)
    assert np.all(run.load_snapshot(1)["box_sigma"] == 1.0)
    record = run.read_metrics()[0]
    assert record["negative_sigma"] == 1.0
    assert record["spearman_difficulty"] is None  # sigma is constant
    assert record["flipped"]["auroc_sigma"] == 0.5 and record["flipped"]["auroc_loss"] is not None
    assert run.load_checkpoint()["dp_optimizer"] is None
    assert summary["curriculum"] == "off"


def test_report_writes_figures_and_summary(data_root, tmp_path):
    pytest.importorskip("matplotlib")
    from dataparams.detection.figures import is_detection_run, object_detection_report

    torch.set_num_threads(1)
    runs = []
    for instance in (False, True):
        out = tmp_path / ("instance" if instance else "baseline")
        train_detection(_config(data_root, instance=instance, epochs=1), out, quiet=True)
        runs.append(out)
    report = object_detection_report(runs, tmp_path / "report")
    assert {"kitti_synth_instance_sigma_levels", "kitti_synth_instance_boxes", "rank_correlation",
            "flipped_auroc", "ap_over_epochs"} <= set(report["figures"])
    for path in report["figures"].values():
        assert (tmp_path / "report" / path.split("/")[-1]).stat().st_size > 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "kitti-synth/baseline" in page and "kitti-synth/instance" in page and "AUROC" in page
    assert "<table>" in page and page.count("data:image/png;base64,") == len(report["figures"])
    assert sorted(p.name for p in (tmp_path / "report").iterdir() if p.suffix != ".png") == ["report.html"]
    assert [g["label"] for g in report["groups"]] == ["kitti-synth/baseline", "kitti-synth/instance"]
    assert all(is_detection_run(r) for r in runs) and not is_detection_run(tmp_path / "report")


def test_presets_and_overrides(tmp_path):
    assert list_detection_presets() == ["kitti/baseline", "kitti/instance", "kitti-synth/baseline",
                                        "kitti-synth/instance", "coco-synth/baseline", "coco-synth/instance"]
    for name in list_detection_presets():
        cfg = get_detection_preset(name, root=tmp_path)
        validate_detection_config(cfg)
        assert cfg.notes and cfg.preset == name
        assert cfg.curriculum.instance_curriculum == name.endswith("instance")
        assert detection_config_from_dict(detection_config_to_dict(cfg)) == cfg
    kitti = get_detection_preset("kitti/instance")
    assert kitti.model.arch == "ssd300_vgg16"
    assert (kitti.curriculum.lr_instance, kitti.curriculum.momentum, kitti.curriculum.wd_instance) == (0.1, 0.0, 0.0)
    cfg = apply_overrides(kitti, ["optim.lr=0.01", "model.image_size=300,300",
                                  "curriculum.clamp=none", "data.root=/data/kitti"])
    assert (cfg.optim.lr, cfg.model.image_size, cfg.curriculum.clamp, cfg.data.root) == (
        0.01, [300, 300], None, "/data/kitti")
    with pytest.raises(ConfigError, match="valid"):
        apply_overrides(kitti, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="unknown detection preset"):
        get_detection_preset("kitti/joint")
    with pytest.raises(ConfigError, match="data.root"):
        validate_detection_config(get_detection_preset("kitti/baseline"))


def test_command_line_trains_reports_and_evaluates_a_detection_preset(data_root, tmp_path, capsys):
    # `dataparams train --preset kitti-synth/instance`, then `dataparams report` (Figure 3) and
    # `dataparams kitti-eval` on the detections the run wrote.
    from dataparams.cli import main

    out = tmp_path / "run"
    argv = ["train", "--preset", "kitti-synth/instance", "--data-dir", str(data_root), "--epochs", "1",
            "--set", "model.width=16", "--set", "data.batch_size=6", "--set", "eval_every=1", "--out", str(out),
            "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["kitti"]) == set(DEFAULT_CLASSES)
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (tmp_path / "report" / "report.html").exists()
    dets = sorted((out / "snapshots").glob("detections_epoch_*"))[-1]
    assert main(["kitti-eval", str(data_root / "training" / "label_2"), str(dets), "--split",
                 str(data_root / "ImageSets" / "val.txt")]) == 0
    assert "Car" in capsys.readouterr().out
    assert main(["train", "--preset", "kitti-synth/instance", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["root"].endswith("kitti-synth")


def test_a_run_from_before_ignore_regions_resumes_only_as_it_trained(data_root, tmp_path, monkeypatch):
    """A run directory whose config.json predates ``model.ignore_overlap`` trained without ignore
    regions: resuming it under today's default (0.5) would change its loss mid-run, so that is
    refused, and it resumes with ``ignore_overlap=None``."""
    from dataparams.runs import RunConflictError

    torch.set_num_threads(1)
    cfg = _config(data_root)
    old_cfg = _config(data_root)
    old_cfg.model.ignore_overlap = None
    out = tmp_path / "old"
    _train_until_first_checkpoint(old_cfg, out, monkeypatch)
    config_file = RunDir(out).config_file
    written = json.loads(config_file.read_text())
    del written["model"]["ignore_overlap"]  # as a run directory of the previous version has it
    config_file.write_text(json.dumps(written))
    with pytest.raises(RunConflictError, match="ignore_overlap"):
        train_detection(cfg, out, resume=True, quiet=True)
    train_detection(old_cfg, out, resume=True, quiet=True)
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]


def test_a_synthetic_preset_never_writes_into_a_data_folder_with_files(tmp_path, capsys, monkeypatch):
    # The user's own KITTI-layout folder given to kitti-synth is trained on as it is: the synthetic
    # set used to be written into it (among, or over, the user's images). Training itself is
    # replaced: what is checked is everything the command does before it.
    import dataparams.detection.presets as det_presets
    from dataparams.cli import main

    trained = []
    monkeypatch.setattr(det_presets, "train_detection", lambda cfg, out, **kw: trained.append(cfg.data.root) or {})
    # A folder the generator would have filled: the user's image where a synthetic one goes, no
    # label files yet (what the old check looked for).
    root = tmp_path / "mine"
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "image_2" / "000000.png").write_bytes(b"the user's own image")
    before = sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*") if p.is_file())
    argv = ["train", "--preset", "kitti-synth/instance", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*argv, "--data-dir", str(root)]) == 0
    assert sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*") if p.is_file()) == before
    assert "writing the synthetic" not in capsys.readouterr().err
    # A new folder is where the synthetic set may be written, and the command says so.
    fresh = tmp_path / "fresh"
    assert main([*argv, "--data-dir", str(fresh), "--overwrite"]) == 0
    assert "writing the synthetic kitti-synth set" in capsys.readouterr().err
    assert (fresh / "training" / "label_2").is_dir() and trained == [str(root), str(fresh)]
    # Folders without a file (a first write interrupted before its images) are written again.
    left = tmp_path / "left"
    (left / "training" / "image_2").mkdir(parents=True)
    assert main([*argv, "--data-dir", str(left), "--overwrite"]) == 0
    assert any((left / "training" / "label_2").glob("*.txt"))


def test_make_split_serves_the_users_kitti_folder_under_a_synthetic_preset(tmp_path, monkeypatch, capsys):
    # The missing-split error sends the user to --make-split; with their own folder given to the
    # CPU-sized kitti-synth preset it used to be refused ("this preset's data has its own").
    import dataparams.detection.presets as det_presets
    from dataparams.cli import main

    monkeypatch.setattr(det_presets, "train_detection", lambda cfg, out, **kw: {})
    root = tmp_path / "mine"
    (root / "training" / "label_2").mkdir(parents=True)
    for i in range(10):
        (root / "training" / "label_2" / f"{i:06d}.txt").write_text("Car 0.00 0 -10 10 10 40 40 -1 -1 -1 -1000 -1000 -1000 -10\n")
    assert main(["train", "--preset", "kitti-synth/instance", "--data-dir", str(root), "--make-split", "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    train_ids = (root / "ImageSets" / "train.txt").read_text().split()
    val_ids = (root / "ImageSets" / "val.txt").read_text().split()
    assert sorted(train_ids + val_ids) == [f"{i:06d}" for i in range(10)] and train_ids and val_ids


def test_a_kitti_box_of_no_width_is_named_with_its_file_before_training(tmp_path):
    from dataparams.detection.kitti import KittiDetection, KittiFormatError

    root = tmp_path / "k"
    (root / "training" / "label_2").mkdir(parents=True)
    (root / "training" / "image_2").mkdir()
    (root / "training" / "label_2" / "000001.txt").write_text(
        "Car 0.00 0 -10 10 10 40 40 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "DontCare -1 -1 -10 5 5 5 5 -1 -1 -1 -1000 -1000 -1000 -10\n"  # not trained: not checked
        "Car 0.00 0 -10 10.00 10.00 10.00 40.00 -1 -1 -1 -1000 -1000 -1000 -10\n")
    with pytest.raises(KittiFormatError, match=r"000001.txt: object 3 \(Car\) has the box x1 y1 x2 y2 = 10 10 10 40, "
                                               r"of zero or negative width or height"):
        KittiDetection(root)
