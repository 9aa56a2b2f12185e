"""The per-epoch snapshot of a sharded run: one file per process, read back as one snapshot.

The reader is checked on shard files written here by hand with ``numpy.savez_compressed`` (no
processes); the writer against what those files must hold; the sigma statistics reduced from
per-shard moments against numpy on the concatenated values; and the run logger, with a one-process
:class:`ShardedObjective`, against the objective's own arrays. The torchrun (2 gloo processes)
runs that write these files are in ``tests/test_distributed_train.py``.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from dataparams.analysis.find_issues import find_issues
from dataparams.analysis.runs_io import load_run
from dataparams.distributed import DistributedContext, ShardedObjective
from dataparams.runs import RunDir, RunDirError
from dataparams.runs.logger import RunLogger, merge_moments, moments, sharded_sigma_stats, sigma_stats
from test_analysis_report import write_run

N, K = 11, 3
# Hand-chosen rows of N = 11 over 3 processes, the last shard empty (as shard_range gives when N
# is small); what the reader must accept whatever the writer's split.
ROWS = [(0, 6), (6, 11), (11, 11)]


def _full(epoch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(epoch)
    return {"loss": rng.uniform(0, 3, N).astype(np.float16),
            "instance_sigma": rng.uniform(0.05, 20, N).astype(np.float32),
            "class_sigma": rng.uniform(0.5, 2, K).astype(np.float32)}


def _write_by_hand(snapshots, epoch: int, full: dict[str, np.ndarray], rows=ROWS) -> list:
    """The shard files of ``full`` under the documented names and keys, written with numpy alone."""
    snapshots.mkdir(parents=True, exist_ok=True)
    paths = []
    for r, (start, end) in enumerate(rows):
        arrays = {"loss": full["loss"][start:end], "instance_sigma": full["instance_sigma"][start:end],
                  "start": np.int64(start), "end": np.int64(end), "num_instances": np.int64(N)}
        if r == 0:
            arrays["class_sigma"] = full["class_sigma"]
        path = snapshots / f"epoch_{epoch:04d}.shard-{r:05d}-of-{len(rows):05d}.npz"
        np.savez_compressed(path, **arrays)
        paths.append(path)
    return paths


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_shard_files_written_by_hand_read_back_as_the_whole_snapshot(tmp_path):
    run = RunDir(tmp_path / "run")
    for epoch in (1, 2):
        _write_by_hand(run.snapshot_dir, epoch, _full(epoch))
    # A whole snapshot of another epoch (a run's files need not all be sharded) and a detection
    # folder, which shares the directory and is no snapshot.
    np.savez_compressed(run.snapshot_file(3), **_full(3))
    (run.snapshot_dir / "detections_epoch_0003").mkdir()
    assert run.snapshot_epochs() == [1, 2, 3]
    for epoch in (1, 2, 3):
        _assert_same(run.load_snapshot(epoch), _full(epoch))


def test_the_analysis_reads_a_sharded_snapshot_as_a_whole_one(tmp_path):
    whole = write_run(tmp_path / "whole", n=40, epochs=3)
    sharded = tmp_path / "sharded"
    shutil.copytree(whole, sharded)
    rows = [(0, 14), (14, 27), (27, 40)]
    for f in sorted((sharded / "snapshots").glob("epoch_*.npz")):
        with np.load(f) as z:
            full = {k: z[k] for k in z.files}
        f.unlink()
        epoch = int(f.stem.split("_")[1])
        for r, (start, end) in enumerate(rows):
            part = {k: (v if k == "class_sigma" else v[start:end]) for k, v in full.items()
                    if k != "class_sigma" or r == 0}
            np.savez_compressed(sharded / "snapshots" / f"epoch_{epoch:04d}.shard-{r:05d}-of-00003.npz",
                                start=np.int64(start), end=np.int64(end), num_instances=np.int64(40), **part)
    a, b = load_run(whole), load_run(sharded)
    assert a.snapshot_epochs == b.snapshot_epochs == [1, 2, 3]
    assert b.warnings == a.warnings
    for (ea, sa), (eb, sb) in zip(a.iter_snapshots(), b.iter_snapshots(), strict=True):
        assert ea == eb
        _assert_same(sb, sa)
    assert a.last_snapshot("instance_sigma")[0] == b.last_snapshot("instance_sigma")[0] == 3
    np.testing.assert_array_equal(b.history("loss")[1], a.history("loss")[1])
    # find-issues ranks the samples of the sharded run exactly as those of the whole one.
    ra, rb = find_issues(whole, load_dataset=False), find_issues(sharded, load_dataset=False)
    assert rb.epoch == ra.epoch == 3
    np.testing.assert_array_equal(rb.order, ra.order)


def test_a_missing_shard_file_is_named(tmp_path):
    run = RunDir(tmp_path / "run")
    paths = _write_by_hand(run.snapshot_dir, 1, _full(1))
    paths[1].unlink()
    assert run.snapshot_epochs() == [1]  # listed: the error says what is wrong with it
    with pytest.raises(RunDirError, match=f"{paths[1]} is missing: epoch 1's snapshot was written by 3 processes"):
        run.load_snapshot(1)
    for p in paths[::2]:
        p.unlink()
    with pytest.raises(RunDirError, match=f"{run.snapshot_file(1)} is missing"):
        run.load_snapshot(1)


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_shard_file_is_named(tmp_path, how):
    run = RunDir(tmp_path / "run")
    path = _write_by_hand(run.snapshot_dir, 1, _full(1))[1]
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte of the compressed instance sigmas: the zip member's CRC-32 no longer matches
        i = data.index(b"instance_sigma.npy") + 60
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    with pytest.raises(RunDirError, match=f"{path} is unreadable"):
        run.load_snapshot(1)


def test_shard_files_that_do_not_tile_the_samples_are_refused_naming_the_file(tmp_path):
    run = RunDir(tmp_path / "run")
    # A gap: rows 6..7 in no file.
    paths = _write_by_hand(run.snapshot_dir, 1, _full(1), rows=[(0, 6), (7, 11), (11, 11)])
    with pytest.raises(RunDirError, match=f"{paths[1]} holds rows \\[7, 11\\) of N=11; the files before it end at row 6"):
        run.load_snapshot(1)
    # Files of two process counts for one epoch (not a state any write order leaves).
    _write_by_hand(run.snapshot_dir, 2, _full(2))
    _write_by_hand(run.snapshot_dir, 2, _full(2), rows=[(0, 5), (5, 11)])
    with pytest.raises(RunDirError, match="epoch 2's snapshot has shard files of 2 and 3 processes"):
        run.load_snapshot(2)
    # A per-sample array of the wrong length.
    paths = _write_by_hand(run.snapshot_dir, 3, _full(3), rows=[(0, 6), (6, 11)])
    with np.load(paths[1]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["loss"] = arrays["loss"][:-1]
    np.savez_compressed(paths[1], **arrays)
    with pytest.raises(RunDirError, match=f"{paths[1]}: loss not as in the other files"):
        run.load_snapshot(3)


def test_save_snapshot_shard_writes_the_documented_file(tmp_path):
    run = RunDir(tmp_path / "run")
    full = _full(1)
    for r, (start, end) in enumerate(ROWS):
        extra = {"class_sigma": full["class_sigma"]} if r == 0 else {}
        path = run.save_snapshot_shard(1, rank=r, world_size=3, start=start, end=end, num_instances=N,
                                       loss=full["loss"][start:end], instance_sigma=full["instance_sigma"][start:end],
                                       **extra)
        assert path == run.snapshot_dir / f"epoch_0001.shard-{r:05d}-of-00003.npz"
        with np.load(path) as z:
            assert (int(z["start"]), int(z["end"]), int(z["num_instances"])) == (start, end, N)
            np.testing.assert_array_equal(z["instance_sigma"], full["instance_sigma"][start:end])
            assert ("class_sigma" in z.files) == (r == 0)
    assert sorted(p.name for p in run.snapshot_dir.iterdir()) == [f"epoch_0001.shard-{r:05d}-of-00003.npz"
                                                                  for r in range(3)]  # no temporary file left
    _assert_same(run.load_snapshot(1), full)
    with pytest.raises(ValueError, match="need 4 rows"):
        run.save_snapshot_shard(1, rank=1, world_size=3, start=6, end=10, num_instances=N, loss=np.zeros(3))


def test_truncate_after_drops_the_shard_files_of_later_epochs(tmp_path):
    run = RunDir(tmp_path / "run")
    for epoch in (1, 2, 3):
        _write_by_hand(run.snapshot_dir, epoch, _full(epoch))
    np.savez_compressed(run.snapshot_file(4), **_full(4))
    # The temporary file of a shard write that a kill interrupted, and a detection folder.
    (run.snapshot_dir / ".epoch_0003.shard-00001-of-00003.npz.abc123.tmp").write_bytes(b"half")
    (run.snapshot_dir / "detections_epoch_0002").mkdir()
    run.truncate_after(1)
    assert run.snapshot_epochs() == [1]
    assert sorted(p.name for p in run.snapshot_dir.iterdir()) == [
        "detections_epoch_0002", *(f"epoch_0001.shard-{r:05d}-of-00003.npz" for r in range(3))]
    _assert_same(run.load_snapshot(1), _full(1))


def test_moments_merge_to_the_statistics_of_the_concatenation():
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(0, 1.5, 1001)).astype(np.float32)
    for cuts in ([], [0, 0, 500], [1, 2, 3, 1000], sorted(rng.integers(0, 1001, 7).tolist())):
        parts = np.split(values, cuts)
        got = merge_moments([moments(p) for p in parts])
        x = values.astype(np.float64)
        want = {"mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()}
        assert got.keys() == sigma_stats(values).keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), k
    # Large values with a tiny spread, where E[x^2] - E[x]^2 would lose every digit.
    near = 1e4 + rng.normal(0, 1e-3, 500)
    got = merge_moments([moments(p) for p in np.split(near, [100, 300])])
    assert got["std"] == pytest.approx(near.std(), rel=1e-6)
    assert all(math.isnan(v) for v in merge_moments([moments(np.zeros(0))] * 2).values())


def test_sharded_sigma_stats_give_the_stats_of_all_ranks():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.05, 20, 50)
    corrupted = rng.random(50) < 0.3
    cuts = [(0, 17), (17, 34), (34, 50)]
    # The ranks' objects as an all-gather returns them, every rank's computed as that rank would.
    local = [{"all": moments(sigma[a:b]), "clean": moments(sigma[a:b][~corrupted[a:b]]),
              "corrupted": moments(sigma[a:b][corrupted[a:b]])} for a, b in cuts]
    for a, b in cuts:
        mine = None

        def gather(obj, a=a, b=b):
            nonlocal mine
            mine = obj
            return local

        stats = sharded_sigma_stats(sigma[a:b], corrupted[a:b], gather)
        assert mine == local[cuts.index((a, b))]
        want = sigma_stats(sigma)
        want["clean"], want["corrupted"] = sigma_stats(sigma[~corrupted]), sigma_stats(sigma[corrupted])
        assert stats.keys() == want.keys()
        for k in ("mean", "std", "min", "max"):
            assert stats[k] == pytest.approx(want[k], rel=1e-12)
            assert stats["clean"][k] == pytest.approx(want["clean"][k], rel=1e-12)
            assert stats["corrupted"][k] == pytest.approx(want["corrupted"][k], rel=1e-12)
    assert set(sharded_sigma_stats(sigma, None, lambda o: [o])) == {"mean", "std", "min", "max"}


def _sharded_objective(n: int) -> ShardedObjective:
    objective = ShardedObjective(K, n, ctx=DistributedContext(), class_curriculum=True)
    g = torch.Generator().manual_seed(0)
    objective.dp.instance_log_sigma.copy_(torch.randn(n, generator=g))
    objective.dp.class_log_sigma.copy_(torch.randn(K, generator=g))
    objective.last_loss.copy_(torch.rand(n, generator=g) * 3)
    objective.on_epoch_end(0)
    return objective


@pytest.mark.parametrize("noisy", [False, True])
def test_the_logger_writes_a_sharded_objectives_rows_and_gathers_only_for_known_noise(tmp_path, monkeypatch, noisy):
    n = 40
    objective = _sharded_objective(n)
    gathers = []
    original = objective.dp.gather_shard
    monkeypatch.setattr(objective.dp, "gather_shard", lambda *a, **k: gathers.append(1) or original(*a, **k))
    corrupted = np.zeros(n, dtype=bool)
    if noisy:
        corrupted[::4] = True
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    logger = RunLogger(run, objective, corrupted, lambda epoch: {"epoch": epoch}, epochs=1, quiet=True,
                       tensorboard=False)
    record = {"epoch": 1, "time_s": 0.1, "train_loss": 1.0, "train_acc": 50.0}
    logger.on_epoch_end(0, record)
    # Without known noise nothing is gathered; with it, the sigmas and the score buffers once each.
    assert len(gathers) == (2 if noisy else 0)
    assert [p.name for p in run.snapshot_dir.iterdir()] == ["epoch_0001.shard-00000-of-00001.npz"]
    sigma = objective.dp.instance_log_sigma.exp().numpy()
    snap = run.load_snapshot(1)
    assert sorted(snap) == ["class_sigma", "instance_sigma", "loss"]
    assert snap["instance_sigma"].dtype == np.float32 and snap["loss"].dtype == np.float16
    np.testing.assert_allclose(snap["instance_sigma"], sigma, rtol=1e-6)
    np.testing.assert_array_equal(snap["loss"], objective.last_loss.numpy().astype(np.float16))
    np.testing.assert_allclose(snap["class_sigma"], objective.dp.class_log_sigma.exp().numpy(), rtol=1e-6)
    (line,) = run.read_metrics()
    x = sigma.astype(np.float64)
    assert line["instance_sigma"]["mean"] == pytest.approx(x.mean(), rel=1e-6)
    assert line["instance_sigma"]["std"] == pytest.approx(x.std(), rel=1e-6)
    assert line["instance_sigma"]["max"] == pytest.approx(x.max(), rel=1e-6)
    assert line["class_sigma"] == sigma_stats(snap["class_sigma"])
    assert ("clean" in line["instance_sigma"]) == ("detection" in line) == noisy
    if noisy:
        assert line["instance_sigma"]["corrupted"]["mean"] == pytest.approx(x[corrupted].mean(), rel=1e-6)
    assert run.load_checkpoint()["epoch"] == 1
