"""dataparams: data parameters for PyTorch (Saxena, Tuzel & DeCoste, NeurIPS 2019).

A learnable temperature for every class and every training sample divides the logits during
training; learned by gradient descent with the model, it gives a dynamic curriculum, robustness
to noisy labels and a per-sample score that singles out mislabeled data. Inference is unchanged.

``find_label_issues(data)`` does all of it on a user's data (arrays, a DataFrame, a Hugging Face
dataset, a torch Dataset, a file or folder) and returns a DataFrame with one row per sample, the
likely wrong labels marked by ``is_label_issue``, as cleanlab's Datalab does
(:func:`dataparams.issues.label_issues`).
"""

from typing import Any

from dataparams.losses import scale_logits, scaled_cross_entropy, scaled_loss
from dataparams.optim import SparseSGD, sparse_sgd_step
from dataparams.parameters import DEFAULT_CLAMP, DataParameters

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CLAMP",
    "DataParameters",
    "ScoreTracker",
    "SparseSGD",
    "find_label_issues",
    "scale_logits",
    "scaled_cross_entropy",
    "scaled_loss",
    "sparse_sgd_step",
    "__version__",
]

# The surface a training loop needs; the functional pieces under DataParameters (gather_rows,
# combine_sigma, log_sigma_penalty) stay in dataparams.parameters, for code that builds its own
# parameter tables. The training-loop core above imports only torch; these pull in the trainer and the analysis, so
# they load on first use (PEP 562) and `import dataparams` stays light.
_LAZY = {"find_label_issues": ("dataparams.issues", "label_issues"), "ScoreTracker": ("dataparams.scores", "ScoreTracker")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dataparams' has no attribute {name!r}")
