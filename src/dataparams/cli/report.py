"""``dataparams report``: figures and a self-contained HTML report of finished runs, classification
(:func:`dataparams.analysis.report.build_report`) and detection
(:func:`dataparams.detection.figures.object_detection_report`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dataparams.cli.options import add_out, add_quiet, add_seed

__all__ = ["add_parser", "cmd_report"]


def add_parser(sub: Any) -> None:
    """Add ``report`` to the sub-command parsers ``sub``; it runs :func:`cmd_report`."""
    r = sub.add_parser("report", help="figures and a self-contained HTML report of finished runs",
                       description="Read run directories (or folders of them, e.g. OUT of `train --seeds`), group "
                       "the seeds of each setting, and write the learned-curriculum figures (PNG) and "
                       "report.html (self-contained, figures embedded) into --out.")
    r.set_defaults(func=cmd_report)
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders holding them")
    add_out(r, required=True, help="folder for the report")
    r.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="classes (indices or names) for the class-parameter figure (default: 4 at random; "
                   "classification runs: a detection run's figures ignore it)")
    r.add_argument("--samples", nargs="+", type=int, metavar="INDEX",
                   help="classification runs: samples (positions in the run) for the instance-parameter figure "
                   "(default: 3 clean and 3 corrupted at random)")
    add_seed(r, default=0, help="seed of the random choice of the classes and samples the figures show, not a "
              "training seed (default: %(default)s)")
    add_quiet(r, "no progress lines")


def cmd_report(args: argparse.Namespace) -> int:
    from dataparams.analysis.report import build_report
    from dataparams.analysis.runs_io import discover_runs
    from dataparams.detection.figures import is_detection_run, object_detection_report

    # Detection runs (sec. 3.3) get their own report: Figure 3, sigma per difficulty, KITTI AP.
    paths = discover_runs(args.run_dirs)
    detection = [p for p in paths if is_detection_run(p)]
    classification = [p for p in paths if not is_detection_run(p)]
    out = Path(args.out)
    if detection:
        det_out = out / "detection" if classification else out
        result = object_detection_report(detection, det_out)
        print(f"{len(result['figures'])} detection figure(s), report: {result['html']}")
    if classification or not detection:
        classes = None if args.classes is None else [int(c) if c.lstrip("-").isdigit() else c for c in args.classes]
        result = build_report(classification or args.run_dirs, out, classes=classes, samples=args.samples,
                              seed=args.seed, quiet=args.quiet)
        for item in result["skipped"]:
            print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
        print(f"{len(result['figures'])} figure(s), report: {result['html']}")
    return 0
