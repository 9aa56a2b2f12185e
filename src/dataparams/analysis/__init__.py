"""Analysis of finished runs: label-error metrics (how well a score finds the mislabeled samples),
the report and its figures, find-issues.

Everything here reads run directories and arrays; nothing imports the training engine.
"""

from dataparams.analysis.find_issues import IssueReport, find_issues
from dataparams.analysis.metrics import (
    auroc,
    average_precision,
    estimate_num_mislabeled,
    label_error_metrics,
    over_seeds,
    precision_recall_at_k,
    separated_fraction,
    top_fraction_purity,
)
from dataparams.analysis.report import build_report
from dataparams.analysis.runs_io import group_runs, load_run, load_runs

__all__ = [
    "IssueReport",
    "auroc",
    "average_precision",
    "build_report",
    "estimate_num_mislabeled",
    "find_issues",
    "group_runs",
    "label_error_metrics",
    "load_run",
    "load_runs",
    "over_seeds",
    "precision_recall_at_k",
    "separated_fraction",
    "top_fraction_purity",
]
