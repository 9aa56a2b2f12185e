"""Peer methods for learning with noisy labels, as pure per-sample functions.

Each module follows one paper, cited in its docstring:

* :mod:`~dataparams.methods.superloss` -- SuperLoss (Castells et al., NeurIPS 2020);
* :mod:`~dataparams.methods.robust_losses` -- generalized cross-entropy (Zhang & Sabuncu,
  NeurIPS 2018) and symmetric cross-entropy (Wang et al., ICCV 2019);
* :mod:`~dataparams.methods.coteaching` -- Co-teaching (Han et al., NeurIPS 2018);
* :mod:`~dataparams.methods.aum` -- the area-under-the-margin statistic (Pleiss et al., NeurIPS 2020).

The small-loss criterion as a suspicion score is the ``mean-loss`` score of
:class:`dataparams.scores.ScoreTracker`, which every objective keeps.

The same methods as training objectives are in :mod:`~dataparams.methods.peers`, and every method
by name in :mod:`~dataparams.methods.registry`.

Losses take logits (B, K) and targets (B,) and return one loss per sample (B,), unless a
function's docstring says otherwise; reducing is the caller's job.
"""

from dataparams.methods.aum import accumulate_margins, aum_margin
from dataparams.methods.coteaching import (
    coteaching_exchange,
    forget_rate_schedule,
    small_loss_selection,
)
from dataparams.methods.robust_losses import (
    generalized_cross_entropy,
    reverse_cross_entropy,
    symmetric_cross_entropy,
)
from dataparams.methods.superloss import SuperLoss, lambert_w, superloss, superloss_sigma

__all__ = [
    "SuperLoss",
    "accumulate_margins",
    "aum_margin",
    "coteaching_exchange",
    "forget_rate_schedule",
    "generalized_cross_entropy",
    "lambert_w",
    "reverse_cross_entropy",
    "small_loss_selection",
    "superloss",
    "superloss_sigma",
    "symmetric_cross_entropy",
]
