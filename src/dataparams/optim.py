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

A step never waits for the device: repeated rows are summed with sizes fixed by the batch
(:func:`merge_rows`, not ``coalesce``, whose size is known only after a device-to-host copy),
and the range check is a device-side assertion. On a GPU the update is then a handful of kernels
queued behind the backward pass (``benchmarks/gpu_speed.py`` counts the host syncs of a step).

The maths is the plain function :func:`sparse_sgd_step`; :class:`SparseSGD` is the
``torch.optim.Optimizer`` around it (timm's functional-core pattern) and calls nothing else.

Clamping: a parameter may carry its own clamp range as the attribute ``clamp_bounds`` (``(low,
high)`` in parameter space, i.e. log sigma); :class:`~dataparams.parameters.DataParameters` sets
it on its two parameters. The optimizer clamps the rows it updates into a group's ``bounds``
when that is given, and otherwise into the parameter's own ``clamp_bounds``, so that
``SparseSGD([dp.instance_log_sigma], lr=...)`` clamps as the module says without being told.

Momentum convention: the first visit of a row sets its buffer to the gradient, as
``torch.optim.SGD`` does on its first step. The buffer is allocated as zeros once, so this is
``0 * momentum + g = g`` (there is no dampening option, which would break that identity).

This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["BOUNDS_ATTR", "SparseSGD", "merge_rows", "sparse_sgd_step"]

#: Name of the attribute through which a parameter carries its clamp range (parameter space).
BOUNDS_ATTR = "clamp_bounds"

Bounds = tuple[float, float]


def _rows_and_values(g: Tensor) -> tuple[Tensor, Tensor]:
    """The listed rows (B,) and values (B, ...) of a sparse gradient, coalesced or not."""
    if not g.is_sparse:
        raise TypeError(
            "SparseSGD needs sparse gradients that list the rows present in the batch; "
            "gather rows with DataParameters or dataparams.parameters.gather_rows, not p[index]"
        )
    return g._indices()[0], g._values()


def _check_rows(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """Check that every gradient lists rows in ``[0, rows of its parameter)``, on the device.

    The test is one device-side assertion over all gradients (``torch._assert_async``): no value
    is read back, so a GPU step never waits for it. On the CPU the assertion runs at once and
    fails before anything is modified; it is turned into an ``IndexError`` naming the row. On a
    GPU a bad row is a device-side assertion (the CUDA context is lost, as with any
    out-of-range index in a kernel); rerun the step on the CPU to see which row.
    """
    oks = []
    for p, g in zip(params, grads):
        rows = _rows_and_values(g)[0]
        if rows.numel():
            lo, hi = torch.aminmax(rows)
            oks.append((lo >= 0) & (hi < p.shape[0]))
    if not oks:
        return
    try:
        torch._assert_async(torch.stack(oks).all(), "SparseSGD: a gradient lists a row outside its parameter")
    except RuntimeError:
        # Only a CPU assertion raises here, where reading the rows back costs nothing.
        for p, g in zip(params, grads):
            rows = _rows_and_values(g)[0]
            if rows.numel():
                lo, hi = (int(v) for v in torch.aminmax(rows))
                if lo < 0 or hi >= p.shape[0]:
                    raise IndexError(f"gradient lists row {lo if lo < 0 else hi}, outside [0, {p.shape[0]})") from None
        raise


def merge_rows(rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the values of repeated rows without a data-dependent size: ``(rows, sums)``, both (B, ...).

    ``coalesce`` would return the U unique rows, but U is known only on the host, so on a GPU it
    waits for the device. Here the B entries are sorted by row and every entry gets the sum of
    its row's values: a row listed k times appears k times with the same sum, and writing it k
    times with the same value is the same as writing it once. The sort is ``torch.sort``'s
    default one, which ``coalesce`` uses, so on the CPU the sums are added in the same order and
    the updates equal the coalescing ones bit for bit (checked in the tests).

    Parameters
    ----------
    rows : LongTensor (B,)
    values : Tensor (B, ...)

    Returns
    -------
    rows : LongTensor (B,), sorted
    sums : Tensor (B, ...), the sum of the values of each entry's row
    """
    if rows.numel() == 0:
        return rows, values
    rows, order = torch.sort(rows)
    values = values.index_select(0, order)
    new_row = torch.ones_like(rows, dtype=torch.bool)
    new_row[1:] = rows[1:] != rows[:-1]
    segment = new_row.cumsum(0) - 1  # entry -> the rank of its row among the distinct rows
    sums = torch.zeros_like(values).index_add_(0, segment, values)
    return rows, sums.index_select(0, segment)


def sparse_sgd_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor | None],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    bounds: Bounds | Sequence[Bounds | None] | None = None,
    validate: bool = True,
) -> None:
    """Update, in place, the rows of each parameter (and its momentum) listed in its gradient.

    Parameters
    ----------
    params : sequence of Tensor, each shape (R, ...)
        The parameters, e.g. the (N,) instance log-sigmas.
    grads : sequence of sparse COO Tensor, shaped like the matching parameter
        The gradients; may be uncoalesced (a row listed k times has its entries summed).
    momentum_buffers : sequence of Tensor or None
        One per parameter, shaped like it; required when ``momentum != 0``. Rows not in the
        gradient are left untouched.
    lr, momentum, weight_decay, nesterov
        As in ``torch.optim.SGD`` (weight decay acts on present rows only).
    bounds : (low, high), or a sequence with one (low, high) or None per parameter, or None
        Clamp the updated rows into ``[low, high]`` (parameter space, i.e. log sigma).
    validate : bool, default True
        Range-check every gradient first, on the device (:func:`_check_rows`).
        :class:`SparseSGD` validates the gradients of all its groups itself, so that a bad one
        leaves every group unchanged, and passes ``False``.

    Raises
    ------
    IndexError
        If a gradient lists a row outside its parameter; nothing is modified then.
    TypeError
        If a gradient is dense; nothing is modified then.
    """
    if not (len(params) == len(grads) == len(momentum_buffers)):
        raise ValueError("params, grads and momentum_buffers must have the same length")
    if bounds is None or (len(bounds) and isinstance(bounds[0], (int, float))):
        per_param = [bounds] * len(params)  # one range for every parameter
    else:
        per_param = list(bounds)  # type: ignore[arg-type]
    if validate:
        _check_rows(params, grads)
    for p, g, buf, b in zip(params, grads, momentum_buffers, per_param):
        rows, sums = merge_rows(*_rows_and_values(g))
        _update_rows(p, rows, sums, buf, lr=lr, momentum=momentum,
                     weight_decay=weight_decay, nesterov=nesterov, bounds=b)  # type: ignore[arg-type]


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
    bounds: Bounds | None,
) -> None:
    """The SGD update of the in-range ``rows``; everything else stays as it is.

    A row may be listed more than once if every listing carries the same value (as
    :func:`merge_rows` gives): each computes the same new row, so the repeated writes agree.
    """
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


def _check_bounds(bounds: Any) -> Bounds | None:
    if bounds is None:
        return None
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo <= hi:
        raise ValueError(f"Invalid bounds: {(lo, hi)}, need low <= high")
    return (lo, hi)


class SparseSGD(Optimizer):
    """SGD with momentum for data parameters: rows absent from the batch are not touched.

    Parameters
    ----------
    params : iterable of Tensors or dicts
        Parameters whose gradients are sparse COO tensors (use
        :class:`~dataparams.DataParameters` or :func:`~dataparams.parameters.gather_rows`), or
        parameter-group dicts such as ``DataParameters.param_groups(...)`` returns.
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
        Clamp range in parameter space applied to the updated rows. ``None`` (the default)
        means: each parameter's own ``clamp_bounds`` attribute, if it has one (data parameters
        carry their module's clamp), else no clamp.

    Notes
    -----
    A dense gradient is refused: from a dense tensor the optimizer could only tell presence by
    testing for zeros, which is the O(N) and wrong behaviour this class exists to avoid.

    Examples
    --------
    >>> dp = DataParameters(10, 50_000, class_curriculum=True, instance_curriculum=True)
    >>> opt = SparseSGD(dp.param_groups(lr_class=0.1, lr_instance=0.2), momentum=0.9)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.0,
        *,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        bounds: Bounds | None = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        bounds=_check_bounds(bounds))
        super().__init__(params, defaults)
        for group in self.param_groups:
            # Groups may set their own values (e.g. from DataParameters.param_groups): check them too.
            if not group["lr"] >= 0.0:
                raise ValueError(f"Invalid learning rate: {group['lr']}")
            if not 0.0 <= group["momentum"] < 1.0:
                raise ValueError(f"Invalid momentum value: {group['momentum']}")
            if group["nesterov"] and group["momentum"] <= 0:
                raise ValueError("Nesterov momentum requires a momentum > 0")
            group["bounds"] = _check_bounds(group["bounds"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("weight_decay", 0.0)
            group.setdefault("bounds", None)

    @staticmethod
    def _bounds_of(group: dict[str, Any], p: Tensor) -> Bounds | None:
        return group["bounds"] if group["bounds"] is not None else getattr(p, BOUNDS_ATTR, None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Perform one update of the rows present in the current gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            groups.append((group, params))
        # Validate every gradient of every group before touching anything, so that a bad one
        # leaves all rows as they were; one device-side assertion for all of them.
        flat_params = [p for _, ps in groups for p in ps]
        _check_rows(flat_params, [p.grad for p in flat_params])
        for group, params in groups:
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs: list[Tensor | None] = []
            for p in params:
                buf = None
                if group["momentum"] != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        # Zeros make the first visit of each row set buf = grad (see module notes).
                        buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(buf)
            sparse_sgd_step(
                params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                bounds=[self._bounds_of(group, p) for p in params], validate=False,
            )
        return loss
