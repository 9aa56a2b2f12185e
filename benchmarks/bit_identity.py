"""Does a refactor change what training produces? Every method, before and after, bit for bit.

Trains every method of the registry that ``dataparams train --method`` runs (two-stage ones into
``stage1`` / ``stage2``) on a small slice of the ``fmnist-noisy40`` experiment, plus ``train
--data`` with its default method on a folder of PNG images and on an ``.npz`` of features, once
with the package as it was at ``--before`` (a git worktree of that revision, put first on
``PYTHONPATH``) and once with the working tree; one thread each, on the CPU. Then compares every
file the runs wrote: arrays of ``.npz`` files and tensors of ``.pt`` files exactly, JSON and JSON
lines with the wall-clock fields (``*time_s``, ``wall_s``, dates) left out. Prints one row per
run with the number of files compared and what differs.

    python benchmarks/bit_identity.py --before c41a713 --out runs/bitid --table table.md
    python benchmarks/bit_identity.py --before c41a713 --out runs/bitid12 --epochs 12 --methods dp-gce-filter
    python benchmarks/bit_identity.py --before add5842 --out runs/bitid-det --detection

``--detection`` trains the detection presets instead (two epochs each on a synthetic KITTI set of 24
images with flipped, shifted and spurious boxes): ``tiny_ssd`` with and without box data parameters,
with SSD's augmentation and gradient clipping under bf16 autocast, and ``tiny_retinanet``.

The memory free when a run decided to hold its images in memory, quoted in that decision's reason
in ``config.json`` (and so in every checkpoint), is replaced by a placeholder before comparing.
Differences in ``config.json`` alone are listed but do not count (a new config field with its
default shows there while changing nothing else).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _table import emit

ROOT = Path(__file__).resolve().parents[1]
SLICE = ["--set", "data.subset=1200", "--set", "data.val_fraction=0.1"]
#: Fields that hold wall-clock time or dates: never compared.
CLOCK = ("time_s", "wall_s", "elapsed", "started", "finished", "date", "timestamp", "seconds")


def _trainable() -> list[str]:
    from dataparams.methods.registry import METHODS

    return [m.name for m in METHODS.values() if not isinstance(m.pipeline, str)]


def _worktree(rev: str, out: Path) -> Path:
    tree = out / f"tree-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev], check=True,
                       capture_output=True)
    return tree


def _write_user_sets(out: Path) -> dict[str, Path]:
    """A class-folder set of 300 PNGs and an .npz of 600 feature rows, from Fashion-MNIST."""
    from PIL import Image


    sets = {"folder": out / "data" / "folder", "npz": out / "data" / "features.npz"}
    if sets["npz"].exists():
        return sets
    images, labels = _fmnist()
    rng = np.random.default_rng(0)
    noisy = labels.copy()
    flip = rng.random(len(labels)) < 0.3
    noisy[flip] = rng.integers(0, 10, int(flip.sum()))
    for i in range(300):
        folder = sets["folder"] / f"c{noisy[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    x = images[300:900].reshape(600, -1).astype(np.float32) / 255.0
    np.savez(sets["npz"], X=x[:, ::7], y=noisy[300:900])
    return sets


def _write_kitti_set(out: Path) -> Path:
    """A synthetic KITTI folder of 24 images (6 for validation) with boxes of the three error kinds."""
    from dataparams.detection.synthetic import SyntheticKittiConfig, write_synthetic_kitti

    root = out / "data" / "kitti"
    if not (root / "done").exists():
        write_synthetic_kitti(root, SyntheticKittiConfig(num_images=24, val_fraction=0.25, seed=5, flip_fraction=0.2,
                                                         shift_fraction=0.1, spurious_fraction=0.1))
        (root / "done").write_text("")
    return root


def _detection_jobs(root: Path, epochs: int) -> dict[str, list[str]]:
    small = ["--data-dir", str(root), "--epochs", str(epochs), "--set", "model.width=16", "--set",
             "data.batch_size=6", "--set", "data.eval_batch_size=6", "--set", "eval_every=1"]
    return {
        "kitti-synth/instance": ["--preset", "kitti-synth/instance", *small],
        "kitti-synth/baseline": ["--preset", "kitti-synth/baseline", *small],
        "kitti-synth/instance (ssd augmentation, clipping, bf16)": [
            "--preset", "kitti-synth/instance", *small, "--set", "data.augment=ssd", "--set",
            "optim.clip_grad_norm=1.0", "--amp", "bf16"],
        "kitti-synth/instance (tiny_retinanet)": ["--preset", "kitti-synth/instance", *small, "--set",
                                                  "model.arch=tiny_retinanet"],
    }


def _fmnist() -> tuple[np.ndarray, np.ndarray]:
    from dataparams.data.idx import load_fashion_mnist

    split = load_fashion_mnist(train=True)
    return split.images[:900, :, :, 0], split.targets[:900]


def _train(tree: Path, args: list[str], out: Path) -> str | None:
    if (out / "done").exists():
        return None
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dataparams", "train", *args, "--out", str(out), "--device", "cpu", "--quiet",
           "--overwrite"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(tree))
    if res.returncode != 0:
        return res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
    (out / "done").write_text("")
    return None


_FREE_MEMORY = re.compile(r"of [0-9.]+ GiB available")

#: The two run folders being compared, replaced in every string by one placeholder: a run
#: records its own paths (pipeline.json, the keep file in a retraining's config).
_HOMES: list[str] = []


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if not any(c in k for c in CLOCK)}
    if isinstance(x, (list, tuple)):
        return [_strip(v) for v in x]
    if isinstance(x, str):
        for home in _HOMES:
            x = x.replace(home, "<RUN>")
        # The in-memory decision's reason quotes the memory free at that moment (machine state).
        x = _FREE_MEMORY.sub("of <free> GiB available", x)
    return x


def _same_tensors(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    return _strip(a) == _strip(b)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values and dtypes; NaN equals NaN in floating arrays (detection labels hold strings too)."""
    floating = np.issubdtype(a.dtype, np.inexact) and np.issubdtype(b.dtype, np.inexact)
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=floating)


def compare(a: Path, b: Path) -> tuple[int, list[str], list[str]]:
    """Files compared, the files that differ, and config-only differences."""
    _HOMES[:] = [str(a), str(b)]
    skip = {"done", "run.lock", ".lock"}
    names = sorted({p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
                   | {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()})
    names = [n for n in names if Path(n).name not in skip and "tensorboard" not in n and not n.endswith(".png")
             and not n.endswith(".html") and not n.endswith(".log")]
    differ, config = [], []
    for n in names:
        fa, fb = a / n, b / n
        if not (fa.exists() and fb.exists()):
            differ.append(f"{n} (only {'before' if fa.exists() else 'after'})")
            continue
        if n.endswith(".npz"):
            za, zb = np.load(fa), np.load(fb)
            same = set(za) == set(zb) and all(_same_array(za[k], zb[k]) for k in za)
        elif n.endswith(".pt"):
            load = lambda f: torch.load(io.BytesIO(f.read_bytes()), weights_only=False)  # noqa: E731
            same = _same_tensors(load(fa), load(fb))
        elif n.endswith(".json"):
            same = _strip(json.loads(fa.read_text())) == _strip(json.loads(fb.read_text()))
        elif n.endswith(".jsonl"):
            la = [_strip(json.loads(x)) for x in fa.read_text().splitlines() if x.strip()]
            lb = [_strip(json.loads(x)) for x in fb.read_text().splitlines() if x.strip()]
            same = la == lb
        else:
            same = fa.read_bytes() == fb.read_bytes()
        if not same:
            (config if Path(n).name == "config.json" else differ).append(n)
    return len(names), differ, config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the git revision to compare against (e.g. the last release)")
    p.add_argument("--out", default="runs/bitid")
    p.add_argument("--methods", nargs="+", help="default: every method train --method runs, and the two --data sets")
    p.add_argument("--epochs", type=int, help="epochs of every training: 3 by default, 2 with --detection "
                   "(dp-gce-filter flags every sample after 3: its first training must fit some samples; 12 lets it run)")
    p.add_argument("--data-method", help="train the two --data sets with this --method on both sides (default: each "
                   "version's own default, which differs where a commit between them changed the default on purpose)")
    p.add_argument("--detection", action="store_true", help="train the detection presets (two epochs by default) "
                   "instead of the classification methods")
    p.add_argument("--table", help="also write the table here")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    trees = {"before": _worktree(args.before, out), "after": ROOT}
    sets = _write_user_sets(out)
    if args.epochs is None:
        args.epochs = 2 if args.detection else 3
    epochs = ["--set", f"optim.epochs={args.epochs}"]
    if args.detection:
        jobs = _detection_jobs(_write_kitti_set(out), args.epochs)
    else:
        jobs = {m: ["--preset", "fmnist-noisy40", "--method", m, *SLICE, *epochs] for m in args.methods or _trainable()}
    if not args.methods and not args.detection:
        chosen = ["--method", args.data_method] if args.data_method else []
        which = args.data_method or "default method"
        jobs[f"--data folder ({which})"] = ["--data", str(sets["folder"]), *chosen, *epochs]
        jobs[f"--data features.npz ({which})"] = ["--data", str(sets["npz"]), *chosen, *epochs]
    lines = [f"| run | files compared | identical | what differs (before {args.before} vs the working tree) |",
             "|---|---:|---|---|"]
    bad = 0
    for name, train_args in jobs.items():
        key = name.split(" ")[0].strip("-") + ("-" + name.split(" ")[1] if name.startswith("--") else "")
        key = key.replace("/", "-") + ("-" + name.split("(")[1].split(",")[0].split(")")[0].replace(" ", "-")
                                       if "(" in name and not name.startswith("--") else "")
        errors = {side: _train(tree, train_args, out / side / key) for side, tree in trees.items()}
        if any(errors.values()):
            lines.append(f"| {name} | 0 | no | failed: {errors} |")
            bad += 1
            continue
        n, differ, config = compare(out / "before" / key, out / "after" / key)
        what = ", ".join(differ) or "nothing"
        if config:
            what += f" (config.json differs: {', '.join(config)})"
        lines.append(f"| {name} | {n} | {'yes' if not differ else 'NO'} | {what} |")
        bad += bool(differ)
        print(lines[-1], flush=True)
    emit(lines, args.table)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
