"""Per-box scores of wrong annotations: box data parameters against cleanlab's object-detection
scores computed from the same detector's predictions, per kind of injected error.

For each finished detection run on a synthetic KITTI set with recorded errors
(``bench_detection.py --datasets errors3``), the run's final detector predicts every *train*
image (no augmentation; torchvision's SSD post-processing, score threshold as configured); those
predictions and the given boxes go to cleanlab's ``compute_swap_box_scores`` (class swapped) and
``compute_badloc_box_scores`` (badly located) and their per-box minimum (cleanlab's
``get_label_quality_scores`` pools the same subtype scores per image). Each per-box score is
ranked against the truth per kind, error boxes of one kind against the clean boxes only, as in
``curriculum_statistics``: AUROC of sigma and of the box loss of the run's last epoch (read from
its snapshot), and of 1 - each cleanlab score.

The predictions are in-sample: the detector trained on these images, as the run's own sigma and
loss did. cleanlab's documentation asks for out-of-sample predictions; ``--kfold K`` gives them:
per seed, K ``kitti-synth/baseline`` detectors on the same ``errors3`` set, each trained without
one seeded fold of the train images (same schedule and seed as the runs above), and every box
scored by cleanlab from the detector that did not see its image (K more trainings per seed).

    python benchmarks/cleanlab_boxes.py RUN_DIR [RUN_DIR ...] [--table OUT.md]
    python benchmarks/cleanlab_boxes.py --kfold 4 [--seeds 1 2 3] [--out runs/cleanlab_kfold] [--jobs 2] [--table OUT.md]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from _table import emit

KINDS = ("flip", "shift", "spurious")
#: cleanlab's two probability thresholds (``low_probability_threshold`` of the badly-located score,
#: ``high_probability_threshold`` of the swap score): its defaults, and two lower pairs for a
#: detector whose scores stay low (the tiny SSD's best prediction per image is about 0.5, so at
#: the defaults no prediction reaches the swap score's 0.95). All three are reported; the best of
#: them is chosen on these very labels, an upper bound for cleanlab rather than a test.
THRESHOLDS = ((0.5, 0.95), (0.2, 0.5), (0.1, 0.3))


def cleanlab_inputs(dataset, detections) -> tuple[list[dict], list[list[np.ndarray]], list[np.ndarray]]:
    """cleanlab's ``labels`` and ``predictions`` for every image of ``dataset``, and each image's
    box indices (rows of the data parameters) in the order of its ``labels[i]['bboxes']``."""
    k = dataset.num_classes
    labels, predictions, rows = [], [], []
    for i, image_id in enumerate(dataset.image_ids):
        t = dataset.get_target(i)
        labels.append({"bboxes": t["boxes"].numpy().astype(np.float64).reshape(-1, 4),
                       "labels": (t["labels"].numpy() - 1).astype(np.int64), "image_name": image_id})
        rows.append(t["box_index"].numpy())
        per_class = [[] for _ in range(k)]
        for obj in detections.get(image_id, []):
            per_class[dataset.classes.index(obj.type)].append([*obj.bbox, obj.score])
        predictions.append([np.asarray(p, np.float64).reshape(-1, 5) for p in per_class])
    return labels, predictions, rows


def cleanlab_scores(labels, predictions, rows, n: int) -> dict[str, np.ndarray]:
    """1 - cleanlab's per-box swap, badly-located and minimum scores at each threshold pair, as
    arrays over the ``n`` box rows (NaN for a row no image holds)."""
    from cleanlab.object_detection.rank import compute_badloc_box_scores, compute_swap_box_scores

    scores: dict[str, np.ndarray] = {}
    for low, high in THRESHOLDS:
        swap = compute_swap_box_scores(labels=labels, predictions=predictions, high_probability_threshold=high)
        badloc = compute_badloc_box_scores(labels=labels, predictions=predictions, low_probability_threshold=low)
        names = [f"cleanlab {part} ({low:g} / {high:g})" for part in ("swap", "badloc", "min")]
        for name in names:
            scores[name] = np.full(n, np.nan)
        for r, sw, b in zip(rows, swap, badloc):
            scores[names[0]][r], scores[names[1]][r] = 1 - sw, 1 - b
            scores[names[2]][r] = 1 - np.minimum(sw, b)
    return scores


def auroc_per_kind(scores: dict[str, np.ndarray], kinds: np.ndarray) -> dict[str, dict[str, float]]:
    """AUROC of every score for each kind of error, that kind's boxes against the clean boxes."""
    from dataparams.analysis.metrics import auroc

    out: dict[str, dict[str, float]] = {}
    for name, s in scores.items():
        out[name] = {}
        for kind in KINDS:
            pair = ((kinds == "clean") | (kinds == kind)) & np.isfinite(s)
            out[name][kind] = float(auroc(s[pair], kinds[pair] == kind))
    return out


def _predict(cfg, run_dir: Path, dataset) -> dict:
    """The detections of the run's final detector on every image of ``dataset``."""
    import torch

    from dataparams.detection.models import detector_from_config
    from dataparams.detection.train import predict_detections
    from dataparams.runs import RunDir

    model = detector_from_config(cfg.model, dataset.num_classes, load_weights=False)
    model.load_state_dict(RunDir(run_dir).load_checkpoint()["model"])
    with torch.no_grad():
        return predict_detections(model, dataset, batch_size=cfg.data.eval_batch_size, device=torch.device("cpu"))


def score_run(run_dir: Path) -> dict:
    from dataparams.detection.config import detection_config_from_dict
    from dataparams.detection.curriculum import BoxTable
    from dataparams.detection.kitti import KittiDetection
    from dataparams.runs import RunDir

    run = RunDir(run_dir)
    cfg = detection_config_from_dict(json.loads((run_dir / "config.json").read_text()))
    dataset = KittiDetection(cfg.data.root, cfg.data.train_split, classes=cfg.data.classes)
    detections = _predict(cfg, run_dir, dataset)
    labels, predictions, rows = cleanlab_inputs(dataset, detections)
    scores = cleanlab_scores(labels, predictions, rows, dataset.num_boxes)
    table = BoxTable.from_arrays(run.load_arrays("labels.npz"))
    metrics = run.read_metrics()
    snap = run.load_snapshot(int(metrics[-1]["epoch"]))
    if cfg.curriculum.instance_curriculum:
        scores["sigma"] = np.asarray(snap["box_sigma"], np.float64)
    if "box_loss" in snap:
        scores["box loss"] = np.asarray(snap["box_loss"], np.float64)
    kinds = np.asarray(table.error_kind)
    return {"run": str(run_dir), "variant": "instance" if cfg.curriculum.instance_curriculum else "baseline",
            "counts": {k: int((kinds == k).sum()) for k in ("clean", *KINDS)}, "auroc": auroc_per_kind(scores, kinds)}


# ---------------------------------------------------------------------------------------------
# out-of-sample (K-fold) predictions, as cleanlab's documentation asks
# ---------------------------------------------------------------------------------------------
def fold_splits(root: Path, k: int, seed: int) -> list[tuple[str, str]]:
    """Write ``ImageSets/`` files that split the train images into ``k`` seeded folds: for each
    fold the other folds' images (to train on) and its own (to predict). Returns the split names
    (train, held out) per fold; existing files are checked to hold the same ids, not rewritten."""
    from dataparams.detection.kitti import read_split_file, write_split_file

    ids = read_split_file(root / "ImageSets" / "train.txt")
    order = np.random.default_rng(seed).permutation(len(ids))
    names = []
    for f, held in enumerate(np.array_split(order, k)):
        held_ids = sorted(ids[i] for i in held)
        train_ids = sorted(set(ids) - set(held_ids))
        pair = (f"cv{k}_seed{seed}_fold{f}_train", f"cv{k}_seed{seed}_fold{f}_heldout")
        for name, part in zip(pair, (train_ids, held_ids)):
            path = root / "ImageSets" / f"{name}.txt"
            if path.exists():
                if read_split_file(path) != part:
                    raise SystemExit(f"{path} holds other ids than this fold: remove it")
            else:
                write_split_file(path, part)
        names.append(pair)
    return names


def _fold_config(root: Path, seed: int, train_split: str):
    from dataparams.detection.presets import get_detection_preset

    # The baseline preset (no data parameters), as a cleanlab user would train: the same schedule,
    # seed and detector as the runs whose sigma and box loss it is compared with.
    cfg = get_detection_preset("kitti-synth/baseline", root=str(root))
    cfg.seed = seed
    cfg.data.train_split = train_split
    cfg.eval_every = cfg.optim.epochs  # the val split's AP once, at the end (a sanity check only)
    return cfg


def _train_fold(root: str, seed: int, train_split: str, run_dir: str, threads: int) -> tuple[str, float, float]:
    """One fold's training in a worker process (spawned: its own torch threads and RNG)."""
    from dataparams.detection.train import train_detection

    t0 = time.perf_counter()
    resume = (Path(run_dir) / "config.json").exists()
    summary = train_detection(_fold_config(Path(root), seed, train_split), run_dir, resume=resume, quiet=True,
                              threads=threads)
    return run_dir, float(summary["map40_moderate"]), time.perf_counter() - t0


def kfold(out: Path, k: int, seeds: list[int], jobs: int, threads: int) -> list[str]:
    """Train ``k`` baseline detectors per seed on the synthetic ``errors3`` set, each without one
    fold of the train images, and score every given box with cleanlab from the detector that did
    not see its image. Returns the table's lines."""
    from dataparams.detection.curriculum import BoxTable
    from dataparams.detection.kitti import KittiDetection
    from dataparams.detection.presets import SYNTHETIC_DATA_ERRORS, ensure_synthetic_data

    root = out / "data" / "errors3"
    ensure_synthetic_data(root, SYNTHETIC_DATA_ERRORS)
    plan = {s: fold_splits(root, k, s) for s in seeds}
    todo = [(s, tr, str(out / "runs" / f"seed{s}" / f"fold{f}")) for s in seeds for f, (tr, _) in enumerate(plan[s])]
    todo = [t for t in todo if not (Path(t[2]) / "summary.json").exists()]
    if todo:
        print(f"{len(todo)} fold trainings to do, {jobs} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_train_fold, str(root), s, tr, d, threads) for s, tr, d in todo]
            for fut in as_completed(futures):
                d, ap, sec = fut.result()
                print(f"done {d}: val mAP|R40 moderate {ap:.2f} in {sec / 60:.1f} min", flush=True)

    full = KittiDetection(root, "train")
    kinds = np.asarray(BoxTable.from_dataset(full).error_kind)
    counts = {c: int((kinds == c).sum()) for c in ("clean", *KINDS)}
    lines = [f"# Wrong boxes per kind: cleanlab's object-detection scores from out-of-sample ({k}-fold) predictions "
             f"(synthetic KITTI, errors3, seeds {', '.join(map(str, seeds))})", "",
             f"`python benchmarks/cleanlab_boxes.py --kfold {k} --seeds {' '.join(map(str, seeds))} --out {out}`: per "
             f"seed, {k} `kitti-synth/baseline` tiny SSDs, each trained on the train images outside one seeded fold; "
             "every given box scored by cleanlab's `compute_swap_box_scores` / `compute_badloc_box_scores` (its "
             "default thresholds and two lower pairs, as in `cleanlab_boxes.md`) from the detector that did not see "
             "its image. AUROC per kind of error, that kind against the clean boxes; higher is better, 0.5 is chance. "
             "Compare `cleanlab_boxes.md` (the same scores from in-sample predictions, and the runs' own sigma and "
             "box loss on the same boxes and seeds).", "",
             "| seed | score | flip AUROC | shift AUROC | spurious AUROC |", "|---|---|---:|---:|---:|"]
    per_seed = []
    for s in seeds:
        detections: dict = {}
        for f, (tr, held) in enumerate(plan[s]):
            cfg = _fold_config(root, s, tr)
            detections.update(_predict(cfg, out / "runs" / f"seed{s}" / f"fold{f}", KittiDetection(root, held)))
        assert set(detections) == set(full.image_ids)
        labels, predictions, rows = cleanlab_inputs(full, detections)
        result = auroc_per_kind(cleanlab_scores(labels, predictions, rows, full.num_boxes), kinds)
        per_seed.append(result)
        for name, per_kind in result.items():
            lines.append(f"| {s} | {name} | " + " | ".join(f"{per_kind[c]:.3f}" for c in KINDS) + " |")
            print(lines[-1], flush=True)
    if len(seeds) > 1:
        lines += ["", f"Mean ± std over seeds (n={len(seeds)}):", "",
                  "| score | flip AUROC | shift AUROC | spurious AUROC |", "|---|---:|---:|---:|"]
        for name in per_seed[0]:
            cells = []
            for c in KINDS:
                v = np.array([r[name][c] for r in per_seed])
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    aps = {s: [json.loads((out / "runs" / f"seed{s}" / f"fold{f}" / "summary.json").read_text())["map40_moderate"]
               for f in range(k)] for s in seeds}
    lines += ["", "Boxes: " + ", ".join(f"{c} {v:,}" for c, v in counts.items()) + f"; each kind against the clean "
              f"boxes only. Out-of-sample: each image's predictions from the one of {k} detectors "
              "(kitti-synth/baseline, the same seed and schedule, trained on the other folds' images) that did not "
              "train on it. The fold detectors' mean AP|R40 (moderate) on the val split: "
              + "; ".join(f"seed {s} " + " / ".join(f"{a:.1f}" for a in aps[s]) for s in seeds) + "."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="finished runs to score in-sample")
    p.add_argument("--table", help="also write the Markdown table here")
    p.add_argument("--kfold", type=int, metavar="K", help="instead: out-of-sample cleanlab scores from K fold detectors")
    p.add_argument("--out", type=Path, default=Path("runs/cleanlab_kfold"), help="--kfold: data and fold runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="--kfold: one set of folds per seed")
    p.add_argument("--jobs", type=int, default=2, help="--kfold: trainings in parallel, one thread each")
    args = p.parse_args()
    if args.kfold is not None:
        if args.runs or args.kfold < 2:
            p.error("--kfold K (K >= 2) takes no run directories")
        emit(kfold(args.out, args.kfold, args.seeds, args.jobs, threads=1), args.table)
        return
    if not args.runs:
        p.error("give run directories, or --kfold K")
    lines = ["| run | score | flip AUROC | shift AUROC | spurious AUROC |", "|---|---|---:|---:|---:|"]
    counts = None
    for run_dir in args.runs:
        r = score_run(run_dir)
        counts = r["counts"]
        for name, per_kind in r["auroc"].items():
            lines.append(f"| {r['variant']} ({run_dir.name}) | {name} | "
                         + " | ".join(f"{per_kind[k]:.3f}" for k in KINDS) + " |")
            print(lines[-1], flush=True)
    if counts:
        lines.append("")
        lines.append("Boxes: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + "; each kind against the clean "
                     "boxes only. Scores: 1 - cleanlab's per-box score (swap, badly located, their minimum; in "
                     "brackets its low / high probability thresholds, the first pair its defaults), sigma and the "
                     "box loss of the last epoch's snapshot; n=1 run each.")
    emit(lines, args.table)

if __name__ == "__main__":
    main()
