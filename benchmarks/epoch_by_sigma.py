"""Can integrated sigma choose the epoch to keep, without clean labels? (issue 13, a screened variant)

    python benchmarks/epoch_by_sigma.py RUN_DIR [RUN_DIR ...] [--out FILE]

For finished data-parameter runs, reads every epoch's sigma and per-sample loss snapshots and
splits the training samples into suspect and trusted by a two-component Gaussian mixture on log
sigma averaged over all epochs (the ``sigma-mean`` ranking; no noise rate, no clean label). Three
label-free epoch choices are tried:

* ``loss gap``: the epoch where the suspect samples' mean loss exceeds the trusted samples' by the
  most (the model fits the trusted labels and not yet the suspect ones);
* ``loss ratio``: the same as a ratio;
* ``sigma gap``: the epoch where the two groups' mean log sigma differ the most.

Each is compared with the final epoch, the epoch chosen on the noisy validation split (when the
run has one) and the best epoch by test accuracy (not usable; an upper bound). The test accuracy
at the chosen epoch is the quantity; a choice is worth keeping only if it beats the final epoch and
comes near the noisy-validation choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _table import emit, parse_runs
from dataparams.analysis.metrics import estimate_num_mislabeled
from dataparams.runs import RunDir


def choices(run: Path) -> dict[str, tuple[int, float]]:
    """(epoch, test accuracy) of every choice for one run."""
    rundir = RunDir(run)
    metrics = rundir.read_metrics()
    test = np.array([m["test_acc"] for m in metrics])
    snaps = [rundir.load_snapshot(m["epoch"]) for m in metrics]
    log_sigma = np.log(np.stack([s["instance_sigma"] for s in snaps]).astype(np.float64))
    loss = np.stack([s["loss"] for s in snaps]).astype(np.float64)
    # The package's noise-rate-free mixture (what find-issues flags with), on integrated log sigma.
    suspect = estimate_num_mislabeled(log_sigma.mean(0), log=False)["posterior"] > 0.5
    gap = loss[:, suspect].mean(1) - loss[:, ~suspect].mean(1)
    ratio = loss[:, suspect].mean(1) / np.maximum(loss[:, ~suspect].mean(1), 1e-6)
    sigma_gap = log_sigma[:, suspect].mean(1) - log_sigma[:, ~suspect].mean(1)
    out = {"final": (len(test), test[-1])}
    val = [m.get("val_acc") for m in metrics]
    if all(v is not None for v in val):
        e = int(np.argmax(val))
        out["noisy val"] = (e + 1, test[e])
    for name, curve in (("loss gap", gap), ("loss ratio", ratio), ("sigma gap", sigma_gap)):
        e = int(np.argmax(curve))
        out[name] = (e + 1, test[e])
    e = int(np.argmax(test))
    out["best (test, not usable)"] = (e + 1, test[e])
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_runs(__doc__, argv, "run directories of data-parameter runs with sigma snapshots")
    rows = {run: choices(Path(run)) for run in args.runs}
    names = list(dict.fromkeys(k for r in rows.values() for k in r))
    lines = ["Test accuracy (%) at the epoch each rule chooses (epoch in brackets)", "",
             "| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for run, r in rows.items():
        lines.append(f"| {run} | " + " | ".join(f"{r[n][1]:.2f} ({r[n][0]})" if n in r else "n/a" for n in names) + " |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
