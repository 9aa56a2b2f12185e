"""Per-sample label scores: accumulated by index while any trainer runs, then ranked and flagged.

Two halves, in the manner of ``cleanlab.rank`` and ``cleanlab.filter``:

* :class:`ScoreTracker`, an ``nn.Module`` whose (N,) buffers are written by sample index:
  ``update(index, loss, sigma)`` after each step (O(B)), ``end_epoch()`` once per epoch (O(N),
  never per step), ``scores()`` for the arrays, and ``state_dict()`` for checkpoints. Every
  trainer feeds one: the training objectives of :mod:`dataparams.objectives` *are* trackers (so
  their checkpoints keep the same keys), the Lightning callback goes through its objective, and a
  hand-written loop makes its own. The sharded objective of :mod:`dataparams.distributed` keeps
  its rows on their owners and turns the gathered sums into scores with :func:`scores_from_sums`.
* Array functions that need no run directory and no tracker: :func:`label_quality_scores`
  (``[0, 1]``, high = clean) and :func:`find_label_issues` (a mask or ranked indices, by a flag
  rule chosen for the loss the scores come from).

Score vocabulary (larger = more suspicious), the one used by ``find-issues``, the bench and
``summary.json``:

``last-loss``
    The per-sample training loss at the sample's latest visit.
``mean-loss``
    Its mean over the finished epochs: with data parameters, the loss of ``logits / sigma``, so a
    sample whose temperature rose keeps a high loss (the small-loss criterion of Arpit et al.
    2017 and co-teaching, under the learned temperature).
``sigma``
    The instance temperature (sec. 3.4, Figure 4 of the paper) at one epoch: the data
    parameters' own value, saved in each epoch's snapshot.
``sigma-mean``
    ``exp`` of the mean over the finished epochs of log sigma: the temperature integrated over
    training, which does not depend on guessing the epoch.

Notation: ``N`` samples, ``B`` samples in a batch, ``K`` classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dataparams.config import ConfigError
from dataparams.parameters import check_ranges

__all__ = [
    "FLAG_RULES",
    "SCORE_NAMES",
    "SIGMA_SOURCES",
    "ScoreTracker",
    "confident_counts",
    "find_label_issues",
    "flag_by_rule",
    "probabilities_fit",
    "label_quality_scores",
    "loss_bound",
    "scores_from_sums",
]

SCORE_NAMES = ("sigma", "sigma-mean", "last-loss", "mean-loss")
#: How :func:`find_label_issues` decides how many to flag, without being told the noise rate.
#: ``class-mean``: for loss scores, flag a sample whose label quality (:func:`label_quality_scores`,
#: the probability of its label that its loss implies) is below the mean quality of its given
#: class -- cleanlab's per-class self-confidence threshold applied to the quality, so that a class
#: the model finds hard is judged against its own level and is not flagged whole; with the class
#: probabilities averaged over training (``probs``), a class in which confident learning counts
#: at most 1% wrong labels is left whole, since below the mean is relative. ``mixture``: a
#: two-Gaussian mixture on the log of the scores (any positive score, sigma included).
#: ``bound``: a loss at least ``fraction`` of the loss's upper bound (for bounded losses:
#: generalized cross-entropy, whose corrupted samples sit near its maximum ``1/q`` while the log
#: mixture splits the clean ones; benchmarks/results/fmnist_methods/variants.md). ``confident``:
#: count the wrong labels of each given class as confident learning does (Northcutt et al. 2021,
#: :func:`confident_counts`) on the class probabilities averaged over training, then flag that
#: many of the class's most suspicious samples by the score. ``auto``: ``bound`` for a bounded
#: loss, else ``class-mean`` (``mixture`` without labels). Why ``class-mean``: on four tuning sets
#: that the user-data benchmark does not report (uniform 40%, pair 30% and instance-dependent 35%
#: on 2,000 Fashion-MNIST images, pair 20% on the wine table) its flagged set had the best mean F1
#: (0.81, against 0.77 for the mixture and 0.70 for ``confident``), and on the instance-dependent
#: ones it flagged 82% of the true number where the mixture flagged 42% and ``confident`` 31%
#: (benchmarks/results/flag_rules.md).
FLAG_RULES = ("auto", "class-mean", "mixture", "bound", "confident")
# A loss of exactly 0 (float16 underflow of a memorised sample) has no logarithm; this floor sits
# far below any loss that matters.
_LOSS_FLOOR = 1e-8
# dp-gce-filter's flag rule: fixed on the seed-100 development cells of four noise settings.
DEFAULT_BOUND_FRACTION = 0.2


def _float64_ok(device: torch.device | str | None) -> bool:
    return torch.device(device or "cpu").type != "mps"


SIGMA_SOURCES = (None, "visit", "epoch")


class ScoreTracker(nn.Module):
    """Per-sample training scores in (N,) buffers, written by index.

    Parameters
    ----------
    num_samples : int
        ``N``, the range of the indices given to :meth:`update`.
    device : torch.device or str, optional
        Where the buffers live (the training device, so that updates need no transfer).
    sigma : {None, "visit", "epoch"}, default None
        Whether and how to integrate the temperature (the ``sigma-mean`` score). ``"visit"``:
        :meth:`update` takes each batch's sigma and an epoch integrates each sample's value at
        its latest visit (a hand-written loop). ``"epoch"``: :meth:`end_epoch` takes every
        sample's log sigma at the end of the epoch (an objective that owns the parameters).

    Attributes
    ----------
    last_loss : Tensor (N,)
        Each sample's loss at its latest :meth:`update`.
    loss_sum : Tensor (N,) float64
        Sum over finished epochs of ``last_loss`` at each epoch's end.
    epochs_seen : Tensor ()
        Finished epochs.
    log_sigma_sum : Tensor (N,) float64
        With ``sigma``: the sum over finished epochs of log sigma.
    last_log_sigma : Tensor (N,)
        With ``sigma="visit"``: log sigma at the latest update.

    Examples
    --------
    In a hand-written loop with data parameters ``dp`` (sigma (B,) as the loss used it)::

        tracker = ScoreTracker(len(train_set), sigma="visit")
        for epoch in range(epochs):
            for x, y, index in loader:
                sigma = dp(y, index)
                per_sample = scaled_cross_entropy(model(x), y, sigma, reduction="none")
                ...
                tracker.update(index, per_sample, sigma)
            tracker.end_epoch()
        flags = find_label_issues(labels, tracker.scores()["mean-loss"])
    """

    def __init__(self, num_samples: int, device: torch.device | str | None = None, *,
                 sigma: str | None = None) -> None:
        super().__init__()
        if sigma not in SIGMA_SOURCES:
            raise ValueError(f"sigma must be None, 'visit' or 'epoch', got {sigma!r}")
        self.num_samples = int(num_samples)
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        wide = torch.float64 if _float64_ok(device) else torch.float32
        self.register_buffer("last_loss", torch.zeros(self.num_samples, device=device))
        self.register_buffer("loss_sum", torch.zeros(self.num_samples, dtype=wide, device=device))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long, device=device))
        self.sigma_source = sigma
        if sigma is not None:
            self.register_buffer("log_sigma_sum", torch.zeros(self.num_samples, dtype=wide, device=device))
        if sigma == "visit":
            self.register_buffer("last_log_sigma", torch.zeros(self.num_samples, device=device))
        self.num_classes: int | None = None

    def track_probabilities(self, num_classes: int) -> None:
        """Also average each sample's predicted class probabilities over its visits.

        Adds the buffers ``prob_sum`` (N, K) and ``prob_count`` (N,): ``4 N (K + 1)`` bytes, so a
        caller decides by size (:func:`probabilities_fit`). Call before training (and before
        loading a checkpoint that has them). The mean is what the ``confident`` flag rule counts
        with: the model's belief about each sample while it trains, mostly before it memorises.
        """
        if self.num_classes is not None:
            return
        device = self.last_loss.device
        self.num_classes = int(num_classes)
        self.register_buffer("prob_sum", torch.zeros(self.num_samples, self.num_classes, device=device))
        self.register_buffer("prob_count", torch.zeros(self.num_samples, device=device))

    @torch.no_grad()
    def update(self, index: Tensor, loss: Tensor, sigma: Tensor | None = None, probs: Tensor | None = None, *,
               check_index: bool = True) -> None:
        """Record a batch: per-sample ``loss`` (B,), with ``sigma="visit"`` its ``sigma`` (B,), and,
        when :meth:`track_probabilities` was called, its class probabilities ``probs`` (B, K); O(B K).

        ``index_put_`` (not ``index_copy_``) has a deterministic CUDA kernel; a sample seen twice
        in one batch keeps one of its (same-step) values either way (its probabilities count twice).
        A ``loss`` of another shape than ``index`` is refused; ``check_index`` (the default) refuses
        an index outside ``[0, N)`` too, without a host sync.
        """
        # A mean-reduced loss would be broadcast to every sample of the batch; an index outside
        # [0, N) would wrap around (negative) or fail somewhere less clear. No value is read back:
        # the range check is a device-side assertion (an IndexError on the CPU). The training
        # objectives pass check_index=False: their indices come from the project's own loaders
        # (and, with data parameters, DataParameters checks them in the same step), so the step
        # pays for no check it did not pay for before.
        if loss.shape != index.shape or index.dim() != 1:
            raise ValueError(f"update() takes one loss per sample: loss {tuple(loss.shape)} for index "
                             f"{tuple(index.shape)}; compute it with reduction='none'")
        if check_index:
            check_ranges(("index", index, self.num_samples, "samples"), owner="ScoreTracker")
        self.last_loss.index_put_((index,), loss.detach().to(self.last_loss.dtype))
        if probs is not None and self.num_classes is not None:
            self.prob_sum.index_put_((index,), probs.detach().to(self.prob_sum.dtype), accumulate=True)
            self.prob_count.index_put_((index,), torch.ones_like(index, dtype=self.prob_count.dtype),
                                       accumulate=True)
        if (sigma is not None) != (self.sigma_source == "visit"):
            raise ValueError("give sigma to update() exactly when the tracker was made with sigma='visit'")
        if sigma is not None:
            self.last_log_sigma.index_put_((index,), sigma.detach().log().to(self.last_log_sigma.dtype))

    @torch.no_grad()
    def end_epoch(self, log_sigma: Tensor | None = None) -> None:
        """Close an epoch: add the latest losses (and log sigma) to the sums, O(N) once per epoch.

        Parameters
        ----------
        log_sigma : Tensor (N,), optional
            With ``sigma="epoch"`` (and only then): every sample's log temperature now.
        """
        if (log_sigma is not None) != (self.sigma_source == "epoch"):
            raise ValueError("give log_sigma to end_epoch() exactly when the tracker was made with sigma='epoch'")
        self.loss_sum += self.last_loss.to(self.loss_sum.dtype)
        if self.sigma_source is not None:
            src = self.last_log_sigma if log_sigma is None else log_sigma.detach()
            self.log_sigma_sum += src.to(self.log_sigma_sum.dtype)
        self.epochs_seen += 1

    # The probability sums are an optional extra: a checkpoint written without them (before they
    # were kept, or by a torchrun job, which does not keep them) resumes into a tracker that keeps
    # them, and the reverse; their mean then covers the visits since they were kept.
    _OPTIONAL = ("prob_sum", "prob_count")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        missing, unexpected = args[-3], args[-2]
        for name in self._OPTIONAL:
            if prefix + name in missing:
                missing.remove(prefix + name)
            if prefix + name in unexpected:
                unexpected.remove(prefix + name)

    def mean_probabilities(self) -> np.ndarray | None:
        """Each sample's class probabilities averaged over its visits, (N, K) float32; rows of
        samples never visited are uniform. None unless :meth:`track_probabilities` was called."""
        if self.num_classes is None:
            return None
        count = self.prob_count.clamp_min(1.0)[:, None]
        mean = torch.where(self.prob_count[:, None] > 0, self.prob_sum / count, 1.0 / self.num_classes)
        return mean.float().cpu().numpy()

    def scores(self) -> dict[str, np.ndarray]:
        """The scores by name, each (N,) float64, larger = more suspicious.

        ``last-loss`` always; ``mean-loss`` once an epoch has ended, and then ``sigma-mean`` when
        sigma is tracked. (``sigma`` at one epoch is the data parameters' own value:
        ``DataParameters.instance_sigma()``.)
        """
        to_np = lambda t: t.double().cpu().numpy()  # noqa: E731
        return scores_from_sums(
            last_loss=to_np(self.last_loss), loss_sum=to_np(self.loss_sum), epochs=int(self.epochs_seen),
            log_sigma_sum=None if self.sigma_source is None else to_np(self.log_sigma_sum),
        )


def scores_from_sums(*, last_loss: np.ndarray, loss_sum: np.ndarray, epochs: int,
                     log_sigma_sum: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The ``last-loss``, ``mean-loss`` and ``sigma-mean`` arrays from a tracker's (gathered) buffers.

    Scores that need a finished epoch (the means) or sigma are left out when they are not known.
    """
    out = {"last-loss": np.asarray(last_loss, dtype=np.float64)}
    if epochs:
        out["mean-loss"] = np.asarray(loss_sum, dtype=np.float64) / epochs
        if log_sigma_sum is not None:
            out["sigma-mean"] = np.exp(np.asarray(log_sigma_sum, dtype=np.float64) / epochs)
    return out


def loss_bound(loss: str, q: float | None = None) -> float:
    """The largest value a per-sample loss can take: ``1/q`` for generalized cross-entropy
    (Zhang & Sabuncu 2018), infinite for cross-entropy."""
    if loss == "ce":
        return math.inf
    if loss == "gce":
        from dataparams.methods.robust_losses import gce_loss_bound

        if q is None:
            raise ValueError("generalized cross-entropy needs its q")
        return gce_loss_bound(float(q))
    raise ValueError(f"loss must be 'ce' or 'gce', got {loss!r}")


def _check_scores(scores: Any, n: int | None = None) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {s.shape}")
    if n is not None and len(s) != n:
        raise ValueError(f"scores has {len(s)} entries for {n} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s


def label_quality_scores(scores: Any, *, loss: str = "ce", q: float | None = None) -> np.ndarray:
    """Label quality in ``[0, 1]`` (high = clean) from a loss score (N,), as cleanlab's ``label_score``.

    The quality is the probability of the given label that the loss implies: ``exp(-L)`` for
    cross-entropy and ``(1 - q L) ** (1/q)`` for generalized cross-entropy (whose loss is
    ``(1 - p ** q) / q``). For ``mean-loss`` under cross-entropy it is the geometric mean over
    training of the probability the model gave the label, under the sample's temperature.

    Parameters
    ----------
    scores : array_like (N,)
        Per-sample losses (``last-loss`` or ``mean-loss``), nonnegative.
    loss : {"ce", "gce"}
    q : float, optional
        GCE's exponent.

    Returns
    -------
    ndarray (N,) float64 in [0, 1]
    """
    s = np.maximum(_check_scores(scores), 0.0)
    if loss == "ce":
        return np.exp(-s)
    bound = loss_bound(loss, q)
    return np.clip(1.0 - s / bound, 0.0, 1.0) ** (1.0 / float(q))  # type: ignore[arg-type]


#: The class-mean rule leaves a class alone when confident learning counts at most this share of
#: its samples as wrong.
CLEAN_CLASS_FRACTION = 0.01

#: Tracking probabilities costs ``4 N (K + 1)`` bytes on the training device; beyond this many
#: entries (N K, 512 MB in float32) the objectives do without (:func:`probabilities_fit`).
MAX_PROBABILITY_ENTRIES = 1 << 27


def probabilities_fit(num_samples: int, num_classes: int) -> bool:
    """Whether an (N, K) probability buffer is small enough to keep by default."""
    return int(num_samples) * int(num_classes) <= MAX_PROBABILITY_ENTRIES


def confident_counts(labels: Any, probs: Any) -> np.ndarray:
    """Estimated number of wrong labels of each given class, (K,) int, by confident learning.

    Northcutt, Jiang & Chuang, "Confident Learning" (JAIR 2021): a sample labelled ``i`` counts
    as confidently of class ``j`` when ``probs[j] >= t_j``, where ``t_j`` is the mean probability
    of class ``j`` over the samples labelled ``j`` (the per-class threshold that makes the count
    robust to classes the model finds harder), choosing the most probable such ``j``; the
    resulting (K, K) confident joint (its diagonal at least 1) is calibrated so that each row sums
    to its class's number of samples, and its off-diagonal row sums are the estimates. The steps
    follow ``cleanlab.count.compute_confident_joint`` and its calibration; cleanlab rounds
    preserving row totals, here each count is rounded, so the two may differ by one. Cleanlab computes this on K-fold
    out-of-sample probabilities; here ``probs`` are averaged over training (mostly before the
    network memorises, and with data parameters the wrong labels are memorised later).

    Parameters
    ----------
    labels : array_like (N,) int in [0, K)
    probs : array_like (N, K)

    Returns
    -------
    ndarray (K,) int64
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(y):
        raise ValueError(f"probs must be (N, K) with N = {len(y)}, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs must be finite")
    k = p.shape[1]
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    counts = np.bincount(y, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, y, p[np.arange(len(y)), y])
    # As cleanlab's compute_confident_joint: a class no sample carries has no threshold; the
    # thresholds get a 1e-6 tolerance; with several classes above their thresholds, the most
    # probable class overall is the guess.
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    above = p >= thresholds[None, :] - 1e-6
    n_above = above.sum(1)
    guess = np.where(n_above > 1, p.argmax(1), above.argmax(1))
    has = n_above > 0
    joint = np.zeros((k, k))
    np.add.at(joint, (y[has], guess[has]), 1.0)
    # ... and its diagonal is at least 1, so that no class is counted wholly wrong.
    np.fill_diagonal(joint, np.maximum(np.diag(joint), 1.0))
    calibrated = joint / np.maximum(joint.sum(1, keepdims=True), 1e-6) * counts[:, None]
    calibrated *= counts.sum() / max(calibrated.sum(), 1e-12)
    off = calibrated.sum(1) - np.diag(calibrated)
    return np.rint(off).astype(np.int64)


def find_label_issues(
    labels: Any,
    scores: Any,
    *,
    probs: Any = None,
    rule: str = "auto",
    loss: str = "ce",
    q: float | None = None,
    fraction: float = DEFAULT_BOUND_FRACTION,
    return_indices_ranked_by_score: bool = False,
) -> np.ndarray:
    """Which labels are likely wrong, from per-sample suspicion scores (larger = more suspicious).

    Parameters
    ----------
    labels : array_like (N,) int
        The given labels.
    scores : array_like (N,)
        A loss score (``mean-loss``, ``last-loss``) for ``auto``, ``class-mean`` and ``bound``;
        any positive suspicion score (sigma too) for ``mixture`` and ``confident``.
    probs : array_like (N, K), optional
        Class probabilities averaged over training (:meth:`ScoreTracker.mean_probabilities`):
        needed by ``confident``; with ``class-mean`` they keep the classes that confident
        learning finds clean from being flagged.
    rule : {"auto", "class-mean", "mixture", "bound", "confident"}
        See :data:`FLAG_RULES`.
    loss : {"ce", "gce"}
        The loss the scores were computed with (it decides ``auto``, the bound and the quality).
    q : float, optional
        GCE's exponent, with ``loss="gce"``.
    fraction : float in (0, 1)
        For ``bound``: flag a loss at least this fraction of the bound.
    return_indices_ranked_by_score : bool, default False
        Return the flagged indices, most suspicious first, instead of the mask.

    Returns
    -------
    ndarray
        Boolean mask (N,), or int64 indices of the flagged samples ranked by score.

    Raises
    ------
    ValueError
        Shapes that differ, non-finite scores, an unknown rule, ``bound`` on an unbounded loss,
        ``confident`` without probabilities.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    s = _check_scores(scores, len(y))
    mask = flag_by_rule(s, labels=y, probs=probs, rule=rule, loss=loss, q=q, fraction=fraction)["mask"]
    if not return_indices_ranked_by_score:
        return mask
    flagged = np.flatnonzero(mask)
    return flagged[np.argsort(-s[flagged], kind="stable")].astype(np.int64)


def flag_by_rule(scores: np.ndarray, *, labels: Any = None, probs: Any = None, rule: str = "auto",
                 loss: str = "ce", q: float | None = None,
                 fraction: float = DEFAULT_BOUND_FRACTION) -> dict[str, Any]:
    """The flags of :func:`find_label_issues` with how they were reached.

    Returns
    -------
    dict
        ``mask`` (bool (N,)), ``rule`` (the rule applied), ``threshold`` (smallest flagged score
        for a global threshold, nan otherwise), ``posterior`` (the mixture's probability of the
        high component, (N,); for the other rules the mask as 0/1), ``estimate`` (the count, and
        for the mixture its fit without the posterior; for ``confident`` the count per class).
    """
    from dataparams.analysis.metrics import estimate_num_mislabeled

    if rule not in FLAG_RULES:
        raise ConfigError(f"rule must be one of {', '.join(FLAG_RULES)}, got {rule!r}")
    s = _check_scores(scores)
    bound = loss_bound(loss, q)
    if rule == "auto":
        rule = "bound" if math.isfinite(bound) else "class-mean" if labels is not None else "mixture"
    if rule == "confident":
        if probs is None or labels is None:
            raise ConfigError("rule='confident' needs the labels and the class probabilities (probs): a run keeps "
                             "them (predictions.npz mean_probs) only when trained in one process with N x K <= "
                             f"{MAX_PROBABILITY_ENTRIES:,} and by this version; use rule='class-mean' otherwise")
        y = np.asarray(labels, dtype=np.int64)
        if len(y) != len(s):
            raise ValueError(f"scores has {len(s)} entries for {len(y)} labels")
        per_class = confident_counts(y, probs)
        mask = np.zeros(len(s), dtype=bool)
        for c, n_c in enumerate(per_class):
            members = np.flatnonzero(y == c)
            if n_c > 0 and len(members):
                mask[members[np.argsort(-s[members], kind="stable")[:n_c]]] = True
        return {"mask": mask, "rule": rule, "threshold": math.nan, "posterior": mask.astype(np.float64),
                "estimate": {"n_estimated": int(mask.sum()), "fraction": float(mask.mean()) if len(s) else 0.0,
                             "per_class": per_class.tolist()}}
    if rule == "class-mean":
        if labels is None:
            raise ValueError("rule='class-mean' needs the labels")
        y = np.asarray(labels, dtype=np.int64)
        if len(y) != len(s):
            raise ValueError(f"scores has {len(s)} entries for {len(y)} labels")
        quality = label_quality_scores(s, loss=loss, q=q)
        k = int(y.max()) + 1 if len(y) else 0
        if probs is not None:
            k = max(k, np.asarray(probs).shape[1])
        sizes = np.bincount(y, minlength=k)
        means = np.bincount(y, weights=quality, minlength=k) / np.maximum(sizes, 1)
        mask = quality < means[y]
        estimate: dict[str, Any] = {"class_mean_quality": means.tolist()}
        if probs is not None:
            # Below its class's mean is relative: in a clean class half the samples can be. A
            # class in which confident learning finds no more than 1% wrong labels keeps them all
            # (on the clean wine table this takes the flags from 27% of the rows to none; 2,000 clean
            # Fashion-MNIST images still get 18%, the mixture 52%; benchmarks/results/flag_rules.md).
            per_class = confident_counts(y, probs)
            noisy_class = per_class > CLEAN_CLASS_FRACTION * sizes
            mask &= noisy_class[y]
            estimate["classes_kept_whole"] = np.flatnonzero(~noisy_class & (sizes > 0)).tolist()
        estimate.update(n_estimated=int(mask.sum()), fraction=float(mask.mean()) if len(s) else 0.0)
        return {"mask": mask, "rule": rule, "threshold": math.nan, "posterior": mask.astype(np.float64),
                "estimate": estimate}
    if rule == "bound":
        if not math.isfinite(bound):
            raise ConfigError(f"rule='bound' needs a bounded loss (gce), got loss={loss!r}")
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"fraction must lie in (0, 1), got {fraction}")
        mask = s >= fraction * bound
        return {"mask": mask, "rule": rule, "threshold": fraction * bound, "posterior": mask.astype(np.float64),
                "estimate": {"n_estimated": int(mask.sum()), "fraction": float(mask.mean()) if len(s) else 0.0}}
    # Fit on log scores: sigma is a temperature (multiplicative) and losses span orders of
    # magnitude between memorised and unlearned samples.
    est = estimate_num_mislabeled(np.maximum(s, _LOSS_FLOOR), log=True)
    posterior = np.asarray(est["posterior"], dtype=np.float64)
    mask = posterior > 0.5
    return {"mask": mask, "rule": rule, "threshold": est.get("threshold", math.nan), "posterior": posterior,
            "estimate": {k: v for k, v in est.items() if k != "posterior"}}
