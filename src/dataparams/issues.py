"""From the user's raw data to ranked label issues, in one call.

Two entry points train the same way and share one implementation on an already loaded dataset:

* :func:`find_label_issues` (``dataparams find-issues --data PATH``) takes a path -- a CSV list, a
  folder of class folders, an ``.npz``, a ``.parquet`` file or a ``datasets`` ``save_to_disk``
  folder -- and returns the :class:`~dataparams.analysis.find_issues.IssueReport` and the files
  it wrote;
* :func:`label_issues`, exported as ``dataparams.find_label_issues``, takes the data where users
  hold it (arrays, a torch ``Dataset``, a pandas ``DataFrame``, a Hugging Face dataset, or any of
  those paths) and returns a pandas DataFrame shaped like cleanlab's
  ``Datalab.get_issues("label")``: one row per sample in the user's order, indexed by the user's
  ids (:func:`issues_frame`).

Both load the data (checking every file first: bad input stops them before anything is written),
train the instance curriculum on the labels as given (the ``user`` preset, with the model, epochs
and normalisation chosen from the data), rank every sample by what the curriculum learned (by
default its loss under its learned temperature averaged over training, :data:`DEFAULT_SCORE`,
which does not depend on guessing the epoch), flag the estimated number of wrong labels without
being told the noise rate, and write what ``dataparams find-issues RUN_DIR`` writes --
``issues.csv``, ``label_issues_mask.npy``, ``ranked_label_issues.npy``, ``summary.json`` -- plus
``report.html`` with the most suspect samples as thumbnails. The run directory (with the trained
model, ``run/model.pt``) is kept under the output folder.

Called again on the same data with the same settings, they reuse that run (continuing it if it
was interrupted); after an edited label, an added, removed or replaced file, another class list
or other settings they train again from scratch, replacing ``OUT/run``, and say why. The data is
compared by its fingerprint (:attr:`dataparams.data.userdata.UserData.fingerprint`), which the run
stores.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataparams.analysis.find_issues import IssueReport, find_issues
from dataparams.analysis.issues_html import write_issues_html
from dataparams.build import validate_config
from dataparams.config import TrainConfig, apply_overrides, config_to_dict
from dataparams.data.registry import LoadedDataset, load_dataset, user_dataset
from dataparams.data.userdata import UserData, UserDataError
from dataparams.experiment import train
from dataparams.presets import complete_user_config, get_preset
from dataparams.runs import RunConflictError, RunDir
from dataparams.runs.logger import write_line

if TYPE_CHECKING:
    import pandas

__all__ = ["DEFAULT_SCORE", "find_label_issues", "issues_frame", "label_issues"]

#: The ranking find-issues uses on user data: each sample's training loss under its learned
#: temperature (the loss of ``logits / sigma``), averaged over the epochs. On the tuning sets of
#: benchmarks/results/user_data_tuning.md it ranked label errors better than sigma at the last epoch
#: and than sigma integrated over training (AUROC 0.984 vs 0.925 and 0.970 on Fashion-MNIST images,
#: 0.989 vs 0.949 and 0.975 on the wine table): a wrong label keeps a high loss because its
#: temperature flattens its softmax, and averaging over training does not depend on the epoch.
DEFAULT_SCORE = "mean-loss"
_TOP = 60  # suspects shown in report.html


def find_label_issues(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str = "instance",
    score: str = DEFAULT_SCORE,
    rule: str = "auto",
    holdout: float = 0.0,
    overrides: Sequence[str] = (),
    seed: int = 1,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
    top: int = _TOP,
    label_column: str | None = None,
    image_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    id_column: str | None = None,
    split: str | None = None,
) -> tuple[IssueReport, dict[str, Path]]:
    """Train on ``data`` and write its ranked label issues into ``out``.

    Parameters
    ----------
    data : path-like
        A ``path,label`` CSV/TSV list, a folder of class folders, an ``.npz`` with ``X``, ``y``, a
        ``.parquet`` file, or a folder written by ``datasets`` ``save_to_disk``.
    out : path-like
        Output folder; the run directory is ``out/run``. A run already there is reused (and
        continued if it was interrupted) only when it was trained on the same data and settings;
        otherwise it is replaced by a new training. The user asks for a ranking of the data as
        it is now: the old run's ranking would describe labels that no longer exist.
    variant : str
        The ``user`` preset's variant (``instance`` or ``joint``: the score needs instance sigma).
    score : str
        One of :data:`dataparams.analysis.find_issues.SCORES`.
    rule : str
        How many to flag, one of :data:`dataparams.scores.FLAG_RULES` (default ``auto``: the
        per-class rule ``class-mean`` for the default loss score).
    holdout : float
        Fraction of the samples held out (with their given labels) to pick the epoch and report
        accuracy on; those samples are not ranked.
    overrides : sequence of str
        ``section.field=value`` config overrides (e.g. ``model.arch=resnet18``, ``optim.epochs=30``).
    seed, device, quiet
        As for ``dataparams train``.
    overwrite : bool
        Train again even when ``out/run`` holds a run on the same data and settings.
    top : int
        Suspects shown in ``report.html``.
    label_column, image_column, feature_columns, id_column, split : optional
        How a table is read (:func:`~dataparams.data.tables.load_table_data`; stored as the
        ``data.*`` fields of the same names). None: the loader's default. Refused for data that is
        not a table.

    Returns
    -------
    (IssueReport, dict)
        The report, and the written files by name (``issues_csv``, ``label_issues_mask``,
        ``ranked_label_issues``, ``summary``, ``report_html``, ``run_dir``).
    """
    check_out_outside_data(data, out)
    table = dict(label_column=label_column, image_column=image_column, id_column=id_column, split=split,
                 feature_columns=None if feature_columns is None else list(feature_columns))
    cfg = _user_config(variant, os.fspath(data), holdout=holdout, seed=seed, overrides=overrides, table=table)
    dataset = load_dataset(cfg.data, progress=not quiet)  # every file checked before anything is written
    return _train_and_rank(cfg, dataset, Path(out), score=score, rule=rule, device=device, overwrite=overwrite,
                           quiet=quiet, top=top, title=f"Label issues in {data}")


def label_issues(
    data: Any,
    *,
    labels: Any = None,
    label_column: Any = "label",
    image_column: Any = None,
    feature_columns: Any = None,
    id_column: Any = None,
    classes: Sequence[str] | None = None,
    split: str | None = None,
    out: str | os.PathLike[str] | None = None,
    holdout: float = 0.0,
    overrides: Sequence[str] = (),
    seed: int = 1,
    device: str = "auto",
    quiet: bool = True,
) -> pandas.DataFrame:
    """Find the wrong labels in data held in memory or on disk; one row per sample, as cleanlab's Datalab.

    Trains the instance curriculum on the labels as given, as ``dataparams find-issues --data``
    does (:func:`find_label_issues`), and returns what cleanlab's
    ``Datalab(...).get_issues("label")`` returns, plus the curriculum's own columns. Exported as
    ``dataparams.find_label_issues``.

    Notation: ``N`` samples, ``K`` classes.

    Parameters
    ----------
    data
        Anything :func:`~dataparams.data.tables.load_table_data` reads -- ``(X, y)`` arrays
        (numpy or torch; features (N, D) or images), ``X`` with ``labels=y``, a torch
        ``Dataset`` yielding ``(x, y)``, a pandas ``DataFrame``, a ``datasets.Dataset`` or
        ``DatasetDict``, a ``.parquet`` file, a ``save_to_disk`` folder -- or a path
        :func:`~dataparams.data.user.load_user_data` reads (a ``path,label`` CSV list, a folder of
        class folders, an ``.npz``).
    labels : array-like (N,), optional
        The labels of an ``X`` given alone.
    label_column, image_column, feature_columns, id_column
        How a table is read, as for :func:`~dataparams.data.tables.load_table_data`; refused (all
        but the default ``label_column="label"``) for a path that is not a table.
    classes : sequence of str, optional
        The class list and its order.
    split : str, optional
        The split of a ``DatasetDict`` (default ``"train"``).
    out : path-like, optional
        Where to keep the run and the files of :func:`find_label_issues` (``issues.csv``,
        ``report.html``, ..., and ``run/``), reused when called again on the same data and
        settings. None: a temporary folder, removed before returning.
    holdout : float
        Fraction of the samples held out (with their given labels) to pick the epoch and report
        accuracy on; those samples are not ranked and have no row.
    overrides : sequence of str
        ``section.field=value`` config overrides, e.g. ``("optim.epochs=30",)``.
    seed : int
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    quiet : bool
        No progress output (the default).

    Returns
    -------
    pandas.DataFrame
        One row per ranked sample, in the order the data gives them (not ranked), indexed by the
        user's ids: ``id_column``; for a file or folder the paths as a CSV list writes them or the
        npz ``ids`` (else ``"row i"``), the index named ``"id"``; for data held in memory without
        ``id_column``, the data's own row index (a DataFrame's index, else the positions 0..N-1),
        named ``"row"`` unless the DataFrame's index has a name. Columns:

        * ``is_label_issue`` (bool): flagged as a wrong label; how many are flagged is estimated
          without being told the noise rate;
        * ``label_score`` (float in [0, 1], high = clean): the probability of the given label
          that the sample's mean training loss under its temperature implies
          (:func:`dataparams.scores.label_quality_scores` of ``mean_loss``);
        * ``given_label``, ``predicted_label``: class names; ``given_label_index``,
          ``predicted_label_index``: their indices in ``[0, K)``;
        * ``rank``: 1 for the most suspect sample;
        * ``sigma``: the learned instance temperature at the last epoch;
        * ``mean_loss``: the training loss of ``logits / sigma`` averaged over the epochs;
        * ``score``: the ranking score (:data:`DEFAULT_SCORE`, larger = more suspect).

        ``attrs["score"]`` names the score and ``attrs["summary"]`` holds ``summary.json``'s
        contents (the estimate, the per-class table, the most confused pairs).

    Raises
    ------
    UserDataError
        Data that cannot be used as given (the message names the column or file and the row).
    ImportError
        Without pandas (``pip install 'dataparams[tables]'``).

    Examples
    --------
    >>> import numpy as np, dataparams
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> X = rng.normal(size=(100, 5)) + 3.0 * y[:, None]    # two separable classes
    >>> y[:5] = 1                                             # five wrong labels
    >>> issues = dataparams.find_label_issues((X, y), overrides=["optim.epochs=20"], device="cpu")
    >>> sorted(issues.sort_values("rank").index[:5])          # the five wrong labels rank first
    [0, 1, 2, 3, 4]
    >>> list(issues.columns[:4])
    ['is_label_issue', 'label_score', 'given_label', 'predicted_label']
    """
    try:
        import pandas  # noqa: F401
    except ImportError as e:
        raise ImportError("find_label_issues returns a pandas DataFrame: "
                          "pip install 'dataparams[tables]'") from e
    if out is None:
        with tempfile.TemporaryDirectory(prefix="dataparams-issues-") as tmp:
            return label_issues(data, labels=labels, label_column=label_column, image_column=image_column,
                                feature_columns=feature_columns, id_column=id_column, classes=classes,
                                split=split, out=tmp, holdout=holdout, overrides=overrides, seed=seed,
                                device=device, quiet=quiet)
    if isinstance(feature_columns, (str, int)):
        feature_columns = [feature_columns]
    if isinstance(data, (str, os.PathLike)):
        if labels is not None:
            raise UserDataError("labels= is for an X array; a file or folder holds its labels")
        # Through the config, so that the run records how to read its data again.
        table = dict(label_column=None if label_column == "label" else label_column,
                     image_column=image_column,
                     feature_columns=None if feature_columns is None else list(feature_columns),
                     id_column=id_column, split=split)
        check_out_outside_data(data, out)
        cfg = _user_config("instance", os.fspath(data), holdout=holdout, seed=seed, overrides=overrides,
                           table=table)
        dataset = load_dataset(cfg.data, progress=not quiet, classes=classes)
    else:
        from dataparams.data.tables import load_table_data

        cfg = _user_config("instance", None, holdout=holdout, seed=seed, overrides=overrides, table={})
        d = cfg.data
        dataset = user_dataset(load_table_data(
            data, labels=labels, label_column=label_column, image_column=image_column,
            feature_columns=feature_columns, id_column=id_column, classes=classes, split=split,
            image_size=d.image_size, channels=d.channels, max_image_size=d.max_image_size,
            memory_budget_bytes=None if d.memory_budget_mb is None else int(d.memory_budget_mb) << 20,
            progress=not quiet))
    user = dataset.user
    report, _ = _train_and_rank(cfg, dataset, Path(out), score=DEFAULT_SCORE, rule="auto", device=device,
                                overwrite=False,
                                quiet=quiet, top=_TOP, title=f"Label issues in {user.source}")
    frame = issues_frame(report, user)
    if id_column is not None:
        frame.index.name = id_column
    elif not isinstance(data, (str, os.PathLike)):
        # Data held in memory without ids: index the rows as the data does, so that
        # ``df.loc[issues.index[issues.is_label_issue]]`` or ``X[issues.index[issues.is_label_issue]]``
        # selects them (cleanlab's Datalab keeps the data's row index too).
        import pandas as pd

        # A table's repeated image file is one sample: positions among the samples, then rows.
        rows = np.sort(report.source_index)
        if user.rows is not None:
            rows = user.rows[rows]
        frame.index = data.index[rows] if isinstance(data, pd.DataFrame) else pd.Index(rows, dtype="int64")
        if frame.index.name is None:
            frame.index.name = "row"
    return frame


def issues_frame(report: IssueReport, user: UserData) -> pandas.DataFrame:
    """The report of a run on ``user`` as cleanlab's Datalab label issues: one row per ranked sample,
    in the user's order, indexed by the user's ids (columns as :func:`label_issues` returns)."""
    import pandas as pd

    order = np.argsort(report.source_index, kind="stable")
    source = report.source_index[order]
    given = report.given[order]
    classes = list(user.classes)

    def column(values: np.ndarray | None) -> np.ndarray:
        return np.full(len(order), np.nan) if values is None else np.asarray(values, dtype=np.float64)[order]

    if report.predicted is None:
        predicted = pd.array([pd.NA] * len(order), dtype="Int64")
        predicted_names: list[Any] = [None] * len(order)
    else:
        predicted = report.predicted[order]
        predicted_names = [classes[k] for k in predicted]
    frame = pd.DataFrame({
        "is_label_issue": report.is_flagged[order],
        "label_score": column(report.label_score),
        "given_label": [classes[k] for k in given],
        "predicted_label": predicted_names,
        "given_label_index": given,
        "predicted_label_index": predicted,
        "rank": report.rank[order],
        "sigma": column(report.sigma),
        "mean_loss": column(report.mean_loss),
        "score": column(report.score),
    }, index=pd.Index([user.ids[int(i)] for i in source], name="id"))
    frame.attrs["score"] = report.score_name
    frame.attrs["summary"] = {**report.summary(), "notes": list(report.notes)}
    return frame


def default_out_dir(data: str | os.PathLike[str], suffix: str = "-issues", *, under: str = "") -> Path:
    """Where a command on ``data`` writes when given no ``--out``: ``under`` / the data's name +
    ``suffix`` in the working directory (``find-issues``: ``shots-issues``; ``train``, under
    ``runs``: ``runs/shots``) -- the same beside the data folder instead when that would put it
    inside the folder (``--data .``), whose next read would take the outputs for images of a new
    class.

    The name is that of the resolved path, so ``.`` is named after the folder it is."""
    source = Path(data).resolve()
    name = source.stem if source.is_file() else source.name
    rel = Path(under) / f"{name}{suffix}"
    out = Path.cwd() / rel
    if source.is_dir() and out.resolve().is_relative_to(source):
        out = source.parent / rel
    return out


def check_out_outside_data(data: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Refuse an output folder inside a data folder: a folder of class folders would read the
    outputs (a histogram PNG, the run) as images of a new class the next time it is loaded. And
    one that is, or lies in, a file (:func:`~dataparams.runs.blocking_file`), before anything is read."""
    from dataparams.runs import blocking_file

    blocking = blocking_file(out)
    if blocking is not None:
        raise UserDataError(f"the output folder {out}: {blocking} is a file, not a folder")
    source = Path(data).resolve()
    if source.is_dir() and Path(out).resolve().is_relative_to(source):
        raise UserDataError(f"the output folder {out} is inside the data folder {data}: the next run would read "
                            "its files as data; choose a folder outside it")


def _user_config(variant: str, data_dir: str | None, *, holdout: float, seed: int, overrides: Sequence[str],
                 table: dict[str, Any]) -> TrainConfig:
    """The ``user/<variant>`` preset for data at ``data_dir`` (None: data held in memory), with the
    table options as ``data.*`` fields and the overrides applied; validated."""
    cfg = get_preset(f"user/{variant}")
    cfg.data.data_dir = data_dir
    for name, value in table.items():
        setattr(cfg.data, name, value)
    cfg = apply_overrides(cfg, [f"data.val_fraction={holdout}", f"seed={seed}", *overrides])
    validate_config(cfg)
    return cfg


def _refuse_other_data(run_dir: Path, new: dict[str, Any], changed: list[str]) -> None:
    """Refuse to replace a run on data elsewhere whose content differs too (two sets both called
    ``labels.csv`` ranked into the default ``labels-issues``): that is another data set, whose
    results would be lost, not an edit of this one, which trains again. The same data moved (its
    fingerprint unchanged) and data held in memory (no path) are not refused."""
    import json

    old = json.loads((run_dir / "config.json").read_text()).get("data", {}).get("data_dir")
    now = new.get("data", {}).get("data_dir")
    if not changed or old is None or now is None or Path(old).resolve() == Path(now).resolve():
        return
    data_changed = [c for c in changed if not c.startswith("settings differ")]
    if data_changed:
        raise RunConflictError(f"{run_dir.parent} holds the label issues of other data ({old}; now {now}, and "
                               f"{data_changed[0]}): give this data its own output folder, or replace them "
                               "(--overwrite; overwrite=True in dataparams.issues.find_label_issues)")


def _train_and_rank(cfg: TrainConfig, dataset: LoadedDataset, out: Path, *, score: str, rule: str, device: str,
                    overwrite: bool, quiet: bool, top: int,
                    title: str) -> tuple[IssueReport, dict[str, Path]]:
    """Train ``cfg`` on the loaded user ``dataset`` into ``out/run`` (or reuse the run there when it
    was trained on the same data and settings), rank its samples and write the files into ``out``."""
    run_dir = out / "run"
    resume = False
    if not overwrite and (run_dir / "config.json").exists():
        # The config train() will store, fingerprint of the data included: the only way to see
        # that a label was edited in place, which leaves every config field as it was.
        new = config_to_dict(complete_user_config(cfg, dataset.user))
        changed = RunDir(run_dir, defaults=config_to_dict(TrainConfig())).differences(new)
        _refuse_other_data(run_dir, new, changed)
        overwrite, resume = bool(changed), not changed
        if changed and not quiet:
            write_line(f"{run_dir} was trained on other data or settings ({'; '.join(changed)}); "
                       "training again")
    train(cfg, run_dir, overwrite=overwrite, resume=resume, device=device, quiet=quiet, tensorboard=False,
          dataset=dataset)
    report = find_issues(run_dir, score=score, dataset=dataset, rule=rule)
    files = report.save(out)
    user = dataset.user
    # The thumbnail is the image the model saw (decoded at the common side).
    thumbnail = user.thumbnail if user.kind == "images" else None
    files["report_html"] = write_issues_html(report, out / "report.html", thumbnail=thumbnail, top=top,
                                             title=title)
    files["run_dir"] = run_dir
    return report, files
