"""What the benchmark scripts share: the run directories they read, the rankings of those runs,
and the Markdown table they end with (printed, and kept when asked)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def emit(lines: list[str], out: str | None) -> None:
    """Print ``lines`` and, with ``out``, also write them there (the files in ``results/``)."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def parse_runs(doc: str | None, argv: list[str] | None, runs_help: str,
               more: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The command line every run-reading script takes: run directories, and ``--out FILE``
    (``more`` adds a script's own options)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help=runs_help)
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    if more is not None:
        more(parser)
    return parser.parse_args(argv)


#: The scores the screens compare: find-issues' ``SCORES`` without ``last-loss``, the one no
#: bench method reports.
SCORES = ("sigma", "sigma-mean", "mean-loss")


def noisy_reports(run: Path, scores: tuple[str, ...] = SCORES) -> Iterator[tuple[str, Any]]:
    """``(score, find_issues report)`` for each of ``scores`` the run has, for a run that knows
    which of its labels are wrong (the bench's injected noise)."""
    from dataparams.analysis.find_issues import find_issues
    from dataparams.runs import RunDirError

    for score in scores:
        try:
            rep = find_issues(run, score=score, load_dataset=False)
        except RunDirError:
            continue  # a run without an instance curriculum has no sigma scores
        if rep.is_corrupted is None:
            raise SystemExit(f"{run}: the run does not know which labels are wrong")
        yield score, rep
