"""Counting the places where Python code waits for the device: the host syncs of a training step.

On a GPU, a step that reads a value back (``.item()``, ``.tolist()``, ``if tensor:``), asks for a
data-dependent size (``nonzero``, ``unique``, boolean-mask indexing, ``coalesce``), copies to the
host, or builds a device tensor from host data (``torch.tensor(..., device=...)``: a blocking copy
from pageable memory, which waits for the stream) stalls the CPU until the queue drains, and the
GPU idles while the next step is prepared.
CUDA itself reports these under ``torch.cuda.set_sync_debug_mode``; a CPU has no queue, so that
mode sees nothing there. :func:`count_host_syncs` instead counts the Python-level calls into the
operations that synchronise on a GPU, whatever the device the tensors are on: a test on the CPU
then checks the same code path that runs on the GPU.

    with count_host_syncs() as syncs:
        train_step()
    assert syncs.total == 0, syncs.calls

What it sees: calls made from Python (the project's code, PyTorch's Python layers such as the
optimizers). What it cannot see: synchronisation inside a C++ kernel that Python does not call by
name (a CUDA ``index_select`` never syncs; C++ code calling ``.item()`` internally would escape).
``set_sync_debug_mode("error")`` on a GPU is the complete check (``benchmarks/gpu_speed.py``).

This module imports only torch.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["HostSyncs", "count_host_syncs", "SYNC_METHODS", "SYNC_FUNCTIONS"]

#: Tensor methods that wait for the device on a GPU: a value read back, a size that depends on
#: the data, or a copy to the host. (``Tensor.unique`` is Python calling ``torch.unique``,
#: counted there.)
SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu",
                "nonzero", "coalesce", "masked_select")
#: ``torch.*`` functions of the same kinds.
SYNC_FUNCTIONS = ("nonzero", "unique", "unique_consecutive", "masked_select", "argwhere")

_lock = threading.Lock()


@dataclass
class HostSyncs:
    """The calls counted inside :func:`count_host_syncs`, by name."""

    calls: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Count, while the block runs, calls into operations that synchronise a GPU with the host.

    Counted on tensors of any device: :data:`SYNC_METHODS` and :data:`SYNC_FUNCTIONS`
    (``.cpu()`` included: code calls it to bring a value to the host), indexing with a boolean
    tensor (a data-dependent size), ``torch.where`` with the condition alone (a ``nonzero``),
    ``Tensor.to`` from a device tensor towards the CPU (on a CPU run, ``x.to(device)`` is the copy
    a GPU run makes towards the device, not counted: with ``non_blocking=True`` it need not wait),
    and ``torch.tensor`` or ``torch.as_tensor`` given host data and a ``device`` (host data copied
    there without that option; on a CPU run too, where the device is the CPU, since a GPU run of
    the same line copies). One counter at a time (a lock; the patches are process-wide).
    """
    out = HostSyncs()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str, counts: Callable[..., bool] | None = None) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if counts is None or counts(*args, **kwargs):
                out.calls[label] += 1
            return original(*args, **kwargs)

        saved.append((owner, name, original))
        setattr(owner, name, counted)

    def to_host(self: torch.Tensor, *args: Any, **kwargs: Any) -> bool:
        if self.device.type == "cpu":
            return False  # a CPU tensor's .to(device) is a copy towards the device, not a read-back
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, torch.Tensor):
            target = target.device
        if isinstance(target, (str, torch.device)):
            return torch.device(target).type == "cpu"
        return False

    def host_data_to_device(data: Any, *args: Any, **kwargs: Any) -> bool:
        # A tensor given to as_tensor is a .to(), counted (towards the CPU) there.
        return kwargs.get("device") is not None and not isinstance(data, torch.Tensor)

    def bool_index(self: torch.Tensor, index: Any) -> bool:
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    with _lock:
        try:
            for name in SYNC_METHODS:
                wrap(torch.Tensor, name, f"Tensor.{name}")
            for name in SYNC_FUNCTIONS:
                wrap(torch, name, f"torch.{name}")
            wrap(torch.Tensor, "to", "Tensor.to(cpu)", to_host)
            wrap(torch, "tensor", "torch.tensor(device=)", lambda *args, **kwargs: kwargs.get("device") is not None)
            wrap(torch, "as_tensor", "torch.as_tensor(device=)", host_data_to_device)
            wrap(torch, "where", "torch.where(condition)", lambda *args, **kwargs: len(args) + len(kwargs) == 1)
            wrap(torch.Tensor, "__getitem__", "Tensor[bool mask]", bool_index)
            yield out
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)
