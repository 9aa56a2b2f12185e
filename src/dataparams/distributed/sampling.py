"""Global batches and each rank's share of them.

Every rank draws the same global batch of ``B`` samples, the single process's, and keeps its
contiguous share (:func:`split_sizes`, :func:`shard_range`, :func:`local_share`):
:class:`GlobalBatchSampler` for a ``DataLoader``, :class:`LocalShareLoader` around the in-memory
loaders, :class:`FileShareLoader` for files read from disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = [
    "FileShareLoader",
    "GlobalBatchSampler",
    "LocalShareLoader",
    "local_share",
    "shard_range",
    "split_sizes",
]


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
        # which the step weights by zero (see :mod:`dataparams.distributed`).
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
