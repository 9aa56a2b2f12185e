"""The command line end to end on tiny IDX data: seeds summary, demo, calibration, TensorBoard; and main()'s
error handling: the user's errors as one line (exit 2), a bug's exception with its traceback."""

import json
import re

import numpy as np
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


# ---------------------------------------------------------------------------------------------
# main(): the user's errors are one line and exit 2; a bug keeps its traceback


def _raising(exc):
    def cmd(args):
        raise exc

    return cmd


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), ValueError("a bug's plain ValueError"), KeyError("k"),
                                 ImportError("No module named 'nothing'"), TypeError("a bug")])
def test_an_unexpected_exception_is_not_swallowed(monkeypatch, capsys, exc):
    from dataparams.cli import presets

    monkeypatch.setattr(presets, "cmd_presets", _raising(exc))
    with pytest.raises(type(exc)) as info:
        main(["presets"])
    assert info.value is exc
    assert "error:" not in capsys.readouterr().err


def _user_errors():
    from dataparams.config import ConfigError
    from dataparams.data.base import DatasetFormatError, DatasetNotFoundError
    from dataparams.data.images import ImageTooLarge
    from dataparams.data.userdata import UserDataError
    from dataparams.detection.coco import CocoFormatError
    from dataparams.detection.kitti import KittiFormatError
    from dataparams.distributed.checkpoint import ShardFileError
    from dataparams.runs import RunConflictError, RunDirError, RunExistsError

    return [ConfigError("bad value"), DatasetFormatError("data.gz: truncated"), DatasetNotFoundError("no data"),
            UserDataError("list.csv:3: bad label"), ImageTooLarge("a.png: too large"),
            ShardFileError("shard 1: damaged"), KittiFormatError("000001.txt:2: 14 fields"),
            CocoFormatError("ann.json: box 7"), RunDirError("locked"), RunExistsError("runs/x holds this run"),
            RunConflictError("runs/x holds another run"), FileNotFoundError("weights file w.pt not found"),
            ImportError("figures need matplotlib; install it with: pip install 'dataparams[report]'")]


@pytest.mark.parametrize("exc", _user_errors(), ids=lambda e: type(e).__name__)
def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys, exc):
    from dataparams.cli import presets

    monkeypatch.setattr(presets, "cmd_presets", _raising(exc))
    assert main(["presets"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith(f"error: {exc}"), captured.err


def test_user_error_classes_exist():
    """Every (module, class) main() treats as the user's error names an exception class."""
    import importlib

    from dataparams.cli import USER_ERRORS

    for module, name in USER_ERRORS:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception), (module, name)


def test_a_bug_exits_1_with_its_traceback(tmp_path):
    """From the shell: a bug's ValueError is a traceback and exit status 1, not `error: ...` and 2."""
    import subprocess
    import sys

    code = ("import sys\nfrom dataparams import cli\nfrom dataparams.cli import presets\n"
            "def cmd(args):\n    raise ValueError('a bug')\n"
            "presets.cmd_presets = cmd\nsys.exit(cli.main(['presets']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: a bug" in proc.stderr and "error: a bug" not in proc.stderr


def test_corrupt_dataset_file_is_still_one_line(tmp_path, capsys):
    """The readers' user-facing ValueErrors are DatasetFormatError: one line, exit 2."""
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(b"\x1f\x8b" + b"\x00" * 10)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"")
    assert main(["train", "--preset", "fmnist-noisy40/instance", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot decompress" in err and len(err.strip().splitlines()) == 1


def test_every_sub_command_runs_its_own_function():
    from dataparams import cli

    parser = cli.get_args_parser()
    expected = {"train": cli.cmd_train, "demo": cli.cmd_demo, "presets": cli.cmd_presets,
                "report": cli.cmd_report, "find-issues": cli.cmd_find_issues, "kitti-eval": cli.cmd_kitti_eval}
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(expected)
    for name, func in expected.items():
        assert sub.choices[name].get_default("func") is func


def test_help_texts_show_single_percent_signs():
    # argparse %-formats help strings but not descriptions: "40%%" in a description printed as is.
    from dataparams import cli

    parser = cli.get_args_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    texts = [parser.format_help()] + [p.format_help() for p in sub.choices.values()]
    assert not [t for t in texts if "%%" in t or "%(" in t]


@pytest.mark.parametrize("command, option, other", [
    ("train", "--data", "--data-dir"), ("train", "--data-dir", "--data"),
    ("train", "--seed", "--seeds"), ("train", "--seeds", "--seed"),
])
def test_look_alike_options_name_each_other(command, option, other):
    """Each of two confusable options says in its help how it differs from the other."""
    from dataparams.cli import get_args_parser

    parser = get_args_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    assert re.search(rf"\bnot (train's )?{re.escape(other)}(?![\w-])", action.help, re.IGNORECASE), action.help


def test_make_split_is_refused_outside_the_kitti_presets(capsys):
    assert main(["train", "--preset", "fmnist-noisy40/instance", "--make-split"]) == 2
    assert "--make-split is for the kitti detection presets" in capsys.readouterr().err
    assert main(["train", "--preset", "kitti-synth/instance", "--make-split", "--quiet"]) == 2
    assert "--make-split writes a KITTI train/val split" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--deterministic"], ["--holdout", "0.1"]])
def test_detection_presets_refuse_classification_only_options(tmp_path, capsys, option):
    # Accepted and then ignored, the option would promise what the detection trainer does not do.
    out = tmp_path / "det"
    assert main(["train", "--preset", "kitti-synth/instance", "--out", str(out), "--device", "cpu", "--quiet",
                 *option]) == 2
    assert option[0] in capsys.readouterr().err and not out.exists()


def test_find_issues_refuses_epoch_with_data(tmp_path, capsys):
    out = tmp_path / "issues"
    assert main(["find-issues", "--data", str(tmp_path / "labels.csv"), "--out", str(out), "--epoch", "3",
                 "--quiet"]) == 2
    assert "--epoch" in capsys.readouterr().err and not out.exists()


def test_demo_offers_no_workers_option():
    # The demo's data is in memory: a --workers there would be silently ignored.
    from dataparams.cli import get_args_parser

    sub = next(a for a in get_args_parser()._actions if a.dest == "command").choices
    assert not any("--workers" in a.option_strings for a in sub["demo"]._actions)
    assert any("--workers" in a.option_strings for a in sub["train"]._actions)


@pytest.mark.parametrize("argv, advice", [
    (["train", "--preset", "fmnist/instance"], "interrupted; continue with --resume"),
    (["train", "--preset", "fmnist/instance", "--overwrite"], "interrupted; continue with --resume (in place of --overwrite)"),
    (["find-issues", "--data", "mine.csv"], "interrupted; run the same command again to continue"),
    (["find-issues", "--data", "mine.csv", "--overwrite"], "interrupted; run the same command again without --overwrite to continue"),
    (["demo"], "interrupted; run the same command again to continue"),
    (["find-issues", "runs/x"], "interrupted"),
    (["report", "runs/x", "--out", "figs"], "interrupted"),
    (["presets"], "interrupted"),
])
def test_ctrl_c_advises_how_that_command_continues(monkeypatch, capsys, argv, advice):
    # Only train has --resume; find-issues --data and demo continue by themselves when run again;
    # the others train nothing, so there is nothing to continue.
    from dataparams.cli import demo, find_issues, presets, report, train

    module = {"train": train, "find-issues": find_issues, "demo": demo, "report": report, "presets": presets}[argv[0]]
    name = "cmd_" + argv[0].replace("-", "_")
    monkeypatch.setattr(module, name, _raising(KeyboardInterrupt()))
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == advice


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    # 120 rows of 8 features, 3 classes, in the .npz format --data reads (X and y).
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "ok.npz"
    np.savez(path, X=rng.normal(size=(120, 8)).astype(np.float32), y=np.arange(120) % 3)
    return path


@pytest.mark.parametrize("argv", [
    ["--method", "dp-filter"],  # the two-stage pipeline: also its number flagged
    ["--preset", "user/instance", "--holdout", "0.25"],  # also the held-out accuracy of the kept epoch
])
def test_seeds_on_data_without_a_test_set_summarise_what_the_runs_have(features, tmp_path, capsys, argv):
    out = tmp_path / "seeds"
    assert main(["train", "--data", str(features), *argv, "--seeds", "1", "2", "--set", "optim.epochs=2",
                 "--out", str(out), "--device", "cpu", "--quiet", "--no-tensorboard"]) == 0
    summary = json.loads((out / "seeds_summary.json").read_text())
    runs = summary["runs"]
    accs = [r["final_train_acc"] for r in runs]
    mean, std = summary["mean_std"]["final_train_acc"]
    assert mean == pytest.approx(sum(accs) / 2) and std == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    pipeline = argv[1] == "dp-filter"
    if pipeline:
        flagged = [json.loads((out / f"seed{s}" / "pipeline.json").read_text())["n_flagged"] for s in (1, 2)]
        assert summary["mean_std"]["n_flagged"][0] == pytest.approx(sum(flagged) / 2)
        assert "kept_model_val_acc" not in summary["mean_std"]
    else:
        val = [r["kept_model"]["val_acc"] for r in runs]
        assert summary["mean_std"]["kept_model_val_acc"][0] == pytest.approx(sum(val) / 2)
        assert "n_flagged" not in summary["mean_std"]
    md = (out / "seeds_summary.md").read_text()
    assert "| final_train_acc |" in md and "n/a" not in md and "final_test_acc" not in md
    for seed in (1, 2):
        model = out / f"seed{seed}" / ("stage2" if pipeline else "") / "model.pt"
        assert model.exists() and summary["kept_models"][str(seed)] == str(model)
        assert re.search(rf"^\| {seed} \| {re.escape(str(model))} \| \d+ \| ", md, re.M)


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v3_small"])
def test_find_issues_refuses_an_image_model_for_features(features, tmp_path, capsys, model):
    out = tmp_path / "issues"
    assert main(["find-issues", "--data", str(features), "--model", model, "--set", "optim.epochs=1",
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: model.arch '{model}' takes images, but {features} holds feature vectors; for features "
                   "use mlp (or model.arch=auto)")
    assert not (out / "run").exists()


def test_find_issues_refuses_the_mlp_for_images(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    assert main(["find-issues", "--data", str(tmp_path / "imgs"), "--model", "mlp", "--set", "optim.epochs=1",
                 "--out", str(tmp_path / "issues"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.arch 'mlp' takes feature vectors, but ") and "holds images" in err
    assert "small_cnn" in err and len(err.splitlines()) == 1


def test_train_data_from_inside_its_folder_writes_beside_it(tmp_path, monkeypatch):
    # `train --data .` named its run `runs/` (the stem of "." is empty) inside the class folders,
    # where the next read would take it for a class.
    import argparse

    from dataparams.cli.train import _default_out
    from dataparams.data.userdata import UserDataError

    data = tmp_path / "shots"
    (data / "a").mkdir(parents=True)
    monkeypatch.chdir(data)
    args = argparse.Namespace(data=".", out=None)
    assert _default_out(args, "user/instance") == tmp_path / "runs" / "shots"
    with pytest.raises(UserDataError, match="inside the data folder"):
        _default_out(argparse.Namespace(data=".", out="mine"), "user/instance")
