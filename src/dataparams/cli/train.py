"""``dataparams train``: a preset (with ``--set`` overrides), a config.json, a compared method
(``--method``) or the user's own data (``--data``), trained into a run directory; with ``--seeds``
one run per seed and their mean ± std in ``OUT/seeds_summary.{md,json}``.

:func:`cmd_train` resolves the config and hands it to :func:`dataparams.experiment.train`, except
for the two-stage filter pipelines (``--method dp-filter`` and its kin, and ``--data`` without
``--method``, ``--preset`` or ``--config``: :func:`dataparams.methods.pipelines.run_filter_pipeline`)
and the detection presets (``kitti*/...``, ``coco-synth/...``:
:func:`dataparams.detection.presets.train_detection`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from dataparams.cli.options import (
    add_data,
    add_data_dir,
    add_epochs,
    add_execution_args,
    add_holdout,
    add_out,
    add_overrides,
    add_overwrite,
    add_resume,
    add_seed,
    add_table_args,
    table_options,
    train_kwargs,
)
from dataparams.cli.torchrun import single_process

__all__ = ["add_parser", "cmd_train"]


def _trainable_methods() -> list[str]:
    """The registry's methods that ``train --method`` runs (cleanlab and aum run in the bench only)."""
    from dataparams.methods.registry import METHODS

    return [m.name for m in METHODS.values() if not isinstance(m.pipeline, str)]


def add_parser(sub: Any) -> None:
    """Add ``train`` to the sub-command parsers ``sub``; it runs :func:`cmd_train`."""
    t = sub.add_parser("train", help="train a preset (with overrides) into a run directory",
                       description="Train a named preset, optionally overriding any config field.")
    t.set_defaults(func=cmd_train)
    t.add_argument("--preset", help="EXPERIMENT/VARIANT, see `dataparams presets` (default: fmnist-noisy40/instance; "
                   "with --data, the method dp-gce-cm-filter on the user presets, or user/VARIANT when given)")
    add_data(t, "train on your own data: a path,label CSV/TSV list, a folder of class folders, an .npz with X "
              "(features) and y, a .parquet file or a datasets save_to_disk folder (see the table options "
              "below); not --data-dir, which is the folder a preset's own dataset (Fashion-MNIST, CIFAR, ...) "
              "is read from. Without --method or --preset it trains "
              "dp-gce-cm-filter (the instance curriculum on GCE, the samples whose label quality is below their "
              "class's mean flagged, then a plain retraining on the kept samples: OUT/stage1, OUT/stage2, "
              "whose model.pt is the one to keep; the reason is in "
              "each stage's config.json under choices.method). The labels are used as given, the "
              "image side, channels, normalisation, model and epochs are chosen from the data and printed, "
              "with a fingerprint of the data (the list's bytes, every image's size and modification "
              "time; a table's labels, ids and pixels or features) that --resume checks")
    t.add_argument("--method", help=f"train one compared method ({', '.join(_trainable_methods())}) on the preset's "
                   "experiment (or on --data): e.g. --preset fmnist-noisy40 --method gce; default: the preset's own "
                   "variant. dp-filter, dp-gce-filter, dp-cm-filter and dp-gce-cm-filter train twice, into OUT/stage1 and, on the "
                   "samples the first "
                   "training did not flag, OUT/stage2, and write OUT/pipeline.json; --set pipeline.FIELD=VALUE "
                   "sets their options (first, score, rule, fraction, retrain), other --set apply to both "
                   "trainings. A method runs its registry setting (the first of its bench tuning grid), not "
                   "necessarily the one the bench chose: those are in benchmarks/results/fmnist_methods/spec.json "
                   "under 'chosen', to pass with --set (e.g. dp-gce-filter: --set pipeline.retrain=baseline). "
                   "cleanlab and aum run only in the bench that compares methods (python "
                   "benchmarks/bench.py in a source checkout)")
    t.add_argument("--config", help="start from a config.json (e.g. of an earlier run) instead of a preset")
    add_overrides(t, default=[], help="override a config field, e.g. --set optim.lr=0.1 --set "
                   "curriculum.lr_instance=0.5 (repeatable)")
    add_data_dir(t, "the folder a preset's dataset is read from (same as --set data.data_dir=...); not "
                  "--data, which trains on your own data instead of a preset's dataset")
    t.add_argument("--make-split", action="store_true",
                   help="kitti presets: when ROOT/ImageSets/{train,val}.txt are missing (KITTI's download has none), "
                   "write a seeded random split of the labelled images in the proportions of Chen et al.'s "
                   "3,712 / 3,769 first (seed --seed; not the same images as that split)")
    add_epochs(t, "same as --set optim.epochs=N")
    add_seed(t, help="same as --set seed=N: the seed of the one training (default: the preset's, 1 for every "
              "preset, or --config's); not --seeds, which trains one repeat per seed")
    t.add_argument("--seeds", type=int, nargs="+", help="run one repeat per seed into OUT/seedN and summarise "
                   "mean ± std in OUT/seeds_summary.md and .json (detection presets: of the headline, Car AP at "
                   "IoU 0.7 easy / moderate / hard, or COCO mAP for coco-synth); not --seed, which sets the seed "
                   "of a single run")
    add_out(t, help="run directory (default: runs/EXPERIMENT_VARIANT; with --data, runs/ and the file or folder "
                    "name without its suffix, beside the data folder when the working directory is inside it; an "
                    "--out inside a data folder is refused)")
    add_resume(t, "continue the run in --out from its last checkpoint (a two-stage --method: a finished "
                "stage is used as it is and the unfinished one continues); refused, naming what changed, "
                "when the config or (with --data) the data changed since the run began, e.g. a label "
                "edited in the list")
    add_overwrite(t, "delete the run in --out and start over")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    add_holdout(t, metavar="FRACTION", help="with --data: hold out this fraction of your samples, with their labels as given, to "
                 "choose the epoch whose network is kept (model.pt) and to report accuracy on; same as --set "
                 "data.val_fraction=FRACTION (default: none held out, the last epoch is kept)")
    add_table_args(t)
    add_execution_args(t)


def _preset_name(args: argparse.Namespace) -> str:
    """The preset ``train`` starts from (a user preset with ``--data``), checked against ``--data``."""
    from dataparams.config import ConfigError

    data = getattr(args, "data", None)
    preset = args.preset or ("user/instance" if data else "fmnist-noisy40/instance")
    if data:
        if preset.partition("/")[0] != "user":
            raise ConfigError(f"--data trains on your own data with the user presets (user/instance, user/baseline, "
                              f"...), not {preset}")
        if args.data_dir:
            raise ConfigError("give your data with --data PATH only (not also --data-dir)")
    return preset


def _shorthand(args: argparse.Namespace) -> list[str]:
    from dataparams.config import ConfigError, shorthand_overrides

    holdout = getattr(args, "holdout", None)
    if holdout is not None and not getattr(args, "data", None):
        raise ConfigError("--holdout applies to --data (a preset holds out data.val_fraction; use --set)")
    extra = [] if holdout is None else [f"data.val_fraction={holdout}"]
    return [*shorthand_overrides(data_dir=getattr(args, "data", None) or args.data_dir, epochs=args.epochs,
                                 seed=args.seed, workers=getattr(args, "workers", None)), *extra]


def _resolve_config(args: argparse.Namespace) -> Any:
    from dataparams.config import ConfigError, apply_overrides, config_from_dict
    from dataparams.presets import get_preset

    method = getattr(args, "method", None)
    preset = _preset_name(args)
    if args.config:
        if method:
            raise ConfigError("--method applies to a preset, not to --config")
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {args.config}: {e}") from None
        cfg = config_from_dict(data)
    elif method:
        from dataparams.methods.registry import get_method

        m = get_method(method)
        if m.pipeline is not None:
            raise ConfigError(f"{method} trains {m.trainings} times in stages that only the bench runs; run it "
                              f"with `python benchmarks/bench.py --methods {method}` in a source checkout")
        experiment = preset.partition("/")[0]
        cfg = apply_overrides(get_preset(f"{experiment}/{m.variant}"), list(m.overrides))
        cfg.preset = f"{experiment}/{method}"
    else:
        cfg = get_preset(preset)
    cfg = apply_overrides(cfg, [*args.overrides, *_shorthand(args)])
    for name, value in table_options(args).items():
        setattr(cfg.data, name, value)
    return cfg


def _data_default(args: argparse.Namespace) -> bool:
    """Whether ``train --data`` was given no method, preset or config: it then trains
    :data:`~dataparams.methods.registry.DATA_DEFAULT_METHOD`."""
    return bool(getattr(args, "data", None)) and not (args.method or args.preset or args.config)


def _filter_method(args: argparse.Namespace) -> Any:
    """The registry entry of ``--method`` when it is a filter pipeline (dp-filter, dp-gce-filter,
    dp-cm-filter, dp-gce-cm-filter), or of the default method of ``train --data``; else None."""
    from dataparams.methods.pipelines import FilterPipeline
    from dataparams.methods.registry import DATA_DEFAULT_METHOD, get_method

    name = DATA_DEFAULT_METHOD if _data_default(args) else getattr(args, "method", None)
    if not name:
        return None
    m = get_method(name)
    return m if isinstance(m.pipeline, FilterPipeline) else None


def mean_std(values: list[float]) -> tuple[float, float]:
    from dataparams.analysis.metrics import over_seeds

    agg = over_seeds(values)
    return (math.nan, math.nan) if agg["n"] == 0 else (agg["mean"], agg["std"])


def _fmt(ms: tuple[float, float], digits: int = 2) -> str:
    m, s = ms
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def cmd_train(args: argparse.Namespace) -> int:
    from dataparams.config import config_to_dict
    from dataparams.experiment import train

    if args.resume and args.overwrite:
        from dataparams.config import ConfigError

        raise ConfigError("choose one of --resume and --overwrite")
    from dataparams.detection.presets import list_detection_presets

    if args.preset in list_detection_presets():
        return _train_detection(args)
    if getattr(args, "make_split", False):
        from dataparams.config import ConfigError

        raise ConfigError("--make-split is for the kitti detection presets")
    method = _filter_method(args)
    if method is not None:
        return _train_pipeline(args, method)
    cfg = _resolve_config(args)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
        return 0
    out = _default_out(args, cfg.preset)
    _check_out(out, args.seeds)
    if not args.seeds:
        summary = train(cfg, out, resume=args.resume, overwrite=args.overwrite, **train_kwargs(args))
        if summary is not None:  # None on the ranks other than 0 of a torchrun job
            print(json.dumps(summary, indent=2, allow_nan=True))
        return 0
    summaries = []
    for seed in args.seeds:
        run_cfg = dataclasses.replace(cfg, seed=seed)
        summaries.append(train(run_cfg, out / f"seed{seed}", resume=args.resume, overwrite=args.overwrite,
                               label=f"seed {seed}: ", **train_kwargs(args)))
    if None in summaries:  # a rank other than 0 of a torchrun job: rank 0 writes the summary
        return 0
    _seeds_table(out, cfg.preset, args.seeds, summaries, cfg.report_epochs,
                 run_dirs=[out / f"seed{seed}" for seed in args.seeds])
    return 0


def _check_out(out: Path, seeds: list[int] | None) -> None:
    """``ConfigError`` when ``--out`` (or a ``seedN`` folder in it) is, or lies in, a file:
    refused before anything trains, rather than as an OSError when the first folder is made."""
    from dataparams.config import ConfigError
    from dataparams.runs import blocking_file

    for path in [out, *(out / f"seed{seed}" for seed in seeds or [])]:
        blocking = blocking_file(path)
        if blocking is not None:
            raise ConfigError(f"--out {blocking} is a file, not a folder" if blocking == out
                              else f"--out {out}: {blocking} is a file, not a folder")


def _default_out(args: argparse.Namespace, preset: str) -> Path:
    """``--out``, else ``runs/<preset>`` or, with ``--data``, ``runs/<data name>`` (never inside a
    data folder: :func:`~dataparams.issues.default_out_dir`); an ``--out`` inside a data folder is
    refused, as its files would be read as data the next time."""
    data = getattr(args, "data", None)
    if data is None:
        return Path(args.out or Path("runs") / preset.replace("/", "_"))
    from dataparams.issues import check_out_outside_data, default_out_dir

    out = Path(args.out) if args.out else default_out_dir(data, "", under="runs")
    check_out_outside_data(data, out)
    return out


def _seeds_table(out: Path, preset: str, seeds: list[int], summaries: list[dict[str, Any]],
                 report_epochs: list[int], *, run_dirs: list[Path]) -> None:
    """``OUT/seeds_summary.{md,json}``: mean ± std over the seeds' summaries, and per seed the
    network it keeps (``model.pt`` in ``run_dirs``, user data only); printed."""
    keys = ["final_test_acc", "val_selected_test_acc", *[f"test_acc_epoch_{e}" for e in report_epochs]]
    # Quantities no seed produced (no validation split, no report epoch reached) are left out
    # rather than shown as n/a rows.
    table = {k: mean_std([s.get(k) for s in summaries]) for k in keys
             if any(s.get(k) is not None for s in summaries)}
    if not table:
        # No test set (--data): the accuracy on the labels as given is the one accuracy every
        # seed has. Beside a test accuracy it is left out: under label noise it measures how much
        # of the noise was memorised, not how good the network is.
        table["final_train_acc"] = mean_std([s.get("final_train_acc") for s in summaries])
    kept = [s.get("kept_model") or {} for s in summaries]
    if any("val_acc" in k for k in kept):  # --holdout: the held-out accuracy of the kept epoch
        table["kept_model_val_acc"] = mean_std([k.get("val_acc") for k in kept])
    if any("n_flagged" in s for s in summaries):  # a filter pipeline: samples its first stage dropped
        table["n_flagged"] = mean_std([s.get("n_flagged") for s in summaries])
    det = [s["detection"]["auroc"] for s in summaries if s.get("detection")]
    if det:
        table["detection_auroc"] = mean_std(det)
    lines = [f"# {preset}, seeds {' '.join(map(str, seeds))}", "", "| quantity | mean ± std |", "|---|---:|"]
    digits = {"detection_auroc": 4, "n_flagged": 1}
    lines += [f"| {k} | {_fmt(v, digits.get(k, 2))} |" for k, v in table.items()]
    # The network a --data run leaves to use, per seed: the mean of two networks is none of them.
    models = {seed: (d / "model.pt", k) for seed, d, k in zip(seeds, run_dirs, kept, strict=True)
              if (d / "model.pt").exists()}
    if models:
        lines += ["", "| seed | kept model | epoch | chosen by |", "|---:|---|---:|---|"]
        lines += [f"| {seed} | {path} | {k.get('epoch', '')} | {k.get('chosen_by', '')} |"
                  for seed, (path, k) in models.items()]
    (out / "seeds_summary.md").write_text("\n".join(lines) + "\n")
    (out / "seeds_summary.json").write_text(json.dumps(
        {"seeds": seeds, "mean_std": table, "kept_models": {str(seed): str(p) for seed, (p, _) in models.items()},
         "runs": summaries}, indent=2, allow_nan=True) + "\n")
    print("\n".join(lines))


def _train_pipeline(args: argparse.Namespace, method: Any) -> int:
    """``dataparams train --method dp-filter|dp-gce-filter``: the two trainings of the filter
    pipeline (:func:`dataparams.methods.pipelines.run_filter_pipeline`) in ``OUT/stage1`` and
    ``OUT/stage2``, or ``OUT/seedN/...`` with ``--seeds``."""
    from dataparams.config import ConfigError, config_to_dict
    from dataparams.methods.pipelines import run_filter_pipeline

    if args.config:
        raise ConfigError("--method applies to a preset, not to --config")
    hint = " (or, for one distributed training, --preset user/instance)" if _data_default(args) else ""
    single_process(f"{method.name} runs in one process (its flags are computed between its two trainings); run "
                    f"it without torchrun{hint}")
    experiment = _preset_name(args).partition("/")[0]
    pipeline, common = method.pipeline.with_options(args.overrides)
    cfg_first, cfg_retrain = pipeline.configs(experiment, [*common, *_shorthand(args)], method=method.name)
    for name, value in table_options(args).items():
        setattr(cfg_first.data, name, value)
        setattr(cfg_retrain.data, name, value)
    if getattr(args, "data", None):
        from dataparams.methods.registry import DATA_DEFAULT_WHY

        why = DATA_DEFAULT_WHY if _data_default(args) else "given with --method"
        for cfg in (cfg_first, cfg_retrain):
            cfg.choices["method"] = {"value": method.name, "why": why}
    if args.print_config:
        print(json.dumps({"pipeline": dataclasses.asdict(pipeline), "stage1": config_to_dict(cfg_first),
                          "stage2": config_to_dict(cfg_retrain)}, indent=2, sort_keys=True))
        return 0
    out = _default_out(args, cfg_retrain.preset)
    _check_out(out, args.seeds)
    kwargs = dict(method=method.name, resume=args.resume, overwrite=args.overwrite, **train_kwargs(args))
    if not args.seeds:
        print(json.dumps(run_filter_pipeline(pipeline, cfg_first, cfg_retrain, out, **kwargs), indent=2,
                         allow_nan=True))
        return 0
    summaries, run_dirs = [], []
    for seed in args.seeds:
        record = run_filter_pipeline(pipeline, dataclasses.replace(cfg_first, seed=seed),
                                     dataclasses.replace(cfg_retrain, seed=seed), out / f"seed{seed}",
                                     label=f"seed {seed}, ", **kwargs)
        # The pipeline's own ranking is its first training's score, not the retraining's sigma.
        summaries.append({**record["summary"], "detection": record["detection"], "n_flagged": record["n_flagged"]})
        run_dirs.append(Path(record["stages"]["stage2"]["run_dir"]))
    _seeds_table(out, cfg_retrain.preset, args.seeds, summaries, cfg_retrain.report_epochs, run_dirs=run_dirs)
    return 0


def _train_detection(args: argparse.Namespace) -> int:
    """``dataparams train --preset kitti[-synth]/VARIANT``: the detection trainer (sec. 3.3);
    with ``--seeds``, one run per seed into ``OUT/seedN`` and ``OUT/seeds_summary.{json,md}``
    (:func:`dataparams.detection.summary.write_seeds_summary`)."""
    from dataparams.config import ConfigError, apply_overrides, config_to_dict
    from dataparams.detection.presets import (
        SYNTHETIC_DATA,
        ensure_synthetic_coco,
        ensure_synthetic_data,
        get_detection_preset,
        train_detection,
    )
    from dataparams.detection.summary import write_seeds_summary

    if args.method or args.config or args.data or args.holdout is not None or args.deterministic:
        raise ConfigError("--method, --config, --data, --holdout and --deterministic apply to classification presets "
                          "(the detection trainer has no deterministic mode)")
    # The detection trainer has no data-parallel path: every process would train the whole set
    # and write the same run directory.
    single_process("the detection presets train in one process; torchrun runs the classification presets only")
    cfg = get_detection_preset(args.preset)
    shorthand = [f"data.root={args.data_dir}" if args.data_dir else "", f"optim.epochs={args.epochs}" if args.epochs else "",
                 f"seed={args.seed}" if args.seed is not None else "",
                 f"data.workers={args.workers}" if args.workers is not None else ""]
    cfg = apply_overrides(cfg, [*args.overrides, *(s for s in shorthand if s)])
    synthetic = args.preset.split("/")[0] if args.preset.startswith(("kitti-synth", "coco-synth")) else None
    # A root the user names holds the user's data: the synthetic set is written only into the
    # default root, or into a given folder that is new or empty (it would otherwise land among,
    # or over, the user's own images).
    write_synthetic = False
    if synthetic:
        root = Path(cfg.data.root) if cfg.data.root else None
        if root is None:
            # The synthetic set is written on first use (seconds), from the Fashion-MNIST package.
            cfg.data.root = str(Path("runs") / "data" / synthetic)
        # Without a file in it (folders left by an interrupted first write count as empty).
        write_synthetic = root is None or not root.exists() or (root.is_dir() and not any(
            p.is_file() for p in root.rglob("*")))
        announce = root is not None and write_synthetic and not args.quiet
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
        return 0
    if getattr(args, "make_split", False):
        if write_synthetic or cfg.data.format != "kitti":
            raise ConfigError("--make-split writes a KITTI train/val split; this preset's data has its own")
        from dataparams.detection.kitti import make_split

        root = Path(cfg.data.root)
        wanted = [root / "ImageSets" / f"{n}.txt" for n in (cfg.data.train_split, cfg.data.val_split)]
        if not any(p.exists() for p in wanted):
            train_file, val_file = make_split(root, seed=cfg.seed, names=(cfg.data.train_split, cfg.data.val_split))
            print(f"wrote {train_file} ({len(train_file.read_text().split()):,} images) and {val_file} "
                  f"({len(val_file.read_text().split()):,}), seed {cfg.seed}")
    if write_synthetic and announce:
        print(f"{cfg.data.root} has no files: writing the synthetic {synthetic} set into it", file=sys.stderr)
    if write_synthetic and synthetic == "kitti-synth":
        ensure_synthetic_data(cfg.data.root, SYNTHETIC_DATA)
    elif write_synthetic and synthetic == "coco-synth":
        ensure_synthetic_coco(cfg.data.root, SYNTHETIC_DATA)
    out = Path(args.out or Path("runs") / args.preset.replace("/", "_"))
    _check_out(out, args.seeds)
    kwargs = dict(resume=args.resume, overwrite=args.overwrite, device=args.device, quiet=args.quiet, amp=args.amp)
    if not args.seeds:
        summary = train_detection(cfg, out, **kwargs)
        print(json.dumps(summary, indent=2, allow_nan=True))
        return 0
    summaries = [train_detection(dataclasses.replace(cfg, seed=seed), out / f"seed{seed}", **kwargs)
                 for seed in args.seeds]
    _, table = write_seeds_summary(out, summaries, args.seeds, preset=cfg.preset)
    print(table, end="")
    return 0
