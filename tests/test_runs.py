"""RunDir: refusal rules, tolerant metrics reading, truncation on resume, atomic writes."""

import json

import numpy as np
import pytest
import torch

from dataparams.config import TrainConfig, apply_overrides, config_to_dict
from dataparams.runs import RunDir, RunDirError, RunExistsError


@pytest.fixture
def cfg():
    return config_to_dict(TrainConfig())


def test_new_directory_gets_config(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    assert run.prepare(cfg) is False
    assert json.loads(run.config_file.read_text()) == cfg


def test_same_run_needs_resume_or_overwrite(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    with pytest.raises(RunExistsError, match="already holds this run"):
        run.prepare(cfg)
    assert run.prepare(cfg, resume=True) is False  # no checkpoint yet
    run.save_checkpoint({"epoch": 1, "config": cfg})
    assert run.prepare(cfg, resume=True) is True


def test_different_run_is_refused_unless_overwrite(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.append_metrics({"epoch": 1})
    other = config_to_dict(apply_overrides(TrainConfig(), ["optim.lr=0.5"]))
    with pytest.raises(RunDirError, match="optim.lr"):
        run.prepare(other, resume=True)
    assert run.prepare(other, overwrite=True) is False
    assert json.loads(run.config_file.read_text()) == other
    assert not run.metrics_file.exists()


def test_execution_fields_do_not_make_a_different_run(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    moved = config_to_dict(apply_overrides(TrainConfig(), ["data.workers=4", "data.data_dir=/elsewhere"]))
    assert run.prepare(moved, resume=True) is False


def test_foreign_directory_is_never_deleted(tmp_path, cfg):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="no config.json"):
        RunDir(d).prepare(cfg)
    with pytest.raises(RunDirError, match="refusing to overwrite"):
        RunDir(d).prepare(cfg, overwrite=True)
    assert (d / "thesis.tex").read_text() == "precious"


def test_metrics_truncated_last_line_is_skipped_but_bad_middle_line_named(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.append_metrics({"epoch": 1, "x": 1.0})
    run.append_metrics({"epoch": 2, "x": 2.0})
    with open(run.metrics_file, "a") as f:
        f.write('{"epoch": 3, "x"')  # killed mid-write
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 3"):
        run.read_metrics(strict=True)
    lines = run.metrics_file.read_text().splitlines()
    run.metrics_file.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2"):
        run.read_metrics()


def test_truncate_after_drops_later_epochs(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    for e in (1, 2, 3):
        run.append_metrics({"epoch": e})
        run.save_snapshot(e, instance_sigma=np.full(4, float(e), dtype=np.float32))
    run.truncate_after(2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert run.snapshot_epochs() == [1, 2]
    np.testing.assert_array_equal(run.load_snapshot(2)["instance_sigma"], np.full(4, 2.0, dtype=np.float32))


def test_checkpoint_from_another_configuration_is_refused(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.save_checkpoint({"epoch": 1, "config": cfg, "w": torch.ones(2)})
    assert torch.equal(run.load_checkpoint(cfg)["w"], torch.ones(2))
    other = config_to_dict(apply_overrides(TrainConfig(), ["curriculum.lr_instance=0.9"]))
    with pytest.raises(RunDirError, match="curriculum.lr_instance"):
        run.load_checkpoint(other)
    assert not list(run.path.glob(".*.tmp"))


def test_unreadable_files_are_named(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    (run.path / "labels.npz").write_bytes(b"not a zip")
    with pytest.raises(RunDirError, match="labels.npz"):
        run.load_arrays("labels.npz")
    run.checkpoint_file.write_bytes(b"\x00\x01")
    with pytest.raises(RunDirError, match="checkpoint.pt"):
        run.load_checkpoint()
    with pytest.raises(RunDirError, match="summary.json is missing"):
        run.read_json("summary.json")
