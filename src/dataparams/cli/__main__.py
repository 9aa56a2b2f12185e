"""``python -m dataparams.cli``: the command line, the same as ``python -m dataparams``."""

import sys

from dataparams.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
