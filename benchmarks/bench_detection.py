"""The paper's detection experiment (sec. 3.3) on the synthetic KITTI set, on the CPU.

    python benchmarks/bench_detection.py [--out runs/detection_synth] [--seeds 1 2 3] [--jobs 2]
                                         [--paper-lr] [--results benchmarks/results/detection_synth]

Writes KITTI-format sets (``dataparams.detection.presets.SYNTHETIC_DATA``: 1,200 Fashion-MNIST
scenes of 128 x 256, 900 train / 300 val; the same scenes with 20% of the train boxes given
another class, ``flip20``; and with three kinds of box error, a tenth of the train boxes each:
flipped class, box moved by more than half its size, spurious box on background, ``errors3``),
then trains ``kitti-synth/baseline`` and ``kitti-synth/instance`` on each set of ``--datasets``,
once per seed, each run in its own run directory under ``OUT/runs/{DATA}/{variant}/seedN``.
Finished runs are skipped and interrupted ones resumed, so the command can be re-run after a
kill. ``--paper-lr`` adds one run of the instance preset at the paper's lr_instance = 0.1 on the
clean set (seed 1). At the end it prints, and writes to ``RESULTS/results.md``, the KITTI AP|R40
and 11-point AP per class and difficulty (mean ± std over seeds), the mean box sigma per
difficulty and occlusion level, Spearman's rho of sigma with occlusion and difficulty per epoch,
and for the corrupted sets the AUROC of sigma (and of the per-box loss) for the flipped boxes,
and for ``errors3`` per kind of error against the clean boxes; the figures (``object_detection_report``) go to ``RESULTS/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from _table import emit

DATASETS = {"clean": "SYNTHETIC_DATA", "flip20": "SYNTHETIC_DATA_FLIP20", "errors3": "SYNTHETIC_DATA_ERRORS"}
VARIANTS = ("baseline", "instance")
PAPER_LR_VARIANT = "instance-lr0.1"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/detection_synth", help="data and run directories")
    p.add_argument("--results", help="table and figures (default benchmarks/results/detection_synth, and its "
                   "subfolder ARCH for another --arch)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                   help="which sets to train on (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--paper-lr", action="store_true", help="also run lr_instance = 0.1 (clean set, seed 1)")
    p.add_argument("--lr-instance", type=float, nargs="+", default=[],
                   help="also run the instance variant with these box learning rates (variants instance-lrLR, every "
                   "seed and data set): a screen of the preset's lr_instance")
    p.add_argument("--report-only", action="store_true", help="only aggregate the finished runs")
    p.add_argument("--arch", default="tiny_ssd", choices=("tiny_ssd", "tiny_retinanet"),
                   help="model.arch of every run (default the presets' tiny_ssd; another architecture's runs go "
                   "under OUT/runs/ARCH/...)")
    return p


def _run_one(dataset: str, variant: str, seed: int, data_root: str, run_dir: str, threads: int,
             arch: str = "tiny_ssd") -> dict[str, Any]:
    """One training in a worker process (spawned: its own torch threads and RNG)."""
    import torch

    from dataparams.detection.presets import get_detection_preset, train_detection

    torch.set_num_threads(threads)
    lr = _variant_lr(variant)
    name = "kitti-synth/instance" if lr is not None else f"kitti-synth/{variant}"
    cfg = get_detection_preset(name, root=data_root)
    cfg.seed = seed
    cfg.model.arch = arch
    if lr is not None:
        cfg.preset = f"kitti-synth/{variant}"
        cfg.curriculum.lr_instance = lr
    resume = (Path(run_dir) / "config.json").exists()
    t0 = time.perf_counter()
    summary = train_detection(cfg, run_dir, resume=resume, quiet=True, threads=threads)
    return {"dataset": dataset, "variant": variant, "seed": seed, "seconds": time.perf_counter() - t0,
            "map40_moderate": summary["map40_moderate"]}


def _variant_lr(variant: str) -> float | None:
    """The box data parameters' learning rate of a variant named ``instance-lrLR`` (None otherwise)."""
    prefix = "instance-lr"
    return float(variant[len(prefix):]) if variant.startswith(prefix) else None


def _fmt(values: list[float], digits: int = 1) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{np.mean(vals):.{digits}f} ± {std:.{digits}f} ({len(vals)})"


def _load(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return metrics, json.loads(summary.read_text())


def _tables(runs: dict[tuple[str, str], list[Path]], command: str, arch: str = "tiny_ssd", jobs: int = 2) -> list[str]:
    from dataparams.detection.kitti import DIFFICULTIES

    loaded = {k: [x for x in (_load(p) for p in v) if x is not None] for k, v in runs.items()}
    loaded = {k: v for k, v in loaded.items() if v}
    classes = ("Car", "Pedestrian", "Cyclist")
    times = [s["train_time_s"] / 60 for items in loaded.values() for _, s in items]
    flipped = [(s["num_flipped"], s["num_boxes"]) for (d, _), items in loaded.items() if d == "flip20" for _, s in items]
    boxes = next((s["num_boxes"] for items in loaded.values() for _, s in items), 0)
    lines = ["# Box data parameters on the synthetic KITTI set (sec. 3.3, CPU)", "",
             f"Reproduce every number below: `{command}` (finished runs are skipped, killed ones resumed).", "",
             "Setup: `kitti-synth/{baseline,instance}` presets (`src/dataparams/detection/presets.py`): 1,200 "
             "Fashion-MNIST scenes of 128 x 256 (900 train / 300 val, seed 0), "
             + ("`tiny_ssd` (torchvision SSD head and matching on a 7-layer conv net)" if arch == "tiny_ssd" else
                "`tiny_retinanet` (`model.arch`; torchvision's RetinaNet head, focal loss and matching on the same "
                "7-layer conv net, `dataparams.detection.focal_box_parameters`)")
             + ", 12 epochs of SGD (lr 0.05, batch 16, cosine), box data "
             "parameters with lr 1.0, no momentum, no weight decay, negatives at the batch's mean box sigma "
             f"(no gradient through it); {boxes:,} train boxes. `flip20`: the same scenes with 20% of the train "
             f"boxes ({f'{flipped[0][0]:,} of {flipped[0][1]:,}' if flipped else 'none finished'}) given another "
             "class; `errors3`: the same scenes with a tenth of the train boxes each given another class, moved by "
             "more than half their size, and added as spurious boxes on background; validation labels are clean. "
             "Mean ± std over seeds (n).",
             "", f"Time: one run {_fmt(times, 1)} min of wall time ({jobs} run{'s' if jobs > 1 else ''} at a time, one "
             f"thread each, on a 2-core machine shared with other work); {sum(times):.0f} min of run time in all.", ""]
    for kind, title in (("ap40", "AP|R40"), ("ap11", "AP 11-point")):
        lines += [f"## KITTI {title} (%) on the val split after the last epoch", ""]
        header = ["data", "variant"] + [f"{c} {d}" for c in (*classes, "mean") for d in DIFFICULTIES]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (data, variant), items in loaded.items():
            cells = [data, variant]
            for c in (*classes, "mean"):
                for d in DIFFICULTIES:
                    if c == "mean":
                        vals = [s[f"m{kind}_{d}"] for _, s in items]
                    else:
                        vals = [s["kitti"][c][d][kind] for _, s in items]
                    cells.append(_fmt(vals))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Difference instance - baseline, mean AP over classes (points; paired by seed)", ""]
    lines += ["| data | variant | metric | easy | moderate | hard |", "|---|---|---|---|---|---|"]
    for (data, variant), inst in loaded.items():
        base = loaded.get((data, "baseline"))
        if variant == "baseline" or not base:
            continue
        bs = {s["seed"]: s for _, s in base}
        pairs = [(bs[s["seed"]], s) for _, s in inst if s["seed"] in bs]
        for kind in ("ap40", "ap11"):
            cells = [data, variant, kind] + [_fmt([i[f"m{kind}_{d}"] - b[f"m{kind}_{d}"] for b, i in pairs], 2)
                                             for d in DIFFICULTIES]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Mean box sigma per level after the last epoch", "",
              "| data | variant | easy | moderate | hard | none | occl. 0 | occl. 1 | occl. 2 | occl. 3 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (data, variant), items in loaded.items():
        if variant == "baseline":
            continue
        last = [m[-1] for m, _ in items]
        cells = [data, variant] + [_fmt([r["sigma_by_difficulty"][d] for r in last], 3)
                                   for d in ("easy", "moderate", "hard", "none")]
        cells += [_fmt([r["sigma_by_occlusion"][str(k)] for r in last], 3) for k in range(4)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Is the learned order easy -> moderate -> hard? Spearman rho of sigma per epoch", "",
              "rho(sigma, occlusion level 0-2) and rho(sigma, KITTI difficulty 0-2) over the train boxes; "
              "positive = harder boxes carry a higher temperature (are held back).", ""]
    inst_keys = [k for k in loaded if k[1] != "baseline"]
    header = ["epoch"] + [f"{d}/{v} rho_occ" for d, v in inst_keys] + [f"{d}/{v} rho_diff" for d, v in inst_keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    epochs = max((len(m) for k in inst_keys for m, _ in loaded[k]), default=0)
    for e in range(epochs):
        cells = [str(e + 1)]
        for key in ("spearman_occlusion", "spearman_difficulty"):
            for k in inst_keys:
                cells.append(_fmt([m[e].get(key) for m, _ in loaded[k] if len(m) > e], 3))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    flip_keys = [k for k in loaded if k[0] == "flip20"]
    if flip_keys:
        lines += [f"## Corrupted set: AUROC for the {flipped[0][0]} flipped boxes, per epoch", "",
                  "By sigma, and by the box's mean anchor cross-entropy in its last visit (the small-loss "
                  "criterion, available to the baseline too).", ""]
        header = ["epoch"] + [f"{v} AUROC sigma" for _, v in flip_keys if v != "baseline"] + \
                 [f"{v} AUROC loss" for _, v in flip_keys]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        n = max(len(m) for k in flip_keys for m, _ in loaded[k])
        for e in range(n):
            cells = [str(e + 1)]
            cells += [_fmt([m[e]["flipped"]["auroc_sigma"] for m, _ in loaded[k] if len(m) > e], 3)
                      for k in flip_keys if k[1] != "baseline"]
            cells += [_fmt([m[e]["flipped"].get("auroc_loss") for m, _ in loaded[k] if len(m) > e], 3)
                      for k in flip_keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    error_keys = [k for k in loaded if k[0] == "errors3"]
    if error_keys:
        lines += ["## Three kinds of box error (`errors3`): AUROC per kind against the clean boxes, per epoch", "",
                  "Each kind's boxes against the clean boxes only (the other kinds left out), by sigma (instance) and "
                  "by the box's mean anchor loss in its last visit (both variants). Boxes per kind: " + ", ".join(
                      f"{kind} {loaded[error_keys[0]][0][0][-1]['box_errors'][kind]['num']:,}"
                      for kind in ("clean", "flip", "shift", "spurious")
                      if kind in loaded[error_keys[0]][0][0][-1].get("box_errors", {})) + ".", ""]
        kinds = ("flip", "shift", "spurious")
        header = ["epoch"] + [f"{v} {kind} AUROC sigma" for _, v in error_keys if v != "baseline" for kind in kinds] \
            + [f"{v} {kind} AUROC loss" for _, v in error_keys for kind in kinds]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        n = max(len(m) for k in error_keys for m, _ in loaded[k])
        for e in range(n):
            cells = [str(e + 1)]
            for metric, keys in (("auroc_sigma", [k for k in error_keys if k[1] != "baseline"]), ("auroc_loss", error_keys)):
                for k in keys:
                    for kind in kinds:
                        cells.append(_fmt([m[e].get("box_errors", {}).get(kind, {}).get(metric)
                                           for m, _ in loaded[k] if len(m) > e], 3))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dataparams.detection import presets

    out = Path(args.out)
    if args.results is None:
        args.results = "benchmarks/results/detection_synth" + ("" if args.arch == "tiny_ssd" else f"/{args.arch}")
    results = Path(args.results)
    roots = {}
    for data in args.datasets:
        const = DATASETS[data]
        root = out / "data" / data
        made = presets.ensure_synthetic_data(root, getattr(presets, const))
        if made is not None:
            print(f"wrote {root}: {made.num_objects} objects, {made.num_flipped} flipped", flush=True)
        roots[data] = str(root)

    runs_dir = out / "runs" if args.arch == "tiny_ssd" else out / "runs" / args.arch
    plan: list[tuple[str, str, int]] = [(d, v, s) for s in args.seeds for d in args.datasets for v in VARIANTS]
    if args.paper_lr:
        plan.append(("clean", PAPER_LR_VARIANT, args.seeds[0]))
    plan += [(d, f"instance-lr{lr:g}", s) for s in args.seeds for d in args.datasets for lr in args.lr_instance]
    runs: dict[tuple[str, str], list[Path]] = {}
    for d, v, s in plan:
        runs.setdefault((d, v), []).append(runs_dir / d / v / f"seed{s}")
    todo = [(d, v, s) for d, v, s in plan if not (runs_dir / d / v / f"seed{s}" / "summary.json").exists()]
    if todo and not args.report_only:
        print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, d, v, s, roots[d], str(runs_dir / d / v / f"seed{s}"), args.threads,
                                   args.arch) for d, v, s in todo]
            for f in as_completed(futures):
                r = f.result()
                print(f"done {r['dataset']}/{r['variant']}/seed{r['seed']}: mAP|R40 moderate "
                      f"{r['map40_moderate']:.2f} in {r['seconds'] / 60:.1f} min", flush=True)

    from dataparams.detection.figures import object_detection_report

    finished = [p for paths in runs.values() for p in paths if (p / "summary.json").exists()]
    command = "python benchmarks/bench_detection.py " + " ".join(
        [f"--out {args.out}", f"--results {args.results}", "--seeds " + " ".join(map(str, args.seeds)),
         "--datasets " + " ".join(args.datasets), f"--jobs {args.jobs}"] + (["--paper-lr"] if args.paper_lr else [])
        + ([f"--arch {args.arch}"] if args.arch != "tiny_ssd" else [])
        + (["--lr-instance " + " ".join(f"{lr:g}" for lr in args.lr_instance)] if args.lr_instance else []))
    lines = _tables(runs, command, args.arch, args.jobs)
    if finished:
        report = object_detection_report(finished, results, title="Box data parameters, synthetic KITTI set")
        lines += ["## Figures", ""]
        for name, path in report["figures"].items():
            lines += [f"![{name}]({os.path.relpath(path, results)})", ""]
    results.mkdir(parents=True, exist_ok=True)
    emit(lines, str(results / "results.md"))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
