"""The user's own data end to end: `find-issues --data` and `train --data` on tiny files in the
forms a user brings (class folders of PNGs, a CSV list with class names, an .npz of features)."""

import csv
import json

import numpy as np
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
    rc, stdout, err = _cli(capsys, ["train", "--data", str(tmp_path / "list.csv"), "--epochs", "3", "--out", str(run),
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
