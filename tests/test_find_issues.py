"""find-issues on run directories written by hand: ranking, flags, cleanlab-style outputs; and on the
user's own data edited between two runs (never the old run's ranking)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from dataparams.analysis.find_issues import find_issues
from dataparams.analysis.issues_html import write_issues_html
from dataparams.analysis.metrics import estimate_num_mislabeled
from dataparams.cli import main
from dataparams.data.base import Split
from dataparams.data.registry import DatasetInfo, LoadedDataset
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
        assert int(r["given_label_index"]) == labels["given"][i]
        assert int(r["true_label_index"]) == labels["clean"][i]
        # No class names (the dataset is not loaded): a class is named by its index.
        assert r["given_label"] == str(labels["given"][i]) and r["given_name"] == ""
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


# ---------------------------------------------------------------------------------------------
# Datalab's columns and the per-class table


def _named(n, classes):
    """A stand-in for the run's dataset that names its classes (no files, no paths)."""
    return LoadedDataset(Split(np.zeros(n, np.int64), list(classes), features=np.zeros((n, 1), np.float32)),
                         None, DatasetInfo((0.0,), (1.0,), 0, 0))


def test_issues_csv_has_datalab_columns(inst, tmp_path):
    names = [f"c{k}" for k in range(10)]
    rep = find_issues(inst, dataset=_named(80, names))
    rows = _read_csv(rep.write_csv(tmp_path / "issues.csv"))
    with np.load(inst / "predictions.npz") as z:
        predicted = z["predicted"]
    given = _truth(inst)["given"]
    # mean-loss computed here from the snapshots, independently of the report
    mean_loss = np.mean([_snapshot(inst, e)["loss"].astype(np.float64) for e in range(1, 6)], axis=0)
    assert {"is_label_issue", "label_score", "given_label", "predicted_label", "given_label_index",
            "predicted_label_index", "true_label", "true_label_index"} <= set(rows[0])
    for r in rows:
        i = int(r["index"])
        assert r["is_label_issue"] == r["is_flagged"] == str(bool(rep.is_flagged[i]))
        assert r["given_label"] == r["given_name"] == names[given[i]]
        assert int(r["given_label_index"]) == given[i]
        assert r["predicted_label"] == names[predicted[i]] and int(r["predicted_label_index"]) == predicted[i]
        # cross-entropy: the label's probability implied by the mean loss
        assert float(r["mean_loss"]) == pytest.approx(mean_loss[i], rel=1e-5)
        assert float(r["label_score"]) == pytest.approx(np.exp(-mean_loss[i]), rel=1e-5)
        assert 0.0 <= float(r["label_score"]) <= 1.0


def test_per_class_table_is_the_hand_count(tmp_path):
    run = write_run(tmp_path / "tiny", n=20)
    #           ant ant ant ant bee bee bee bee cat cat cat cat  then 8 clean samples
    given = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    predicted = [1, 1, 2, 0, 0, 2, 1, 0, 0, 1, 2, 2, 0, 1, 2, 0, 1, 2, 0, 1]
    flagged = [0, 1, 2, 4, 5, 6, 8, 9]  # 6 is flagged but predicted as given; 7 is confused but not flagged
    labels = _truth(run)
    np.savez(run / "labels.npz", **{**labels, "given": np.array(given)})
    with np.load(run / "predictions.npz") as z:
        pred = {k: z[k] for k in z.files}
    np.savez(run / "predictions.npz", **{**pred, "predicted": np.array(predicted)})
    snap = _snapshot(run, 5)
    sigma = np.linspace(0.9, 1.1, 20)
    sigma[flagged] = np.linspace(15.0, 20.0, len(flagged))
    np.savez_compressed(run / "snapshots" / "epoch_0005.npz",
                        **{**snap, "instance_sigma": sigma.astype(np.float32)})

    rep = find_issues(run, dataset=_named(20, ["ant", "bee", "cat"]), rule="mixture")
    assert np.flatnonzero(rep.is_flagged).tolist() == flagged
    table = rep.per_class()
    assert table["per_class"] == [
        {"class": "ant", "index": 0, "n": 7, "n_flagged": 3},  # 0, 1, 2
        {"class": "bee", "index": 1, "n": 7, "n_flagged": 3},  # 4, 5, 6
        {"class": "cat", "index": 2, "n": 6, "n_flagged": 2},  # 8, 9
    ]
    # (ant, bee) twice (0, 1); once each (ant, cat) 2, (bee, ant) 4, (bee, cat) 5, (cat, ant) 8, and
    # (cat, bee) 9, the sixth pair, left out of the top 5 (ties by class index)
    assert [(p["given"], p["predicted"], p["count"]) for p in table["confused_pairs"]] == [
        ("ant", "bee", 2), ("ant", "cat", 1), ("bee", "ant", 1), ("bee", "cat", 1), ("cat", "ant", 1)]
    first = table["confused_pairs"][0]
    assert (first["given_index"], first["predicted_index"]) == (0, 1)

    files = rep.save(tmp_path / "out")
    summary = json.loads(files["summary"].read_text())
    assert summary["per_class"] == table["per_class"] and summary["confused_pairs"] == table["confused_pairs"]
    page = write_issues_html(rep, tmp_path / "out" / "report.html").read_text()
    assert "<h2>Per class</h2>" in page
    assert "<tr><td>ant</td><td>7</td><td>3</td><td>42.9%</td></tr>" in page
    assert "<tr><td>ant</td><td>bee</td><td>2</td></tr>" in page and "<td>cat</td><td>bee</td>" not in page

    # Without predictions the pairs are unknown, the counts are not.
    (run / "predictions.npz").unlink()
    bare = find_issues(run, dataset=_named(20, ["ant", "bee", "cat"]), rule="mixture").per_class()
    assert bare["confused_pairs"] is None and bare["per_class"] == table["per_class"]


# ---------------------------------------------------------------------------------------------
# find-issues --data and train --data on data edited between two runs: never the old run


def _user_list(root, labels, size=8, seed=0):
    """A CSV of grey PNGs whose brightness encodes the label (0 dark, 1 bright)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i, y in enumerate(labels):
        base = 40 if y == 0 else 200
        Image.fromarray(np.clip(base + rng.integers(-30, 30, (size, size)), 0, 255).astype(np.uint8)).save(
            root / "img" / f"{i:02d}.png")
    _write_labels(root, labels)
    return root / "labels.csv"


def _write_labels(root, labels):
    rows = "".join(f"img/{i:02d}.png,{y}\n" for i, y in enumerate(labels))
    (root / "labels.csv").write_text("path,label\n" + rows)


def _given(run):
    with np.load(run / "labels.npz") as z:
        return z["given"].tolist()


_TINY = ["--set", "optim.epochs=2", "--device", "cpu"]


def test_find_issues_trains_again_after_a_label_is_edited(tmp_path, capsys):
    labels = [0, 1] * 10
    data = _user_list(tmp_path / "d", labels)
    out = tmp_path / "issues"
    assert main(["find-issues", "--data", str(data), "--out", str(out), *_TINY]) == 0
    run = out / "run"
    trained = (run / "checkpoint.pt").stat()
    assert _given(run) == labels
    capsys.readouterr()

    # The same command on the same data reuses the run: no new training, the checkpoint as it was.
    assert main(["find-issues", "--data", str(data), "--out", str(out), *_TINY]) == 0
    assert "training again" not in capsys.readouterr().err
    reused = (run / "checkpoint.pt").stat()
    assert (reused.st_ino, reused.st_mtime_ns) == (trained.st_ino, trained.st_mtime_ns)

    # One label edited in place: a new training on the new labels, and the reason printed.
    labels[3] = 0
    _write_labels(tmp_path / "d", labels)
    assert main(["find-issues", "--data", str(data), "--out", str(out), *_TINY]) == 0
    err = capsys.readouterr().err
    assert f"{run} was trained on other data or settings (list file changed (sha256 " in err
    assert "training again" in err
    assert _given(run) == labels  # the run trained on the edited labels, from scratch
    retrained = (run / "checkpoint.pt").stat()
    assert (retrained.st_ino, retrained.st_mtime_ns) != (trained.st_ino, trained.st_mtime_ns)
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    rows = {r["path"]: r for r in _read_csv(out / "issues.csv")}
    assert rows["img/03.png"]["given_label"] == "0" and rows["img/03.png"]["given_label_index"] == "0"
    config = json.loads((run / "config.json").read_text())
    assert config["choices"]["data"]["fingerprint"]["list file"] in err

    # An image replaced (same name, new content and time): trained again too.
    img = tmp_path / "d" / "img" / "05.png"
    Image.fromarray(np.full((8, 8), 250, np.uint8)).save(img)
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert main(["find-issues", "--data", str(data), "--out", str(out), *_TINY, "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["choices"]["data"]["fingerprint"]["image files"] != \
        config["choices"]["data"]["fingerprint"]["image files"]


def test_train_refuses_to_resume_or_reuse_a_run_on_other_data(tmp_path, capsys):
    labels = [0, 1] * 8
    data = _user_list(tmp_path / "d", labels)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--preset", "user/instance", "--out", str(run), "--epochs", "2",
            "--device", "cpu", "--quiet", "--no-tensorboard"]
    assert main(argv) == 0
    config = (run / "config.json").read_text()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0  # same data: resumes (already finished)
    capsys.readouterr()

    labels[0] = 1
    _write_labels(tmp_path / "d", labels)
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run} cannot be resumed: its data changed since the run began: list file changed (sha256 " in err
    assert "--overwrite" in err
    assert main(argv) == 2
    assert f"{run} holds a run on other data: list file changed" in capsys.readouterr().err
    assert (run / "config.json").read_text() == config and _given(run) != labels  # untouched

    assert main([*argv, "--overwrite"]) == 0
    assert _given(run) == labels


def test_a_run_without_a_fingerprint_is_not_resumed_on_user_data(tmp_path):
    from dataparams.runs import RunConflictError, RunDir

    old = {"seed": 1, "choices": {"kind": {"value": "images", "why": "x"}}}
    data = {"value": "ab", "why": "y", "fingerprint": {"list file": "sha256 1"}}
    new = {"seed": 1, "choices": {"kind": {"value": "images", "why": "x"}, "data": data}}
    rd = RunDir(tmp_path / "r")
    rd.prepare(old)
    assert rd.differences(old) == []
    assert rd.differences(new) == ["the run holds no fingerprint of its data (made before fingerprints were "
                                   "kept), so its data cannot be shown to be the same"]
    with pytest.raises(RunConflictError, match="cannot be resumed: its data changed"):
        rd.prepare(new, resume=True)
    # runs on named datasets carry no fingerprint on either side: nothing changes for them
    assert RunDir(tmp_path / "r").differences({"seed": 1}) == []


@pytest.mark.faults
def test_a_truncated_jpeg_stops_find_issues_before_a_run_directory_exists(tmp_path, capsys):
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.jpg")
    whole = (tmp_path / "img" / "2.jpg").read_bytes()
    (tmp_path / "img" / "2.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"img/{i}.jpg,{i % 2}\n" for i in range(6)))
    out = tmp_path / "issues"
    # A zero memory budget: the images are streamed, as a set too large for memory would be.
    rc = main(["find-issues", "--data", str(tmp_path / "labels.csv"), "--out", str(out), "--set",
               "data.memory_budget_mb=0", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "labels.csv line 4: image" in err and "2.jpg is corrupt or unreadable" in err
    assert "truncated" in err
    assert not out.exists()


def test_issues_csv_written_by_columns_equals_the_rows_one_dict_at_a_time(inst, tmp_path):
    """The column-wise writer (fast at 10^6 rows) against the rows as dicts through csv.DictWriter."""
    import io

    for dataset in (None, _named(80, [f"c{k}" for k in range(10)])):
        rep = find_issues(inst, score="mean-loss", dataset=dataset)
        ref = io.StringIO(newline="")
        writer = csv.DictWriter(ref, fieldnames=rep.columns())
        writer.writeheader()
        for row in rep.rows():
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        with open(rep.write_csv(tmp_path / "issues.csv"), newline="") as f:
            assert f.read() == ref.getvalue()
