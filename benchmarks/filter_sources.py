"""Which first training and which score should feed dp-filter's flags? (issue 13, a screen)

    python benchmarks/filter_sources.py RUN_DIR [RUN_DIR ...] [--bounds F [F ...]] [--out FILE]

dp-filter trains once, flags the samples the noise-rate-free mixture (``estimate_num_mislabeled``,
what find-issues uses) calls mislabeled, and retrains on the rest; the retraining can only be as
clean as the kept set. For each finished run and each score of ``find_issues`` it has (sigma,
sigma-mean, mean-loss) this prints, from the report's ``summary()``, how many samples the mixture flags, their precision and recall
against the injected noise, the share of wrong labels left in the kept set (what the retraining
has to survive; the run's own noise rate for comparison) and the score's AUROC. No training: it
reads the runs' snapshots, so it costs seconds.

With ``--bounds``, a second table for the runs trained on the GCE loss (dp-gce): the same numbers
for dp-gce-filter's rule, flag when the mean training loss is at least F times the GCE bound 1/q,
next to the mixture on the same score.

Choose on the tuning cells only (seed 100); other runs can only explain a result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from _table import emit, noisy_reports, parse_runs
from dataparams.methods.robust_losses import gce_loss_bound


def _wrong_kept(flagged: np.ndarray, wrong: np.ndarray) -> float:
    """Share of wrong labels among the samples not flagged: what a retraining has to survive."""
    kept = ~flagged
    return float((wrong & kept).sum() / max(int(kept.sum()), 1))


def rows_for(run: Path) -> list[list[str]]:
    rows = []
    for score, rep in noisy_reports(run):
        st = rep.summary()  # n, n_flagged, precision, recall and auroc of the mixture's flags
        rows.append([str(run), score, str(st["n"]), str(st["n_flagged"]), f"{st['precision']:.3f}",
                     f"{st['recall']:.3f}", f"{rep.is_corrupted.mean():.3f}",
                     f"{_wrong_kept(rep.is_flagged, rep.is_corrupted):.3f}", f"{st['auroc']:.4f}"])
    return rows


def _flag_row(run: Path, rule: str, flagged: np.ndarray, wrong: np.ndarray) -> str:
    precision = wrong[flagged].mean() if flagged.any() else 0.0
    recall = (wrong & flagged).sum() / max(int(wrong.sum()), 1)
    return (f"| {run} | {rule} | {len(wrong)} | {int(flagged.sum())} | {precision:.3f} | {recall:.3f} | "
            f"{wrong.mean():.3f} | {_wrong_kept(flagged, wrong):.3f} | {int((~flagged).sum())} |")


def bound_rows(run: Path, bounds: list[float]) -> list[str]:
    """dp-gce-filter's rule (mean loss >= F / q) and the mixture, on the mean-loss score of a GCE run."""
    curriculum = json.loads((run / "config.json").read_text())["curriculum"]
    if curriculum.get("loss") != "gce":
        return []
    reports = dict(noisy_reports(run, scores=("mean-loss",)))
    if "mean-loss" not in reports:
        raise SystemExit(f"{run}: no per-sample loss snapshots to rank by mean loss")
    rep = reports["mean-loss"]
    wrong, score = rep.is_corrupted, np.asarray(rep.score, dtype=np.float64)
    rows = [_flag_row(run, "mixture on log mean loss", rep.is_flagged, wrong)]
    bound = gce_loss_bound(float(curriculum["loss_q"]))
    for f in bounds:  # dp-gce-filter's rule (pipelines.filter_flags, rule="bound") at each fraction
        rows.append(_flag_row(run, f"mean loss >= {f:g} / q", score >= f * bound, wrong))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_runs(__doc__, argv, "finished run directories that injected their noise", lambda p: p.add_argument(
        "--bounds", nargs="+", type=float, metavar="F",
        help="also the table of dp-gce-filter's rule at these fractions of the GCE bound"))
    lines = ["Mixture flags by run and score, one run per row (n=1 each)", "",
             "| run | score | n | flagged | precision | recall | wrong, all | wrong, kept | AUROC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in args.runs:
        lines += ["| " + " | ".join(r) + " |" for r in rows_for(Path(run))]
    if args.bounds:
        lines += ["", "Flags on the mean training loss of GCE runs, one run per row (n=1 each)", "",
                  "| run | rule | n | flagged | precision | recall | wrong, all | wrong, kept | kept |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for run in args.runs:
            lines += bound_rows(Path(run), args.bounds)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
