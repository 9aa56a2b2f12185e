"""One short script for a machine with a CUDA GPU: the paths the CPU machines cannot check.

    python benchmarks/gpu_check.py [--data-dir DIR] [--out gpu_check.md]

1. SparseSGD on CUDA equals SparseSGD on the CPU (worked example, random sparse steps with
   repeated rows, clamping), also under ``torch.use_deterministic_algorithms(True)``.
2. Data-parameter update time on CUDA at N = 1e7 (median, synchronised).
3. One short training run per mode -- float32, ``--amp fp16`` (gradient scaler), ``--amp bf16``
   and ``--deterministic`` -- on Fashion-MNIST with 40% noise: test accuracy above 50% and the
   sigma ranking's AUROC above 0.8 (the temperatures have learned).
4. The detector with per-box data parameters (``kitti-synth/instance``, 2 epochs on a small
   synthetic set) in float32 and under ``--amp fp16``: box sigma moved and the AP is computed
   (after 2 epochs it is near 0; only that the evaluation runs is checked).
5. The real command under ``torchrun --nproc-per-node 2`` with NCCL (replicated and sharded)
   against the same command in one CUDA process: test accuracy within 1 point, median |d sigma|
   at the last epoch below 0.01 (the CPU comparison, ``compare_torchrun.py``, measures 1e-3). A
   second one-process run is shown next to them for the distance that non-deterministic CUDA
   sums alone make.
   Needs two GPUs: NCCL refuses two ranks on one GPU ("Duplicate GPU detected", seen with NCCL
   2.28.9 on a one-GPU H200), so a one-GPU machine reports the check as not run.
6. Every bench method (``python benchmarks/bench.py --device cuda``), one cell at 40% uniform noise,
   2 epochs: each cell finishes with status ok (cleanlab needs its package installed).

Prints a Markdown table; exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _table import emit
from dataparams import SparseSGD
from dataparams.parameters import gather_rows


def _steps(device: torch.device, deterministic: bool) -> torch.Tensor:
    torch.use_deterministic_algorithms(deterministic)
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(1000, device=device))
    opt = SparseSGD([p], lr=0.5, momentum=0.9, bounds=(-1.0, 1.0))
    for _ in range(50):
        rows = torch.randint(0, 1000, (128,), generator=g).to(device)
        coef = torch.randn(128, generator=g).to(device)
        opt.zero_grad()
        (gather_rows(p, rows).exp() * coef).sum().backward()
        opt.step()
    torch.use_deterministic_algorithms(False)
    return p.detach().cpu()


def _run(cmd: list[str], timeout: int, **kw: object) -> tuple[str | None, float]:
    """Run ``cmd``; (None, wall) when it succeeded, else (why it failed, for a table cell, wall)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        return f"still running after {timeout}s", time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if proc.returncode == 0:
        return None, wall
    return f"exit {proc.returncode}: " + " / ".join(proc.stderr.strip().splitlines()[-3:]).replace("|", "/")[:300], wall


def _torchrun_rows(data_dir: str | None, epochs: int) -> tuple[list[str], bool]:
    """Section 5: one CUDA process (twice) against two NCCL processes, replicated and sharded."""
    from compare_torchrun import _load  # the same reading of a run as the CPU comparison

    preset = "fmnist-noisy40/instance"
    if torch.cuda.device_count() < 2:
        return [f"| torchrun 2 ranks NCCL | not run: {torch.cuda.device_count()} GPU (NCCL refuses two ranks on one "
                "GPU) | n/a |"], True
    tail = ["-m", "dataparams", "train", "--preset", preset, "--epochs", str(epochs), "--device", "auto",
            "--quiet", "--no-tensorboard"] + (["--data-dir", data_dir] if data_dir else [])
    one = [sys.executable] + tail
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] + tail
    runs = {"1 process": one, "1 process, again": one, "torchrun 2 ranks NCCL, replicated": two,
            "torchrun 2 ranks NCCL, sharded": two + ["--set", "distributed.mode=sharded"]}
    rows, ok, ref = [], True, None
    with tempfile.TemporaryDirectory() as work:
        for i, (name, cmd) in enumerate(runs.items()):
            out = Path(work) / f"run{i}"
            err, wall = _run(cmd + ["--out", str(out)], 300, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if err is not None:
                rows.append(f"| {name}, {epochs} epochs | {err} | FAIL |")
                if ref is None:  # nothing to compare the others with
                    return rows, False
                ok = False
                continue
            sigmas, acc = _load(out, epochs)
            sigma = sigmas[-1]
            if ref is None:
                ref = (sigma, acc)
                rows.append(f"| {name}, {epochs} epochs (reference) | test {acc:.2f}%, {wall:.1f}s | info |")
                continue
            d = np.abs(sigma - ref[0])
            good = bool(np.isfinite(sigma).all()) and abs(acc - ref[1]) <= 1.0 and float(np.median(d)) < 0.01
            ok &= good
            rows.append(f"| {name}, {epochs} epochs, vs reference | test {acc:.2f}%, median abs d sigma "
                        f"{np.median(d):.2e}, max {d.max():.2e}, {wall:.1f}s | {'ok' if good else 'FAIL'} |")
    return rows, ok


def _bench_rows(data_dir: str | None, epochs: int) -> tuple[list[str], bool]:
    """Section 6: one cell of every bench method on CUDA."""
    import json

    from dataparams.methods.registry import METHODS

    spec = {"base": "fmnist-noisy40", "methods": list(METHODS), "grid": [["uniform", 0.4, [1]]],
            "overrides": ["data.val_fraction=0.1", f"optim.epochs={epochs}"] +
            ([f"data.data_dir={data_dir}"] if data_dir else [])}
    rows, ok = [], True
    with tempfile.TemporaryDirectory() as work:
        Path(work, "spec.json").write_text(json.dumps(spec))
        err, wall = _run([sys.executable, str(Path(__file__).with_name("bench.py")), "--spec", f"{work}/spec.json", "--out",
                          f"{work}/bench", "--stage", "grid", "--device", "cuda", "--quiet"], 600)
        if err is not None:
            return [f"| bench, every method, CUDA | {err} | FAIL |"], False
        cells = json.loads(Path(work, "bench", "results.json").read_text())["cells"]
        for key, res in cells.items():
            good = res["status"] == "ok" and res.get("final_test_acc") is not None
            ok &= good
            what = (f"test {res['final_test_acc']:.2f}%, {res.get('trainings', '?')} training(s)" if good
                    else f"{res['status']}: {str(res.get('error', ''))[:200]}".replace("|", "/"))
            rows.append(f"| bench cell {key}, {epochs} epochs, CUDA | {what} | {'ok' if good else 'FAIL'} |")
    rows.append(f"| bench, {len(cells)} cells | {wall:.1f}s | info |")
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 2
    cuda = torch.device("cuda")
    rows, ok = [], True

    cpu = _steps(torch.device("cpu"), False)
    for det in (False, True):
        got = _steps(cuda, det)
        same = torch.allclose(cpu, got, rtol=1e-5, atol=1e-6)
        ok &= same
        rows.append(f"| SparseSGD CUDA == CPU (deterministic={det}) | max abs diff {float((cpu - got).abs().max()):.2e} | {'ok' if same else 'FAIL'} |")

    n = 10_000_000
    p = torch.nn.Parameter(torch.zeros(n, device=cuda))
    opt = SparseSGD([p], lr=0.1, momentum=0.9)
    times = []
    for i in range(220):
        idx = torch.randint(0, n, (128,), device=cuda)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        gather_rows(p, idx).sum().backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= 20:
            times.append(time.perf_counter() - t0)
    rows.append(f"| data-parameter update on CUDA, N = 1e7, B = 128 | median {1e3 * statistics.median(times):.3f} ms | info |")

    from dataparams.config import apply_overrides
    from dataparams.experiment import train
    from dataparams.presets import get_preset

    for label, kw in (("float32", {}), ("amp fp16", {"amp": "fp16"}), ("amp bf16", {"amp": "bf16"}),
                      ("deterministic", {"deterministic": True})):
        cfg = apply_overrides(get_preset("fmnist-noisy40/instance"), [f"optim.epochs={args.epochs}"] +
                              ([f"data.data_dir={args.data_dir}"] if args.data_dir else []))
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = train(cfg, d, device="cuda", quiet=True, tensorboard=False, **kw)
            wall = time.perf_counter() - t0
        good = s["final_test_acc"] is not None and s["final_test_acc"] > 50 and s["detection"]["auroc"] > 0.8
        ok &= good
        rows.append(f"| train fmnist-noisy40/instance, {args.epochs} epochs, {label} | test {s['final_test_acc']:.2f}%, "
                    f"sigma AUROC {s['detection']['auroc']:.3f}, {wall:.1f}s | {'ok' if good else 'FAIL'} |")
        torch.use_deterministic_algorithms(False)

    from dataparams.detection.presets import get_detection_preset, train_detection
    from dataparams.detection.synthetic import SyntheticKittiConfig, write_synthetic_kitti

    with tempfile.TemporaryDirectory() as root:
        write_synthetic_kitti(root, SyntheticKittiConfig(num_images=96, val_fraction=0.25, seed=0),
                             fashion_mnist_root=args.data_dir)
        for label, amp in (("float32", "off"), ("amp fp16", "fp16")):
            cfg = get_detection_preset("kitti-synth/instance", root=root)
            cfg.optim.epochs, cfg.eval_every = 2, 1
            with tempfile.TemporaryDirectory() as d:
                s = train_detection(cfg, d, device="cuda", quiet=True, amp=amp)
                state = torch.load(f"{d}/checkpoint.pt", map_location="cpu", weights_only=False)
            # The box log-sigmas start at 0 (sigma = 1): any non-zero one has learned.
            moved = bool((state["data_parameters"]["instance_log_sigma"] != 0).any())
            good = s.get("map40_moderate") is not None and moved
            ok &= good
            rows.append(f"| train kitti-synth/instance, 2 epochs, {label} | mAP|R40 moderate "
                        f"{s.get('map40_moderate', float('nan')):.2f}, box sigma moved: {moved} | "
                        f"{'ok' if good else 'FAIL'} |")

    for section in (_torchrun_rows, _bench_rows):
        more, good = section(args.data_dir, 2)
        rows += more
        ok &= good

    emit([f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", "",
          "| check | result | status |", "|---|---|---|", *rows], args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
