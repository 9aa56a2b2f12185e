"""Data parameters under ``torch.distributed``, with the results of a single process.

Notation, fixed for this module: ``P`` processes (ranks), rank ``r``; a step trains on a *global*
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
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import Sampler

from dataparams.losses import per_sample_cross_entropy, scaled_loss
from dataparams.objectives import DataParameterObjective, Objective
from dataparams.optim import sparse_sgd_step
from dataparams.parameters import DEFAULT_CLAMP, DataParameters, combine_sigma
from dataparams.scores import scores_from_sums

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
    "init_distributed",
    "launched_world_size",
    "local_share",
    "loss_weights",
    "remove_stale_shards",
    "save_replicated",
    "shard_range",
    "split_sizes",
    "sync_batch_norm",
    "unwrap_model",
    "wrap_model",
]

#: ``format`` field of a sharded checkpoint's manifest and shard files.
SHARDED_FORMAT = "dataparams-sharded/1"
_MANIFEST = "manifest.json"
#: Keys of a shard file that are not ``extra`` arrays.
_SHARD_KEYS = frozenset({"format", "start", "end", "num_instances", "instance_log_sigma", "instance_momentum"})


# --------------------------------------------------------------------------------------------
# Process context


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: its rank, the world size and its device.

    ``DistributedContext()`` is the single-process context: rank 0 of 1, no process group, and
    every helper of this module then runs without a collective. Build the real one with
    :func:`init_distributed`.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank ``r``, ``P``, and the rank on this node (selects the GPU).
    device : torch.device
        Where this rank computes; collectives of this module use tensors on it.
    backend : str or None
        ``"nccl"``, ``"gloo"``, ... or None when no process group exists.
    owns_process_group : bool
        Whether :meth:`close` destroys the process group (it does only for a group that
        :func:`init_distributed` created).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_process_group: bool = field(default=False, repr=False, compare=False)

    @property
    def is_distributed(self) -> bool:
        """More than one process: the helpers of this module communicate."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that logs and writes shared files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.backend is None or not dist.is_initialized():
            return
        if self.backend == "nccl":
            # Without device_ids NCCL guesses the device from the rank, which is wrong on
            # multi-node jobs whose ranks do not start at GPU 0.
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; for small objects such as a decision
        or an exception that all ranks must act on alike). Returns ``obj`` in one process."""
        if self.backend is None or not dist.is_initialized():
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled; small objects only).
        ``[obj]`` in one process."""
        if self.backend is None or not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if str(device) == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
        # A bare "cuda" means this rank's GPU, not GPU 0 for every rank of the node.
        return dev if dev.index is not None else torch.device(f"cuda:{local_rank}")
    if dev.type != "cpu":
        raise ValueError(f"distributed training runs on 'cpu' or 'cuda', got {str(device)!r}")
    return dev


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun (or another launcher) set it; 1 for a process started alone."""
    return _env_int("WORLD_SIZE", 1)


def init_distributed(
    device: str | torch.device = "auto",
    *,
    backend: str | None = None,
    timeout: timedelta = timedelta(minutes=30),
) -> DistributedContext:
    """Join the job that ``torchrun`` launched, or return the single-process context.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (default: ``RANK``), ``MASTER_ADDR`` and
    ``MASTER_PORT``. Without ``RANK``/``WORLD_SIZE`` in the environment the process was not
    launched distributed and ``DistributedContext(device=...)`` is returned.

    Parameters
    ----------
    device : "auto", "cpu", "cuda" or "cuda:i"
        ``"auto"`` is ``cuda:LOCAL_RANK`` when CUDA exists, else the CPU; a bare ``"cuda"`` is
        ``cuda:LOCAL_RANK``. A CUDA device is made the current one.
    backend : str, optional
        Default ``"nccl"`` on CUDA and ``"gloo"`` on the CPU.
    timeout : timedelta
        How long a collective may wait for the other ranks before failing.

    Returns
    -------
    DistributedContext
        Call :meth:`DistributedContext.close` (or use it as a context manager) at the end. A
        process group that already exists is reused and left open by ``close``.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext(device=_resolve_device(device, 0))
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
    dev = _resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise RuntimeError(
                f"a process group exists as rank {dist.get_rank()} of {dist.get_world_size()}, but the "
                f"environment says rank {rank} of {world_size}"
            )
        return DistributedContext(rank, world_size, local_rank, dev, str(dist.get_backend()))
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} not; launch with torchrun")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
    return DistributedContext(rank, world_size, local_rank, dev, backend, owns_process_group=True)


def wrap_model(model: nn.Module, ctx: DistributedContext, **ddp_options: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` on this rank's device, or ``model`` in one process.

    Keep the data parameters *out* of the wrapped module: DDP would all-reduce them densely
    (O(N)); they are combined by :class:`ReplicatedExchange` or :class:`ShardedDataParameters`.
    """
    if not ctx.is_distributed:
        return model
    if ctx.device.type == "cuda":
        ddp_options.setdefault("device_ids", [ctx.device.index])
    return nn.parallel.DistributedDataParallel(model, **ddp_options)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` (``model`` itself otherwise).

    Evaluate, predict and checkpoint through it: its ``state_dict`` has the single-process keys,
    and its forward runs no collective, so one rank can run it alone.
    """
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation with the statistics of the *global* batch, on any device and backend.

    In training, every rank sums its share's per-channel ``sum x``, ``sum x^2`` and count (in
    float64, so that ``E[x^2] - E[x]^2`` keeps its digits) with one differentiable all-reduce;
    mean and biased variance normalise, the unbiased variance enters the running statistics, as
    ``BatchNorm`` does for one process. The backward pass all-reduces the gradients of those
    sums, so the model's gradients are those of the global batch. In eval mode it is a plain
    ``BatchNorm`` on the running statistics. ``torch.nn.SyncBatchNorm`` does the same on CUDA
    only; :func:`sync_batch_norm` uses it there and this class elsewhere (CPU with gloo).

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats
        As in ``torch.nn.BatchNorm2d``.
    process_group : ProcessGroup, optional
        The group whose ranks share the batch (default: all ranks).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training or not dist.is_initialized():
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = torch.full((1,), input.numel() // max(c, 1), dtype=torch.float64, device=input.device)
        sums = [input.sum(dims, dtype=torch.float64), input.square().sum(dims, dtype=torch.float64)]
        local = torch.cat([*sums, count])
        total = differentiable_all_reduce(local, group=self.process_group or dist.group.WORLD)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean.square()).clamp_min(0.0)
        shape = (1, c) + (1,) * (input.dim() - 2)
        invstd = (var + self.eps).rsqrt()
        out = (input - mean.to(input.dtype).view(shape)) * invstd.to(input.dtype).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None  # type: ignore[arg-type]
                          else self.momentum)
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                for buf, value in ((self.running_mean, mean), (self.running_var, unbiased)):
                    buf.mul_(1 - factor).add_(value.to(buf.dtype), alpha=factor)  # type: ignore[union-attr]
        return out


def sync_batch_norm(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """Make every ``BatchNorm`` layer of ``model`` normalise with the global batch's statistics.

    Each rank sees a share of the global batch; normalising with the share's statistics would
    change the forward pass, so the ranks would not compute what one process computes.
    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere (it runs over its own
    gloo group, so its collectives never interleave with DDP's). Parameters and buffers are
    moved over as they are (the same tensors), so an optimizer built before stays valid and the
    ``state_dict`` keys do not change. Returns ``model`` itself in one process. Collective:
    call it on every rank.
    """
    if not ctx.is_distributed or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo")

    def convert(module: nn.Module) -> nn.Module:
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
            out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats, process_group=group)
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(model)


# --------------------------------------------------------------------------------------------
# Global batches and their shares


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous pieces of ``total`` items, as even as possible.

    The first ``total % parts`` pieces hold one more item, as ``numpy.array_split`` does.
    """
    if parts < 1 or total < 0:
        raise ValueError(f"need total >= 0 and parts >= 1, got total={total}, parts={parts}")
    q, rem = divmod(int(total), int(parts))
    return [q + 1] * rem + [q] * (parts - rem)


def shard_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """``[start, end)`` of piece ``index`` in :func:`split_sizes` ``(total, parts)``."""
    if not 0 <= index < parts:
        raise ValueError(f"index must lie in [0, {parts}), got {index}")
    q, rem = divmod(int(total), int(parts))
    start = index * q + min(index, rem)
    return start, start + q + (1 if index < rem else 0)


def local_share(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous share of a global batch, along the first axis.

    Parameters
    ----------
    batch : Tensor (B, ...)
        Anything batched: sample indices, labels, inputs.

    Returns
    -------
    Tensor (B_r, ...)
        A view; the shares of ranks ``0..P-1`` concatenated give ``batch`` back.
    """
    start, end = shard_range(batch.shape[0], world_size, rank)
    return batch[start:end]


class GlobalBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding this rank's share of every global batch, as global sample indices.

    The global order is the in-memory loaders' (:class:`~dataparams.data.memory.InMemoryLoader`):
    ``torch.randperm(N)`` drawn from ``torch.Generator().manual_seed(seed * 1_000_003 + epoch)``,
    cut into batches of ``batch_size``. Use it as
    ``DataLoader(WithIndex(dataset), batch_sampler=GlobalBatchSampler(...))``; the loader then
    yields ``(x, y, index)`` with the global indices that data parameters need.

    Parameters
    ----------
    num_samples : int
        ``N``.
    batch_size : int
        ``B``, the *global* batch size (what one process would use).
    rank, world_size : int
    shuffle, seed, drop_last
        As in the in-memory loader; ``set_epoch`` selects the permutation.
    like_dataloader : bool, default False
        Draw the permutation as ``torch.utils.data.DataLoader(shuffle=True, generator=g)`` does
        from the same generator: one int64 (the workers' base seed) before ``randperm``. That is
        the order of :class:`~dataparams.data.loaders.FileLoader`, which shuffles that way.

    Raises
    ------
    ValueError
        When a global batch would leave some rank without a sample (``batch_size < P``, or a
        last batch shorter than ``P`` without ``drop_last``): a DataLoader cannot collate an
        empty batch, and DDP needs every rank in every step.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        like_dataloader: bool = False,
        placeholder: bool = False,
    ) -> None:
        if num_samples < 0 or batch_size < 1:
            raise ValueError(f"need num_samples >= 0 and batch_size >= 1, got {num_samples}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        last = num_samples % batch_size
        self.placeholder = bool(placeholder)
        if batch_size < world_size or (not drop_last and not placeholder and 0 < last < world_size):
            raise ValueError(
                f"with {world_size} processes every global batch needs >= {world_size} samples; got "
                f"batch_size={batch_size} and a last batch of {last or batch_size} (use drop_last=True)"
            )
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.like_dataloader = bool(like_dataloader)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def global_batches(self) -> Iterator[Tensor]:
        """The global batches of the current epoch, LongTensor (B,) each, identical on every rank."""
        n = self.num_samples
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            if self.like_dataloader:
                # DataLoader's iterator draws its base seed from the generator before the
                # RandomSampler draws the permutation.
                torch.empty((), dtype=torch.int64).random_(generator=g)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]

    def share_sizes(self) -> Iterator[int]:
        """This rank's share size in each global batch of an epoch (0 in a short last batch)."""
        for b in range(len(self)):
            size = min(self.batch_size, self.num_samples - b * self.batch_size)
            start, end = shard_range(size, self.world_size, self.rank)
            yield end - start

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            share = local_share(batch, self.rank, self.world_size).tolist()
            # A DataLoader cannot collate an empty batch: with ``placeholder`` an empty share is
            # the global batch's first sample, which the caller drops (FileShareLoader).
            yield share if share or not self.placeholder else batch[:1].tolist()


class LocalShareLoader:
    """Wrap a loader of global batches so that it yields this rank's share of each.

    For the in-memory loaders (:class:`~dataparams.data.memory.InMemoryLoader`,
    ``FeatureLoader``) or any iterable of ``(inputs, targets, indices, ...)`` batches. Every rank
    iterates the same global batches (same seed and epoch) and keeps its contiguous share, so
    the order *and* the augmentation equal the single-process run's. The price is that each rank
    prepares the whole global batch: for data held in memory that is a gather and a few tensor
    ops per batch, small next to the model; for data read from disk use
    :class:`GlobalBatchSampler`, which loads only the share.

    ``set_epoch`` and ``len`` are passed through.
    """

    def __init__(self, loader: Iterable[Sequence[Tensor]], *, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.loader, self.rank, self.world_size = loader, int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for batch in self.loader:
            yield tuple(local_share(t, self.rank, self.world_size) for t in batch)


class FileShareLoader:
    """This rank's share of every global batch of a map-style dataset, loading only that share.

    The counterpart of :class:`LocalShareLoader` for data read from disk (image files): a
    ``DataLoader`` over ``dataset`` whose batch sampler is :class:`GlobalBatchSampler` with
    ``like_dataloader=True``, so that the global batches are those of
    :class:`~dataparams.data.loaders.FileLoader` with the same ``seed``, ``batch_size`` and
    epoch. Yields what the dataset's items collate to (``(x, y, index)`` for the package's
    file datasets, whose index is the global one).

    Random augmentation inside the dataset draws from each worker's (or the main process's)
    torch generator, which no split of the work over ranks can reproduce: with augmentation the
    batches are the single process's, the random crops and flips are not.

    Parameters
    ----------
    dataset : map-style Dataset
    batch_size : int
        The global batch size ``B``.
    seed : int
        The seed of the single-process loader.
    rank, world_size : int
    workers : int
        DataLoader worker processes of this rank.
    pin_memory : bool
    """

    def __init__(self, dataset: Any, *, batch_size: int, seed: int, rank: int, world_size: int, workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset, self.workers, self.pin_memory = dataset, int(workers), bool(pin_memory)
        self.sampler = GlobalBatchSampler(len(dataset), batch_size, rank=rank, world_size=world_size, shuffle=True,
                                          seed=seed, like_dataloader=True, placeholder=True)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        s = self.sampler
        # The workers' base seed comes from this generator; one stream per (seed, epoch, rank)
        # keeps the global torch generator untouched, as the single-process loader does.
        g = torch.Generator().manual_seed((s.seed * 1_000_003 + s.epoch) * 65_537 + s.rank)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=s, num_workers=self.workers,
                                             pin_memory=self.pin_memory, generator=g)
        # A short last batch (N mod B < P) leaves some ranks empty: they load one placeholder
        # sample and yield an empty batch of its shapes, as the in-memory loaders' empty share,
        # which the step weights by zero (see the module notes).
        for batch, size in zip(loader, s.share_sizes()):
            yield batch if size else _empty_like(batch)


def _empty_like(batch: Any) -> Any:
    """``batch`` cut to zero samples (tensors along the first axis, lists emptied)."""
    if isinstance(batch, Tensor):
        return batch[:0]
    if isinstance(batch, (list, tuple)):
        items = [_empty_like(b) for b in batch]
        return items if isinstance(batch, list) else tuple(items)
    return batch


# --------------------------------------------------------------------------------------------
# The loss weighting


class LossWeights(NamedTuple):
    """Factors that make ``P`` ranks reproduce one process (see the module notes).

    Attributes
    ----------
    per_sample : float
        ``P / B``, on the rank's *sum* of per-sample losses.
    regularizer : float
        ``P``, on the rank's regulariser (a sum over its batch occurrences).
    data_gradient : float
        ``1 / P``, on the data-parameter gradients summed over ranks.
    """

    per_sample: float
    regularizer: float
    data_gradient: float


def loss_weights(global_batch_size: int, world_size: int) -> LossWeights:
    """The per-rank loss weights for a global batch of ``B`` samples over ``P`` ranks.

    With them, DDP's average of the model gradients and the data-parameter gradients summed
    over ranks times ``data_gradient`` equal the single-process gradients of
    ``mean(loss) + regularizer`` over the global batch, for any split of the batch. With
    ``P = 1`` they are ``(1/B, 1, 1)``, the single-process loss itself.
    """
    if global_batch_size < 1 or world_size < 1:
        raise ValueError(f"need global_batch_size >= 1 and world_size >= 1, got {global_batch_size}, {world_size}")
    return LossWeights(world_size / global_batch_size, float(world_size), 1.0 / world_size)


def distributed_loss(
    per_sample_loss: Tensor, penalty: Tensor, *, global_batch_size: int, world_size: int
) -> Tensor:
    """This rank's share of the objective, to backpropagate through the DDP model.

    Parameters
    ----------
    per_sample_loss : Tensor (B_r,)
        The loss of each local sample (``reduction="none"``), e.g. from
        :func:`~dataparams.scaled_loss`.
    penalty : Tensor ()
        The local regulariser (sum over the local batch occurrences).
    global_batch_size, world_size : int
        ``B`` (e.g. :attr:`StepPlan.global_batch_size`) and ``P``.

    Returns
    -------
    Tensor ()
        ``(P / B) * per_sample_loss.sum() + P * penalty``.
    """
    if per_sample_loss.dim() != 1:
        raise ValueError(f"per_sample_loss must have shape (B_r,), got {tuple(per_sample_loss.shape)}")
    if per_sample_loss.shape[0] > global_batch_size:
        raise ValueError(f"{per_sample_loss.shape[0]} local samples exceed the global batch of {global_batch_size}")
    w = loss_weights(global_batch_size, world_size)
    return per_sample_loss.sum() * w.per_sample + penalty * w.regularizer


# --------------------------------------------------------------------------------------------
# Collectives on ragged per-rank data. Bytes are counted per rank as what a ring algorithm makes
# each rank receive: (P - 1) chunks for an all-gather, 2 (P - 1) / P of the buffer for an
# all-reduce. Padding is counted, since it travels.


def _index_dtype(num_rows: int) -> torch.dtype:
    # Half the bytes for every data set below 2**31 rows (1e9 samples included).
    return torch.int32 if num_rows < 2**31 else torch.int64


def _all_gather_padded(local: Tensor, max_rows: int, ctx: DistributedContext) -> tuple[Tensor, int]:
    """All-gather ``local`` (n, ...) padded to ``max_rows`` rows: ``((P, max_rows, ...), bytes)``."""
    buf = local.new_zeros((max_rows, *local.shape[1:]))
    buf[: local.shape[0]] = local
    out = [torch.empty_like(buf) for _ in range(ctx.world_size)]
    dist.all_gather(out, buf)
    return torch.stack(out), (ctx.world_size - 1) * buf.numel() * buf.element_size()


def _all_gather_ragged(
    meta: Sequence[int], payload: Tensor, capacity: int, ctx: DistributedContext
) -> tuple[Tensor, list[Tensor], int]:
    """All-gather a few integers and a byte string of any length from every rank.

    Each rank sends ``meta``, its payload's length and the payload padded to ``capacity`` bytes
    in one buffer. When every payload fits, that single collective is all; otherwise the
    gathered lengths tell every rank alike to send the payloads again, padded to the longest.
    Callers pass a bound they know, or the longest length seen so far, so that the second
    round is rare: on a CPU or across nodes the number of collectives, not their O(B) bytes,
    is what a step waits for.

    Parameters
    ----------
    meta : sequence of int
        The same number of integers on every rank (e.g. ``B_r``).
    payload : uint8 Tensor (L,)
    capacity : int
        The same on every rank.

    Returns
    -------
    meta : LongTensor (P, len(meta)), on the CPU
    payloads : list of P uint8 Tensors
        Every rank's payload, in rank order.
    bytes : int
        Received by this rank (ring accounting).
    """
    if not ctx.is_distributed:
        return torch.tensor([list(meta)], dtype=torch.int64), [payload], 0
    payload = payload.to(ctx.device)
    head = torch.tensor([*meta, payload.numel()], dtype=torch.int64, device=ctx.device).view(torch.uint8)
    buf = torch.zeros(head.numel() + capacity, dtype=torch.uint8, device=ctx.device)
    buf[: head.numel()] = head
    if payload.numel() <= capacity:
        buf[head.numel() : head.numel() + payload.numel()] = payload
    out = [torch.empty_like(buf) for _ in range(ctx.world_size)]
    dist.all_gather(out, buf)
    gathered, nbytes = torch.stack(out), (ctx.world_size - 1) * buf.numel()
    heads = gathered[:, : head.numel()].clone().view(torch.int64).cpu()
    lengths = heads[:, -1].tolist()
    if max(lengths) <= capacity:
        body = gathered[:, head.numel() :]
    else:
        body, more = _all_gather_padded(payload.unsqueeze(1), max(lengths), ctx)
        body, nbytes = body[..., 0], nbytes + more
    return heads[:, :-1], [body[r, :n] for r, n in enumerate(lengths)], nbytes


#: The empty payload of a gather that carries only its ``meta`` integers.
_NO_BYTES = torch.empty(0, dtype=torch.uint8)


def _unpad(gathered: Tensor, counts: Sequence[int]) -> Tensor:
    """Concatenate the first ``counts[r]`` rows of each rank's padded block, in rank order."""
    return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])


# --------------------------------------------------------------------------------------------
# Step plans


@dataclass
class StepPlan:
    """What the ranks agreed on at the start of a step (returned by ``begin_step``).

    Attributes
    ----------
    targets, indices : LongTensor (B_r,)
        This rank's labels and global sample indices, on the data parameters' device.
    counts : list of int
        ``B_r`` of every rank.
    rank : int
    bytes_exchanged : int
        Data-parameter bytes received by this rank in this step so far (ring accounting).
    """

    targets: Tensor
    indices: Tensor
    counts: list[int]
    rank: int
    bytes_exchanged: int = 0

    @property
    def global_batch_size(self) -> int:
        """``B``, for :func:`distributed_loss`."""
        return sum(self.counts)

    @property
    def world_size(self) -> int:
        return len(self.counts)

    @property
    def offset(self) -> int:
        """Position of this rank's first sample in the global batch."""
        return sum(self.counts[: self.rank])


def _check_batch(targets: Tensor, indices: Tensor, num_classes: int, num_instances: int,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    for name, t in (("targets", targets), ("indices", indices)):
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of shape (B_r,)")
    if targets.shape != indices.shape:
        raise ValueError(f"targets and indices differ in size: {targets.shape[0]} and {indices.shape[0]}")
    targets, indices = targets.to(device, torch.long), indices.to(device, torch.long)
    if targets.numel():
        # One host transfer for all four bounds.
        lo_t, hi_t, lo_i, hi_i = torch.stack([targets.min(), targets.max(), indices.min(), indices.max()]).tolist()
        if lo_t < 0 or hi_t >= num_classes:
            raise IndexError(f"targets hold {lo_t if lo_t < 0 else hi_t}, outside [0, {num_classes})")
        if lo_i < 0 or hi_i >= num_instances:
            raise IndexError(f"indices hold {lo_i if lo_i < 0 else hi_i}, outside [0, {num_instances})")
    return targets, indices


# --------------------------------------------------------------------------------------------
# Replicated mode


class ReplicatedExchange:
    """Keep every rank's full :class:`~dataparams.DataParameters` identical to one process's.

    A step::

        plan = exchange.begin_step(y, idx)                        # all-gather of B_r
        sigma, penalty = exchange.sigma_and_regularizer(plan, wd_class=..., wd_instance=...)
        loss = distributed_loss(scaled_loss(loss_fn, ddp_model(x), y, sigma, reduction="none"),
                                penalty, global_batch_size=plan.global_batch_size,
                                world_size=ctx.world_size)
        loss.backward()                                           # DDP averages the model's
        exchange.all_reduce_gradients(plan)                       # the batch's rows only
        optimizer.step(); dp_optimizer.step()                     # the same update everywhere

    Parameters
    ----------
    data_parameters : DataParameters
        The replica on this rank (all ``N`` rows), initialised identically on every rank.
    ctx : DistributedContext

    Attributes
    ----------
    bytes_total : int
        Data-parameter bytes received by this rank over all steps.

    Notes
    -----
    With a ``torch.amp.GradScaler``, call :meth:`all_reduce_gradients` after ``backward`` and
    before ``scaler.step(dp_optimizer)``: every rank then holds the same scaled gradients, so the
    scaler's check for infinities decides alike everywhere.
    """

    def __init__(self, data_parameters: DataParameters, ctx: DistributedContext) -> None:
        self.dp = data_parameters
        self.ctx = ctx
        self.bytes_total = 0

    def _params(self) -> list[Tensor]:
        # requires_grad is fixed by the curriculum, the same on every rank, so every rank takes
        # part in the same collectives even where a local batch left a gradient unset.
        return [p for p in (self.dp.class_log_sigma, self.dp.instance_log_sigma) if p.requires_grad]

    def begin_step(self, targets: Tensor, indices: Tensor) -> StepPlan:
        """Agree on the global batch size ``B``: one all-gather of ``B_r``.

        Parameters
        ----------
        targets, indices : LongTensor (B_r,)
            This rank's labels and global sample indices.
        """
        device = self.dp.class_log_sigma.device
        targets, indices = _check_batch(targets, indices, self.dp.class_log_sigma.shape[0],
                                        self.dp.instance_log_sigma.shape[0], device)
        meta, _, nbytes = _all_gather_ragged([targets.shape[0]], _NO_BYTES, 0, self.ctx)
        self.bytes_total += nbytes
        return StepPlan(targets, indices, meta[:, 0].tolist(), self.ctx.rank, nbytes)

    def sigma_and_regularizer(
        self, plan: StepPlan, *, wd_class: float = 0.0, wd_instance: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """``DataParameters.sigma_and_regularizer`` on this rank's share: sigma (B_r,), penalty ()."""
        return self.dp.sigma_and_regularizer(plan.targets, plan.indices, wd_class=wd_class, wd_instance=wd_instance)

    def all_reduce_gradients(self, plan: StepPlan) -> int:
        """Replace each data-parameter gradient by the sum over ranks times ``1/P``.

        Each rank coalesces its sparse gradients (a class present many times travels once) and
        all-gathers its ``(row, value)`` pairs, packed into one byte buffer with their counts:
        one collective, padded to the most a share of ``max(B_r)`` samples can produce
        (a second one only if a gradient lists more rows than its share has samples, e.g.
        accumulated over several forward passes). The new ``.grad`` is a sparse COO tensor
        that lists every rank's rows in rank order; the optimizer sums a row's entries.

        Parameters
        ----------
        plan : StepPlan
            This step's :meth:`begin_step`, after ``backward``.

        Returns
        -------
        int
            Bytes received by this rank in this call (also added to ``plan.bytes_exchanged``).
        """
        params = self._params()
        if not self.ctx.is_distributed or not params:
            return 0
        parts = []
        for p in params:
            g = p.grad
            if g is None:
                rows, values = torch.empty(0, dtype=torch.long, device=p.device), p.new_empty(0)
            elif not g.is_sparse:
                raise TypeError("data-parameter gradients must be sparse (gather rows with DataParameters)")
            else:
                g = g.coalesce()
                rows, values = g.indices()[0], g.values()
            parts.append((rows.to(self.ctx.device), values.to(self.ctx.device)))
        index_dtype = _index_dtype(max(p.shape[0] for p in params))
        isz = index_dtype.itemsize
        bound = sum(min(max(plan.counts), p.shape[0]) * (isz + p.element_size()) for p in params)
        meta, payloads, nbytes = _all_gather_ragged(
            [r.shape[0] for r, _ in parts], _pack(parts, index_dtype), bound, self.ctx
        )
        pieces = [_unpack(payloads[r], meta[r].tolist(), index_dtype, [p.dtype for p in params])
                  for r in range(self.ctx.world_size)]
        scale = loss_weights(plan.global_batch_size, self.ctx.world_size).data_gradient
        for j, p in enumerate(params):
            rows = torch.cat([piece[j][0] for piece in pieces]).to(p.device, torch.long)
            values = torch.cat([piece[j][1] for piece in pieces]).to(p.device) * scale
            p.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape, check_invariants=False)
        self.bytes_total += nbytes
        plan.bytes_exchanged += nbytes
        return nbytes


def _pack(parts: Sequence[tuple[Tensor, Tensor]], index_dtype: torch.dtype) -> Tensor:
    """Rows and values of every part as one flat uint8 buffer: a single collective moves all."""
    pieces = []
    for rows, values in parts:
        pieces.append(rows.to(index_dtype).contiguous().view(torch.uint8))
        pieces.append(values.contiguous().view(torch.uint8))
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8)


def _unpack(buf: Tensor, counts: Sequence[int], index_dtype: torch.dtype,
            value_dtypes: Sequence[torch.dtype]) -> list[tuple[Tensor, Tensor]]:
    """Inverse of :func:`_pack` for one rank's buffer."""
    out, at = [], 0
    isz = index_dtype.itemsize
    for n, dtype in zip(counts, value_dtypes):
        vsz = dtype.itemsize
        # clone: a byte slice at an odd offset cannot be reinterpreted in place.
        rows = buf[at : at + n * isz].clone().view(index_dtype)
        at += n * isz
        values = buf[at : at + n * vsz].clone().view(dtype)
        at += n * vsz
        out.append((rows, values))
    return out


def save_replicated(state: dict[str, Any], path: str | os.PathLike[str], ctx: DistributedContext) -> None:
    """Write a checkpoint once, from rank 0, atomically; every rank returns after it exists.

    With replicated data parameters every rank holds the same state, so the single-process
    checkpoint is the distributed one; every rank loads it with ``torch.load(path,
    map_location=ctx.device)``, whatever the number of processes.
    """
    if ctx.is_main:
        _atomic_save(state, Path(path))
    ctx.barrier()


def remove_stale_shards(directory: str | os.PathLike[str], manifest: dict[str, Any],
                        also_keep: dict[str, Any] | None = None) -> None:
    """Delete the shard and class files in ``directory`` that ``manifest`` (or ``also_keep``,
    the previous checkpoint's manifest, kept for a fall-back) does not name.

    Call it after the save that ``manifest`` describes has been committed, from one rank, while
    no save is being written: what it removes belongs to older saves, or to a save that crashed
    before its commit (including the temporary files of an interrupted write).
    """
    keep = {m["classes"] for m in (manifest, also_keep) if m is not None}
    keep |= {s["file"] for m in (manifest, also_keep) if m is not None for s in m["shards"]}
    for f in Path(directory).iterdir():
        stale_file = f.suffix == ".pt" and f.name.startswith(("shard-", "classes-")) and f.name not in keep
        stale_tmp = f.suffix == ".tmp" and f.name.startswith((".shard-", ".classes-"))
        if stale_file or stale_tmp:
            f.unlink(missing_ok=True)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` that readers see whole or not at all (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write(file)`` to a temporary file in the same directory, then
    ``os.replace`` it onto ``path``: readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _HashingWriter:
    """A write-only file for ``torch.save`` that forwards to ``f`` and keeps the SHA-256 and
    length of what went through."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _atomic_save_hashed(obj: Any, path: Path) -> dict[str, Any]:
    """:func:`_atomic_save` that returns the file's ``{"bytes": size, "sha256": hex digest}``,
    hashed while it is written (the file is not read back)."""
    box: list[_HashingWriter] = []

    def write(f: BinaryIO) -> None:
        box.append(_HashingWriter(f))
        torch.save(obj, box[0])

    _atomic_write(path, write)
    return {"bytes": box[0].size, "sha256": box[0].sha256.hexdigest()}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class ShardFileError(ValueError):
    """A file of a sharded checkpoint is missing, truncated, damaged or not of this checkpoint.

    :meth:`ShardedDataParameters.read_shards` raises it on every rank alike, with one message
    naming the file(s), what is wrong and what to do."""


def _check_file(path: Path, recorded: dict[str, Any] | None) -> None:
    """:class:`ShardFileError` (naming ``path``) when the file is missing, or differs from the
    size and SHA-256 ``recorded`` for it at the save (a save from before checksums were kept
    records none: then only its existence is checked here)."""
    if not path.is_file():
        raise ShardFileError(f"{path} is missing")
    if recorded is None:
        return
    size, expected = path.stat().st_size, int(recorded["bytes"])
    if size < expected:
        raise ShardFileError(f"{path} is truncated ({size:,} of the {expected:,} bytes saved)")
    if size > expected:
        raise ShardFileError(f"{path} has {size:,} bytes where the save wrote {expected:,}: it is not the file "
                             "that was saved")
    if _file_sha256(path) != recorded["sha256"]:
        raise ShardFileError(f"{path} is damaged: its SHA-256 does not match the one the checkpoint recorded")


def _torch_load(path: Path, *, mmap: bool) -> dict[str, Any]:
    """``torch.load`` of a file of a sharded save; :class:`ShardFileError` naming it when it fails."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise ShardFileError(f"{path} is unreadable, truncated or damaged ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ShardFileError(f"{path} is not a file of a sharded checkpoint (it holds a {type(data).__name__})")
    return data


def _shard_advice(directory: Path) -> str:
    """What the user can do about a damaged file of the save in ``directory``."""
    run_dir = directory.parent
    latest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    if directory.name == "data_parameters" and latest.is_file() and previous.is_file():
        # A run directory (dataparams.runs.RunDir), whose save_checkpoint keeps the previous
        # checkpoint's shard files until the next save.
        return (f"Put the original file back, or resume from the previous checkpoint, whose shard files are kept: "
                f"move {latest} aside (e.g. to checkpoint.damaged.pt) and run the same command with --resume "
                f"again; it then continues from {previous.name}, one epoch earlier")
    return ("Put the original file back (from a copy); without it this checkpoint cannot be resumed -- start the "
            "run again (--overwrite) or from an earlier copy of the whole directory")


# --------------------------------------------------------------------------------------------
# Sharded mode


@dataclass
class ShardedStepPlan(StepPlan):
    """A :class:`StepPlan` of :class:`ShardedDataParameters`, with what the step fetched.

    Attributes
    ----------
    class_log_sigma, instance_log_sigma : Tensor (B_r,) or None
        Leaf tensors holding ``log sigma`` of this rank's samples (None for a level that is off).
        The forward pass uses them; ``backward`` fills their ``.grad``, which
        :meth:`ShardedDataParameters.step` sends to the owners.
    global_targets, global_indices : LongTensor (B,) or None
        The whole global batch (targets when the class level is on, indices when the instance
        level is on).
    owned_positions : LongTensor or None
        Positions in the global batch whose instance row this rank owns.
    per_sample_loss : Tensor (B_r,) or None
        This rank's per-sample losses, set by a caller that wants them sent to the owners with
        the gradients (:meth:`ShardedDataParameters.gather_gradients`'s ``extra``).
    global_loss : Tensor (B,) or None
        Every rank's ``per_sample_loss``, in global-batch order, once gathered.
    """

    class_log_sigma: Tensor | None = None
    instance_log_sigma: Tensor | None = None
    global_targets: Tensor | None = None
    global_indices: Tensor | None = None
    owned_positions: Tensor | None = None
    per_sample_loss: Tensor | None = None
    global_loss: Tensor | None = None


class ShardedDataParameters(nn.Module):
    """Data parameters whose ``N`` instance rows are split over the ranks (sec. 2, 3.1).

    Rank ``r`` stores the rows ``[start, end) = shard_range(N, P, r)`` of the instance
    log-sigmas and of their momentum: memory ``8 N / P`` bytes per rank instead of ``8 N``.
    Class log-sigmas and their momentum (``K`` rows) are replicated. The maths are those of
    :class:`~dataparams.DataParameters` with :class:`~dataparams.SparseSGD`: the same
    initialisation and clamp, sigma ``exp(c)``, ``exp(i)`` or ``exp(c) + exp(i)``, the
    regulariser summed over batch occurrences, momentum SGD on the present rows only.

    A step (:meth:`begin_step`, forward, backward, :meth:`step`)::

        plan = sdp.begin_step(y, idx)                     # indices to owners, values back: O(B)
        sigma, penalty = sdp.sigma_and_regularizer(plan, wd_class=..., wd_instance=...)
        loss = distributed_loss(scaled_loss(loss_fn, ddp_model(x), y, sigma, reduction="none"),
                                penalty, global_batch_size=plan.global_batch_size,
                                world_size=ctx.world_size)
        loss.backward()
        sdp.step(plan)                                    # gradients to owners; owners update
        optimizer.step()

    Parameters
    ----------
    num_classes, num_instances : int
        ``K`` and ``N``.
    ctx : DistributedContext
    class_curriculum, instance_curriculum, init_class, init_instance, clamp
        As in :class:`~dataparams.DataParameters`.
    lr_class, lr_instance, momentum, nesterov, weight_decay
        The update of each level, as in :class:`~dataparams.SparseSGD` (weight decay on present
        rows; the paper's decay is the regulariser, so keep it 0). The learning rates are plain
        attributes, for schedules.

    Attributes
    ----------
    class_log_sigma, class_momentum : Tensor (K,)
    instance_log_sigma, instance_momentum : Tensor (end - start,)
        This rank's rows only; left out of ``state_dict`` (use :meth:`save` and :meth:`load`).
    shard : (int, int)
        ``(start, end)``.
    bytes_total : int
        Data-parameter bytes received by this rank over all steps.
    """

    def __init__(
        self,
        num_classes: int,
        num_instances: int,
        *,
        ctx: DistributedContext,
        class_curriculum: bool = False,
        instance_curriculum: bool = False,
        init_class: float = 1.0,
        init_instance: float = 1.0,
        clamp: tuple[float, float] | None = DEFAULT_CLAMP,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        # A one-row DataParameters validates the options and applies its initialisation and
        # clamp rules, so both layouts start from the same values by construction.
        template = DataParameters(
            num_classes, 1, class_curriculum=class_curriculum, instance_curriculum=instance_curriculum,
            init_class=init_class, init_instance=init_instance, clamp=clamp,
        )
        if int(num_instances) < 0:
            raise ValueError(f"num_instances must be >= 0, got {num_instances}")
        if not (lr_class >= 0 and lr_instance >= 0 and 0 <= momentum < 1 and weight_decay >= 0):
            raise ValueError("need lr_class, lr_instance, weight_decay >= 0 and 0 <= momentum < 1")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self.ctx = ctx
        self.num_classes, self.num_instances = int(num_classes), int(num_instances)
        self.class_curriculum, self.instance_curriculum = bool(class_curriculum), bool(instance_curriculum)
        self.log_bounds = template.log_bounds
        self.lr_class, self.lr_instance = float(lr_class), float(lr_instance)
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)
        self.shard = shard_range(self.num_instances, ctx.world_size, ctx.rank)
        # Bytes of the largest share of (index, target) pairs seen: the padding of begin_step's
        # gather (see _all_gather_ragged).
        self._capacity = 0
        self.bytes_total = 0
        rows = self.shard[1] - self.shard[0]
        device = ctx.device
        self.register_buffer("class_log_sigma", template.class_log_sigma.detach().clone().to(device))
        self.register_buffer("class_momentum", torch.zeros(self.num_classes, device=device))
        init = float(template.instance_log_sigma.detach()[0])
        # Not in state_dict: a checkpoint written by one rank would hold one shard only and load
        # it on every rank. The instance rows go through save() / load().
        self.register_buffer("instance_log_sigma", torch.full((rows,), init, device=device), persistent=False)
        self.register_buffer("instance_momentum", torch.zeros(rows, device=device), persistent=False)

    # -- the step -------------------------------------------------------------------------

    def begin_step(self, targets: Tensor, indices: Tensor) -> ShardedStepPlan:
        """Make the global batch known and fetch this rank's log-sigmas from their owners.

        Two collectives, both O(B): an all-gather of ``B_r`` and the local (index, target)
        pairs (padded to the largest share seen so far, so the first step, or a larger batch,
        takes one more); an all-reduce of the ``B`` instance values, each filled in by its owner
        (zeros elsewhere, so the sum is exact).

        Parameters
        ----------
        targets, indices : LongTensor (B_r,)
            This rank's labels and global sample indices.
        """
        device = self.class_log_sigma.device
        targets, indices = _check_batch(targets, indices, self.num_classes, self.num_instances, device)
        columns = []
        if self.instance_curriculum:
            columns.append(indices)
        if self.class_curriculum:
            columns.append(targets)
        index_dtype = _index_dtype(max(self.num_instances, self.num_classes))
        local = torch.stack(columns, 1) if columns else indices.new_empty((indices.shape[0], 0))
        payload = local.to(self.ctx.device, index_dtype).contiguous().view(torch.uint8).reshape(-1)
        meta, payloads, nbytes = _all_gather_ragged([targets.shape[0]], payload, self._capacity, self.ctx)
        # The same lengths reach every rank, so the capacity stays equal everywhere.
        self._capacity = max(self._capacity, *(p.numel() for p in payloads))
        plan = ShardedStepPlan(targets, indices, meta[:, 0].tolist(), self.ctx.rank)
        if columns:
            # clone: a byte slice at an odd offset cannot be reinterpreted in place.
            everything = torch.cat([p.clone().view(index_dtype) for p in payloads]).view(-1, len(columns))
            everything = everything.to(device, torch.long)
            if self.instance_curriculum:
                plan.global_indices = everything[:, 0]
            if self.class_curriculum:
                plan.global_targets = everything[:, -1]
        if self.class_curriculum:
            plan.class_log_sigma = self.class_log_sigma.index_select(0, targets).requires_grad_(True)
        if self.instance_curriculum:
            g = plan.global_indices
            start, end = self.shard
            owned = ((g >= start) & (g < end)).nonzero().squeeze(1)
            plan.owned_positions = owned
            values = self.instance_log_sigma.new_zeros(g.shape[0])
            values[owned] = self.instance_log_sigma.index_select(0, g[owned] - start)
            if self.ctx.is_distributed:
                values = values.to(self.ctx.device)
                dist.all_reduce(values)
                nbytes += 2 * (self.ctx.world_size - 1) * values.numel() * values.element_size() // self.ctx.world_size
                values = values.to(device)
            mine = values[plan.offset : plan.offset + targets.shape[0]]
            plan.instance_log_sigma = mine.clone().requires_grad_(True)
        plan.bytes_exchanged = nbytes
        self.bytes_total += nbytes
        return plan

    def sigma_and_regularizer(
        self, plan: ShardedStepPlan, *, wd_class: float = 0.0, wd_instance: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """Temperatures of this rank's samples and their L2 penalty (eq. 1, sec. 2.2, 3.1).

        Returns
        -------
        sigma : Tensor (B_r,)
            ``exp(c)``, ``exp(i)``, ``exp(c) + exp(i)`` (the joint curriculum adds
            temperatures), or ones with both levels off.
        penalty : Tensor ()
            ``0.5 wd_class sum c^2 + 0.5 wd_instance sum i^2`` over this rank's occurrences.
        """
        c, i = plan.class_log_sigma, plan.instance_log_sigma
        device = self.class_log_sigma.device
        sigma = combine_sigma(c, i, batch_size=plan.targets.shape[0], device=device)
        penalty = torch.zeros((), device=device)
        if c is not None and wd_class:
            penalty = penalty + 0.5 * wd_class * c.square().sum()
        if i is not None and wd_instance:
            penalty = penalty + 0.5 * wd_instance * i.square().sum()
        return sigma, penalty

    def forward(self, plan: ShardedStepPlan) -> Tensor:
        """sigma (B_r,) of this rank's samples; see :meth:`sigma_and_regularizer`."""
        return self.sigma_and_regularizer(plan)[0]

    @torch.no_grad()
    def step(self, plan: ShardedStepPlan, *, grad_scale: float | None = None) -> int:
        """Send the step's gradients to the owners and update: O(B).

        :meth:`gather_gradients` then :meth:`apply_gradients`. Every rank updates the class rows
        of the global batch (identically on all ranks), each owner its instance rows; the
        gradients are summed over ranks and scaled by ``1/P`` (:func:`loss_weights`). A row
        present several times gets the sum of its entries, a present row with a zero gradient
        still counts as present.

        Parameters
        ----------
        plan : ShardedStepPlan
            From this step's :meth:`begin_step`, after ``backward``.
        grad_scale : float, optional
            The loss scale of a ``torch.amp.GradScaler`` (``scaler.get_scale()``): gradients are
            divided by it, and the step is skipped, on every rank alike, when one is not finite.

        Returns
        -------
        int
            Bytes received by this rank during the whole step (also in ``plan.bytes_exchanged``).
        """
        grads = self.gather_gradients(plan)
        if grads is None:
            return plan.bytes_exchanged
        if grad_scale is not None:
            grads = grads / grad_scale
            if not bool(torch.isfinite(grads).all()):
                return plan.bytes_exchanged
        self.apply_gradients(plan, grads)
        return plan.bytes_exchanged

    def _leaves(self, plan: ShardedStepPlan) -> list[Tensor]:
        # Column 0 is the instance level when it is on, the last column the class level.
        return [t for t in (plan.instance_log_sigma, plan.class_log_sigma) if t is not None]

    @torch.no_grad()
    def gather_gradients(self, plan: ShardedStepPlan, extra: Tensor | None = None) -> Tensor | None:
        """Every rank's per-sample data-parameter gradients of this step, times ``1/P``: O(B).

        One all-gather of this rank's ``(B_r, L)`` gradients (``L`` levels on), with ``extra``
        as one more column when given (a per-sample value the owners need, such as the loss;
        it lands in ``plan.global_loss`` unscaled).

        Returns
        -------
        Tensor (B, L) or None
            Rows in global-batch order; columns as in :meth:`apply_gradients`. None when both
            levels are off.
        """
        leaves = self._leaves(plan)
        if not leaves:
            return None
        # A level whose sigma was not used in the loss still counts its rows as present,
        # as a gathered row with a zero gradient does in SparseSGD.
        columns = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
        if extra is not None:
            columns.append(extra.detach().to(columns[0].dtype))
        local = torch.stack(columns, 1)
        if self.ctx.is_distributed:
            gathered, b = _all_gather_padded(local.to(self.ctx.device), max(plan.counts), self.ctx)
            plan.bytes_exchanged += b
            self.bytes_total += b
            everything = _unpad(gathered, plan.counts).to(local.device)
        else:
            everything = local
        if extra is not None:
            plan.global_loss = everything[:, -1].to(extra.dtype)
            everything = everything[:, :-1]
        return everything * loss_weights(plan.global_batch_size, self.ctx.world_size).data_gradient

    @torch.no_grad()
    def apply_gradients(self, plan: ShardedStepPlan, grads: Tensor) -> None:
        """The SparseSGD update of the global batch's class rows and this rank's instance rows.

        Parameters
        ----------
        plan : ShardedStepPlan
        grads : Tensor (B, L)
            From :meth:`gather_gradients` (unscaled, when a gradient scaler is used): column 0
            the instance level when it is on, the last column the class level when it is on.
        """
        options = dict(momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov,
                       bounds=self.log_bounds)
        if plan.class_log_sigma is not None:
            g = torch.sparse_coo_tensor(plan.global_targets.unsqueeze(0), grads[:, -1],  # type: ignore[union-attr]
                                        (self.num_classes,), check_invariants=False)
            sparse_sgd_step([self.class_log_sigma], [g], [self.class_momentum], lr=self.lr_class, **options)
        if plan.instance_log_sigma is not None:
            values = grads[:, 0]
            own = plan.owned_positions
            rows = plan.global_indices.index_select(0, own) - self.shard[0]  # type: ignore[union-attr]
            g = torch.sparse_coo_tensor(rows.unsqueeze(0), values.index_select(0, own),  # type: ignore[arg-type]
                                        self.instance_log_sigma.shape, check_invariants=False)
            sparse_sgd_step([self.instance_log_sigma], [g], [self.instance_momentum], lr=self.lr_instance,
                            **options)

    # -- whole-table access and checkpoints (epoch-level, O(N / P) per rank) ---------------

    @torch.no_grad()
    def gather_shard(self, rows: Tensor, dst: int = 0) -> Tensor | None:
        """Concatenate every rank's ``rows`` (shard-shaped, ``(end - start, ...)``) on rank ``dst``.

        For any per-sample array kept like the instance log-sigmas (a per-sample loss, say).
        O(N) memory on ``dst``, None elsewhere: for the end of an epoch, never inside a step.
        Collective.
        """
        if rows.shape[0] != self.shard[1] - self.shard[0]:
            raise ValueError(f"expected {self.shard[1] - self.shard[0]} rows (this rank's shard), got {rows.shape[0]}")
        if not self.ctx.is_distributed:
            return rows.clone()
        sizes = split_sizes(self.num_instances, self.ctx.world_size)
        buf = rows.new_zeros((max(sizes), *rows.shape[1:])).to(self.ctx.device)
        buf[: rows.shape[0]] = rows
        if self.ctx.rank == dst:
            out = [torch.empty_like(buf) for _ in sizes]
            dist.gather(buf, out, dst=dst)
            return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(rows.device)
        dist.gather(buf, None, dst=dst)
        return None

    @torch.no_grad()
    def gather_instance_log_sigma(self, dst: int = 0) -> Tensor | None:
        """All ``N`` instance log-sigmas on rank ``dst`` (None elsewhere), e.g. for snapshots.

        O(N) memory on ``dst``: for the end of an epoch, never inside a step.
        """
        return self.gather_shard(self.instance_log_sigma, dst)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Tensor] | None = None) -> Path:
        """Write a checkpoint of the data parameters that any number of processes can load.

        :meth:`write_shards`, then rank 0 writes ``manifest.json``, which names the files, and
        removes the files of older saves. Until the manifest is replaced the previous checkpoint
        is intact: a crash at any point leaves one complete checkpoint. Collective: call it on
        every rank.

        Returns
        -------
        Path
            The manifest.
        """
        directory = Path(directory)
        manifest = self.write_shards(directory, extra)
        path = directory / _MANIFEST
        if manifest is not None:
            text = json.dumps(manifest, indent=1)
            _atomic_write(path, lambda f: f.write(text.encode()))
            remove_stale_shards(directory, manifest)
        self.ctx.barrier()
        return path

    def write_shards(self, directory: str | os.PathLike[str], extra: dict[str, Tensor] | None = None
                     ) -> dict[str, Any] | None:
        """Write this save's files; return its manifest on rank 0 (None elsewhere) without committing it.

        Every rank writes its shard (``start``, ``end``, values, momentum and each ``extra``
        array) to its own file, rank 0 the class parameters. Each file is written atomically
        and named with a token fresh to this save, so no file of an earlier save is touched:
        the caller commits the save by writing the manifest where a reader looks for it (a
        ``manifest.json``, or inside a training checkpoint), and then removes the older files
        with :func:`remove_stale_shards`. ``directory`` must be shared by all ranks.
        Collective: call it on every rank.

        Parameters
        ----------
        directory : path
        extra : dict of str to Tensor, optional
            Per-sample arrays of this rank's rows (``(end - start, ...)``) to keep with the
            shard, e.g. an objective's per-sample losses; :meth:`read_shards` returns them
            re-split for the reading rank.
        """
        directory = Path(directory)
        extra = dict(extra or {})
        rows = self.shard[1] - self.shard[0]
        for name, t in extra.items():
            if name in _SHARD_KEYS or t.shape[0] != rows:
                raise ValueError(f"extra array {name!r}: need a new name and {rows} rows, got {tuple(t.shape)}")
        if self.ctx.is_main:
            directory.mkdir(parents=True, exist_ok=True)
        # Rank 0 made the directory before it sends the token, so the others find it.
        token = self._agree_on_token()
        p, r = self.ctx.world_size, self.ctx.rank
        start, end = self.shard
        shard_file = f"shard-{r:05d}-of-{p:05d}-{token}.pt"
        # Size and SHA-256 of every file go into the manifest (inside the checksummed
        # checkpoint), so that a reader finds a truncated, damaged or replaced file before
        # torch.load does, and shard files stay plain torch files that load memory-mapped.
        written = {shard_file: _atomic_save_hashed(
            {"format": SHARDED_FORMAT, "start": start, "end": end, "num_instances": self.num_instances,
             "instance_log_sigma": self.instance_log_sigma.cpu(), "instance_momentum": self.instance_momentum.cpu(),
             **{name: t.detach().cpu() for name, t in extra.items()}},
            directory / shard_file,
        )}
        class_file = f"classes-{token}.pt"
        if self.ctx.is_main:
            written[class_file] = _atomic_save_hashed(
                {"format": SHARDED_FORMAT, "num_classes": self.num_classes,
                 "class_log_sigma": self.class_log_sigma.cpu(), "class_momentum": self.class_momentum.cpu()},
                directory / class_file,
            )
        # Every rank has written its file once rank 0 has every rank's checksums (the barrier).
        checksums = {name: c for part in self.ctx.all_gather_object(written) for name, c in part.items()}
        if not self.ctx.is_main:
            return None
        shards = [{"file": f"shard-{q:05d}-of-{p:05d}-{token}.pt", "start": s, "end": e}
                  for q, (s, e) in enumerate(shard_range(self.num_instances, p, q) for q in range(p))]
        return {"format": SHARDED_FORMAT, "num_classes": self.num_classes, "num_instances": self.num_instances,
                "world_size": p, "token": token, "classes": class_file, "shards": shards, "extra": sorted(extra),
                "checksums": checksums}

    def _agree_on_token(self) -> str:
        # Rank 0 draws the token and broadcasts it as a tensor (no pickling): every rank must name
        # its file after the same save.
        t = torch.tensor([secrets.randbits(62)], dtype=torch.int64, device=self.ctx.device)
        if self.ctx.is_distributed:
            dist.broadcast(t, src=0)
        return f"{int(t.item()):016x}"

    @torch.no_grad()
    def load(self, directory: str | os.PathLike[str]) -> dict[str, Tensor]:
        """Load a checkpoint written by :meth:`save` with any number of processes.

        Reads ``manifest.json``; see :meth:`read_shards` (collective under a process group).
        """
        directory = Path(directory)
        return self.read_shards(directory, json.loads((directory / _MANIFEST).read_text()))

    @torch.no_grad()
    def read_shards(self, directory: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Tensor]:
        """Load the save that ``manifest`` (from :meth:`write_shards`) describes, by any number of processes.

        This rank reads the class file, and from each old shard that overlaps its own
        ``[start, end)`` only the overlapping slice (shards are memory-mapped). Each of these
        files is checked first: present, of the size and SHA-256 that the manifest records (a
        manifest written before checksums were kept records none; then only what the file holds
        is checked), and holding what the manifest says it holds. The ranks agree on the outcome
        with one all-gather, so that a missing or damaged file stops every rank alike with the
        same :class:`ShardFileError` -- not one rank with a torch error while the others wait for
        it in their next collective. The checksum reads each of this rank's files whole once.
        Collective when the context has a process group: call it on every rank.

        Returns
        -------
        dict of str to Tensor
            This rank's rows of every ``extra`` array of the save, on the CPU.

        Raises
        ------
        ValueError
            If the checkpoint is for another ``N`` or ``K``, or its shards do not tile ``[0, N)``
            (the same on every rank: decided from the manifest alone).
        ShardFileError
            On every rank, when a file that any rank reads is missing, truncated, damaged or not
            of this save: the message names the files and what is wrong, and says what to do.
        """
        directory = Path(directory)
        if manifest.get("format") != SHARDED_FORMAT:
            raise ValueError(f"{directory} holds no {SHARDED_FORMAT} checkpoint")
        if manifest["num_instances"] != self.num_instances or manifest["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint holds N={manifest['num_instances']}, K={manifest['num_classes']}; this model has "
                f"N={self.num_instances}, K={self.num_classes}"
            )
        shards = manifest["shards"]
        if [s["start"] for s in shards] != [0, *(s["end"] for s in shards[:-1])] or shards[-1]["end"] != self.num_instances:
            raise ValueError(f"the shards of {directory} do not tile [0, {self.num_instances})")
        problem: str | None = None
        try:
            opened = self._open_checked(directory, manifest)
        except ShardFileError as e:
            problem = str(e)
        except Exception as e:  # anything else this rank met: the others must hear of it too
            problem = f"reading {directory} failed ({type(e).__name__}: {e})"
        outcomes = self.ctx.all_gather_object(None if problem is None else (problem, _shard_advice(directory)))
        failed = [o for o in outcomes if o is not None]
        if failed:
            # The same text on every rank: the problems in rank order (a file several ranks read
            # once), and the advice of the first rank that found one.
            problems = list(dict.fromkeys(p for p, _ in failed))
            more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
            raise ShardFileError(f"the sharded checkpoint in {directory} cannot be loaded: "
                                 f"{'; '.join(problems[:4])}{more}. {failed[0][1]}")
        # Every rank's files are good: only now is anything overwritten (a refused load leaves
        # every rank's data parameters as they were).
        classes, pending = opened
        self.class_log_sigma.copy_(classes["class_log_sigma"])
        self.class_momentum.copy_(classes["class_momentum"])
        start, end = self.shard
        extra: dict[str, Tensor] = {}
        for data, src, dst in pending:
            self.instance_log_sigma[dst] = data["instance_log_sigma"][src]
            self.instance_momentum[dst] = data["instance_momentum"][src]
            for name in manifest.get("extra", []):
                t = data[name]
                if name not in extra:
                    extra[name] = t.new_zeros((end - start, *t.shape[1:]))
                extra[name][dst] = t[src]
        return extra

    def _open_checked(self, directory: Path, manifest: dict[str, Any]
                      ) -> tuple[dict[str, Any], list[tuple[dict[str, Any], slice, slice]]]:
        """The class file's contents and, for each shard this rank reads from, its (memory-mapped)
        contents with the source and destination rows; each file checked first
        (:class:`ShardFileError` naming it)."""
        checksums = manifest.get("checksums") or {}
        path = directory / manifest["classes"]
        _check_file(path, checksums.get(manifest["classes"]))
        classes = _torch_load(path, mmap=False)
        shapes = {k: tuple(classes[k].shape) for k in ("class_log_sigma", "class_momentum")
                  if isinstance(classes.get(k), Tensor)}
        if (classes.get("format") != SHARDED_FORMAT or classes.get("num_classes") != self.num_classes
                or shapes != {"class_log_sigma": (self.num_classes,), "class_momentum": (self.num_classes,)}):
            raise ShardFileError(f"{path} is not the class file of this checkpoint (it holds "
                                 f"{classes.get('format')!r} for K={classes.get('num_classes')}; this run has "
                                 f"K={self.num_classes})")
        start, end = self.shard
        names = list(manifest.get("extra", []))
        pending = []
        for s in manifest["shards"]:
            lo, hi = max(start, s["start"]), min(end, s["end"])
            if lo >= hi:
                continue
            path = directory / s["file"]
            _check_file(path, checksums.get(s["file"]))
            data = _torch_load(path, mmap=True)
            rows = s["end"] - s["start"]
            held = (data.get("format"), data.get("num_instances"), data.get("start"), data.get("end"))
            if held != (SHARDED_FORMAT, self.num_instances, s["start"], s["end"]):
                raise ShardFileError(
                    f"{path} is not a shard of this checkpoint: it holds rows [{held[2]}, {held[3]}) of "
                    f"N={held[1]}, the manifest names it for rows [{s['start']}, {s['end']}) of N={self.num_instances}"
                )
            short = [k for k in ("instance_log_sigma", "instance_momentum", *names)
                     if not isinstance(data.get(k), Tensor) or data[k].shape[:1] != (rows,)]
            if short:
                raise ShardFileError(f"{path} is not a shard of this checkpoint: {', '.join(short)} missing or not "
                                     f"of {rows} rows")
            pending.append((data, slice(lo - s["start"], hi - s["start"]), slice(lo - start, hi - start)))
        return classes, pending

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_instances={self.num_instances}, shard={self.shard}, "
            f"class_curriculum={self.class_curriculum}, instance_curriculum={self.instance_curriculum}, "
            f"log_bounds={self.log_bounds}"
        )


# --------------------------------------------------------------------------------------------
# Training objectives for a torchrun job (what dataparams.experiment builds)

#: Values of ``TrainConfig.distributed.mode``.
MODES = ("replicated", "sharded")


class ExchangeOptimizer:
    """The data parameters' optimizer, stepping on the gradients of the global batch.

    What :meth:`ReplicatedObjective.optimizers` returns: :meth:`step` first runs
    :meth:`ReplicatedExchange.all_reduce_gradients` on the objective's current step (after
    ``backward``, before the update), then steps the wrapped
    :class:`~dataparams.optim.SparseSGD`, so every rank applies the same update. ``zero_grad``,
    ``param_groups``, ``state_dict`` and ``load_state_dict`` are the wrapped optimizer's: a
    checkpoint holds exactly what one process's holds.

    With a ``torch.amp.GradScaler`` call :meth:`synchronize` before ``scaler.step(optimizer)``
    (:meth:`dataparams.engine.Execution.backward_and_step` does): the scaler then unscales, and
    checks for infinities, the combined gradients, which are the same on every rank, so every
    rank skips or takes the step alike.

    Parameters
    ----------
    optimizer : Optimizer
        The single-process optimizer of the data parameters.
    objective : ReplicatedObjective
        Whose ``exchange`` and ``current_plan`` the step uses.
    """

    def __init__(self, optimizer: Optimizer, objective: ReplicatedObjective) -> None:
        self.optimizer, self.objective = optimizer, objective
        self._synchronized: StepPlan | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def synchronize(self) -> None:
        """Combine every rank's gradients of the current step (once per step)."""
        plan = self.objective.current_plan
        if plan is None:
            raise RuntimeError("no step to synchronise: run the objective's forward and backward first")
        if self._synchronized is not plan:
            self.objective.exchange.all_reduce_gradients(plan)
            self._synchronized = plan

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        self.synchronize()
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)


class ReplicatedObjective(DataParameterObjective):
    """:class:`~dataparams.objectives.DataParameterObjective` for one rank of a torchrun job.

    Every rank holds all data parameters and all per-sample buffers. Per step: ``forward``
    agrees on the global batch size (:meth:`ReplicatedExchange.begin_step`) and returns this
    rank's share of the objective weighted by :func:`distributed_loss`; the optimizer
    (:class:`ExchangeOptimizer`) combines the batch's data-parameter gradients before updating,
    so the replicas stay identical to one process's data parameters. ``record`` writes this
    rank's samples into ``last_loss`` and marks them in ``visited``; at the end of the epoch one
    all-reduce of the ``(N,)`` buffers gives every rank every sample's loss of its latest
    visit, after which ``loss_sum`` and ``log_sigma_sum`` accumulate as in one process. The
    ``state_dict`` has the single-process keys, so checkpoints move between any numbers of
    processes.

    Parameters
    ----------
    data_parameters : DataParameters
        Initialised identically on every rank.
    ctx : DistributedContext
    **options
        As in :class:`~dataparams.objectives.DataParameterObjective`.
    """

    def __init__(self, data_parameters: DataParameters, *, ctx: DistributedContext, **options: Any) -> None:
        super().__init__(data_parameters, **options)
        self.ctx = ctx
        self.exchange = ReplicatedExchange(data_parameters, ctx)
        #: The plan of the step in flight, set by ``forward``; the optimizer reads it.
        self.current_plan: StepPlan | None = None
        self._exchanging = {name: ExchangeOptimizer(opt, self) for name, opt in super().optimizers().items()}
        # Which samples this rank visited in the current epoch; rebuilt every epoch, so not
        # part of a checkpoint (written after the epoch's combination).
        self.register_buffer("visited", torch.zeros(self.num_train, dtype=torch.bool, device=self.last_loss.device),
                             persistent=False)

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        plan = self.exchange.begin_step(targets, indices)
        self.current_plan = plan
        sigma, penalty = self.dp.sigma_and_regularizer(plan.targets, plan.indices, wd_class=self.wd_class,
                                                       wd_instance=self.wd_instance)
        per_sample = scaled_loss(self.loss_fn, logits, targets, sigma, reduction="none")
        loss = distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                                world_size=self.ctx.world_size)
        return loss, per_sample.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return self._exchanging  # type: ignore[return-value]

    @torch.no_grad()
    def record(self, indices: Tensor, per_sample: Tensor, logits: Tensor | None = None) -> None:
        super().record(indices, per_sample, logits)
        self.visited.index_fill_(0, indices, True)

    def on_epoch_start(self, epoch: int) -> None:
        self.visited.zero_()
        super().on_epoch_start(epoch)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        self._combine_last_loss()
        super().on_epoch_end(epoch)

    @torch.no_grad()
    def _combine_last_loss(self) -> None:
        # Each sample's loss comes from the rank that visited it; a sample visited by several
        # ranks in one epoch (a data set that repeats an index) gets the mean of those losses.
        if not self.ctx.is_distributed:
            return
        both = torch.stack([torch.where(self.visited, self.last_loss, 0.0), self.visited.to(self.last_loss.dtype)])
        both = both.to(self.ctx.device)
        dist.all_reduce(both)
        both = both.to(self.last_loss.device)
        self.last_loss.copy_(torch.where(both[1] > 0, both[0] / both[1].clamp_min(1.0), self.last_loss))


class ShardedOptimizer:
    """The update of :class:`ShardedDataParameters` as an optimizer for the engine.

    :meth:`step` gathers the step's per-sample gradients, with the per-sample losses as one more
    column (:meth:`ShardedDataParameters.gather_gradients`), and each owner updates its rows
    (:meth:`ShardedDataParameters.apply_gradients`). For a ``torch.amp.GradScaler``,
    :meth:`synchronize` puts the gathered gradients in ``param_groups`` as the gradient of one
    tensor, so that ``scaler.step(optimizer)`` unscales them, skips the step on every rank alike
    when one is not finite, and ``scaler.update()`` hears of it, as with one process's
    SparseSGD. The optimizer state (momentum) lives in the :class:`ShardedDataParameters`,
    whose shard files hold it: :meth:`state_dict` is empty.

    Parameters
    ----------
    objective : ShardedObjective
    """

    def __init__(self, objective: ShardedObjective) -> None:
        self.objective = objective
        self._gradients: Tensor | None = None
        self._synchronized: ShardedStepPlan | None = None
        self.state: dict[Any, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [] if self._gradients is None else [self._gradients]}]

    def synchronize(self) -> None:
        """Gather the current step's gradients and losses from every rank (once per step)."""
        plan = self.objective.current_plan
        if plan is None:
            raise RuntimeError("no step to synchronise: run the objective's forward and backward first")
        if self._synchronized is plan:
            return
        grads = self.objective.dp.gather_gradients(plan, extra=plan.per_sample_loss)
        if grads is None:
            raise RuntimeError("sharded data parameters need the instance level on")
        # The gathered gradients as the .grad of a leaf of their shape: the form in which a
        # GradScaler finds, unscales and checks gradients.
        self._gradients = torch.zeros_like(grads).requires_grad_(True)
        self._gradients.grad = grads
        self._synchronized = plan

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.synchronize()
        plan, grads = self.objective.current_plan, self._gradients.grad  # type: ignore[union-attr]
        self.objective.dp.apply_gradients(plan, grads)  # type: ignore[arg-type]
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The step's leaves are fresh tensors of each forward pass; only the gathered copy is ours.
        self._gradients = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            raise ValueError("a sharded data-parameter optimizer keeps its state in the shard files, not in a "
                             f"state_dict; got keys {sorted(state_dict)}")


class ShardedObjective(Objective):
    """The data-parameter objective with instance parameters sharded over the ranks (for N of 1e8-1e9).

    The maths of :class:`~dataparams.objectives.DataParameterObjective` (cross-entropy, or
    ``loss_fn``, on ``logits / sigma`` plus the L2 penalty on log sigma; sec. 2, 3.1) over a
    :class:`ShardedDataParameters`. Rank ``r`` keeps, for its rows :func:`shard_range`
    ``(N, P, r)`` only: the instance log-sigmas and their momentum, and the per-sample buffers
    ``last_loss``, ``loss_sum`` and ``log_sigma_sum``. That is ``28 N / P`` bytes per rank
    (float64 sums), where the replicated layout keeps ``36 N`` on every rank. Class parameters
    (``K`` rows) are replicated. The losses of a step travel to the owners with its gradients
    (no extra collective).

    What needs all ``N`` values gathers them on rank 0 at the end of an epoch (O(N) there,
    transiently): :meth:`snapshot` (sigma of every sample), :meth:`scores` (the loss and
    sigma-mean scores) and hence the per-epoch snapshot and detection metrics. Checkpoints are
    per-shard files (:meth:`save_shards`) that any number of processes reads back
    (:meth:`load_shards`); ``state_dict`` holds the replicated part only.

    Parameters
    ----------
    num_classes, num_train : int
        ``K`` and ``N``.
    ctx : DistributedContext
    class_curriculum, init_class, init_instance, clamp
        As in :class:`~dataparams.DataParameters`; the instance level is always on.
    lr_class, lr_instance, momentum, wd_class, wd_instance, loss_fn
        As in :class:`~dataparams.objectives.DataParameterObjective`.
    """

    name = "data-parameters"

    #: The per-sample buffers, each holding this rank's rows.
    SHARDED_BUFFERS = ("last_loss", "loss_sum", "log_sigma_sum")

    def __init__(
        self,
        num_classes: int,
        num_train: int,
        *,
        ctx: DistributedContext,
        class_curriculum: bool = False,
        init_class: float = 1.0,
        init_instance: float = 1.0,
        clamp: tuple[float, float] | None = DEFAULT_CLAMP,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float = 0.9,
        wd_class: float = 0.0,
        wd_instance: float = 0.0,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        start, end = shard_range(int(num_train), ctx.world_size, ctx.rank)
        # The base class (a ScoreTracker) allocates last_loss, loss_sum and log_sigma_sum with one
        # row per sample it is given: this rank's rows.
        super().__init__(end - start, ctx.device, sigma="epoch")
        self.num_train = int(num_train)
        self.ctx = ctx
        for name in self.SHARDED_BUFFERS:
            # One rank's rows must not reach a state_dict that rank 0 alone saves; they travel in
            # the shard files.
            self.register_buffer(name, getattr(self, name), persistent=False)
        self.dp = ShardedDataParameters(
            num_classes, num_train, ctx=ctx, class_curriculum=class_curriculum, instance_curriculum=True,
            init_class=init_class, init_instance=init_instance, clamp=clamp, lr_class=lr_class,
            lr_instance=lr_instance, momentum=momentum,
        )
        self.wd_class, self.wd_instance = wd_class, wd_instance
        self.loss_fn = loss_fn or per_sample_cross_entropy
        #: The plan of the step in flight, set by ``forward``; the optimizer and ``record`` read it.
        self.current_plan: ShardedStepPlan | None = None
        self._optimizer = ShardedOptimizer(self)

    def forward(self, logits: Tensor, inputs: Tensor, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        plan = self.dp.begin_step(targets, indices)
        self.current_plan = plan
        sigma, penalty = self.dp.sigma_and_regularizer(plan, wd_class=self.wd_class, wd_instance=self.wd_instance)
        per_sample = scaled_loss(self.loss_fn, logits, targets, sigma, reduction="none")
        plan.per_sample_loss = per_sample.detach()
        loss = distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                                world_size=self.ctx.world_size)
        return loss, per_sample.detach()

    def optimizers(self) -> dict[str, Optimizer]:
        return {"data_parameters": self._optimizer}  # type: ignore[dict-item]

    @torch.no_grad()
    def record(self, indices: Tensor, per_sample: Tensor, logits: Tensor | None = None) -> None:
        """The owners write the global batch's losses into their rows of ``last_loss``, O(B)
        (class probabilities are not tracked in sharded mode).

        The losses were gathered with the step's gradients; ``indices`` and ``per_sample`` (this
        rank's share) are already part of them.
        """
        plan = self.current_plan
        if plan is None:
            raise RuntimeError("record() follows a step of this objective")
        self._optimizer.synchronize()
        own = plan.owned_positions
        rows = plan.global_indices.index_select(0, own) - self.dp.shard[0]  # type: ignore[union-attr]
        losses = plan.global_loss.index_select(0, own)  # type: ignore[union-attr,arg-type]
        self.last_loss.index_put_((rows,), losses.to(self.last_loss.dtype))

    def on_epoch_end(self, epoch: int) -> None:
        self.end_epoch(self.dp.instance_log_sigma)

    def snapshot(self) -> dict[str, np.ndarray]:
        """Class sigma, and on rank 0 every sample's sigma (gathered: collective, O(N) on rank 0)."""
        out = {}
        if self.dp.class_curriculum:
            out["class_sigma"] = self.dp.class_log_sigma.detach().exp().float().cpu().numpy()
        gathered = self.dp.gather_instance_log_sigma()
        if gathered is not None:
            out["instance_sigma"] = gathered.exp().float().cpu().numpy()
        return out

    def method_score(self, snapshot: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
        # The instance temperature is the paper's noise score (sec. 3.4, Figure 4).
        snap = self.snapshot() if snapshot is None else snapshot
        return snap.get("instance_sigma")

    def scores(self) -> dict[str, np.ndarray]:
        """The tracker's scores (:meth:`~dataparams.scores.ScoreTracker.scores`) of every sample on
        rank 0 (empty elsewhere): one gather of the three per-sample buffers (collective, O(N) on
        rank 0), then :func:`~dataparams.scores.scores_from_sums` as in one process.
        """
        local = torch.stack([getattr(self, name).double() for name in self.SHARDED_BUFFERS], 1)
        gathered = self.dp.gather_shard(local)
        if gathered is None:
            return {}
        last_loss, loss_sum, log_sigma_sum = (gathered[:, k].cpu().numpy() for k in range(3))
        return scores_from_sums(last_loss=last_loss.astype(np.float32), loss_sum=loss_sum,
                                epochs=int(self.epochs_seen), log_sigma_sum=log_sigma_sum)

    def save_shards(self, directory: str | os.PathLike[str]) -> dict[str, Any] | None:
        """Write this rank's rows (parameters, momentum, per-sample buffers) to ``directory``.

        :meth:`ShardedDataParameters.write_shards`: collective; returns the manifest on rank 0
        (None elsewhere), which the caller commits inside its checkpoint.
        """
        return self.dp.write_shards(directory, {name: getattr(self, name) for name in self.SHARDED_BUFFERS})

    @torch.no_grad()
    def load_shards(self, directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
        """Load this rank's rows of a save by any number of processes.

        :meth:`ShardedDataParameters.read_shards`: collective (call it on every rank); a missing
        or damaged shard file stops every rank with the same :class:`ShardFileError`.
        """
        # Decided from the manifest alone, so that every rank refuses alike (a rank without rows
        # too), before any collective.
        missing = [name for name in self.SHARDED_BUFFERS if name not in manifest.get("extra", [])]
        if missing and self.num_train:
            raise ValueError(f"the sharded checkpoint in {directory} holds no {', '.join(map(repr, missing))}")
        arrays = self.dp.read_shards(directory, manifest)
        for name in self.SHARDED_BUFFERS:
            if name in arrays:
                getattr(self, name).copy_(arrays[name])
