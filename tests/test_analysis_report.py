"""The report over run directories, on small run directories written by hand (no training).

The runs are written in the real on-disk format (config.json from a preset, metrics.jsonl,
labels.npz, snapshots, predictions.npz, summary.json), with instance sigma that rises for the
corrupted samples as in the paper's Figure 4.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dataparams.analysis.metrics import label_error_metrics
from dataparams.analysis.report import build_report
from dataparams.analysis.runs_io import group_runs, load_run
from dataparams.cli import main
from dataparams.config import config_to_dict
from dataparams.presets import get_preset
from dataparams.runs import RunDirError

# Only the figures need matplotlib; test_find_issues imports write_run from here without it.
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="figures need matplotlib (pip install 'dataparams[report]')")

FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = FMNIST.exists()
K = 10


def _stats(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def write_run(
    path: Path,
    *,
    preset: str = "fmnist-noisy40/instance",
    seed: int = 1,
    n: int = 60,
    epochs: int = 5,
    noise: str | None = None,
    noise_rate: float | None = None,
    predictions: bool = True,
    missing_data: bool = not HAVE_FMNIST,
    report_epochs: tuple[int, ...] = (),
) -> Path:
    """A finished run of ``preset`` in the format dataparams.experiment writes, without training."""
    cfg = config_to_dict(get_preset(preset))
    cfg["seed"] = seed
    cfg["data"]["subset"] = n
    cfg["optim"]["epochs"] = epochs
    cfg["report_epochs"] = list(report_epochs)
    if noise is not None:
        cfg["data"]["noise"], cfg["data"]["noise_rate"] = noise, noise_rate
    if missing_data:
        # A dataset that is not here: the report must skip the images with a note.
        cfg["data"]["dataset"], cfg["data"]["data_dir"] = "cifar10", str(path / "no-such-data")
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, K, n)
    corrupted = np.zeros(n, dtype=bool)
    if cfg["data"]["noise"] != "none":
        rate = cfg["data"]["noise_rate"]
        corrupted[rng.permutation(n)[: max(1, int(round(rate * n)))]] = True
    given = np.where(corrupted, (clean + rng.integers(1, K, n)) % K, clean)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    np.savez(path / "labels.npz", given=given, clean=clean, is_corrupted=corrupted,
             source_index=np.arange(n) * 7 + 3)
    cur = cfg["curriculum"]
    (path / "snapshots").mkdir()
    # Distinct per-sample rates so that every sigma is different (the ranking test is exact).
    rates = np.where(corrupted, 0.05, -0.03) + rng.uniform(-0.02, 0.02, n)
    lines = []
    for e in range(1, epochs + 1):
        snap: dict[str, np.ndarray] = {}
        sigma = np.exp(rates * e).astype(np.float32)
        loss = (np.where(corrupted, 2.0, 0.3) * rng.uniform(0.5, 1.5, n)).astype(np.float16)
        snap["loss"] = loss
        rec: dict = {"epoch": e, "lr": 0.05, "train_loss": float(loss.mean()), "train_acc": 30.0 + 5 * e,
                     "train_acc_clean": 40.0 + 6 * e, "test_loss": 1.0 / e, "test_acc": 50.0 + 4 * e + seed,
                     "time_s": 0.1, "val_acc": 45.0 + e * (-1) ** e}
        if cur["class_curriculum"]:
            snap["class_sigma"] = np.exp(np.linspace(-0.1, 0.1, K) * e * (1 + 0.1 * seed)).astype(np.float32)
            rec["class_sigma"] = _stats(snap["class_sigma"])
        if cur["instance_curriculum"]:
            snap["instance_sigma"] = sigma
            st = _stats(sigma)
            if corrupted.any():
                st["clean"], st["corrupted"] = _stats(sigma[~corrupted]), _stats(sigma[corrupted])
                rec["detection"] = label_error_metrics(sigma, corrupted)
            rec["instance_sigma"] = st
        if corrupted.any():
            d = label_error_metrics(loss.astype(np.float64), corrupted)
            rec["detection_mean_loss"] = {k: d[k] for k in ("auroc", "average_precision", "precision_at_k")}
        np.savez(path / "snapshots" / f"epoch_{e:04d}.npz", **snap)
        lines.append(json.dumps(rec))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if predictions:
        predicted = np.where(rng.random(n) < 0.8, clean, rng.integers(0, K, n))
        np.savez(path / "predictions.npz", predicted=predicted, predicted_prob=rng.uniform(0.3, 1.0, n),
                 given_prob=rng.uniform(0.0, 1.0, n))
        summary = {"preset": cfg["preset"], "seed": seed, "method": "ce", "epochs": epochs,
                   "final_test_acc": 50.0 + 4 * epochs + seed, "final_train_acc": 30.0 + 5 * epochs,
                   "train_time_s": 0.5, "num_train": n, "num_corrupted": int(corrupted.sum()),
                   "val_selected_test_acc": 50.0 + 4 * 4 + seed}
        if "detection" in rec:
            summary["detection"] = {k: rec["detection"][k] for k in ("auroc", "average_precision")}
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def _embedded_images(html_file: Path) -> int:
    return len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{100,}'", html_file.read_text()))


# ----------------------------------------------------------------------------------------------
# one run, and a group of seeds
# ----------------------------------------------------------------------------------------------
@needs_matplotlib
def test_report_on_one_instance_run(tmp_path):
    run = write_run(tmp_path / "inst")
    out = tmp_path / "report"
    res = build_report([run], out, quiet=True)

    names = {p.name for p in res["figures"]}
    assert {"accuracy.png", "detection.png", "fmnist-noisy40_instance_instance_sigma.png",
            "fmnist-noisy40_instance_sigma_histograms.png",
            "fmnist-noisy40_instance_clean_vs_corrupted.png"} <= names
    for p in res["figures"]:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["html"].exists() and set(res) >= {"html", "figures"} and "markdown" not in res
    assert _embedded_images(res["html"]) == len(res["figures"])
    page = res["html"].read_text()
    assert "<th>group</th>" in page and "fmnist-noisy40/instance" in page
    # One report format: no Markdown copy, no per-group JSON repeating metrics.jsonl.
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == ["report.html"]

    # The table: final test acc from summary.json, estimated vs true number of mislabeled.
    results = res["groups"][0]["results"]
    assert results["final_test_acc"]["mean"] == pytest.approx(50.0 + 4 * 5 + 1)
    assert results["n_true"]["mean"] == 24
    assert results["n_estimated"]["mean"] is not None

    if HAVE_FMNIST:
        assert not any("images skipped" in n for n in res["notes"])
    else:
        assert any("sample images skipped" in n for n in res["notes"])
        assert "sample images skipped" in res["html"].read_text()


@needs_matplotlib
def test_report_groups_seeds_and_draws_class_parameters(tmp_path):
    runs = [write_run(tmp_path / "inst" / f"seed{s}", seed=s, report_epochs=(3,)) for s in (1, 2)]
    joint = [write_run(tmp_path / "joint" / f"seed{s}", preset="fmnist-noisy40/joint", seed=s) for s in (1, 2)]
    base = write_run(tmp_path / "base", preset="fmnist-noisy40/baseline")
    # A folder of seeds is expanded into its runs, as written by `train --seeds`.
    res = build_report([tmp_path / "inst", *joint, base], tmp_path / "out", classes=["Coat", 1], samples=[0, 5, 7],
                       quiet=True)
    labels = [g["label"] for g in res["groups"]]
    assert labels == ["fmnist-noisy40/instance", "fmnist-noisy40/joint", "fmnist-noisy40/baseline"]
    assert res["groups"][0]["seeds"] == [1, 2] and len(res["groups"][0]["runs"]) == len(runs)
    acc = res["groups"][0]["results"]["final_test_acc"]
    assert acc["mean"] == pytest.approx(71.5) and acc["std"] == pytest.approx(np.std([71, 72], ddof=1))
    assert "71.50 ± 0.71" in res["html"].read_text()
    assert res["groups"][0]["results"]["val_selected_test_acc"]["mean"] == pytest.approx(67.5)
    # Report epochs come from summary.json or, as here, from metrics.jsonl.
    assert res["groups"][0]["results"]["test_acc_epoch_3"]["values"] == [63.0, 64.0]
    assert "test acc @ epoch 3 (%)" in res["html"].read_text()
    names = {p.name for p in res["figures"]}
    assert "fmnist-noisy40_joint_class_sigma.png" in names
    assert "fmnist-noisy40_baseline_class_sigma.png" not in names
    # Without the dataset there are no class names, and "Coat" cannot be resolved.
    assert any("no class named 'Coat'" in n for n in res["notes"]) == (not HAVE_FMNIST)
    # The baseline has no sigma, but its small-loss detection is reported.
    assert res["groups"][2]["results"]["loss_auroc"]["mean"] is not None
    assert res["groups"][2]["results"]["det_auroc"]["mean"] is None


@needs_matplotlib
def test_sample_images_are_skipped_with_a_note_when_the_data_is_missing(tmp_path):
    run = write_run(tmp_path / "inst", missing_data=True)
    res = build_report([run], tmp_path / "out", quiet=True)
    assert any("sample images skipped" in n and "cifar10" in n for n in res["notes"])
    assert "sample images skipped" in res["html"].read_text()
    # The curves are still drawn, without their images.
    assert "fmnist-noisy40_instance_instance_sigma.png" in {p.name for p in res["figures"]}


@needs_matplotlib
def test_random_label_figure_needs_baseline_and_curriculum(tmp_path):
    a = write_run(tmp_path / "rb", preset="fmnist/baseline", noise="random", noise_rate=1.0)
    b = write_run(tmp_path / "rc", preset="fmnist/class", noise="random", noise_rate=1.0)
    res = build_report([a, b], tmp_path / "out", quiet=True)
    assert "random_labels_train_acc.png" in {p.name for p in res["figures"]}
    assert all("[random labels]" in g["label"] for g in res["groups"])
    # Detection makes no sense when every label is random.
    assert "detection.png" not in {p.name for p in res["figures"]}
    res = build_report([a], tmp_path / "out2", quiet=True)
    assert "random_labels_train_acc.png" not in {p.name for p in res["figures"]}


# ----------------------------------------------------------------------------------------------
# damaged run directories
# ----------------------------------------------------------------------------------------------
@needs_matplotlib
def test_damaged_runs_are_named_and_the_rest_is_reported(tmp_path):
    good = write_run(tmp_path / "good")
    no_snaps = write_run(tmp_path / "no_snaps", seed=2)
    for f in (no_snaps / "snapshots").iterdir():
        f.unlink()
    (no_snaps / "snapshots").rmdir()
    truncated = write_run(tmp_path / "truncated", seed=3)
    with open(truncated / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 6, "train_acc": 5')  # a kill mid-write
    no_config = write_run(tmp_path / "no_config", seed=4)
    (no_config / "config.json").unlink()
    bad_line = write_run(tmp_path / "bad_line", seed=5)
    lines = (bad_line / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (bad_line / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    with pytest.raises(RunDirError, match="config.json is missing"):
        load_run(no_config)
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2"):
        load_run(bad_line)
    assert any("metrics.jsonl: last line is truncated" in w for w in load_run(truncated).warnings)
    assert len(load_run(truncated).metrics) == 5
    assert any("snapshots is missing" in w for w in load_run(no_snaps).warnings)

    res = build_report([good, no_snaps, truncated, no_config, bad_line], tmp_path / "out", quiet=True)
    skipped = {Path(s["path"]).name: s["reason"] for s in res["skipped"]}
    assert set(skipped) == {"no_config", "bad_line"}
    assert "config.json" in skipped["no_config"] and "metrics.jsonl" in skipped["bad_line"]
    # The three readable runs form one group (seeds 1, 2, 3), reported with their warnings.
    assert [g["seeds"] for g in res["groups"]] == [[1, 2, 3]]
    text = res["html"].read_text()
    assert "Skipped runs" in text and "no_config" in text and "config.json is missing" in text
    assert "last line is truncated" in text and "snapshots is missing" in text
    assert _embedded_images(res["html"]) == len(res["figures"]) > 0


@needs_matplotlib
def test_cli_report_and_unreadable_only(tmp_path, capsys):
    run = write_run(tmp_path / "inst")
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--samples", "1", "2"]) == 0
    captured = capsys.readouterr()
    assert "report.html" in captured.out
    assert re.search(r"\[\d+/\d+\] accuracy.png", captured.err)  # one progress line per figure
    assert (tmp_path / "out" / "report.html").exists()

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path / "empty" / "config.json") in err


def test_group_runs_ignores_seed_and_execution_fields(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2)
    cfg = json.loads((b / "config.json").read_text())
    cfg["data"]["workers"], cfg["notes"] = 4, "another machine"
    (b / "config.json").write_text(json.dumps(cfg))
    c = write_run(tmp_path / "c", seed=1)
    cfg = json.loads((c / "config.json").read_text())
    cfg["optim"]["lr"] = 0.2
    (c / "config.json").write_text(json.dumps(cfg))
    groups = group_runs([load_run(p) for p in (a, b, c)])
    assert [len(g.runs) for g in groups] == [2, 1]
    assert groups[0].label != groups[1].label and "optim.lr" in groups[1].label


def test_group_runs_keeps_seeds_of_a_pipeline_together_and_other_data_apart(tmp_path):
    # Each seed of a filter pipeline's retraining has its own kept file: still seeds of one
    # setting. Two data sets under one preset differ in their fingerprints (and in long choice
    # reasons, which once made the group label, and so a figure's file name, too long to write).
    def edit(path, seed, keep, fingerprint, why):
        run = write_run(path, seed=seed)
        cfg = json.loads((run / "config.json").read_text())
        cfg["data"]["keep_file"], cfg["data"]["data_dir"] = keep, f"/data/{fingerprint}"
        cfg["choices"] = {"data": {"value": "x", "why": why, "fingerprint": {"image files": fingerprint}},
                          "classes": {"value": 3, "why": why * 20}}
        (run / "config.json").write_text(json.dumps(cfg))
        return run

    for seed_dir in ("o/seed1", "o/seed2", "p/seed1"):  # each seed's pipeline folder holds its kept file
        (tmp_path / seed_dir).mkdir(parents=True)
        (tmp_path / seed_dir / "pipeline.json").write_text("{}")
    runs = [edit(tmp_path / "a1", 1, str(tmp_path / "o/seed1/kept_1.npy"), "sha256 aaaa", "class folders, sorted: alpha_category"),
            edit(tmp_path / "a2", 2, str(tmp_path / "o/seed2/kept_2.npy"), "sha256 aaaa", "class folders, sorted: alpha_category"),
            edit(tmp_path / "b1", 1, str(tmp_path / "p/seed1/kept_1.npy"), "sha256 bbbb", "class folders, sorted: beta_category")]
    groups = group_runs([load_run(p) for p in runs])
    assert [len(g.runs) for g in groups] == [2, 1]
    # A kept set given by hand (no pipeline beside it) is a setting of its own, not a seed.
    by_hand = edit(tmp_path / "a3", 3, str(tmp_path / "mine_kept.npy"), "sha256 aaaa", "x")
    assert [len(g.runs) for g in group_runs([load_run(p) for p in (*runs[:2], by_hand)])] == [2, 1]
    assert [g.label for g in groups] == ["fmnist-noisy40/instance [data=sha256 aaaa]",
                                         "fmnist-noisy40/instance [data=sha256 bbbb]"]
    assert all(len(g.slug) <= 96 for g in groups)
    long = type(groups[0])(label="x" * 300, runs=groups[0].runs)
    assert len(long.slug) == 91 and long.slug.startswith("x" * 80)


def test_user_runs_without_a_fingerprint_are_grouped_by_where_their_data_was(tmp_path):
    # Runs made before fingerprints were kept: their data folder is all that tells the data apart.
    paths = []
    for name, data_dir, seed in (("a", "/d/one", 1), ("b", "/d/one", 2), ("c", "/d/two", 1)):
        run = write_run(tmp_path / name, seed=seed)
        cfg = json.loads((run / "config.json").read_text())
        cfg["data"]["dataset"], cfg["data"]["data_dir"], cfg["choices"] = "user", data_dir, {}
        (run / "config.json").write_text(json.dumps(cfg))
        paths.append(run)
    assert [len(g.runs) for g in group_runs([load_run(p) for p in paths])] == [2, 1]
