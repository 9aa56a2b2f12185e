"""Which first training and which score should feed dp-filter's flags? (issue 13, a screen)

    python benchmarks/filter_sources.py RUN_DIR [RUN_DIR ...] [--out FILE]

dp-filter trains once, flags the samples the noise-rate-free mixture (``estimate_num_mislabeled``,
what find-issues uses) calls mislabeled, and retrains on the rest; the retraining can only be as
clean as the kept set. For each finished run and each score of ``find_issues`` it has (sigma,
sigma-mean, mean-loss) this prints, from the report's ``summary()``, how many samples the mixture flags, their precision and recall
against the injected noise, the share of wrong labels left in the kept set (what the retraining
has to survive; the run's own noise rate for comparison) and the score's AUROC. No training: it
reads the runs' snapshots, so it costs seconds.

Choose on the tuning cells only (seed 100); other runs can only explain a result.
"""

from __future__ import annotations

from pathlib import Path

from _table import emit, noisy_reports, parse_runs


def rows_for(run: Path) -> list[list[str]]:
    rows = []
    for score, rep in noisy_reports(run):
        st = rep.summary()  # n, n_flagged, precision, recall and auroc of the mixture's flags
        wrong, kept = rep.is_corrupted, ~rep.is_flagged
        rows.append([str(run), score, str(st["n"]), str(st["n_flagged"]), f"{st['precision']:.3f}",
                     f"{st['recall']:.3f}", f"{wrong.mean():.3f}",
                     f"{(wrong & kept).sum() / max(int(kept.sum()), 1):.3f}", f"{st['auroc']:.4f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_runs(__doc__, argv, "finished run directories that injected their noise")
    lines = ["Mixture flags by run and score, one run per row (n=1 each)", "",
             "| run | score | n | flagged | precision | recall | wrong, all | wrong, kept | AUROC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in args.runs:
        lines += ["| " + " | ".join(r) + " |" for r in rows_for(Path(run))]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
