"""What every benchmark script ends with: print its Markdown table, and keep it when asked."""

from __future__ import annotations


def emit(lines: list[str], out: str | None) -> None:
    """Print ``lines`` and, with ``out``, also write them there (the files in ``results/``)."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
