"""``dataparams demo``: the cross-entropy baseline against the instance curriculum on Fashion-MNIST
with 40% uniform label noise (:func:`dataparams.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dataparams.cli.options import (
    add_data_dir,
    add_epochs,
    add_execution_args,
    add_out,
    add_overwrite,
    add_seed,
    train_kwargs,
)

__all__ = ["add_parser", "cmd_demo"]


def add_parser(sub: Any) -> None:
    """Add ``demo`` to the sub-command parsers ``sub``; it runs :func:`cmd_demo`."""
    d = sub.add_parser("demo", help="baseline vs instance curriculum on Fashion-MNIST with 40%% label noise",
                       description="The main job: train the cross-entropy baseline and the instance-level curriculum "
                       "on Fashion-MNIST with 40% uniform label noise, then print test accuracy and the "
                       "noise-detection AUROC of sigma side by side.")
    d.set_defaults(func=cmd_demo)
    add_out(d, default="runs/demo", help="parent folder of the two run directories (default: %(default)s)")
    add_data_dir(d, "the folder of Fashion-MNIST's four IDX files (default: $DATAPARAMS_DATA_DIR/fashion-mnist when "
                 "that variable is set, else the Debian package's)")
    add_epochs(d, "override the demo's epoch count")
    add_seed(d, default=1, help="seed of both trainings (default: %(default)s, the seed every preset trains with)")
    add_overwrite(d, "replace earlier demo runs (default: refuse, or resume)")
    add_execution_args(d, workers=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from dataparams.demo import run_demo

    run_demo(Path(args.out), data_dir=args.data_dir, epochs=args.epochs, seed=args.seed,
             overwrite=args.overwrite, **train_kwargs(args))
    return 0
