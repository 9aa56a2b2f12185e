"""Does ranking within each given class find the wrong labels better? (issue 13, a screened variant)

    python benchmarks/per_class_ranking.py RUN_DIR [RUN_DIR ...] [--out FILE]

The paper's class temperatures (sec. 3.2) say that classes differ in how hard they are: a clean
but hard class (a shirt among T-shirts and pullovers) keeps larger instance temperatures and
larger losses than an easy one (trousers), so one global ranking may put clean hard-class samples
above wrong labels of an easy class. Ranking within the given class removes that offset. For each
finished run and each score of ``find_issues`` that the run has (sigma, sigma-mean, mean-loss),
this prints the AUROC of the wrong labels for

* ``global``: the score as find-issues ranks it;
* ``class z``: the log score standardised within its given class by the class median and the
  median absolute deviation (robust to the wrong labels inside the class);
* ``class rank``: the score's percentile within its given class.

The runs must know the truth (the bench's injected noise). Screen on the tuning cells only: a
variant is kept when it beats ``global`` on both noise kinds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _table import emit, noisy_reports, parse_runs
from dataparams.analysis.metrics import auroc


def class_z(log_score: np.ndarray, given: np.ndarray) -> np.ndarray:
    """``log_score`` standardised within each given class by its median and MAD."""
    out = np.empty_like(log_score)
    for c in np.unique(given):
        m = given == c
        v = log_score[m]
        med = np.median(v)
        mad = np.median(np.abs(v - med))
        out[m] = (v - med) / max(mad, 1e-12)
    return out


def class_rank(score: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The percentile of ``score`` within its given class (0 lowest, 1 highest)."""
    out = np.empty_like(score)
    for c in np.unique(given):
        idx = np.flatnonzero(given == c)
        order = np.argsort(score[idx], kind="stable")
        pct = np.empty(idx.size)
        pct[order] = np.arange(idx.size) / max(idx.size - 1, 1)
        out[idx] = pct
    return out


def rows_for(run: Path) -> list[list[str]]:
    rows = []
    for score, rep in noisy_reports(run):
        log_s = np.log(np.maximum(rep.score, 1e-8))
        values = [auroc(rep.score, rep.is_corrupted), auroc(class_z(log_s, rep.given), rep.is_corrupted),
                  auroc(class_rank(rep.score, rep.given), rep.is_corrupted)]
        rows.append([str(run), score] + [f"{v:.4f}" for v in values])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_runs(__doc__, argv, "finished run directories that injected their noise")
    lines = ["AUROC of the wrong labels, one run per row (n=1 each)", "",
             "| run | score | global | class z | class rank |", "|---|---|---:|---:|---:|"]
    for run in args.runs:
        lines += ["| " + " | ".join(r) + " |" for r in rows_for(Path(run))]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
