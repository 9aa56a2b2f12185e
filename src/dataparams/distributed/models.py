"""The model under DDP: wrapping and unwrapping it, and BatchNorm over the global batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dataparams.distributed.context import DistributedContext

__all__ = ["GlobalBatchNorm", "sync_batch_norm", "unwrap_model", "wrap_model"]


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
