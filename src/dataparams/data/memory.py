"""Loaders for datasets that fit in memory: one tensor on the device, augmentation on tensors.

Following airbench: the whole split lives as one ``(N, C, H, W)`` uint8 tensor on the training
device, a batch is gathered by index, and the standard augmentation (random crop with zero
padding, horizontal flip) runs on the batch as tensor ops. Each batch carries the sample indices,
which is what data parameters need. The order and the augmentation of epoch ``e`` depend only on
``(seed, e)``, so a resumed run replays exactly the batches an uninterrupted one would have seen.
:class:`FeatureLoader` does the same for (N, D) feature vectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Augment", "FeatureLoader", "InMemoryLoader", "crop_at", "flip_where", "random_crop", "random_flip"]


@dataclass(frozen=True)
class Augment:
    """Standard augmentation: ``crop_padding`` pixels of zero padding then a random crop back to
    size, and a horizontal flip with probability 0.5 when ``flip``."""

    crop_padding: int = 4
    flip: bool = True


def crop_at(x: Tensor, padding: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Pad ``x`` (B, C, H, W) by ``padding`` zeros and crop sample ``b`` at offset ``(dy[b], dx[b])``.

    The offsets (B,) in ``[0, 2 * padding]`` live on ``x``'s device: a gather, no host round trip.
    """
    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: (B, H, W, C).
    return xp[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Flip left-right the samples of ``x`` (B, C, H, W) where ``flip`` (B,) bool is set."""
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _draw_crop(b: int, padding: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    return dy, dx


def _draw_flip(b: int, generator: torch.Generator) -> Tensor:
    return torch.rand(b, generator=generator) < 0.5


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad ``x`` (B, C, H, W) by ``padding`` zeros and crop each sample at a random offset."""
    if padding <= 0:
        return x
    dy, dx = _draw_crop(x.shape[0], padding, generator)
    return crop_at(x, padding, dy.to(x.device), dx.to(x.device))


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each sample of ``x`` (B, C, H, W) left-right with probability 0.5."""
    return flip_where(x, _draw_flip(x.shape[0], generator).to(x.device))


class InMemoryLoader:
    """Batches ``(x, y, index)`` from images held in memory.

    Parameters
    ----------
    images : uint8 array or tensor, (N, H, W, C) or (N, C, H, W) when ``channels_last=False``
    targets : int array or tensor (N,)
        The labels to train on (noisy labels for a corrupted run).
    batch_size : int
    shuffle : bool
        A new permutation every epoch, drawn from ``(seed, epoch)``.
    augment : Augment or None
    mean, std : sequence of float, one per channel
        Normalisation applied after scaling pixels to [0, 1].
    device : torch.device or str
        Where the images live and batches are produced.
    seed : int
    drop_last : bool
    index : int array (N,), optional
        The index yielded with each sample (default ``arange(N)``).
    """

    def __init__(
        self,
        images: np.ndarray | Tensor,
        targets: np.ndarray | Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        augment: Augment | None = None,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = True,
        index: np.ndarray | Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        imgs = torch.as_tensor(images)
        if imgs.dtype != torch.uint8 or imgs.dim() != 4:
            raise ValueError(f"images must be uint8 with 4 dims, got {imgs.dtype} {tuple(imgs.shape)}")
        if channels_last:
            imgs = imgs.permute(0, 3, 1, 2)
        self.device = torch.device(device)
        self.images = imgs.contiguous().to(self.device)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).to(self.device)
        if len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")
        n = len(self.images)
        self.index = (
            torch.arange(n) if index is None else torch.as_tensor(np.asarray(index), dtype=torch.long)
        ).to(self.device)
        channels = self.images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        # One stream per (seed, epoch): batches do not depend on what ran before.
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(self.epoch))

    def epoch_plan(self) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """The epoch's sample order (N,) and, with augmentation, every sample's crop offsets and
        flip, each (N,) in batch order, drawn on the host and moved to the device in one copy.

        The random numbers are drawn in the sequence :func:`random_crop` / :func:`random_flip`
        draw them batch by batch (the order, then per batch the row offsets, the column
        offsets and the flips), so the batches are the same as augmenting each batch with those
        functions; with the plan on the device, a batch is gathered and augmented there without
        a copy from the host.
        """
        g = self._generator()
        n = len(self.images)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        pad = self.augment.crop_padding if self.augment is not None else 0
        flip = self.augment is not None and self.augment.flip
        dys, dxs, flips = [], [], []
        for b in range(len(self)):
            size = min(self.batch_size, n - b * self.batch_size)
            if pad > 0:
                dy, dx = _draw_crop(size, pad, g)
                dys.append(dy)
                dxs.append(dx)
            if flip:
                flips.append(_draw_flip(size, g))
        # One (rows, N) table, one copy: the order, then the offsets and flips (zero past the
        # last batch when drop_last leaves samples out).
        rows = [order]
        for drawn in ([dys, dxs] if dys else []) + ([flips] if flips else []):
            row = torch.zeros(n, dtype=torch.long)
            cat = torch.cat(drawn).long()
            row[: len(cat)] = cat
            rows.append(row)
        host = torch.stack(rows)
        if self.device.type == "cuda":
            host = host.pin_memory()
        plan = host.to(self.device, non_blocking=True)
        dy_all, dx_all = (plan[1], plan[2]) if dys else (None, None)
        flip_all = plan[-1].bool() if flips else None
        return plan[0], dy_all, dx_all, flip_all

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order, dy, dx, flip = self.epoch_plan()
        pad = self.augment.crop_padding if self.augment is not None else 0
        for b in range(len(self)):
            span = slice(b * self.batch_size, (b + 1) * self.batch_size)
            pos = order[span]
            x = self.images.index_select(0, pos).float().div_(255.0)
            if dy is not None:
                x = crop_at(x, pad, dy[span], dx[span])  # type: ignore[index]
            if flip is not None:
                x = flip_where(x, flip[span])
            x = (x - self.mean) / self.std
            yield x, self.targets.index_select(0, pos), self.index.index_select(0, pos)


class FeatureLoader:
    """Batches ``(x, y, index)`` from (N, D) feature vectors held on the device.

    The order of epoch ``e`` is drawn from ``(seed, e)`` exactly as :class:`InMemoryLoader`
    draws it, so a resumed run sees the same batches. Standardisation is applied once, when the
    features are copied to the device, not per batch.

    Parameters
    ----------
    features : float array or tensor (N, D)
    targets : int array or tensor (N,)
        The labels to train on (noisy labels for a corrupted run).
    batch_size : int
    shuffle : bool
        A new permutation every epoch, drawn from ``(seed, epoch)``.
    standardize : bool
        Subtract ``mean`` and divide by ``std`` per feature. Embeddings and hand-made features
        come in any scale; an MLP trained by SGD needs them near unit scale.
    mean, std : array (D,), optional
        The statistics to standardise with, e.g. the training loader's for a test loader
        (:attr:`mean`, :attr:`std`). By default measured on ``features``; a constant feature
        gets ``std = 1``.
    device : torch.device or str
    seed : int
    drop_last : bool
    index : int array (N,), optional
        The index yielded with each sample (default ``arange(N)``).

    Attributes
    ----------
    mean, std : ndarray (D,) float32 or None
        The statistics used (None when ``standardize`` is False).
    """

    def __init__(
        self,
        features: np.ndarray | Tensor,
        targets: np.ndarray | Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        standardize: bool = True,
        mean: np.ndarray | Sequence[float] | None = None,
        std: np.ndarray | Sequence[float] | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        index: np.ndarray | Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        x = torch.as_tensor(features)
        if x.dim() != 2 or x.is_complex():
            raise ValueError(f"features must be a real (N, D) array, got {x.dtype} {tuple(x.shape)}")
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            row = int(torch.nonzero(~torch.isfinite(x).all(1))[0, 0])
            raise ValueError(f"features hold NaN or infinite values (first in row {row})")
        n, d = x.shape
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        if standardize:
            if (mean is None) != (std is None):
                raise ValueError("give both mean and std, or neither")
            if mean is None:
                if n == 0:
                    raise ValueError("cannot measure mean/std on zero rows; pass mean and std")
                x64 = x.double()  # float32 sums lose digits over many rows
                m, s = x64.mean(0), x64.std(0, correction=0)
                s = torch.where(s < 1e-12, torch.ones_like(s), s)
                self.mean, self.std = m.float().numpy(), s.float().numpy()
            else:
                self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
                self.std = np.asarray(std, dtype=np.float32).reshape(-1)
                if self.mean.shape != (d,) or self.std.shape != (d,):
                    raise ValueError(f"mean/std need {d} values, got {self.mean.size}/{self.std.size}")
                if (self.std <= 0).any():
                    raise ValueError("std must be positive")
            x = (x - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)
        elif mean is not None or std is not None:
            raise ValueError("mean/std are only used with standardize=True")
        self.device = torch.device(device)
        self.features = x.contiguous().to(self.device)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).to(self.device)
        if self.targets.shape != (n,):
            raise ValueError(f"{n} feature rows but targets of shape {tuple(self.targets.shape)}")
        self.index = (
            torch.arange(n) if index is None else torch.as_tensor(np.asarray(index), dtype=torch.long)
        ).to(self.device)
        if self.index.shape != (n,):
            raise ValueError(f"{n} feature rows but index of shape {tuple(self.index.shape)}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.features)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        # The stream InMemoryLoader uses: one per (seed, epoch), independent of what ran before.
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(self.epoch))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        n = len(self.features)
        order = torch.randperm(n, generator=self._generator()) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for b in range(len(self)):
            pos = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield (
                self.features.index_select(0, pos),
                self.targets.index_select(0, pos),
                self.index.index_select(0, pos),
            )
