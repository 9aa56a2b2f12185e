"""How well a per-sample score singles out mislabeled samples.

The instance parameters of Saxena, Tuzel & DeCoste (NeurIPS 2019) end training larger for
corrupted samples than for clean ones: the paper reports that "95% of the noisy instances attain
instance parameter values greater than all clean samples" and, in Figure 4 (right), the
"percentage of corrupt samples in the top 40% data points sorted by their instance parameter
value". This module measures that separation for any score, and estimates the number of
mislabeled samples when the noise rate is unknown.

Notation, fixed for this module: ``N`` samples, ``K`` classes. ``scores`` is a real array of
shape ``(N,)`` where a higher score means "more likely mislabeled" (sigma, or log sigma: every
metric here except :func:`estimate_num_mislabeled` with ``log=True`` depends only on the order
of the scores). ``is_positive`` is a boolean array of shape ``(N,)``, true for the samples whose
label was corrupted. ``labels`` are the observed integer labels in ``[0, K)``, shape ``(N,)``.

Undefined metrics (no positives, no negatives, an empty selection) are ``float("nan")``, never
an exception, so that a report over many classes or runs can be built without special cases.
Everything is plain numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "auroc",
    "average_precision",
    "precision_recall_at_k",
    "top_fraction_purity",
    "separated_fraction",
    "label_error_metrics",
    "estimate_num_mislabeled",
    "over_seeds",
]

# Variance floor of the mixture components, relative to the variance of all the data. It stops
# a component from collapsing onto a spike of equal values (sigma clamped at its bound, say),
# where the likelihood is unbounded, and is far below the width of any real cluster.
_REL_VAR_FLOOR = 1e-3


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_scores(scores: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,), got shape {arr.shape}")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a real (integer or floating) array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {int(np.sum(~np.isfinite(arr)))} non-finite value(s)")
    return arr


def _as_mask(is_positive: ArrayLike, n: int) -> NDArray[np.bool_]:
    arr = np.asarray(is_positive)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"is_positive must have the shape of scores, ({n},), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size == 0:  # np.asarray([]) is float64; an empty mask is still a mask.
        return np.zeros(0, dtype=bool)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise ValueError("is_positive given as integers must hold only 0 and 1")
        return arr.astype(bool)
    raise ValueError(f"is_positive must be boolean (or 0/1 integers), got dtype {arr.dtype}")


def _check(scores: ArrayLike, is_positive: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s = _as_scores(scores)
    return s, _as_mask(is_positive, s.shape[0])


def _descending_order(s: NDArray[np.float64]) -> NDArray[np.intp]:
    # Stable on the negated scores: among equal scores the lower index comes first, so a cut
    # through a tie is reproducible and does not depend on the sorting algorithm.
    return np.argsort(-s, kind="stable")


# --------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------


def _midranks(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks of ``s`` in ascending order, tied values sharing the mean of their ranks."""
    n = s.shape[0]
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_s)) + 1))
    ends = np.concatenate((starts[1:], [n]))
    # A block occupying 0-based positions starts..ends-1 has 1-based ranks starts+1..ends.
    block_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(block_rank, ends - starts)
    return ranks


def auroc(scores: ArrayLike, is_positive: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` as a detector of ``is_positive``.

    Equal to the probability that a random positive scores higher than a random negative,
    counting ties as one half: the Mann-Whitney U statistic computed from midranks, divided by
    ``n_positive * n_negative``. Only the order of the scores matters.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores; higher means more likely positive.
    is_positive : array_like of shape (N,)
        Boolean (or 0/1 integer) mask of the positives (e.g. corrupted labels).

    Returns
    -------
    float
        AUROC in ``[0, 1]``; 0.5 for an uninformative score, 1.0 for perfect separation.
        ``nan`` if there are no positives or no negatives.
    """
    s, pos = _check(scores, is_positive)
    n_pos = int(pos.sum())
    n_neg = s.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    u = _midranks(s)[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(scores: ArrayLike, is_positive: ArrayLike) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds.

    The definition of ``sklearn.metrics.average_precision_score``: thresholds are the distinct
    scores in decreasing order, tied scores enter together as one threshold, and ``P_n`` and
    ``R_n`` are the precision and recall of "score >= threshold n", with ``R_0 = 0``. No
    interpolation.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores; higher means more likely positive.
    is_positive : array_like of shape (N,)
        Boolean (or 0/1 integer) mask of the positives.

    Returns
    -------
    float
        AP in ``(0, 1]``; the positive rate for a constant score, 1.0 when every positive
        outscores every negative. ``nan`` if there are no positives.
    """
    s, pos = _check(scores, is_positive)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return math.nan
    order = _descending_order(s)
    sorted_s = s[order]
    # Last index of each block of tied scores: the threshold admits the whole block at once.
    last = np.concatenate((np.flatnonzero(np.diff(sorted_s)), [s.shape[0] - 1]))
    tp = np.cumsum(pos[order])[last]
    precision = tp / (last + 1.0)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _as_k(k: Any, n: int) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, N] = [0, {n}], got {k}")
    return int(k)


def precision_recall_at_k(scores: ArrayLike, is_positive: ArrayLike, k: int) -> tuple[float, float]:
    """Precision and recall of flagging the ``k`` highest-scoring samples.

    Samples are sorted by a stable descending sort, so when the cut at ``k`` falls inside a
    block of tied scores, the tied samples with the lower index are the ones flagged. The
    result is deterministic but depends on the order of the samples inside a tie; use
    :func:`average_precision` for a tie-invariant summary.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores; higher means more likely positive.
    is_positive : array_like of shape (N,)
        Boolean (or 0/1 integer) mask of the positives.
    k : int
        Number of samples flagged, ``0 <= k <= N``. With ``k`` equal to the number of positives
        precision and recall coincide (R-precision).

    Returns
    -------
    precision : float
        Positives among the flagged divided by ``k``; ``nan`` when ``k == 0``.
    recall : float
        Positives among the flagged divided by the number of positives; ``nan`` when there are
        no positives (``0.0`` for ``k == 0`` otherwise).

    Raises
    ------
    ValueError
        If ``k`` is not an integer in ``[0, N]``.
    """
    s, pos = _check(scores, is_positive)
    k = _as_k(k, s.shape[0])
    n_pos = int(pos.sum())
    tp = int(pos[_descending_order(s)[:k]].sum())
    precision = tp / k if k > 0 else math.nan
    recall = tp / n_pos if n_pos > 0 else math.nan
    return float(precision), float(recall)


def _fraction_to_k(fraction: Any, n: int) -> int:
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(
        fraction, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    # Round half up, not Python's round-half-to-even, so that 0.5 * 5 selects 3 samples.
    return min(n, int(math.floor(fraction * n + 0.5)))


def top_fraction_purity(scores: ArrayLike, is_positive: ArrayLike, fraction: float) -> float:
    """Percentage of positives among the top ``fraction`` of samples by score.

    The quantity of the paper's Figure 4 (right), there with ``fraction = 0.4``. The top
    ``k = round(fraction * N)`` samples (halves rounded up) are taken with the same stable
    descending sort as :func:`precision_recall_at_k`, so this is ``100 * precision@k``.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores; higher means more likely positive.
    is_positive : array_like of shape (N,)
        Boolean (or 0/1 integer) mask of the positives.
    fraction : float
        Fraction of the samples to take, in ``[0, 1]``.

    Returns
    -------
    float
        Percentage in ``[0, 100]``; ``nan`` when ``k == 0``.
    """
    s, pos = _check(scores, is_positive)
    k = _fraction_to_k(fraction, s.shape[0])
    precision, _ = precision_recall_at_k(s, pos, k)
    return 100.0 * precision


def separated_fraction(scores: ArrayLike, is_positive: ArrayLike) -> float:
    """Fraction of positives whose score is strictly greater than every negative's score.

    The paper's "95% of the noisy instances attain instance parameter values greater than all
    clean samples". A positive tied with the highest negative is not separated.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores; higher means more likely positive.
    is_positive : array_like of shape (N,)
        Boolean (or 0/1 integer) mask of the positives.

    Returns
    -------
    float
        Fraction in ``[0, 1]``; ``nan`` if there are no positives, ``1.0`` if there are no
        negatives (every positive beats the empty set).
    """
    s, pos = _check(scores, is_positive)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return math.nan
    if n_pos == s.shape[0]:
        return 1.0
    return float(np.mean(s[pos] > s[~pos].max()))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _as_labels(labels: ArrayLike, n: int, num_classes: int | None) -> tuple[NDArray[np.int64], list[int]]:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"labels must have the shape of scores, ({n},), got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if arr.size:  # np.asarray([]) is float64; an empty label array is still fine.
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels must be non-negative, got {int(arr.min())}")
    if num_classes is None:
        return arr, [int(c) for c in np.unique(arr)]
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if arr.size and arr.max() >= num_classes:
        raise ValueError(f"labels must be < num_classes = {num_classes}, got {int(arr.max())}")
    return arr, list(range(int(num_classes)))


def label_error_metrics(
    scores: ArrayLike,
    is_positive: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """How well ``scores`` single out the mislabeled samples: every metric of this module in one
    JSON-serialisable dict (what a run's ``metrics.jsonl`` holds under ``"detection"``).

    The cut-off metrics are evaluated at ``k = n_positive`` (R-precision: precision and recall
    then coincide) and at ``fraction = n_positive / N``, i.e. "flag as many samples as there are
    corrupted ones", which needs no threshold.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores; higher means more likely positive.
    is_positive : array_like of shape (N,)
        Boolean (or 0/1 integer) mask of the positives.
    labels : array_like of shape (N,), optional
        Observed integer labels in ``[0, K)``. When given, ``"per_class"`` reports each class.
    num_classes : int, optional
        ``K``. With ``labels``, every class in ``range(K)`` is reported, absent ones included;
        without it only the classes present in ``labels`` are. Requires ``labels``.

    Returns
    -------
    dict
        ``n``, ``n_positive``, ``n_negative`` (int); ``positive_rate``, ``auroc``,
        ``average_precision`` (float); ``k`` (int, ``= n_positive``), ``precision_at_k``,
        ``recall_at_k`` (float); ``top_fraction`` (float, ``= positive_rate``),
        ``top_fraction_purity`` (float, percent); ``separated_fraction`` (float). With
        ``labels``, also ``per_class``: ``{class (int): {"n", "n_positive", "auroc",
        "average_precision"}}``. Undefined values are ``float("nan")``, which
        ``json.dumps`` writes as ``NaN`` by default; ``json.dumps`` turns the int class keys
        into strings.
    """
    s, pos = _check(scores, is_positive)
    if num_classes is not None and labels is None:
        raise ValueError("num_classes requires labels")
    n = int(s.shape[0])
    n_pos = int(pos.sum())
    rate = n_pos / n if n > 0 else math.nan
    precision, recall = precision_recall_at_k(s, pos, n_pos)
    report: dict[str, Any] = {
        "n": n,
        "n_positive": n_pos,
        "n_negative": n - n_pos,
        "positive_rate": float(rate),
        "auroc": auroc(s, pos),
        "average_precision": average_precision(s, pos),
        "k": n_pos,
        "precision_at_k": precision,
        "recall_at_k": recall,
        "top_fraction": float(rate),
        # The top n_pos / n of the samples are the top k = n_pos: the purity is precision@k.
        "top_fraction_purity": 100.0 * precision if n > 0 else math.nan,
        "separated_fraction": separated_fraction(s, pos),
    }
    if labels is not None:
        y, classes = _as_labels(labels, n, num_classes)
        per_class: dict[int, dict[str, Any]] = {}
        for c in classes:
            in_c = y == c
            per_class[c] = {
                "n": int(in_c.sum()),
                "n_positive": int(pos[in_c].sum()),
                "auroc": auroc(s[in_c], pos[in_c]),
                "average_precision": average_precision(s[in_c], pos[in_c]),
            }
        report["per_class"] = per_class
    return report



# --------------------------------------------------------------------------------------------
# Estimating the number of mislabeled samples
# --------------------------------------------------------------------------------------------


def _log_gauss(
    x: NDArray[np.float64], mean: NDArray[np.float64], var: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Log-density of each of the 2 components at each point: (N,), (2,), (2,) -> (N, 2)."""
    return -0.5 * (np.log(2.0 * np.pi * var) + (x[:, None] - mean) ** 2 / var)


def _log_joint(
    x: NDArray[np.float64], weight: NDArray[np.float64], mean: NDArray[np.float64], var: NDArray[np.float64]
) -> NDArray[np.float64]:
    with np.errstate(divide="ignore"):  # a weight of exactly 0 is a legitimate -inf
        return np.log(weight) + _log_gauss(x, mean, var)


def _logsumexp_rows(a: NDArray[np.float64]) -> NDArray[np.float64]:
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def _em(
    x: NDArray[np.float64], mean: NDArray[np.float64], var_floor: float, max_iter: int, tol: float = 1e-10
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float, int, bool]:
    """EM for a 2-component 1-D Gaussian mixture from the given means, equal weights and the data's variance.

    Returns ``(weights, means, variances, mean log-likelihood, iterations, converged)``.
    """
    n = x.shape[0]
    weight = np.array([0.5, 0.5])
    var = np.full(2, max(float(np.var(x)), var_floor))
    mean = mean.astype(np.float64).copy()
    prev = -math.inf
    converged = False
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        log_joint = _log_joint(x, weight, mean, var)
        log_lik = _logsumexp_rows(log_joint)
        resp = np.exp(log_joint - log_lik[:, None])
        ll = float(log_lik.mean())
        nk = resp.sum(axis=0)
        weight = nk / n
        safe_nk = np.maximum(nk, np.finfo(np.float64).tiny)
        mean = np.where(nk > 0, resp.T @ x / safe_nk, mean)
        var = np.where(nk > 0, (resp * (x[:, None] - mean) ** 2).sum(axis=0) / safe_nk, var)
        var = np.maximum(var, var_floor)
        if abs(ll - prev) <= tol * max(1.0, abs(ll)):
            converged = True
            break
        prev = ll
    final_ll = float(_logsumexp_rows(_log_joint(x, weight, mean, var)).mean())
    return weight, mean, var, final_ll, n_iter, converged


def estimate_num_mislabeled(
    scores: ArrayLike,
    *,
    log: bool = True,
    max_iter: int = 200,
    seed: int = 0,
    n_init: int = 1,
) -> dict[str, Any]:
    """Estimate how many samples are mislabeled, without knowing the noise rate.

    Fits a two-component 1-D Gaussian mixture by EM to ``log(scores)`` (or to ``scores``) and
    calls a sample mislabeled when the posterior of the higher-mean component exceeds 0.5.
    Sigma is positive and spans orders of magnitude, so its log is much closer to a mixture of
    two Gaussians than sigma itself.

    The first EM run starts from the 25th and 90th percentiles of the data as means, equal
    weights and the overall variance, so the default result is deterministic. Further runs
    (``n_init > 1``) start from means at random percentiles drawn with ``seed``; the run with
    the highest log-likelihood is kept. Component variances are floored at ``1e-3`` times the
    variance of the data so that a component cannot collapse onto a block of equal scores.

    The posterior is made non-decreasing in the score. With unequal variances, the wider
    component also wins the far tail on the *other* side of the narrower one, which for sigma
    would flag the most confidently clean samples as mislabeled; the posterior is therefore
    held constant beyond the point where it turns back. Hence ``score >= threshold`` is exactly
    the set flagged.

    Parameters
    ----------
    scores : array_like of shape (N,)
        Finite real scores, e.g. the learned sigma; strictly positive when ``log=True``.
    log : bool, default True
        Fit the mixture to ``log(scores)``. Set False for scores already on a log scale.
    max_iter : int, default 200
        Maximum EM iterations per run.
    seed : int, default 0
        Seed of the extra random starts; unused when ``n_init == 1``.
    n_init : int, default 1
        Number of EM runs; the first always uses the percentile start.

    Returns
    -------
    dict
        ``n_estimated`` (int): samples with posterior > 0.5; ``fraction`` (float): that over
        ``N``; ``threshold`` (float): the smallest score flagged, in the units of ``scores``
        (``nan`` if none); ``posterior`` (ndarray of shape (N,)): probability of being
        mislabeled; ``means``, ``stds``, ``weights`` (tuples of 2 floats, clean component
        first, means and stds in the space fitted, i.e. of ``log(scores)`` when ``log=True``);
        ``separation`` (float): Ashman's D, ``sqrt(2) |mu_1 - mu_0| / sqrt(s_0^2 + s_1^2)``,
        below 2 the two modes are not clearly distinct; ``log_likelihood`` (float, mean per
        sample), ``n_iter`` (int), ``converged`` (bool); ``note`` (str or None): why the
        estimate is degenerate or unreliable. For fewer than 2 samples or all-equal scores the
        estimate is 0 with a note.

    Raises
    ------
    ValueError
        If ``scores`` is not 1-D and finite, has a non-positive value when ``log=True``, or
        ``max_iter`` or ``n_init`` is less than 1.
    """
    s = _as_scores(scores)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be an integer >= 1, got {n_init!r}")
    if log and s.size and s.min() <= 0:
        raise ValueError(f"scores must be strictly positive with log=True, got minimum {s.min()}")
    n = int(s.shape[0])
    x = np.log(s) if log else s

    if n < 2 or float(np.ptp(x)) == 0.0:
        centre = float(x.mean()) if n else math.nan
        return {
            "n_estimated": 0,
            "fraction": 0.0,
            "threshold": math.nan,
            "posterior": np.zeros(n),
            "means": (centre, centre),
            "stds": (0.0, 0.0),
            "weights": (1.0, 0.0),
            "separation": 0.0,
            "log_likelihood": math.nan,
            "n_iter": 0,
            "converged": True,
            "note": "fewer than 2 samples" if n < 2 else "all scores are equal",
        }

    var_floor = _REL_VAR_FLOOR * float(np.var(x))
    starts = [np.percentile(x, [25.0, 90.0])]
    rng = np.random.default_rng(seed)
    for _ in range(n_init - 1):
        starts.append(np.percentile(x, [rng.uniform(5.0, 50.0), rng.uniform(50.0, 95.0)]))
    fits = [_em(x, start, var_floor, int(max_iter)) for start in starts]
    # max() keeps the first of equal likelihoods, so the percentile start wins ties.
    best = max(fits, key=lambda fit: fit[3])
    weight, mean, var, ll, n_iter, converged = best

    lo, hi = (0, 1) if mean[0] <= mean[1] else (1, 0)
    log_joint = _log_joint(x, weight, mean, var)
    raw = np.exp(log_joint[:, hi] - _logsumexp_rows(log_joint))
    # The log-odds is a parabola in x; cut off the branch that turns back (see docstring).
    order = np.argsort(x, kind="stable")
    if var[hi] >= var[lo]:
        mono = np.minimum.accumulate(raw[order][::-1])[::-1]
    else:
        mono = np.maximum.accumulate(raw[order])
    posterior = np.empty(n)
    posterior[order] = mono

    flagged = posterior > 0.5
    n_est = int(flagged.sum())
    std = np.sqrt(var)
    separation = float(math.sqrt(2.0) * abs(mean[hi] - mean[lo]) / math.sqrt(var[lo] + var[hi]))
    notes = []
    if not converged:
        notes.append(f"EM did not converge in {max_iter} iterations")
    if separation < 2.0:
        notes.append(
            f"the two components overlap (Ashman's D = {separation:.2f} < 2); the scores may not be bimodal"
        )
    return {
        "n_estimated": n_est,
        "fraction": n_est / n,
        "threshold": float(s[flagged].min()) if n_est else math.nan,
        "posterior": posterior,
        "means": (float(mean[lo]), float(mean[hi])),
        "stds": (float(std[lo]), float(std[hi])),
        "weights": (float(weight[lo]), float(weight[hi])),
        "separation": separation,
        "log_likelihood": ll,
        "n_iter": int(n_iter),
        "converged": bool(converged),
        "note": "; ".join(notes) if notes else None,
    }


# --------------------------------------------------------------------------------------------
# Repeats
# --------------------------------------------------------------------------------------------


def over_seeds(values: Iterable[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation of one quantity over repeated runs.

    ``None`` and NaN (a run that lacks the quantity, or failed) are left out. Returns
    ``{"mean", "std", "n", "values"}``; ``std`` is 0 for one value, ``mean`` and ``std`` are
    ``None`` for none. This is how every "mean ± std over seeds" of the package is computed.
    """
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}
