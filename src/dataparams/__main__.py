"""``python -m dataparams``: the command line, as the ``dataparams`` script runs it.

This is also what a launcher runs: ``torchrun --nproc-per-node 4 -m dataparams train ...``.
"""

import sys

from dataparams.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
