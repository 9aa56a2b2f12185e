"""``dataparams train`` under torchrun (CPU, gloo) against the same command in one process.

The reference is the plain single-process command, whose path this package's tests pin
elsewhere (``tests/test_resume.py``). Two processes, in both layouts of the data parameters,
must end with the reference's sigma snapshots and test accuracy, and so must runs killed with
``kill -9`` of one process and resumed with another number of processes. The data are tiny
Fashion-MNIST IDX files; 301 training samples in batches of 64 make the last global batch 45
samples, split 23 / 22. Every process runs with one thread. A sharded run's snapshot is one file
per process per epoch: they are read back as the one-process snapshot, a resume drops those of
epochs after its checkpoint, a missing one is named, and find-issues ranks the run.

The one-process checks at the end (loader order, BatchNorm over the global batch, gradient
scaling, refusals) need no launcher.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fakes
from dataparams.build import validate_config
from dataparams.config import EXECUTION_FIELDS, ConfigError, apply_overrides, config_to_dict, diff_configs
from dataparams.distributed import (
    DistributedContext,
    FileShareLoader,
    GlobalBatchNorm,
    ShardedObjective,
    init_distributed,
    local_share,
    sync_batch_norm,
    wrap_model,
)
from dataparams.engine import Execution
from dataparams.experiment import check_distributable
from dataparams.objectives import DataParameterObjective
from dataparams.parameters import DataParameters
from dataparams.presets import get_preset
from dataparams.runs import RunDir
from fakes import write_idx

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or os.name != "posix",
                                reason="needs torch.distributed and SIGKILL")

N_TRAIN, BATCH = 301, 64
STEPS_PER_EPOCH = -(-N_TRAIN // BATCH)
KILL_AT = STEPS_PER_EPOCH + 2  # the second step of epoch 2, after epoch 1's checkpoint
ATOL = 1e-5  # float32 sums in another order; the measured differences are ~1e-7
TIMEOUT = 300

# A stand-in for `python -m dataparams` that SIGKILLs the process of rank R before its training
# step S when DP_TEST_KILL="R:S" (one process's "kill -9" at a known point of the run).
LAUNCHER = textwrap.dedent('''
    import os, signal, sys
    from dataparams import engine
    from dataparams.cli import main

    if os.environ.get("DP_TEST_KILL"):
        rank, step = (int(v) for v in os.environ["DP_TEST_KILL"].split(":"))
        if int(os.environ.get("RANK", "0")) == rank:
            original, steps = engine.Execution.backward_and_step, [0]

            def backward_and_step(self, loss, optimizers, **kwargs):
                steps[0] += 1
                if steps[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(self, loss, optimizers, **kwargs)

            engine.Execution.backward_and_step = backward_and_step
    if os.environ.get("DP_TEST_RAISE"):
        # An exception in one rank's step (as from a loader worker): the time it is raised is
        # written first, so that the test can measure how long the other ranks take to end.
        import time

        rank, step, stamp = os.environ["DP_TEST_RAISE"].split(":", 2)
        if int(os.environ.get("RANK", "0")) == int(rank):
            original, steps = engine.Execution.backward_and_step, [0]

            def backward_and_step(self, loss, optimizers, **kwargs):
                steps[0] += 1
                if steps[0] == int(step):
                    with open(stamp, "w") as f:
                        f.write(repr(time.time()))
                    raise RuntimeError(f"injected fault on rank {rank} at step {step}")
                return original(self, loss, optimizers, **kwargs)

            engine.Execution.backward_and_step = backward_and_step
    if os.environ.get("DP_TEST_LOADER_RAISE"):
        # An exception out of one rank's loader at its k-th batch (as a truncated image read by a
        # loader worker surfaces in the training loop), its time written first.
        import time

        from dataparams.data import memory

        rank, batch, stamp = os.environ["DP_TEST_LOADER_RAISE"].split(":", 2)
        if int(os.environ.get("RANK", "0")) == int(rank):
            original_iter = memory.InMemoryLoader.__iter__

            def loader_iter(self):
                for k, item in enumerate(original_iter(self), start=1):
                    if k == int(batch):
                        with open(stamp, "w") as f:
                            f.write(repr(time.time()))
                        raise OSError(f"injected loader fault on rank {rank} at batch {batch}: image file is truncated")
                    yield item

            memory.InMemoryLoader.__iter__ = loader_iter
    if os.environ.get("DP_TEST_KILL_COMMIT"):
        # Rank 0 SIGKILLs itself as it is about to commit epoch E's checkpoint: every process's
        # snapshot file and the metrics line of epoch E are written, its checkpoint is not.
        from dataparams.runs import rundir

        commit_epoch = int(os.environ["DP_TEST_KILL_COMMIT"])
        if int(os.environ.get("RANK", "0")) == 0:
            original_save = rundir.RunDir.save_checkpoint

            def save_checkpoint(self, state):
                if state["epoch"] == commit_epoch:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original_save(self, state)

            rundir.RunDir.save_checkpoint = save_checkpoint
    sys.exit(main(sys.argv[1:]))
''')



def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    # optim.lr=0.01 keeps the test accuracy of these easy images below 100% (60% and 84%), so
    # that its equality says something.
    return ["train", "--preset", "fmnist-noisy40/instance", "--epochs", "2", "--device", "cpu",
            "--data-dir", str(data), "--set", f"data.subset={N_TRAIN}", "--set", f"data.batch_size={BATCH}",
            "--set", "optim.lr=0.01", "--out", str(out), "--quiet", "--no-tensorboard", *extra]


def _launch_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a launched job: one thread per process, ``extra`` added, and
    none of the variables of a process group this test itself may run in."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _run(args: list[str], *, processes: int, launcher: Path | None = None, kill: str | None = None,
         fault: str | None = None, loader_fault: str | None = None, commit_kill: int | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    """``dataparams ARGS`` in one process, or under torchrun with ``processes`` processes."""
    entry = [str(launcher)] if launcher is not None else ["-m", "dataparams"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               *entry, *args]
    else:
        cmd = [sys.executable, *entry, *args]
    env = _launch_env()
    if kill is not None:
        env["DP_TEST_KILL"] = kill
    if fault is not None:
        env["DP_TEST_RAISE"] = fault
    if loader_fault is not None:
        env["DP_TEST_LOADER_RAISE"] = loader_fault
    if commit_kill is not None:
        env["DP_TEST_KILL_COMMIT"] = str(commit_kill)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def _two_nodes(args: list[str], logs: Path, *, launcher: Path | None = None, env_extra: dict[str, str] | None = None,
               stop_on_failure: bool = True, timeout: float = TIMEOUT) -> tuple[list[int | None], list[float], list[str]]:
    """``dataparams ARGS`` as a job of two nodes of one process each: two torchrun agents on this
    host (``--nnodes 2``, node ranks 0 and 1, a static rendezvous on localhost), so that both
    processes have ``LOCAL_RANK`` 0 and the job's ranks come from the node ranks. The run
    directory is on a file system both "nodes" share, as on a cluster's shared storage.

    Each node's output goes to a file (no pipe to fill). When either node fails
    (``stop_on_failure``) or the job outlives ``timeout``, the nodes still running are killed with
    their workers (a survivor would otherwise wait in a collective for the process group's
    timeout). Returns each node's exit code (None: killed), the time (``time.time()``) it was
    seen to end, and its output."""
    port = fakes.free_port()
    env = _launch_env(env_extra)
    entry = [str(launcher)] if launcher is not None else ["-m", "dataparams"]
    logs.mkdir(parents=True, exist_ok=True)
    files = [open(logs / f"node{node}.log", "w") for node in (0, 1)]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
                               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
                               *entry, *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                              start_new_session=True) for node, f in zip((0, 1), files)]
    ended = [math.nan, math.nan]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for i, n in enumerate(nodes):
                if n.poll() is not None and math.isnan(ended[i]):
                    ended[i] = time.time()
            if all(n.poll() is not None for n in nodes):
                break
            if stop_on_failure and any(n.poll() not in (None, 0) for n in nodes):
                break
            time.sleep(0.2)
    finally:
        codes: list[int | None] = [n.poll() for n in nodes]
        for n in nodes:
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
                n.wait()
        for f in files:
            f.close()
    return codes, ended, [(logs / f"node{i}.log").read_text() for i in (0, 1)]


def _run_two_nodes(args: list[str], logs: Path) -> None:
    """:func:`_two_nodes`, which must succeed on both nodes."""
    codes, _, outputs = _two_nodes(args, logs)
    if codes != [0, 0]:
        report = "\n".join(f"node {i} (exit {c}):\n{out[-3000:]}" for i, (c, out) in enumerate(zip(codes, outputs)))
        raise AssertionError(f"the two-node job failed or ran past {TIMEOUT} s:\n{report}")


def _killed_then_resumed(data: Path, out: Path, launcher: Path, extra: tuple[str, ...], *, first: int,
                         then: int) -> Path:
    """Train with ``first`` processes, kill -9 one of them in epoch 2, resume with ``then``."""
    args = _train_args(data, out, *extra)
    # Kill the last rank: under torchrun the others wait for it in a collective and torchrun
    # ends them; in one process the process itself is killed.
    killed = _run(args, processes=first, launcher=launcher, kill=f"{first - 1}:{KILL_AT}", check=False)
    assert killed.returncode != 0, "the run finished before it could be killed"
    assert len(RunDir(out).read_metrics()) == 1 and (out / "checkpoint.pt").exists()
    _run([*args, "--resume"], processes=then, launcher=launcher)
    return out


def _killed_at_commit(data: Path, out: Path, launcher: Path, *, then: int) -> tuple[Path, list[str]]:
    """Train sharded with 2 processes, kill -9 rank 0 as it is about to commit epoch 2's
    checkpoint, resume with ``then`` processes; the run and the snapshot files the kill left."""
    args = _train_args(data, out, "--set", "distributed.mode=sharded")
    killed = _run(args, processes=2, launcher=launcher, commit_kill=2, check=False)
    assert killed.returncode != 0, "the run finished before it could be killed"
    left = sorted(p.name for p in (out / "snapshots").iterdir())
    assert len(RunDir(out).read_metrics()) == 2 and RunDir(out).load_checkpoint()["epoch"] == 1
    _run([*args, "--resume"], processes=then, launcher=launcher)
    return out, left


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed_train")
    data = write_idx(tmp / "fmnist", n_train=400, n_test=100, seed=3)
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    sharded = ("--set", "distributed.mode=sharded")

    def plain(name: str, processes: int, *extra: str) -> Path:
        _run(_train_args(data, tmp / name, *extra), processes=processes)
        return tmp / name

    jobs = {
        "reference": lambda: plain("reference", 1),
        "replicated": lambda: plain("replicated", 2),
        "sharded": lambda: plain("sharded", 2, *sharded),
        "replicated_2_to_1": lambda: _killed_then_resumed(data, tmp / "r21", launcher, (), first=2, then=1),
        "replicated_1_to_2": lambda: _killed_then_resumed(data, tmp / "r12", launcher, (), first=1, then=2),
        "sharded_2_to_1": lambda: _killed_then_resumed(data, tmp / "s21", launcher, sharded, first=2, then=1),
        "sharded_1_to_2": lambda: _killed_then_resumed(data, tmp / "s12", launcher, sharded, first=1, then=2),
        # Three processes read three shards out of two (the middle one from both).
        "sharded_2_to_3": lambda: _killed_then_resumed(data, tmp / "s23", launcher, sharded, first=2, then=3),
        # Killed after epoch 2's snapshot files, before its checkpoint; resumed with 3 processes.
        "sharded_commit_2_to_3": lambda: _killed_at_commit(data, tmp / "sc23", launcher, then=3),
        # Two nodes of one process each (both LOCAL_RANK 0), sharded.
        "two_nodes": lambda: _run_two_nodes(_train_args(data, tmp / "two_nodes", *sharded), tmp / "two_nodes_logs")
        or tmp / "two_nodes",
        # Real data as far as the run knows: no label known to be corrupted, no detection metrics.
        "sharded_clean": lambda: plain("sharded_clean", 2, *sharded, "--set", "data.noise=none"),
    }
    # Two at a time: each job is mostly process start-up, and every process has one thread.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _assert_same_run(run: Path, reference: Path) -> None:
    """Sigma snapshots, per-sample losses and test accuracy of every epoch, the final model."""
    got, ref = RunDir(run), RunDir(reference)
    assert got.snapshot_epochs() == ref.snapshot_epochs() == [1, 2]
    for epoch in (1, 2):
        a, b = got.load_snapshot(epoch), ref.load_snapshot(epoch)
        assert sorted(a) == sorted(b) == ["instance_sigma", "loss"]
        np.testing.assert_allclose(a["instance_sigma"], b["instance_sigma"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(a["loss"].astype(np.float32), b["loss"].astype(np.float32), rtol=1e-2, atol=1e-3)
    ma, mb = got.read_metrics(), ref.read_metrics()
    assert [m["test_acc"] for m in ma] == [m["test_acc"] for m in mb]
    for a, b in zip(ma, mb):
        for key in ("train_loss", "train_acc", "train_acc_clean", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
        assert a["detection"]["auroc"] == pytest.approx(b["detection"]["auroc"], abs=1e-3)
    summary, ref_summary = got.read_json("summary.json"), ref.read_json("summary.json")
    assert summary["final_test_acc"] == ref_summary["final_test_acc"]
    # The final predictions over the training set, which each process made for its own share
    # (experiment.predict_training_set) and rank 0 gathered: the single process's, in its order.
    pa, pb = got.load_arrays("predictions.npz"), ref.load_arrays("predictions.npz")
    np.testing.assert_array_equal(pa["predicted"], pb["predicted"])
    assert (pa["predicted"] >= 0).all()  # every sample predicted
    for key in ("predicted_prob", "given_prob"):
        np.testing.assert_allclose(pa[key], pb[key], rtol=0, atol=1e-5, err_msg=key)
    state, ref_state = got.load_checkpoint(), ref.load_checkpoint()
    assert state["epoch"] == ref_state["epoch"] == 2
    for key, value in ref_state["model"].items():
        torch.testing.assert_close(state["model"][key], value, atol=ATOL, rtol=0, msg=key)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_equal_one_process(runs):
    _assert_same_run(runs["replicated"], runs["reference"])
    # Replicated checkpoints are single-process checkpoints: every per-sample buffer is there, but
    # for the class-probability sums, which only a single process keeps (ScoreTracker._OPTIONAL;
    # either checkpoint loads into either kind of run, tested by the 1 -> 2 and 2 -> 1 resumes).
    state, ref = RunDir(runs["replicated"]).load_checkpoint(), RunDir(runs["reference"]).load_checkpoint()
    assert {"prob_sum", "prob_count"} <= set(ref["objective"])
    assert set(state["objective"]) == set(ref["objective"]) - {"prob_sum", "prob_count"}
    for key in ("dp.instance_log_sigma", "last_loss", "loss_sum", "log_sigma_sum"):
        torch.testing.assert_close(state["objective"][key], ref["objective"][key], atol=ATOL, rtol=1e-5, msg=key)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_with_sharded_data_parameters_equal_one_process(runs):
    _assert_same_run(runs["sharded"], runs["reference"])
    shards = sorted(p.name for p in RunDir(runs["sharded"]).shard_dir.iterdir())
    # Two saves of two shards and a class file: the latest checkpoint's and the previous one's,
    # kept for a fall-back; every older save's files are gone.
    assert len(shards) == 6 and sum(n.startswith("shard-") for n in shards) == 4
    run = RunDir(runs["sharded"])
    manifest = run.load_checkpoint()["data_parameter_shards"]
    previous = torch.load(run.previous_checkpoint_file, weights_only=False)["data_parameter_shards"]
    for m in (manifest, previous):
        assert m["world_size"] == 2 and {s["file"] for s in m["shards"]} | {m["classes"]} <= set(shards)
    assert not {s["file"] for s in manifest["shards"]} & {s["file"] for s in previous["shards"]}


@pytest.mark.distributed
@pytest.mark.slow
def test_two_nodes_of_one_process_each_equal_one_process(runs):
    # A job launched as two nodes (two torchrun agents, node ranks 0 and 1) rather than two
    # processes of one node: ranks 0 and 1 both with LOCAL_RANK 0. Sharded, so that each rank
    # writes its own snapshot, checkpoint shard and prediction rows into the shared run directory.
    _assert_same_run(runs["two_nodes"], runs["reference"])
    assert _snapshot_files(runs["two_nodes"]) == _shard_names(1, 2) + _shard_names(2, 2)


def _snapshot_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "snapshots").iterdir())


def _shard_names(epoch: int, processes: int) -> list[str]:
    return [f"epoch_{epoch:04d}.shard-{r:05d}-of-{processes:05d}.npz" for r in range(processes)]


def _read_shards(run: Path, epoch: int, processes: int) -> list[dict[str, np.ndarray]]:
    out = []
    for name in _shard_names(epoch, processes):
        with np.load(run / "snapshots" / name) as z:
            out.append({k: z[k] for k in z.files})
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_a_sharded_run_writes_each_process_rows_of_the_snapshot(runs):
    """Each process writes its rows (shard_range) of every epoch's snapshot; no process writes a
    whole snapshot; the snapshot read back is the files' arrays concatenated (and, by
    test_two_processes_with_sharded_data_parameters_equal_one_process, the one-process run's)."""
    from dataparams.distributed import shard_range

    for name in ("sharded", "sharded_clean"):
        run = runs[name]
        assert _snapshot_files(run) == _shard_names(1, 2) + _shard_names(2, 2)
        for epoch in (1, 2):
            parts = _read_shards(run, epoch, 2)
            for r, part in enumerate(parts):
                assert (int(part["start"]), int(part["end"])) == shard_range(N_TRAIN, 2, r)
                assert int(part["num_instances"]) == N_TRAIN
                assert part["instance_sigma"].dtype == np.float32 and part["loss"].dtype == np.float16
            snap = RunDir(run).load_snapshot(epoch)
            assert sorted(snap) == ["instance_sigma", "loss"]
            for key in snap:
                np.testing.assert_array_equal(snap[key], np.concatenate([p[key] for p in parts]))


@pytest.mark.distributed
@pytest.mark.slow
def test_the_sigma_statistics_of_a_sharded_run_are_those_of_all_samples(runs):
    """The metrics line's instance_sigma statistics, reduced from the processes' moments, equal
    numpy's on the whole snapshot (split by labels.npz's corruption mask when the run knows it);
    the run without known noise has no detection metrics."""
    for name in ("sharded", "sharded_clean"):
        run = RunDir(runs[name])
        corrupted = run.load_arrays("labels.npz")["is_corrupted"].astype(bool)
        assert corrupted.any() == (name == "sharded")
        for line in run.read_metrics():
            sigma = run.load_snapshot(line["epoch"])["instance_sigma"].astype(np.float64)
            groups = {"": sigma}
            if corrupted.any():
                groups.update(clean=sigma[~corrupted], corrupted=sigma[corrupted])
                assert line["detection"]["auroc"] > 0.5
            else:
                assert not any(k.startswith("detection") for k in line)
                assert set(line["instance_sigma"]) == {"mean", "std", "min", "max"}
            for group, values in groups.items():
                stats = line["instance_sigma"][group] if group else line["instance_sigma"]
                want = {"mean": values.mean(), "std": values.std(), "min": values.min(), "max": values.max()}
                for k, v in want.items():
                    assert stats[k] == pytest.approx(v, rel=1e-9), (name, group, k)


@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.slow
def test_a_resume_drops_the_snapshot_files_of_epochs_after_its_checkpoint(runs):
    """Killed after every process wrote epoch 2's snapshot file, before the checkpoint: the
    resume (3 processes) drops the 2 files of epoch 2 and writes its own 3; the run ends as the
    one-process one. Runs killed in epoch 2 and resumed with another number of processes hold
    epoch 1's files as first written and epoch 2's of the resumed processes."""
    run, left = runs["sharded_commit_2_to_3"]
    assert left == _shard_names(1, 2) + _shard_names(2, 2)
    assert _snapshot_files(run) == _shard_names(1, 2) + _shard_names(2, 3)
    _assert_same_run(run, runs["reference"])
    for name, first, then in (("sharded_2_to_1", 2, 1), ("sharded_1_to_2", 1, 2), ("sharded_2_to_3", 2, 3)):
        assert _snapshot_files(runs[name]) == _shard_names(1, first) + _shard_names(2, then), name


@pytest.mark.distributed
@pytest.mark.slow
def test_find_issues_ranks_a_sharded_run(runs, tmp_path, capsys):
    from dataparams.cli import main

    run = runs["sharded"]
    assert main(["find-issues", str(run), "--out", str(tmp_path / "issues")]) == 0
    assert "scored by sigma at epoch 2" in capsys.readouterr().out
    with open(tmp_path / "issues" / "issues.csv") as f:
        rows = list(csv.DictReader(f))
    sigma = np.concatenate([p["instance_sigma"] for p in _read_shards(run, 2, 2)]).astype(np.float64)
    assert [int(r["rank"]) for r in rows] == list(range(1, N_TRAIN + 1))
    order = np.array([int(r["index"]) for r in rows])
    assert sorted(order.tolist()) == list(range(N_TRAIN))
    assert np.all(np.diff(sigma[order]) <= 0)  # most suspect (highest sigma) first


@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.slow
def test_a_deleted_snapshot_shard_file_is_named(runs, tmp_path, capsys):
    """Rank 1's file of epoch 2 deleted: reading epoch 2 names it; the analysis goes on with
    epoch 1 and says why."""
    from dataparams.analysis.runs_io import load_run
    from dataparams.cli import main
    from dataparams.runs import RunDirError

    run = tmp_path / "run"
    shutil.copytree(runs["sharded"], run)
    gone = run / "snapshots" / "epoch_0002.shard-00001-of-00002.npz"
    gone.unlink()
    with pytest.raises(RunDirError, match=f"{re.escape(str(gone))} is missing"):
        RunDir(run).load_snapshot(2)
    loaded = load_run(run)
    assert loaded.last_snapshot("instance_sigma")[0] == 1
    assert any(str(gone) in w for w in loaded.warnings)
    assert main(["find-issues", str(run), "--out", str(tmp_path / "issues")]) == 0
    out = capsys.readouterr().out
    assert "scored by sigma at epoch 1" in out and f"{gone} is missing" in out


@pytest.mark.parametrize("name", ["replicated_2_to_1", "replicated_1_to_2", "sharded_2_to_1", "sharded_1_to_2",
                                  "sharded_2_to_3"])
@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.slow
def test_kill_minus_9_then_resume_with_another_number_of_processes(runs, name):
    _assert_same_run(runs[name], runs["reference"])


@pytest.mark.distributed
@pytest.mark.slow
def test_a_checkpoint_resumes_only_in_its_own_layout(runs, tmp_path):
    # distributed.mode is an execution field (it does not change the result), but a sharded
    # checkpoint holds its instance rows in shard files: resuming it replicated is refused.
    copy = tmp_path / "copy"
    shutil.copytree(runs["sharded_1_to_2"], copy)
    data = json.loads((copy / "config.json").read_text())["data"]["data_dir"]
    proc = _run(_train_args(Path(data), copy, "--resume"), processes=1, check=False)
    assert proc.returncode == 2 and "distributed.mode=sharded" in proc.stderr


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes, but the lock file (which holds the pid of
    the last process that took the lock)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _damaged_copy(runs, tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A copy of the finished 2-process sharded run with rank 1's shard of the latest checkpoint
    deleted, cut in half or with one byte flipped; the copy and the shard."""
    run = tmp_path / "run"
    shutil.copytree(runs["sharded"], run)
    manifest = RunDir(run).load_checkpoint()["data_parameter_shards"]
    shard = RunDir(run).shard_dir / manifest["shards"][1]["file"]
    data = shard.read_bytes()
    if how == "delete":
        shard.unlink()
    elif how == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:
        shard.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    return run, shard


@pytest.mark.parametrize(("how", "what"), [("truncate", "is truncated"), ("flip", "is damaged: its SHA-256"),
                                           ("delete", "is missing")])
@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.slow
def test_a_damaged_shard_stops_a_resume_on_every_rank_naming_the_file(runs, tmp_path, how, what):
    """Rank 1's shard file damaged: a 2-process resume ends on both ranks -- rank 0, whose own
    files are good, too -- within seconds with one message naming the file and what to do, and
    the run directory is left as it was."""
    import time

    run, shard = _damaged_copy(runs, tmp_path, how)
    before = _files(run)
    data = Path(json.loads((run / "config.json").read_text())["data"]["data_dir"])
    began = time.perf_counter()
    proc = _run(_train_args(data, run, "--set", "distributed.mode=sharded", "--resume"), processes=2, check=False)
    took = time.perf_counter() - began
    print(f"the resume ended after {took:.1f} s")
    assert proc.returncode != 0
    # Each rank prints its "error: ..." line: the same message twice. The two processes share one
    # stderr, so their lines can arrive glued together: the messages are cut out by their text
    # (from "error: " to the advice's last words), not by line.
    messages = re.findall(r"error: the sharded checkpoint .*?one epoch earlier", proc.stderr)
    assert len(messages) == 2 and messages[0] == messages[1], proc.stderr[-3000:]
    message = messages[0]
    assert f"{shard} {what}" in message
    assert "checkpoint.prev.pt" in message and "--resume" in message
    assert took < 60  # start-up included; a rank left waiting would wait for the collective timeout (30 min)
    assert _files(run) == before
    RunDir(run).lock()  # released


@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.slow
def test_a_run_with_a_damaged_shard_resumes_from_the_previous_checkpoint_as_the_error_says(runs, tmp_path):
    run, _ = _damaged_copy(runs, tmp_path, "flip")
    (run / "checkpoint.pt").rename(run / "checkpoint.damaged.pt")
    data = Path(json.loads((run / "config.json").read_text())["data"]["data_dir"])
    proc = _run(_train_args(data, run, "--set", "distributed.mode=sharded", "--resume"), processes=2)
    assert "resumed from checkpoint.prev.pt" in proc.stdout + proc.stderr
    _assert_same_run(run, runs["reference"])


# ---- one process ------------------------------------------------------------------------------


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3, i


def test_file_share_loader_yields_the_shares_of_the_file_loaders_batches():
    from dataparams.data.loaders import FileLoader

    single = FileLoader(_Items(), batch_size=8, shuffle=True, workers=0, seed=4, device=torch.device("cpu"))
    shares = [FileShareLoader(_Items(), batch_size=8, seed=4, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 2):
        for loader in (single, *shares):
            loader.set_epoch(epoch)
        batches = list(single)
        assert len(batches) == len(shares[0]) == 5
        for (_, _, index), *parts in zip(batches, *shares):
            assert [p[2].tolist() for p in parts] == [local_share(index, r, 3).tolist() for r in range(3)]


def _bn_worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with init_distributed("cpu", timeout=timedelta(seconds=60)) as ctx:
        model = sync_batch_norm(_bn_model(), ctx)
        assert sum(isinstance(m, GlobalBatchNorm) for m in model.modules()) == 2
        torch.save(_bn_train(wrap_model(model, ctx), model, lambda t: local_share(t, rank, world_size),
                             world_size), Path(out) / f"bn{rank}.pt")


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
                         nn.BatchNorm1d(6, momentum=None), nn.Linear(6, 3))


def _bn_train(net: nn.Module, model: nn.Module, share, world_size: int) -> dict:
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for size in (11, 8, 5):  # uneven shares of 6/5, 4/4, 3/2
        x, y = torch.randn(size, 2, 6, 6, generator=g) * 3 + 1, torch.randint(0, 3, (size,), generator=g)
        per_sample = nn.functional.cross_entropy(net(share(x)), share(y), reduction="none")
        # The weighting of dataparams.distributed.distributed_loss: (P / B) * sum over the share.
        (per_sample.sum() * world_size / size).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    x = torch.randn(4, 2, 6, 6, generator=g)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "eval": model(x).detach()}


@pytest.mark.distributed
def test_global_batch_norm_gives_the_single_process_training():
    model = _bn_model()
    reference = _bn_train(model, model, lambda t: t, 1)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_bn_worker, args=(2, fakes.free_port(), tmp), nprocs=2, join=True)
        ranks = [torch.load(Path(tmp) / f"bn{r}.pt", weights_only=False) for r in range(2)]
    for got in ranks:
        for key, value in reference["state"].items():
            torch.testing.assert_close(got["state"][key].double(), value.double(), atol=1e-5, rtol=1e-5, msg=key)
        torch.testing.assert_close(got["eval"], reference["eval"], atol=1e-5, rtol=1e-5)


def test_sharded_objective_matches_the_objective_step_by_step():
    # The same steps through DataParameterObjective + SparseSGD and through ShardedObjective
    # (P = 1, under a gradient scaler) as the engine drives them, the joint curriculum and both
    # regularisers included.
    options = dict(lr_class=0.3, lr_instance=2.0, momentum=0.9, wd_class=0.01, wd_instance=0.02)
    dp = DataParameters(4, 30, class_curriculum=True, instance_curriculum=True, clamp=(0.5, 2.0))
    plain = DataParameterObjective(dp, **options)
    sharded = ShardedObjective(4, 30, ctx=DistributedContext(), class_curriculum=True, clamp=(0.5, 2.0), **options)
    scaled = Execution(torch.device("cpu"), scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        for objective in (plain, sharded):
            objective.on_epoch_start(epoch)
        for _ in range(4):
            index = torch.randperm(30, generator=g)[:7]
            y, logits = index % 4, torch.randn(7, 4, generator=g)
            for objective, execution in ((plain, Execution(torch.device("cpu"))), (sharded, scaled)):
                for opt in objective.optimizers().values():
                    opt.zero_grad()
                z = logits.clone().requires_grad_(True)
                loss, per_sample = objective(z, z, y, index)
                execution.backward_and_step(loss, list(objective.optimizers().values()))
                objective.record(index, per_sample)
        for objective in (plain, sharded):
            objective.on_epoch_end(epoch)
    torch.testing.assert_close(sharded.dp.instance_log_sigma, plain.dp.instance_log_sigma.detach())
    torch.testing.assert_close(sharded.dp.class_log_sigma, plain.dp.class_log_sigma.detach())
    np.testing.assert_allclose(sharded.snapshot()["instance_sigma"], plain.snapshot()["instance_sigma"], rtol=1e-6)
    for key, values in plain.scores().items():
        np.testing.assert_allclose(sharded.scores()[key], values, rtol=1e-6, err_msg=key)
    # A step whose gradients are not finite is skipped by the scaler, on the sharded update too.
    before, scale = sharded.dp.instance_log_sigma.clone(), scaled.scaler.get_scale()
    index = torch.arange(5)
    z = torch.randn(5, 4, generator=g).requires_grad_(True)
    loss, _ = sharded(z, z, index % 4, index)
    for opt in sharded.optimizers().values():
        opt.zero_grad()
    scaled.backward_and_step(loss * float("inf"), list(sharded.optimizers().values()))
    assert torch.equal(sharded.dp.instance_log_sigma, before) and scaled.scaler.get_scale() < scale


def test_peer_methods_and_bad_modes_are_refused():
    cfg = apply_overrides(get_preset("fmnist-noisy40/baseline"), ["method=coteaching"])
    with pytest.raises(ConfigError, match="small-loss"):
        check_distributable(cfg)
    check_distributable(get_preset("fmnist-noisy40/instance"))
    with pytest.raises(ConfigError, match="distributed.mode"):
        validate_config(apply_overrides(get_preset("fmnist-noisy40/instance"), ["distributed.mode=ring"]))
    with pytest.raises(ConfigError, match="instance_curriculum"):
        validate_config(apply_overrides(get_preset("fmnist-noisy40/class"), ["distributed.mode=sharded"]))


def test_configs_without_the_distributed_section_still_resume():
    # A run directory written before distributed.mode existed holds the same run.
    new = config_to_dict(get_preset("fmnist-noisy40/instance"))
    old = {k: v for k, v in new.items() if k != "distributed"}
    assert diff_configs(old, new) == ["distributed.mode", "distributed.timeout_min"]
    assert {"distributed.mode", "distributed.timeout_min"} <= set(EXECUTION_FIELDS)


def test_file_share_loader_gives_an_empty_share_in_a_short_last_batch():
    """37 samples in global batches of 6 over 2 ranks: the last batch holds one sample, so rank 1
    gets an empty batch there (with the shapes of the others), where a refusal used to ask for a
    drop_last that no option sets."""
    from dataparams.data.loaders import FileLoader

    single = FileLoader(_Items(), batch_size=6, shuffle=True, workers=0, seed=4, device=torch.device("cpu"))
    shares = [FileShareLoader(_Items(), batch_size=6, seed=4, rank=r, world_size=2) for r in range(2)]
    for loader in (single, *shares):
        loader.set_epoch(1)
    batches = list(single)
    parts = [list(s) for s in shares]
    assert len(batches) == len(parts[0]) == len(parts[1]) == 7
    for (x, _, index), a, b in zip(batches, *parts):
        assert torch.equal(torch.cat([a[2], b[2]]), index) and torch.equal(torch.cat([a[0], b[0]]), x)
    last = parts[1][-1]
    assert last[0].shape == (0, 1) and last[1].shape == (0,) and last[2].shape == (0,)


@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.parametrize("where, message", [("step", "injected fault on rank 1 at step 3"),
                                            ("loader", "injected loader fault on rank 1 at batch 3")])
def test_an_exception_on_one_rank_ends_every_rank_within_seconds_with_its_message(tmp_path, where, message):
    """A raise in rank 1's step, or out of its loader (its 3rd batch, as a truncated image read by a
    loader worker), under torchrun (2 gloo processes): the job ends -- rank 0 too, which was
    waiting for rank 1 in a collective -- well within 30 s of the raise, not after the collective
    timeout, with the message in the job's output; nothing of the epoch committed, the lock released."""
    import time

    data = write_idx(tmp_path / "fmnist", n_train=400, n_test=100, seed=3)
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    stamp = tmp_path / "raised_at"
    out = tmp_path / "run"
    fault = {"fault" if where == "step" else "loader_fault": f"1:3:{stamp}"}
    proc = _run(_train_args(data, out), processes=2, launcher=launcher, check=False, **fault)
    ended = time.time()
    assert proc.returncode != 0
    assert message in proc.stderr
    after = ended - float(stamp.read_text())
    print(f"the job ended {after:.1f} s after the raise")
    assert after < 30
    # Nothing was committed for the unfinished epoch; the lock was released with the processes.
    assert not (out / "checkpoint.pt").exists()
    RunDir(out).lock()


@pytest.mark.distributed
@pytest.mark.faults
def test_an_exception_on_one_node_ends_both_nodes_within_seconds_with_its_message(tmp_path):
    """The same raise (rank 1's step 3) in a job of two nodes (two torchrun agents, one process
    each): node 0's process learns of it only through its collective failing (gloo's closed
    connection), so both nodes must end well within 30 s of the raise, not after the collective
    timeout, and node 0's log must name rank 1's message too (``distributed.first_failure``);
    nothing of the epoch committed."""
    data = write_idx(tmp_path / "fmnist", n_train=400, n_test=100, seed=3)
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    stamp = tmp_path / "raised_at"
    out = tmp_path / "run"
    codes, ended, outputs = _two_nodes(_train_args(data, out), tmp_path / "logs", launcher=launcher,
                                       env_extra={"DP_TEST_RAISE": f"1:3:{stamp}"}, stop_on_failure=False,
                                       timeout=120)
    assert codes[0] not in (None, 0) and codes[1] not in (None, 0), (codes, outputs)
    raised = float(stamp.read_text())
    after = [t - raised for t in ended]
    print(f"node 0 ended {after[0]:.1f} s, node 1 {after[1]:.1f} s after the raise")
    assert max(after) < 30
    for output in outputs:
        assert "injected fault on rank 1 at step 3" in output
    assert not (out / "checkpoint.pt").exists()
    RunDir(out).lock()
