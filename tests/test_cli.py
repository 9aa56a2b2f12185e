"""The command line end to end on tiny IDX data: seeds summary, demo, calibration, TensorBoard."""

import json

import pytest

import fakes
from dataparams.cli import main

TINY = ["--set", "data.subset=96", "--set", "data.batch_size=32", "--set", "data.eval_batch_size=64",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fakes.write_idx(tmp_path_factory.mktemp("idx"), 96, 48)


def test_seeds_write_a_mean_std_summary(data, tmp_path, capsys):
    out = tmp_path / "seeds"
    code = main(["train", "--preset", "fmnist-noisy40/instance", "--data-dir", str(data), "--epochs", "2",
                 "--seeds", "1", "2", "--out", str(out), "--no-tensorboard", *TINY])
    assert code == 0
    summary = json.loads((out / "seeds_summary.json").read_text())
    accs = [r["final_test_acc"] for r in summary["runs"]]
    mean, std = summary["mean_std"]["final_test_acc"]
    assert mean == pytest.approx(sum(accs) / 2) and std == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert (out / "seed1" / "config.json").exists() and (out / "seed2" / "config.json").exists()
    assert json.loads((out / "seed2" / "config.json").read_text())["seed"] == 2
    md = (out / "seeds_summary.md").read_text()
    assert "± " in md
    # No validation split in this run: the val-selected row is left out, not printed as n/a.
    assert "val_selected_test_acc" not in md and "n/a" not in md


def test_demo_prints_the_table_and_writes_both_runs(data, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--device", "cpu",
                 "--quiet", "--no-tensorboard"]) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| instance |" in printed and "sigma AUROC" in printed
    assert "sigma-mean AUROC" in printed and "mean-loss AUROC" in printed
    for v in ("baseline", "instance"):
        assert (out / v / "summary.json").exists()
    # a second demo resumes the finished runs instead of refusing or retraining
    assert main(["demo", "--data-dir", str(data), "--epochs", "1", "--out", str(out), "--device", "cpu",
                 "--quiet", "--no-tensorboard"]) == 0


def test_calibration_and_tensorboard(data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "cal"
    assert main(["train", "--preset", "fmnist-noisy40/joint", "--data-dir", str(data), "--epochs", "1",
                 "--set", "data.val_fraction=0.25", "--set", "calibrate=true", "--out", str(out), *TINY]) == 0
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["temperature"] > 0 and 0 <= cal["test_ece_after"] <= 1 and 0 <= cal["test_ece_before"] <= 1
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_print_config_and_presets(capsys):
    assert main(["train", "--preset", "cifar100-noisy40/joint", "--set", "optim.epochs=3", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["epochs"] == 3 and cfg["curriculum"]["init_instance"] == 0.001
    assert main(["presets"]) == 0
    assert "cifar100-noisy40" in capsys.readouterr().out


def test_calibration_without_validation_split_is_refused(data, tmp_path, capsys):
    out = tmp_path / "nocal"
    assert main(["train", "--preset", "fmnist-noisy40/instance", "--data-dir", str(data), "--set", "calibrate=true",
                 "--out", str(out), *TINY]) == 2
    assert "val_fraction" in capsys.readouterr().err and not out.exists()


def test_find_issues_cleaned_labels_retrain(data, tmp_path, capsys):
    """find-issues -> cleaned label list -> a new run trains on exactly those labels."""
    run = tmp_path / "noisy"
    assert main(["train", "--preset", "fmnist-noisy40/instance", "--data-dir", str(data), "--epochs", "2",
                 "--out", str(run), "--no-tensorboard", *TINY]) == 0
    assert main(["find-issues", str(run), "--out", str(tmp_path / "issues"), "--cleaned-labels", "drop"]) == 0
    cleaned = tmp_path / "issues" / "cleaned_labels_drop.csv"
    import csv

    rows = list(csv.DictReader(open(cleaned)))
    retrain = tmp_path / "retrain"
    assert main(["train", "--preset", "fmnist-noisy40/baseline", "--data-dir", str(data), "--epochs", "1",
                 "--set", f"data.labels_file={cleaned}", "--out", str(retrain), "--no-tensorboard", *TINY]) == 0
    import numpy as np

    labels = np.load(retrain / "labels.npz")
    assert sorted(labels["source_index"].tolist()) == sorted(int(r["source_index"]) for r in rows)
    given = dict(zip(labels["source_index"].tolist(), labels["given"].tolist()))
    assert all(given[int(r["source_index"])] == int(r["label"]) for r in rows)


def test_detection_presets_refuse_torchrun(tmp_path, capsys, monkeypatch):
    # torchrun sets WORLD_SIZE; the detection trainer has no data-parallel path.
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "det"
    assert main(["train", "--preset", "kitti-synth/instance", "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    assert "torchrun" in capsys.readouterr().err and not out.exists()


def test_find_issues_refuses_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "issues"
    assert main(["find-issues", "--data", str(tmp_path / "labels.csv"), "--out", str(out), "--quiet"]) == 2
    assert "torchrun" in capsys.readouterr().err and not out.exists()
