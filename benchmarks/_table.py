"""What every benchmark script ends with: print its Markdown table, and keep it when asked."""

from __future__ import annotations

import argparse


def emit(lines: list[str], out: str | None) -> None:
    """Print ``lines`` and, with ``out``, also write them there (the files in ``results/``)."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def parse_runs(doc: str | None, argv: list[str] | None, runs_help: str) -> argparse.Namespace:
    """The command line every run-reading script takes: run directories, and ``--out FILE``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help=runs_help)
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    return parser.parse_args(argv)
