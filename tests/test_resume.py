"""kill -9 in the middle of an epoch, --resume, and the run ends exactly where an uninterrupted one does."""

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch


def _write_idx(folder, n_train=2048, n_test=256, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # class-dependent blobs plus noise, so the model learns something
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 8, 4:24] += 150
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return folder


def _cmd(data, out, *extra):
    return [
        sys.executable, "-m", "dataparams.cli", "train", "--preset", "fmnist-noisy40/joint",
        "--data-dir", str(data), "--epochs", "4", "--set", "data.batch_size=16", "--set", "data.eval_batch_size=256",
        "--set", "data.val_fraction=0.1", "--out", str(out), "--device", "cpu", "--quiet", "--no-tensorboard", *extra,
    ]


def _final_state(run):
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:  # wall-clock fields differ between any two runs
        for k in ("time_s", "train_time_s"):
            m.pop(k)
    return ckpt, metrics


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
@pytest.mark.faults
@pytest.mark.slow
def test_kill_minus_9_then_resume_equals_uninterrupted(tmp_path):
    data = _write_idx(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(data, ref), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cmd(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1 and (killed / "checkpoint.pt").exists():
            break
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(metrics.read_text().splitlines()) < 4

    # Without --resume the directory is refused; with it the run continues.
    refused = subprocess.run(_cmd(data, killed), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(_cmd(data, killed, "--resume"), check=True, env=env, capture_output=True)

    ref_ckpt, ref_metrics = _final_state(ref)
    got_ckpt, got_metrics = _final_state(killed)
    assert got_metrics == ref_metrics
    assert ref_ckpt["epoch"] == got_ckpt["epoch"] == 4
    for part in ("model", "optimizer"):
        a, b = ref_ckpt[part], got_ckpt[part]
        if part == "model":
            for k in a:
                assert torch.equal(a[k], b[k]), k
        else:
            for pid, st in a["state"].items():
                assert torch.equal(st["momentum_buffer"], b["state"][pid]["momentum_buffer"])
    # The objective's state: data parameters and every per-sample buffer.
    assert set(ref_ckpt["objective"]) >= {"dp.class_log_sigma", "dp.instance_log_sigma", "last_loss", "loss_sum"}
    for k, v in ref_ckpt["objective"].items():
        assert torch.equal(v, got_ckpt["objective"][k]), k
    # One SparseSGD, a group per level (class, instance), each with its momentum.
    a_state = ref_ckpt["objective_optimizers"]["data_parameters"]["state"]
    b_state = got_ckpt["objective_optimizers"]["data_parameters"]["state"]
    assert set(a_state) == set(b_state) == {0, 1}
    for i in (0, 1):
        assert torch.equal(a_state[i]["momentum_buffer"], b_state[i]["momentum_buffer"])
    for e in range(1, 5):
        a = np.load(ref / "snapshots" / f"epoch_{e:04d}.npz")
        b = np.load(killed / "snapshots" / f"epoch_{e:04d}.npz")
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------------------------
# every method: a crash after an epoch's checkpoint, then resume, equals the uninterrupted run
# ----------------------------------------------------------------------------------------------
METHOD_CASES = {
    "instance": ("fmnist-noisy40/instance", []),
    "joint": ("fmnist-noisy40/joint", []),
    "superloss": ("fmnist-noisy40/baseline", ["method=superloss", 'method_options={"tau": "ema"}']),
    "gce": ("fmnist-noisy40/baseline", ["method=gce"]),
    "sce": ("fmnist-noisy40/baseline", ["method=sce"]),
    "coteaching": ("fmnist-noisy40/baseline", ["method=coteaching", 'method_options={"num_gradual": 2}']),
    "aum": ("fmnist-noisy40/baseline", ["method=aum"]),
}


class _Crash(Exception):
    pass


@pytest.mark.parametrize("method", list(METHOD_CASES))
@pytest.mark.faults
def test_every_method_resumes_bit_for_bit(tmp_path, monkeypatch, method):
    import fakes
    from dataparams.config import apply_overrides
    from dataparams.experiment import train
    from dataparams.presets import get_preset
    from dataparams.runs.logger import RunLogger

    torch.set_num_threads(1)
    data = fakes.write_idx(tmp_path / "data", n_train=96, n_test=16)
    preset, extra = METHOD_CASES[method]
    cfg = apply_overrides(get_preset(preset), [f"data.data_dir={data}", "optim.epochs=3", "data.batch_size=16",
                                               "data.val_fraction=0.2", *extra])
    kw = dict(device="cpu", quiet=True, tensorboard=False)
    train(cfg, tmp_path / "ref", **kw)

    original = RunLogger.on_epoch_end

    def crash_after_second_epoch(self, epoch, record):
        original(self, epoch, record)  # metrics, snapshot, checkpoint of this epoch are written
        if epoch == 1:
            raise _Crash

    monkeypatch.setattr(RunLogger, "on_epoch_end", crash_after_second_epoch)
    with pytest.raises(_Crash):
        train(cfg, tmp_path / "run", **kw)
    monkeypatch.setattr(RunLogger, "on_epoch_end", original)
    train(cfg, tmp_path / "run", resume=True, **kw)

    ref_ckpt, ref_metrics = _final_state(tmp_path / "ref")
    got_ckpt, got_metrics = _final_state(tmp_path / "run")
    assert got_metrics == ref_metrics
    for part in ("model", "objective"):
        assert ref_ckpt[part].keys() == got_ckpt[part].keys()
        for k, v in ref_ckpt[part].items():
            assert torch.equal(v, got_ckpt[part][k]), (part, k)
    _assert_same_optimizer_state(ref_ckpt["optimizer"], got_ckpt["optimizer"])
    for name, state in ref_ckpt["objective_optimizers"].items():
        _assert_same_optimizer_state(state, got_ckpt["objective_optimizers"][name])
    for f in ("predictions.npz",):
        a, b = np.load(tmp_path / "ref" / f), np.load(tmp_path / "run" / f)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def _assert_same_optimizer_state(a, b):
    assert a["state"].keys() == b["state"].keys()
    for pid, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["state"][pid][k]) if torch.is_tensor(v) else v == b["state"][pid][k]


@pytest.mark.faults
def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one_and_ends_as_uninterrupted(tmp_path, monkeypatch,
                                                                                             capsys):
    """A crash after epoch 2's checkpoint, then the checkpoint cut short (a disk that lost its
    tail): resume falls back to epoch 1's checkpoint, drops epoch 2's metrics and snapshot, and
    the run ends bit for bit where an uninterrupted one does."""
    import fakes
    from dataparams.config import apply_overrides
    from dataparams.experiment import train
    from dataparams.presets import get_preset
    from dataparams.runs.logger import RunLogger

    torch.set_num_threads(1)
    data = fakes.write_idx(tmp_path / "data", n_train=96, n_test=16)
    cfg = apply_overrides(get_preset("fmnist-noisy40/instance"),
                          [f"data.data_dir={data}", "optim.epochs=3", "data.batch_size=16", "data.val_fraction=0.2"])
    kw = dict(device="cpu", tensorboard=False)
    train(cfg, tmp_path / "ref", quiet=True, **kw)

    original = RunLogger.on_epoch_end

    def crash_after_epoch_2(self, epoch, record):
        original(self, epoch, record)
        if epoch == 1:
            raise _Crash

    monkeypatch.setattr(RunLogger, "on_epoch_end", crash_after_epoch_2)
    with pytest.raises(_Crash):
        train(cfg, tmp_path / "run", quiet=True, **kw)
    monkeypatch.setattr(RunLogger, "on_epoch_end", original)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    capsys.readouterr()
    train(cfg, tmp_path / "run", resume=True, quiet=False, **kw)
    err = capsys.readouterr().err
    assert "resuming" in err and "from epoch 1" in err and "resumed from checkpoint.prev.pt" in err

    ref_ckpt, ref_metrics = _final_state(tmp_path / "ref")
    got_ckpt, got_metrics = _final_state(tmp_path / "run")
    assert got_metrics == ref_metrics
    for part in ("model", "objective"):
        for k, v in ref_ckpt[part].items():
            assert torch.equal(v, got_ckpt[part][k]), (part, k)
