"""Label-error metrics against values worked out by hand, and against scikit-learn."""

import json
import math

import numpy as np
import pytest

from dataparams.analysis import (
    auroc,
    average_precision,
    estimate_num_mislabeled,
    label_error_metrics,
    over_seeds,
    precision_recall_at_k,
    separated_fraction,
    top_fraction_purity,
)

# Sorted by score: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-).
SCORES = np.array([0.1, 0.4, 0.35, 0.8])
POS = np.array([0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------
# auroc / average_precision
# ---------------------------------------------------------------------------------------------


def test_auroc_and_ap_by_hand():
    # Positive/negative pairs: 0.8 beats 0.4 and 0.1, 0.35 beats 0.1 only -> 3 of 4.
    assert auroc(SCORES, POS) == pytest.approx(0.75)
    # Recall 1/2 at precision 1/1, recall 2/2 at precision 2/3.
    assert average_precision(SCORES, POS) == pytest.approx(0.5 * 1.0 + 0.5 * 2.0 / 3.0)


def test_accepts_bool_lists_and_integer_scores():
    assert auroc(list(SCORES), [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([1, 4, 3, 8], POS) == pytest.approx(0.75)


def test_only_order_matters():
    assert auroc(np.log(SCORES), POS) == pytest.approx(0.75)
    assert average_precision(SCORES * 100 + 3, POS) == pytest.approx(5.0 / 6.0)


def test_all_tied_scores():
    s = np.full(5, 2.0)
    y = np.array([1, 0, 0, 1, 0])
    assert auroc(s, y) == 0.5
    # One threshold admits everything: recall 1 at precision 2/5.
    assert average_precision(s, y) == pytest.approx(0.4)


def test_partial_ties_by_hand():
    s = np.array([0.5, 0.5, 0.2])
    y = np.array([1, 0, 1])
    # (+0.5 vs -0.5) is a tie = 1/2, (+0.2 vs -0.5) a loss -> 0.5 / 2 pairs.
    assert auroc(s, y) == pytest.approx(0.25)
    # Threshold 0.5: tp 1 of 2 flagged, recall 1/2; threshold 0.2: precision 2/3, recall 1.
    assert average_precision(s, y) == pytest.approx(0.5 * 0.5 + 0.5 * 2.0 / 3.0)
    # The order of the samples inside a tie must not matter.
    assert average_precision(s[[1, 0, 2]], y[[1, 0, 2]]) == pytest.approx(average_precision(s, y))


def test_perfect_and_reversed():
    s = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    y = np.array([0, 0, 0, 1, 1])
    assert auroc(s, y) == 1.0
    assert average_precision(s, y) == 1.0
    assert auroc(-s, y) == 0.0
    # Reversed: positives come at ranks 4 and 5 -> 1/2 * 1/4 + 1/2 * 2/5.
    assert average_precision(-s, y) == pytest.approx(0.5 * 0.25 + 0.5 * 0.4)


def test_all_clean_and_all_noisy():
    s = np.array([0.3, 0.1, 0.2])
    assert math.isnan(auroc(s, [0, 0, 0]))
    assert math.isnan(average_precision(s, [0, 0, 0]))
    assert math.isnan(auroc(s, [1, 1, 1]))
    assert average_precision(s, [1, 1, 1]) == 1.0
    assert math.isnan(auroc([], []))
    assert math.isnan(average_precision([], []))


def test_against_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 300))
        s = rng.integers(0, 8, size=n).astype(float)  # few distinct values: many ties
        if trial % 2:
            s = s + rng.normal(size=n)
        y = rng.random(n) < rng.uniform(0.05, 0.6)
        if y.all() or not y.any():
            continue
        assert auroc(s, y) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Cut-off metrics
# ---------------------------------------------------------------------------------------------


def test_precision_recall_at_k_by_hand():
    assert precision_recall_at_k(SCORES, POS, 1) == (1.0, 0.5)
    assert precision_recall_at_k(SCORES, POS, 2) == (0.5, 0.5)
    p, r = precision_recall_at_k(SCORES, POS, 3)
    assert (p, r) == (pytest.approx(2.0 / 3.0), 1.0)
    assert precision_recall_at_k(SCORES, POS, 4) == (0.5, 1.0)
    p, r = precision_recall_at_k(SCORES, POS, 0)
    assert math.isnan(p) and r == 0.0


def test_precision_recall_at_k_ties_break_by_index():
    s = np.array([0.9, 0.5, 0.5, 0.5])
    # Among the three tied samples, the lower indices (1 then 2) are flagged first.
    assert precision_recall_at_k(s, [0, 0, 1, 1], 2) == (0.0, 0.0)
    assert precision_recall_at_k(s, [0, 1, 0, 1], 2) == (0.5, 0.5)
    assert precision_recall_at_k(s, [0, 0, 1, 1], 3) == (pytest.approx(1.0 / 3.0), 0.5)


def test_precision_recall_at_k_edges():
    p, r = precision_recall_at_k(SCORES, [0, 0, 0, 0], 2)
    assert p == 0.0 and math.isnan(r)
    for bad in (-1, 5, 1.0, True, None):
        with pytest.raises(ValueError, match="k must"):
            precision_recall_at_k(SCORES, POS, bad)
    assert precision_recall_at_k(SCORES, POS, np.int64(1)) == (1.0, 0.5)


def test_top_fraction_purity_by_hand():
    s = np.arange(10.0)  # top 40% = indices 9, 8, 7, 6
    y = np.zeros(10, dtype=bool)
    y[[9, 7, 2]] = True
    assert top_fraction_purity(s, y, 0.4) == pytest.approx(50.0)
    assert top_fraction_purity(s, y, 1.0) == pytest.approx(30.0)
    assert top_fraction_purity(s, y, 0.1) == 100.0
    # 0.25 * 10 = 2.5 rounds up to 3 samples: 9, 8, 7 -> 2 of 3.
    assert top_fraction_purity(s, y, 0.25) == pytest.approx(200.0 / 3.0)
    assert math.isnan(top_fraction_purity(s, y, 0.0))
    for bad in (-0.1, 1.5, "0.4", True):
        with pytest.raises(ValueError, match="fraction"):
            top_fraction_purity(s, y, bad)


def test_separated_fraction_by_hand():
    s = np.array([0.1, 0.5, 0.7, 0.6, 0.9, 0.5])
    y = np.array([0, 0, 1, 1, 1, 1])
    # Highest negative is 0.5; positives 0.7, 0.6, 0.9 beat it, the positive at 0.5 only ties.
    assert separated_fraction(s, y) == pytest.approx(0.75)
    assert separated_fraction(SCORES, POS) == pytest.approx(0.5)
    assert separated_fraction(-s, y) == 0.0
    assert math.isnan(separated_fraction(s, np.zeros(6, dtype=int)))
    assert separated_fraction(s, np.ones(6, dtype=int)) == 1.0


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores,is_positive,match",
    [
        (np.ones((2, 2)), np.ones((2, 2), dtype=bool), "1-D"),
        (np.ones(3), np.ones(4, dtype=bool), "shape of scores"),
        (np.array([0.1, np.nan, 0.3]), [0, 1, 0], "finite"),
        (np.array([0.1, np.inf, 0.3]), [0, 1, 0], "finite"),
        (np.array(["a", "b"]), [0, 1], "real"),
        (np.array([True, False]), [0, 1], "real"),
        (np.ones(3), [0, 2, 1], "only 0 and 1"),
        (np.ones(3), [0.0, 1.0, 1.0], "boolean"),
    ],
)
def test_validation(scores, is_positive, match):
    for fn in (auroc, average_precision, separated_fraction, label_error_metrics):
        with pytest.raises(ValueError, match=match):
            fn(scores, is_positive)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def test_label_error_metrics_by_hand():
    rep = label_error_metrics(SCORES, POS)
    assert rep["n"] == 4 and rep["n_positive"] == 2 and rep["n_negative"] == 2 and rep["k"] == 2
    assert rep["positive_rate"] == rep["top_fraction"] == 0.5
    assert rep["auroc"] == pytest.approx(0.75)
    assert rep["average_precision"] == pytest.approx(5.0 / 6.0)
    assert rep["precision_at_k"] == rep["recall_at_k"] == 0.5
    assert rep["top_fraction_purity"] == pytest.approx(50.0)
    assert rep["separated_fraction"] == pytest.approx(0.5)
    assert "per_class" not in rep
    json.dumps(rep)


def test_label_error_metrics_per_class():
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.7, 0.4])
    y = np.array([1, 0, 0, 0, 1, 1, 0])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    rep = label_error_metrics(s, y, labels=labels, num_classes=3)
    pc = rep["per_class"]
    assert set(pc) == {0, 1, 2}
    assert pc[0] == {"n": 3, "n_positive": 1, "auroc": 1.0, "average_precision": 1.0}
    # Class 1: positives 0.3, 0.7 vs negatives 0.8, 0.4 -> pairs won: (0.7 > 0.4) = 1 of 4.
    assert pc[1]["n"] == 4 and pc[1]["n_positive"] == 2
    assert pc[1]["auroc"] == pytest.approx(0.25)
    # Order 0.8 (-), 0.7 (+), 0.4 (-), 0.3 (+): 1/2 * 1/2 + 1/2 * 2/4.
    assert pc[1]["average_precision"] == pytest.approx(0.5)
    assert pc[2]["n"] == 0 and math.isnan(pc[2]["auroc"]) and math.isnan(pc[2]["average_precision"])
    # Without num_classes only the classes present are reported.
    assert set(label_error_metrics(s, y, labels=labels)["per_class"]) == {0, 1}
    text = json.dumps(rep)
    assert json.loads(text)["per_class"]["1"]["n"] == 4


def test_label_error_metrics_edges_and_validation():
    rep = label_error_metrics(SCORES, [0, 0, 0, 0])
    assert rep["k"] == 0 and math.isnan(rep["precision_at_k"]) and math.isnan(rep["recall_at_k"])
    assert math.isnan(rep["auroc"]) and math.isnan(rep["top_fraction_purity"])
    json.dumps(rep)
    empty = label_error_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["positive_rate"])
    with pytest.raises(ValueError, match="requires labels"):
        label_error_metrics(SCORES, POS, num_classes=2)
    with pytest.raises(ValueError, match="< num_classes"):
        label_error_metrics(SCORES, POS, labels=[0, 1, 2, 1], num_classes=2)
    with pytest.raises(ValueError, match="labels must have the shape"):
        label_error_metrics(SCORES, POS, labels=[0, 1])
    with pytest.raises(ValueError, match="integers"):
        label_error_metrics(SCORES, POS, labels=[0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        label_error_metrics(SCORES, POS, labels=[0, -1, 0, 1])


# ---------------------------------------------------------------------------------------------
# Estimating the number of mislabeled samples
# ---------------------------------------------------------------------------------------------


def _two_clusters(seed=0):
    rng = np.random.default_rng(seed)
    log_sigma = np.concatenate([rng.normal(0.0, 0.2, 4000), rng.normal(2.0, 0.4, 2000)])
    is_noisy = np.arange(6000) >= 4000
    perm = rng.permutation(6000)
    return np.exp(log_sigma[perm]), is_noisy[perm]


def test_estimate_num_mislabeled_recovers_synthetic_noise():
    sigma, is_noisy = _two_clusters()
    est = estimate_num_mislabeled(sigma)
    assert abs(est["n_estimated"] - 2000) <= 60
    assert est["fraction"] == est["n_estimated"] / 6000
    assert auroc(est["posterior"], is_noisy) > 0.99
    assert est["posterior"].shape == (6000,)
    assert est["means"] == pytest.approx((0.0, 2.0), abs=0.05)
    assert est["stds"] == pytest.approx((0.2, 0.4), abs=0.03)
    assert est["weights"] == pytest.approx((2 / 3, 1 / 3), abs=0.02)
    assert est["converged"] and est["note"] is None and est["separation"] > 2
    # The threshold is in sigma's units and splits exactly the flagged samples.
    assert np.array_equal(sigma >= est["threshold"], est["posterior"] > 0.5)
    assert 1.0 < est["threshold"] < np.exp(2.0)


def test_estimate_num_mislabeled_is_deterministic():
    sigma, _ = _two_clusters(seed=1)
    a = estimate_num_mislabeled(sigma)
    b = estimate_num_mislabeled(sigma.copy())
    np.testing.assert_array_equal(a["posterior"], b["posterior"])
    assert {k: v for k, v in a.items() if k != "posterior"} == {
        k: v for k, v in b.items() if k != "posterior"
    }
    # Extra random starts only ever replace the percentile start by a better fit.
    c = estimate_num_mislabeled(sigma, n_init=3, seed=5)
    assert c["log_likelihood"] >= a["log_likelihood"] - 1e-12
    assert abs(c["n_estimated"] - a["n_estimated"]) <= 5


def test_estimate_num_mislabeled_log_false_matches_log_space():
    sigma, _ = _two_clusters()
    a = estimate_num_mislabeled(sigma)
    b = estimate_num_mislabeled(np.log(sigma), log=False)
    assert a["n_estimated"] == b["n_estimated"]
    assert b["threshold"] == pytest.approx(np.log(a["threshold"]))


def test_posterior_is_monotone_in_the_score():
    # A narrow clean cluster and a wide noisy one: an unconstrained mixture posterior would
    # flag the most confidently clean samples (far below the clean mean) as noisy.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 0.1, 4000), rng.normal(2.0, 0.5, 1000), np.full(5, -0.7)])
    est = estimate_num_mislabeled(x, log=False)
    mu, sd, w = (np.array(est[key]) for key in ("means", "stds", "weights"))
    log_joint = np.log(w) - np.log(sd) - 0.5 * ((-0.7 - mu) / sd) ** 2
    assert log_joint[1] > log_joint[0]  # the raw posterior at -0.7 does favour "noisy"
    assert np.all(est["posterior"][-5:] < 1e-3)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(est["posterior"][order]) >= 0)


def test_estimate_num_mislabeled_degenerate():
    for scores, note in [
        (np.full(10, 3.0), "equal"),
        (np.array([2.0]), "fewer than 2"),
        (np.array([]), "fewer"),
    ]:
        est = estimate_num_mislabeled(scores)
        assert est["n_estimated"] == 0 and est["fraction"] == 0.0
        assert math.isnan(est["threshold"]) and note in est["note"]
        assert est["posterior"].shape == scores.shape and not est["posterior"].any()
    # A constant block plus one outlier is not degenerate, and the variance floor keeps it finite.
    est = estimate_num_mislabeled(np.r_[np.full(50, 1.0), 5.0])
    assert est["n_estimated"] == 1 and est["threshold"] == 5.0
    assert all(np.isfinite(est["stds"])) and min(est["stds"]) > 0


def test_estimate_num_mislabeled_validation():
    with pytest.raises(ValueError, match="strictly positive"):
        estimate_num_mislabeled(np.array([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        estimate_num_mislabeled(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="max_iter"):
        estimate_num_mislabeled(np.ones(3), max_iter=0)
    with pytest.raises(ValueError, match="n_init"):
        estimate_num_mislabeled(np.ones(3), n_init=0)
    # Non-positive scores are fine off the log scale.
    assert estimate_num_mislabeled(np.array([-1.0, 0.0, 2.0]), log=False)["posterior"].shape == (3,)


def test_over_seeds_by_hand_skips_missing_runs():
    # 1, 2, 4: mean 7/3, sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3.
    agg = over_seeds([1, None, 2.0, float("nan"), np.float32(4.0)])
    assert agg["n"] == 3 and agg["values"] == [1.0, 2.0, 4.0]
    assert agg["mean"] == pytest.approx(7 / 3) and agg["std"] == pytest.approx(math.sqrt(7 / 3))
    assert over_seeds([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1, "values": [5.0]}
    assert over_seeds([None, float("nan")]) == {"mean": None, "std": None, "n": 0, "values": []}
