"""Which samples a run trains on, and with which labels: subset, noise, splits, label files.

:func:`resolve_labels` is the part of a run's data preparation that needs labels only -- no
pixels, no loaders -- so that the bench can plan its cross-validation folds and threshold sets
from it. It applies, in this order: the ``subset`` (first n samples), the dataset's shipped noisy
labels or a noise model (:mod:`dataparams.noise`), the seeded held-out split
(:func:`~dataparams.data.splits.holdout_split`, carved from the noisy training data a user has),
the oracle filter, ``keep_file``, ``labels_file`` and AUM's ``threshold_file``.

Notation: ``N`` samples in the dataset's training split (after ``subset``), ``K`` classes. A
*source index* is a position in the dataset's training split; the run's own sample index
``0..n-1`` (what data parameters and snapshots use) is a position in ``source_index``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataparams.config import ConfigError, DataConfig, TrainConfig
from dataparams.data.splits import holdout_split
from dataparams.noise import apply_noise

__all__ = ["TrainingLabels", "load_training_labels", "load_transition", "noise_reference", "reference_probabilities",
           "resolve_labels", "split_noise_reference"]


@dataclass
class TrainingLabels:
    """The labels of one run, over the dataset's training split.

    Attributes
    ----------
    labels : ndarray (N,) int64
        The label every training-split sample carries for this run (noisy where corrupted,
        replaced by ``labels_file``, ``K - 1`` for AUM's threshold samples).
    clean : ndarray (N,) int64
        The dataset's own labels.
    corrupted : ndarray (N,) bool
        Whether a sample's label differs from the dataset's, by noise or ``labels_file``; AUM's
        threshold samples are relabelled on purpose and do not count.
    train_index, val_index, heldout_index : ndarray of int64
        Source indices of the samples trained on, of the held-out validation split (noisy
        labels), and of the training-pool samples left out by ``keep_file`` (predicted at the
        end).
    num_classes : int
        ``K``, including AUM's extra threshold class.
    """

    labels: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    train_index: np.ndarray
    val_index: np.ndarray
    heldout_index: np.ndarray
    num_classes: int

    @property
    def given(self) -> np.ndarray:
        """Labels of the training samples, in run order, (n,)."""
        return self.labels[self.train_index]

    @property
    def is_corrupted(self) -> np.ndarray:
        """Whether each training sample's label differs from the dataset's, (n,) bool."""
        return self.corrupted[self.train_index]

    @property
    def num_train(self) -> int:
        return len(self.train_index)


def _load_index_file(path: str, n: int, what: str) -> np.ndarray:
    try:
        idx = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: cannot read {path} ({e})") from None
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ConfigError(f"{what}: {path} must hold a 1-D integer array of sample indices")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise ConfigError(f"{what}: {path} holds indices outside [0, {n})")
    return idx.astype(np.int64)


def _load_labels_file(path: str, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"data.labels_file: cannot read {path} ({e})") from None
    if not rows or not {"source_index", "label"} <= set(rows[0]):
        raise ConfigError(f"data.labels_file: {path} needs a header with source_index and label columns")
    try:
        src = np.array([int(r["source_index"]) for r in rows], dtype=np.int64)
        lab = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"data.labels_file: {path} holds a non-integer source_index or label") from None
    if src.min() < 0 or src.max() >= n or lab.min() < 0 or lab.max() >= k:
        raise ConfigError(f"data.labels_file: {path} holds indices outside [0, {n}) or labels outside [0, {k})")
    return src, lab


def load_transition(path: str, num_classes: int) -> np.ndarray:
    """The (K, K) matrix ``P(noisy = j | clean = i)`` of ``data.noise_transition``.

    A ``.npy`` file, or a text file (``.csv``, ``.txt``) with one row per line, separated by
    commas or whitespace. Rows are checked by :func:`dataparams.noise.apply_noise`.
    """
    p = Path(path)
    try:
        if p.suffix == ".npy":
            t = np.load(p, allow_pickle=False)
        else:
            text = p.read_text().replace(",", " ")
            t = np.array([[float(v) for v in line.split()] for line in text.splitlines() if line.strip()])
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.noise_transition: cannot read {path} ({e})") from None
    if t.shape != (num_classes, num_classes):
        raise ConfigError(f"data.noise_transition: {path} holds a {t.shape} matrix; the data has "
                          f"{num_classes} classes, so it must be ({num_classes}, {num_classes})")
    return t.astype(np.float64)


def reference_probabilities(inputs: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = 2,
                            seed: int = 0, l2: float = 1e-3, max_iter: int = 100) -> np.ndarray:
    """Out-of-sample class probabilities of a linear reference model, for instance-dependent noise.

    A multinomial logistic regression on the standardised, flattened inputs, cross-fitted: the
    samples are split into ``folds`` seeded folds and each fold is predicted by the model fitted on
    the others with the clean labels, so a probability says how much the image looks like each
    class rather than which label it was shown. A linear model is cheap (seconds for 10,000
    Fashion-MNIST images on two cores) and confuses what looks alike at the pixel level (shirt,
    T-shirt, pullover and coat; sandal, sneaker and ankle boot), which is what the noise model
    needs; Chen et al. (AAAI 2021) use a trained CNN instead.

    Parameters
    ----------
    inputs : ndarray (N, ...) numeric
        Images (uint8 pixels) or feature vectors.
    labels : ndarray (N,) int
        Clean labels in ``[0, K)``.
    num_classes : int
    folds : int, default 2
    seed : int, default 0
        Fold assignment and nothing else: the fit itself (L-BFGS from zeros) is deterministic.
    l2 : float
        Weight of the squared-weight penalty (on the mean loss).
    max_iter : int
        L-BFGS iterations per fold.

    Returns
    -------
    ndarray (N, K) float64
    """
    import torch

    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if folds < 2 or n < folds:
        raise ValueError(f"need folds >= 2 and at least that many samples, got folds={folds}, n={n}")
    x = torch.as_tensor(np.asarray(inputs).reshape(n, -1), dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    x = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)  # the bias as a constant feature
    yt = torch.as_tensor(y)
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.zeros((n, num_classes), dtype=np.float64)
    for f in range(folds):
        fit, pred = torch.as_tensor(fold != f), torch.as_tensor(fold == f)
        w = _fit_softmax_regression(x[fit], yt[fit], num_classes, l2=l2, max_iter=max_iter)
        with torch.no_grad():
            out[pred.numpy()] = torch.softmax(x[pred] @ w, dim=1).numpy()
    return out


def _fit_softmax_regression(x: Any, y: Any, k: int, *, l2: float, max_iter: int) -> Any:
    """Weights (D, K) of an L2-penalised multinomial logistic regression, by L-BFGS from zeros."""
    import torch

    w = torch.zeros(x.shape[1], k, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # The last row is the bias (a constant feature), left unpenalised.
        loss = torch.nn.functional.cross_entropy(x @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def noise_reference(d: DataConfig, inputs: np.ndarray | None, clean: np.ndarray,
                    num_classes: int) -> np.ndarray | None:
    """The (n, K) reference probabilities ``data.noise=instance`` needs, over the first ``n`` samples.

    ``n`` is ``data.subset`` (or every sample). Read from ``data.noise_reference`` when set, else
    fitted by :func:`reference_probabilities` on ``inputs`` (the split's images or features);
    None for every other noise model.

    Raises
    ------
    ConfigError
        The file cannot be read or does not fit the data, or there are no in-memory inputs to fit
        on (image files read batch by batch: give ``data.noise_reference``).
    """
    if d.noise != "instance":
        if d.noise_reference:
            raise ConfigError("data.noise_reference applies to data.noise=instance only")
        return None
    n = len(clean) if d.subset is None else min(int(d.subset), len(clean))
    if d.noise_reference:
        try:
            ref = np.load(d.noise_reference, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.noise_reference: cannot read {d.noise_reference} ({e})") from None
        if ref.shape != (n, num_classes):
            raise ConfigError(f"data.noise_reference: {d.noise_reference} holds a {ref.shape} array; the training "
                              f"split has {n} samples and {num_classes} classes")
        return ref.astype(np.float64)
    if inputs is None:
        raise ConfigError("data.noise=instance needs a reference model's probabilities: this dataset is read from "
                          "image files batch by batch, so give data.noise_reference (a .npy of (N, K) probabilities)")
    return reference_probabilities(inputs[:n], np.asarray(clean)[:n], num_classes)


def resolve_labels(d: DataConfig, clean: np.ndarray, num_classes: int, *, seed: int,
                   shipped: np.ndarray | None = None, name: str = "",
                   reference: np.ndarray | None = None) -> TrainingLabels:
    """Apply ``subset``, noise, the validation split, oracle and label files to ``clean``.

    Parameters
    ----------
    d : DataConfig
    clean : ndarray (N0,) int
        The dataset's labels of its whole training split (before ``subset``).
    num_classes : int
    seed : int
        The run's seed: noise is drawn from ``d.noise_seed`` when set, else from it.
    shipped : ndarray (N0,), optional
        Noisy labels distributed with the dataset (CIFAR-N); they replace the noise model.
    name : str
        The dataset's name, for messages.
    reference : ndarray (n, K), optional
        For ``noise=instance``: :func:`noise_reference` of the same data.

    Raises
    ------
    ConfigError
        A bad rate or fraction, a label file that does not fit the data, no sample left.
    """
    if not 0.0 <= d.noise_rate <= 1.0:
        raise ConfigError(f"data.noise_rate must be in [0, 1], got {d.noise_rate}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    clean = np.asarray(clean, dtype=np.int64)
    if d.subset is not None:
        if d.subset < 1:
            raise ConfigError(f"data.subset must be >= 1, got {d.subset}")
        clean = clean[: d.subset]
        shipped = None if shipped is None else np.asarray(shipped)[: d.subset]
    n, k = len(clean), num_classes
    if shipped is not None:
        if d.noise != "none":
            raise ConfigError(f"{name} ships its own noisy labels; leave data.noise at 'none'")
        labels = np.asarray(shipped, dtype=np.int64)
    else:
        transition = None
        if d.noise == "transition":
            if not d.noise_transition:
                raise ConfigError("data.noise=transition needs data.noise_transition: a file with the (K, K) matrix "
                                  "P(noisy | clean)")
            transition = load_transition(d.noise_transition, k)
        elif d.noise_transition:
            raise ConfigError("data.noise_transition applies to data.noise=transition only")
        try:
            if d.noise == "none":
                # The given labels are the clean ones: one array, not a copy (8 N bytes less on
                # every process); every change below copies before it writes.
                labels = clean
            elif d.noise == "instance" and reference is None:
                raise ConfigError("data.noise=instance needs the reference probabilities (noise_reference)")
            else:
                labels, _ = apply_noise(d.noise, clean, d.noise_rate, k,
                                        seed=seed if d.noise_seed is None else d.noise_seed, transition=transition,
                                        reference_probs=reference if d.noise == "instance" else None)
        except ValueError as e:
            raise ConfigError(f"data.noise={d.noise}: {e}") from None
    train_idx, val_idx = holdout_split(n, d.val_fraction, seed=d.val_seed)
    if d.oracle:
        train_idx = train_idx[labels[train_idx] == clean[train_idx]]
    heldout_idx = np.zeros(0, dtype=np.int64)
    if d.keep_file:
        keep = np.isin(train_idx, _load_index_file(d.keep_file, n, "data.keep_file"))
        train_idx, heldout_idx = train_idx[keep], train_idx[~keep]
    if d.labels_file:
        # A cleaned label list (e.g. from find-issues' cleaned labels): train on the listed
        # samples with the listed labels; the truth mask follows the new labels.
        src, lab = _load_labels_file(d.labels_file, n, k)
        labels = labels.copy()
        labels[src] = lab
        train_idx = train_idx[np.isin(train_idx, src)]
    corrupted = labels != clean
    if d.threshold_file:
        # AUM's threshold samples: a fake class K that no sample truly belongs to.
        thr = _load_index_file(d.threshold_file, n, "data.threshold_file")
        labels = labels.copy()
        labels[thr] = k
        k += 1
    if len(train_idx) == 0:
        raise ConfigError("no training samples left after the subset, validation split and oracle filter")
    return TrainingLabels(labels=labels, clean=clean, corrupted=corrupted, train_index=train_idx, val_index=val_idx,
                          heldout_index=heldout_idx, num_classes=k)


def load_training_labels(cfg: TrainConfig) -> TrainingLabels:
    """The :class:`TrainingLabels` of ``cfg``'s run, without building any loader."""
    from dataparams.data.registry import load_dataset

    dataset = load_dataset(cfg.data)
    return resolve_labels(cfg.data, dataset.train.targets, dataset.train.num_classes, seed=cfg.seed,
                          shipped=dataset.shipped_noisy_labels, name=cfg.data.dataset,
                          reference=split_noise_reference(cfg.data, dataset.train))


def split_noise_reference(d: DataConfig, split: Any) -> np.ndarray | None:
    """:func:`noise_reference` for a :class:`~dataparams.data.base.Split` (its in-memory inputs, if any)."""
    inputs = split.features if split.features is not None else split.images
    return noise_reference(d, inputs, split.targets, split.num_classes)
