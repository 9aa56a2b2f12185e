"""``dataparams kitti-eval``: KITTI 2D detection AP of label files with the official devkit's rules
(:func:`dataparams.detection.kitti_eval.kitti_eval_command`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "cmd_kitti_eval"]


def add_parser(sub: Any) -> None:
    """Add ``kitti-eval`` to the sub-command parsers ``sub``; it runs :func:`cmd_kitti_eval`."""
    k = sub.add_parser("kitti-eval", help="KITTI 2D detection AP (the official devkit's rules) of label files",
                       description="Evaluate detections in KITTI label format (the score as the last column) against "
                       "KITTI ground-truth label files with the official devkit's semantics: Car at IoU 0.7, Pedestrian "
                       "and Cyclist at 0.5; easy/moderate/hard by box height, occlusion and truncation; DontCare "
                       "regions and neighbouring classes ignored; 40-recall-point and 11-point AP, in percent.")
    k.set_defaults(func=cmd_kitti_eval)
    k.add_argument("gt_dir", metavar="GT_LABEL_DIR", help="ground-truth label files (e.g. training/label_2)")
    k.add_argument("det_dir", metavar="DET_LABEL_DIR", help="detection label files; a missing file = no detections")
    k.add_argument("--split", metavar="FILE", help="ImageSets file: evaluate these image ids only")
    k.add_argument("--json", metavar="FILE", help='also write {"Car": {"easy": {"ap40": ..., "ap11": ...}, ...}, ...}')


def cmd_kitti_eval(args: argparse.Namespace) -> int:
    from dataparams.detection.kitti_eval import kitti_eval_command

    _, table = kitti_eval_command(args.gt_dir, args.det_dir, split=args.split, json_out=args.json)
    print(table)
    return 0
