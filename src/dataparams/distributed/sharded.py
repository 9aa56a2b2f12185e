"""Sharded data parameters, for ``N`` of 1e8-1e9: rank ``r`` owns the instance rows
:func:`~dataparams.distributed.sampling.shard_range` ``(N, P, r)`` and their momentum.

:class:`ShardedDataParameters` fetches a step's values from their owners and sends the gradients
back, O(B) per step, and writes and reads per-shard checkpoints
(:mod:`~dataparams.distributed.checkpoint`); :mod:`~dataparams.distributed.sharded_objective`
puts it into the engine's loop.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dataparams.distributed.checkpoint import (
    MANIFEST,
    SHARD_KEYS,
    SHARDED_FORMAT,
    ShardFileError,
    open_checked,
    remove_stale_shards,
    save_hashed,
    shard_advice,
)
from dataparams.distributed.collectives import (
    NO_BYTES,
    all_gather_padded,
    all_gather_with_head,
    as_dtype,
    index_dtype_for,
)
from dataparams.distributed.context import DistributedContext
from dataparams.distributed.sampling import shard_range, split_sizes
from dataparams.distributed.steps import (
    StepPlan,
    agree_on_capacity,
    check_batch,
    fill_padding,
    loss_weights,
)
from dataparams.optim import sparse_sgd_step
from dataparams.parameters import DEFAULT_CLAMP, DataParameters, combine_sigma
from dataparams.runs.files import atomic_write_bytes

__all__ = ["ShardedDataParameters", "ShardedStepPlan"]


@dataclass
class ShardedStepPlan(StepPlan):
    """A :class:`StepPlan` of :class:`ShardedDataParameters`, with what the step fetched.

    The global batch is held padded (``P C`` positions, ``C`` the plan's capacity, see
    :class:`StepPlan`): sizes fixed on the host, which positions hold a sample on the device.

    Attributes
    ----------
    class_log_sigma, instance_log_sigma : Tensor (B_r,) or None
        Leaf tensors holding ``log sigma`` of this rank's samples (None for a level that is off).
        The forward pass uses them; ``backward`` fills their ``.grad``, which
        :meth:`ShardedDataParameters.step` sends to the owners.
    global_targets, global_indices : LongTensor (P C,) or None
        The padded global batch (targets when the class level is on, indices when the instance
        level is on); 0 at the padding.
    owned : BoolTensor (P C,) or None
        The positions of the padded global batch whose instance row this rank owns.
    per_sample_loss : Tensor (B_r,) or None
        This rank's per-sample losses, set by a caller that wants them sent to the owners with
        the gradients (:meth:`ShardedDataParameters.gather_gradients`'s ``extra``).
    global_loss : Tensor (P C,) or None
        Every rank's ``per_sample_loss``, in the padded global batch's order, once gathered.
    """

    class_log_sigma: Tensor | None = None
    instance_log_sigma: Tensor | None = None
    global_targets: Tensor | None = None
    global_indices: Tensor | None = None
    owned: Tensor | None = None
    per_sample_loss: Tensor | None = None
    global_loss: Tensor | None = None


class ShardedDataParameters(nn.Module):
    """Data parameters whose ``N`` instance rows are split over the ranks (sec. 2, 3.1).

    Rank ``r`` stores the rows ``[start, end) = shard_range(N, P, r)`` of the instance
    log-sigmas and of their momentum: memory ``8 N / P`` bytes per rank instead of ``8 N``.
    Class log-sigmas and their momentum (``K`` rows) are replicated. The maths are those of
    :class:`~dataparams.DataParameters` with :class:`~dataparams.SparseSGD`: the same
    initialisation and clamp, sigma ``exp(c)``, ``exp(i)`` or ``exp(c) + exp(i)``, the
    regulariser summed over batch occurrences, momentum SGD on the present rows only.

    A step (:meth:`begin_step`, forward, backward, :meth:`step`)::

        plan = sdp.begin_step(y, idx)                     # indices to owners, values back: O(B)
        sigma, penalty = sdp.sigma_and_regularizer(plan, wd_class=..., wd_instance=...)
        loss = distributed_loss(scaled_loss(loss_fn, ddp_model(x), y, sigma, reduction="none"),
                                penalty, global_batch_size=plan.global_batch_size,
                                world_size=ctx.world_size)
        loss.backward()
        sdp.step(plan)                                    # gradients to owners; owners update
        optimizer.step()

    Parameters
    ----------
    num_classes, num_instances : int
        ``K`` and ``N``.
    ctx : DistributedContext
    class_curriculum, instance_curriculum, init_class, init_instance, clamp
        As in :class:`~dataparams.DataParameters`.
    lr_class, lr_instance, momentum, nesterov, weight_decay
        The update of each level, as in :class:`~dataparams.SparseSGD` (weight decay on present
        rows; the paper's decay is the regulariser, so keep it 0). The learning rates are plain
        attributes, for schedules.
    max_share : int, optional
        The most samples a rank's share of any step holds, the same on every rank: every share
        is padded to it (as in :class:`~dataparams.distributed.ReplicatedExchange`). Without it
        the first step reads the gathered sizes back once and pads every later share to that
        step's largest; a later, larger share stops every rank with a ``ValueError``.

    Attributes
    ----------
    class_log_sigma, class_momentum : Tensor (K,)
    instance_log_sigma, instance_momentum : Tensor (end - start,)
        This rank's rows only; left out of ``state_dict`` (use :meth:`save` and :meth:`load`).
    shard : (int, int)
        ``(start, end)``.
    capacity : int or None
        The padded share size (``max_share``, or the first step's largest share).
    bytes_total : int
        Data-parameter bytes received by this rank over all steps.
    """

    def __init__(
        self,
        num_classes: int,
        num_instances: int,
        *,
        ctx: DistributedContext,
        class_curriculum: bool = False,
        instance_curriculum: bool = False,
        init_class: float = 1.0,
        init_instance: float = 1.0,
        clamp: tuple[float, float] | None = DEFAULT_CLAMP,
        lr_class: float = 0.1,
        lr_instance: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        max_share: int | None = None,
    ) -> None:
        super().__init__()
        # A one-row DataParameters validates the options and applies its initialisation and
        # clamp rules, so both layouts start from the same values by construction.
        template = DataParameters(
            num_classes, 1, class_curriculum=class_curriculum, instance_curriculum=instance_curriculum,
            init_class=init_class, init_instance=init_instance, clamp=clamp,
        )
        if int(num_instances) < 0:
            raise ValueError(f"num_instances must be >= 0, got {num_instances}")
        if not (lr_class >= 0 and lr_instance >= 0 and 0 <= momentum < 1 and weight_decay >= 0):
            raise ValueError("need lr_class, lr_instance, weight_decay >= 0 and 0 <= momentum < 1")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        if max_share is not None and max_share < 1:
            raise ValueError(f"max_share must be >= 1, got {max_share}")
        self.ctx = ctx
        self.num_classes, self.num_instances = int(num_classes), int(num_instances)
        self.class_curriculum, self.instance_curriculum = bool(class_curriculum), bool(instance_curriculum)
        self.log_bounds = template.log_bounds
        self.lr_class, self.lr_instance = float(lr_class), float(lr_instance)
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), float(weight_decay)
        self.shard = shard_range(self.num_instances, ctx.world_size, ctx.rank)
        self.capacity = max_share
        self.bytes_total = 0
        rows = self.shard[1] - self.shard[0]
        device = ctx.device
        self.register_buffer("class_log_sigma", template.class_log_sigma.detach().clone().to(device))
        self.register_buffer("class_momentum", torch.zeros(self.num_classes, device=device))
        init = float(template.instance_log_sigma.detach()[0])
        # Not in state_dict: a checkpoint written by one rank would hold one shard only and load
        # it on every rank. The instance rows go through save() / load().
        self.register_buffer("instance_log_sigma", torch.full((rows,), init, device=device), persistent=False)
        self.register_buffer("instance_momentum", torch.zeros(rows, device=device), persistent=False)

    # -- the step -------------------------------------------------------------------------

    def begin_step(self, targets: Tensor, indices: Tensor) -> ShardedStepPlan:
        """Make the global batch known and fetch this rank's log-sigmas from their owners.

        Two collectives, both O(B), and nothing read back: an all-gather of ``B_r`` and the local
        (index, target) pairs padded to the capacity ``C``; an all-reduce of the ``P C`` instance
        values of the padded global batch, each filled in by its owner (zeros elsewhere, so the
        sum is exact). The first step of a process without ``max_share`` gathers the sizes
        first and reads them back once, to fix ``C``.

        Parameters
        ----------
        targets, indices : LongTensor (B_r,)
            This rank's labels and global sample indices.
        """
        device = self.class_log_sigma.device
        targets, indices = check_batch(targets, indices, self.num_classes, self.num_instances, device)
        n = targets.shape[0]
        columns = []
        if self.instance_curriculum:
            columns.append(indices)
        if self.class_curriculum:
            columns.append(targets)
        index_dtype = index_dtype_for(max(self.num_instances, self.num_classes))
        local = torch.stack(columns, 1) if columns else indices.new_empty((n, 0))
        head = torch.full((1,), n, dtype=torch.int64, device=self.ctx.device)
        nbytes = 0
        if self.capacity is None:
            heads, _, nbytes = all_gather_with_head(head, NO_BYTES, 0, self.ctx)
            self.capacity = agree_on_capacity(heads[:, 0], n, None)
        cap = self.capacity
        # A share larger than the capacity sends what fits; the check below stops every rank.
        payload = local[:cap].to(self.ctx.device, index_dtype).contiguous().view(torch.uint8).reshape(-1)
        heads, payloads, more = all_gather_with_head(head, payload, cap * len(columns) * index_dtype.itemsize,
                                                     self.ctx)
        nbytes += more
        counts = heads[:, 0].to(device)
        agree_on_capacity(counts, n, cap)
        plan = ShardedStepPlan(targets, indices, counts, cap, self.ctx.rank)
        if columns:
            everything = as_dtype(payloads, index_dtype).reshape(-1, len(columns)).to(device, torch.long)
            if self.instance_curriculum:
                plan.global_indices = everything[:, 0]
            if self.class_curriculum:
                plan.global_targets = everything[:, -1]
        if self.class_curriculum:
            plan.class_log_sigma = self.class_log_sigma.index_select(0, targets).requires_grad_(True)
        if self.instance_curriculum:
            g = plan.global_indices
            start, end = self.shard
            plan.owned = plan.valid & (g >= start) & (g < end)  # type: ignore[operator]
            values = self.instance_log_sigma.new_zeros(g.shape[0])  # type: ignore[union-attr]
            if end > start:
                # Every position reads a row of the shard; those this rank does not own keep 0.
                rows = (g - start).clamp(0, end - start - 1)  # type: ignore[operator]
                values = torch.where(plan.owned, self.instance_log_sigma.index_select(0, rows), values)
            if self.ctx.is_distributed:
                values = values.to(self.ctx.device)
                dist.all_reduce(values)
                nbytes += 2 * (self.ctx.world_size - 1) * values.numel() * values.element_size() // self.ctx.world_size
                values = values.to(device)
            mine = values[plan.offset : plan.offset + n]
            plan.instance_log_sigma = mine.clone().requires_grad_(True)
        plan.bytes_exchanged = nbytes
        self.bytes_total += nbytes
        return plan

    def sigma_and_regularizer(
        self, plan: ShardedStepPlan, *, wd_class: float = 0.0, wd_instance: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """Temperatures of this rank's samples and their L2 penalty (eq. 1, sec. 2.2, 3.1).

        Returns
        -------
        sigma : Tensor (B_r,)
            ``exp(c)``, ``exp(i)``, ``exp(c) + exp(i)`` (the joint curriculum adds
            temperatures), or ones with both levels off.
        penalty : Tensor ()
            ``0.5 wd_class sum c^2 + 0.5 wd_instance sum i^2`` over this rank's occurrences.
        """
        c, i = plan.class_log_sigma, plan.instance_log_sigma
        device = self.class_log_sigma.device
        sigma = combine_sigma(c, i, batch_size=plan.targets.shape[0], device=device)
        penalty = torch.zeros((), device=device)
        if c is not None and wd_class:
            penalty = penalty + 0.5 * wd_class * c.square().sum()
        if i is not None and wd_instance:
            penalty = penalty + 0.5 * wd_instance * i.square().sum()
        return sigma, penalty

    def forward(self, plan: ShardedStepPlan) -> Tensor:
        """sigma (B_r,) of this rank's samples; see :meth:`sigma_and_regularizer`."""
        return self.sigma_and_regularizer(plan)[0]

    @torch.no_grad()
    def step(self, plan: ShardedStepPlan, *, grad_scale: float | None = None) -> int:
        """Send the step's gradients to the owners and update: O(B).

        :meth:`gather_gradients` then :meth:`apply_gradients`. Every rank updates the class rows
        of the global batch (identically on all ranks), each owner its instance rows; the
        gradients are summed over ranks and scaled by ``1/P`` (:func:`loss_weights`). A row
        present several times gets the sum of its entries, a present row with a zero gradient
        still counts as present.

        Parameters
        ----------
        plan : ShardedStepPlan
            From this step's :meth:`begin_step`, after ``backward``.
        grad_scale : float, optional
            The loss scale of a ``torch.amp.GradScaler`` (``scaler.get_scale()``): gradients are
            divided by it, and the step is skipped, on every rank alike, when one is not finite
            (which is read back: a host sync, as in the scaler's own ``step``).

        Returns
        -------
        int
            Bytes received by this rank during the whole step (also in ``plan.bytes_exchanged``).
        """
        grads = self.gather_gradients(plan)
        if grads is None:
            return plan.bytes_exchanged
        if grad_scale is not None:
            grads = grads / grad_scale
            if not bool(torch.isfinite(grads).all()):
                return plan.bytes_exchanged
        self.apply_gradients(plan, grads)
        return plan.bytes_exchanged

    def _leaves(self, plan: ShardedStepPlan) -> list[Tensor]:
        # Column 0 is the instance level when it is on, the last column the class level.
        return [t for t in (plan.instance_log_sigma, plan.class_log_sigma) if t is not None]

    @torch.no_grad()
    def gather_gradients(self, plan: ShardedStepPlan, extra: Tensor | None = None) -> Tensor | None:
        """Every rank's per-sample data-parameter gradients of this step, times ``1/P``: O(B).

        One all-gather of this rank's ``(B_r, L)`` gradients (``L`` levels on) padded to the
        plan's capacity, with ``extra`` as one more column when given (a per-sample value the
        owners need, such as the loss; it lands in ``plan.global_loss`` unscaled).

        Returns
        -------
        Tensor (P C, L) or None
            Rows in the order of the padded global batch (zeros at the padding); columns as in
            :meth:`apply_gradients`. None when both levels are off.
        """
        leaves = self._leaves(plan)
        if not leaves:
            return None
        # A level whose sigma was not used in the loss still counts its rows as present,
        # as a gathered row with a zero gradient does in SparseSGD.
        columns = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
        if extra is not None:
            columns.append(extra.detach().to(columns[0].dtype))
        local = torch.stack(columns, 1)
        gathered, b = all_gather_padded(local.to(self.ctx.device), plan.capacity, self.ctx)
        plan.bytes_exchanged += b
        self.bytes_total += b
        everything = gathered.reshape(-1, local.shape[1]).to(local.device)
        if extra is not None:
            plan.global_loss = everything[:, -1].to(extra.dtype)
            everything = everything[:, :-1]
        return everything * loss_weights(1, self.ctx.world_size).data_gradient  # 1 / P, whatever B is

    @torch.no_grad()
    def apply_gradients(self, plan: ShardedStepPlan, grads: Tensor) -> None:
        """The SparseSGD update of the global batch's class rows and this rank's instance rows.

        Parameters
        ----------
        plan : ShardedStepPlan
        grads : Tensor (P C, L)
            From :meth:`gather_gradients` (unscaled, when a gradient scaler is used): column 0
            the instance level when it is on, the last column the class level when it is on.

        Notes
        -----
        The gradients handed to :func:`~dataparams.optim.sparse_sgd_step` keep the padded
        positions, naming a listed row with the value -0.0 (:func:`fill_padding`), so that their
        size is fixed on the host; the sums of repeated rows and the set of present rows are
        those of the valid positions.
        """
        options = dict(momentum=self.momentum, weight_decay=self.weight_decay, nesterov=self.nesterov,
                       bounds=self.log_bounds)
        valid = plan.valid
        if plan.class_log_sigma is not None:
            rows, _ = fill_padding(plan.global_targets, valid)  # type: ignore[arg-type]
            g = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.where(valid, grads[:, -1], -0.0),
                                        (self.num_classes,), check_invariants=False)
            sparse_sgd_step([self.class_log_sigma], [g], [self.class_momentum], lr=self.lr_class, **options)
        if plan.instance_log_sigma is not None and self.shard[1] > self.shard[0]:
            own = plan.owned
            rows, last = fill_padding(plan.global_indices - self.shard[0], own)  # type: ignore[operator,arg-type]
            g = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.where(own, grads[:, 0], -0.0),  # type: ignore[arg-type]
                                        self.instance_log_sigma.shape, check_invariants=False)
            # A batch without a row of this shard (common with many ranks) names row 0 on every
            # padded position: put back its value and momentum, which that row's update changed.
            kept = torch.stack([self.instance_log_sigma[:1], self.instance_momentum[:1]])
            sparse_sgd_step([self.instance_log_sigma], [g], [self.instance_momentum], lr=self.lr_instance,
                            **options)
            owns_any = last >= 0
            self.instance_log_sigma[:1] = torch.where(owns_any, self.instance_log_sigma[:1], kept[0])
            self.instance_momentum[:1] = torch.where(owns_any, self.instance_momentum[:1], kept[1])

    # -- whole-table access and checkpoints (epoch-level, O(N / P) per rank) ---------------

    @torch.no_grad()
    def gather_shard(self, rows: Tensor, dst: int = 0) -> Tensor | None:
        """Concatenate every rank's ``rows`` (shard-shaped, ``(end - start, ...)``) on rank ``dst``.

        For any per-sample array kept like the instance log-sigmas (a per-sample loss, say).
        O(N) memory on ``dst``, None elsewhere: for the end of an epoch, never inside a step.
        Collective.
        """
        if rows.shape[0] != self.shard[1] - self.shard[0]:
            raise ValueError(f"expected {self.shard[1] - self.shard[0]} rows (this rank's shard), got {rows.shape[0]}")
        if not self.ctx.is_distributed:
            return rows.clone()
        sizes = split_sizes(self.num_instances, self.ctx.world_size)
        buf = rows.new_zeros((max(sizes), *rows.shape[1:])).to(self.ctx.device)
        buf[: rows.shape[0]] = rows
        if self.ctx.rank == dst:
            out = [torch.empty_like(buf) for _ in sizes]
            dist.gather(buf, out, dst=dst)
            return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(rows.device)
        dist.gather(buf, None, dst=dst)
        return None

    @torch.no_grad()
    def gather_instance_log_sigma(self, dst: int = 0) -> Tensor | None:
        """All ``N`` instance log-sigmas on rank ``dst`` (None elsewhere), e.g. for snapshots.

        O(N) memory on ``dst``: for the end of an epoch, never inside a step.
        """
        return self.gather_shard(self.instance_log_sigma, dst)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Tensor] | None = None) -> Path:
        """Write a checkpoint of the data parameters that any number of processes can load.

        :meth:`write_shards`, then rank 0 writes ``manifest.json``, which names the files, and
        removes the files of older saves. Until the manifest is replaced the previous checkpoint
        is intact: a crash at any point leaves one complete checkpoint. Collective: call it on
        every rank.

        Returns
        -------
        Path
            The manifest.
        """
        directory = Path(directory)
        manifest = self.write_shards(directory, extra)
        path = directory / MANIFEST
        if manifest is not None:
            text = json.dumps(manifest, indent=1)
            atomic_write_bytes(path, text.encode())
            remove_stale_shards(directory, manifest)
        self.ctx.barrier()
        return path

    def write_shards(self, directory: str | os.PathLike[str], extra: dict[str, Tensor] | None = None
                     ) -> dict[str, Any] | None:
        """Write this save's files; return its manifest on rank 0 (None elsewhere) without committing it.

        Every rank writes its shard (``start``, ``end``, values, momentum and each ``extra``
        array) to its own file, rank 0 the class parameters. Each file is written atomically
        and named with a token fresh to this save, so no file of an earlier save is touched:
        the caller commits the save by writing the manifest where a reader looks for it (a
        ``manifest.json``, or inside a training checkpoint), and then removes the older files
        with :func:`remove_stale_shards`. ``directory`` must be shared by all ranks.
        Collective: call it on every rank.

        Parameters
        ----------
        directory : path
        extra : dict of str to Tensor, optional
            Per-sample arrays of this rank's rows (``(end - start, ...)``) to keep with the
            shard, e.g. an objective's per-sample losses; :meth:`read_shards` returns them
            re-split for the reading rank.
        """
        directory = Path(directory)
        extra = dict(extra or {})
        rows = self.shard[1] - self.shard[0]
        for name, t in extra.items():
            if name in SHARD_KEYS or t.shape[0] != rows:
                raise ValueError(f"extra array {name!r}: need a new name and {rows} rows, got {tuple(t.shape)}")
        if self.ctx.is_main:
            directory.mkdir(parents=True, exist_ok=True)
        # Rank 0 made the directory before it sends the token, so the others find it.
        token = self._agree_on_token()
        p, r = self.ctx.world_size, self.ctx.rank
        start, end = self.shard
        shard_file = f"shard-{r:05d}-of-{p:05d}-{token}.pt"
        # Size and SHA-256 of every file go into the manifest (inside the checksummed
        # checkpoint), so that a reader finds a truncated, damaged or replaced file before
        # torch.load does, and shard files stay plain torch files that load memory-mapped.
        written = {shard_file: save_hashed(
            {"format": SHARDED_FORMAT, "start": start, "end": end, "num_instances": self.num_instances,
             "instance_log_sigma": self.instance_log_sigma.cpu(), "instance_momentum": self.instance_momentum.cpu(),
             **{name: t.detach().cpu() for name, t in extra.items()}},
            directory / shard_file,
        )}
        class_file = f"classes-{token}.pt"
        if self.ctx.is_main:
            written[class_file] = save_hashed(
                {"format": SHARDED_FORMAT, "num_classes": self.num_classes,
                 "class_log_sigma": self.class_log_sigma.cpu(), "class_momentum": self.class_momentum.cpu()},
                directory / class_file,
            )
        # Every rank has written its file once rank 0 has every rank's checksums (the barrier).
        checksums = {name: c for part in self.ctx.all_gather_object(written) for name, c in part.items()}
        if not self.ctx.is_main:
            return None
        shards = [{"file": f"shard-{q:05d}-of-{p:05d}-{token}.pt", "start": s, "end": e}
                  for q, (s, e) in enumerate(shard_range(self.num_instances, p, q) for q in range(p))]
        return {"format": SHARDED_FORMAT, "num_classes": self.num_classes, "num_instances": self.num_instances,
                "world_size": p, "token": token, "classes": class_file, "shards": shards, "extra": sorted(extra),
                "checksums": checksums}

    def _agree_on_token(self) -> str:
        # Rank 0 draws the token and broadcasts it as a tensor (no pickling): every rank must name
        # its file after the same save.
        t = torch.tensor([secrets.randbits(62)], dtype=torch.int64, device=self.ctx.device)
        if self.ctx.is_distributed:
            dist.broadcast(t, src=0)
        return f"{int(t.item()):016x}"

    @torch.no_grad()
    def load(self, directory: str | os.PathLike[str]) -> dict[str, Tensor]:
        """Load a checkpoint written by :meth:`save` with any number of processes.

        Reads ``manifest.json``; see :meth:`read_shards` (collective under a process group).
        """
        directory = Path(directory)
        return self.read_shards(directory, json.loads((directory / MANIFEST).read_text()))

    @torch.no_grad()
    def read_shards(self, directory: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Tensor]:
        """Load the save that ``manifest`` (from :meth:`write_shards`) describes, by any number of processes.

        This rank reads the class file, and from each old shard that overlaps its own
        ``[start, end)`` only the overlapping slice (shards are memory-mapped). Each of these
        files is checked first: present, of the size and SHA-256 that the manifest records (a
        manifest written before checksums were kept records none; then only what the file holds
        is checked), and holding what the manifest says it holds. The ranks agree on the outcome
        with one all-gather, so that a missing or damaged file stops every rank alike with the
        same :class:`ShardFileError` -- not one rank with a torch error while the others wait for
        it in their next collective. The checksum reads each of this rank's files whole once.
        Collective when the context has a process group: call it on every rank.

        Returns
        -------
        dict of str to Tensor
            This rank's rows of every ``extra`` array of the save, on the CPU.

        Raises
        ------
        ValueError
            If the checkpoint is for another ``N`` or ``K``, or its shards do not tile ``[0, N)``
            (the same on every rank: decided from the manifest alone).
        ShardFileError
            On every rank, when a file that any rank reads is missing, truncated, damaged or not
            of this save: the message names the files and what is wrong, and says what to do.
        """
        directory = Path(directory)
        if manifest.get("format") != SHARDED_FORMAT:
            raise ValueError(f"{directory} holds no {SHARDED_FORMAT} checkpoint")
        if manifest["num_instances"] != self.num_instances or manifest["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint holds N={manifest['num_instances']}, K={manifest['num_classes']}; this model has "
                f"N={self.num_instances}, K={self.num_classes}"
            )
        shards = manifest["shards"]
        if [s["start"] for s in shards] != [0, *(s["end"] for s in shards[:-1])] or shards[-1]["end"] != self.num_instances:
            raise ValueError(f"the shards of {directory} do not tile [0, {self.num_instances})")
        problem: str | None = None
        try:
            opened = open_checked(directory, manifest, num_classes=self.num_classes,
                                  num_instances=self.num_instances, shard=self.shard)
        except ShardFileError as e:
            problem = str(e)
        except Exception as e:  # anything else this rank met: the others must hear of it too
            problem = f"reading {directory} failed ({type(e).__name__}: {e})"
        outcomes = self.ctx.all_gather_object(None if problem is None else (problem, shard_advice(directory)))
        failed = [o for o in outcomes if o is not None]
        if failed:
            # The same text on every rank: the problems in rank order (a file several ranks read
            # once), and the advice of the first rank that found one.
            problems = list(dict.fromkeys(p for p, _ in failed))
            more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
            raise ShardFileError(f"the sharded checkpoint in {directory} cannot be loaded: "
                                 f"{'; '.join(problems[:4])}{more}. {failed[0][1]}")
        # Every rank's files are good: only now is anything overwritten (a refused load leaves
        # every rank's data parameters as they were).
        classes, pending = opened
        self.class_log_sigma.copy_(classes["class_log_sigma"])
        self.class_momentum.copy_(classes["class_momentum"])
        start, end = self.shard
        extra: dict[str, Tensor] = {}
        for data, src, dst in pending:
            self.instance_log_sigma[dst] = data["instance_log_sigma"][src]
            self.instance_momentum[dst] = data["instance_momentum"][src]
            for name in manifest.get("extra", []):
                t = data[name]
                if name not in extra:
                    extra[name] = t.new_zeros((end - start, *t.shape[1:]))
                extra[name][dst] = t[src]
        return extra

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_instances={self.num_instances}, shard={self.shard}, "
            f"class_curriculum={self.class_curriculum}, instance_curriculum={self.instance_curriculum}, "
            f"log_bounds={self.log_bounds}"
        )
