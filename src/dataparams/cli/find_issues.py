"""``dataparams find-issues``: rank samples by how likely their label is wrong and flag the likely
mislabeled ones: of the user's data (``--data``, trained first:
:func:`dataparams.issues.find_label_issues`), of a finished run
(:func:`dataparams.analysis.find_issues.find_issues`), or per box of a detection run
(:func:`dataparams.detection.issues.find_box_issues`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from dataparams.cli.options import (
    add_data,
    add_device,
    add_holdout,
    add_out,
    add_overrides,
    add_overwrite,
    add_quiet,
    add_seed,
    add_table_args,
    table_options,
)
from dataparams.cli.torchrun import single_process

__all__ = ["add_parser", "cmd_find_issues"]


def add_parser(sub: Any) -> None:
    """Add ``find-issues`` to the sub-command parsers ``sub``; it runs :func:`cmd_find_issues`."""
    from dataparams.analysis.find_issues import SCORES
    from dataparams.scores import FLAG_RULES

    f = sub.add_parser("find-issues", help="rank samples by how likely their label is wrong: of a run, or of your data",
                       description="With --data PATH: train the instance curriculum on your data (labels as given, "
                       "no test set needed) and rank its samples. With RUN_DIR: rank the samples of a finished run. "
                       "Either way: rank by the learned instance sigma (or a loss score), flag the estimated number "
                       "of mislabeled ones without being told the noise rate, and write issues.csv, "
                       "cleanlab-compatible label_issues_mask.npy and ranked_label_issues.npy, summary.json and "
                       "(with --data) report.html with the most suspect samples. With --data, OUT/run is "
                       "reused (or continued) only when it was trained on the same data and settings: after "
                       "an edited label, an added or removed file or other settings it is trained again, and "
                       "the reason printed. A detection run's RUN_DIR (dataparams train --preset kitti*/...) gets one row per "
                       "ground-truth box instead: box_issues.csv (image id, line of the box in its KITTI label file, "
                       "class, box, sigma, mean loss, rank, flagged, label_score), image_issues.csv (per image: the "
                       "min of its boxes' label_score, is_label_issue = any box flagged), the per-image "
                       "label_issues_mask.npy and label_quality_scores.npy, summary.json and report.html with the "
                       "most suspect boxes drawn on their images.")
    f.set_defaults(func=cmd_find_issues)
    f.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run directory written by `dataparams train`")
    add_data(f, "your data: a path,label CSV/TSV list, a folder of class "
              "folders, an .npz with X (features) and y, a .parquet file or a datasets save_to_disk "
              "folder (see the table options below)")
    add_out(f, help="output folder (default: RUN_DIR/issues; with --data, <data name>-issues in the working "
            "directory, or beside the data folder when the working directory is inside it; an output folder "
            "inside a data folder is refused)")
    f.add_argument("--score", choices=list(SCORES),
                   help="sigma: instance temperature at an epoch; sigma-mean: sigma integrated over training "
                   "(geometric mean over the epochs); last-loss: each sample's training loss at its last visit; "
                   "mean-loss: its mean over the epochs, the small-loss criterion (the loss scores work for any run) "
                   "(default: mean-loss with --data -- the loss under the learned temperatures, averaged over training, "
                   "which ranked best on our tuning data -- and sigma for RUN_DIR; mean-loss for a detection run, "
                   "whose box loss finds wrong-class boxes better than the box sigma)")
    f.add_argument("--rule", choices=list(FLAG_RULES), default="auto",
                   help="how many to flag, without the noise rate: class-mean (a sample whose label quality is "
                   "below its given class's mean), mixture (two Gaussians on the log score), bound (a fraction "
                   "of a bounded loss's maximum), confident (confident learning on the class probabilities "
                   "averaged over training); auto: bound for a GCE-trained run, else class-mean for a loss "
                   "score and mixture for sigma; a detection run takes auto, class-mean or mixture (default: %(default)s)")
    add_holdout(f, default=0.0, help="with --data: fraction held out to choose the epoch and measure accuracy "
                 "(not ranked; default: %(default)s)")
    add_overrides(f, default=[], help="with --data: config overrides, e.g. --set model.arch=resnet18 --set "
                   "optim.epochs=30")
    f.add_argument("--model", help="with --data: a model architecture (same as --set model.arch=...)")
    f.add_argument("--weights", metavar="FILE", help="with --data: a local pretrained checkpoint to start from")
    add_seed(f, default=1, help="with --data: seed of the training (default: %(default)s, the seed every preset "
              "trains with)")
    add_device(f, help="with --data: auto | cpu | cuda | cuda:N | mps")
    add_overwrite(f, "with --data: retrain even if OUT/run holds a run on the same data and settings "
                   "(one on other data or settings is retrained anyway)")
    add_quiet(f, "no progress output")
    f.add_argument("--epoch", type=int, help="use the snapshot of this epoch (default: the last); not a number "
                   "of epochs to train, which is --set optim.epochs=N with --data")
    f.add_argument("--cleaned-labels", choices=["relabel", "drop"],
                   help="also write cleaned_labels_<action>.csv: flagged samples relabelled with the model's "
                   "prediction, or dropped")
    add_table_args(f)


def _pipeline_stage(run_dir: Path, score: str | None,
                    rule: str) -> tuple[Path, str | None, str, Path | None]:
    """A filter pipeline's folder (``train --data`` OUT, ``--method dp-*-filter``) ranks by its
    first stage; that stage, unless told another score or rule, is ranked by the pipeline's score
    and flagged as the pipeline flagged it: its kept file, returned last (None otherwise), says
    which samples the retraining left out."""
    import json

    from dataparams.runs.logger import write_line

    record_file = run_dir / "pipeline.json"
    if record_file.is_file() and not (run_dir / "config.json").exists():
        recorded = Path(json.loads(record_file.read_text())["stages"]["stage1"]["run_dir"])
        # The layout's own stage1 first: a copied or moved folder records the old absolute path.
        stage1 = run_dir / "stage1" if (run_dir / "stage1" / "config.json").exists() else recorded
        write_line(f"{run_dir} is a filter pipeline: ranking its first stage, {stage1}")
        run_dir = stage1
    parent = run_dir.parent / "pipeline.json"
    if not parent.is_file():
        return run_dir, score, rule, None
    record = json.loads(parent.read_text())
    recorded = Path(record.get("stages", {}).get("stage1", {}).get("run_dir", ""))
    flags = record.get("flags") or {}
    is_stage1 = run_dir.name == "stage1" or recorded.resolve() == run_dir.resolve()
    if not (is_stage1 and flags.get("score") and record.get("kept_file")):
        return run_dir, score, rule, None
    if (score or flags["score"]) != flags["score"] or rule != "auto":
        return run_dir, score, rule, None  # asked for another ranking or rule: that one
    kept = Path(record["kept_file"])
    if not kept.is_file():
        kept = parent.parent / kept.name
    return run_dir, flags["score"], flags.get("rule") or rule, kept if kept.is_file() else None


def cmd_find_issues(args: argparse.Namespace) -> int:
    from dataparams.analysis.find_issues import find_issues
    from dataparams.config import ConfigError

    if (args.run_dir is None) == (args.data is None):
        raise ConfigError("give either a RUN_DIR or --data PATH")
    table = table_options(args)  # refused before anything is read when --data is not a table
    # Each process would rank and write the same files; train with torchrun, rank the run alone.
    single_process("find-issues runs in one process; under torchrun use `dataparams train --data PATH`, then "
                    "`dataparams find-issues RUN_DIR` without torchrun")
    if args.data is not None:
        from dataparams.issues import DEFAULT_SCORE, default_out_dir, find_label_issues

        if args.epoch is not None:
            raise ConfigError("--epoch reads one snapshot of a RUN_DIR; with --data the ranking is read at the end of "
                              "the training it runs (to rank at an earlier epoch: `dataparams find-issues "
                              "OUT/run --epoch N` afterwards)")

        t0 = time.perf_counter()
        overrides = [*args.overrides, *([f"model.arch={args.model}"] if args.model else []),
                     *([f"model.weights={args.weights}"] if args.weights else [])]
        out = Path(args.out) if args.out else default_out_dir(args.data)
        report, files = find_label_issues(args.data, out, score=args.score or DEFAULT_SCORE, rule=args.rule,
                                          holdout=args.holdout,
                                          overrides=overrides, seed=args.seed, device=args.device,
                                          overwrite=args.overwrite, quiet=args.quiet, **table)
        if args.cleaned_labels:
            files["cleaned_labels"] = report.write_cleaned_labels(out / f"cleaned_labels_{args.cleaned_labels}.csv",
                                                                  action=args.cleaned_labels)
        print(f"{args.data}: {report.n:,} samples ranked in {time.perf_counter() - t0:.1f}s")
    else:
        from dataparams.detection.figures import is_detection_run

        if is_detection_run(args.run_dir):  # per-box issues of a detection run (sec. 3.3)
            return _find_box_issues(args)
        run_dir, score, rule, kept = _pipeline_stage(Path(args.run_dir), args.score, args.rule)
        report = find_issues(run_dir, score=score or "sigma", epoch=args.epoch, rule=rule)
        if kept is not None and args.epoch is None:
            # The pipeline's own flags, exactly: its rule ran without the class probabilities
            # that find_issues reads (which may leave a clean-looking class whole).
            import numpy as np

            flagged = ~np.isin(report.source_index, np.load(kept))
            report.mislabeled_prob = flagged.astype(np.float64)
            report.notes.append(f"flags: the pipeline's, the samples its kept file {kept.name} leaves out")
        out = Path(args.out) if args.out else run_dir / "issues"
        files = report.save(out, cleaned_labels=args.cleaned_labels)
    summary = report.summary()
    print(f"{summary['run_dir']}: scored by {summary['score']} at epoch {summary['epoch']}")
    print(f"flagged {summary['n_flagged']} of {summary['n']} samples as mislabeled "
          f"({100 * (summary['fraction_flagged'] or 0):.1f}%, estimated without the noise rate)")
    if summary["n"] and summary["n_flagged"] == summary["n"]:
        loss_score = summary["score"] in ("mean-loss", "last-loss")
        print(f"warning: the rule ({summary['rule']}) flagged every sample: it cannot tell these scores apart "
              "(e.g. the bound rule after a few epochs, when every mean loss is still high)"
              + ("; try --rule class-mean" if loss_score else "; try a loss score (--score mean-loss)"), file=sys.stderr)
    if "n_corrupted" in summary:
        def pct(v: Any) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        auroc = "n/a" if summary["auroc"] is None else f"{summary['auroc']:.4f}"
        print(f"truth: {summary['n_corrupted']} corrupted; precision {pct(summary['precision'])}, "
              f"recall {pct(summary['recall'])}, AUROC {auroc}")
    for note in report.notes:
        print(f"note: {note}")
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def _find_box_issues(args: argparse.Namespace) -> int:
    """find-issues RUN_DIR on a detection run: box_issues.csv, image_issues.csv, summary.json, report.html."""
    from dataparams.config import ConfigError
    from dataparams.detection.issues import DEFAULT_BOX_SCORE, find_box_issues

    if args.cleaned_labels:
        raise ConfigError("--cleaned-labels is for classification runs; a detection run's flagged boxes are listed "
                          "in box_issues.csv (image_id, line)")
    report = find_box_issues(args.run_dir, score=args.score or DEFAULT_BOX_SCORE, epoch=args.epoch, rule=args.rule)
    out = Path(args.out) if args.out else Path(args.run_dir) / "issues"
    files = report.save(out)
    s = report.summary()
    print(f"{s['run_dir']}: detection run, boxes scored by {s['score']} at epoch {s['epoch']}")
    print(f"flagged {s['n_flagged']} of {s['n_boxes']} boxes ({100 * (s['fraction_flagged'] or 0):.1f}%, "
          f"{s['rule']} rule, estimated without the noise rate); {s['n_images_flagged']} of {s['n_images']} "
          "images have a flagged box")
    if "n_corrupted" in s:
        def fmt(v: Any, pct: bool = False) -> str:
            return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.4f}")

        print(f"truth: {s['n_corrupted']} boxes of another class; precision {fmt(s['precision'], True)}, "
              f"recall {fmt(s['recall'], True)}, AUROC {fmt(s['auroc'])}")
    for note in report.notes:
        print(f"note: {note}")
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0
