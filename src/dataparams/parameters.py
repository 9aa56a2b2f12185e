"""Data parameters: a learnable temperature per class and per training sample.

Implements sections 2 and 3.1 of Saxena, Tuzel & DeCoste, "Data Parameters: A New Family of
Parameters for Learning a Differentiable Curriculum" (NeurIPS 2019).

Notation, fixed for this module: ``N`` training instances, ``K`` classes, ``B`` samples in a
minibatch.  ``targets`` are the (possibly noisy) labels of the minibatch, shape ``(B,)``, and
``indices`` their positions in the training set, shape ``(B,)``.

The logits ``z`` of sample ``i`` are divided by a temperature ``sigma_i`` before the softmax
(eq. 1).  ``sigma_i`` is

* ``sigma_class[y_i]`` for the class curriculum (sec. 2.1),
* ``sigma_inst[i]`` for the instance curriculum (sec. 2.2),
* ``sigma_class[y_i] + sigma_inst[i]`` for the joint curriculum (sec. 2.2),
* exactly ``1`` when both are off, so a training loop never branches on the mode.

Sigma is stored as ``log sigma`` and optimised without constraints (sec. 3.1).  Gathering the
rows of a minibatch goes through :func:`gather_rows`, whose gradient is a sparse tensor holding
exactly the gathered rows: that is how :class:`~dataparams.optim.SparseSGD` knows which rows were
present, and why a training step costs O(B) and never O(N).

This module imports only torch, so that it can be copied into other projects.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DataParameters",
    "check_ranges",
    "gather_rows",
    "combine_sigma",
    "log_sigma_penalty",
    "DEFAULT_CLAMP",
]

#: Default clamp range for sigma (temperatures), the released code's ``[1/20, 20]``.
DEFAULT_CLAMP: tuple[float, float] = (1.0 / 20.0, 20.0)


class _GatherRows(torch.autograd.Function):
    """``weight[index]`` whose backward is a sparse COO gradient over the gathered rows only."""

    @staticmethod
    def forward(ctx, weight: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.num_rows = weight.shape[0]
        ctx.save_for_backward(index)
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        # Uncoalesced on purpose: a row gathered k times keeps k entries and the optimizer sums
        # them. Rows whose gradient is exactly zero are still listed, so "present in the batch"
        # is decided by the batch itself and never by a zero test on the gradient.
        grad = torch.sparse_coo_tensor(
            index.unsqueeze(0),
            grad_output.contiguous(),
            (ctx.num_rows, *grad_output.shape[1:]),
            check_invariants=False,
        )
        return grad, None


def gather_rows(weight: Tensor, index: Tensor) -> Tensor:
    """Return ``weight[index]`` with a sparse gradient.

    Parameters
    ----------
    weight : Tensor, shape (R, ...)
        A leaf parameter, e.g. the ``(N,)`` instance log-sigmas.
    index : LongTensor, shape (B,)
        Rows to gather; may repeat. Not range-checked here (see :class:`DataParameters`).

    Returns
    -------
    Tensor, shape (B, ...)
        The gathered rows. Backpropagating into them leaves ``weight.grad`` as a sparse COO
        tensor with one entry per gathered row, so the optimizer touches O(B) memory.
    """
    return _GatherRows.apply(weight, index)


def combine_sigma(
    class_log_sigma: Tensor | None,
    instance_log_sigma: Tensor | None,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Effective temperature of each sample of a minibatch (eq. 1 and sec. 2.2).

    Parameters
    ----------
    class_log_sigma : Tensor (B,) or None
        ``log sigma_class[y_i]`` of each sample, or ``None`` when the class curriculum is off.
    instance_log_sigma : Tensor (B,) or None
        ``log sigma_inst[i]`` of each sample, or ``None`` when the instance curriculum is off.
    batch_size, device
        Needed only when both are ``None``, to build the all-ones result.

    Returns
    -------
    Tensor, shape (B,)
        ``exp(c)``, ``exp(i)``, ``exp(c) + exp(i)`` (the joint curriculum adds temperatures, not
        log-temperatures), or ones when both curricula are off.
    """
    if class_log_sigma is None and instance_log_sigma is None:
        if batch_size is None:
            raise ValueError("batch_size is required when both curricula are off")
        return torch.ones(batch_size, device=device)
    if instance_log_sigma is None:
        return class_log_sigma.exp()  # type: ignore[union-attr]
    if class_log_sigma is None:
        return instance_log_sigma.exp()
    return class_log_sigma.exp() + instance_log_sigma.exp()


def log_sigma_penalty(log_sigma: Tensor, weight_decay: float) -> Tensor:
    """L2 penalty ``0.5 * weight_decay * sum(log_sigma ** 2)`` over the gathered rows (sec. 3.1).

    It pulls sigma towards 1 (the plain softmax). The sum runs over the minibatch members, one
    term per occurrence: a class present k times in the batch is penalised k times.
    """
    return 0.5 * weight_decay * log_sigma.square().sum()


def _as_index(name: str, t: Tensor) -> Tensor:
    """Check the type and shape of an index-like batch tensor; return it as int64. O(B)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
    return t.long()


def check_ranges(*checks: tuple[str, Tensor, int, str], owner: str = "DataParameters") -> None:
    """Raise ``IndexError`` naming the first tensor with a value outside ``[0, limit)``.

    ``checks`` are ``(name, tensor, limit, what)`` with the tensors on one device. The test is a
    single device-side assertion (``torch._assert_async``): nothing is read back, so a GPU step
    does not wait for it. On the CPU the assertion runs at once, before anything is gathered, and
    is turned into the ``IndexError``; on a GPU a bad index is a device-side assertion that ends
    the process (rerun on the CPU to see which index).
    """
    present = [c for c in checks if c[1].numel() > 0]
    if not present:
        return
    oks = []
    for _, t, limit, _ in present:
        lo, hi = torch.aminmax(t)
        oks.append((lo >= 0) & (hi < limit))
    try:
        torch._assert_async(torch.stack(oks).all(), f"{owner}: targets or indices out of range")
    except RuntimeError:
        # Only the CPU assertion raises here, where reading the values back costs nothing.
        for name, t, limit, what in present:
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 0 or hi >= limit:
                bad = lo if lo < 0 else hi
                raise IndexError(f"{name} holds {bad}, outside [0, {limit}): there are {limit} {what}") from None
        raise


class DataParameters(nn.Module):
    """Class- and instance-level data parameters (sigma), stored as log sigma.

    Parameters
    ----------
    num_classes : int
        ``K``, the number of classes.
    num_instances : int
        ``N``, the number of training samples; dataset indices must lie in ``[0, N)``.
    class_curriculum, instance_curriculum : bool
        Which temperatures are learned. Both on is the joint curriculum, both off makes
        :meth:`forward` return ones (the plain cross-entropy baseline).
    init_class, init_instance : float
        Initial sigma (temperatures, not logs). The paper uses 1 for both, and for the joint
        curriculum ``init_class=1, init_instance=0.001``.
    clamp : (float, float) or None
        Bounds on sigma (temperatures), ``(1/20, 20)`` by default as in the released code.
        ``None`` disables clamping. The initial values are projected into this range here, at
        construction. The released code instead clamps the whole tensor after the first step,
        so its joint-curriculum instance init of 0.001 in fact trains from 0.05 either way.

    Notes
    -----
    * The clamp is applied by :class:`~dataparams.optim.SparseSGD` to the rows it updates, so rows
      that are not in a batch cost nothing. The range travels with the parameters (their
      ``clamp_bounds`` attribute, in log space), so any SparseSGD built over them clamps:
      ``SparseSGD(dp.param_groups(lr_class=0.1, lr_instance=0.2), momentum=0.9)`` is the usual
      construction, and ``SparseSGD([dp.instance_log_sigma], lr=0.2)`` clamps as well.
    * Data parameters exist only during training. At inference the model's logits are used
      unscaled (sec. 2.2): the argmax is the same; for calibrated probabilities fit a
      temperature on held-out data.
    * The parameters are allocated for both levels whatever the mode, so checkpoints have one
      layout; a level that is off has ``requires_grad=False`` and stays at its initial value.
    """

    def __init__(
        self,
        num_classes: int,
        num_instances: int,
        *,
        class_curriculum: bool = False,
        instance_curriculum: bool = False,
        init_class: float = 1.0,
        init_instance: float = 1.0,
        clamp: tuple[float, float] | None = DEFAULT_CLAMP,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(num_instances) < 0:
            raise ValueError(f"num_instances must be >= 0, got {num_instances}")
        for name, value in (("init_class", init_class), ("init_instance", init_instance)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} is a temperature and must be a positive number, got {value}")
        if clamp is not None:
            lo, hi = float(clamp[0]), float(clamp[1])
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"clamp must be (low, high) temperatures with 0 < low <= high, got {clamp}")
            self.clamp: tuple[float, float] | None = (lo, hi)
            init_class = min(max(init_class, lo), hi)
            init_instance = min(max(init_instance, lo), hi)
        else:
            self.clamp = None
        self.num_classes = int(num_classes)
        self.num_instances = int(num_instances)
        self.class_curriculum = bool(class_curriculum)
        self.instance_curriculum = bool(instance_curriculum)
        self.class_log_sigma = nn.Parameter(
            torch.full((self.num_classes,), math.log(init_class)), requires_grad=self.class_curriculum
        )
        self.instance_log_sigma = nn.Parameter(
            torch.full((self.num_instances,), math.log(init_instance)),
            requires_grad=self.instance_curriculum,
        )
        self._attach_bounds()

    _SIGMA_TABLES = ("class_log_sigma", "instance_log_sigma")

    def _attach_bounds(self) -> None:
        # The optimizer reads the clamp from the parameters themselves (optim.BOUNDS_ATTR), so
        # that no construction of it can forget the range. A plain attribute lives on the
        # Parameter object, and every path that puts a new Parameter in its place would lose it:
        # copy.deepcopy and pickle (__setstate__), assigning one (__setattr__, which
        # load_state_dict(assign=True) uses too), and .to() / .double() when torch is set to
        # replace parameters on conversion (_apply). Each re-attaches it.
        for name in self._SIGMA_TABLES:
            p = self._parameters.get(name)
            if p is not None:
                p.clamp_bounds = self.log_bounds  # type: ignore[attr-defined]

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._attach_bounds()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self._SIGMA_TABLES and "clamp" in self.__dict__:
            self._attach_bounds()

    def _apply(self, fn: Any, recurse: bool = True) -> DataParameters:
        super()._apply(fn, recurse)
        self._attach_bounds()
        return self

    def param_groups(
        self,
        *,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float | None = None,
    ) -> list[dict]:
        """Parameter groups for one :class:`~dataparams.optim.SparseSGD`, one per level that is on.

        Each group holds its level's learning rate and the clamp range in log space, the way
        torch optimizers take per-group settings (the paper's "separate optimizers with their
        respective learning rates", sec. 3.1, as two groups of one optimizer). ``momentum``, when
        given, is set in both groups; otherwise the optimizer's default applies.

        Returns
        -------
        list of dict
            ``[{"name": "class", "params": [class_log_sigma], "lr": lr_class, "bounds": ...},
            {"name": "instance", ...}]``, without the levels that are off (empty when both are).
        """
        groups = []
        for name, on, param, lr in (("class", self.class_curriculum, self.class_log_sigma, lr_class),
                                    ("instance", self.instance_curriculum, self.instance_log_sigma, lr_instance)):
            if on:
                group = {"name": name, "params": [param], "lr": float(lr), "bounds": self.log_bounds}
                if momentum is not None:
                    group["momentum"] = float(momentum)
                groups.append(group)
        return groups

    @property
    def log_bounds(self) -> tuple[float, float] | None:
        """The clamp range in log space (what the parameters carry as ``clamp_bounds``)."""
        if self.clamp is None:
            return None
        return (math.log(self.clamp[0]), math.log(self.clamp[1]))

    @property
    def mode(self) -> str:
        """``"off"``, ``"class"``, ``"instance"`` or ``"joint"``."""
        if self.class_curriculum and self.instance_curriculum:
            return "joint"
        if self.class_curriculum:
            return "class"
        if self.instance_curriculum:
            return "instance"
        return "off"

    def _check_batch(self, targets: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        targets, indices = _as_index("targets", targets), _as_index("indices", indices)
        device = self.class_log_sigma.device
        targets, indices = targets.to(device, non_blocking=True), indices.to(device, non_blocking=True)
        check_ranges(("targets", targets, self.num_classes, "classes"),
                      ("indices", indices, self.num_instances, "training instances"))
        if targets.shape[0] != indices.shape[0]:
            raise ValueError(
                f"targets and indices must have the same batch size, got {targets.shape[0]} and "
                f"{indices.shape[0]}"
            )
        return targets, indices

    def forward(self, targets: Tensor, indices: Tensor) -> Tensor:
        """Temperature of each sample of the minibatch.

        Parameters
        ----------
        targets : LongTensor (B,)
            Labels in ``[0, K)``.
        indices : LongTensor (B,)
            Dataset indices in ``[0, N)``.

        Returns
        -------
        Tensor (B,)
            sigma; divide the logits by ``sigma.unsqueeze(1)`` (see :mod:`dataparams.losses`).
        """
        return self.sigma_and_regularizer(targets, indices)[0]

    def regularizer(
        self,
        targets: Tensor,
        indices: Tensor,
        *,
        wd_class: float = 0.0,
        wd_instance: float = 0.0,
    ) -> Tensor:
        """L2 penalty on the log sigma of the minibatch members (sec. 3.1), to add to the loss.

        ``0.5 * wd_class * sum_b (log sigma_class[y_b])^2 + 0.5 * wd_instance * sum_b (log
        sigma_inst[i_b])^2``. The sum runs over the batch, one term per occurrence: a class that
        appears k times is penalised k times. This is what the released code does and what
        produced the published numbers. Levels that are off contribute nothing.
        """
        return self.sigma_and_regularizer(targets, indices, wd_class=wd_class, wd_instance=wd_instance)[1]

    def sigma_and_regularizer(
        self,
        targets: Tensor,
        indices: Tensor,
        *,
        wd_class: float = 0.0,
        wd_instance: float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` and :meth:`regularizer` in one pass over the batch.

        Gathers each level's rows once and builds both terms from them, which halves the
        bookkeeping of the sparse gradients compared with calling the two separately. This is
        what the training engine uses.

        Returns
        -------
        sigma : Tensor (B,)
        penalty : Tensor ()
        """
        targets, indices = self._check_batch(targets, indices)
        device = self.class_log_sigma.device
        c = gather_rows(self.class_log_sigma, targets) if self.class_curriculum else None
        i = gather_rows(self.instance_log_sigma, indices) if self.instance_curriculum else None
        sigma = combine_sigma(c, i, batch_size=targets.shape[0], device=device)
        penalty = torch.zeros((), device=device)
        if c is not None and wd_class:
            penalty = penalty + log_sigma_penalty(c, wd_class)
        if i is not None and wd_instance:
            penalty = penalty + log_sigma_penalty(i, wd_instance)
        return sigma, penalty

    @torch.no_grad()
    def class_sigma(self) -> Tensor:
        """All class temperatures, shape (K,), detached."""
        return self.class_log_sigma.detach().exp()

    @torch.no_grad()
    def instance_sigma(self) -> Tensor:
        """All instance temperatures, shape (N,), detached. Allocates O(N): not for the step."""
        return self.instance_log_sigma.detach().exp()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_instances={self.num_instances}, "
            f"mode={self.mode!r}, clamp={self.clamp}"
        )
