"""RunDir: refusal rules, tolerant metrics reading, truncation on resume, atomic writes."""

import json

import numpy as np
import pytest
import torch

from dataparams.config import TrainConfig, apply_overrides, config_to_dict
from dataparams.runs import RunConflictError, RunDir, RunDirError, RunExistsError, RunLockedError


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


def test_a_field_added_since_the_run_was_written_takes_its_default(tmp_path, cfg):
    # A run written before optim.nesterov existed (its config.json and checkpoint lack it) is the
    # same run as today's config with the default; a non-default value is another run.
    old = json.loads(json.dumps(cfg))
    del old["optim"]["nesterov"]
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(old))
    RunDir(d).save_checkpoint({"epoch": 1, "config": old})
    defaults = config_to_dict(TrainConfig())
    run = RunDir(d, defaults=defaults)
    assert run.prepare(cfg, resume=True) is True
    assert run.load_checkpoint(cfg)["epoch"] == 1
    run.unlock()
    other = config_to_dict(apply_overrides(TrainConfig(), [f"optim.nesterov={not cfg['optim']['nesterov']}"]))
    with pytest.raises(RunConflictError, match="optim.nesterov"):
        RunDir(d, defaults=defaults).prepare(other, resume=True)
    with pytest.raises(RunDirError, match="optim.nesterov"):
        RunDir(d, defaults=defaults).load_checkpoint(other)
    # Without the defaults the missing field is a difference, as before.
    with pytest.raises(RunConflictError, match="optim.nesterov"):
        RunDir(d).prepare(cfg, resume=True)


def test_foreign_directory_is_never_deleted(tmp_path, cfg):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="no config.json"):
        RunDir(d).prepare(cfg)
    with pytest.raises(RunDirError, match="refusing to overwrite"):
        RunDir(d).prepare(cfg, overwrite=True)
    assert (d / "thesis.tex").read_text() == "precious"


@pytest.mark.faults
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


@pytest.mark.faults
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


# ----------------------------------------------------------------------------------------------
# faults: a second writer, a damaged latest checkpoint, a full disk
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs POSIX flock")
@pytest.mark.faults
def test_a_second_writer_is_refused_with_the_holders_pid_and_nothing_is_touched(tmp_path, cfg):
    import fakes

    path = tmp_path / "r"
    first = RunDir(path)
    first.prepare(cfg)
    first.unlock()
    with fakes.lock_holder(path) as holder:
        before = sorted(p.name for p in path.iterdir())
        for kw in ({"resume": True}, {"overwrite": True}, {}):
            with pytest.raises(RunLockedError, match=f"being written by pid {holder.pid} on host ") as info:
                RunDir(path).prepare(cfg, **kw)
            # Not a RunConflictError: its remedy, overwrite, is refused while the holder lives.
            assert not isinstance(info.value, RunConflictError)
            assert info.value.path == path and info.value.holder.startswith(f"pid {holder.pid} on host ")
        assert sorted(p.name for p in path.iterdir()) == before  # --overwrite deleted nothing
    # The holder's death releases the lock: the run can be continued.
    run = RunDir(path)
    assert run.prepare(cfg, resume=True) is False
    run.unlock()


@pytest.mark.faults
def test_the_lock_is_released_by_unlock_and_taken_again(tmp_path, cfg):
    a, b = RunDir(tmp_path / "r"), RunDir(tmp_path / "r")
    a.prepare(cfg)
    with pytest.raises(RunLockedError, match="being written by pid"):
        b.prepare(cfg, resume=True)
    a.unlock()
    with b.checked(cfg):
        with pytest.raises(RunLockedError):
            a.prepare(cfg, resume=True)
    a.prepare(cfg, resume=True)  # b released it on leaving the block
    a.unlock()


def test_a_locked_error_survives_pickling_as_a_torchrun_job_broadcasts_it(tmp_path):
    import pickle

    e = pickle.loads(pickle.dumps(RunLockedError(tmp_path / "r", "pid 7 on host h")))
    assert type(e) is RunLockedError and e.path == tmp_path / "r" and e.holder == "pid 7 on host h"
    assert str(e) == f"{tmp_path / 'r'} is being written by pid 7 on host h; wait for it to end or use another directory"


@pytest.mark.parametrize("inside", [False, True])
def test_a_run_directory_at_or_inside_a_file_is_refused_and_the_file_kept(tmp_path, cfg, inside):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(RunDirError, match=f"^{afile} is a file, not a folder"):
        RunDir(afile / "run" if inside else afile).prepare(cfg)
    assert afile.read_text() == "mine"


def _state(epoch):
    return {"epoch": epoch, "config": {}, "w": torch.full((3,), float(epoch))}


@pytest.mark.faults
def test_checkpoints_carry_a_checksum_and_the_previous_one_is_used_when_the_latest_is_damaged(tmp_path, cfg):
    import hashlib

    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.save_checkpoint(_state(1))
    assert not run.previous_checkpoint_file.exists()
    run.save_checkpoint(_state(2))
    # The file is the torch payload, a marker and the payload's SHA-256 (checked by hand here).
    data = run.checkpoint_file.read_bytes()
    assert data[-41:-32] == b"\nDPSHA256" and hashlib.sha256(data[:-41]).digest() == data[-32:]
    assert run.load_checkpoint()["epoch"] == 2 and run.fallback_reason is None
    assert torch.load(run.previous_checkpoint_file, weights_only=False)["epoch"] == 1

    # One flipped byte: the checksum catches it and the previous checkpoint is used.
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    run.checkpoint_file.write_bytes(bytes(damaged))
    fresh = RunDir(run.path)
    assert fresh.load_checkpoint()["epoch"] == 1
    assert "does not match" in fresh.fallback_reason and "checkpoint.prev.pt" in fresh.fallback_reason
    # The next save replaces the damaged file and keeps the good previous one.
    fresh.save_checkpoint(_state(2))
    assert fresh.load_checkpoint()["epoch"] == 2
    assert torch.load(fresh.previous_checkpoint_file, weights_only=False)["epoch"] == 1

    # Truncated (a copy cut short), then missing: the previous one again; both bad: both named.
    run.checkpoint_file.write_bytes(data[: len(data) // 3])
    assert RunDir(run.path).load_checkpoint()["epoch"] == 1
    run.checkpoint_file.unlink()
    assert RunDir(run.path).load_checkpoint()["epoch"] == 1
    run.previous_checkpoint_file.write_bytes(b"junk")
    with pytest.raises(RunDirError, match=r"checkpoint.pt is missing; and the previous one: .*checkpoint.prev.pt"):
        RunDir(run.path).load_checkpoint()


@pytest.mark.faults
def test_a_full_disk_leaves_the_previous_checkpoint_intact_and_says_so(tmp_path, cfg, monkeypatch):
    import errno
    import os

    from dataparams.runs import rundir

    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.save_checkpoint(_state(1))
    good = run.checkpoint_file.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(RunDirError, match=r"could not write .*checkpoint.pt \(No space left on device\); the "
                                          "previous checkpoint is intact"):
        run.save_checkpoint(_state(2))
    monkeypatch.undo()
    assert run.checkpoint_file.read_bytes() == good and not run.previous_checkpoint_file.exists()
    assert not list(run.path.glob(".checkpoint.pt.*.tmp"))  # no half-written file left behind
    assert RunDir(run.path).load_checkpoint()["epoch"] == 1


@pytest.mark.faults
def test_a_kill_between_the_two_renames_resumes_from_the_previous_checkpoint(tmp_path, cfg):
    run = RunDir(tmp_path / "r")
    run.prepare(cfg)
    run.save_checkpoint(_state(1))
    run.save_checkpoint(_state(2))
    run.checkpoint_file.unlink()  # what the kill leaves: checkpoint.prev.pt only
    run.unlock()  # (the killed process's lock died with it)
    fresh = RunDir(run.path)
    assert fresh.prepare(cfg, resume=True) is True  # there is a state to resume
    assert fresh.load_checkpoint()["epoch"] == 1 and "missing" in fresh.fallback_reason
    fresh.unlock()


def test_stale_shards_keep_the_files_of_the_previous_checkpoint(tmp_path):
    from dataparams.distributed import remove_stale_shards

    for name in ("shard-a.pt", "shard-b.pt", "shard-old.pt", "classes-a.pt", "classes-b.pt", "classes-old.pt"):
        (tmp_path / name).write_bytes(b"x")
    new = {"classes": "classes-b.pt", "shards": [{"file": "shard-b.pt"}]}
    prev = {"classes": "classes-a.pt", "shards": [{"file": "shard-a.pt"}]}
    remove_stale_shards(tmp_path, new, also_keep=prev)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes-a.pt", "classes-b.pt", "shard-a.pt", "shard-b.pt"]


@pytest.mark.faults
def test_cuda_rng_states_are_restored_for_the_devices_present(monkeypatch):
    """A checkpoint written with 3 visible GPUs resumed where 1 is visible: device 0 gets its
    state back and the others are skipped (torch's set_rng_state_all would index device 1)."""
    from dataparams.build import set_rng_state

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.append((int(s[0]), device)))
    cpu = torch.get_rng_state()
    set_rng_state({"torch": cpu, "cuda": [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8),
                                          torch.tensor([9], dtype=torch.uint8)]})
    assert calls == [(7, 0)]
    assert torch.equal(torch.get_rng_state(), cpu)


def test_arrays_round_trip_with_integers_deflated_and_floats_stored(tmp_path, cfg):
    # The archive must read back exactly (values and dtypes, through np.load as any .npz), with
    # integer/boolean members compressed and floating-point members stored: the split the writer
    # makes for speed (float data barely compresses).
    import zipfile

    run = RunDir(tmp_path / "run")
    run.prepare(cfg)
    rng = np.random.default_rng(0)
    arrays = {"given": rng.integers(0, 10, 5000), "mask": rng.random(5000) < 0.2,
              "sigma": rng.random(5000).astype(np.float32), "loss": rng.random(5000).astype(np.float16),
              "probs": rng.random((5000, 10)), "empty": np.zeros(0, dtype=np.int32)}
    run.save_arrays("arrays.npz", **arrays)
    back = run.load_arrays("arrays.npz")
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    with zipfile.ZipFile(tmp_path / "run" / "arrays.npz") as zf:
        infos = {i.filename: i for i in zf.infolist()}
    assert {k: i.compress_type for k, i in infos.items()} == {
        "given.npy": zipfile.ZIP_DEFLATED, "mask.npy": zipfile.ZIP_DEFLATED, "empty.npy": zipfile.ZIP_DEFLATED,
        "sigma.npy": zipfile.ZIP_STORED, "loss.npy": zipfile.ZIP_STORED, "probs.npy": zipfile.ZIP_STORED}
    # Deflate did its work on the labels: 5,000 int64 values of 0..9 are 40 KB raw.
    assert infos["given.npy"].compress_size < 0.25 * infos["given.npy"].file_size


@pytest.mark.faults
def test_a_failed_array_write_leaves_the_previous_file_and_no_temporary_file(tmp_path, cfg, monkeypatch):
    # save_arrays streams the archive into a temporary file beside the name: a failure half-way
    # (a full disk) must leave the file it would have replaced as it was and nothing else behind.
    import errno

    run = RunDir(tmp_path / "run")
    run.prepare(cfg)
    run.save_arrays("arrays.npz", a=np.arange(10))
    before = (tmp_path / "run" / "arrays.npz").read_bytes()
    write_array = np.lib.format.write_array
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second member: the archive is half-written
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_array(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", full_disk)
    with pytest.raises(OSError, match="No space"):
        run.save_arrays("arrays.npz", a=np.arange(20), b=np.ones(3))
    assert (tmp_path / "run" / "arrays.npz").read_bytes() == before
    assert not list((tmp_path / "run").glob(".arrays.npz.*"))


def test_an_array_file_written_in_shards_reads_back_whole_and_a_whole_file_takes_precedence(tmp_path, cfg):
    # Under torchrun each process writes its rows of predictions.npz (save_array_shard); a later
    # single-process end of the run writes the whole file after removing the shards.
    run = RunDir(tmp_path / "run")
    run.prepare(cfg)
    pred = np.arange(7) % 3
    prob = np.linspace(0, 1, 7, dtype=np.float32)
    for rank, (lo, hi) in enumerate([(0, 3), (3, 5), (5, 7)]):
        path = run.save_array_shard("predictions.npz", rank=rank, world_size=3, start=lo, end=hi, num_instances=7,
                                    predicted=pred[lo:hi], predicted_prob=prob[lo:hi])
        assert path.name == f"predictions.shard-0000{rank}-of-00003.npz"
    got = run.load_arrays("predictions.npz")
    assert np.array_equal(got["predicted"], pred) and np.array_equal(got["predicted_prob"], prob)
    assert [r for _, r, _ in run.shard_files("predictions.npz")] == [0, 1, 2]
    # A directory holding the shards is a run's: --overwrite may clear it.
    run.prepare(cfg, overwrite=True)
    assert not run.shard_files("predictions.npz")
    for rank, (lo, hi) in enumerate([(0, 4), (4, 7)]):
        run.save_array_shard("predictions.npz", rank=rank, world_size=2, start=lo, end=hi, num_instances=7,
                             predicted=pred[lo:hi])
    (run.path / "predictions.shard-00001-of-00002.npz").unlink()
    with pytest.raises(RunDirError, match="predictions.shard-00001-of-00002.npz is missing: predictions.npz was "
                                          "written by 2 processes"):
        run.load_arrays("predictions.npz")
    run.save_arrays("predictions.npz", predicted=pred + 1)
    assert np.array_equal(run.load_arrays("predictions.npz")["predicted"], pred + 1)  # the whole file wins
    run.remove_array_files("predictions.npz", shards_only=True)
    assert sorted(p.name for p in run.path.glob("predictions*")) == ["predictions.npz"]
    run.remove_array_files("predictions.npz")
    assert not list(run.path.glob("predictions*"))


def test_snapshot_losses_beyond_float16_are_kept_at_its_largest_value():
    # A diverging training's losses (1.7e6) cast to float16 are inf, which the mean-loss score
    # cannot average: find-issues then refused the whole run after training it.
    from dataparams.runs.logger import loss_float16

    loss = np.array([0.25, 3.0, 7.0e4, 1.7e6], dtype=np.float32)
    out = loss_float16(loss)
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert out.tolist() == [0.25, 3.0, 65504.0, 65504.0]
    assert np.isnan(loss_float16(np.array([np.nan], np.float32)))[0]  # NaN stays what it is
