"""SparseSGD: momentum SGD in which rows absent from the minibatch never move (sec. 3.1).

"When a class or instance is not present in a mini-batch, we do not update the momentum buffer
associated with the data parameter of the class or the instance respectively." A row that is
present is updated exactly as by ``torch.optim.SGD``; a row that is absent keeps both its value
and its momentum, and gets no weight decay and no clamp.

Which rows are present is read from the *sparse* gradient that
:func:`dataparams.parameters.gather_rows` produces: one entry per gathered row, zero-valued or
not. The released code instead clones the dense parameter and momentum every step and treats a
gradient that happens to be exactly zero as "absent"; that costs O(N) per step and misreads a
present row whose gradient is zero. Here a step reads and writes only the present rows: O(B).

Momentum convention: the first visit of a row sets its buffer to the gradient, as
``torch.optim.SGD`` does on its first step. The buffer is allocated as zeros once, so this is
``0 * momentum + g = g`` (there is no dampening option, which would break that identity).

This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["SparseSGD", "sparse_sgd_step"]


def _checked_coalesce(grad: Tensor, num_rows: int) -> Tensor:
    """Coalesce a sparse gradient and check that its rows lie in ``[0, num_rows)``."""
    grad = grad.coalesce()
    rows = grad.indices()[0]
    if rows.numel():
        # Coalesced indices are sorted, so the two ends bound the whole set.
        # A strided view of the two ends: one device-to-host transfer for both, no kernel launch.
        ends = rows[:: max(rows.numel() - 1, 1)].tolist()
        lo, hi = ends[0], ends[-1]
        if lo < 0 or hi >= num_rows:
            raise IndexError(f"gradient lists row {lo if lo < 0 else hi}, outside [0, {num_rows})")
    return grad


def sparse_sgd_step(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    bounds: tuple[float, float] | None = None,
) -> None:
    """Update, in place, the rows of ``param`` (and ``momentum_buffer``) listed in ``grad``.

    Parameters
    ----------
    param : Tensor, shape (R, ...)
        The parameter, e.g. the (N,) instance log-sigmas.
    grad : sparse COO Tensor, shape (R, ...)
        Its gradient; may be uncoalesced (a row listed k times has its entries summed).
    momentum_buffer : Tensor shaped like ``param``, or None
        Required when ``momentum != 0``; rows not in ``grad`` are left untouched.
    lr, momentum, weight_decay, nesterov
        As in ``torch.optim.SGD`` (weight decay acts on present rows only).
    bounds : (float, float) or None
        Clamp the updated rows into ``[low, high]`` (in parameter space, i.e. log sigma).

    Raises
    ------
    IndexError
        If ``grad`` lists a row outside ``[0, R)``; nothing is modified then.
    """
    grad = _checked_coalesce(grad, param.shape[0])
    _update_rows(param, grad.indices()[0], grad.values(), momentum_buffer, lr=lr, momentum=momentum,
                 weight_decay=weight_decay, nesterov=nesterov, bounds=bounds)


def _update_rows(
    param: Tensor,
    rows: Tensor,
    values: Tensor,
    momentum_buffer: Tensor | None,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    bounds: tuple[float, float] | None,
) -> None:
    """The SGD update of the (unique, in-range) ``rows``; everything else stays as it is."""
    if rows.numel() == 0:
        return
    g = values.to(param.dtype)
    p_rows = param.index_select(0, rows)
    if weight_decay != 0:
        g = g.add(p_rows, alpha=weight_decay)
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum != 0 needs a momentum_buffer")
        buf = momentum_buffer.index_select(0, rows).mul_(momentum).add_(g)
        # index_put_ rather than index_copy_: it has a deterministic CUDA kernel, so the
        # optimizer also runs under torch.use_deterministic_algorithms(True).
        momentum_buffer.index_put_((rows,), buf)
        g = g.add(buf, alpha=momentum) if nesterov else buf
    p_rows.add_(g, alpha=-lr)
    if bounds is not None:
        p_rows.clamp_(bounds[0], bounds[1])
    param.index_put_((rows,), p_rows)


class SparseSGD(Optimizer):
    """SGD with momentum for data parameters: rows absent from the batch are not touched.

    Parameters
    ----------
    params : iterable of Tensors or dicts
        Parameters whose gradients are sparse COO tensors (use
        :class:`~dataparams.DataParameters` or :func:`~dataparams.gather_rows`), or
        parameter-group dicts.
    lr : float
        Learning rate.
    momentum : float
        Momentum factor in ``[0, 1)``; the paper uses 0.9.
    weight_decay : float
        L2 decay on present rows. The paper instead adds the decay to the loss through
        :meth:`DataParameters.regularizer`; keep this at 0 to reproduce it.
    nesterov : bool
        Nesterov momentum, as in ``torch.optim.SGD``.
    bounds : (float, float) or None
        Clamp range in parameter space applied to the updated rows, e.g.
        ``bounds=dp.log_bounds``.

    Notes
    -----
    A dense gradient is refused: from a dense tensor the optimizer could only tell presence by
    testing for zeros, which is the O(N) and wrong behaviour this class exists to avoid.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.0,
        *,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        bounds: tuple[float, float] | None = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        if bounds is not None:
            bounds = (float(bounds[0]), float(bounds[1]))
            if not bounds[0] <= bounds[1]:
                raise ValueError(f"Invalid bounds: {bounds}, need low <= high")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, bounds=bounds
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("weight_decay", 0.0)
            group.setdefault("bounds", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Perform one update of the rows present in the current gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Validate every gradient before touching anything, so a bad one leaves all rows as
        # they were.
        todo = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise TypeError(
                        "SparseSGD needs sparse gradients that list the rows present in the batch; "
                        "gather rows with dataparams.gather_rows or DataParameters, not p[index]"
                    )
                todo.append((group, p, _checked_coalesce(p.grad, p.shape[0])))
        for group, p, grad in todo:
            state = self.state[p]
            buf = None
            if group["momentum"] != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    # Zeros make the first visit of each row set buf = grad (see module notes).
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # ``grad`` is coalesced and range-checked above: update its rows directly.
            _update_rows(
                p,
                grad.indices()[0],
                grad.values(),
                buf,
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                bounds=group["bounds"],
            )
        return loss
