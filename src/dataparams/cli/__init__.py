"""The ``dataparams`` command line: train, demo, presets, report, find-issues, kitti-eval.

Only this package parses arguments. It builds :class:`~dataparams.config.TrainConfig` objects
from a preset plus overrides and hands them, with explicit options, to library functions.

Layout, one module per sub-command, each with ``add_parser(sub)`` (its options; it sets ``func``
to the ``cmd_*`` that runs it) and that ``cmd_*(args) -> int``:

- ``train.py``: ``train`` (presets, ``--config``, ``--method``, ``--data``, ``--seeds``, the
  filter pipelines and the detection presets);
- ``demo.py``, ``presets.py``, ``report.py``, ``find_issues.py``, ``kitti_eval.py``: the others;
- ``options.py``: the options several sub-commands take, each spelled once, and the readers of
  the two option groups (the table options, the execution options);
- ``torchrun.py``: the refusal of a sub-command that runs in one process only under torchrun;
- this module: the parser (:func:`get_args_parser`) and :func:`main`, which runs a sub-command
  and prints the user's errors (:data:`USER_ERRORS`) as one line.
"""

from __future__ import annotations

import argparse
import sys

from dataparams.cli import demo, find_issues, kitti_eval, presets, report, train
from dataparams.cli.demo import cmd_demo
from dataparams.cli.find_issues import cmd_find_issues
from dataparams.cli.kitti_eval import cmd_kitti_eval
from dataparams.cli.presets import cmd_presets
from dataparams.cli.report import cmd_report
from dataparams.cli.train import cmd_train

__all__ = [
    "USER_ERRORS",
    "cmd_demo",
    "cmd_find_issues",
    "cmd_kitti_eval",
    "cmd_presets",
    "cmd_report",
    "cmd_train",
    "get_args_parser",
    "main",
]

# In the order `dataparams --help` lists them.
_SUBCOMMANDS = (train, demo, presets, report, find_issues, kitti_eval)


def get_args_parser() -> argparse.ArgumentParser:
    """The ``dataparams`` parser; each sub-command's parser sets ``func``, the ``cmd_*`` that runs it."""
    parser = argparse.ArgumentParser(
        prog="dataparams",
        description=(
            "Train PyTorch models with data parameters (Saxena, Tuzel & DeCoste, NeurIPS 2019): a learnable "
            "temperature per class and per sample, a dynamic curriculum, and a score that finds mislabeled data."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def _explain(e: Exception) -> str:
    """The library's message, with what to do about it in terms of this command line's flags."""
    from dataparams.data.base import DatasetNotFoundError
    from dataparams.runs import RunConflictError, RunExistsError, RunLockedError

    if isinstance(e, RunLockedError):
        # --overwrite does not help: a live process's run is never deleted under it.
        return f"{e.path} is being written by {e.holder}; wait for it to end or use another --out"
    if isinstance(e, RunExistsError):
        return f"{e}; pass --resume to continue it or --overwrite to start over"
    if isinstance(e, RunConflictError):
        return f"{e}; use another --out, or --overwrite to replace it"
    if isinstance(e, DatasetNotFoundError):
        return f"{e} (point --data-dir at the dataset's folder)"
    return str(e)


def _interrupted(args: argparse.Namespace) -> str:
    """What to say on Ctrl-C: how to continue the interrupted command, where it trains anything.

    Each command continues in its own way: ``train`` takes ``--resume``; ``find-issues --data``
    and ``demo`` have no such flag and continue a run they find in their output folder by
    themselves; the other commands train nothing, so there is nothing to continue.
    """
    # Run again with --overwrite, these would start over rather than continue.
    overwrite = getattr(args, "overwrite", False)
    if args.command == "train":
        return "interrupted; continue with --resume" + (" (in place of --overwrite)" if overwrite else "")
    if args.command == "demo" or (args.command == "find-issues" and getattr(args, "data", None)):
        return ("interrupted; run the same command again" + (" without --overwrite" if overwrite else "")
                + " to continue")
    return "interrupted"


#: The library's errors about what the user gave (a name, a value, a file, the data, a run
#: directory), as (module, class): :func:`main` prints them as one line. Subclasses count too
#: (RunExistsError, RunConflictError and RunLockedError are RunDirErrors). A class whose module
#: was never imported cannot have been raised, so none is imported to check.
USER_ERRORS = (
    ("dataparams.config", "ConfigError"),
    ("dataparams.runs.rundir", "RunDirError"),
    ("dataparams.data.base", "DatasetNotFoundError"),
    ("dataparams.data.base", "DatasetFormatError"),
    ("dataparams.data.userdata", "UserDataError"),
    ("dataparams.data.images", "ImageTooLarge"),
    ("dataparams.distributed.checkpoint", "ShardFileError"),
    ("dataparams.detection.kitti", "KittiFormatError"),
    ("dataparams.detection.coco", "CocoFormatError"),
)

#: How the library says which optional extra a missing package belongs to, e.g. the ImportError
#: "figures need matplotlib; install it with: pip install 'dataparams[report]'".
_EXTRA_HINT = "pip install 'dataparams["


def _is_user_error(e: Exception) -> bool:
    """Whether ``e`` is about the user's input (printed as ``error: ...``) rather than a bug (raised).

    That is one of :data:`USER_ERRORS`, a ``FileNotFoundError`` (an input path that does not
    exist), or an ``ImportError`` whose message names the optional extra to install; any other
    ``ImportError`` or ``ValueError`` is a bug and keeps its traceback.
    """
    if isinstance(e, FileNotFoundError):
        return True
    if isinstance(e, ImportError):
        return _EXTRA_HINT in str(e)
    classes = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
    return isinstance(e, classes)


def main(argv: list[str] | None = None) -> int:
    """Run ``dataparams ARGV``; return the exit status: 0, 2 for a refused input (one line on
    stderr), 130 when interrupted. Any other exception propagates with its traceback."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{_interrupted(args)}", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_user_error(e):
            raise
        # Bad input (names, values, files, missing optional packages): one line, no traceback.
        print(f"error: {_explain(e)}", file=sys.stderr)
        return 2

