"""Find the mislabeled samples of a finished run, ranked by suspicion, cleanlab-style.

A sample whose label disagrees with what the rest of the data teaches gets a large instance
temperature sigma: raising sigma flattens its softmax and so the gradient its wrong label pushes
(Saxena, Tuzel & DeCoste, NeurIPS 2019, sec. 3.4 and Figure 4). Sorting by sigma, or by the loss
under it, therefore ranks the samples by how likely their label is wrong; how many to flag is
decided without being told the noise rate by the rule that suits the run's loss
(:func:`dataparams.scores.flag_by_rule`: by default a per-class rule on the label quality a loss
score implies, a two-component mixture on the log score for sigma, or for a
bounded loss such as GCE a fraction of its bound).

:func:`find_issues` reads a run directory and returns an :class:`IssueReport`, whose writers give
a CSV of every sample, cleanlab-compatible arrays (``label_issues_mask.npy`` like the default
return of ``cleanlab.filter.find_label_issues``, ``ranked_label_issues.npy`` like its
``return_indices_ranked_by=...``) and a cleaned label list to retrain on.

Notation: ``N`` training samples of the run, ``K`` classes. ``index`` is a sample's position in
the run (what snapshots and labels.npz use); ``source_index`` its position in the dataset's train
split.

``issues.csv`` also holds the columns of cleanlab's ``Datalab.get_issues("label")``:
``is_label_issue``, ``label_score`` (label quality in [0, 1], high = clean), and ``given_label`` /
``predicted_label`` as class names (their indices in ``given_label_index`` /
``predicted_label_index``); ``summary.json`` holds a per-class table (samples and flagged
samples per given class) and the most frequent given -> predicted confusions among the flagged.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.analysis.metrics import auroc, average_precision
from dataparams.analysis.runs_io import LoadedRun, load_run, load_run_dataset
from dataparams.config import ConfigError
from dataparams.runs import RunDirError
from dataparams.scores import SCORE_NAMES, flag_by_rule, label_quality_scores

__all__ = ["SCORES", "IssueReport", "find_issues"]

#: Ranking scores. ``sigma``: instance temperature at one epoch; ``sigma-mean``: the geometric mean
#: of the instance temperature over the epochs up to that one (log sigma integrated over
#: training, robust to the late drift as the network memorises); ``last-loss``: each sample's
#: training loss at its last visit; ``mean-loss``: its mean over the epochs (the small-loss
#: criterion). The first two need an instance (or joint) curriculum, the loss scores any run.
SCORES = SCORE_NAMES
_SIGMA_SCORES = ("sigma", "sigma-mean")
# Datasets read from image files: their samples have a path worth exporting.
_FILE_DATASETS = ("imagenet", "webvision", "webvision-mini", "filelist", "user")
#: Confused pairs listed in the summary.
_TOP_PAIRS = 5


@dataclass
class IssueReport:
    """Every training sample of a run, scored and ranked by how likely its label is wrong.

    All arrays have shape ``(N,)`` and are indexed by the sample's position in the run.

    Attributes
    ----------
    run_dir : Path
        The run directory read.
    score_name : str
        One of :data:`SCORES`.
    epoch : int
        The snapshot epoch the scores come from.
    score : ndarray of float
        The ranking score, larger = more suspicious.
    rank : ndarray of int
        1 for the most suspicious sample, ``N`` for the least; equal scores are ordered by the final
        model's probability of the given label (lowest first), then by index.
    mislabeled_prob : ndarray of float
        The mixture's posterior probability of the high component (under the bound rule, 0 or
        1); a sample is flagged (:attr:`is_flagged`) when it exceeds 0.5, the same rule that
        gives the estimated count.
    given : ndarray of int
        The labels the run trained on.
    predicted, predicted_prob, given_prob : ndarray or None
        The final model's predicted class and its probability, and the probability of the given
        label; ``None`` when the run wrote no ``predictions.npz``.
    sigma, loss : ndarray of float or None
        Instance sigma (``None`` without an instance curriculum) and last training loss.
    mean_loss : ndarray of float or None
        The training loss (of ``logits / sigma`` with data parameters) averaged over the epochs up
        to ``epoch``: the ``mean-loss`` score; ``None`` when the snapshots hold no loss.
    label_score : ndarray of float or None
        Label quality in [0, 1], high = clean, as cleanlab's ``label_score``: the probability of
        the given label that ``mean_loss`` implies under the run's loss
        (:func:`~dataparams.scores.label_quality_scores`); ``None`` without ``mean_loss``.
    source_index : ndarray of int
        Position in the dataset's train split.
    n_source : int or None
        The number of samples in the dataset's train split (held-out samples included), when the
        dataset was loaded: the length of the written ``label_issues_mask.npy``.
    paths : list of str
        Image file per sample for file-based datasets, else empty strings.
    class_names : list of str or None
        Names of the ``K`` classes, when the dataset could be loaded.
    true_label, is_corrupted : ndarray or None
        The truth, when the run knows it (it injected the noise); else ``None``.
    estimate : dict
        How the flags were decided (:func:`~dataparams.scores.flag_by_rule`): ``rule``,
        ``threshold`` and, for the mixture, its fit without the posterior.
    notes : list of str
        Caveats (predictions from the final model while the scores are from an earlier epoch, no
        class names, an unreliable mixture, ...).
    """

    run_dir: Path
    score_name: str
    epoch: int
    score: np.ndarray
    rank: np.ndarray
    mislabeled_prob: np.ndarray
    given: np.ndarray
    source_index: np.ndarray
    paths: list[str]
    predicted: np.ndarray | None = None
    predicted_prob: np.ndarray | None = None
    given_prob: np.ndarray | None = None
    sigma: np.ndarray | None = None
    loss: np.ndarray | None = None
    mean_loss: np.ndarray | None = None
    label_score: np.ndarray | None = None
    class_names: list[str] | None = None
    true_label: np.ndarray | None = None
    is_corrupted: np.ndarray | None = None
    estimate: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_source: int | None = None

    @property
    def n(self) -> int:
        return int(self.score.shape[0])

    @property
    def is_flagged(self) -> np.ndarray:
        """Flagged as mislabeled (bool (N,)): posterior of the high component > 0.5 (or the bound rule)."""
        return self.mislabeled_prob > 0.5

    @property
    def order(self) -> np.ndarray:
        """Sample indices from the most to the least suspicious, shape (N,)."""
        return np.argsort(self.rank, kind="stable")

    # -- cleanlab-compatible views ----------------------------------------------------------
    def label_issues_mask(self) -> np.ndarray:
        """Boolean mask (N,), True for flagged samples (cleanlab's ``find_label_issues`` default)."""
        return self.is_flagged

    def ranked_label_issues(self) -> np.ndarray:
        """Indices of the flagged samples, most suspicious first (``return_indices_ranked_by``)."""
        order = self.order
        return order[self.is_flagged[order]].astype(np.int64)

    def cleaned_labels(self, *, action: str = "relabel") -> tuple[np.ndarray, np.ndarray]:
        """Labels to retrain on.

        Parameters
        ----------
        action : {"relabel", "drop"}
            ``relabel``: flagged samples take the final model's predicted label; ``drop``: they
            are left out.

        Returns
        -------
        index : ndarray of int
            Positions in the run of the samples kept, ascending.
        labels : ndarray of int
            Their labels.
        """
        if action not in ("relabel", "drop"):
            raise ValueError(f"action must be 'relabel' or 'drop', got {action!r}")
        if action == "drop":
            keep = np.flatnonzero(~self.is_flagged)
            if keep.size == 0 and self.n:
                # A list to retrain on with no sample in it; as a filter pipeline refuses it too.
                raise ConfigError(f"every one of the {self.n:,} samples was flagged (rule {self.estimate.get('rule')}): "
                                  "a list without them would be empty; try another rule or score, or a longer "
                                  "training")
            return keep, self.given[keep].copy()
        if self.predicted is None:
            raise RunDirError(f"{self.run_dir / 'predictions.npz'} is missing: no predicted labels to relabel "
                              "with (the run did not finish?); use action='drop'")
        labels = np.where(self.is_flagged, self.predicted, self.given)
        return np.arange(self.n), labels.astype(np.int64)

    # -- summary and rows -------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """``n``, ``n_flagged``, ``threshold`` and, when the truth is known, how good the flags are.

        Returns
        -------
        dict
            ``run_dir``, ``score``, ``epoch``, ``n``, ``n_flagged`` (the estimated number of
            mislabeled samples), ``fraction_flagged``, ``threshold`` (smallest flagged score),
            ``separation`` and ``note`` of the mixture fit, ``per_class`` and ``confused_pairs``
            (:meth:`per_class`), ``arrays_index`` (what the written cleanlab arrays index: ``data``,
            the dataset's train split, or ``run``, the run's samples; :meth:`write_cleanlab`); with
            the truth also ``n_corrupted``, ``precision``, ``recall`` (of the flagged set), ``auroc``
            and ``average_precision`` (of the score). Undefined values are ``None``.
        """
        n_flagged = int(self.is_flagged.sum())
        out: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "score": self.score_name,
            "epoch": self.epoch,
            "n": self.n,
            "n_flagged": n_flagged,
            "rule": self.estimate.get("rule"),
            "fraction_flagged": n_flagged / self.n if self.n else None,
            "threshold": _finite_or_none(self.estimate.get("threshold")),
            "separation": _finite_or_none(self.estimate.get("separation")),
            "note": self.estimate.get("note"),
            "arrays_index": "data" if self._arrays_in_data() else "run",
            **self.per_class(),
        }
        if self.is_corrupted is not None:
            tp = int((self.is_flagged & self.is_corrupted).sum())
            n_bad = int(self.is_corrupted.sum())
            out.update(
                n_corrupted=n_bad,
                precision=tp / n_flagged if n_flagged else None,
                recall=tp / n_bad if n_bad else None,
                auroc=_finite_or_none(auroc(self.score, self.is_corrupted)),
                average_precision=_finite_or_none(average_precision(self.score, self.is_corrupted)),
            )
        return out

    def per_class(self, top: int = _TOP_PAIRS) -> dict[str, Any]:
        """Where the flagged samples are, by given class.

        Returns
        -------
        dict
            ``per_class``: one entry per class ``k`` of the ``K`` (all of :attr:`class_names`,
            else ``0..max`` of the labels), ``{"class": name, "index": k, "n": samples given
            k, "n_flagged": those flagged}``. ``confused_pairs``: the ``top`` most frequent
            (given, predicted) pairs among the flagged samples whose prediction is another class,
            ``{"given": name, "predicted": name, "given_index", "predicted_index", "count"}``,
            most frequent first (ties by given, then predicted index); ``None`` without
            predictions. Classes are named as in :meth:`rows` (the index when names are unknown).
        """
        k = len(self.class_names) if self.class_names is not None else int(self.given.max(initial=-1)) + 1
        n = np.bincount(self.given, minlength=k)
        flagged = np.bincount(self.given[self.is_flagged], minlength=k)
        table = [{"class": self._label(c), "index": c, "n": int(n[c]), "n_flagged": int(flagged[c])}
                 for c in range(len(n))]
        pairs = None
        if self.predicted is not None:
            confused = self.is_flagged & (self.predicted != self.given)
            counts = Counter(zip(self.given[confused].tolist(), self.predicted[confused].tolist()))
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
            pairs = [{"given": self._label(g), "predicted": self._label(p), "given_index": g,
                      "predicted_index": p, "count": c} for (g, p), c in ranked]
        return {"per_class": table, "confused_pairs": pairs}

    def _name(self, c: int) -> str:
        if self.class_names is not None and 0 <= c < len(self.class_names):
            return self.class_names[c]
        return ""

    def _label(self, c: int) -> str:
        # A class as Datalab's given_label / predicted_label name it: by name, else by index.
        return self._name(c) or str(c)

    def columns(self) -> list[str]:
        """The columns of :meth:`rows` and ``issues.csv``.

        ``is_label_issue`` (= ``is_flagged``), ``label_score``, ``given_label`` and
        ``predicted_label`` (class names; the index when the names are unknown) are those of
        cleanlab's ``Datalab.get_issues("label")``; ``*_label_index`` are the class indices and
        ``*_name`` the names again (empty when unknown), as earlier versions wrote them.
        """
        cols = ["rank", "score", "index", "source_index", "path", "is_label_issue", "label_score",
                "given_label", "predicted_label", "given_label_index", "predicted_label_index", "given_name",
                "predicted_name", "predicted_prob", "given_prob", "sigma", "loss", "mean_loss",
                "mislabeled_prob", "is_flagged"]
        if self.is_corrupted is not None:
            cols += ["true_label", "true_label_index", "true_name", "is_corrupted"]
        return cols

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sample (keys :meth:`columns`), most suspicious first. Missing values are ``""``."""

        def opt(arr: np.ndarray | None, i: int, cast: Any = float) -> Any:
            return "" if arr is None else cast(arr[i])

        out = []
        for i in self.order:
            i = int(i)
            given = int(self.given[i])
            pred = None if self.predicted is None else int(self.predicted[i])
            row: dict[str, Any] = {
                "rank": int(self.rank[i]),
                "score": float(self.score[i]),
                "index": i,
                "source_index": int(self.source_index[i]),
                "path": self.paths[i],
                "is_label_issue": bool(self.is_flagged[i]),
                "label_score": opt(self.label_score, i),
                "given_label": self._label(given),
                "predicted_label": "" if pred is None else self._label(pred),
                "given_label_index": given,
                "predicted_label_index": "" if pred is None else pred,
                "given_name": self._name(given),
                "predicted_name": "" if pred is None else self._name(pred),
                "predicted_prob": opt(self.predicted_prob, i),
                "given_prob": opt(self.given_prob, i),
                "sigma": opt(self.sigma, i),
                "loss": opt(self.loss, i),
                "mean_loss": opt(self.mean_loss, i),
                "mislabeled_prob": float(self.mislabeled_prob[i]),
                "is_flagged": bool(self.is_flagged[i]),
            }
            if self.is_corrupted is not None and self.true_label is not None:
                true = int(self.true_label[i])
                row.update(true_label=self._label(true), true_label_index=true, true_name=self._name(true),
                           is_corrupted=bool(self.is_corrupted[i]))
            out.append(row)
        return out

    # -- writers ----------------------------------------------------------------------------
    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Every sample, most suspicious first, one row each (columns: :meth:`columns`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = self._column_text()
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            # Column by column, then rows: a dict per sample (:meth:`rows`) costs seconds at 10^6.
            writer.writerows(zip(*columns.values()))
        return path

    def _column_text(self) -> dict[str, list[Any]]:
        """The :meth:`rows` as columns, in CSV text (floats as ``%.6g``, missing ones empty)."""
        o = np.asarray(self.order, dtype=np.int64)
        n = len(o)

        def num(arr: np.ndarray | None) -> list[str]:
            return [""] * n if arr is None else [f"{v:.6g}" for v in np.asarray(arr, dtype=np.float64)[o].tolist()]

        def cls(arr: np.ndarray | None, text: Any) -> list[Any]:
            if arr is None:
                return [""] * n
            k = int(np.max(arr)) + 1 if len(arr) else 0
            lookup = [text(c) for c in range(k)]
            return [lookup[c] for c in np.asarray(arr)[o].tolist()]

        def flag(arr: np.ndarray) -> list[bool]:
            return np.asarray(arr, dtype=bool)[o].tolist()

        ident = lambda c: c  # noqa: E731 -- the class index itself
        cols: dict[str, list[Any]] = {
            "rank": np.asarray(self.rank)[o].tolist(), "score": num(self.score), "index": o.tolist(),
            "source_index": np.asarray(self.source_index)[o].tolist(), "path": [self.paths[i] for i in o.tolist()],
            "is_label_issue": flag(self.is_flagged), "label_score": num(self.label_score),
            "given_label": cls(self.given, self._label), "predicted_label": cls(self.predicted, self._label),
            "given_label_index": cls(self.given, ident), "predicted_label_index": cls(self.predicted, ident),
            "given_name": cls(self.given, self._name), "predicted_name": cls(self.predicted, self._name),
            "predicted_prob": num(self.predicted_prob), "given_prob": num(self.given_prob), "sigma": num(self.sigma),
            "loss": num(self.loss), "mean_loss": num(self.mean_loss), "mislabeled_prob": num(self.mislabeled_prob),
            "is_flagged": flag(self.is_flagged),
        }
        if self.is_corrupted is not None and self.true_label is not None:
            cols.update(true_label=cls(self.true_label, self._label), true_label_index=cls(self.true_label, ident),
                        true_name=cls(self.true_label, self._name), is_corrupted=flag(self.is_corrupted))
        assert list(cols) == self.columns()
        return cols

    def _arrays_in_data(self) -> bool:
        """Whether the cleanlab arrays index the dataset's train split (else the run's samples). A
        dataset given by the caller that is not the run's (smaller than its indices) cannot place
        the samples."""
        source = np.asarray(self.source_index)
        return self.n_source is not None and (source.size == 0 or int(source.max()) < self.n_source)

    def write_cleanlab(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """``label_issues_mask.npy`` (bool) and ``ranked_label_issues.npy`` (int, flagged only).

        They index the dataset's train split -- the rows of the user's data, as cleanlab's arrays
        index the labels they were given -- when it is known (``n_source``): the mask has
        ``n_source`` entries, False for samples the run held out, and the ranked indices are
        ``source_index`` values. A run that holds out nothing gives the same arrays either way.
        Without the dataset they index the run's samples (:meth:`label_issues_mask`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        mask_file, ranked_file = out / "label_issues_mask.npy", out / "ranked_label_issues.npy"
        mask, ranked = self.label_issues_mask(), self.ranked_label_issues()
        source = np.asarray(self.source_index, dtype=np.int64)
        if self._arrays_in_data():
            assert self.n_source is not None
            mask = np.zeros(self.n_source, dtype=bool)
            mask[source[self.is_flagged]] = True
            ranked = source[ranked]
        np.save(mask_file, mask)
        np.save(ranked_file, ranked)
        return {"label_issues_mask": mask_file, "ranked_label_issues": ranked_file}

    def write_cleaned_labels(self, path: str | os.PathLike[str], *, action: str = "relabel") -> Path:
        """A CSV ``index,source_index,label`` to retrain on (see :meth:`cleaned_labels`)."""
        index, labels = self.cleaned_labels(action=action)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "source_index", "label"])
            for i, lab in zip(index, labels):
                writer.writerow([int(i), int(self.source_index[i]), int(lab)])
        return path

    def save(self, out_dir: str | os.PathLike[str], *, cleaned_labels: str | None = None) -> dict[str, Path]:
        """Write ``issues.csv``, the cleanlab arrays, ``summary.json`` and, when asked,
        ``cleaned_labels_<action>.csv`` into ``out_dir``; return the paths by name."""
        out = Path(out_dir)
        if cleaned_labels is not None:
            self.cleaned_labels(action=cleaned_labels)  # refused (an empty list) before anything is written
        # A cleaned label list of an earlier save that this one does not write again describes an
        # old ranking (labels edited since, or ranked otherwise); trained on, it would mislead.
        for old in out.glob("cleaned_labels_*.csv"):
            if cleaned_labels is None or old.name != f"cleaned_labels_{cleaned_labels}.csv":
                old.unlink()
        files = {"issues_csv": self.write_csv(out / "issues.csv"), **self.write_cleanlab(out)}
        if cleaned_labels is not None:
            files["cleaned_labels"] = self.write_cleaned_labels(out / f"cleaned_labels_{cleaned_labels}.csv",
                                                                action=cleaned_labels)
        summary = {**self.summary(), "notes": self.notes}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        files["summary"] = out / "summary.json"
        return files


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _descending_ranks(score: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    # Largest score first. Equal scores are common (sigma saturates at the clamp's upper bound for
    # many corrupted samples), so ties go to the larger ``tiebreak`` and then the lower index.
    keys = [np.arange(score.shape[0])]
    if tiebreak is not None:
        keys.append(-tiebreak)
    order = np.lexsort((*keys, -score))
    rank = np.empty(score.shape[0], dtype=np.int64)
    rank[order] = np.arange(1, score.shape[0] + 1)
    return rank


def _dataset_info(run: LoadedRun, notes: list[str],
                  ds: Any = None) -> tuple[list[str] | None, list[str] | None, int | None]:
    """Class names, every train-split sample's path (or the user's id) and the split's size."""
    if ds is None:
        ds, why = load_run_dataset(run.config)
        if ds is None:  # no data here is fine: the ranking does not need it
            notes.append(f"dataset {why}; no class names or file paths")
            return None, None, None
    n = len(ds.train.targets)
    if ds.user is not None:  # the user's own data: the paths (or ids) as the user wrote them
        return list(ds.train.classes), list(ds.user.ids), n
    return list(ds.train.classes), (list(ds.train.paths) if ds.train.paths is not None else None), n


def run_loss(config: dict[str, Any]) -> tuple[str, float | None]:
    """The per-sample loss a run's scores come from, ``("ce", None)`` or ``("gce", q)``, from its config."""
    curriculum = config.get("curriculum", {})
    if config.get("method", "ce") == "gce":
        return "gce", float(config.get("method_options", {}).get("q", 0.7))
    if curriculum.get("loss", "ce") == "gce":
        return "gce", float(curriculum.get("loss_q", 0.7))
    return "ce", None


def _mean_over_epochs(run: LoadedRun, key: str, upto: int, *, log: bool) -> np.ndarray:
    """Mean of snapshot array ``key`` over the epochs ``<= upto``; with ``log``, the geometric mean."""
    total, count = None, 0
    for e, snap in run.iter_snapshots(key):
        if e > upto:
            continue
        v = np.asarray(snap[key], dtype=np.float64)
        v = np.log(v) if log else v
        total = v if total is None else total + v
        count += 1
    if total is None:
        raise RunDirError(f"{run.path / 'snapshots'}: no readable snapshot up to epoch {upto} holds {key}")
    mean = total / count
    return np.exp(mean) if log else mean


def _mean_loss(run: LoadedRun, score: str, values: np.ndarray, epoch: int, n: int,
               notes: list[str]) -> np.ndarray | None:
    """The ``mean-loss`` score up to ``epoch`` (``values`` when that is the ranking score), or None
    with a note when the snapshots cannot give it: ``label_score`` is computed from it."""
    if score == "mean-loss":
        return values
    try:
        mean = _mean_over_epochs(run, "loss", epoch, log=False)
    except RunDirError:
        notes.append("no snapshot holds the loss: no label_score")
        return None
    if mean.shape != (n,) or not np.all(np.isfinite(mean)):
        notes.append(f"the mean loss has shape {mean.shape} or non-finite values: no label_score")
        return None
    return mean


def find_issues(
    run_dir: str | os.PathLike[str],
    *,
    score: str = "sigma",
    epoch: int | None = None,
    load_dataset: bool = True,
    dataset: Any = None,
    rule: str = "auto",
) -> IssueReport:
    """Rank the training samples of a run by how likely their label is wrong.

    Parameters
    ----------
    run_dir : path-like
        A run directory written by ``dataparams train``.
    score : {"sigma", "sigma-mean", "last-loss", "mean-loss"}, default "sigma"
        See :data:`SCORES`. The sigma scores need a run with the instance or joint curriculum;
        the loss scores work for any run.
    epoch : int, optional
        Use the snapshot of this (1-based) epoch (the mean scores: the epochs up to it); default
        the last one holding the score.
    load_dataset : bool, default True
        Load the dataset for class names and, for image-file datasets, file paths. Without it
        (or when it cannot be loaded) those columns are empty.
    dataset : LoadedDataset, optional
        The run's dataset, already loaded (saves reading it again).
    rule : {"auto", "class-mean", "mixture", "bound", "confident"}, default "auto"
        How many to flag (:func:`dataparams.scores.flag_by_rule`): for a loss score, ``auto`` is
        the bound rule on a run trained on a bounded loss (GCE) and ``class-mean`` otherwise; for
        a sigma score the mixture. ``confident`` uses the class probabilities averaged over
        training that single-process runs keep (``mean_probs`` in predictions.npz).

    Returns
    -------
    IssueReport

    Raises
    ------
    RunDirError
        The run cannot be read, has no snapshot of ``epoch``, or has no instance sigma for
        ``score="sigma"``; the message names the file or says which variant to train. A
        detection run is refused with a pointer to
        :func:`dataparams.detection.issues.find_box_issues`.
    ValueError
        ``score`` is not one of :data:`SCORES`.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    from dataparams.detection.figures import is_detection_run

    if is_detection_run(run_dir):  # one sigma per box, not per sample: ranked by dataparams.detection.issues
        raise RunDirError(f"{run_dir} is a detection run: rank its boxes with "
                          "dataparams.detection.issues.find_box_issues (what `dataparams find-issues RUN_DIR` does)")
    run = load_run(run_dir)
    notes = list(run.warnings)
    if run.labels is None:
        raise RunDirError(f"{run.path / 'labels.npz'} is missing or unreadable: the labels are needed to rank")
    key = "instance_sigma" if score in _SIGMA_SCORES else "loss"
    if score in _SIGMA_SCORES and not run.instance_curriculum:
        raise RunDirError(
            f"{run.path} was trained without an instance curriculum (curriculum.instance_curriculum is false in "
            "its config.json), so it has no instance sigma to rank by; train the instance or joint variant, "
            "or rank by a loss score (last-loss, mean-loss)"
        )
    if epoch is None:
        last = run.last_snapshot(key)
        if last is None:
            raise RunDirError(f"{run.path / 'snapshots'}: no readable snapshot holds {key}")
        epoch, snap = last
    else:
        snap = run.snapshot(int(epoch))
        if key not in snap:
            raise RunDirError(f"{run.path / 'snapshots' / f'epoch_{int(epoch):04d}.npz'} holds no {key}")
    n = int(run.labels["given"].shape[0])
    sigma = np.asarray(snap["instance_sigma"], dtype=np.float64) if "instance_sigma" in snap else None
    loss = np.asarray(snap["loss"], dtype=np.float64) if "loss" in snap else None
    if score in ("sigma", "last-loss"):
        values = sigma if score == "sigma" else loss
    else:
        values = _mean_over_epochs(run, key, int(epoch), log=score == "sigma-mean")
    assert values is not None
    if values.shape != (n,):
        raise RunDirError(f"{run.path / 'snapshots'}: {key} has shape {values.shape}, labels.npz has {n} samples")
    if not np.all(np.isfinite(values)):
        raise RunDirError(f"{run.path / 'snapshots'}: {key} of epoch {epoch} holds non-finite values (the training "
                          "diverged: see train_loss in metrics.jsonl; a smaller optim.lr may train)")

    # The flag rule follows the loss the scores come from: a bounded loss (GCE) flags by a fraction
    # of its bound, other loss scores by the per-class rule, sigma by the mixture (dataparams.scores).
    loss_kind, q = run_loss(run.config)
    pred = run.predictions
    probs = None if pred is None else pred.get("mean_probs")
    if rule == "auto" and score in _SIGMA_SCORES:
        rule = "mixture"  # a temperature is not a loss: it implies no label quality and no bound
    flags = flag_by_rule(values, labels=run.labels["given"], probs=probs, rule=rule, loss=loss_kind, q=q)
    est = {**flags["estimate"], "rule": flags["rule"], "threshold": flags["threshold"]}
    if est.get("note"):
        notes.append(f"mislabeled-count estimate: {est['note']}")

    if pred is None:
        notes.append("no predictions.npz: predicted labels unknown, relabelling unavailable")
    elif epoch != max(run.snapshot_epochs, default=epoch):
        notes.append(f"scores are from epoch {epoch}, predicted labels from the final model")

    mean_loss, label_score = _mean_loss(run, score, values, int(epoch), n, notes), None
    if mean_loss is not None:
        label_score = label_quality_scores(mean_loss, loss=loss_kind, q=q)

    class_names, paths, n_source = (None, None, None)
    if load_dataset:
        class_names, all_paths, n_source = _dataset_info(run, notes, dataset)
        src = run.labels["source_index"]
        if all_paths is not None:
            paths = [all_paths[int(i)] for i in src]
    elif run.config.get("data", {}).get("dataset") in _FILE_DATASETS:
        notes.append("dataset not loaded: no file paths")

    corrupted = run.is_corrupted if run.knows_truth else None
    return IssueReport(
        run_dir=run.path,
        score_name=score,
        epoch=int(epoch),
        score=values,
        # Ties (e.g. sigma at the clamp) are ordered by how unlikely the final model finds the
        # given label.
        rank=_descending_ranks(values, None if pred is None else -pred["given_prob"].astype(np.float64)),
        mislabeled_prob=flags["posterior"],
        given=run.labels["given"].astype(np.int64),
        source_index=run.labels["source_index"].astype(np.int64),
        paths=paths if paths is not None else [""] * n,
        predicted=None if pred is None else pred["predicted"].astype(np.int64),
        predicted_prob=None if pred is None else pred["predicted_prob"].astype(np.float64),
        given_prob=None if pred is None else pred["given_prob"].astype(np.float64),
        sigma=sigma,
        loss=loss,
        mean_loss=mean_loss,
        label_score=label_score,
        class_names=class_names,
        true_label=run.labels["clean"].astype(np.int64) if corrupted is not None else None,
        is_corrupted=corrupted,
        estimate=est,
        n_source=n_source,
        # With what reading the snapshots added: a snapshot skipped as unreadable (a damaged
        # file, a missing shard file of a sharded run), named, and why an earlier epoch was used.
        notes=[*notes, *(w for w in run.warnings if w not in notes)],
    )
