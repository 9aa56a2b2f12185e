"""Label-noise models: realised rates against their expectation, masks, seeding, purity."""

import numpy as np
import pytest

from dataparams.noise import (
    NOISE_MODELS,
    apply_noise,
    cifar10_asymmetric_matrix,
    instance_dependent_noise,
    pair_noise,
    permutation_noise,
    random_labels,
    symmetric_noise,
    transition_noise,
    uniform_noise,
)

N, K, P = 20000, 10, 0.4


@pytest.fixture(scope="module")
def clean():
    labels = np.random.default_rng(123).integers(0, K, size=N)
    labels.flags.writeable = False  # any in-place write by a noise function raises
    return labels


def _random_transition(k, seed=0):
    t = np.random.default_rng(seed).dirichlet(np.ones(k), size=k)
    return 0.5 * t + 0.5 * np.eye(k)


def _expected_rate(kind, labels):
    q = np.bincount(labels, minlength=K) / len(labels)
    return {
        "none": 0.0,
        "uniform": P * (K - 1) / K,
        "symmetric": P,
        "pair": P,
        # A shuffled sample keeps its label when it receives one of its own class.
        "permutation": P * (1 - np.sum(q**2)),
        "asymmetric": P * np.isin(labels, [2, 3, 4, 5, 9]).mean(),
        "transition": float(np.mean(1 - np.diag(_random_transition(K))[labels])),
        "random": (K - 1) / K,
        # Flip probabilities are scaled to average exactly P, and a flip always changes the class.
        "instance": P,
    }[kind]


def _reference(n, k=K, seed=7):
    """Stand-in reference probabilities: one Dirichlet row per sample (a fixed seed, independent of the labels)."""
    return np.random.default_rng(seed).dirichlet(np.full(k, 0.5), size=n)


def _noisy(kind, labels, seed=0):
    transition = _random_transition(K) if kind == "transition" else None
    ref = _reference(len(labels)) if kind == "instance" else None
    return apply_noise(kind, labels, P, K, seed=seed, transition=transition, reference_probs=ref)


@pytest.mark.parametrize("kind", NOISE_MODELS)
def test_realised_rate_matches_expectation(kind, clean):
    noisy, corrupted = _noisy(kind, clean)
    q = _expected_rate(kind, clean)
    se = np.sqrt(max(q * (1 - q), 1e-12) / N)
    assert abs(corrupted.mean() - q) <= 4 * se, (kind, corrupted.mean(), q)


@pytest.mark.parametrize("kind", NOISE_MODELS)
def test_mask_is_exactly_label_change_and_dtypes(kind, clean):
    noisy, corrupted = _noisy(kind, clean)
    assert noisy.dtype == np.int64 and noisy.shape == (N,)
    assert corrupted.dtype == np.bool_ and corrupted.shape == (N,)
    np.testing.assert_array_equal(corrupted, noisy != clean)
    assert noisy.min() >= 0 and noisy.max() < K


@pytest.mark.parametrize("kind", [k for k in NOISE_MODELS if k != "none"])
def test_seeding(kind, clean):
    a, _ = _noisy(kind, clean, seed=1)
    b, _ = _noisy(kind, clean, seed=1)
    c, _ = _noisy(kind, clean, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("kind", NOISE_MODELS)
def test_input_is_not_modified(kind):
    labels = np.random.default_rng(5).integers(0, K, size=500)
    before = labels.copy()
    noisy, _ = _noisy(kind, labels)
    np.testing.assert_array_equal(labels, before)
    assert not np.shares_memory(noisy, labels)


def test_uniform_can_redraw_the_true_class(clean):
    # About 1/K of the re-drawn labels land on the true class: fewer corrupted than with the
    # same p under symmetric noise, which always changes the class.
    _, u = uniform_noise(clean, 1.0, K, seed=0)
    _, s = symmetric_noise(clean, 1.0, K, seed=0)
    assert s.all()
    assert 0.85 < u.mean() < 0.95


def test_symmetric_spreads_over_the_other_classes(clean):
    noisy, corrupted = symmetric_noise(clean, 1.0, K, seed=3)
    zero = clean == 0
    counts = np.bincount(noisy[zero], minlength=K)
    assert counts[0] == 0
    expected = zero.sum() / (K - 1)
    assert np.all(np.abs(counts[1:] - expected) < 4 * np.sqrt(expected))


def test_pair_flips_to_next_class(clean):
    noisy, corrupted = pair_noise(clean, P, K, seed=0)
    np.testing.assert_array_equal(noisy[corrupted], (clean[corrupted] + 1) % K)


def test_p_zero_corrupts_nothing(clean):
    for fn in (uniform_noise, symmetric_noise, pair_noise):
        noisy, corrupted = fn(clean, 0.0, K, seed=0)
        assert not corrupted.any()
        np.testing.assert_array_equal(noisy, clean)
    assert not permutation_noise(clean, 0.0, seed=0)[1].any()


def test_permutation_keeps_multiset_and_stays_within_subset(clean):
    noisy, corrupted = permutation_noise(clean, P, seed=0)
    k = int(np.floor(P * N))
    np.testing.assert_array_equal(np.bincount(noisy, minlength=K), np.bincount(clean, minlength=K))
    assert corrupted.sum() <= k
    # Labels are only exchanged within the shuffled subset, and the unchanged members of the
    # subset hold the same labels before and after, so the corrupted samples' labels are a
    # permutation of their clean labels.
    np.testing.assert_array_equal(
        np.bincount(noisy[corrupted], minlength=K), np.bincount(clean[corrupted], minlength=K)
    )


def test_permutation_does_not_pick_the_first_k():
    # With all labels distinct, every shuffled sample but a fixed point of the shuffle changes.
    n = 1000
    labels = np.arange(n)
    _, corrupted = permutation_noise(labels, 0.3, seed=0)
    assert 290 <= corrupted.sum() <= 300
    assert not corrupted[:300].all()
    assert corrupted[300:].sum() > 100


def test_permutation_p_one_permutes_everything():
    labels = np.arange(100)
    noisy, _ = permutation_noise(labels, 1.0, seed=0)
    np.testing.assert_array_equal(np.sort(noisy), labels)


def test_transition_matches_matrix_rows(clean):
    t = _random_transition(K, seed=7)
    noisy, _ = transition_noise(clean, t, seed=0)
    for c in range(K):
        members = clean == c
        freq = np.bincount(noisy[members], minlength=K) / members.sum()
        se = np.sqrt(t[c] * (1 - t[c]) / members.sum())
        assert np.all(np.abs(freq - t[c]) <= 4 * se + 1e-12)


def test_transition_never_draws_zero_probability_class():
    t = np.zeros((3, 3))
    t[0, 2] = 1.0
    t[1, 1] = 1.0
    t[2, :2] = 0.5
    noisy, _ = transition_noise(np.repeat([0, 1, 2], 1000), t, seed=0)
    assert (noisy[:1000] == 2).all() and (noisy[1000:2000] == 1).all()
    assert set(noisy[2000:]) == {0, 1}


@pytest.mark.parametrize(
    "t,match",
    [
        (np.array([[0.5, 0.6], [0.5, 0.5]]), "sum to 1"),
        (np.array([[1.5, -0.5], [0.0, 1.0]]), "nonnegative"),
        (np.ones((2, 3)) / 3, "square"),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), "finite"),
    ],
)
def test_transition_validation(t, match):
    with pytest.raises(ValueError, match=match):
        transition_noise(np.array([0, 1]), t, seed=0)


def test_transition_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        transition_noise(np.array([0, 2]), np.eye(2), seed=0)


def test_cifar10_asymmetric_matrix():
    t = cifar10_asymmetric_matrix(0.3)
    np.testing.assert_allclose(t.sum(1), 1.0)
    for src, dst in ((9, 1), (2, 0), (4, 7), (3, 5), (5, 3)):
        assert t[src, dst] == pytest.approx(0.3) and t[src, src] == pytest.approx(0.7)
    for c in (0, 1, 6, 7, 8):
        assert t[c, c] == 1.0


def test_random_labels_ignore_the_clean_ones(clean):
    noisy, corrupted = random_labels(clean, K, seed=0)
    counts = np.bincount(noisy, minlength=K)
    assert np.all(np.abs(counts - N / K) < 4 * np.sqrt(N / K))


def test_apply_noise_errors(clean):
    with pytest.raises(ValueError, match="uniform, symmetric"):
        apply_noise("gaussian", clean, P, K, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_noise("uniform", clean, 1.5, K, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_noise("none", clean, -0.1, K, seed=0)
    with pytest.raises(ValueError, match="K = 10"):
        apply_noise("asymmetric", clean % 5, P, 5, seed=0)
    with pytest.raises(ValueError, match="transition"):
        apply_noise("transition", clean, P, K, seed=0)
    with pytest.raises(ValueError, match="transition"):
        apply_noise("uniform", clean, P, K, seed=0, transition=np.eye(K))
    with pytest.raises(ValueError, match="num_classes"):
        apply_noise("transition", clean, P, K, seed=0, transition=np.eye(3))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        apply_noise("permutation", clean, P, 5, seed=0)


def test_apply_noise_dispatches_to_the_named_model(clean):
    for kind, fn in (("uniform", uniform_noise), ("symmetric", symmetric_noise), ("pair", pair_noise)):
        np.testing.assert_array_equal(apply_noise(kind, clean, P, K, seed=9)[0], fn(clean, P, K, seed=9)[0])
    np.testing.assert_array_equal(
        apply_noise("permutation", clean, P, K, seed=9)[0], permutation_noise(clean, P, seed=9)[0]
    )
    np.testing.assert_array_equal(
        apply_noise("asymmetric", clean, P, K, seed=9)[0],
        transition_noise(clean, cifar10_asymmetric_matrix(P), seed=9)[0],
    )
    noisy, corrupted = apply_noise("none", clean, P, K, seed=9)
    np.testing.assert_array_equal(noisy, clean)
    assert not corrupted.any()


def test_instance_dependent_noise_by_hand():
    # Confusions m = largest other-class probability; without clipping q = p * m / mean(m), and
    # sample i flips (to its most confused class) exactly when the seed's i-th uniform is below q_i.
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    labels = np.array([0, 1, 2, 0])
    m = np.array([0.2, 0.4, 0.3, 0.05])
    target = np.array([1, 2, 0, 1])  # ties (sample 2: classes 0 and 1 at 0.3) go to the first class
    p = 0.2
    q = p * m / m.mean()
    assert q.max() < 1  # no clipping in this example
    u = np.random.default_rng(11).random(4)
    noisy, corrupted = instance_dependent_noise(labels, p, probs, seed=11)
    np.testing.assert_array_equal(noisy, np.where(u < q, target, labels))
    np.testing.assert_array_equal(corrupted, u < q)


def test_instance_dependent_noise_follows_confusion_and_clips():
    rng = np.random.default_rng(0)
    n = 20000
    labels = rng.integers(0, K, size=n)
    probs = _reference(n)
    noisy, corrupted = instance_dependent_noise(labels, 0.3, probs, seed=1)
    other = probs.copy()
    other[np.arange(n), labels] = -1
    m = other.max(1)
    # A flipped sample takes its most confused class, and the more confused, the likelier the flip.
    np.testing.assert_array_equal(noisy[corrupted], other.argmax(1)[corrupted])
    lo, hi = m < np.quantile(m, 0.25), m > np.quantile(m, 0.75)
    assert corrupted[hi].mean() > 2 * corrupted[lo].mean()
    assert abs(corrupted.mean() - 0.3) < 4 * np.sqrt(0.21 / n)
    # A rate beyond what the confusions allow flips every sample with any confusion.
    probs2 = np.eye(K)[labels] * 0.5 + 0.5 * np.eye(K)[(labels + 1) % K] * (np.arange(n) % 2)[:, None]
    noisy2, corrupted2 = instance_dependent_noise(labels, 0.9, probs2, seed=1)
    np.testing.assert_array_equal(corrupted2, np.arange(n) % 2 == 1)
    np.testing.assert_array_equal(noisy2[corrupted2], ((labels + 1) % K)[corrupted2])


def test_instance_dependent_noise_errors(clean):
    with pytest.raises(ValueError, match="rows"):
        instance_dependent_noise(clean, P, _reference(10), seed=0)
    with pytest.raises(ValueError, match="nonnegative"):
        instance_dependent_noise(clean[:2], P, np.array([[0.5, -0.5] + [0] * 8, [1] + [0] * 9]), seed=0)
    with pytest.raises(ValueError, match="reference"):
        apply_noise("instance", clean, P, K, seed=0)
    with pytest.raises(ValueError, match="reference"):
        apply_noise("uniform", clean, P, K, seed=0, reference_probs=_reference(N))
    with pytest.raises(ValueError, match="num_classes"):
        apply_noise("instance", clean, P, K, seed=0, reference_probs=_reference(N, k=4))
