"""Seeded label-noise models for the noisy-label experiments (sec. 3.4, 3.5).

Notation: ``N`` samples, ``K`` classes; ``labels`` is (N,) with values in ``[0, K)``.

Every function is pure: it takes the clean labels and a seed, never modifies its input, and
returns ``(noisy_labels, is_corrupted)``, an int64 (N,) array and a bool (N,) mask with
``is_corrupted == (noisy_labels != labels)`` exactly. A sample whose label was "re-drawn" but
landed on its own class is therefore *not* corrupted; the realised noise rate of each model is
given in its docstring. The mask is by position, so it stays valid for any model that gives
sample ``i`` its own data parameter: nothing here assumes the corrupted samples come first.

Randomness comes only from ``np.random.default_rng(seed)``; the same seed gives the same
labels on every platform numpy supports.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NOISE_MODELS",
    "apply_noise",
    "cifar10_asymmetric_matrix",
    "instance_dependent_noise",
    "pair_noise",
    "permutation_noise",
    "random_labels",
    "symmetric_noise",
    "transition_noise",
    "uniform_noise",
]

NOISE_MODELS: tuple[str, ...] = (
    "none",
    "uniform",
    "symmetric",
    "permutation",
    "pair",
    "asymmetric",
    "transition",
    "random",
    "instance",
)


def _check_labels(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """A read-only int64 view (or copy) of ``labels``, validated against ``num_classes``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}), got range [{arr.min()}, {arr.max()}]")
    return arr


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise probability p must lie in [0, 1], got {p}")
    return p


def _result(clean: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    noisy = np.asarray(noisy, dtype=np.int64)
    return noisy, noisy != clean


def uniform_noise(
    labels: np.ndarray, p: float, num_classes: int, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each label, with probability ``p``, by a class drawn uniformly from all ``K``.

    This is the paper's setting (sec. 3.4): the new class may equal the old one, so the
    realised corrupted fraction is ``p * (K - 1) / K``.

    Parameters
    ----------
    labels : ndarray (N,) int
        Clean labels in ``[0, K)``.
    p : float in [0, 1]
        Probability that a label is re-drawn.
    num_classes : int
        ``K``.
    seed : int, SeedSequence or Generator
        Passed to ``np.random.default_rng``.

    Returns
    -------
    noisy_labels : ndarray (N,) int64
    is_corrupted : ndarray (N,) bool
        ``noisy_labels != labels``.
    """
    clean = _check_labels(labels, num_classes)
    p = _check_p(p)
    rng = np.random.default_rng(seed)
    # Both draws are made for every sample so that the outcome for sample i does not depend on
    # how many samples before it were re-drawn.
    redraw = rng.random(len(clean)) < p
    new = rng.integers(0, num_classes, size=len(clean))
    return _result(clean, np.where(redraw, new, clean))


def _flip_draw(
    labels: np.ndarray, p: float, num_classes: int, seed: int | np.random.Generator, name: str
) -> tuple[np.ndarray, np.random.Generator, np.ndarray]:
    """Checked labels, the generator, and which samples flip (each with probability ``p``).

    Shared by the noise models that move a flipped label to *another* class, hence ``K >= 2``.
    The generator is returned after the flip draw, for any further per-sample draw.
    """
    clean = _check_labels(labels, num_classes)
    p = _check_p(p)
    if p > 0 and num_classes < 2:
        raise ValueError(f"{name} noise needs num_classes >= 2")
    rng = np.random.default_rng(seed)
    return clean, rng, rng.random(len(clean)) < p


def symmetric_noise(
    labels: np.ndarray, p: float, num_classes: int, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """With probability ``p``, flip a label to a class drawn uniformly from the other ``K - 1``.

    The realised corrupted fraction is ``p``. Same parameters and returns as
    :func:`uniform_noise`; needs ``K >= 2`` when ``p > 0``.
    """
    clean, rng, flip = _flip_draw(labels, p, num_classes, seed, "symmetric")
    # A nonzero offset modulo K is uniform over the K - 1 other classes.
    offset = rng.integers(1, max(num_classes, 2), size=len(clean))
    return _result(clean, np.where(flip, (clean + offset) % num_classes, clean))


def pair_noise(
    labels: np.ndarray, p: float, num_classes: int, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pair flip: with probability ``p``, class ``k`` becomes ``(k + 1) mod K``.

    The realised corrupted fraction is ``p``. Same parameters and returns as
    :func:`uniform_noise`; needs ``K >= 2`` when ``p > 0``.
    """
    clean, _, flip = _flip_draw(labels, p, num_classes, seed, "pair")
    return _result(clean, np.where(flip, (clean + 1) % num_classes, clean))


def permutation_noise(
    labels: np.ndarray, p: float, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the labels of a random subset of ``floor(p * N)`` samples among themselves.

    The released code shuffled the *images* of the first ``k`` samples; shuffling the labels of
    a random subset is the same corruption, but every image keeps its position and so its data
    parameter, and the corrupted samples are not bunched at the start of the dataset.

    The label multiset is unchanged. A sample of the subset whose new label happens to equal its
    old one is not corrupted, so the realised corrupted fraction is about
    ``p * (1 - sum_c q_c ** 2)`` for class proportions ``q_c`` (``p * (K - 1) / K`` if balanced).

    Parameters
    ----------
    labels : ndarray (N,) int
    p : float in [0, 1]
        Fraction of samples whose labels are shuffled.
    seed : int, SeedSequence or Generator

    Returns
    -------
    noisy_labels : ndarray (N,) int64
    is_corrupted : ndarray (N,) bool
    """
    clean = _check_labels(labels)
    p = _check_p(p)
    rng = np.random.default_rng(seed)
    n = len(clean)
    k = int(np.floor(p * n))
    subset = rng.choice(n, size=k, replace=False)
    noisy = clean.copy()
    noisy[subset] = clean[subset[rng.permutation(k)]]
    return _result(clean, noisy)


def _check_transition(transition: np.ndarray) -> np.ndarray:
    t = np.asarray(transition, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ValueError(f"transition must be a square (K, K) matrix, got shape {t.shape}")
    if not np.all(np.isfinite(t)) or (t < 0).any():
        raise ValueError("transition must have finite, nonnegative entries")
    row_sums = t.sum(axis=1)
    bad = np.flatnonzero(~np.isclose(row_sums, 1.0, rtol=0.0, atol=1e-6))
    if bad.size:
        raise ValueError(
            f"each row of transition must sum to 1 (it is P(noisy | clean)); row {bad[0]} sums "
            f"to {row_sums[bad[0]]:.6g}"
        )
    return t


def transition_noise(
    labels: np.ndarray, transition: np.ndarray, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional noise: the noisy label of a class-``i`` sample is drawn from row ``i``.

    Parameters
    ----------
    labels : ndarray (N,) int
        Clean labels in ``[0, K)``.
    transition : ndarray (K, K) float
        Row-stochastic, ``transition[i, j] = P(noisy = j | clean = i)``.
    seed : int, SeedSequence or Generator

    Returns
    -------
    noisy_labels : ndarray (N,) int64
    is_corrupted : ndarray (N,) bool
        The expected corrupted fraction is ``sum_i q_i * (1 - transition[i, i])``.
    """
    t = _check_transition(transition)
    k = t.shape[0]
    clean = _check_labels(labels, k)
    rng = np.random.default_rng(seed)
    u = rng.random(len(clean))
    noisy = clean.copy()
    # Renormalise so the last cumulative value is 1 up to rounding; searching one class at a
    # time keeps memory at O(N + K^2) rather than O(N K).
    cdf = np.cumsum(t / t.sum(axis=1, keepdims=True), axis=1)
    for c in np.unique(clean):
        idx = np.flatnonzero(clean == c)
        # side="right" never lands on a zero-probability class; the clip catches u above a
        # last cumulative value that rounded to just under 1.
        last = np.flatnonzero(t[c] > 0)[-1]
        noisy[idx] = np.minimum(np.searchsorted(cdf[c], u[idx], side="right"), last)
    return _result(clean, noisy)


def cifar10_asymmetric_matrix(p: float) -> np.ndarray:
    """The usual CIFAR-10 asymmetric noise as a (10, 10) transition matrix.

    With probability ``p``: truck -> automobile (9 -> 1), bird -> airplane (2 -> 0),
    deer -> horse (4 -> 7), cat <-> dog (3 <-> 5). Other classes are left alone, so the
    realised corrupted fraction on balanced CIFAR-10 is ``p / 2``.
    """
    p = _check_p(p)
    t = np.eye(10)
    for src, dst in ((9, 1), (2, 0), (4, 7), (3, 5), (5, 3)):
        t[src, src] = 1.0 - p
        t[src, dst] = p
    return t


def instance_dependent_noise(
    labels: np.ndarray, p: float, reference_probs: np.ndarray, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Instance-dependent noise: the more a sample looks like another class, the likelier it takes that label.

    The construction follows Chen, Ye, Chen, Zhao & Heng, "Beyond Class-Conditional Assumption: A
    Primary Attempt to Combat Instance-Dependent Label Noise" (AAAI 2021): a reference model
    trained on the clean labels gives each sample a probability for every class; a sample's
    *confusion* is the largest probability it gives a class other than its own,
    ``m_i = max_{k != y_i} P_ref(k | x_i)``, and a flipped sample takes that most-confused class.
    Chen et al. flip exactly the ``p * N`` most confused samples; here each sample flips with
    probability ``q_i = min(1, c * m_i)``, the scale ``c`` set so that ``mean(q_i) = p``, and the
    draw follows ``seed``, so that a different seed gives a different noisy set with the same
    structure (an easy image can still, rarely, be mislabeled; a very confusable one almost
    always is). The realised corrupted fraction is ``p`` in expectation. When ``p`` exceeds what
    the confusions allow (``q_i = 1`` for every sample with ``m_i > 0``), every such sample flips.

    Parameters
    ----------
    labels : ndarray (N,) int
        Clean labels in ``[0, K)``.
    p : float in [0, 1]
        Expected fraction of flipped labels.
    reference_probs : ndarray (N, K) float
        A reference model's class probabilities for each sample, out of sample (cross-fitted)
        so that they reflect how the image looks rather than a memorised label. Rows need not
        sum to exactly 1 (logits of a softmax are fine after ``softmax``); values must be finite
        and nonnegative.
    seed : int, SeedSequence or Generator

    Returns
    -------
    noisy_labels : ndarray (N,) int64
    is_corrupted : ndarray (N,) bool
    """
    probs = np.asarray(reference_probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"reference_probs must be (N, K), got shape {probs.shape}")
    n, k = probs.shape
    clean = _check_labels(labels, k)
    p = _check_p(p)
    rng = np.random.default_rng(seed)
    if len(clean) != n:
        raise ValueError(f"reference_probs has {n} rows for {len(clean)} labels")
    if not np.all(np.isfinite(probs)) or (probs < 0).any():
        raise ValueError("reference_probs must be finite and nonnegative")
    if p > 0 and k < 2:
        raise ValueError("instance-dependent noise needs num_classes >= 2")
    other = probs.copy()
    other[np.arange(n), clean] = -np.inf
    target = other.argmax(axis=1) if k > 1 else clean.copy()
    confusion = np.maximum(other[np.arange(n), target], 0.0) if k > 1 else np.zeros(n)
    q = _scale_to_mean(confusion, p)
    # One uniform per sample, drawn for every sample, so sample i's outcome depends on its own q_i only.
    flip = rng.random(n) < q
    return _result(clean, np.where(flip, target, clean))


def _scale_to_mean(m: np.ndarray, p: float) -> np.ndarray:
    """``min(1, c * m)`` with ``c >= 0`` chosen so that its mean is ``p`` (or as close as ``m`` allows).

    Solved exactly: with the confusions sorted in decreasing order, the ``j`` largest are clipped
    at 1 and ``c = (p N - j) / sum(rest)``; the right ``j`` is the one for which the clipped ones
    reach 1 and the rest do not.
    """
    if p <= 0 or not len(m) or not (m > 0).any():
        return np.zeros_like(m)
    if p >= float((m > 0).mean()):
        return (m > 0).astype(np.float64)
    desc = np.sort(m)[::-1]
    n = len(m)
    rest = np.cumsum(desc[::-1])[::-1]  # rest[j] = sum(desc[j:])
    j = np.arange(n)
    prev = np.concatenate([[np.inf], desc[:-1]])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = (p * n - j) / rest
        ok = (c > 0) & (c * desc <= 1.0 + 1e-12) & (c * prev >= 1.0 - 1e-12)
    return np.minimum(1.0, c[np.flatnonzero(ok)[0]] * m)


def random_labels(
    labels: np.ndarray, num_classes: int, *, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replace every label by a class drawn uniformly from all ``K`` (sec. 3.5).

    About ``1 / K`` of the new labels equal the old ones and are not marked corrupted.
    """
    clean = _check_labels(labels, num_classes)
    rng = np.random.default_rng(seed)
    return _result(clean, rng.integers(0, num_classes, size=len(clean)))


def apply_noise(
    kind: str,
    labels: np.ndarray,
    p: float,
    num_classes: int,
    *,
    seed: int | np.random.Generator,
    transition: np.ndarray | None = None,
    reference_probs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt ``labels`` with the noise model named ``kind``.

    Parameters
    ----------
    kind : str
        One of :data:`NOISE_MODELS`: ``"none"`` (a copy, nothing corrupted), ``"uniform"``,
        ``"symmetric"``, ``"permutation"``, ``"pair"``, ``"asymmetric"`` (the CIFAR-10 map of
        :func:`cifar10_asymmetric_matrix`; needs ``K = 10``), ``"transition"`` (needs
        ``transition``), ``"random"`` or ``"instance"`` (instance-dependent, needs
        ``reference_probs``; :func:`instance_dependent_noise`).
    labels : ndarray (N,) int
        Clean labels in ``[0, K)``.
    p : float in [0, 1]
        Noise probability (for ``"instance"``, the expected flipped fraction); ignored by
        ``"none"``, ``"transition"`` and ``"random"``.
    num_classes : int
        ``K``.
    seed : int, SeedSequence or Generator
    transition : ndarray (K, K), optional
        Only for ``kind="transition"``.
    reference_probs : ndarray (N, K), optional
        Only for ``kind="instance"``: a reference model's out-of-sample class probabilities.

    Returns
    -------
    noisy_labels : ndarray (N,) int64
    is_corrupted : ndarray (N,) bool
    """
    if kind not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {kind!r}; valid: {', '.join(NOISE_MODELS)}")
    p = _check_p(p)
    if (transition is not None) != (kind == "transition"):
        raise ValueError("give a transition matrix exactly when kind='transition'")
    if (reference_probs is not None) != (kind == "instance"):
        raise ValueError("give reference probabilities exactly when kind='instance'")
    if kind == "none":
        clean = _check_labels(labels, num_classes)
        return clean.copy(), np.zeros(len(clean), dtype=bool)
    if kind == "uniform":
        return uniform_noise(labels, p, num_classes, seed=seed)
    if kind == "symmetric":
        return symmetric_noise(labels, p, num_classes, seed=seed)
    if kind == "permutation":
        _check_labels(labels, num_classes)
        return permutation_noise(labels, p, seed=seed)
    if kind == "pair":
        return pair_noise(labels, p, num_classes, seed=seed)
    if kind == "asymmetric":
        if num_classes != 10:
            raise ValueError(f"asymmetric noise is the CIFAR-10 map and needs K = 10, got {num_classes}")
        return transition_noise(labels, cifar10_asymmetric_matrix(p), seed=seed)
    if kind == "transition":
        t = _check_transition(transition)  # type: ignore[arg-type]
        if t.shape[0] != num_classes:
            raise ValueError(f"transition is {t.shape} but num_classes is {num_classes}")
        return transition_noise(labels, t, seed=seed)
    if kind == "instance":
        ref = np.asarray(reference_probs)
        if ref.ndim != 2 or ref.shape[1] != num_classes:
            raise ValueError(f"reference_probs is {ref.shape} but num_classes is {num_classes}")
        return instance_dependent_noise(labels, p, ref, seed=seed)
    return random_labels(labels, num_classes, seed=seed)
