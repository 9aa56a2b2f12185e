"""Every training method by name: the one table that the command line, training and the bench read.

Two levels, in one place:

* :data:`OBJECTIVES` -- what ``TrainConfig.method`` may name: how a minibatch becomes a loss
  (``ce`` is cross-entropy with data parameters as ``TrainConfig.curriculum`` says, i.e. the
  baseline when the curriculum is off), with each objective's ``method_options`` and defaults;
* :data:`METHODS` -- the methods a user compares (``dataparams train --method``, and the bench
  in ``benchmarks/bench.py``): an objective on a preset variant, with the number of trainings it
  costs and the per-sample score it ranks suspects by. Multi-stage methods carry a ``pipeline``:
  the ``dp-*filter`` methods a :class:`~dataparams.methods.pipelines.FilterPipeline` (its
  settings as data; run by :func:`~dataparams.methods.pipelines.run_filter_pipeline`, ``dataparams
  train`` and the bench), ``cleanlab`` and ``aum`` the name of a pipeline that only the bench
  runs. The settings each method is tuned over belong to the bench (``benchmarks/bench.py``,
  ``TUNING``), not to the library.

``method_options`` keys (with defaults) are those of :data:`OBJECTIVES`:

* ``gce``: ``q`` (0.7, the GCE paper's value);
* ``sce``: ``alpha`` (0.1), ``beta`` (1.0), ``A`` (-4) -- the SCE paper's CIFAR-10 values;
* ``superloss``: ``lam`` (1.0), ``tau`` ("ema" or a number, default ``log K``);
* ``coteaching``: ``forget_rate`` (0.2; the co-teaching paper sets it to the known noise rate),
  ``num_gradual`` (10), ``exponent`` (1.0);
* ``ce`` and ``aum``: none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dataparams.config import ConfigError, TrainConfig
from dataparams.methods.pipelines import FilterPipeline
from dataparams.objectives import DataParameterObjective, LossObjective, Objective
from dataparams.parameters import DataParameters

__all__ = ["DATA_DEFAULT_METHOD", "DATA_DEFAULT_WHY", "METHODS", "OBJECTIVES", "Method", "ObjectiveSpec", "build_objective", "get_method"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """A value of ``TrainConfig.method``: its summary and its ``method_options`` defaults."""

    name: str
    summary: str
    options: dict[str, Any] = field(default_factory=dict)


OBJECTIVES: dict[str, ObjectiveSpec] = {
    s.name: s
    for s in (
        ObjectiveSpec("ce", "cross-entropy, with data parameters when the curriculum is on (the paper's method)"),
        ObjectiveSpec("gce", "generalized cross-entropy (Zhang & Sabuncu 2018)", {"q": 0.7}),
        ObjectiveSpec("sce", "symmetric cross-entropy (Wang et al. 2019)", {"alpha": 0.1, "beta": 1.0, "A": -4.0}),
        ObjectiveSpec("superloss", "SuperLoss (Castells et al. 2020)", {"lam": 1.0, "tau": None}),
        ObjectiveSpec("coteaching", "co-teaching (Han et al. 2018), two networks",
                      {"forget_rate": 0.2, "num_gradual": 10, "exponent": 1.0}),
        ObjectiveSpec("aum", "cross-entropy recording the area under the margin (Pleiss et al. 2020)"),
    )
}


@dataclass(frozen=True)
class Method:
    """A method to compare: an objective on a preset variant.

    Attributes
    ----------
    name : str
    summary : str
    variant : str
        The preset variant the method starts from (``baseline``, ``instance``, ...).
    overrides : tuple of str
        Config overrides on top of the variant (e.g. ``method=gce``).
    trainings : int
        Full trainings one run of the method costs.
    score : str or None
        The per-sample suspicion score its detection numbers use: ``sigma`` (instance
        temperature), ``superloss`` (-log confidence), ``mean-loss`` (the small-loss criterion:
        mean training loss over the epochs so far), ``cleanlab`` (1 - label quality of K-fold
        out-of-sample probabilities), ``aum`` (-AUM).
    pipeline : FilterPipeline, str or None
        None for one training; a :class:`~dataparams.methods.pipelines.FilterPipeline` for the
        dp-filter family (its settings before any tuning setting applies); the name of a
        bench-only pipeline (``cleanlab``, ``aum``).
    """

    name: str
    summary: str
    variant: str = "baseline"
    overrides: tuple[str, ...] = ()
    trainings: int = 1
    score: str | None = None
    pipeline: FilterPipeline | str | None = None


def _opts(**kw: Any) -> str:
    import json

    return f"method_options={json.dumps(kw)}"


# dp-gce-filter's first stage and flagging rule, fixed on the seed-100 cells of all four noise
# settings before its retraining was tuned (benchmarks/results/fmnist_methods/variants.md).
_GCE_FILTER = FilterPipeline(first="dp-gce", score="mean-loss", rule="bound", fraction=0.2)
# The find-issues ranking and flags (dp-instance, mean loss under sigma, per-class rule), then a
# plain retraining on the kept samples, as cleanlab's find-then-retrain does with its flags.
_CM_FILTER = FilterPipeline(first="dp-instance", score="mean-loss", rule="class-mean", retrain="baseline")
# The same flags on dp-gce's ranking (its mean GCE loss, whose label quality the per-class rule
# reads with the GCE bound), then a plain retraining. Development runs on seed-100 cells (never
# reported; benchmarks/results/fmnist_methods/variants.md, "dp-gce first, per-class flags") were
# the reason to add it. In the bench grid since (results.md): first or within one std in 5 of 10
# cells, at most 1.32 points behind; the default of `train --data` (DATA_DEFAULT_WHY says why).
_GCE_CM_FILTER = FilterPipeline(first="dp-gce", score="mean-loss", rule="class-mean", retrain="baseline")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("baseline", "cross-entropy", score="mean-loss"),
        Method("oracle", "cross-entropy on the clean samples only", variant="oracle"),
        Method("dp-class", "data parameters, class curriculum (sec. 2.1)", variant="class"),
        Method("dp-instance", "data parameters, instance curriculum (sec. 2.2)", variant="instance", score="sigma"),
        Method("dp-joint", "data parameters, joint curriculum (sec. 2.2)", variant="joint", score="sigma"),
        Method("superloss", OBJECTIVES["superloss"].summary, overrides=("method=superloss",), score="superloss"),
        Method("gce", OBJECTIVES["gce"].summary, overrides=("method=gce",)),
        Method("sce", OBJECTIVES["sce"].summary, overrides=("method=sce",)),
        Method("coteaching", OBJECTIVES["coteaching"].summary, overrides=("method=coteaching",), trainings=2,
               score="mean-loss"),
        # Extensions beyond the paper, kept because they measured better than the paper's dp-instance
        # (benchmarks/results/fmnist_methods/variants.md; the variants that did not are listed there).
        Method("dp-filter", "data parameters: one instance-curriculum training, flag by the mixture on "
               "sigma integrated over training, retrain on the kept samples", trainings=2, score="sigma-mean",
               pipeline=FilterPipeline(first="dp-instance", score="sigma-mean", rule="mixture")),
        Method("dp-gce", "data parameters, instance curriculum on generalized cross-entropy (scaled_loss)",
               variant="instance", overrides=("curriculum.loss=gce",), score="sigma"),
        # dp-filter fed by dp-gce: flagged by a fixed fraction of the bounded loss, since the mixture
        # on the log of GCE losses splits the clean samples (variants.md, "Flagging after dp-gce").
        Method("dp-gce-filter", "data parameters: one dp-gce training, flag samples whose mean training loss "
               "stays above 0.2 of the GCE loss bound, retrain on the kept samples", trainings=2,
               score="mean-loss", pipeline=_GCE_FILTER),
        # dp-filter flagged by find-issues' per-class rule (dataparams.scores, 'class-mean', chosen on
        # tuning sets: benchmarks/results/flag_rules.md).
        Method("dp-cm-filter", "data parameters: one instance-curriculum training, flag samples whose label quality "
               "(the loss under sigma, averaged over training) is below their class's mean, retrain on the kept "
               "samples", trainings=2, score="mean-loss", pipeline=_CM_FILTER),
        Method("dp-gce-cm-filter", "data parameters: one dp-gce training, flag samples whose label quality (the GCE "
               "loss under sigma, averaged over training) is below their class's mean, retrain on the kept samples",
               trainings=2, score="mean-loss", pipeline=_GCE_CM_FILTER),
        Method("cleanlab", "confident learning (Northcutt et al. 2021): K-fold probabilities, filter, retrain",
               trainings=6, score="cleanlab", pipeline="cleanlab"),
        Method("aum", "area under the margin (Pleiss et al. 2020): two threshold runs, filter, retrain",
               trainings=3, score="aum", pipeline="aum"),
    )
}


#: What ``train --data`` trains when it is given no ``--method``, ``--preset`` or ``--config``,
#: and why (written into each stage's ``config.json`` under ``choices``).
DATA_DEFAULT_METHOD = "dp-gce-cm-filter"
DATA_DEFAULT_WHY = (
    "the default of train --data: of the two per-class filters, the one whose largest shortfall to the other over "
    "five noise kinds (uniform 20/40/80%, pair 40%, instance-dependent 40%) and two epoch choices is smaller, on "
    "5,000 Fashion-MNIST images that the 10,000-image bench does not report (0.87 points against 5.55, n=3; "
    "benchmarks/results/fmnist5k_methods/cm_filters.md, rule written before the grid ran); in the 10,000-image bench "
    "(fmnist_methods/results.md) first or within one std in 5 of 10 cells and at most 1.32 points behind the first; "
    "on three user-shaped sets (user_data_models.md, n=3) 0.6 and 1.3 points below dp-cm-filter on two and 0.4 above "
    "on the third; two trainings")


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; ``ConfigError`` listing the valid names otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _take(cfg: TrainConfig) -> dict[str, Any]:
    spec = OBJECTIVES[cfg.method]
    unknown = sorted(set(cfg.method_options) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise ConfigError(f"unknown method_options for {cfg.method}: {', '.join(unknown)}; valid: {valid}")
    return {**spec.options, **cfg.method_options}


def build_objective(cfg: TrainConfig, *, num_classes: int, num_train: int, device: torch.device | str,
                    model_factory: Callable[[], nn.Module] | None = None) -> Objective:
    """The training objective of ``cfg.method`` (see :data:`OBJECTIVES`), on ``device``.

    ``model_factory`` builds a fresh network like the model; co-teaching needs it for its
    second network.
    """
    if cfg.method not in OBJECTIVES:
        raise ConfigError(f"unknown method {cfg.method!r}; choose one of {', '.join(OBJECTIVES)}")
    o = _take(cfg)
    c = cfg.curriculum
    if cfg.method == "ce":
        dp = DataParameters(
            num_classes, num_train, class_curriculum=c.class_curriculum, instance_curriculum=c.instance_curriculum,
            init_class=c.init_class, init_instance=c.init_instance,
            clamp=None if c.clamp is None else (c.clamp[0], c.clamp[1]),
        ).to(device)
        loss_fn = None
        if c.loss == "gce":
            from dataparams.methods.robust_losses import generalized_cross_entropy

            q = float(c.loss_q)
            loss_fn = lambda z, y: generalized_cross_entropy(z, y, q=q)  # noqa: E731
        return DataParameterObjective(dp, lr_class=c.lr_class, lr_instance=c.lr_instance, momentum=c.momentum,
                                      wd_class=c.wd_class, wd_instance=c.wd_instance, loss_fn=loss_fn)
    if c.class_curriculum or c.instance_curriculum:
        raise ConfigError(f"method {cfg.method!r} does not combine with data parameters; turn the curriculum off")
    from dataparams.methods import peers
    from dataparams.methods.robust_losses import generalized_cross_entropy, symmetric_cross_entropy

    if cfg.method == "gce":
        q = float(o["q"])
        return LossObjective("gce", lambda z, y: generalized_cross_entropy(z, y, q=q), num_train, device)
    if cfg.method == "sce":
        alpha, beta, a = float(o["alpha"]), float(o["beta"]), float(o["A"])
        return LossObjective("sce", lambda z, y: symmetric_cross_entropy(z, y, alpha=alpha, beta=beta, A=a),
                             num_train, device)
    if cfg.method == "superloss":
        tau = math.log(num_classes) if o["tau"] is None else o["tau"]
        return peers.SuperLossObjective(num_train, device, lam=float(o["lam"]),
                                        tau=tau if tau == "ema" else float(tau))
    if cfg.method == "coteaching":
        if model_factory is None:
            raise ConfigError("co-teaching needs a model factory for its second network")
        return peers.CoTeachingObjective(model_factory(), num_train, device, forget_rate=float(o["forget_rate"]),
                                         num_gradual=int(o["num_gradual"]), exponent=float(o["exponent"]))
    return peers.AUMObjective(num_train, device)
