"""Collectives on ragged per-rank data: every rank's rows or bytes, of any length, on every rank.

Bytes are counted per rank as what a ring algorithm makes each rank receive: ``(P - 1)`` chunks
for an all-gather, ``2 (P - 1) / P`` of the buffer for an all-reduce. Padding is counted, since
it travels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from dataparams.distributed.context import DistributedContext

__all__ = ["NO_BYTES", "all_gather_padded", "all_gather_ragged", "index_dtype_for", "unpad"]


def index_dtype_for(num_rows: int) -> torch.dtype:
    """The integer type that rows of a table of ``num_rows`` travel in."""
    # Half the bytes for every data set below 2**31 rows (1e9 samples included).
    return torch.int32 if num_rows < 2**31 else torch.int64


def all_gather_padded(local: Tensor, max_rows: int, ctx: DistributedContext) -> tuple[Tensor, int]:
    """All-gather ``local`` (n, ...) padded to ``max_rows`` rows: ``((P, max_rows, ...), bytes)``."""
    buf = local.new_zeros((max_rows, *local.shape[1:]))
    buf[: local.shape[0]] = local
    out = [torch.empty_like(buf) for _ in range(ctx.world_size)]
    dist.all_gather(out, buf)
    return torch.stack(out), (ctx.world_size - 1) * buf.numel() * buf.element_size()


def all_gather_ragged(
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
        body, more = all_gather_padded(payload.unsqueeze(1), max(lengths), ctx)
        body, nbytes = body[..., 0], nbytes + more
    return heads[:, :-1], [body[r, :n] for r, n in enumerate(lengths)], nbytes


#: The empty payload of a gather that carries only its ``meta`` integers.
NO_BYTES = torch.empty(0, dtype=torch.uint8)


def unpad(gathered: Tensor, counts: Sequence[int]) -> Tensor:
    """Concatenate the first ``counts[r]`` rows of each rank's padded block, in rank order."""
    return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])
