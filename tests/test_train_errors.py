"""`dataparams train` on bad input: a one-line `error: ...`, exit code 2, and nothing half-written.

Every run here is the CPU preset on a 16-image Fashion-MNIST written in the real IDX format
(tests/fakes.py), one epoch of two batches: well under a second.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

import fakes
from dataparams.cli import main


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    return fakes.write_idx(tmp_path_factory.mktemp("fmnist"), 16, 8)


def _argv(root, out, *extra, preset="fmnist-noisy40/instance"):
    return [
        "train",
        "--preset",
        preset,
        "--set",
        "data.subset=16",
        "--set",
        "optim.epochs=1",
        "--set",
        "data.batch_size=8",
        "--set",
        "data.eval_batch_size=8",
        "--device",
        "cpu",
        "--quiet",
        "--no-tensorboard",
        "--data-dir",
        str(root),
        "--out",
        str(out),
        *extra,
    ]


def _cli(capsys, argv):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _refused(capsys, argv):
    """Run, expect exit 2 with a single `error: ...` line on stderr; return that line."""
    rc, out, err = _cli(capsys, argv)
    assert rc == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _contents(path):
    """Every file under ``path`` with a hash of its bytes: to show that a refusal wrote nothing."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# bad names and values: refused before anything is read or written


def test_unknown_preset(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(idx_root, out, preset="nope/joint"))
    assert msg.startswith("error: unknown preset 'nope/joint'")
    # It lists what is valid and where to look.
    assert "fmnist-noisy40" in msg and "cifar100-noisy40" in msg and "dataparams presets" in msg
    assert not out.exists()


def test_unknown_variant(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(idx_root, out, preset="fmnist-noisy40/jiont"))
    assert "unknown variant 'jiont'" in msg and "instance, joint" in msg
    msg = _refused(capsys, _argv(idx_root, out, preset="fmnist/oracle"))
    assert "no label noise" in msg and "no oracle" in msg
    assert not out.exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=1", "unknown field 'optim.lrr'; valid: optim.epochs, optim.lr, optim.momentum"),
        ("optimm.lr=1", "unknown field 'optimm.lr'; valid: preset, seed, data, model, optim"),
        ("optim.lr.x=1", "optim.lr is not a section"),
        ("optim.lr", "override 'optim.lr' must look like section.field=value"),
    ],
)
def test_unknown_field(capsys, idx_root, tmp_path, override, expected):
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(idx_root, out, "--set", override))
    assert expected in msg
    assert not out.exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.epochs=abc", "optim.epochs: expected an integer, got 'abc'"),
        ("optim.epochs=1.5", "optim.epochs: expected an integer, got '1.5'"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.lr=nan", "optim.lr: NaN is not a valid value"),
        ("data.augment=maybe", "data.augment: expected true/false, got 'maybe'"),
        ("optim.milestones=[1,", "optim.milestones: cannot parse list"),
        ("optim.epochs=0", "optim.epochs must be >= 1, got 0"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("data.subset=0", "data.subset must be >= 1, got 0"),
        ("data.noise_rate=1.5", "data.noise_rate must be in [0, 1], got 1.5"),
        ("data.noise=gaussian", "unknown data.noise 'gaussian'; choose one of none, uniform"),
        ("model.arch=resnet99", "unknown model.arch 'resnet99'; choose one of small_cnn, wrn28_10"),
        ("optim.schedule=linear", "unknown optim.schedule 'linear'"),
        ("method=mixup", "unknown method 'mixup'"),
    ],
)
def test_bad_value(capsys, idx_root, tmp_path, override, expected):
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(idx_root, out, "--set", override))
    assert expected in msg
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# data directories without the expected files


@pytest.mark.parametrize(
    "preset, extra, expected",
    [
        (
            "cifar10/baseline",
            [],
            ["cifar-10-batches-py", "data_batch_1", "batches.meta", "cifar-10-python.tar.gz"],
        ),
        ("cifar100-noisy40/instance", [], ["cifar-100-python", "train, test, meta", "cifar-100-python.tar.gz"]),
        (
            "fmnist-noisy40/instance",
            [],
            ["fashion-mnist", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
        ),
        ("mnist-noisy40/joint", [], ["mnist", "train-images-idx3-ubyte"]),
        ("imagenet/joint", [], ["imagenet/train", "<root>/train/<wnid>/*.JPEG"]),
        ("webvision-mini/joint", [], ["train_filelist_google.txt", "info/"]),
        ("cifar10/baseline", ["--set", "data.dataset=filelist"], ["train.csv", "train.tsv"]),
    ],
)
def test_data_dir_without_the_expected_files(capsys, tmp_path, preset, extra, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(empty, out, *extra, preset=preset))
    assert str(empty) in msg
    for fragment in expected:
        assert fragment in msg
    assert not out.exists()
    assert list(empty.iterdir()) == []


def test_cifar_n_without_its_label_file(capsys, tmp_path):
    # The CIFAR-10 pickles are there, CIFAR-10_human.pt is not.
    root = fakes.write_cifar10(tmp_path / "data", 8, 4)
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(root, out, "--set", "data.dataset=cifar10n", preset="cifar10/baseline"))
    assert "CIFAR-10_human.pt" in msg and str(root) in msg
    assert not out.exists()


def test_data_dir_that_does_not_exist(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(missing, out, preset="cifar10/baseline"))
    assert f"data.data_dir {missing} does not exist" in msg and "--data-dir" in msg
    assert not out.exists() and not missing.exists()


# ---------------------------------------------------------------------------------------------
# run directories


def test_same_run_twice_needs_resume(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    rc, stdout, _ = _cli(capsys, _argv(idx_root, out))
    assert rc == 0 and json.loads(stdout)["epochs"] == 1
    before = _contents(out)
    assert {
        "config.json",
        "metrics.jsonl",
        "labels.npz",
        "checkpoint.pt",
        "snapshots/epoch_0001.npz",
        "summary.json",
    } <= set(before)

    msg = _refused(capsys, _argv(idx_root, out))
    assert f"{out} already holds this run" in msg and "--resume" in msg and "--overwrite" in msg
    assert _contents(out) == before
    # Execution-only settings do not make it another run.
    msg = _refused(capsys, _argv(idx_root, out, "--set", "data.eval_batch_size=4"))
    assert "already holds this run" in msg

    # --resume of a finished run trains no further epoch.
    rc, _, _ = _cli(capsys, _argv(idx_root, out, "--resume", "--set", "data.eval_batch_size=4"))
    assert rc == 0
    assert [r["epoch"] for r in _metrics(out)] == [1]


def test_run_dir_holding_another_run(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    assert _cli(capsys, _argv(idx_root, out))[0] == 0
    before = _contents(out)
    other = ["--set", "curriculum.lr_instance=0.5", "--set", "seed=3"]

    for flag in ([], ["--resume"]):
        msg = _refused(capsys, _argv(idx_root, out, *other, *flag))
        assert f"{out} holds a different run (fields differ: curriculum.lr_instance, seed)" in msg
        assert "--overwrite" in msg
        assert _contents(out) == before

    rc, _, _ = _cli(capsys, _argv(idx_root, out, *other, "--overwrite"))
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["curriculum"]["lr_instance"] == 0.5 and config["seed"] == 3
    assert [r["epoch"] for r in _metrics(out)] == [1]
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["config"] == config


def test_resume_and_overwrite_together(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(idx_root, out, "--resume", "--overwrite"))
    assert "choose one of --resume and --overwrite" in msg
    assert not out.exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(capsys, idx_root, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    msg = _refused(capsys, _argv(idx_root, out, "--overwrite"))
    assert "thesis.tex" in msg and "refusing to overwrite" in msg
    assert (out / "thesis.tex").read_text() == "precious"
    msg = _refused(capsys, _argv(idx_root, out))
    assert "holds no run" in msg
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_out_is_a_file(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder")
    msg = _refused(capsys, _argv(idx_root, out))
    assert msg == f"error: --out {out} is a file, not a folder"
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("extra", [[], ["--seeds", "1", "2"]])
def test_out_inside_a_file(capsys, idx_root, tmp_path, extra):
    # A folder to be made inside a file: refused by name before anything trains, not an OSError.
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    msg = _refused(capsys, _argv(idx_root, afile / "run", *extra))
    assert msg == f"error: --out {afile / 'run'}: {afile} is a file, not a folder"
    assert afile.read_text() == "not a folder"


def test_a_seed_folder_that_is_a_file(capsys, idx_root, tmp_path):
    out = tmp_path / "seeds"
    out.mkdir()
    (out / "seed2").write_text("mine")
    msg = _refused(capsys, _argv(idx_root, out, "--seeds", "1", "2"))
    assert msg == f"error: --out {out}: {out / 'seed2'} is a file, not a folder"
    assert [p.name for p in out.iterdir()] == ["seed2"]  # seed 1 was not trained either


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs POSIX flock")
@pytest.mark.faults
@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_a_run_another_process_is_writing(capsys, idx_root, tmp_path, flag):
    # A live writer holds the lock: --overwrite is refused too, so the advice is to wait or
    # use another --out, never --overwrite.
    out = tmp_path / "run"
    assert _cli(capsys, _argv(idx_root, out))[0] == 0
    with fakes.lock_holder(out) as holder:
        before = _contents(out)
        msg = _refused(capsys, _argv(idx_root, out, *flag))
        assert msg.startswith(f"error: {out} is being written by pid {holder.pid} on host ")
        assert msg.endswith("; wait for it to end or use another --out")
        assert _contents(out) == before


def _npz(path, n, classes, d=4):
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(n, d)).astype(np.float32), y=np.arange(n) % classes)
    return path


@pytest.mark.parametrize("holdout, refused", [(0.99, True), (0.95, True), (0.9, False)])
def test_a_holdout_that_leaves_too_few_to_train_on(capsys, tmp_path, holdout, refused):
    # 120 samples of 3 classes: 0.99 leaves 1, 0.95 leaves 6, 0.9 leaves 12 (at least 10 needed).
    data = _npz(tmp_path / "ok.npz", 120, 3)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--preset", "user/instance", "--holdout", str(holdout), "--set",
            "optim.epochs=1", "--out", str(out), "--device", "cpu", "--quiet", "--no-tensorboard"]
    if not refused:
        assert _cli(capsys, argv)[0] == 0
        assert json.loads((out / "summary.json").read_text())["num_train"] == 12
        return
    msg = _refused(capsys, argv)
    assert f"holding out {holdout} of 120 samples" in msg and "at least 10 are needed" in msg
    assert not out.exists()


def test_resume_refuses_a_checkpoint_of_another_configuration(capsys, idx_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli(capsys, _argv(idx_root, a))[0] == 0
    b_args = ["--set", "curriculum.lr_instance=0.5", "--set", "optim.lr=0.01"]
    assert _cli(capsys, _argv(idx_root, b, *b_args))[0] == 0

    # A checkpoint copied over from another run directory.
    shutil.copy(a / "checkpoint.pt", b / "checkpoint.pt")
    before = _contents(b)
    msg = _refused(capsys, _argv(idx_root, b, *b_args, "--resume"))
    assert f"{b / 'checkpoint.pt'} was written by another configuration" in msg
    assert "fields differ: curriculum.lr_instance, optim.lr" in msg
    assert _contents(b) == before


def test_resume_refuses_a_checkpoint_whose_config_was_edited(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    assert _cli(capsys, _argv(idx_root, out))[0] == 0
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    state["config"]["data"]["noise_rate"] = 0.2
    state["config"]["model"]["arch"] = "wrn28_10"
    torch.save(state, out / "checkpoint.pt")
    before = _contents(out)
    msg = _refused(capsys, _argv(idx_root, out, "--resume"))
    assert "was written by another configuration (fields differ: data.noise_rate, model.arch)" in msg
    assert _contents(out) == before


@pytest.mark.faults
def test_resume_refuses_an_unreadable_checkpoint(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    assert _cli(capsys, _argv(idx_root, out))[0] == 0
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    msg = _refused(capsys, _argv(idx_root, out, "--resume"))
    assert f"{ckpt} is unreadable" in msg


# ---------------------------------------------------------------------------------------------
# bad values found by validation, corrupt files, a kill before the first checkpoint


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.dataset=nope", "unknown data.dataset 'nope'"),
        ("curriculum.init_instance=-1", "init_instance is a temperature"),
        ("curriculum.clamp=[2,1]", "clamp must be [low, high]"),
    ],
)
def test_every_bad_value_gets_an_error_line(capsys, idx_root, tmp_path, override, expected):
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(idx_root, out, "--set", override))
    assert expected in msg
    assert not out.exists()


def test_corrupt_data_file_gets_an_error_line(capsys, tmp_path):
    root = fakes.write_idx(tmp_path / "data", 16, 8)
    images = root / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])
    out = tmp_path / "run"
    msg = _refused(capsys, _argv(root, out))
    assert "train-images-idx3-ubyte.gz" in msg and "truncated" in msg
    assert not out.exists()


@pytest.mark.faults
def test_resume_after_a_kill_before_the_first_checkpoint(capsys, idx_root, tmp_path):
    out = tmp_path / "run"
    assert _cli(capsys, _argv(idx_root, out))[0] == 0
    # A kill between the epoch's metrics line and its checkpoint leaves this behind.
    for name in ("checkpoint.pt", "summary.json", "predictions.npz"):
        (out / name).unlink()
    assert _cli(capsys, _argv(idx_root, out, "--resume"))[0] == 0
    assert [r["epoch"] for r in _metrics(out)] == [1]
