"""Collectives on per-rank data of different lengths, padded to a size every rank knows.

A rank's share of a step travels padded to the step's capacity (see
:class:`~dataparams.distributed.steps.StepPlan`), its length beside it in a header that stays on
the device: no rank reads another's length, so on a GPU no collective of a step waits for the
host, and every rank sends the same number of bytes.

Bytes are counted per rank as what a ring algorithm makes each rank receive: ``(P - 1)`` chunks
for an all-gather, ``2 (P - 1) / P`` of the buffer for an all-reduce. Padding is counted, since
it travels.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from dataparams.distributed.context import DistributedContext

__all__ = ["NO_BYTES", "all_gather_padded", "all_gather_with_head", "as_dtype", "index_dtype_for"]


def index_dtype_for(num_rows: int) -> torch.dtype:
    """The integer type that rows of a table of ``num_rows`` travel in."""
    # Half the bytes for every data set below 2**31 rows (1e9 samples included).
    return torch.int32 if num_rows < 2**31 else torch.int64


def all_gather_padded(local: Tensor, max_rows: int, ctx: DistributedContext) -> tuple[Tensor, int]:
    """All-gather ``local`` (n, ...) padded with zeros to ``max_rows >= n`` rows: ``((P, max_rows, ...), bytes)``.

    In one process: ``local`` padded, ``(1, max_rows, ...)``, and no bytes.
    """
    buf = local.new_zeros((max_rows, *local.shape[1:]))
    buf[: local.shape[0]] = local
    if not ctx.is_distributed:
        return buf.unsqueeze(0), 0
    out = [torch.empty_like(buf) for _ in range(ctx.world_size)]
    dist.all_gather(out, buf)
    return torch.stack(out), (ctx.world_size - 1) * buf.numel() * buf.element_size()


def all_gather_with_head(
    head: Tensor, payload: Tensor, capacity: int, ctx: DistributedContext
) -> tuple[Tensor, Tensor, int]:
    """All-gather a few integers and up to ``capacity`` bytes from every rank, in one collective.

    Each rank sends its ``head`` and its payload padded with zeros to ``capacity`` bytes; the
    lengths that matter (e.g. ``B_r``) go in the head, where the receivers use them on the device.
    Nothing is read back.

    Parameters
    ----------
    head : LongTensor (k,)
        The same ``k`` on every rank; on ``ctx.device``, so that no copy waits for the host.
    payload : uint8 Tensor (L,), ``L <= capacity``
    capacity : int
        The same on every rank.

    Returns
    -------
    heads : LongTensor (P, k)
    payloads : uint8 Tensor (P, capacity)
        Rank ``q``'s payload in row ``q``, zero-padded.
    bytes : int
        Received by this rank (ring accounting).
    """
    if payload.numel() > capacity:
        raise ValueError(f"a payload of {payload.numel()} bytes does not fit the {capacity} every rank sends")
    head = head.to(torch.int64).view(torch.uint8)
    buf = torch.zeros(head.numel() + capacity, dtype=torch.uint8, device=head.device)
    buf[: head.numel()] = head
    if payload.numel():
        buf[head.numel() : head.numel() + payload.numel()] = payload
    if ctx.is_distributed:
        out = [torch.empty_like(buf) for _ in range(ctx.world_size)]
        dist.all_gather(out, buf)
        gathered, nbytes = torch.stack(out), (ctx.world_size - 1) * buf.numel()
    else:
        gathered, nbytes = buf.unsqueeze(0), 0
    return as_dtype(gathered[:, : head.numel()], torch.int64), gathered[:, head.numel() :], nbytes


def as_dtype(columns: Tensor, dtype: torch.dtype) -> Tensor:
    """Bytes (P, L) of each rank, e.g. a slice of a gathered buffer, read as ``dtype``: (P, L / itemsize)."""
    # A copy with the standard strides: a slice at an odd byte offset, or a row stride that is
    # not a multiple of the item size, cannot be reinterpreted in place.
    return columns.clone(memory_format=torch.contiguous_format).view(dtype)


#: The empty payload of a gather that carries only its head.
NO_BYTES = torch.empty(0, dtype=torch.uint8)
