"""The process context of a job: rank, world size, device, and joining what ``torchrun`` launched.

:class:`DistributedContext` is what every other module of :mod:`dataparams.distributed` takes;
``DistributedContext()`` is the single-process context, in which none of them communicates.
:func:`init_distributed` builds the real one from the launcher's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) with its device and collective timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dataparams.config import ConfigError

__all__ = ["MODES", "DistributedContext", "first_failure", "init_distributed", "launched_world_size"]

#: Values of ``TrainConfig.distributed.mode``: the layouts of the data parameters
#: (:mod:`~dataparams.distributed.exchange`, :mod:`~dataparams.distributed.sharded`).
MODES = ("replicated", "sharded")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job: its rank, the world size and its device.

    ``DistributedContext()`` is the single-process context: rank 0 of 1, no process group, and
    every helper of :mod:`dataparams.distributed` then runs without a collective. Build the real one with
    :func:`init_distributed`.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank ``r``, ``P``, and the rank on this node (selects the GPU).
    device : torch.device
        Where this rank computes; collectives of :mod:`dataparams.distributed` use tensors on it.
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
        """More than one process: the helpers of :mod:`dataparams.distributed` communicate."""
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
            raise ConfigError(f"device {str(device)!r} was asked for but CUDA is not available")
        # A bare "cuda" means this rank's GPU, not GPU 0 for every rank of the node.
        return dev if dev.index is not None else torch.device(f"cuda:{local_rank}")
    if dev.type != "cpu":
        raise ConfigError(f"distributed training runs on 'cpu' or 'cuda', got {str(device)!r}")
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
        raise ConfigError(f"inconsistent RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}")
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
        raise ConfigError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} not; launch with torchrun")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
    return DistributedContext(rank, world_size, local_rank, dev, backend, owns_process_group=True)


def first_failure(ctx: DistributedContext, exc: BaseException) -> tuple[int, str] | None:
    """Which rank failed first in this job: record ``exc`` as this rank's failure in the process
    group's store unless another rank's is there already, and return that one.

    A rank whose step or loader raises leaves its peers inside a collective, where they fail in
    turn (gloo: "connection closed by peer") or wait; on several nodes each node's log then shows
    only its own rank's error. The first failing rank writes its message under one key of the
    job's store (an atomic compare-and-set, before its process ends and its connections close);
    a rank that fails after it reads the message back and can say what happened.

    An error the ranks raise alike on purpose (a damaged shard, ranks that disagree on the data:
    the same message on every rank) is no one rank's cause: a rank whose message is the earlier
    one's gets None too, and keeps its own error as it is.

    Returns
    -------
    (rank, message) or None
        The earlier, different failure of another rank; None when this rank's failure is the
        first (now recorded) or the same as the first, in one process, or when the store cannot be
        reached (the master gone).
    """
    if not ctx.is_distributed or not dist.is_initialized():
        return None
    # One key per attempt of the job: torchrun's restarts (--max-restarts) share the store.
    key = f"dataparams/first_failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    message = f"{type(exc).__name__}: {exc}"
    try:
        store = dist.distributed_c10d._get_default_store()
        first = store.compare_set(key, "", f"{ctx.rank}|{message}").decode("utf-8", "replace")
    except Exception:  # the store's host is gone too: nothing more to learn
        return None
    rank, _, first_message = first.partition("|")
    if int(rank) == ctx.rank or first_message == message:
        return None
    return int(rank), first_message
