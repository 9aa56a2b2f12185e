"""find-issues on run directories written by hand: ranking, flags, cleanlab-style outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dataparams.analysis.find_issues import find_issues
from dataparams.analysis.metrics import estimate_num_mislabeled
from dataparams.cli import main
from dataparams.runs import RunDirError
from test_analysis_report import write_run  # the same hand-written run directories


@pytest.fixture
def inst(tmp_path):
    return write_run(tmp_path / "inst", n=80)


def _truth(run):
    with np.load(run / "labels.npz") as z:
        return {k: z[k] for k in z.files}


def _snapshot(run, epoch):
    with np.load(run / "snapshots" / f"epoch_{epoch:04d}.npz") as z:
        return {k: z[k] for k in z.files}


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ranking_is_the_sigma_order(inst, tmp_path):
    rep = find_issues(inst, load_dataset=False)
    sigma = _snapshot(inst, 5)["instance_sigma"].astype(np.float64)
    assert rep.epoch == 5 and rep.score_name == "sigma"
    assert len(np.unique(sigma)) == len(sigma)  # no ties: the order is unique
    expected = np.argsort(-sigma)
    assert np.array_equal(rep.order, expected)
    assert rep.rank[np.argmax(sigma)] == 1 and rep.rank[np.argmin(sigma)] == len(sigma)

    rows = _read_csv(rep.write_csv(tmp_path / "issues.csv"))
    assert len(rows) == len(sigma)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(sigma) + 1))
    assert [int(r["index"]) for r in rows] == expected.tolist()
    values = [float(r["sigma"]) for r in rows]
    assert values == sorted(values, reverse=True)
    labels = _truth(inst)
    for r in rows[:5]:
        i = int(r["index"])
        assert int(r["source_index"]) == labels["source_index"][i] == 7 * i + 3
        assert int(r["given_label"]) == labels["given"][i]
        assert int(r["true_label"]) == labels["clean"][i]
        assert (r["is_corrupted"] == "True") == bool(labels["is_corrupted"][i])
        assert r["path"] == ""


def test_flags_come_from_the_mixture_estimate_and_match_cleanlab_outputs(inst, tmp_path):
    rep = find_issues(inst, load_dataset=False)
    sigma = _snapshot(inst, 5)["instance_sigma"].astype(np.float64)
    est = estimate_num_mislabeled(sigma)
    assert rep.is_flagged.sum() == est["n_estimated"] > 0

    files = rep.save(tmp_path / "out")
    mask = np.load(files["label_issues_mask"])
    ranked = np.load(files["ranked_label_issues"])
    assert mask.dtype == bool and mask.shape == sigma.shape
    assert np.array_equal(np.sort(ranked), np.flatnonzero(mask))
    assert np.all(np.diff(sigma[ranked]) < 0)  # most severe first
    # The flagged set is the top of the ranking: no unflagged sample outranks a flagged one.
    assert sigma[mask].min() > sigma[~mask].max()

    summary = json.loads(files["summary"].read_text())
    corrupted = _truth(inst)["is_corrupted"]
    tp = int((mask & corrupted).sum())
    assert summary["n"] == 80 and summary["n_flagged"] == int(mask.sum())
    assert summary["n_corrupted"] == int(corrupted.sum())
    assert summary["precision"] == pytest.approx(tp / mask.sum())
    assert summary["recall"] == pytest.approx(tp / corrupted.sum())
    assert summary["threshold"] == pytest.approx(sigma[mask].min())
    assert 0.5 < summary["auroc"] <= 1.0


def test_cleaned_labels_relabel_and_drop(inst, tmp_path):
    rep = find_issues(inst, load_dataset=False)
    with np.load(inst / "predictions.npz") as z:
        predicted = z["predicted"]
    given = _truth(inst)["given"]
    flagged = rep.label_issues_mask()

    rows = _read_csv(rep.write_cleaned_labels(tmp_path / "relabel.csv", action="relabel"))
    assert len(rows) == 80 and list(rows[0]) == ["index", "source_index", "label"]
    for r in rows:
        i = int(r["index"])
        assert int(r["label"]) == (predicted[i] if flagged[i] else given[i])
        assert int(r["source_index"]) == 7 * i + 3

    rows = _read_csv(rep.write_cleaned_labels(tmp_path / "drop.csv", action="drop"))
    kept = [int(r["index"]) for r in rows]
    assert kept == np.flatnonzero(~flagged).tolist()
    assert all(int(r["label"]) == given[int(r["index"])] for r in rows)

    with pytest.raises(ValueError, match="relabel"):
        rep.write_cleaned_labels(tmp_path / "x.csv", action="fix")


def test_loss_score_on_a_baseline_run_and_the_error_for_sigma(tmp_path):
    base = write_run(tmp_path / "base", preset="fmnist-noisy40/baseline", n=70)
    with pytest.raises(RunDirError, match="instance or joint"):
        find_issues(base, score="sigma", load_dataset=False)
    rep = find_issues(base, score="last-loss", load_dataset=False)
    loss = _snapshot(base, 5)["loss"].astype(np.float64)
    assert rep.sigma is None and rep.score_name == "last-loss"
    assert np.array_equal(rep.order, np.argsort(-loss, kind="stable"))
    rows = _read_csv(rep.write_csv(tmp_path / "issues.csv"))
    assert all(r["sigma"] == "" for r in rows)
    assert rep.summary()["auroc"] > 0.5

    assert main(["find-issues", str(base)]) == 2  # sigma on a baseline: one line, exit 2
    assert main(["find-issues", str(base), "--score", "last-loss", "--cleaned-labels", "drop"]) == 0
    assert (base / "issues" / "issues.csv").exists()
    assert (base / "issues" / "cleaned_labels_drop.csv").exists()
    assert (base / "issues" / "label_issues_mask.npy").exists()


def test_epoch_option_and_missing_pieces(tmp_path, capsys):
    run = write_run(tmp_path / "inst", predictions=False)
    rep = find_issues(run, epoch=2, load_dataset=False)
    sigma2 = _snapshot(run, 2)["instance_sigma"].astype(np.float64)
    assert rep.epoch == 2 and np.array_equal(rep.order, np.argsort(-sigma2))
    assert rep.predicted is None
    with pytest.raises(RunDirError, match="predictions.npz"):
        rep.cleaned_labels(action="relabel")
    with pytest.raises(RunDirError, match="epoch_0009.npz"):
        find_issues(run, epoch=9, load_dataset=False)
    assert main(["find-issues", str(run), "--epoch", "9"]) == 2
    assert "epoch_0009.npz" in capsys.readouterr().err


def test_cli_prints_the_summary(inst, tmp_path, capsys):
    assert main(["find-issues", str(inst), "--out", str(tmp_path / "o"), "--cleaned-labels", "relabel"]) == 0
    out = capsys.readouterr().out
    assert "flagged" in out and "precision" in out and str(tmp_path / "o" / "issues.csv") in out
    assert (tmp_path / "o" / "cleaned_labels_relabel.csv").exists()


def test_ties_at_the_clamp_are_ordered_by_the_given_label_probability(inst):
    # Saturated sigma (many samples at the clamp's upper bound) must not fall back to index order.
    snap = _snapshot(inst, 5)
    sigma = snap["instance_sigma"].copy()
    top = np.argsort(-sigma)[:6]
    sigma[top] = 20.0
    np.savez_compressed(inst / "snapshots" / "epoch_0005.npz", **{**snap, "instance_sigma": sigma})
    with np.load(inst / "predictions.npz") as z:
        pred = {k: z[k] for k in z.files}
    rep = find_issues(inst, load_dataset=False)
    tied_order = rep.order[:6]
    assert set(tied_order.tolist()) == set(top.tolist())
    assert np.all(np.diff(pred["given_prob"][tied_order]) >= 0)  # least likely given label first
