"""The scoring layer (scores.py): a tracker against a hand computation, the array functions against
their definitions and an independent loss implementation."""

import math

import numpy as np
import pytest
import torch

from dataparams.analysis.metrics import estimate_num_mislabeled
from dataparams.methods.robust_losses import generalized_cross_entropy
from dataparams.scores import (
    ScoreTracker,
    confident_counts,
    find_label_issues,
    flag_by_rule,
    label_quality_scores,
    loss_bound,
    scores_from_sums,
)


def _two_epochs(tracker, with_sigma):
    # Epoch 1 visits 0, 1, 2 (sample 3 never), then 1 again: its latest value counts.
    kw = (lambda s: {"sigma": torch.tensor(s)}) if with_sigma else (lambda s: {})
    tracker.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), **kw([1.0, 2.0]))
    tracker.update(torch.tensor([2, 1]), torch.tensor([3.0, 4.0]), **kw([4.0, 8.0]))
    tracker.end_epoch()
    tracker.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0.5, 1.0, 1.5, 2.0]), **kw([1.0, 1.0, 2.0, 4.0]))
    tracker.end_epoch()


def test_tracker_by_hand():
    t = ScoreTracker(4, sigma="visit")
    assert set(t.scores()) == {"last-loss"}  # no mean before an epoch has ended
    _two_epochs(t, with_sigma=True)
    s = t.scores()
    np.testing.assert_allclose(s["last-loss"], [0.5, 1.0, 1.5, 2.0])
    # epoch 1 latest losses [1, 4, 3, 0], epoch 2 [0.5, 1, 1.5, 2]
    np.testing.assert_allclose(s["mean-loss"], [0.75, 2.5, 2.25, 1.0])
    # latest sigmas: epoch 1 [1, 8, 4, 1 (never seen: log 0)], epoch 2 [1, 1, 2, 4]; geometric means
    np.testing.assert_allclose(s["sigma-mean"], np.sqrt([1 * 1, 8 * 1, 4 * 2, 1 * 4]))


def test_tracker_epoch_sigma_and_checkpoint():
    t = ScoreTracker(3, sigma="epoch")
    t.update(torch.tensor([0, 2]), torch.tensor([1.0, 3.0]))
    t.end_epoch(torch.log(torch.tensor([1.0, 2.0, 4.0])))
    t.end_epoch(torch.log(torch.tensor([4.0, 2.0, 1.0])))
    np.testing.assert_allclose(t.scores()["sigma-mean"], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(t.scores()["mean-loss"], [1.0, 0.0, 3.0])
    fresh = ScoreTracker(3, sigma="epoch")
    fresh.load_state_dict(t.state_dict())
    for k, v in t.scores().items():
        np.testing.assert_array_equal(fresh.scores()[k], v)
    assert set(t.state_dict()) == {"last_loss", "loss_sum", "epochs_seen", "log_sigma_sum"}


def test_tracker_refuses_mismatched_sigma():
    with pytest.raises(ValueError, match="sigma"):
        ScoreTracker(3, sigma="sometimes")
    with pytest.raises(ValueError, match="visit"):
        ScoreTracker(3).update(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="visit"):
        ScoreTracker(3, sigma="visit").update(torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="epoch"):
        ScoreTracker(3, sigma="epoch").end_epoch()
    with pytest.raises(ValueError, match="epoch"):
        ScoreTracker(3).end_epoch(torch.zeros(3))


def test_scores_from_sums_matches_tracker():
    t = ScoreTracker(4, sigma="visit")
    _two_epochs(t, with_sigma=True)
    got = scores_from_sums(last_loss=t.last_loss.numpy(), loss_sum=t.loss_sum.numpy(), epochs=2,
                           log_sigma_sum=t.log_sigma_sum.numpy())
    for k, v in t.scores().items():
        np.testing.assert_array_equal(got[k], v)


def test_label_quality_inverts_the_loss():
    p = torch.tensor([0.99, 0.6, 0.25, 0.01], dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()], 1)  # softmax gives back (p, 1 - p)
    y = torch.zeros(4, dtype=torch.long)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy()
    np.testing.assert_allclose(label_quality_scores(ce), p.numpy(), rtol=1e-12)
    for q in (0.4, 0.7, 1.0):
        gce = generalized_cross_entropy(logits, y, q=q).numpy()
        np.testing.assert_allclose(label_quality_scores(gce, loss="gce", q=q), p.numpy(), rtol=1e-9)
    assert loss_bound("ce") == math.inf and loss_bound("gce", 0.5) == 2.0


def test_bound_rule_by_hand_and_ranked_indices():
    scores = np.array([0.1, 0.3, 0.29, 1.2, 0.0])  # GCE losses, q = 0.7: bound 1/0.7, 0.2 of it 0.2857
    labels = np.zeros(5, dtype=int)
    mask = find_label_issues(labels, scores, loss="gce", q=0.7)
    np.testing.assert_array_equal(mask, [False, True, True, True, False])
    ranked = find_label_issues(labels, scores, loss="gce", q=0.7, return_indices_ranked_by_score=True)
    np.testing.assert_array_equal(ranked, [3, 1, 2])
    assert flag_by_rule(scores, loss="gce", q=0.7)["rule"] == "bound"
    np.testing.assert_array_equal(find_label_issues(labels, scores, loss="gce", q=0.7, fraction=0.5),
                                  scores >= 0.5 / 0.7)


def test_mixture_rule_is_the_mixture_estimate():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.lognormal(-2, 0.5, 900), rng.lognormal(1, 0.3, 100)])
    labels = np.zeros(1000, dtype=int)
    mask = find_label_issues(labels, scores, rule="mixture")
    expected = estimate_num_mislabeled(scores, log=True)["posterior"] > 0.5
    np.testing.assert_array_equal(mask, expected)
    assert 90 <= mask.sum() <= 110 and mask[900:].all()


def test_find_label_issues_errors():
    with pytest.raises(ValueError, match="entries"):
        find_label_issues(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        find_label_issues(np.zeros(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="rule"):
        find_label_issues(np.zeros(2), np.ones(2), rule="top-k")
    with pytest.raises(ValueError, match="bounded"):
        find_label_issues(np.zeros(2), np.ones(2), rule="bound")
    with pytest.raises(ValueError, match="fraction"):
        find_label_issues(np.zeros(2), np.ones(2), loss="gce", q=0.7, fraction=1.5)


def test_find_issues_flags_a_gce_run_by_the_bound(tmp_path):
    # A run trained on GCE (curriculum.loss=gce) is flagged by a fraction of the loss bound, read
    # from its config; the same run read as cross-entropy would go to the mixture.
    import json

    from dataparams.analysis.find_issues import find_issues
    from test_analysis_report import write_run

    run = write_run(tmp_path / "gce", n=80)
    cfg = json.loads((run / "config.json").read_text())
    cfg["curriculum"]["loss"], cfg["curriculum"]["loss_q"] = "gce", 0.5
    (run / "config.json").write_text(json.dumps(cfg))
    rep = find_issues(run, score="mean-loss", load_dataset=False)
    assert rep.summary()["rule"] == "bound"
    np.testing.assert_array_equal(rep.is_flagged, rep.score >= 0.2 * 2.0)
    assert find_issues(run, score="mean-loss", load_dataset=False, rule="mixture").summary()["rule"] == "mixture"
    assert find_issues(run, score="sigma", load_dataset=False).summary()["rule"] == "mixture"


def test_confident_counts_agree_with_cleanlab():
    # cleanlab's calibrated confident joint (an independent implementation): its off-diagonal row
    # sums are the estimated wrong labels per given class; cleanlab rounds while keeping row
    # totals, so single counts may differ by one.
    count = pytest.importorskip("cleanlab.count")
    rng = np.random.default_rng(0)
    n, k = 2000, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 2.0
    noisy = np.where(rng.random(n) < 0.3, rng.integers(0, k, n), y)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    joint = count.compute_confident_joint(noisy, p, calibrate=True)
    ours = confident_counts(noisy, p)
    assert np.abs(ours - (joint.sum(1) - np.diag(joint))).max() <= 1
    # Small cases, where cleanlab's details matter (the diagonal kept at >= 1, the overall argmax
    # when several classes clear their thresholds): still within the rounding.
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, k = int(rng.integers(4, 40)), int(rng.integers(2, 5))
        y_small = rng.integers(0, k, n)
        if len(np.unique(y_small)) < k:
            continue
        p_small = rng.dirichlet(np.ones(k), n)
        joint = count.compute_confident_joint(y_small, p_small, calibrate=True)
        assert np.abs(confident_counts(y_small, p_small) - (joint.sum(1) - np.diag(joint))).max() <= 1
    # A class whose samples all look like another is not counted wholly wrong.
    y4, p4 = np.array([0, 0, 1, 1]), np.array([[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.7, 0.3]])
    np.testing.assert_array_equal(confident_counts(y4, p4), [1, 1])


def test_confident_rule_flags_the_most_suspicious_of_each_class():
    # Class 0: thresholds t0 = mean p0 over label-0 samples. By hand: labels [0, 0, 0, 1, 1, 1].
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.9, 0.1]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # t0 = (0.9 + 0.8 + 0.2) / 3 = 0.633, t1 = (0.9 + 0.7 + 0.1) / 3 = 0.567: sample 2 is
    # confidently class 1, sample 5 class 0, the rest their own -> one issue in each class.
    np.testing.assert_array_equal(confident_counts(labels, probs), [1, 1])
    scores = np.array([0.1, 0.5, 0.4, 0.2, 0.3, 0.25])  # the score, not the probabilities, picks which
    mask = find_label_issues(labels, scores, probs=probs, rule="confident")
    np.testing.assert_array_equal(mask, [False, True, False, False, True, False])
    out = flag_by_rule(scores, labels=labels, probs=probs, rule="confident")
    assert out["rule"] == "confident" and out["estimate"]["per_class"] == [1, 1]
    with pytest.raises(ValueError, match="probabilities"):
        find_label_issues(labels, scores, rule="confident")


def test_probability_sums_are_optional_in_checkpoints():
    # A checkpoint without the probability sums (older, or from a torchrun job) loads into a
    # tracker that keeps them, and one with them into a tracker that does not.
    plain, tracking = ScoreTracker(3), ScoreTracker(3)
    tracking.track_probabilities(2)
    tracking.update(torch.tensor([0]), torch.ones(1), probs=torch.tensor([[0.2, 0.8]]))
    plain.load_state_dict(tracking.state_dict())
    fresh = ScoreTracker(3)
    fresh.track_probabilities(2)
    fresh.load_state_dict(plain.state_dict())
    assert fresh.prob_count.sum() == 0
    with pytest.raises(RuntimeError, match="last_loss"):
        fresh.load_state_dict({k: v for k, v in tracking.state_dict().items() if k != "last_loss"})


def test_tracker_averages_probabilities_over_visits():
    t = ScoreTracker(3)
    assert t.mean_probabilities() is None
    t.track_probabilities(2)
    t.update(torch.tensor([0, 1]), torch.ones(2), probs=torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    t.update(torch.tensor([0]), torch.ones(1), probs=torch.tensor([[0.0, 1.0]]))
    np.testing.assert_allclose(t.mean_probabilities(), [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    t.update(torch.tensor([2]), torch.ones(1), probs=torch.tensor([[0.2, 0.8]]))
    np.testing.assert_allclose(t.mean_probabilities()[2], [0.2, 0.8])
    assert {"prob_sum", "prob_count"} <= set(t.state_dict())


def test_class_mean_rule_by_hand():
    # Cross-entropy losses -> qualities exp(-L); class 0 qualities [0.9, 0.8, 0.1] (mean 0.6) flags
    # the 0.1; class 1 [0.5, 0.4, 0.3] (mean 0.4) flags only the 0.3 (0.4 is not below its mean).
    quality = np.array([0.9, 0.8, 0.1, 0.5, 0.4, 0.3])
    labels = np.array([0, 0, 0, 1, 1, 1])
    mask = find_label_issues(labels, -np.log(quality), rule="class-mean")
    np.testing.assert_array_equal(mask, [False, False, True, False, False, True])
    # ... and it is what a cross-entropy loss score gets by default
    np.testing.assert_array_equal(find_label_issues(labels, -np.log(quality)), mask)
    # A hard class is judged against its own level: every sample of class 1 has a lower quality
    # than every clean sample of class 0, yet class 1 is not flagged whole.
    assert not mask[labels == 1].all()


def test_class_mean_leaves_a_class_that_confident_learning_finds_clean():
    # Class 0's probabilities say every sample is class 0 (no confident issue): its below-mean
    # sample is not flagged once probabilities are given; class 1 holds a confident issue.
    labels = np.array([0, 0, 0, 1, 1, 1])
    losses = -np.log([0.9, 0.8, 0.1, 0.5, 0.4, 0.3])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9], [0.2, 0.8], [0.9, 0.1]])
    np.testing.assert_array_equal(confident_counts(labels, probs), [0, 1])
    np.testing.assert_array_equal(find_label_issues(labels, losses, probs=probs),
                                  [False, False, False, False, False, True])


def test_score_tracker_refuses_a_batch_mean_and_indices_outside_the_samples():
    # A mean-reduced loss used to be broadcast to every sample of the batch, and index -1 wrote
    # the last sample's row: both silently wrong scores.
    from dataparams.scores import ScoreTracker

    tracker = ScoreTracker(10)
    index = torch.tensor([0, 3, 5])
    with pytest.raises(ValueError, match=r"one loss per sample: loss \(\) for index \(3,\); .*reduction='none'"):
        tracker.update(index, torch.tensor(0.7))
    with pytest.raises(IndexError, match=r"index holds -1, outside \[0, 10\)"):
        tracker.update(torch.tensor([-1, 3]), torch.tensor([0.5, 0.2]))
    with pytest.raises(IndexError, match=r"index holds 10, outside \[0, 10\)"):
        tracker.update(torch.tensor([2, 10]), torch.tensor([0.5, 0.2]))
    tracker.update(index, torch.tensor([0.1, 0.2, 0.3]))
    assert tracker.last_loss[[0, 3, 5]].tolist() == pytest.approx([0.1, 0.2, 0.3])
