"""Data parameters under ``torch.distributed``, with the results of a single process.

Notation, fixed for this package: ``P`` processes (ranks), rank ``r``; a step trains on a *global*
batch of ``B`` samples, the batch one process would use, of which rank ``r`` holds the contiguous
share ``S_r`` of ``B_r`` samples (``sum_r B_r = B``, sizes as even as possible); ``N`` training
instances, ``K`` classes. Indices are global sample indices in ``[0, N)``.

Exactness (:func:`loss_weights`). One process minimises, per step,

    L = (1/B) sum_{b in batch} l_b + sum_{b in batch} rho_b,

the mean per-sample loss plus the regulariser ``rho_b = 0.5 wd (log sigma_b)^2``, which is a *sum*
over batch occurrences (``DataParameters.sigma_and_regularizer``). Rank ``r`` minimises

    L_r = (P/B) sum_{b in S_r} l_b + P sum_{b in S_r} rho_b,

so that ``sum_r L_r = P L``. DDP averages model gradients, ``(1/P) sum_r grad L_r = grad L``, and
the data-parameter gradients, summed over ranks and divided by ``P``, are ``grad L`` as well. The
weights depend on the global ``B`` only, never on ``B_r``: the rule holds for uneven shares,
a short last batch and even an empty share, where the usual per-rank mean (``1/B_r``) does not.

Two layouts of the data parameters:

* :class:`ReplicatedExchange`: every rank holds all of a :class:`~dataparams.DataParameters`
  (``(K,)`` and ``(N,)``) and the optimizer's momentum. After ``backward`` the ranks swap only the
  batch's ``(row, gradient)`` pairs (one all-gather of the packed pairs and their counts, padded
  to what the largest share can produce) and every rank replaces its sparse gradients by the
  combined ones, so the same :class:`~dataparams.SparseSGD` step runs everywhere and the
  replicas stay identical.
* :class:`ShardedDataParameters`, for ``N`` of 1e8-1e9: rank ``r`` owns the contiguous rows
  :func:`shard_range` ``(N, P, r)`` of the instance log-sigmas and their momentum; class
  parameters stay replicated. The global batch's indices are all-gathered, owners fill in their
  rows and a ``B``-long all-reduce hands every rank its values; after ``backward`` the
  per-sample gradients are all-gathered and each owner updates its own rows with
  :func:`~dataparams.optim.sparse_sgd_step`.

Every step communicates and computes O(B), never O(N). Collectives run on the default process
group in the same order on every rank, outside autograd (before the forward pass and after
``backward``), so they never interleave with DDP's own all-reduces. (The one exception,
:class:`GlobalBatchNorm`, all-reduces inside autograd over a group of its own.)

Training (``torchrun ... -m dataparams train``, :mod:`dataparams.experiment`) puts these pieces
into the engine's loop unchanged: the objective is :class:`ReplicatedObjective` or
:class:`ShardedObjective`, whose optimizer (:class:`ExchangeOptimizer`,
:class:`ShardedOptimizer`) exchanges in its ``step``. One training step on every rank::

    x, y, idx = next(share_loader)        # LocalShareLoader / FileShareLoader: the share S_r
    logits = ddp_model(x)                 # DDP (BatchNorm over the global batch)
    loss, per_sample = objective(logits, x, y, idx)
        # begin_step: all-gather B_r (replicated) / indices and values (sharded)
        # sigma, penalty; loss = distributed_loss(per_sample, penalty, B, P)
    loss.backward()                       # DDP all-reduces (averages) the model's gradients
    optimizer.step()                      # the model's SGD, identical on every rank
    dp_optimizer.step()                   # exchange the batch's data-parameter gradients,
                                          # then the SparseSGD update (owners only when sharded)
    objective.record(idx, per_sample)     # last_loss of the share (sharded: the owners' rows)

At the end of an epoch the engine all-reduces its statistics, the replicated objective
all-reduces ``last_loss`` (each sample from the rank that visited it), and rank 0 evaluates and
writes the run directory.

Modules, with the public names that ``dataparams.distributed`` re-exports::

    context      DistributedContext, init_distributed, launched_world_size, MODES
    models       wrap_model, unwrap_model, GlobalBatchNorm, sync_batch_norm
    sampling     split_sizes, shard_range, local_share, GlobalBatchSampler,
                 LocalShareLoader, FileShareLoader
    steps        LossWeights, loss_weights, distributed_loss, StepPlan
    collectives  (internal) all-gathers of ragged per-rank rows and bytes
    exchange     replicated layout: ReplicatedExchange, ReplicatedObjective, ExchangeOptimizer
    sharded      sharded layout: ShardedDataParameters, ShardedStepPlan
    sharded_objective  the sharded layout in the engine's loop: ShardedObjective, ShardedOptimizer
    checkpoint   the files of a sharded save: ShardFileError, remove_stale_shards; (internal)
                 their hashed atomic writes, checks and opening

Dependencies run one way: ``context`` <- ``models``, ``collectives``; ``sampling`` and ``steps``
stand alone; ``exchange`` and ``sharded`` build on them (``sharded`` also on ``checkpoint``),
``sharded_objective`` on ``sharded``.
The package imports its submodules lazily, on first use of a name: importing
``dataparams.distributed.context`` (as the engine does) does not import the sharded or replicated
layouts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataparams.distributed.checkpoint import ShardFileError, remove_stale_shards
    from dataparams.distributed.context import (
        MODES,
        DistributedContext,
        first_failure,
        init_distributed,
        launched_world_size,
    )
    from dataparams.distributed.exchange import ExchangeOptimizer, ReplicatedExchange, ReplicatedObjective
    from dataparams.distributed.models import GlobalBatchNorm, sync_batch_norm, unwrap_model, wrap_model
    from dataparams.distributed.sampling import (
        FileShareLoader,
        GlobalBatchSampler,
        LocalShareLoader,
        local_share,
        shard_range,
        split_sizes,
    )
    from dataparams.distributed.sharded import ShardedDataParameters, ShardedStepPlan
    from dataparams.distributed.sharded_objective import ShardedObjective, ShardedOptimizer
    from dataparams.distributed.steps import LossWeights, StepPlan, distributed_loss, loss_weights

__all__ = [
    "MODES",
    "DistributedContext",
    "ExchangeOptimizer",
    "FileShareLoader",
    "GlobalBatchNorm",
    "GlobalBatchSampler",
    "LocalShareLoader",
    "LossWeights",
    "ReplicatedExchange",
    "ReplicatedObjective",
    "ShardFileError",
    "ShardedDataParameters",
    "ShardedObjective",
    "ShardedOptimizer",
    "ShardedStepPlan",
    "StepPlan",
    "distributed_loss",
    "first_failure",
    "init_distributed",
    "launched_world_size",
    "local_share",
    "loss_weights",
    "remove_stale_shards",
    "shard_range",
    "split_sizes",
    "sync_batch_norm",
    "unwrap_model",
    "wrap_model",
]

#: The submodule that defines each name of ``__all__``.
_SUBMODULE = {
    "MODES": "context",
    "DistributedContext": "context",
    "first_failure": "context",
    "init_distributed": "context",
    "launched_world_size": "context",
    "GlobalBatchNorm": "models",
    "sync_batch_norm": "models",
    "unwrap_model": "models",
    "wrap_model": "models",
    "FileShareLoader": "sampling",
    "GlobalBatchSampler": "sampling",
    "LocalShareLoader": "sampling",
    "local_share": "sampling",
    "shard_range": "sampling",
    "split_sizes": "sampling",
    "LossWeights": "steps",
    "StepPlan": "steps",
    "distributed_loss": "steps",
    "loss_weights": "steps",
    "ExchangeOptimizer": "exchange",
    "ReplicatedExchange": "exchange",
    "ReplicatedObjective": "exchange",
    "ShardedDataParameters": "sharded",
    "ShardedObjective": "sharded_objective",
    "ShardedOptimizer": "sharded_objective",
    "ShardedStepPlan": "sharded",
    "ShardFileError": "checkpoint",
    "remove_stale_shards": "checkpoint",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562), and keep the name here."""
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
