"""Host syncs of a data-parameter step under torchrun: two gloo processes, both layouts.

Each process counts (:func:`dataparams.syncs.count_host_syncs`) the calls into operations that
make a GPU wait for the host, step by step, through the engine's sequence: the objective's
forward, backward, the model's and the data parameters' optimizers (the exchange runs in the
latter), ``record``. Counted on the CPU, so the same code path that a GPU run takes is checked
without one (tests/test_syncs.py does the same for one process). The same processes check what
the padding that makes this possible must not change: a rank that owns none of a step's rows
keeps them as they were, and a share larger than the padded size stops both ranks alike.

The one-process tests below check the pieces against independent computations: ``coalesce``,
the unpadded gradient through SparseSGD, the loss weight from a Python int.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fakes
from dataparams import DataParameters
from dataparams.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    ReplicatedExchange,
    ReplicatedObjective,
    ShardedDataParameters,
    ShardedObjective,
    distributed_loss,
    init_distributed,
    local_share,
)
from dataparams.distributed.exchange import merge_and_pad
from dataparams.distributed.steps import fill_padding
from dataparams.optim import sparse_sgd_step

K, N, D = 4, 40, 5
B = 11  # global batches of 11, 11, 11, 7: shares 6 / 5 and, in the short last one, 4 / 3
EPOCHS = 2
OPTIONS = dict(lr_class=0.3, lr_instance=5.0, momentum=0.9, wd_class=0.01, wd_instance=0.02)


def _count_steps(mode: str, ctx) -> tuple[list[dict[str, int]], bool]:
    """The host syncs of every training step of ``mode``, and whether the temperatures moved."""
    g = torch.Generator().manual_seed(0)
    x_all, y_all = torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)
    torch.manual_seed(0)
    model = nn.Linear(D, K)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if mode == "replicated":
        dp = DataParameters(K, N, class_curriculum=True, instance_curriculum=True)
        objective = ReplicatedObjective(dp, ctx=ctx, **OPTIONS)
        before = dp.instance_log_sigma.detach().clone()
    else:
        objective = ShardedObjective(K, N, ctx=ctx, class_curriculum=True, **OPTIONS)
        before = objective.dp.instance_log_sigma.clone()
    sampler = GlobalBatchSampler(N, B, rank=ctx.rank, world_size=ctx.world_size, seed=1)
    steps = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        objective.on_epoch_start(epoch)
        for share in sampler:
            idx = torch.tensor(share)
            x, y = x_all[idx], y_all[idx]
            steps.append(fakes.counted_step(model, opt, objective, x, y, idx))
        objective.on_epoch_end(epoch)  # epoch-level collectives: outside the steps
    after = objective.dp.instance_log_sigma.detach()
    return steps, not torch.equal(after, before)


def _rows_of_an_absent_shard(ctx) -> dict[str, bool]:
    """Sharded, N = 40 over 2 ranks (rows [0, 20) and [20, 40)): a first step visits rows 20 and
    21, then three steps visit rank 0's rows only. Whether rank 1's rows and momentum moved in
    the first step and stayed put in the others (the padding names row 0 of a shard that owns
    no sample of the step)."""
    sdp = ShardedDataParameters(K, N, ctx=ctx, class_curriculum=True, instance_curriculum=True, lr_class=0.3,
                                lr_instance=5.0, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    batches = [torch.tensor([20, 21, 5, 6, 7])] + [torch.randperm(20, generator=g)[:5] for _ in range(3)]
    states = []
    for idx in batches:
        y = idx % K
        idx, y, coef = (local_share(t, ctx.rank, ctx.world_size) for t in (idx, y, torch.randn(5, generator=g)))
        plan = sdp.begin_step(y, idx)
        sigma, penalty = sdp.sigma_and_regularizer(plan, wd_instance=0.02)
        distributed_loss(sigma * coef, penalty, global_batch_size=plan.global_batch_size,
                         world_size=ctx.world_size).backward()
        sdp.step(plan)
        states.append(torch.stack([sdp.instance_log_sigma, sdp.instance_momentum]).clone())
    return {"moved_first": not torch.equal(states[0][1], torch.zeros(sdp.shard[1] - sdp.shard[0])),
            "kept_after": all(torch.equal(s, states[0]) for s in states[1:])}


def _too_large_a_share(mode: str, ctx) -> str | None:
    """The first step fixes the padded share size at 3 (shares 3 / 3); a later step gives rank 0
    4 samples. The error each rank raises (None if it raised none)."""
    if mode == "replicated":
        begin = ReplicatedExchange(DataParameters(K, N, class_curriculum=True, instance_curriculum=True), ctx).begin_step
    else:
        begin = ShardedDataParameters(K, N, ctx=ctx, class_curriculum=True, instance_curriculum=True).begin_step
    begin(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]))
    n = 4 if ctx.rank == 0 else 2
    try:
        begin(torch.arange(n) % K, torch.arange(n))
    except ValueError as e:
        return str(e)
    return None


def _worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with init_distributed("cpu", timeout=timedelta(seconds=60)) as ctx:
        out = {mode: _count_steps(mode, ctx) for mode in ("replicated", "sharded")}
        out["absent"] = _rows_of_an_absent_shard(ctx)
        # Both ranks stop in the same step; the barrier after it shows that neither waits in a
        # collective that the other never joins.
        out["refused"] = {mode: _too_large_a_share(mode, ctx) for mode in ("replicated", "sharded")}
        ctx.barrier()
        torch.save(out, Path(tmp) / f"syncs{rank}.pt")
        ctx.barrier()



@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("syncs")
    mp.spawn(_worker, args=(2, fakes.free_port(), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"syncs{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.distributed
def test_a_torchrun_step_never_waits_for_the_device_in_either_layout(ranks):
    per_epoch = -(-N // B)
    for rank, out in enumerate(ranks):
        for mode in ("replicated", "sharded"):
            steps, moved = out[mode]
            assert moved, (rank, mode)
            assert len(steps) == EPOCHS * per_epoch
            # The first step agrees on the padded share size (one read of the gathered sizes);
            # every later one, the short last batch of each epoch included, reads nothing.
            assert steps[1:] == [{}] * (len(steps) - 1), (rank, mode, steps)
            assert sum(steps[0].values()) <= 1, (rank, mode, steps[0])


@pytest.mark.distributed
def test_a_shard_without_a_sample_in_the_step_keeps_its_rows_and_momentum(ranks):
    assert ranks[1]["absent"] == {"moved_first": True, "kept_after": True}
    assert ranks[0]["absent"]["moved_first"]


@pytest.mark.distributed
def test_a_share_larger_than_the_padded_size_stops_both_ranks_in_the_same_step(ranks):
    for mode in ("replicated", "sharded"):
        mine, other = ranks[0]["refused"][mode], ranks[1]["refused"][mode]
        assert mine is not None and "this rank's share of 4 samples exceeds the 3" in mine, mode
        assert other is not None and "a share of 4 samples exceeds the 3" in other, mode
        assert "max_share" in mine and "max_share" in other


# ---- one process: the pieces of the padded exchange ------------------------------------------


def test_merge_and_pad_is_coalesce_at_a_fixed_size():
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 7, (40,), generator=g)
    values = torch.randn(40, generator=g)
    coalesced = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (7,), check_invariants=True).coalesce()
    u = coalesced.indices().shape[1]
    got_rows, sums, count = merge_and_pad(rows, values, 9)
    assert got_rows.shape == sums.shape == (9,) and int(count) == u
    assert torch.equal(got_rows[:u], coalesced.indices()[0]) and torch.equal(sums[:u], coalesced.values())
    assert not got_rows[u:].any() and not sums[u:].any()
    empty_rows, empty_sums, none = merge_and_pad(rows[:0], values[:0], 3)
    assert int(none) == 0 and empty_rows.shape == empty_sums.shape == (3,)


def _sgd(rows, values, n=10):
    param, momentum = torch.linspace(-0.5, 0.5, n), torch.linspace(0.0, 0.3, n)
    g = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (n,), check_invariants=False)
    sparse_sgd_step([param], [g], [momentum], lr=0.7, momentum=0.9, bounds=(-0.6, 0.6))
    return param, momentum


def test_padding_changes_neither_the_sums_nor_the_rows_sparse_sgd_updates():
    # Rows 3 and 5 listed several times (one sum -0.0 + -0.0), then padding of arbitrary rows and
    # values: with fill_padding and -0.0 the update is the unpadded one, bit for bit.
    rows = torch.tensor([3, 5, 3, 8, 5, 0, 3])
    values = torch.tensor([0.25, -0.0, 1e-8, -3.0, -0.0, 0.5, -0.125])
    valid = torch.tensor([True] * 7 + [False] * 5)
    padded_rows = torch.cat([rows, torch.tensor([9, 9, 2, 1, 4])])
    filled, last = fill_padding(padded_rows, valid)
    assert int(last) == 6 and torch.equal(filled[7:], torch.full((5,), 3))
    padded_values = torch.where(valid, torch.cat([values, torch.full((5,), 7.0)]), -0.0)
    for a, b in zip(_sgd(filled, padded_values), _sgd(rows, values)):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    # Nothing valid: every entry names row 0, and the caller learns that none is valid.
    filled, last = fill_padding(padded_rows, torch.zeros(12, dtype=torch.bool))
    assert int(last) == -1 and not filled.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_loss_weight_from_the_plan_is_the_one_from_an_int(dtype):
    g = torch.Generator().manual_seed(1)
    for n, b, p in ((7, 19, 2), (4, 37, 3), (1, 1, 1), (13, 301, 7)):
        per_sample = torch.randn(n, generator=g).to(dtype)
        penalty = torch.rand((), generator=g).to(dtype)
        out = []
        for size in (b, torch.tensor(b)):
            x = per_sample.clone().requires_grad_(True)
            loss = distributed_loss(x, penalty, global_batch_size=size, world_size=p)
            loss.backward()
            out.append((loss.detach(), x.grad))
        assert out[0][0].dtype == out[1][0].dtype == dtype
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1]), (dtype, n, b, p)
    with pytest.raises(ValueError, match="exceed"):
        distributed_loss(torch.ones(3), torch.zeros(()), global_batch_size=torch.tensor(2), world_size=1)


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_the_padded_share_size_is_the_first_steps_unless_given(mode):
    def make(**kw):
        if mode == "replicated":
            return ReplicatedExchange(DataParameters(K, N, class_curriculum=True), DistributedContext(), **kw)
        return ShardedDataParameters(K, N, ctx=DistributedContext(), instance_curriculum=True, **kw)

    learned = make()
    assert learned.capacity is None
    learned.begin_step(torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6]))
    assert learned.capacity == 3
    learned.begin_step(torch.tensor([3]), torch.tensor([7]))  # a short last batch fits
    with pytest.raises(ValueError, match="this rank's share of 4 samples exceeds the 3"):
        learned.begin_step(torch.arange(4) % K, torch.arange(4))
    given = make(max_share=5)
    given.begin_step(torch.tensor([0]), torch.tensor([4]))
    given.begin_step(torch.arange(5) % K, torch.arange(5))
    assert given.capacity == 5
    with pytest.raises(ValueError, match="max_share"):
        make(max_share=0)


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_an_index_out_of_range_is_refused_on_the_cpu_before_anything_changes(mode):
    # The range check is a device-side assertion now; on the CPU it still raises at once.
    if mode == "replicated":
        exchange = ReplicatedExchange(DataParameters(K, N, instance_curriculum=True), DistributedContext())
    else:
        exchange = ShardedDataParameters(K, N, ctx=DistributedContext(), instance_curriculum=True)
    for targets, indices, message in (([0, K], [1, 2], f"targets hold {K}, outside"),
                                      ([0, 1], [-1, 2], "indices hold -1, outside")):
        with pytest.raises(IndexError, match=message):
            exchange.begin_step(torch.tensor(targets), torch.tensor(indices))
    assert exchange.capacity is None and exchange.bytes_total == 0
