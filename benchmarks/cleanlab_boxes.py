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
loss did. cleanlab's documentation asks for out-of-sample predictions (K-fold), which would cost K
more trainings of the detector; this compares the three on the same single training.

    python benchmarks/cleanlab_boxes.py RUN_DIR [RUN_DIR ...] [--table OUT.md]
"""

from __future__ import annotations

import argparse
import json
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


def score_run(run_dir: Path) -> dict:
    import torch
    from cleanlab.object_detection.rank import compute_badloc_box_scores, compute_swap_box_scores

    from dataparams.analysis.metrics import auroc
    from dataparams.detection.config import detection_config_from_dict
    from dataparams.detection.curriculum import BoxTable
    from dataparams.detection.kitti import KittiDetection
    from dataparams.detection.models import build_detector
    from dataparams.detection.train import predict_detections
    from dataparams.runs import RunDir

    run = RunDir(run_dir)
    cfg = detection_config_from_dict(json.loads((run_dir / "config.json").read_text()))
    dataset = KittiDetection(cfg.data.root, cfg.data.train_split, classes=cfg.data.classes)
    model = build_detector(cfg.model.arch, dataset.num_classes, image_size=cfg.model.image_size,
                           width=cfg.model.width, score_thresh=cfg.model.score_thresh, nms_thresh=cfg.model.nms_thresh,
                           detections_per_img=cfg.model.detections_per_img, load_weights=False)
    model.load_state_dict(run.load_checkpoint()["model"])
    with torch.no_grad():
        detections = predict_detections(model, dataset, batch_size=cfg.data.eval_batch_size, device=torch.device("cpu"))
    labels, predictions, rows = cleanlab_inputs(dataset, detections)
    n = dataset.num_boxes
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
    table = BoxTable.from_arrays(run.load_arrays("labels.npz"))
    metrics = run.read_metrics()
    snap = run.load_snapshot(int(metrics[-1]["epoch"]))
    if cfg.curriculum.instance_curriculum:
        scores["sigma"] = np.asarray(snap["box_sigma"], np.float64)
    if "box_loss" in snap:
        scores["box loss"] = np.asarray(snap["box_loss"], np.float64)
    kinds = np.asarray(table.error_kind)
    out = {"run": str(run_dir), "variant": "instance" if cfg.curriculum.instance_curriculum else "baseline",
           "counts": {k: int((kinds == k).sum()) for k in ("clean", *KINDS)}, "auroc": {}}
    for name, s in scores.items():
        out["auroc"][name] = {}
        for kind in KINDS:
            pair = ((kinds == "clean") | (kinds == kind)) & np.isfinite(s)
            out["auroc"][name][kind] = float(auroc(s[pair], kinds[pair] == kind))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--table", help="also write the Markdown table here")
    args = p.parse_args()
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
