"""Would a narrower MLP make `find-issues --data` on a large feature table as fast as cleanlab?

The feature-table model is an MLP with two hidden layers of 256 (``dataparams.models.mlp``), a
width chosen on small tables where it must be able to memorise wrong labels. On 200,000 rows its
15 epochs are most of the command's time. The widths are not a config option, so this screen
replaces the MLP's default widths in-process (``--hidden 128,128``; ``--hidden ""``: no hidden
layer, a linear model) and runs the command a user runs, ``find-issues --data``, then scores the
ranking (AUROC, AP against the injected noise) and the flagged set. Wall time: the command in
this process after the package is imported (torch's import not counted), so compare rows of one
machine state only. n=1 per cell.

    python benchmarks/screen_feature_width.py --hidden 64,64 DATA.npz TRUTH.npy OUT
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="an .npz with X and y (embeddings_scale.py / screen_feature_epochs.py write them)")
    p.add_argument("truth", help="a .npy of the corrupted mask, in the rows' order")
    p.add_argument("out")
    p.add_argument("--hidden", default="256,256", help="hidden widths, comma-separated; empty for a linear model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args(argv)
    widths = tuple(int(h) for h in args.hidden.split(",") if h)

    import dataparams.models.mlp as mlp

    init = mlp.MLP.__init__

    def narrowed(self, in_features, num_classes, *, hidden=(256, 256), dropout=0.0):  # noqa: ANN001
        init(self, in_features, num_classes, hidden=widths, dropout=dropout)

    mlp.MLP.__init__ = narrowed
    from dataparams.cli import main as cli

    extra = [a for o in args.overrides for a in ("--set", o)]
    t0 = time.perf_counter()
    rc = cli(["find-issues", "--data", args.data, "--out", args.out, "--device", "cpu", "--quiet", "--overwrite",
              *extra])
    wall = time.perf_counter() - t0
    if rc:
        sys.exit(rc)
    import pandas as pd

    from embeddings_scale import auroc_ap
    from screen_feature_epochs import flag_quality

    truth = np.load(args.truth)
    table = pd.read_csv(Path(args.out) / "issues.csv", usecols=["score", "source_index"])
    score = np.full(len(truth), np.nan)
    score[table["source_index"].to_numpy()] = table["score"].to_numpy()
    auroc, ap = auroc_ap(score, truth)
    precision, recall, f1 = flag_quality(Path(args.out), truth)
    ratio = np.load(Path(args.out) / "label_issues_mask.npy").sum() / truth.sum()
    print(f"| {args.hidden or 'linear'} | {auroc:.4f} | {ap:.4f} | {ratio:.2f} | {precision:.3f} | {recall:.3f} | "
          f"{f1:.3f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
