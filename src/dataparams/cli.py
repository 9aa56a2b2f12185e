"""The ``dataparams`` command line: train, demo, presets, report, find-issues, kitti-eval.

Only this module parses arguments. It builds :class:`~dataparams.config.TrainConfig` objects
from a preset plus overrides and hands them, with explicit options, to library functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["get_args_parser", "main"]


# ----------------------------------------------------------------------------------------------
# argument parsing: one function per sub-command, shared options defined once
# ----------------------------------------------------------------------------------------------
# Each option that several sub-commands take is spelled in one helper below; a sub-command passes
# only what differs (its default, and a help text that says what the option means there).
# Options that look alike (--data / --data-dir, --seed / --seeds) say in
# their help how they differ; README.md lists them under "The command line".
_Parser = argparse.ArgumentParser
_Target = Any  # a parser or an argument group of one


def _trainable_methods() -> list[str]:
    """The registry's methods that ``train --method`` runs (cleanlab and aum run in the bench only)."""
    from dataparams.methods.registry import METHODS

    return [m.name for m in METHODS.values() if not isinstance(m.pipeline, str)]


def _add_out(p: _Parser, **kwargs: Any) -> None:
    p.add_argument("--out", **kwargs)


def _add_quiet(p: _Target, help: str) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help=help)


def _add_device(p: _Target, *, default: str = "auto",
                help: str = "auto | cpu | cuda | cuda:N | mps (default: auto)") -> None:
    p.add_argument("--device", default=default, help=help)


def _add_overwrite(p: _Parser, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def _add_resume(p: _Parser, help: str) -> None:
    p.add_argument("--resume", action="store_true", help=help)


def _add_overrides(p: _Parser, *, help: str, default: list[str] | None = None) -> None:
    """``--set FIELD=VALUE`` (repeatable), into ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=default, metavar="FIELD=VALUE", help=help)


def _add_data(p: _Parser, help: str) -> None:
    """``--data PATH``: the user's own labelled samples (not a preset's dataset folder)."""
    p.add_argument("--data", metavar="PATH", help=help)


def _add_data_dir(p: _Parser, help: str) -> None:
    """``--data-dir``: where a preset's dataset is read from (not the user's own data)."""
    p.add_argument("--data-dir", help=help)


def _add_epochs(p: _Parser, help: str) -> None:
    p.add_argument("--epochs", type=int, help=help)


def _add_seed(p: _Parser, *, help: str, default: int | None = None) -> None:
    """``--seed N``: one value (``train --seeds`` takes several, one run each)."""
    p.add_argument("--seed", type=int, default=default, help=help)


def _add_holdout(p: _Parser, *, help: str, default: float | None = None, metavar: str | None = None) -> None:
    p.add_argument("--holdout", type=float, default=default, metavar=metavar, help=help)


def _add_execution_args(p: _Parser) -> None:
    """Where and how a training runs: options that do not change its result (train, demo)."""
    g = p.add_argument_group("execution (does not change the result)")
    _add_device(g)
    g.add_argument("--amp", default="off", choices=["off", "fp16", "bf16"],
                   help="mixed precision: fp16 (CUDA, with a gradient scaler) or bf16 (default: off)")
    g.add_argument("--deterministic", action="store_true",
                   help="use deterministic algorithms only (slower on GPU; CPU runs are deterministic anyway)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes for image-file datasets")
    _add_quiet(g, "no progress bars or per-epoch lines")
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")


def _add_table_args(p: _Parser) -> None:
    """How to read a table given as ``--data`` (train, find-issues)."""
    g = p.add_argument_group("a table as --data (a .parquet file or a datasets save_to_disk folder)")
    g.add_argument("--label-column", metavar="NAME", help="the column of labels (default: label)")
    g.add_argument("--image-column", metavar="NAME",
                   help="the column of images (PIL images, encoded bytes, the Image feature) or image file "
                   "paths (default: the only such column)")
    g.add_argument("--feature-columns", nargs="+", metavar="NAME",
                   help="the columns of features: numbers, or one vector (an embedding) per row (default: "
                   "every numeric column but the label and the id, else the only vector column)")
    g.add_argument("--id-column", metavar="NAME", help="each row's id for the reports (default: row i)")
    g.add_argument("--split", metavar="NAME", help="the split of a DatasetDict folder (default: train)")


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train a preset (with overrides) into a run directory",
                       description="Train a named preset, optionally overriding any config field.")
    t.set_defaults(func=cmd_train)
    t.add_argument("--preset", help="EXPERIMENT/VARIANT, see `dataparams presets` (default: fmnist-noisy40/instance; "
                   "with --data, the method dp-cm-filter on the user presets, or user/VARIANT when given)")
    _add_data(t, "train on your own data: a path,label CSV/TSV list, a folder of class folders, an .npz with X "
              "(features) and y, a .parquet file or a datasets save_to_disk folder (see the table options "
              "below); not --data-dir, which is the folder a preset's own dataset (Fashion-MNIST, CIFAR, ...) "
              "is read from. Without --method or --preset it trains "
              "dp-cm-filter (the instance curriculum, find-issues' flags, then a plain retraining on the "
              "kept samples: OUT/stage1, OUT/stage2, whose model.pt is the one to keep; the reason is in "
              "each stage's config.json under choices.method). The labels are used as given, the "
              "image side, channels, normalisation, model and epochs are chosen from the data and printed, "
              "with a fingerprint of the data (the list's bytes, every image's size and modification "
              "time; a table's labels, ids and pixels or features) that --resume checks")
    t.add_argument("--method", help=f"train one compared method ({', '.join(_trainable_methods())}) on the preset's "
                   "experiment (or on --data): e.g. --preset fmnist-noisy40 --method gce; default: the preset's own "
                   "variant. dp-filter, dp-gce-filter and dp-cm-filter train twice, into OUT/stage1 and, on the "
                   "samples the first "
                   "training did not flag, OUT/stage2, and write OUT/pipeline.json; --set pipeline.FIELD=VALUE "
                   "sets their options (first, score, rule, fraction, retrain), other --set apply to both "
                   "trainings. cleanlab and aum run only in the bench that compares methods (python "
                   "benchmarks/bench.py in a source checkout)")
    t.add_argument("--config", help="start from a config.json (e.g. of an earlier run) instead of a preset")
    _add_overrides(t, default=[], help="override a config field, e.g. --set optim.lr=0.1 --set "
                   "curriculum.lr_instance=0.5 (repeatable)")
    _add_data_dir(t, "the folder a preset's dataset is read from (same as --set data.data_dir=...); not "
                  "--data, which trains on your own data instead of a preset's dataset")
    t.add_argument("--make-split", action="store_true",
                   help="kitti presets: when ROOT/ImageSets/{train,val}.txt are missing (KITTI's download has none), "
                   "write a seeded random split of the labelled images in the proportions of Chen et al.'s "
                   "3,712 / 3,769 first (seed --seed; not the same images as that split)")
    _add_epochs(t, "same as --set optim.epochs=N")
    _add_seed(t, help="same as --set seed=N: the seed of the one training (default: the preset's, 1 for every "
              "preset, or --config's); not --seeds, which trains one repeat per seed")
    t.add_argument("--seeds", type=int, nargs="+", help="run one repeat per seed into OUT/seedN and summarise "
                   "mean ± std in OUT/seeds_summary.md and .json (detection presets: of the headline, Car AP at "
                   "IoU 0.7 easy / moderate / hard, or COCO mAP for coco-synth); not --seed, which sets the seed "
                   "of a single run")
    _add_out(t, help="run directory (default: runs/<preset>)")
    _add_resume(t, "continue the run in --out from its last checkpoint (a two-stage --method: a finished "
                "stage is used as it is and the unfinished one continues); refused, naming what changed, "
                "when the config or (with --data) the data changed since the run began, e.g. a label "
                "edited in the list")
    _add_overwrite(t, "delete the run in --out and start over")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    _add_holdout(t, metavar="FRACTION", help="with --data: hold out this fraction of your samples, with their labels as given, to "
                 "choose the epoch whose network is kept (model.pt) and to report accuracy on; same as --set "
                 "data.val_fraction=FRACTION (default: none held out, the last epoch is kept)")
    _add_table_args(t)
    _add_execution_args(t)


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="baseline vs instance curriculum on Fashion-MNIST with 40%% label noise",
                       description="The main job: train the cross-entropy baseline and the instance-level curriculum "
                       "on Fashion-MNIST with 40%% uniform label noise, then print test accuracy and the "
                       "noise-detection AUROC of sigma side by side.")
    d.set_defaults(func=cmd_demo)
    _add_out(d, default="runs/demo", help="parent folder of the two run directories (default: %(default)s)")
    _add_data_dir(d, "Fashion-MNIST folder (default: the Debian package's)")
    _add_epochs(d, "override the demo's epoch count")
    _add_seed(d, default=1, help="seed of both trainings (default: %(default)s, the seed every preset trains with)")
    _add_overwrite(d, "replace earlier demo runs (default: refuse, or resume)")
    _add_execution_args(d)


def _add_presets(sub: Any) -> None:
    p = sub.add_parser("presets", help="list the preset names", description="List every EXPERIMENT/VARIANT preset.")
    p.set_defaults(func=cmd_presets)


def _add_report(sub: Any) -> None:
    r = sub.add_parser("report", help="figures and a self-contained HTML report of finished runs",
                       description="Read run directories (or folders of them, e.g. OUT of `train --seeds`), group "
                       "the seeds of each setting, and write the learned-curriculum figures (PNG) and "
                       "report.html (self-contained, figures embedded) into --out.")
    r.set_defaults(func=cmd_report)
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders holding them")
    _add_out(r, required=True, help="folder for the report")
    r.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="classes (indices or names) for the class-parameter figure (default: 4 at random)")
    r.add_argument("--samples", nargs="+", type=int, metavar="INDEX",
                   help="samples (positions in the run) for the instance-parameter figure "
                   "(default: 3 clean and 3 corrupted at random)")
    _add_seed(r, default=0, help="seed of the random choice of the classes and samples the figures show, not a "
              "training seed (default: %(default)s)")
    _add_quiet(r, "no progress lines")


def _add_find_issues(sub: Any) -> None:
    from dataparams.analysis.find_issues import SCORES
    from dataparams.scores import FLAG_RULES

    f = sub.add_parser("find-issues", help="rank samples by how likely their label is wrong: of a run, or of your data",
                       description="With --data PATH: train the instance curriculum on your data (labels as given, "
                       "no test set needed) and rank its samples. With RUN_DIR: rank the samples of a finished run. "
                       "Either way: rank by the learned instance sigma (or a loss score), flag the estimated number "
                       "of mislabeled ones without being told the noise rate, and write issues.csv, "
                       "cleanlab-compatible label_issues_mask.npy and ranked_label_issues.npy, summary.json and "
                       "(with --data) report.html with the most suspect samples. With --data, OUT/run is "
                       "reused (or continued) only when it was trained on the same data and settings: after "
                       "an edited label, an added or removed file or other settings it is trained again, and "
                       "the reason printed. A detection run's RUN_DIR (dataparams train --preset kitti*/...) gets one row per "
                       "ground-truth box instead: box_issues.csv (image id, line of the box in its KITTI label file, "
                       "class, box, sigma, mean loss, rank, flagged, label_score), image_issues.csv (per image: the "
                       "min of its boxes' label_score, is_label_issue = any box flagged), the per-image "
                       "label_issues_mask.npy and label_quality_scores.npy, summary.json and report.html with the "
                       "most suspect boxes drawn on their images.")
    f.set_defaults(func=cmd_find_issues)
    f.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run directory written by `dataparams train`")
    _add_data(f, "your data: a path,label CSV/TSV list, a folder of class "
              "folders, an .npz with X (features) and y, a .parquet file or a datasets save_to_disk "
              "folder (see the table options below)")
    _add_out(f, help="output folder (default: RUN_DIR/issues, or <data name>-issues with --data)")
    f.add_argument("--score", choices=list(SCORES),
                   help="sigma: instance temperature at an epoch; sigma-mean: sigma integrated over training "
                   "(geometric mean over the epochs); last-loss: each sample's training loss at its last visit; "
                   "mean-loss: its mean over the epochs, the small-loss criterion (the loss scores work for any run) "
                   "(default: mean-loss with --data -- the loss under the learned temperatures, averaged over training, "
                   "which ranked best on our tuning data -- and sigma for RUN_DIR; mean-loss for a detection run, "
                   "whose box loss finds wrong-class boxes better than the box sigma)")
    f.add_argument("--rule", choices=list(FLAG_RULES), default="auto",
                   help="how many to flag, without the noise rate: class-mean (a sample whose label quality is "
                   "below its given class's mean), mixture (two Gaussians on the log score), bound (a fraction "
                   "of a bounded loss's maximum), confident (confident learning on the class probabilities "
                   "averaged over training); auto: bound for a GCE-trained run, else class-mean for a loss "
                   "score and mixture for sigma; a detection run takes auto, class-mean or mixture (default: %(default)s)")
    _add_holdout(f, default=0.0, help="with --data: fraction held out to choose the epoch and measure accuracy "
                 "(not ranked; default: %(default)s)")
    _add_overrides(f, default=[], help="with --data: config overrides, e.g. --set model.arch=resnet18 --set "
                   "optim.epochs=30")
    f.add_argument("--model", help="with --data: a model architecture (same as --set model.arch=...)")
    f.add_argument("--weights", metavar="FILE", help="with --data: a local pretrained checkpoint to start from")
    _add_seed(f, default=1, help="with --data: seed of the training (default: %(default)s, the seed every preset "
              "trains with)")
    _add_device(f, help="with --data: auto | cpu | cuda | cuda:N | mps")
    _add_overwrite(f, "with --data: retrain even if OUT/run holds a run on the same data and settings "
                   "(one on other data or settings is retrained anyway)")
    _add_quiet(f, "no progress output")
    f.add_argument("--epoch", type=int, help="use the snapshot of this epoch (default: the last); not a number "
                   "of epochs to train, which is --set optim.epochs=N with --data")
    f.add_argument("--cleaned-labels", choices=["relabel", "drop"],
                   help="also write cleaned_labels_<action>.csv: flagged samples relabelled with the model's "
                   "prediction, or dropped")
    _add_table_args(f)


def _add_kitti_eval(sub: Any) -> None:
    k = sub.add_parser("kitti-eval", help="KITTI 2D detection AP (the official devkit's rules) of label files",
                       description="Evaluate detections in KITTI label format (the score as the last column) against "
                       "KITTI ground-truth label files with the official devkit's semantics: Car at IoU 0.7, Pedestrian "
                       "and Cyclist at 0.5; easy/moderate/hard by box height, occlusion and truncation; DontCare "
                       "regions and neighbouring classes ignored; 40-recall-point and 11-point AP, in percent.")
    k.set_defaults(func=cmd_kitti_eval)
    k.add_argument("gt_dir", metavar="GT_LABEL_DIR", help="ground-truth label files (e.g. training/label_2)")
    k.add_argument("det_dir", metavar="DET_LABEL_DIR", help="detection label files; a missing file = no detections")
    k.add_argument("--split", metavar="FILE", help="ImageSets file: evaluate these image ids only")
    k.add_argument("--json", metavar="FILE", help='also write {"Car": {"easy": {"ap40": ..., "ap11": ...}, ...}, ...}')


_SUBCOMMANDS = (_add_train, _add_demo, _add_presets, _add_report, _add_find_issues, _add_kitti_eval)


def get_args_parser() -> argparse.ArgumentParser:
    """The ``dataparams`` parser; each sub-command's parser sets ``func``, the ``cmd_*`` that runs it."""
    parser = argparse.ArgumentParser(
        prog="dataparams",
        description=(
            "Train PyTorch models with data parameters (Saxena, Tuzel & DeCoste, NeurIPS 2019): a learnable "
            "temperature per class and per sample, a dynamic curriculum, and a score that finds mislabeled data."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
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
    for name, value in _table_options(args).items():
        setattr(cfg.data, name, value)
    return cfg


def _data_default(args: argparse.Namespace) -> bool:
    """Whether ``train --data`` was given no method, preset or config: it then trains
    :data:`~dataparams.methods.registry.DATA_DEFAULT_METHOD`."""
    return bool(getattr(args, "data", None)) and not (args.method or args.preset or args.config)


def _filter_method(args: argparse.Namespace) -> Any:
    """The registry entry of ``--method`` when it is a filter pipeline (dp-filter, dp-gce-filter,
    dp-cm-filter), or of the default method of ``train --data``; else None."""
    from dataparams.methods.pipelines import FilterPipeline
    from dataparams.methods.registry import DATA_DEFAULT_METHOD, get_method

    name = DATA_DEFAULT_METHOD if _data_default(args) else getattr(args, "method", None)
    if not name:
        return None
    m = get_method(name)
    return m if isinstance(m.pipeline, FilterPipeline) else None


def _table_options(args: argparse.Namespace) -> dict[str, Any]:
    """The table options given (``label_column``, ...), refused unless ``--data`` is a table."""
    from dataparams.config import ConfigError
    from dataparams.data.registry import TABLE_OPTIONS
    from dataparams.data.tables import is_table_path

    given = {k: getattr(args, k) for k in TABLE_OPTIONS if getattr(args, k, None) is not None}
    if not given:
        return {}
    flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
    verb = "applies" if len(given) == 1 else "apply"
    data = getattr(args, "data", None)
    if data is None:
        raise ConfigError(f"{flags} {verb} to a table given as --data (a .parquet file or a datasets "
                          "save_to_disk folder)")
    # A missing path is left to the loader, whose message says so.
    if Path(data).expanduser().exists() and not is_table_path(data):
        raise ConfigError(f"{flags} {verb} to a table (a .parquet file or a folder written by datasets' "
                          f"save_to_disk); {data} is not one: a CSV list has the columns path and label, a "
                          "class folder its subfolders, an .npz its X and y")
    return given


def _train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(device=args.device, amp=args.amp, deterministic=args.deterministic, quiet=args.quiet,
                tensorboard=not args.no_tensorboard)


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
    if not args.seeds:
        summary = train(cfg, out, resume=args.resume, overwrite=args.overwrite, **_train_kwargs(args))
        if summary is not None:  # None on the ranks other than 0 of a torchrun job
            print(json.dumps(summary, indent=2, allow_nan=True))
        return 0
    summaries = []
    for seed in args.seeds:
        run_cfg = dataclasses.replace(cfg, seed=seed)
        summaries.append(train(run_cfg, out / f"seed{seed}", resume=args.resume, overwrite=args.overwrite,
                               label=f"seed {seed}: ", **_train_kwargs(args)))
    if None in summaries:  # a rank other than 0 of a torchrun job: rank 0 writes the summary
        return 0
    _seeds_table(out, cfg.preset, args.seeds, summaries, cfg.report_epochs)
    return 0


def _default_out(args: argparse.Namespace, preset: str) -> Path:
    data = getattr(args, "data", None)
    return Path(args.out or (Path("runs") / Path(data).stem if data else Path("runs") / preset.replace("/", "_")))


def _seeds_table(out: Path, preset: str, seeds: list[int], summaries: list[dict[str, Any]],
                 report_epochs: list[int]) -> None:
    """``OUT/seeds_summary.{md,json}``: mean ± std over the seeds' summaries; printed."""
    keys = ["final_test_acc", "val_selected_test_acc", *[f"test_acc_epoch_{e}" for e in report_epochs]]
    # Quantities no seed produced (no validation split, no report epoch reached) are left out
    # rather than shown as n/a rows.
    table = {k: mean_std([s.get(k) for s in summaries]) for k in keys
             if any(s.get(k) is not None for s in summaries)}
    det = [s["detection"]["auroc"] for s in summaries if s.get("detection")]
    if det:
        table["detection_auroc"] = mean_std(det)
    lines = [f"# {preset}, seeds {' '.join(map(str, seeds))}", "", "| quantity | mean ± std |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v, 4 if k == 'detection_auroc' else 2)} |" for k, v in table.items()]
    (out / "seeds_summary.md").write_text("\n".join(lines) + "\n")
    (out / "seeds_summary.json").write_text(json.dumps(
        {"seeds": seeds, "mean_std": table, "runs": summaries}, indent=2, allow_nan=True) + "\n")
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
    _single_process(f"{method.name} runs in one process (its flags are computed between its two trainings); run "
                    f"it without torchrun{hint}")
    experiment = _preset_name(args).partition("/")[0]
    pipeline, common = method.pipeline.with_options(args.overrides)
    cfg_first, cfg_retrain = pipeline.configs(experiment, [*common, *_shorthand(args)], method=method.name)
    for name, value in _table_options(args).items():
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
    kwargs = dict(method=method.name, resume=args.resume, overwrite=args.overwrite, **_train_kwargs(args))
    if not args.seeds:
        print(json.dumps(run_filter_pipeline(pipeline, cfg_first, cfg_retrain, out, **kwargs), indent=2,
                         allow_nan=True))
        return 0
    summaries = []
    for seed in args.seeds:
        record = run_filter_pipeline(pipeline, dataclasses.replace(cfg_first, seed=seed),
                                     dataclasses.replace(cfg_retrain, seed=seed), out / f"seed{seed}",
                                     label=f"seed {seed}, ", **kwargs)
        # The pipeline's own ranking is its first training's score, not the retraining's sigma.
        summaries.append({**record["summary"], "detection": record["detection"]})
    _seeds_table(out, cfg_retrain.preset, args.seeds, summaries, cfg_retrain.report_epochs)
    return 0


def _single_process(why: str) -> None:
    """Refuse a command that has no data-parallel path when torchrun started several processes."""
    from dataparams.config import ConfigError
    from dataparams.distributed import launched_world_size

    if launched_world_size() > 1:
        raise ConfigError(why)


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

    if args.method or args.config or args.data:
        raise ConfigError("--method, --config and --data apply to classification presets")
    # The detection trainer has no data-parallel path: every process would train the whole set
    # and write the same run directory.
    _single_process("the detection presets train in one process; torchrun runs the classification presets only")
    cfg = get_detection_preset(args.preset)
    shorthand = [f"data.root={args.data_dir}" if args.data_dir else "", f"optim.epochs={args.epochs}" if args.epochs else "",
                 f"seed={args.seed}" if args.seed is not None else "",
                 f"data.workers={args.workers}" if args.workers is not None else ""]
    cfg = apply_overrides(cfg, [*args.overrides, *(s for s in shorthand if s)])
    synthetic = args.preset.split("/")[0] if args.preset.startswith(("kitti-synth", "coco-synth")) else None
    if synthetic and not cfg.data.root:
        # The synthetic set is written on first use (seconds), from the Fashion-MNIST package.
        cfg.data.root = str(Path("runs") / "data" / synthetic)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
        return 0
    if getattr(args, "make_split", False):
        if synthetic or cfg.data.format != "kitti":
            raise ConfigError("--make-split writes a KITTI train/val split; this preset's data has its own")
        from dataparams.detection.kitti import make_split

        root = Path(cfg.data.root)
        wanted = [root / "ImageSets" / f"{n}.txt" for n in (cfg.data.train_split, cfg.data.val_split)]
        if not any(p.exists() for p in wanted):
            train_file, val_file = make_split(root, seed=cfg.seed, names=(cfg.data.train_split, cfg.data.val_split))
            print(f"wrote {train_file} ({len(train_file.read_text().split()):,} images) and {val_file} "
                  f"({len(val_file.read_text().split()):,}), seed {cfg.seed}")
    if synthetic == "kitti-synth":
        ensure_synthetic_data(cfg.data.root, SYNTHETIC_DATA)
    elif synthetic == "coco-synth":
        ensure_synthetic_coco(cfg.data.root, SYNTHETIC_DATA)
    out = Path(args.out or Path("runs") / args.preset.replace("/", "_"))
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


def cmd_presets(args: argparse.Namespace) -> int:
    from dataparams.detection.presets import get_detection_preset, list_detection_presets
    from dataparams.presets import get_preset, list_presets

    for name in list_presets():
        cfg = get_preset(name)
        if name.endswith("/baseline"):
            epochs = "epochs from the data" if cfg.optim.epochs == 0 else f"{cfg.optim.epochs} epochs"
            print(f"{name.split('/')[0]:<20} {cfg.data.dataset}, {cfg.model.arch}, {epochs}, "
                  f"noise {cfg.data.noise} {cfg.data.noise_rate:g}")
    print("\nvariants: baseline, class, instance, joint (and oracle for noisy experiments), e.g. "
          "--preset cifar100-noisy40/instance")
    print("\ndetection (sec. 3.3), one data parameter per box annotation:")
    for name in list_detection_presets():
        cfg = get_detection_preset(name)
        print(f"{name:<22} {cfg.model.arch}, {cfg.optim.epochs} epochs, box curriculum "
              f"{'on' if cfg.curriculum.instance_curriculum else 'off'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataparams.demo import run_demo

    run_demo(Path(args.out), data_dir=args.data_dir, epochs=args.epochs, seed=args.seed,
             overwrite=args.overwrite, **_train_kwargs(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dataparams.analysis.report import build_report
    from dataparams.analysis.runs_io import discover_runs
    from dataparams.detection.figures import is_detection_run, object_detection_report

    # Detection runs (sec. 3.3) get their own report: Figure 3, sigma per difficulty, KITTI AP.
    paths = discover_runs(args.run_dirs)
    detection = [p for p in paths if is_detection_run(p)]
    classification = [p for p in paths if not is_detection_run(p)]
    out = Path(args.out)
    if detection:
        det_out = out / "detection" if classification else out
        result = object_detection_report(detection, det_out)
        print(f"{len(result['figures'])} detection figure(s), report: {result['html']}")
    if classification or not detection:
        classes = None if args.classes is None else [int(c) if c.lstrip("-").isdigit() else c for c in args.classes]
        result = build_report(classification or args.run_dirs, out, classes=classes, samples=args.samples,
                              seed=args.seed, quiet=args.quiet)
        for item in result["skipped"]:
            print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
        print(f"{len(result['figures'])} figure(s), report: {result['html']}")
    return 0


def cmd_find_issues(args: argparse.Namespace) -> int:
    from dataparams.analysis.find_issues import find_issues
    from dataparams.config import ConfigError

    if (args.run_dir is None) == (args.data is None):
        raise ConfigError("give either a RUN_DIR or --data PATH")
    table = _table_options(args)  # refused before anything is read when --data is not a table
    # Each process would rank and write the same files; train with torchrun, rank the run alone.
    _single_process("find-issues runs in one process; under torchrun use `dataparams train --data PATH`, then "
                    "`dataparams find-issues RUN_DIR` without torchrun")
    if args.data is not None:
        from dataparams.issues import DEFAULT_SCORE, find_label_issues

        t0 = time.perf_counter()
        overrides = [*args.overrides, *([f"model.arch={args.model}"] if args.model else []),
                     *([f"model.weights={args.weights}"] if args.weights else [])]
        out = Path(args.out) if args.out else Path(f"{Path(args.data).stem}-issues")
        report, files = find_label_issues(args.data, out, score=args.score or DEFAULT_SCORE, rule=args.rule,
                                          holdout=args.holdout,
                                          overrides=overrides, seed=args.seed, device=args.device,
                                          overwrite=args.overwrite, quiet=args.quiet, **table)
        if args.cleaned_labels:
            files["cleaned_labels"] = report.write_cleaned_labels(out / f"cleaned_labels_{args.cleaned_labels}.csv",
                                                                  action=args.cleaned_labels)
        print(f"{args.data}: {report.n:,} samples ranked in {time.perf_counter() - t0:.1f}s")
    else:
        from dataparams.detection.figures import is_detection_run

        if is_detection_run(args.run_dir):  # per-box issues of a detection run (sec. 3.3)
            return _find_box_issues(args)
        report = find_issues(args.run_dir, score=args.score or "sigma", epoch=args.epoch, rule=args.rule)
        out = Path(args.out) if args.out else Path(args.run_dir) / "issues"
        files = report.save(out, cleaned_labels=args.cleaned_labels)
    summary = report.summary()
    print(f"{summary['run_dir']}: scored by {summary['score']} at epoch {summary['epoch']}")
    print(f"flagged {summary['n_flagged']} of {summary['n']} samples as mislabeled "
          f"({100 * (summary['fraction_flagged'] or 0):.1f}%, estimated without the noise rate)")
    if "n_corrupted" in summary:
        def pct(v: Any) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        auroc = "n/a" if summary["auroc"] is None else f"{summary['auroc']:.4f}"
        print(f"truth: {summary['n_corrupted']} corrupted; precision {pct(summary['precision'])}, "
              f"recall {pct(summary['recall'])}, AUROC {auroc}")
    for note in report.notes:
        print(f"note: {note}")
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def _find_box_issues(args: argparse.Namespace) -> int:
    """find-issues RUN_DIR on a detection run: box_issues.csv, image_issues.csv, summary.json, report.html."""
    from dataparams.config import ConfigError
    from dataparams.detection.issues import DEFAULT_BOX_SCORE, find_box_issues

    if args.cleaned_labels:
        raise ConfigError("--cleaned-labels is for classification runs; a detection run's flagged boxes are listed "
                          "in box_issues.csv (image_id, line)")
    report = find_box_issues(args.run_dir, score=args.score or DEFAULT_BOX_SCORE, epoch=args.epoch, rule=args.rule)
    out = Path(args.out) if args.out else Path(args.run_dir) / "issues"
    files = report.save(out)
    s = report.summary()
    print(f"{s['run_dir']}: detection run, boxes scored by {s['score']} at epoch {s['epoch']}")
    print(f"flagged {s['n_flagged']} of {s['n_boxes']} boxes ({100 * (s['fraction_flagged'] or 0):.1f}%, "
          f"{s['rule']} rule, estimated without the noise rate); {s['n_images_flagged']} of {s['n_images']} "
          "images have a flagged box")
    if "n_corrupted" in s:
        def fmt(v: Any, pct: bool = False) -> str:
            return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.4f}")

        print(f"truth: {s['n_corrupted']} boxes of another class; precision {fmt(s['precision'], True)}, "
              f"recall {fmt(s['recall'], True)}, AUROC {fmt(s['auroc'])}")
    for note in report.notes:
        print(f"note: {note}")
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def cmd_kitti_eval(args: argparse.Namespace) -> int:
    from dataparams.detection.kitti_eval import kitti_eval_command

    _, table = kitti_eval_command(args.gt_dir, args.det_dir, split=args.split, json_out=args.json)
    print(table)
    return 0


def _explain(e: Exception) -> str:
    """The library's message, with what to do about it in terms of this command line's flags."""
    from dataparams.data.base import DatasetNotFoundError
    from dataparams.runs import RunConflictError, RunExistsError

    if isinstance(e, RunExistsError):
        return f"{e}; pass --resume to continue it or --overwrite to start over"
    if isinstance(e, RunConflictError):
        return f"{e}; use another --out, or --overwrite to replace it"
    if isinstance(e, DatasetNotFoundError):
        return f"{e} (point --data-dir at the dataset's folder)"
    return str(e)


#: The library's errors about what the user gave (a name, a value, a file, the data, a run
#: directory), as (module, class): :func:`main` prints them as one line. Subclasses count too
#: (RunExistsError and RunConflictError are RunDirErrors). A class whose module was never imported
#: cannot have been raised, so none is imported to check.
USER_ERRORS = (
    ("dataparams.config", "ConfigError"),
    ("dataparams.runs.rundir", "RunDirError"),
    ("dataparams.data.base", "DatasetNotFoundError"),
    ("dataparams.data.base", "DatasetFormatError"),
    ("dataparams.data.userdata", "UserDataError"),
    ("dataparams.data.images", "ImageTooLarge"),
    ("dataparams.distributed.checkpoint", "ShardFileError"),
    ("dataparams.detection.kitti", "KittiFormatError"),
    ("dataparams.detection.coco", "CocoFormatError"),
)

#: How the library says which optional extra a missing package belongs to, e.g. the ImportError
#: "figures need matplotlib; install it with: pip install 'dataparams[report]'".
_EXTRA_HINT = "pip install 'dataparams["


def _is_user_error(e: Exception) -> bool:
    """Whether ``e`` is about the user's input (printed as ``error: ...``) rather than a bug (raised).

    That is one of :data:`USER_ERRORS`, a ``FileNotFoundError`` (an input path that does not
    exist), or an ``ImportError`` whose message names the optional extra to install; any other
    ``ImportError`` or ``ValueError`` is a bug and keeps its traceback.
    """
    if isinstance(e, FileNotFoundError):
        return True
    if isinstance(e, ImportError):
        return _EXTRA_HINT in str(e)
    classes = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)
    return isinstance(e, classes)


def main(argv: list[str] | None = None) -> int:
    """Run ``dataparams ARGV``; return the exit status: 0, 2 for a refused input (one line on
    stderr), 130 when interrupted. Any other exception propagates with its traceback."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; continue with --resume", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_user_error(e):
            raise
        # Bad input (names, values, files, missing optional packages): one line, no traceback.
        print(f"error: {_explain(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
