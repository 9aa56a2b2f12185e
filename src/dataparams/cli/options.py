"""Options that several sub-commands take, each spelled once: how it is added to a parser and, for
the two option groups that a library call takes as a whole, how it is read back from the parsed
arguments (:func:`table_options`, :func:`train_kwargs`).

A sub-command passes only what differs (its default, and a help text that says what the option
means there). Options that look alike (--data / --data-dir, --seed / --seeds) say in their help
how they differ; README.md lists them under "The command line".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = [
    "add_data",
    "add_data_dir",
    "add_device",
    "add_epochs",
    "add_execution_args",
    "add_holdout",
    "add_out",
    "add_overrides",
    "add_overwrite",
    "add_quiet",
    "add_resume",
    "add_seed",
    "add_table_args",
    "table_options",
    "train_kwargs",
]

_Parser = argparse.ArgumentParser
_Target = Any  # a parser or an argument group of one


def add_out(p: _Parser, **kwargs: Any) -> None:
    p.add_argument("--out", **kwargs)


def add_quiet(p: _Target, help: str) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help=help)


def add_device(p: _Target, *, default: str = "auto",
               help: str = "auto | cpu | cuda | cuda:N | mps (default: auto)") -> None:
    p.add_argument("--device", default=default, help=help)


def add_overwrite(p: _Parser, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def add_resume(p: _Parser, help: str) -> None:
    p.add_argument("--resume", action="store_true", help=help)


def add_overrides(p: _Parser, *, help: str, default: list[str] | None = None) -> None:
    """``--set FIELD=VALUE`` (repeatable), into ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=default, metavar="FIELD=VALUE", help=help)


def add_data(p: _Parser, help: str) -> None:
    """``--data PATH``: the user's own labelled samples (not a preset's dataset folder)."""
    p.add_argument("--data", metavar="PATH", help=help)


def add_data_dir(p: _Parser, help: str) -> None:
    """``--data-dir``: where a preset's dataset is read from (not the user's own data)."""
    p.add_argument("--data-dir", help=help)


def add_epochs(p: _Parser, help: str) -> None:
    p.add_argument("--epochs", type=int, help=help)


def add_seed(p: _Parser, *, help: str, default: int | None = None) -> None:
    """``--seed N``: one value (``train --seeds`` takes several, one run each)."""
    p.add_argument("--seed", type=int, default=default, help=help)


def add_holdout(p: _Parser, *, help: str, default: float | None = None, metavar: str | None = None) -> None:
    p.add_argument("--holdout", type=float, default=default, metavar=metavar, help=help)


def add_execution_args(p: _Parser, *, workers: bool = True) -> None:
    """Where and how a training runs: options that do not change its result (train, demo);
    read back by :func:`train_kwargs` (and ``--workers`` as a config override, offered only where
    ``workers``: the demo's data is in memory)."""
    g = p.add_argument_group("execution (does not change the result)")
    add_device(g)
    g.add_argument("--amp", default="off", choices=["off", "fp16", "bf16"],
                   help="mixed precision: fp16 (CUDA, with a gradient scaler) or bf16 (default: off)")
    g.add_argument("--deterministic", action="store_true",
                   help="use deterministic algorithms only (slower on GPU; CPU runs are deterministic anyway)")
    if workers:
        g.add_argument("--workers", type=int, help="DataLoader worker processes for image-file datasets")
    add_quiet(g, "no progress bars or per-epoch lines")
    g.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard event files (classification runs; detection runs write none)")


def train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The execution options (:func:`add_execution_args`) as the training functions' keyword arguments."""
    return dict(device=args.device, amp=args.amp, deterministic=args.deterministic, quiet=args.quiet,
                tensorboard=not args.no_tensorboard)


def add_table_args(p: _Parser) -> None:
    """How to read a table given as ``--data`` (train, find-issues); read back by :func:`table_options`."""
    g = p.add_argument_group("a table as --data (a .parquet file or a datasets save_to_disk folder)")
    g.add_argument("--label-column", metavar="NAME", help="the column of labels (default: label)")
    g.add_argument("--image-column", metavar="NAME",
                   help="the column of images (PIL images, encoded bytes, the Image feature) or image file "
                   "paths (default: the only such column)")
    g.add_argument("--feature-columns", nargs="+", metavar="NAME",
                   help="the columns of features: numbers, or one vector (an embedding) per row (default: "
                   "every numeric column but the label and the id, else the only vector column)")
    g.add_argument("--id-column", metavar="NAME", help="each row's id for the reports (default: row i)")
    g.add_argument("--split", metavar="NAME", help="the split of a DatasetDict folder (default: train)")


def table_options(args: argparse.Namespace) -> dict[str, Any]:
    """The table options given (``label_column``, ...), refused unless ``--data`` is a table."""
    from dataparams.config import ConfigError
    from dataparams.data.registry import TABLE_OPTIONS
    from dataparams.data.tables import is_table_path

    given = {k: getattr(args, k) for k in TABLE_OPTIONS if getattr(args, k, None) is not None}
    if not given:
        return {}
    flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
    verb = "applies" if len(given) == 1 else "apply"
    data = getattr(args, "data", None)
    if data is None:
        raise ConfigError(f"{flags} {verb} to a table given as --data (a .parquet file or a datasets "
                          "save_to_disk folder)")
    # A missing path is left to the loader, whose message says so.
    if Path(data).expanduser().exists() and not is_table_path(data):
        raise ConfigError(f"{flags} {verb} to a table (a .parquet file or a folder written by datasets' "
                          f"save_to_disk); {data} is not one: a CSV list has the columns path and label, a "
                          "class folder its subfolders, an .npz its X and y")
    return given
