"""Label issues in a user's own data: `find-issues --data` against cleanlab, side by side.

On the data sets of ``benchmarks/user_datasets.py`` (Fashion-MNIST as class folders of 32 px grey
PNGs with 40% uniform noise and as a CSV of 28 px RGB PNGs with 30% pair noise; scikit-learn's
digits (uniform 30%) and breast cancer (pair 20%) as feature tables), each with its known
corruption, this script runs, one after the other in one process:

* ours: ``dataparams.issues.find_label_issues`` -- one instance-curriculum training with the
  ``user`` preset's defaults (model, epochs and normalisation chosen from the data), the ranking
  score ``find-issues`` uses by default, flags by the rule find-issues uses by default (class-mean since issue 21; the mixture before);
* cleanlab: ``cleanlab.filter.find_label_issues`` on K-fold (K = 5, stratified) out-of-sample
  predicted probabilities of the same model family with the same resolved config (architecture,
  epochs, schedule, batch) trained with plain cross-entropy -- cleanlab's recommended use; its
  ranking is ``1 - cleanlab.rank.get_label_quality_scores``.

It reports AUROC and average precision of each ranking against the known corruption, precision,
recall and F1 of each flagged set, the estimated number of wrong labels against the true one, and
wall time (data loading included, the same machine, nothing
else running when the committed table was made). For the three Fashion-MNIST sets it also scores
models on clean held-out images (the first 2,000 Fashion-MNIST *test* images, written and decoded
the way the set's own images are): the model ``find-issues`` keeps (``run/model.pt``), the same
network trained with cross-entropy on the given labels, and cleanlab's find-then-retrain (the same
network retrained on the samples cleanlab did not flag) and the model ``train --data`` keeps with
its default method (trained into ``--models``, as ``benchmarks/user_data_models.py`` does, and
reused from there). Finally it times the whole command line
``dataparams find-issues --data`` on the 2,000-image 28 px set in a fresh process.

    python benchmarks/user_datasets.py runs/userdata --no-check
    python benchmarks/bench_user_data.py runs/userdata --out runs/bench-userdata \\
        --table benchmarks/results/user_data.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _table import emit
from dataparams.analysis.metrics import auroc, average_precision
from dataparams.config import apply_overrides, config_from_dict
from dataparams.data.registry import load_dataset
from dataparams.experiment import train
from dataparams.issues import DEFAULT_SCORE, find_label_issues
from dataparams.runs import RunDir

SETS = {
    "fmnist-folder": "fmnist-folder",
    "fmnist-rgb-csv": "fmnist-rgb-csv/labels.csv",
    "fmnist-instance35": "fmnist-instance35/labels.csv",
    "digits-uniform30": "digits-uniform30/digits.npz",
    "breast-cancer-pair20": "breast-cancer-pair20/features.npz",
}
FOLDS = 5


def truth_mask(root: Path, name: str) -> np.ndarray:
    return np.load(root / name / "truth.npz")["is_corrupted"]


def _scores(score: np.ndarray, flagged: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
    tp = int((flagged & corrupted).sum())
    precision, recall = tp / max(1, int(flagged.sum())), tp / max(1, int(corrupted.sum()))
    return {"auroc": auroc(score, corrupted), "ap": average_precision(score, corrupted),
            "flagged": int(flagged.sum()), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12)}


# How each Fashion-MNIST set writes an image (benchmarks/user_datasets.py), for the clean test images.
_TEST_STYLE = {"fmnist-folder": ("L", 32), "fmnist-rgb-csv": ("RGB", 28), "fmnist-instance35": ("L", 28)}
N_TEST = 2000


def clean_test_set(name: str, classes: list[str], out: Path, first: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """2,000 Fashion-MNIST test images from index ``first`` (the reported tables: the first 2,000),
    written like set ``name``'s and decoded by the user-data loader at that set's side and
    channels: (uint8 (N, S, S, C), labels in ``classes``)."""
    if name not in _TEST_STYLE:
        return None
    from PIL import Image

    from dataparams.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist
    from dataparams.data.user import load_user_data

    mode, side = _TEST_STYLE[name]
    test = load_fashion_mnist(train=False)
    folder = out / "clean-test"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,label\n"]
    for i in range(N_TEST):
        im = Image.fromarray(test.images[first + i, ..., 0])
        if side != 28:
            im = im.resize((side, side), Image.Resampling.BILINEAR)
        im.convert(mode).save(folder / f"images/{i:05d}.png")
        lines.append(f"images/{i:05d}.png,{int(test.targets[first + i])}\n")
    (folder / "labels.csv").write_text("".join(lines))
    data = load_user_data(folder / "labels.csv", image_size=side, channels=1 if mode == "L" else 3)
    names = [c.replace("/", "_") if name == "fmnist-folder" else c for c in FASHION_MNIST_CLASSES]
    to_set = np.array([classes.index(n) for n in names])
    return data.images, to_set[test.targets[first:first + N_TEST]]


def model_accuracy(model_file: Path, test: tuple[np.ndarray, np.ndarray]) -> float:
    """Accuracy (%) of an exported user-data model on clean images."""
    from dataparams.build import load_model

    model, meta = load_model(model_file)
    images, labels = test
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(meta["mean"])[None, :, None, None]) / torch.tensor(meta["std"])[None, :, None, None]
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()
    return 100.0 * float((pred == labels).mean())


def _trained(run: Path, reuse: bool) -> bool:
    """Whether ``run`` is a finished run to reuse (``--reuse``) instead of training it again."""
    return reuse and (run / "summary.json").exists()


def run_ours(path: Path, out: Path, truth: np.ndarray, reuse: bool = False) -> dict:
    t0 = time.perf_counter()
    # With reuse, find_label_issues keeps out/run when it was trained on the same data and settings.
    report, files = find_label_issues(path, out, device="cpu", quiet=True, overwrite=not reuse)
    wall = time.perf_counter() - t0
    c = truth[report.source_index]
    return {**_scores(report.score, report.is_flagged, c), "wall_s": wall, "trainings": 1,
            "epochs": report.epoch, "run_dir": str(files["run_dir"]), "rule": report.summary()["rule"]}


def run_cleanlab(path: Path, out: Path, truth: np.ndarray, ours_run: Path, seed: int = 0,
                 test: tuple[np.ndarray, np.ndarray] | None = None, reuse: bool = False,
                 train_seed: int | None = None) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    # The same resolved config as ours (model, epochs, schedule, batch), with plain cross-entropy.
    base = config_from_dict(json.loads((ours_run / "config.json").read_text()))
    base = apply_overrides(base, ["curriculum.class_curriculum=false", "curriculum.instance_curriculum=false"]
                           + ([f"seed={train_seed}"] if train_seed is not None else []))
    dataset = load_dataset(base.data)
    given = dataset.train.targets
    k = dataset.train.num_classes
    rng = np.random.default_rng(seed)
    fold = np.empty(len(given), dtype=np.int64)
    for c in range(k):  # stratified by the given label, as cleanlab's own cross-validation
        members = rng.permutation(np.flatnonzero(given == c))
        fold[members] = np.arange(len(members)) % FOLDS
    oof = np.zeros((len(given), k), dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for f in range(FOLDS):
        keep = out / f"keep_fold{f}.npy"
        np.save(keep, np.flatnonzero(fold != f))
        cfg = apply_overrides(base, [f"data.keep_file={keep}"])
        if not _trained(out / f"fold{f}", reuse):
            train(cfg, out / f"fold{f}", overwrite=True, device="cpu", quiet=True, tensorboard=False, dataset=dataset)
        held = RunDir(out / f"fold{f}").load_arrays("heldout_predictions.npz")
        oof[held["source_index"]] = held["probs"]
    issues = find_label_issues(labels=given, pred_probs=oof, n_jobs=1)
    score = 1.0 - get_label_quality_scores(given, oof)
    wall = time.perf_counter() - t0
    res = {**_scores(score, issues, truth), "wall_s": wall, "trainings": FOLDS, "epochs": base.optim.epochs}
    if test is not None:
        # The models to compare the kept one with: cross-entropy on every given label, and
        # cleanlab's find-then-retrain on the samples it did not flag.
        if not _trained(out / "ce", reuse):
            train(base, out / "ce", overwrite=True, device="cpu", quiet=True, tensorboard=False, dataset=dataset)
        res["ce_acc"] = model_accuracy(out / "ce" / "model.pt", test)
        keep = out / "keep_unflagged.npy"
        np.save(keep, np.flatnonzero(~issues))
        if not _trained(out / "retrain", reuse):
            train(apply_overrides(base, [f"data.keep_file={keep}"]), out / "retrain", overwrite=True, device="cpu",
                  quiet=True, tensorboard=False, dataset=dataset)
        res["retrain_acc"] = model_accuracy(out / "retrain" / "model.pt", test)
    return res


def train_data_method(path: Path, out: Path, method: str, seed: int = 1) -> tuple[Path, float]:
    """``dataparams train --data path --method method`` into ``out`` in a fresh process (reused when
    its model exists); the model it keeps and the wall time. ``default`` gives no method (the
    registry's DATA_DEFAULT_METHOD), ``default-holdout`` the same with ``--holdout 0.1``,
    ``dp-instance`` the ``user/instance`` preset."""
    args = [sys.executable, "-m", "dataparams", "train", "--data", str(path), "--out", str(out), "--device", "cpu",
            "--quiet", "--seed", str(seed)]
    if method == "dp-instance":
        args += ["--preset", "user/instance"]
    elif method == "default-holdout":
        args += ["--holdout", "0.1"]
    elif method != "default":
        args += ["--method", method]
    two_stage = method.endswith("-filter") or method.startswith("default")
    model = out / ("stage2" if two_stage else "") / "model.pt"
    if model.exists() and method.startswith("default"):
        # A folder reused across runs of this script: the default may have changed since it was trained.
        from dataparams.methods.registry import DATA_DEFAULT_METHOD

        trained = json.loads((out / "stage2" / "config.json").read_text())["choices"]["method"]["value"]
        if trained != DATA_DEFAULT_METHOD:
            raise SystemExit(f"{out} was trained by {trained}, the default is now {DATA_DEFAULT_METHOD}: "
                             "remove it or use another --models folder")
    t0 = time.perf_counter()
    if not model.exists():
        subprocess.run([*args, "--overwrite"], check=True, capture_output=True)
    return model, time.perf_counter() - t0


def _earlier_walls(table: Path, name: str) -> tuple[float, float]:
    """The wall times (ours, cleanlab) of set ``name`` in an earlier table of this script."""
    walls = {}
    for line in table.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 13 and cells[0] == name:
            walls[cells[2]] = float(cells[-1])
    return walls["ours"], walls["cleanlab"]


def time_command(path: Path, out: Path) -> float:
    """Wall time of the command a user runs, in a fresh process (imports and data loading included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dataparams", "find-issues", "--data", str(path), "--out", str(out),
                    "--device", "cpu", "--quiet", "--overwrite"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the folder benchmarks/user_datasets.py wrote")
    p.add_argument("--out", default="runs/bench-userdata")
    p.add_argument("--table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS),
                   help="the data sets to run (default: all five)")
    p.add_argument("--models", default="runs/user-models",
                   help="where `train --data` (the default method, seed 1) trains each Fashion-MNIST set, as "
                        "benchmarks/user_data_models.py does (a finished run there is reused)")
    p.add_argument("--reuse", metavar="TABLE",
                   help="reuse the finished runs under --out (same data and settings) instead of training again, "
                   "e.g. after a change to how flags are drawn from the same trainings; the wall times are taken "
                   "from this earlier table (its wall s column) and the command is not timed again")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root, out = Path(args.data), Path(args.out)
    rows = []
    for name, rel in ((n, SETS[n]) for n in args.sets):
        truth = truth_mask(root, name)
        ours = run_ours(root / rel, out / name / "ours", truth, reuse=bool(args.reuse))
        classes = [str(c) for c in np.load(root / name / "truth.npz")["classes"]]
        test = clean_test_set(name, classes, out / name)
        if test is not None:
            ours["kept_acc"] = model_accuracy(Path(ours["run_dir"]) / "model.pt", test)
            default_model, _ = train_data_method(root / rel, Path(args.models) / name / "default", "default")
            ours["default_acc"] = model_accuracy(default_model, test)
        clean = run_cleanlab(root / rel, out / name / "cleanlab", truth, Path(ours["run_dir"]), test=test,
                             reuse=bool(args.reuse))
        if args.reuse:
            ours["wall_s"], clean["wall_s"] = _earlier_walls(Path(args.reuse), name)
        rows.append((name, int(truth.sum()), len(truth), ours, clean))
        print(name, json.dumps({"ours": ours, "cleanlab": clean}), flush=True)
    command_s = None if args.reuse or "fmnist-rgb-csv" not in args.sets else time_command(
        root / SETS["fmnist-rgb-csv"], out / "command")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"# Label issues in the user's own data: find-issues --data vs cleanlab ({platform.machine()}, "
             f"{cpus} CPUs, torch threads {args.threads})", "",
             f"Ours: one instance-curriculum training (the user preset's defaults), ranked by {DEFAULT_SCORE}, "
             f"flagged by find-issues' default rule ({rows[0][3]['rule']} for these runs). cleanlab: "
             "find_label_issues on 5-fold out-of-sample probabilities of the same model and config trained with "
             "cross-entropy (5 trainings), ranked by 1 - label quality. AUROC/AP of the ranking against the "
             "injected corruption; flagged (estimated wrong labels) against the true number, precision/recall/F1 "
             "of the flagged set. One seed per set (n=1 each).", "",
             "| data set | corrupted | method | trainings | epochs | AUROC | AP | flagged | flagged / wrong | "
             "precision | recall | F1 | wall s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, n_bad, n, ours, clean in rows:
        for label, r in (("ours", ours), ("cleanlab", clean)):
            lines.append(f"| {name} | {n_bad:,} / {n:,} | {label} | {r['trainings']} | {r['epochs']} | "
                         f"{r['auroc']:.4f} | {r['ap']:.4f} | {r['flagged']:,} | {r['flagged'] / n_bad:.2f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['wall_s']:.1f} |")
    from dataparams.methods.registry import DATA_DEFAULT_METHOD

    lines += ["", "Test accuracy (%) on 2,000 clean held-out Fashion-MNIST test images, written like each set's "
              "images; the same network for all models (n=1 each): the model `train --data` keeps with its default "
              f"method ({DATA_DEFAULT_METHOD}: two trainings, the user preset's schedule each), the one find-issues "
              "keeps (its one training), cross-entropy on the given labels and cleanlab's find-then-retrain (the "
              "user preset's schedule each):", "",
              "| data set | train --data (default) | kept by find-issues | cross-entropy on the given labels | "
              "cleanlab find-then-retrain |", "|---|---:|---:|---:|---:|"]
    if not any("kept_acc" in r[3] for r in rows):
        lines = lines[:-5]  # no Fashion-MNIST set among --sets: no accuracy table
    for name, _, _, ours, clean in rows:
        if "kept_acc" in ours:
            lines.append(f"| {name} | {ours['default_acc']:.2f} | {ours['kept_acc']:.2f} | {clean['ce_acc']:.2f} | "
                         f"{clean['retrain_acc']:.2f} |")
    if command_s is not None:
        lines += ["", f"`dataparams find-issues --data fmnist-rgb-csv/labels.csv` (2,000 RGB images of 28 px), the "
                  f"whole command in a fresh process: {command_s:.1f} s."]
    elif args.reuse:
        lines += ["", f"Flags recomputed from the trainings of the earlier table ({args.reuse}, `--reuse`): the "
                  "rankings, the accuracies and the wall times are those trainings'."]
    emit(lines, args.table)


if __name__ == "__main__":
    main()
