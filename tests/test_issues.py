"""The user's own data end to end: `find-issues --data` and `train --data` on tiny files in the
forms a user brings (class folders of PNGs, a CSV list with class names, an .npz of features)."""

import csv
import json
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

import fakes
from dataparams.build import load_model
from dataparams.cli import main

K = 3


def _folder(root, n=60, size=12, flip=(), seed=0, rgb=False):
    """Class folders of PNGs whose content encodes the class; samples in ``flip`` are filed under
    the next class (a wrong label). Returns the true label and the folder of each sample, in
    ImageFolder order."""
    rng = np.random.default_rng(seed)
    labels = fakes.cycled_labels(n, K, rng)
    pixels = fakes.class_images(labels, classes=K, size=(size, size), channels=3 if rgb else 1, rng=rng)
    names = ["ant", "bee", "cat"]
    rows = []
    for i, (y, px) in enumerate(zip(labels, pixels)):
        given = (y + 1) % K if i in flip else y
        path = root / names[given] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px[..., 0] if not rgb else px).save(path)
        rows.append((f"{names[given]}/{i:03d}.png", names[given], y, given))
    rows.sort()  # ImageFolder order: class folders, then file names
    return rows


def _cli(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_find_issues_on_a_folder_writes_the_ranking_and_the_report(tmp_path, capsys):
    flip = {1, 7, 20, 33, 45, 52}
    rows = _folder(tmp_path / "data", flip=flip)
    out = tmp_path / "issues"
    rc, stdout, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "data"), "--out", str(out),
                                    "--set", "optim.epochs=25", "--device", "cpu"])
    assert rc == 0, err
    # The choices measured from the data are printed and stored.
    assert "image_size: 12" in err and "model: small_cnn" in err
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["data"]["image_size"] == 12 and config["data"]["channels"] == 1
    assert config["data"]["noise"] == "none" and config["choices"]["model"]["value"] == "small_cnn"
    # No test set was needed; the labels were used as given.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 60 and summary["score"] == "mean-loss"
    with open(out / "issues.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 60 and [int(r["rank"]) for r in table] == list(range(1, 61))
    assert {"path", "given_label", "given_name", "predicted_label", "predicted_name", "mislabeled_prob",
            "is_flagged"} <= set(table[0])
    by_path = {r["path"]: r for r in table}
    assert set(by_path) == {r[0] for r in rows}
    for path, name, _, _ in rows:
        assert by_path[path]["given_name"] == name
    # The wrongly filed images are ranked first (the content is unambiguous).
    wrong = {path for path, _, y, given in rows if y != given}
    top = {r["path"] for r in table[: len(wrong)]}
    assert len(top & wrong) >= len(wrong) - 1
    mask = np.load(out / "label_issues_mask.npy")
    ranked = np.load(out / "ranked_label_issues.npy")
    assert mask.shape == (60,) and set(ranked) == set(np.flatnonzero(mask))
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "given:" in page and "predicted:" in page
    assert (out / "run" / "model.pt").exists()
    # The run directory is a normal run: find-issues RUN_DIR keeps working on it.
    rc, stdout, err = _cli(capsys, ["find-issues", str(out / "run"), "--score", "sigma", "--out", str(tmp_path / "again")])
    assert rc == 0, err and (tmp_path / "again" / "issues.csv").exists()


def test_train_on_a_csv_of_rgb_images_with_class_names_keeps_a_usable_model(tmp_path, capsys):
    rows = _folder(tmp_path / "imgs", n=30, size=8, rgb=True)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "note"])
        for path, name, _, _ in rows:
            w.writerow([f"imgs/{path}", name, "x"])
    run = tmp_path / "run"
    rc, stdout, err = _cli(capsys, ["train", "--data", str(tmp_path / "list.csv"), "--preset", "user/instance", "--epochs", "3",
                                    "--out", str(run),
                                    "--device", "cpu", "--quiet", "--no-tensorboard"])
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["final_test_acc"] is None and summary["num_train"] == 30
    model, meta = load_model(run / "model.pt")
    assert meta["classes"] == ["ant", "bee", "cat"] and meta["in_channels"] == 3 and meta["image_size"] == 8
    # The exported model gives the run's own predictions on the training images.
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / "imgs" / p)).copy()) for p, *_ in rows])
    x = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) \
        / torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    np.testing.assert_array_equal(pred, np.load(run / "predictions.npz")["predicted"])


def test_features_in_an_npz_train_an_mlp(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.arange(90) % K
    x = rng.normal(size=(90, 6)).astype(np.float32) + 3.0 * np.eye(K, 6)[y]
    labels = np.array(["a", "b", "c"])[y]
    np.savez(tmp_path / "emb.npz", X=x, y=labels)
    out = tmp_path / "issues"
    rc, _, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "emb.npz"), "--out", str(out), "--set",
                               "optim.epochs=3", "--device", "cpu", "--quiet"])
    assert rc == 0, err
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["model"]["arch"] == "mlp"
    assert "<table>" in (out / "report.html").read_text()  # features: suspects as a table


def test_bad_input_is_one_error_before_anything_is_written(tmp_path, capsys):
    # A corrupt image: one line naming the file, no output folder at all.
    _folder(tmp_path / "d", n=9)
    bad = sorted((tmp_path / "d" / "bee").iterdir())[0]
    bad.write_bytes(b"not a png")
    out = tmp_path / "issues"
    rc, stdout, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "d"), "--out", str(out), "--device", "cpu"])
    lines = err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("error: ") and bad.name in lines[-1]
    assert not out.exists()
    rc, _, err = _cli(capsys, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert rc == 2 and bad.name in err and not (tmp_path / "run").exists()


def test_data_and_run_dir_exclude_each_other(tmp_path, capsys):
    rc, _, err = _cli(capsys, ["find-issues"])
    assert rc == 2 and "either a RUN_DIR or --data" in err
    rc, _, err = _cli(capsys, ["train", "--data", str(tmp_path), "--preset", "fmnist-noisy40/instance"])
    assert rc == 2 and "user presets" in err


# ---------------------------------------------------------------------------------------------
# tables as --data, and dataparams.find_label_issues on data held in memory


def _table(n=60, seed=0, flip=(2, 17, 31, 44)):
    """Three separable classes of 4 features, named species, with ids in no sorted order and a
    numeric column that is not a feature; the rows in ``flip`` carry the next class's name."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    x = rng.normal(size=(n, 4)) + 3.0 * np.eye(K, 4)[y]
    given = np.array([(c + 1) % K if i in flip else c for i, c in enumerate(y)])
    return pd.DataFrame({"sample": [f"s{(7 * i) % n:02d}" for i in range(n)], "f0": x[:, 0], "f1": x[:, 1],
                         "f2": x[:, 2], "f3": x[:, 3], "weight": rng.uniform(size=n),
                         "species": np.array(["ant", "bee", "cat"])[given]})


def _snapshot_mean(run, key):
    files = sorted((run / "snapshots").glob("epoch_*.npz"))
    return np.mean([np.load(f)[key].astype(np.float64) for f in files], axis=0)


def test_find_issues_on_a_parquet_table_reads_the_named_columns(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    frame = _table()
    frame.to_parquet(tmp_path / "t.parquet")
    out = tmp_path / "issues"
    rc, stdout, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "t.parquet"),
                                    "--label-column", "species", "--feature-columns", "f0", "f1", "f2", "f3",
                                    "--id-column", "sample", "--out", str(out), "--set", "optim.epochs=3",
                                    "--device", "cpu", "--quiet"])
    assert rc == 0, err
    config = json.loads((out / "run" / "config.json").read_text())
    data = config["data"]
    assert (data["label_column"], data["feature_columns"], data["id_column"]) == \
        ("species", ["f0", "f1", "f2", "f3"], "sample")
    kind = config["choices"]["kind"]
    assert kind["value"] == "features" and "60 rows x 4 features" in kind["why"]
    with open(out / "issues.csv", newline="") as f:
        table = {r["path"]: r for r in csv.DictReader(f)}
    assert set(table) == set(frame["sample"])
    for sample, species in zip(frame["sample"], frame["species"]):
        assert table[sample]["given_label"] == species
    # The run records how to read its table: find-issues RUN_DIR loads it again, names and ids included.
    rc, _, err = _cli(capsys, ["find-issues", str(out / "run"), "--out", str(tmp_path / "again")])
    assert rc == 0, err
    with open(tmp_path / "again" / "issues.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert {r["path"] for r in again} == set(frame["sample"])
    assert again[0]["given_name"] in ("ant", "bee", "cat")
    # Without --label-column the table has no column 'label': one line naming the columns there are.
    rc, _, err = _cli(capsys, ["train", "--data", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "run"),
                               "--device", "cpu", "--quiet"])
    assert rc == 2 and "no column 'label'" in err and "'species'" in err


def test_train_on_a_split_of_a_save_to_disk_folder(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    parts = {"train": _table(30, seed=1), "test": _table(21, seed=2)}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_pandas(v, preserve_index=False)
                               for k, v in parts.items()})
    dd.save_to_disk(str(tmp_path / "dd"))
    run = tmp_path / "run"
    rc, _, err = _cli(capsys, ["train", "--data", str(tmp_path / "dd"), "--preset", "user/baseline", "--split", "test",
                               "--label-column", "species", "--feature-columns", "f0", "f1", "f2", "f3",
                               "--epochs", "1", "--out", str(run), "--device", "cpu", "--quiet",
                               "--no-tensorboard"])
    assert rc == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["split"] == "test" and config["choices"]["split"]["value"] == "test"
    with np.load(run / "labels.npz") as z:
        assert len(z["given"]) == 21


def test_table_options_are_refused_for_other_data(tmp_path, capsys):
    from dataparams.build import validate_config
    from dataparams.config import ConfigError, DataConfig, apply_overrides
    from dataparams.data.registry import load_dataset
    from dataparams.data.userdata import UserDataError
    from dataparams.presets import get_preset

    _folder(tmp_path / "d", n=9)
    out = tmp_path / "issues"
    rc, _, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "d"), "--label-column", "y",
                               "--out", str(out)])
    assert rc == 2 and "--label-column applies to a table" in err and f"{tmp_path / 'd'} is not one" in err
    assert not out.exists()
    rc, _, err = _cli(capsys, ["train", "--data", str(tmp_path / "d"), "--id-column", "a", "--split", "b",
                               "--out", str(tmp_path / "run")])
    assert rc == 2 and "--id-column, --split apply to a table" in err and not (tmp_path / "run").exists()
    rc, _, err = _cli(capsys, ["find-issues", str(tmp_path / "somerun"), "--feature-columns", "a"])
    assert rc == 2 and "--feature-columns applies to a table given as --data" in err
    # The same rule in the library, for configs written by hand.
    with pytest.raises(UserDataError, match="id_column applies to a table"):
        load_dataset(DataConfig(dataset="user", data_dir=str(tmp_path / "d"), id_column="name"))
    with pytest.raises(ConfigError, match="data.label_column: options of a table of user data"):
        validate_config(apply_overrides(get_preset("fmnist-noisy40/instance"), ["data.label_column=y"]))


def test_find_label_issues_on_a_dataframe_returns_datalab_rows_in_the_users_order(tmp_path):
    import dataparams

    flip = (2, 17, 31, 44)
    frame = _table(flip=flip)
    out = tmp_path / "o"
    issues = dataparams.find_label_issues(frame, label_column="species", id_column="sample", out=out,
                                          overrides=["optim.epochs=15"], device="cpu")
    assert list(issues.columns) == ["is_label_issue", "label_score", "given_label", "predicted_label",
                                    "given_label_index", "predicted_label_index", "rank", "sigma", "mean_loss",
                                    "score"]
    assert issues.index.name == "sample" and list(issues.index) == list(frame["sample"])  # the user's order
    assert issues["is_label_issue"].dtype == bool
    assert list(issues["given_label"]) == list(frame["species"])
    classes = ["ant", "bee", "cat"]
    assert list(issues["given_label"]) == [classes[k] for k in issues["given_label_index"]]
    assert list(issues["predicted_label"]) == [classes[k] for k in issues["predicted_label_index"]]
    # weight is a number too, but feature columns were chosen by the loader: every numeric column
    # but the label and the id
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["choices"]["feature_columns"]["value"] == ["f0", "f1", "f2", "f3", "weight"]
    assert config["data"]["data_dir"] is None and config["data"]["label_column"] is None

    # Scores against the run's own files, computed here: the run index is the row (no holdout).
    run = out / "run"
    mean_loss = _snapshot_mean(run, "loss")
    np.testing.assert_allclose(issues["mean_loss"], mean_loss, rtol=1e-12)
    np.testing.assert_allclose(issues["score"], mean_loss, rtol=1e-12)  # mean-loss is the ranking score
    np.testing.assert_allclose(issues["label_score"], np.exp(-mean_loss), rtol=1e-12)
    assert ((issues["label_score"] > 0) & (issues["label_score"] <= 1)).all()
    last = sorted((run / "snapshots").glob("epoch_*.npz"))[-1]
    np.testing.assert_allclose(issues["sigma"], np.load(last)["instance_sigma"], rtol=1e-6)
    np.testing.assert_array_equal(issues["is_label_issue"], np.load(out / "label_issues_mask.npy"))
    assert sorted(issues["rank"]) == list(range(1, 61))
    ranked = issues.sort_values("rank")
    assert np.all(np.diff(ranked["score"].to_numpy()) <= 0)
    wrong = {frame["sample"][i] for i in flip}
    assert len(wrong & set(ranked.index[: len(flip)])) >= len(flip) - 1
    summary = issues.attrs["summary"]
    assert issues.attrs["score"] == "mean-loss"
    assert summary["n_flagged"] == int(issues["is_label_issue"].sum())
    assert [r["n"] for r in summary["per_class"]] == [int((frame["species"] == c).sum()) for c in classes]
    assert (out / "issues.csv").exists() and (out / "report.html").exists()


def test_find_label_issues_on_arrays_and_on_the_same_npz_agree_and_leave_nothing(tmp_path, monkeypatch):
    import dataparams
    from dataparams.data.userdata import UserDataError

    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    y = np.arange(45) % K
    x = (rng.normal(size=(45, 5)) + 3.0 * np.eye(K, 5)[y]).astype(np.float32)
    y[[4, 20]] = [2, 0]
    np.savez(tmp_path / "emb.npz", X=x, y=y)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where out=None puts its run
    opts = dict(overrides=["optim.epochs=3"], device="cpu")
    arrays = dataparams.find_label_issues((x, y), **opts)
    assert list(scratch.iterdir()) == []  # the temporary run is gone; the frame stays
    alone = dataparams.find_label_issues(x, labels=y, **opts)
    from_file = dataparams.find_label_issues(tmp_path / "emb.npz", **opts)
    # Arrays are indexed by row position, as X and y are; the npz file by its ids ("row i" without any).
    assert list(arrays.index) == list(range(45)) and arrays.index.name == "row"
    assert list(from_file.index) == [f"row {i}" for i in range(45)] and from_file.index.name == "id"
    assert np.array_equal(arrays.index[arrays["is_label_issue"]], np.flatnonzero(arrays["is_label_issue"].to_numpy()))
    # One implementation: the same features train the same run, whoever loaded them.
    pd.testing.assert_frame_equal(arrays, alone)
    pd.testing.assert_frame_equal(arrays.reset_index(drop=True), from_file.reset_index(drop=True))
    # A holdout picks the epoch and is not ranked: rows for the others only, still in the user's order,
    # each at its own row position.
    held = dataparams.find_label_issues((x, y), holdout=0.2, **opts)
    assert len(held) == 36 and sorted(held["rank"]) == list(range(1, 37))
    assert set(held.index) < set(arrays.index)
    assert list(held.index) == sorted(held.index)
    assert np.array_equal(held["given_label_index"].to_numpy(), y[held.index.to_numpy()])
    with pytest.raises(UserDataError, match="labels= is for an X array"):
        dataparams.find_label_issues(tmp_path / "emb.npz", labels=y, **opts)
    with pytest.raises(UserDataError, match="label_column applies to a table"):
        dataparams.find_label_issues(tmp_path / "emb.npz", label_column="y", **opts)


def test_find_label_issues_on_a_csv_list_is_indexed_by_its_paths(tmp_path):
    import dataparams

    pytest.importorskip("pandas")
    rows = _folder(tmp_path / "imgs", n=12, size=8)
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for path, name, _, _ in rows[::-1]:  # not sorted: the frame keeps the list's order
            w.writerow([f"imgs/{path}", name])
    issues = dataparams.find_label_issues(str(tmp_path / "list.csv"), out=tmp_path / "o",
                                          overrides=["optim.epochs=2"], device="cpu")
    assert list(issues.index) == [f"imgs/{path}" for path, *_ in rows[::-1]]
    assert list(issues["given_label"]) == [name for _, name, _, _ in rows[::-1]]
    assert json.loads((tmp_path / "o" / "run" / "config.json").read_text())["data"]["data_dir"] == \
        str(tmp_path / "list.csv")


def test_find_label_issues_on_a_dataframe_keeps_its_index(tmp_path):
    # cleanlab's Datalab keeps the data's row index: df[issues.is_label_issue] must select rows.
    import dataparams

    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(5)
    y = np.arange(40) % K
    x = rng.normal(size=(40, 4)) + 3.0 * np.eye(K, 4)[y]
    frame = pd.DataFrame(x, columns=list("abcd"), index=pd.Index([f"s{i:02d}" for i in range(40)], name="sample"))
    frame["label"] = y
    frame.loc["s03", "label"] = (y[3] + 1) % K
    issues = dataparams.find_label_issues(frame, overrides=["optim.epochs=3"], device="cpu")
    assert issues.index.equals(frame.index)
    picked = frame[issues["is_label_issue"]]
    assert list(picked.index) == [i for i, f in zip(frame.index, issues["is_label_issue"]) if f]
    assert (issues["given_label_index"] == frame["label"]).all()


def test_with_a_holdout_the_cleanlab_arrays_index_the_users_rows(tmp_path, capsys):
    # cleanlab's arrays index the labels they were given: y[mask] and y[ranked] must be the user's rows.
    rng = np.random.default_rng(7)
    y = np.arange(60) % K
    x = (rng.normal(size=(60, 4)) + 3.0 * np.eye(K, 4)[y]).astype(np.float32)
    np.savez(tmp_path / "emb.npz", X=x, y=y)
    out = tmp_path / "held"
    rc, _, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "emb.npz"), "--out", str(out), "--holdout",
                               "0.2", "--set", "optim.epochs=3", "--device", "cpu", "--quiet"])
    assert rc == 0, err
    with open(out / "issues.csv", newline="") as f:
        table = list(csv.DictReader(f))
    mask, ranked = np.load(out / "label_issues_mask.npy"), np.load(out / "ranked_label_issues.npy")
    assert mask.shape == (60,) and len(table) == 48
    flagged = sorted((int(r["rank"]), int(r["source_index"])) for r in table if r["is_label_issue"] == "True")
    assert list(ranked) == [s for _, s in flagged]
    assert set(np.flatnonzero(mask)) == {s for _, s in flagged}
    held_out = set(range(60)) - {int(r["source_index"]) for r in table}
    assert len(held_out) == 12 and not mask[sorted(held_out)].any()


def test_default_output_folder_is_never_inside_the_data(tmp_path, monkeypatch):
    from dataparams.data.userdata import UserDataError
    from dataparams.issues import check_out_outside_data, default_out_dir

    data = tmp_path / "shots"
    (data / "a").mkdir(parents=True)
    (tmp_path / "labels.csv").write_text("path,label\n")
    monkeypatch.chdir(tmp_path)
    assert default_out_dir("shots") == tmp_path / "shots-issues"
    assert default_out_dir("labels.csv") == tmp_path / "labels-issues"
    monkeypatch.chdir(data)  # `--data .` from inside the folder: named after it, written beside it
    assert default_out_dir(".") == tmp_path / "shots-issues"
    monkeypatch.chdir(data / "a")
    assert default_out_dir("..") == tmp_path / "shots-issues"
    assert default_out_dir("..", "", under="runs") == tmp_path / "runs" / "shots"  # train's runs/<name>
    with pytest.raises(UserDataError, match="inside the data folder"):
        check_out_outside_data(data, data / "a" / "out")
    check_out_outside_data(tmp_path / "labels.csv", tmp_path / "out")  # beside a list: fine


def test_other_data_is_refused_where_a_ranking_is_kept_and_an_edit_retrains(tmp_path, capsys):
    for name, seed in (("projA", 0), ("projB", 1)):
        _folder(tmp_path / name / "data", n=30, size=8, seed=seed)
    out = tmp_path / "data-issues"
    args = ["--out", str(out), "--set", "optim.epochs=2", "--device", "cpu", "--quiet"]
    assert _cli(capsys, ["find-issues", "--data", str(tmp_path / "projA" / "data"), *args])[0] == 0
    before = (out / "issues.csv").read_bytes()
    rc, _, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "projB" / "data"), *args])
    assert rc == 2 and "other data" in err and "--overwrite" in err
    assert (out / "issues.csv").read_bytes() == before  # projA's results are kept
    assert _cli(capsys, ["find-issues", "--data", str(tmp_path / "projB" / "data"), *args, "--overwrite"])[0] == 0
    # An output path that is a file: one line, not a traceback.
    (tmp_path / "afile").write_text("x")
    rc, _, err = _cli(capsys, ["find-issues", "--data", str(tmp_path / "projA" / "data"), "--out",
                               str(tmp_path / "afile"), "--quiet"])
    assert rc == 2 and "is a file" in err


def test_a_cleaned_label_list_of_an_earlier_call_does_not_outlive_it(tmp_path, capsys):
    rows = _folder(tmp_path / "data", n=30, size=8)
    out = tmp_path / "issues"
    args = ["find-issues", "--data", str(tmp_path / "data"), "--out", str(out), "--set", "optim.epochs=2",
            "--device", "cpu", "--quiet"]
    assert _cli(capsys, [*args, "--cleaned-labels", "relabel"])[0] == 0
    assert (out / "cleaned_labels_relabel.csv").exists()
    # An edited label retrains; the old list would describe the old ranking.
    first = tmp_path / "data" / rows[0][0]
    first.rename(tmp_path / "data" / ("bee" if rows[0][1] != "bee" else "cat") / first.name)
    assert _cli(capsys, args)[0] == 0
    assert not list(out.glob("cleaned_labels_*.csv"))


def test_summary_says_what_the_cleanlab_arrays_index(tmp_path, capsys):
    rng = np.random.default_rng(9)
    y = np.arange(30) % K
    np.savez(tmp_path / "emb.npz", X=(rng.normal(size=(30, 3)) + 3.0 * np.eye(K, 3)[y]).astype(np.float32), y=y)
    out = tmp_path / "o"
    assert _cli(capsys, ["find-issues", "--data", str(tmp_path / "emb.npz"), "--out", str(out), "--set",
                         "optim.epochs=2", "--device", "cpu", "--quiet"])[0] == 0
    assert json.loads((out / "summary.json").read_text())["arrays_index"] == "data"
    from dataparams.analysis.find_issues import find_issues

    # Without its dataset a run's report indexes its own samples, and says so.
    assert find_issues(out / "run", load_dataset=False).summary()["arrays_index"] == "run"


def test_find_issues_on_a_pipeline_ranks_its_first_stage_with_the_pipelines_flags(tmp_path, capsys):
    # `train --data` OUT is a pipeline folder (no config.json): find-issues ranks its first stage,
    # by the score and rule the pipeline flagged with, so it shows the samples the retraining left
    # out (its first stage trains on GCE, whose auto rule alone would be the bound).
    rng = np.random.default_rng(4)
    y = np.arange(60) % K
    np.savez(tmp_path / "emb.npz", X=(rng.normal(size=(60, 4)) + 3.0 * np.eye(K, 4)[y]).astype(np.float32), y=y)
    out = tmp_path / "pipe"
    assert _cli(capsys, ["train", "--data", str(tmp_path / "emb.npz"), "--out", str(out), "--set", "optim.epochs=3",
                         "--device", "cpu", "--quiet"])[0] == 0
    record = json.loads((out / "pipeline.json").read_text())
    rc, stdout, err = _cli(capsys, ["find-issues", str(out), "--out", str(tmp_path / "fi")])
    assert rc == 0, err
    assert "is a filter pipeline: ranking its first stage" in err
    assert f"flagged {record['n_flagged']} of 60 samples" in stdout
    summary = json.loads((tmp_path / "fi" / "summary.json").read_text())
    assert summary["rule"] == record["flags"]["rule"] == "class-mean" and summary["score"] == "mean-loss"
    kept = set(np.load(record["kept_file"]).tolist())
    flagged = set(np.flatnonzero(np.load(tmp_path / "fi" / "label_issues_mask.npy")).tolist())
    assert flagged == set(range(60)) - kept
    # A copied folder (its record names the original's absolute paths) ranks its own first stage.
    import shutil

    shutil.copytree(out, tmp_path / "copy")
    rc, _, err = _cli(capsys, ["find-issues", str(tmp_path / "copy"), "--out", str(tmp_path / "fc")])
    assert rc == 0 and f"ranking its first stage, {tmp_path / 'copy' / 'stage1'}" in err
    assert np.array_equal(np.load(tmp_path / "fc" / "label_issues_mask.npy"),
                          np.load(tmp_path / "fi" / "label_issues_mask.npy"))
    # Asked for the bound after three epochs, every sample is flagged: said, and no empty list written.
    rc, stdout, err = _cli(capsys, ["find-issues", str(out / "stage1"), "--score", "mean-loss", "--rule", "bound",
                                    "--out", str(tmp_path / "fb")])
    assert rc == 0 and "flagged 60 of 60" in stdout and "flagged every sample" in err
    rc, _, err = _cli(capsys, ["find-issues", str(out / "stage1"), "--score", "mean-loss", "--rule", "bound",
                               "--cleaned-labels", "drop", "--out", str(tmp_path / "fd")])
    assert rc == 2 and "would be empty" in err and not (tmp_path / "fd" / "cleaned_labels_drop.csv").exists()
