"""Integrations of data parameters with training frameworks.

Each integration is a submodule that imports its framework, which is an optional dependency:

* :mod:`dataparams.integrations.lightning` -- PyTorch Lightning, one callback
  (``pip install 'dataparams[lightning]'``).

This package imports nothing itself, so that ``import dataparams`` never needs a framework.
"""

__all__: list[str] = []
