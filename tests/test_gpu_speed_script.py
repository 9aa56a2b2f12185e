"""benchmarks/gpu_speed.py in CI size on the CPU: the table it prints, and its acceptance bounds.

The script is meant for one short call on a GPU; here it runs with two cheap models of the
project's builder (``resnet18`` and ``small_cnn``: WRN-28-10 costs seconds a step on a CPU), two
batch sizes, one step per loop and round and no channels-last (slower for ResNet-18 on this CPU),
so that every part of the table is produced and parsed in about 15 s.
"""

import importlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_speed.py"
KINDS = ("(a) reference", "(b) data parameters", "(c) engine")


def _rows(text: str, first: str) -> list[list[str]]:
    """The cells of the Markdown rows of the table whose header starts with ``| first |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.mark.slow
def test_the_script_runs_on_the_cpu_and_prints_every_row(tmp_path):
    out = tmp_path / "gpu_speed.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--models", "resnet18", "small_cnn", "--batch", "2", "3",
         "--steps", "1", "--warmup", "0", "--repeats", "2", "--no-channels-last", "--train-size", "64", "--dp-sizes", "1000", "5e4",
         "--dp-batch", "16", "--dp-iters", "3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert out.read_text() == text  # emit(): printed, and written with --out

    header = text.splitlines()[0]
    assert "CPU" in header and "torch " in header

    speed = _rows(text, "model")
    seen = Counter((r[0], int(r[1]), r[2]) for r in speed)
    assert seen == Counter({(m, b, k): 1 for m in ("resnet18", "small_cnn") for b in (2, 3) for k in KINDS})
    for model, batch, kind, ips, ratio, memory in speed:
        assert _number(ips) > 0, (model, batch, kind)
        assert _number(ratio) > 0
        if kind == KINDS[0]:
            assert _number(ratio) == 1.0
        assert _number(memory.split()[0]) > 0  # the process's max RSS on the CPU

    updates = _rows(text, "data-parameter update")
    assert {(r[0].split(":")[0].split(" (")[0], _number(r[1]), int(r[2])) for r in updates} == {
        (what, n, 16) for what in ("gather_rows + SparseSGD.step", "DataParameters joint")
        for n in (1000, 50_000)}
    assert all(_number(r[3]) > 0 for r in updates)

    syncs = _rows(text, "host syncs per steady-state step")
    assert {(r[1], r[2]) for r in syncs} == {(m, k) for m in ("resnet18", "small_cnn") for k in KINDS}
    for row in syncs:
        assert row[0] == "host syncs"
        assert re.fullmatch(r"-?\d+", row[3]), row  # whatever the count is, an integer
        assert row[5] == "n/a (not CUDA)"  # set_sync_debug_mode is CUDA's


@pytest.fixture
def gpu_speed(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_speed")


def _passing(m):
    speeds, syncs = [], []
    for model in ("wrn28_10", "resnet18"):
        for batch in (128, 512):
            for kind, ratio in zip(KINDS, (1.0, 0.99, 0.96)):
                speeds.append(m.Speed(model, batch, kind, ips=[1000.0 * ratio], ratio=[ratio]))
        syncs += [m.SyncCount(model, kind, 0, cuda=0) for kind in KINDS]
    updates = [m.Update("gather_rows + SparseSGD.step (gpu_check.py)", n, 128, 0.05)
               for n in (50_000, 10_000_000)]
    return speeds, updates, syncs


def test_the_bounds_pass_and_each_failure_is_named(gpu_speed):
    m = gpu_speed
    models, batches = ["wrn28_10", "resnet18"], [128, 512]
    speeds, updates, syncs = _passing(m)
    assert m.check_bounds(speeds, updates, syncs, models, batches) == []

    speeds[1].ratio = [0.97]  # wrn28_10 batch 128, (b)/(a) below 0.98
    updates[1].median_ms = 0.2  # N = 1e7 above 0.1 ms
    syncs[2].counted, syncs[2].calls = 1, Counter({"Tensor.tolist": 1})  # wrn28_10 (c)
    syncs[4].cuda, syncs[4].where = 2, Counter({"src/dataparams/optim.py:1": 2})  # resnet18 (b)
    fails = m.check_bounds(speeds, updates, syncs, models, batches)
    assert len(fails) == 4, fails
    assert any("wrn28_10 batch 128: (b) data parameters / (a) = 0.970 < 0.98" in f for f in fails)
    assert any("N = 1e+07" in f and "0.200 ms > 0.1 ms" in f for f in fails)
    assert any("wrn28_10 (c) engine: 1 host sync(s)" in f and "Tensor.tolist x1" in f for f in fails)
    assert any("resnet18 (b) data parameters: 2 synchronizing CUDA" in f for f in fails)


def test_a_bound_not_measured_fails(gpu_speed):
    m = gpu_speed
    speeds, updates, syncs = _passing(m)
    fails = m.check_bounds(speeds, updates[:1], [s for s in syncs if s.model != "resnet18"],
                           ["wrn28_10", "resnet18"], [128, 512])
    assert any("not measured (add it to --dp-sizes)" in f for f in fails)
    assert any(f == "host syncs of resnet18 (b) data parameters not measured" for f in fails)
    cpu_counts = [m.SyncCount(s.model, s.kind, 0) for s in syncs]  # no CUDA count
    fails = m.check_bounds(speeds, updates, cpu_counts, ["wrn28_10", "resnet18"], [128, 512])
    assert fails and all("CUDA sync-debug count not measured" in f for f in fails)


def test_check_on_the_cpu_says_it_checks_nothing(gpu_speed, capsys):
    rc = gpu_speed.main(["--device", "cpu", "--models", "small_cnn", "--batch", "2", "--steps", "1", "--warmup", "0",
                         "--train-size", "8", "--dp-sizes", "100", "--dp-iters", "1", "--check"])
    assert rc == 2
    assert "the bounds are for CUDA; nothing is checked on cpu" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:(called a synchronizing|something else):UserWarning")
def test_sync_counts_per_step_with_the_cuda_path_faked(gpu_speed, monkeypatch):
    # The CUDA-only half (set_sync_debug_mode warnings) with the device calls replaced: warnings
    # are counted by their text and calling line, the mode is put back, and the engine's count
    # is its two-step run minus its one-step run, for both counters.
    import warnings

    import torch

    m = gpu_speed
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(m, "_sync", lambda device: None)
    x = torch.arange(3.0)

    def step(reads):
        for _ in range(reads):
            x.sum().item()
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        warnings.warn("something else", stacklevel=1)

    def count_step(batch, counter):  # like the engine: 1 read at the end of each run
        one = counter(lambda: step(1 + 1))
        two = counter(lambda: step(1 + 2))
        return two - one

    loop = m.Loop("(c) engine", run=lambda n, b: None, release=lambda: None, count_step=count_step)
    got = m._syncs_of(loop, "resnet18", 8, torch.device("cuda"))
    assert (got.counted, got.calls, got.cuda) == (1, Counter({"Tensor.item": 1}), 1)
    assert len(got.where) == 1 and next(iter(got.where)).startswith("tests/test_gpu_speed_script.py:")
    assert modes == ["warn", "default", "warn", "default"]
