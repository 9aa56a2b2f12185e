"""The bench grid: a micro-grid completes, resumes without retraining, records a crash and goes on."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import fakes

# The bench is not part of the library: it lives beside the other benchmark scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench import TUNING, BenchSpec, Cell, run_cell, run_grid, summarize  # noqa: E402


def test_every_compared_method_has_a_tuning_budget_of_three_settings():
    """The bench's TUNING covers the library registry: a method added there without its settings
    would silently run untuned beside tuned peers. baseline and oracle have nothing to tune."""
    from dataparams.methods.registry import METHODS

    assert set(TUNING) == set(METHODS) - {"baseline", "oracle"}
    assert all(len(settings) == 3 and len(set(settings)) == 3 for settings in TUNING.values())


def _spec(root, methods, **kw):
    return BenchSpec(
        methods=methods,
        grid=[("uniform", 0.4, [1])],
        overrides=[f"data.data_dir={root}", "data.subset=64", "data.val_fraction=0.25", "optim.epochs=2",
                   "data.batch_size=16", "data.eval_batch_size=64"],
        **kw,
    )


def test_micro_grid_completes_and_resumes(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "bench"
    spec = _spec(data, ["baseline", "dp-instance"])
    res = run_grid(spec, out, quiet=True)
    cells = res["cells"]
    assert set(cells) == {"baseline/uniform40/seed1", "dp-instance/uniform40/seed1"}
    for c in cells.values():
        assert c["status"] == "ok", c.get("error")
        assert 0 <= c["final_test_acc"] <= 100 and c["val_selected_epoch"] in (1, 2)
    inst = cells["dp-instance/uniform40/seed1"]
    assert inst["detection"] is not None and 0 <= inst["detection"]["auroc"] <= 1
    assert cells["baseline/uniform40/seed1"]["detection"] is not None  # small-loss criterion
    md = (out / "results.md").read_text()
    assert "| dp-instance |" in md and "Epoch chosen on the noisy validation split" in md
    # The bar figure is written next to the table and linked from it.
    assert (out / "results.png").stat().st_size > 0 and "](results.png)" in md
    # The settings line reports what each cell ran with: the default first setting of the tuning
    # grid here (no tuning stage), e.g. the instance learning rate of that grid.
    settings = json.loads(md.rsplit("as run): ", 1)[1])
    assert settings["dp-instance"] == inst["setting"] and settings["baseline"] == []

    # A second call reuses finished cells: no training happens, results are identical.
    stamp = {k: (out / "cells" / k / "result.json").stat().st_mtime_ns for k in cells}
    again = run_grid(spec, out, quiet=True)
    assert {k: (out / "cells" / k / "result.json").stat().st_mtime_ns for k in cells} == stamp
    assert again["cells"] == cells


def test_a_partial_grid_reports_n_per_cell_and_the_cells_not_run(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "bench"
    run_cell(_spec(data, ["baseline"]), Cell("baseline", "uniform", 0.4, 1), out)
    # The same folder summarised under a larger grid: seed 2 and pair noise were never run.
    wider = _spec(data, ["baseline"])
    wider.grid = [("uniform", 0.4, [1, 2]), ("pair", 0.4, [1, 2])]
    summarize(wider, out)
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| baseline |"))
    uniform, pair = [c.strip() for c in row.strip("| ").split(" | ")[1:3]]
    assert uniform.endswith("(n=1)") and "missing" not in uniform
    assert pair == "not run"


def test_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "bench"
    spec = _spec(data, ["baseline"])
    cell = Cell("baseline", "uniform", 0.4, 1)
    first = run_cell(spec, cell, out)
    run = out / "cells" / cell.key
    # Simulate a kill after epoch 1: drop the result and the final epoch's outputs.
    (run / "result.json").unlink()
    (run / "summary.json").unlink()
    ckpt_epochs = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"]
    assert ckpt_epochs == 2
    again = run_cell(spec, cell, out)
    assert again["status"] == "ok" and again["final_test_acc"] == first["final_test_acc"]


def test_a_crashing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "bench"
    spec = _spec(data, ["gce", "baseline"], chosen={"gce": ['method_options={"nonsense": 1}']})
    res = run_grid(spec, out, quiet=True)
    bad = res["cells"]["gce/uniform40/seed1"]
    assert bad["status"] == "failed" and "nonsense" in bad["error"]
    assert res["cells"]["baseline/uniform40/seed1"]["status"] == "ok"
    assert "failed: ConfigError" in (out / "results.md").read_text()


def test_multistage_pipelines_run(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "bench"
    spec = _spec(data, ["cleanlab", "aum"], folds=2)
    res = run_grid(spec, out, quiet=True)
    for key, trainings in (("cleanlab/uniform40/seed1", 3), ("aum/uniform40/seed1", 3)):
        c = res["cells"][key]
        assert c["status"] == "ok", c.get("error")
        assert c["trainings"] == trainings and c["n_flagged"] >= 0
        assert c["detection"] is not None
    # cleanlab's retraining used exactly the samples it did not flag
    cl = out / "cells" / "cleanlab/uniform40/seed1"
    (keep_file,) = cl.glob("keep_final_*.npy")
    keep = np.load(keep_file)
    labels = np.load(cl / f"retrain_{keep_file.stem.split('_')[-1]}" / "labels.npz")
    np.testing.assert_array_equal(np.sort(labels["source_index"]), np.sort(keep))
    # every AUM threshold sample was relabelled to the extra class in its stage
    am = out / "cells" / "aum/uniform40/seed1"
    (thr_file,) = am.glob("threshold_0_*.npy")
    thr = np.load(thr_file)
    st = np.load(am / f"stage0_{thr_file.stem.split('_')[-1]}" / "labels.npz")
    given = dict(zip(st["source_index"].tolist(), st["given"].tolist()))
    assert all(given[s] == 10 for s in thr.tolist())
    summarize(spec, out)


def test_index_files_are_named_by_content(tmp_path):
    from dataparams.methods.pipelines import save_index_file

    a, ha = save_index_file(tmp_path, "keep_{digest}.npy", np.array([1, 2, 3]))
    b, hb = save_index_file(tmp_path, "keep_{digest}.npy", np.array([1, 2, 4]))
    c, hc = save_index_file(tmp_path, "keep_{digest}.npy", np.array([1, 2, 3]))
    assert a == c and ha == hc and a != b and ha != hb
    np.testing.assert_array_equal(np.load(b), [1, 2, 4])


def test_tuning_picks_the_best_noisy_validation_setting(tmp_path):
    from bench import tune, tuning_grid

    data = fakes.write_idx(tmp_path / "data", 64, 32)
    out = tmp_path / "bench"
    spec = _spec(data, ["baseline", "gce"])
    chosen = tune(spec, out, quiet=True)
    assert set(chosen) == {"gce"}  # the baseline has nothing to tune
    results = [json.loads((out / "tuning" / f"gce_{i}" / "result.json").read_text()) for i in range(3)]
    best = max(results, key=lambda r: r["val_selected_val_acc"])
    assert chosen["gce"] == best["setting"] and chosen["gce"] in tuning_grid("gce")
    # the tuning cell never reads the test set to choose: the choice is the argmax of validation accuracy
    assert json.loads((out / "tuning.json").read_text())["chosen"] == chosen


def test_one_cell_from_the_command_line_and_the_dp_filter_pipeline(tmp_path, capsys):
    # `python benchmarks/bench.py --spec spec.json --out OUT --cell METHOD/NOISE_RATE/seedS` runs one cell: here
    # dp-filter, whose two trainings (curriculum, then retraining on the kept samples) leave their
    # run directories in the cell.
    from bench import main, parse_cell

    data = fakes.write_idx(tmp_path / "data", 64, 32)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"methods": ["dp-filter"], "grid": [["uniform", 0.4, [1]]],
                                "overrides": [f"data.data_dir={data}", "data.subset=64", "data.val_fraction=0.25",
                                 "optim.epochs=2", "data.batch_size=16", "data.eval_batch_size=64"]}))
    out = tmp_path / "bench"
    assert main(["--spec", str(spec), "--out", str(out), "--cell", "dp-filter/uniform40/seed1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok" and result["trainings"] == 2 and result["cell"]["method"] == "dp-filter"
    cell = out / "cells" / "dp-filter" / "uniform40" / "seed1"
    kept = np.load(next(cell.glob("keep_final_*.npy")))
    assert 0 < len(kept) <= 48 and len(kept) == 48 - result["n_flagged"]
    assert parse_cell("aum/pair40/seed3") == Cell("aum", "pair", 0.4, 3)
    assert main(["--out", str(out), "--cell", "nope/uniform40/seed1"]) == 2


def test_dp_gce_filter_flags_by_the_gce_loss_bound(tmp_path):
    # dp-gce-filter: the first stage is dp-gce's training (GCE loss under the instance curriculum),
    # the flags are the samples whose mean training loss, recomputed here from the snapshots, is at
    # least 0.2 of the GCE bound 1/q; the retraining sees exactly the others.
    from dataparams.runs import RunDir

    data = fakes.write_idx(tmp_path / "data", 64, 32)
    spec = _spec(data, ["dp-gce-filter"])
    # Long enough for the first training to fit some samples (its mean loss falls below the bound).
    spec.overrides += ["optim.epochs=12", "optim.lr=0.2"]
    res = run_cell(spec, Cell("dp-gce-filter", "uniform", 0.4, 1), tmp_path / "bench")
    assert res["status"] == "ok", res.get("error")
    assert res["setting"] == list(TUNING["dp-gce-filter"][0]) and res["trainings"] == 2
    cell = tmp_path / "bench" / "cells" / "dp-gce-filter" / "uniform40" / "seed1"
    (first,) = [p for p in cell.glob("curriculum_*") if p.is_dir()]
    run = RunDir(first)
    cfg = json.loads((first / "config.json").read_text())
    assert cfg["curriculum"]["loss"] == "gce" and cfg["curriculum"]["instance_curriculum"]
    mean_loss = np.mean([run.load_snapshot(e)["loss"].astype(np.float64) for e in run.snapshot_epochs()], axis=0)
    flagged = mean_loss >= 0.2 / cfg["curriculum"]["loss_q"]
    source = run.load_arrays("labels.npz")["source_index"]
    kept = np.load(next(cell.glob("keep_final_*.npy")))
    assert 0 < flagged.sum() < len(flagged) and res["n_flagged"] == int(flagged.sum())
    np.testing.assert_array_equal(np.sort(kept), np.sort(source[~flagged]))
    retrain = json.loads(next(p for p in cell.glob("retrain_*") if p.is_dir()).joinpath("config.json").read_text())
    assert retrain["curriculum"]["loss"] == "ce" and retrain["data"]["keep_file"].endswith(".npy")


def test_dp_filter_refuses_bad_options_before_training(tmp_path):
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    bad = {
        "needs a first training on the GCE loss": ["@score=mean-loss", "@flag=0.2"],  # dp-instance first
        "a loss score": ["@first=dp-gce", "@score=sigma", "@flag=0.2"],
        "0 < FRACTION < 1": ["@first=dp-gce", "@score=mean-loss", "@flag=1.5"],
        "must be 'mixture' or a fraction": ["@first=dp-gce", "@score=mean-loss", "@flag=half"],
        "@first must be": ["@first=gce"],
    }
    for i, (message, setting) in enumerate(bad.items()):
        out = tmp_path / f"bench{i}"
        res = run_cell(_spec(data, ["dp-filter"], chosen={"dp-filter": setting}), Cell("dp-filter", "uniform", 0.4, 1),
                       out)
        assert res["status"] == "failed" and message in res["error"], (setting, res.get("error"))
        cell = out / "cells" / "dp-filter" / "uniform40" / "seed1"
        assert sorted(p.name for p in cell.iterdir()) == ["result.json"]  # refused before any training


def test_flags_by_the_bound_and_by_the_mixture():
    from types import SimpleNamespace

    from dataparams.methods.pipelines import filter_flags

    q = 0.5  # GCE bound 1/q = 2
    report = SimpleNamespace(score=np.array([0.1, 0.39, 0.4, 1.9]), is_flagged=np.array([0, 0, 1, 1], dtype=bool))
    np.testing.assert_array_equal(filter_flags(report, rule="bound", fraction=0.2, q=q),
                                  [False, False, True, True])  # loss >= 0.2 * 2
    np.testing.assert_array_equal(filter_flags(report, rule="bound", fraction=0.96, q=q), [False, False, False, False])
    np.testing.assert_array_equal(filter_flags(report, rule="mixture"), report.is_flagged)


def test_a_tuning_folder_has_no_sibling_cells(tmp_path):
    from bench import finished_sibling
    from dataparams.config import TrainConfig

    cell = Cell("dp-gce-filter", "uniform", 0.4, 100)
    # A run of dp-gce where a sibling would be if the filter's folder were a grid cell:
    sibling = tmp_path / "dp-gce" / "uniform40" / "seed100"
    sibling.mkdir(parents=True)
    (sibling / "summary.json").write_text("{}")
    assert finished_sibling(tmp_path / "tuning" / "dp-gce-filter_0", cell, "dp-gce", TrainConfig()) is None


def test_a_filter_reuses_its_first_methods_cell_of_the_same_grid(tmp_path):
    # In a grid that also runs dp-gce, dp-gce-filter's first training is that cell's run (same
    # config), not a second copy of it, even when the filter is listed first (filters run last);
    # a cell of another config is not taken.
    data = fakes.write_idx(tmp_path / "data", 64, 32)
    spec = _spec(data, ["dp-gce-filter", "dp-gce"], chosen={"dp-gce-filter": ["@first=dp-gce", "@score=mean-loss",
                                                                              "@retrain=baseline"]})
    out = tmp_path / "bench"
    cells = run_grid(spec, out, quiet=True)["cells"]
    res = cells["dp-gce-filter/uniform40/seed1"]
    assert res["status"] == "ok", res.get("error")
    gce_cell = out / "cells" / "dp-gce" / "uniform40" / "seed1"
    assert res["first_run"] == str(gce_cell)
    assert not list((out / "cells" / "dp-gce-filter" / "uniform40" / "seed1").glob("curriculum_*"))
    retrain = next(p for p in (out / "cells" / "dp-gce-filter" / "uniform40" / "seed1").glob("retrain_*") if p.is_dir())
    retrain_time = json.loads((retrain / "summary.json").read_text())["train_time_s"]
    assert res["train_time_s"] == pytest.approx(cells["dp-gce/uniform40/seed1"]["train_time_s"] + retrain_time)

    # dp-gce trained with another q is a different run: the filter trains its own first stage.
    other = _spec(data, ["dp-gce-filter"], chosen={"dp-gce": ["curriculum.loss_q=0.4"],
                                                   "dp-gce-filter": ["@first=dp-gce", "@retrain=baseline"]})
    res = run_cell(other, Cell("dp-gce-filter", "uniform", 0.4, 1), tmp_path / "bench2")
    assert res["status"] == "ok" and "curriculum_" in res["first_run"]
    shared = tmp_path / "bench2" / "cells" / "dp-gce" / "uniform40" / "seed1"
    shutil.copytree(gce_cell, shared)  # a q = 0.7 run where the spec now asks for q = 0.4
    (tmp_path / "bench2" / "cells" / "dp-gce-filter" / "uniform40" / "seed1" / "result.json").unlink()
    res = run_cell(other, Cell("dp-gce-filter", "uniform", 0.4, 1), tmp_path / "bench2")
    assert res["status"] == "ok" and res["first_run"] != str(shared)
