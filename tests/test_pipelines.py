"""The filter pipelines (dp-filter, dp-gce-filter) as a library and as `dataparams train --method`:
flags checked against a hand computation from the first stage's snapshots, the retraining against
the complement of the flags, resume across the stages, and the command line on a preset and on a
user's CSV of PNGs."""

import csv
import dataclasses
import json

import numpy as np
import pytest

import fakes
from dataparams.cli import main
from dataparams.config import ConfigError
from dataparams.methods.pipelines import FilterPipeline, run_filter_pipeline
from dataparams.methods.registry import METHODS
from dataparams.runs import RunConflictError, RunDir, RunExistsError

TINY = ["data.subset=64", "data.val_fraction=0.25", "data.batch_size=16", "data.eval_batch_size=64"]
# Long enough for dp-gce's training to fit some samples (their mean loss falls below the bound).
FIT = ["optim.epochs=12", "optim.lr=0.2"]


def _configs(data, pipeline, extra=()):
    return pipeline.configs("fmnist-noisy40", [f"data.data_dir={data}", *TINY, *FIT, *extra], method="dp-gce-filter")


def _run(pipeline, cfgs, out, **kw):
    return run_filter_pipeline(pipeline, *cfgs, out, method="dp-gce-filter", device="cpu", quiet=True,
                               tensorboard=False, **kw)


def _stamp(run_dir):
    """What a retraining of a run would change: its checkpoint's mtime and its epoch count."""
    return (run_dir / "checkpoint.pt").stat().st_mtime_ns, len((run_dir / "metrics.jsonl").read_text().splitlines())


def test_gce_bound_flags_the_hand_computed_samples_and_retrains_on_the_rest_then_resumes(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    pipeline = METHODS["dp-gce-filter"].pipeline
    cfgs = _configs(data, pipeline)
    out = tmp_path / "pipe"
    rec = _run(pipeline, cfgs, out)
    stage1, stage2 = out / "stage1", out / "stage2"
    assert rec["status"] == "finished" and rec["trainings"] == 2
    assert rec["stages"]["stage1"]["run_dir"] == str(stage1) and rec["stages"]["stage2"]["run_dir"] == str(stage2)

    # The flags, by hand: the mean over the snapshots of the per-sample loss is at least 0.2 / q.
    config1 = json.loads((stage1 / "config.json").read_text())
    assert config1["curriculum"]["loss"] == "gce" and config1["curriculum"]["instance_curriculum"]
    run = RunDir(stage1)
    mean_loss = np.mean([run.load_snapshot(e)["loss"].astype(np.float64) for e in run.snapshot_epochs()], axis=0)
    flagged = mean_loss >= 0.2 / config1["curriculum"]["loss_q"]
    source = run.load_arrays("labels.npz")["source_index"]
    assert 0 < flagged.sum() < len(flagged)
    assert rec["n"] == len(flagged) and rec["n_flagged"] == int(flagged.sum()) and rec["n_kept"] == int((~flagged).sum())

    # Stage 2 trained on exactly the kept samples; the flagged ones were held out of it.
    kept = np.load(rec["kept_file"])
    np.testing.assert_array_equal(np.sort(kept), np.sort(source[~flagged]))
    config2 = json.loads((stage2 / "config.json").read_text())
    assert config2["data"]["keep_file"] == rec["kept_file"] and config2["curriculum"]["loss"] == "ce"
    np.testing.assert_array_equal(np.sort(RunDir(stage2).load_arrays("labels.npz")["source_index"]), np.sort(kept))
    np.testing.assert_array_equal(np.sort(RunDir(stage2).load_arrays("heldout_predictions.npz")["source_index"]),
                                  np.sort(source[flagged]))
    assert rec["summary"] == json.loads((stage2 / "summary.json").read_text())
    assert json.loads((out / "pipeline.json").read_text()) == json.loads(json.dumps(rec))
    assert rec["detection"] is not None and 0 <= rec["detection"]["auroc"] <= 1

    # Interrupted in stage 2 (its run removed): resuming retrains stage 2 only, to the same result.
    first = _stamp(stage1)
    import shutil

    shutil.rmtree(stage2)
    again = _run(pipeline, cfgs, out, resume=True)
    assert _stamp(stage1) == first
    assert again["summary"]["final_test_acc"] == rec["summary"]["final_test_acc"]
    assert again["n_flagged"] == rec["n_flagged"] and again["kept_file"] == rec["kept_file"]
    # Killed after stage 2's last checkpoint: its summary is written again, nothing retrains.
    (stage2 / "summary.json").unlink()
    second = _stamp(stage2)
    again = _run(pipeline, cfgs, out, resume=True)
    assert _stamp(stage1) == first and _stamp(stage2) == second
    assert again["summary"]["final_test_acc"] == rec["summary"]["final_test_acc"]

    # Without resume the folder is refused; a changed stage config is refused (as run directories are).
    with pytest.raises(RunExistsError):
        _run(pipeline, cfgs, out)
    with pytest.raises(RunConflictError, match="optim.lr"):
        _run(pipeline, _configs(data, pipeline, ["optim.lr=0.1"]), out, resume=True)
    other = dataclasses.replace(pipeline, retrain="baseline")
    with pytest.raises(RunConflictError, match="pipeline.retrain"):
        _run(other, _configs(data, other), out, resume=True)
    assert _stamp(stage1) == first and _stamp(stage2) == second


def test_a_given_first_run_is_used_as_stage_one(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    pipeline = METHODS["dp-gce-filter"].pipeline
    cfgs = _configs(data, pipeline)
    done = _run(pipeline, cfgs, tmp_path / "a")
    first = tmp_path / "a" / "stage1"
    stamp = _stamp(first)
    rec = _run(pipeline, cfgs, tmp_path / "b", first_run=first)
    assert not (tmp_path / "b" / "stage1").exists() and _stamp(first) == stamp
    assert rec["stages"]["stage1"]["run_dir"] == str(first) and rec["n_flagged"] == done["n_flagged"]
    assert rec["summary"]["final_test_acc"] == done["summary"]["final_test_acc"]
    # A run of another config is not taken for stage 1.
    with pytest.raises(RunConflictError):
        _run(pipeline, _configs(data, pipeline, ["optim.lr=0.1"]), tmp_path / "c", first_run=first)


def test_a_first_stage_that_flags_everything_is_refused(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    # A bound far below any loss the first epochs leave: every sample is flagged.
    pipeline = dataclasses.replace(METHODS["dp-gce-filter"].pipeline, fraction=1e-6)
    out = tmp_path / "pipe"
    with pytest.raises(ConfigError, match="every one of the 48 samples"):
        _run(pipeline, _configs(data, pipeline, ["optim.epochs=2"]), out)
    assert (out / "stage1" / "summary.json").exists() and not (out / "stage2").exists()
    assert not list(out.glob("kept_*.npy"))


def test_settings_that_cannot_work_are_refused_before_anything_trains(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    with pytest.raises(ConfigError, match="a loss score"):
        FilterPipeline(first="dp-gce", score="sigma", rule="bound", fraction=0.2)
    with pytest.raises(ConfigError, match="0 < FRACTION < 1"):
        FilterPipeline(first="dp-gce", score="mean-loss", rule="bound", fraction=1.5)
    with pytest.raises(ConfigError, match="pipeline.retrain"):
        FilterPipeline(retrain="nope")
    with pytest.raises(ConfigError, match="FIELD one of first"):
        FilterPipeline().with_options(["pipeline.nope=1"])
    # The bound rule after a first training on cross-entropy (dp-instance): refused, nothing written.
    bound = FilterPipeline(first="dp-instance", score="mean-loss", rule="bound", fraction=0.2)
    cfg_first, cfg_retrain = METHODS["dp-filter"].pipeline.configs("fmnist-noisy40", [f"data.data_dir={data}", *TINY])
    with pytest.raises(ConfigError, match="needs a first training on the GCE loss"):
        run_filter_pipeline(bound, cfg_first, cfg_retrain, tmp_path / "pipe", device="cpu", quiet=True)
    assert not (tmp_path / "pipe").exists()
    with pytest.raises(ConfigError, match="pipeline.first must be"):
        dataclasses.replace(bound, first="gce").configs("fmnist-noisy40")
    # Settings as a tuning grid writes them: pipeline.FIELD entries and overrides of the retraining.
    p, rest = METHODS["dp-gce-filter"].pipeline.with_options(["pipeline.retrain=baseline", "pipeline.fraction=0.3",
                                                              "curriculum.loss=gce"])
    assert (p.first, p.rule, p.fraction, p.retrain) == ("dp-gce", "bound", 0.3, "baseline")
    assert rest == ["curriculum.loss=gce"]


def test_train_method_dp_gce_filter_on_a_preset_resumes_across_stages(tmp_path, capsys):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "run"
    argv = ["train", "--preset", "fmnist-noisy40", "--method", "dp-gce-filter", "--data-dir", str(data),
            *[a for o in [*TINY, "optim.lr=0.2"] for a in ("--set", o)], "--epochs", "12", "--out", str(out),
            "--device", "cpu", "--quiet", "--no-tensorboard"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["method"] == "dp-gce-filter" and rec["status"] == "finished" and 0 < rec["n_flagged"] < 48
    assert json.loads((out / "stage1" / "config.json").read_text())["preset"] == "fmnist-noisy40/dp-gce"
    config2 = json.loads((out / "stage2" / "config.json").read_text())
    assert config2["preset"] == "fmnist-noisy40/dp-gce-filter" and config2["optim"]["epochs"] == 12
    assert rec["summary"]["num_train"] == 48 - rec["n_flagged"]

    stamp = _stamp(out / "stage1")
    (out / "stage2" / "summary.json").unlink()
    assert main(argv) == 2 and "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["final_test_acc"] == rec["summary"]["final_test_acc"]
    assert _stamp(out / "stage1") == stamp
    # --set pipeline.FIELD=VALUE changes the pipeline; a changed retraining is refused on resume.
    assert main([*argv, "--resume", "--set", "pipeline.retrain=baseline"]) == 2
    assert "pipeline.retrain" in capsys.readouterr().err
    # The other multi-stage methods still run in the bench only.
    assert main(["train", "--method", "cleanlab", "--out", str(tmp_path / "x")]) == 2
    assert "benchmarks/bench.py" in capsys.readouterr().err


def test_train_method_dp_filter_with_seeds(tmp_path, capsys):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "seeds"
    assert main(["train", "--preset", "fmnist-noisy40", "--method", "dp-filter", "--data-dir", str(data),
                 *[a for o in TINY for a in ("--set", o)], "--epochs", "2", "--seeds", "1", "2", "--out", str(out),
                 "--device", "cpu", "--quiet", "--no-tensorboard", "--set", "pipeline.retrain=baseline"]) == 0
    assert "| final_test_acc |" in capsys.readouterr().out
    for seed in (1, 2):
        rec = json.loads((out / f"seed{seed}" / "pipeline.json").read_text())
        assert rec["status"] == "finished" and rec["pipeline"]["retrain"] == "baseline"
        assert json.loads((out / f"seed{seed}" / "stage2" / "config.json").read_text())["seed"] == seed
    table = json.loads((out / "seeds_summary.json").read_text())
    assert table["seeds"] == [1, 2] and "detection_auroc" in table["mean_std"]


def test_train_method_dp_gce_filter_on_a_csv_of_pngs(tmp_path, capsys):
    root = fakes.write_filelist(tmp_path / "imgs", 30, 3, size=(8, 8))
    with open(root / "train.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 30
    out = tmp_path / "run"
    argv = ["train", "--data", str(root / "train.csv"), "--method", "dp-gce-filter", "--epochs", "10",
            "--set", "optim.lr=0.2", "--out", str(out), "--device", "cpu", "--quiet", "--no-tensorboard"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["n"] == 30 and 0 <= rec["n_flagged"] < 30 and rec["summary"]["num_train"] == 30 - rec["n_flagged"]
    assert rec["detection"] is None  # the user's labels: no truth to measure against
    config1 = json.loads((out / "stage1" / "config.json").read_text())
    assert config1["data"]["dataset"] == "user" and config1["curriculum"]["loss"] == "gce"
    assert (out / "stage2" / "model.pt").exists()
    stamp = _stamp(out / "stage1")
    assert main([*argv, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["final_train_acc"] == rec["summary"]["final_train_acc"]
    assert _stamp(out / "stage1") == stamp


def test_class_mean_filter_flags_and_refusal():
    from types import SimpleNamespace

    from dataparams.methods.pipelines import filter_flags

    # Qualities exp(-loss): class 0 [0.9, 0.8, 0.1] (mean 0.6), class 1 [0.5, 0.4, 0.3] (mean 0.4).
    report = SimpleNamespace(score=-np.log([0.9, 0.8, 0.1, 0.5, 0.4, 0.3]), given=np.array([0, 0, 0, 1, 1, 1]))
    np.testing.assert_array_equal(filter_flags(report, rule="class-mean"), [False, False, True, False, False, True])
    with pytest.raises(ConfigError, match="loss score"):
        FilterPipeline(rule="class-mean", score="sigma-mean")
    assert METHODS["dp-cm-filter"].pipeline.rule == "class-mean"


def test_train_data_default_is_dp_gce_cm_filter_and_keeps_the_validation_chosen_network(tmp_path, capsys):
    import torch

    from dataparams.methods.registry import DATA_DEFAULT_METHOD, DATA_DEFAULT_WHY

    root = fakes.write_filelist(tmp_path / "imgs", 40, 3, size=(8, 8))
    out = tmp_path / "run"
    argv = ["train", "--data", str(root / "train.csv"), "--epochs", "6", "--holdout", "0.25", "--set", "optim.lr=0.2",
            "--out", str(out), "--device", "cpu", "--quiet", "--no-tensorboard"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert DATA_DEFAULT_METHOD == "dp-gce-cm-filter" and rec["pipeline"]["rule"] == "class-mean"
    for stage in ("stage1", "stage2"):
        config = json.loads((out / stage / "config.json").read_text())
        assert config["choices"]["method"] == {"value": "dp-gce-cm-filter", "why": DATA_DEFAULT_WHY}
        assert config["data"]["val_fraction"] == 0.25
    # The network kept is the one of the epoch the noisy validation split chose, not the last one.
    summary = json.loads((out / "stage2" / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
    assert summary["kept_model"]["epoch"] == summary["val_selected_epoch"] == best["epoch"]
    assert summary["kept_model"]["chosen_by"] == "noisy validation accuracy"
    kept = torch.load(out / "stage2" / "model.pt", weights_only=True)["state_dict"]
    chosen = torch.load(out / "stage2" / "model_selected.pt", weights_only=True)
    assert chosen["epoch"] == best["epoch"] and chosen["val_acc"] == best["val_acc"]
    for k, v in chosen["state_dict"].items():
        torch.testing.assert_close(kept[k], v, rtol=0, atol=0)
    # An explicit --method is recorded as such; without --holdout the last epoch is kept.
    out2 = tmp_path / "run2"
    assert main(["train", "--data", str(root / "train.csv"), "--method", "dp-cm-filter", "--epochs", "2",
                 "--out", str(out2), "--device", "cpu", "--quiet", "--no-tensorboard"]) == 0
    capsys.readouterr()
    config = json.loads((out2 / "stage2" / "config.json").read_text())
    assert config["choices"]["method"] == {"value": "dp-cm-filter", "why": "given with --method"}
    summary = json.loads((out2 / "stage2" / "summary.json").read_text())
    assert summary["kept_model"] == {"epoch": 2, "chosen_by": "last epoch (no validation split)"}
    assert not (out2 / "stage2" / "model_selected.pt").exists()
    # --holdout is an option of --data only.
    assert main(["train", "--preset", "fmnist-noisy40/instance", "--holdout", "0.1", "--print-config"]) == 2
    assert "--holdout applies to --data" in capsys.readouterr().err


@pytest.mark.faults
def test_the_selected_network_survives_a_kill_between_the_checkpoint_and_its_save(tmp_path):
    """Epoch 2 was the best and its checkpoint was written, then the process died before its
    selected weights were: the resumed logger saves them from the restored model; an earlier
    best already saved is kept as it is."""
    import json

    import torch

    from dataparams.runs.logger import SELECTED_MODEL, RunLogger, read_selected_model

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    for e, v in ((1, 50.0), (2, 70.0)):
        run.append_metrics({"epoch": e, "val_acc": v})
    torch.save({"epoch": 1, "val_acc": 50.0, "state_dict": {"w": torch.zeros(2)}}, run.path / SELECTED_MODEL)
    weights = {"w": torch.ones(2)}  # the model as restored from epoch 2's checkpoint
    args = (run, None, np.zeros(3, bool), lambda e: {})
    logger = RunLogger(*args, epochs=5, quiet=True, tensorboard=False, select_model=lambda: weights, start_epoch=2)
    kept = read_selected_model(run)
    assert logger.best_val == 70.0 and kept["epoch"] == 2 and torch.equal(kept["state_dict"]["w"], torch.ones(2))
    # Resumed from epoch 1 instead (epoch 2's line cut): the saved epoch-1 weights stay.
    (run.path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 50.0}) + "\n")
    torch.save({"epoch": 1, "val_acc": 50.0, "state_dict": {"w": torch.zeros(2)}}, run.path / SELECTED_MODEL)
    logger = RunLogger(*args, epochs=5, quiet=True, tensorboard=False, select_model=lambda: weights, start_epoch=1)
    kept = read_selected_model(run)
    assert logger.best_val == 50.0 and kept["epoch"] == 1 and torch.equal(kept["state_dict"]["w"], torch.zeros(2))
