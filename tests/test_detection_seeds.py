"""``train --seeds`` on a detection preset, and the headline number of a detection run.

* ``dataparams train --preset kitti-synth/baseline --seeds 1 2`` writes OUT/seed1, OUT/seed2 (each
  a run of that seed) and OUT/seeds_summary.{json,md}, whose means and standard deviations are
  numpy's over the per-seed ``summary.json`` files' own KITTI tables;
* a run's ``headline`` is the Car row of its KITTI evaluation at IoU 0.7 (easy / moderate / hard,
  AP|R40 and 11-point), COCO mAP in percent for COCO data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fakes
from dataparams.detection.kitti import DIFFICULTIES
from dataparams.detection.summary import format_headline, headline, seeds_markdown, summarize_seeds


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth", num_images=16, seed=5, flip_fraction=0.0)


def _kitti(car: tuple[float, ...], other: float) -> dict:
    """A KITTI table: Car's ap40 easy/moderate/hard then ap11 easy/moderate/hard; the rest ``other``."""
    table = {"Car": {d: {"ap40": car[k], "ap11": car[3 + k]} for k, d in enumerate(DIFFICULTIES)}}
    for c in ("Pedestrian", "Cyclist"):
        table[c] = {d: {"ap40": other, "ap11": other} for d in DIFFICULTIES}
    return table


def test_headline_is_car_at_iou_07_and_coco_map_in_percent():
    h = headline({"kitti": _kitti((90.0, 80.0, 70.0, 91.0, 81.0, 71.0), 10.0)})
    assert h["metric"].startswith("Car AP at IoU 0.7")
    assert h["values"] == {"ap40_easy": 90.0, "ap40_moderate": 80.0, "ap40_hard": 70.0,
                           "ap11_easy": 91.0, "ap11_moderate": 81.0, "ap11_hard": 71.0}
    assert format_headline(h).endswith("AP|R40 easy/moderate/hard 90.00/80.00/70.00, "
                                       "11-point AP easy/moderate/hard 91.00/81.00/71.00")
    # Without a Car class the mean over the evaluated classes, and the metric says so.
    ped = headline({"kitti": {c: v for c, v in _kitti((0,) * 6, 30.0).items() if c != "Car"}})
    assert "no Car" in ped["metric"] and set(ped["values"].values()) == {30.0}
    coco = headline({"coco": {"map": 0.4125, "map50": 0.7}})
    assert coco["values"] == {"map": pytest.approx(41.25)} and "mAP" in coco["metric"]
    assert headline({"coco": {"map": None}})["values"] == {"map": None}
    assert headline({}) is None


def test_summarize_seeds_by_hand():
    runs = [{"kitti": _kitti((70.0, 60.0, 50.0, 71.0, 61.0, 51.0), 0.0), "map40_moderate": 20.0},
            {"kitti": _kitti((72.0, 66.0, 50.0, 73.0, 67.0, 53.0), 0.0), "map40_moderate": 22.0},
            {"kitti": _kitti((74.0, float("nan"), 50.0, 75.0, 64.0, 55.0), 0.0), "map40_moderate": 24.0}]
    table = summarize_seeds(runs, [1, 2, 3], preset="kitti-synth/baseline")
    assert table["headline"]["ap40_easy"] == {"mean": 72.0, "std": 2.0, "n": 3, "values": [70.0, 72.0, 74.0]}
    # A run without the number (NaN) is left out, and n says so.
    assert table["headline"]["ap40_moderate"]["n"] == 2 and table["headline"]["ap40_moderate"]["mean"] == 63.0
    assert table["headline"]["ap40_hard"]["std"] == 0.0
    assert table["secondary"]["map40_moderate"]["mean"] == 22.0
    text = seeds_markdown(table)
    assert "| **AP\\|R40 easy** | 72.00 ± 2.00 (3) |" in text
    assert "| **AP\\|R40 moderate** | 63.00 ± 4.24 (2) |" in text


def test_seeds_train_one_run_per_seed_and_summarise(data_root, tmp_path, capsys, monkeypatch):
    import dataparams.detection.train as train_module
    from dataparams.cli import main

    # A run this short detects nothing (every AP is 0), which any aggregation would reproduce:
    # the devkit evaluation still runs, and its table is then overwritten by distinct numbers per
    # evaluation, so that a wrong key, class, seed or standard deviation shows.
    evaluations: list[int] = []
    real_evaluate = train_module.evaluate

    def evaluate(gt, dets, classes):
        results = real_evaluate(gt, dets, classes=classes)
        rng = np.random.default_rng(len(evaluations))
        evaluations.append(1)
        return {c: {d: {"ap40": float(rng.uniform(0, 100)), "ap11": float(rng.uniform(0, 100))} for d in per}
                for c, per in results.items()}

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    out = tmp_path / "out"
    argv = ["train", "--preset", "kitti-synth/baseline", "--data-dir", str(data_root), "--epochs", "1",
            "--seeds", "1", "2", "--set", "model.width=8", "--set", "data.batch_size=6", "--set", "eval_every=1",
            "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["seed1", "seed2", "seeds_summary.json", "seeds_summary.md"]
    summaries = []
    for seed in (1, 2):
        run = out / f"seed{seed}"
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        summary = json.loads((run / "summary.json").read_text())
        assert summary["seed"] == seed
        car = summary["kitti"]["Car"]
        # The run's headline is its KITTI table's Car row.
        assert summary["headline"]["values"] == {f"{kind}_{d}": car[d][kind] for kind in ("ap40", "ap11")
                                                 for d in DIFFICULTIES}
        summaries.append(summary)
    assert len(evaluations) == 2 and summaries[0]["kitti"] != summaries[1]["kitti"]
    table = json.loads((out / "seeds_summary.json").read_text())
    assert table["seeds"] == [1, 2] and table["metric"].startswith("Car AP at IoU 0.7")
    for kind in ("ap40", "ap11"):
        for d in DIFFICULTIES:
            values = np.array([s["kitti"]["Car"][d][kind] for s in summaries])
            agg = table["headline"][f"{kind}_{d}"]
            assert agg["n"] == 2 and values.std() > 0
            assert agg["mean"] == pytest.approx(values.mean())
            assert agg["std"] == pytest.approx(values.std(ddof=1))
    # The mean over classes stays, as the secondary numbers.
    values = np.array([s["map40_moderate"] for s in summaries])
    assert table["secondary"]["map40_moderate"]["mean"] == pytest.approx(values.mean())
    md = (out / "seeds_summary.md").read_text()
    assert md == printed and "kitti-synth/baseline, seeds 1 2" in md
    mean, std = table["headline"]["ap40_moderate"]["mean"], table["headline"]["ap40_moderate"]["std"]
    assert f"| **AP\\|R40 moderate** | {mean:.2f} ± {std:.2f} (2) |" in md
    assert not math.isnan(mean)
