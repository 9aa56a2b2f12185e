"""Data parameters under torch.distributed: two gloo processes against one plain process.

The reference is the single-process library path (DataParameters + SparseSGD, loss = mean +
regulariser over the global batch), which knows nothing of this module. Two processes are
spawned once for the whole file (gloo over tcp://127.0.0.1); they train replicated and sharded,
save and resume sharded checkpoints and count bytes, and leave their states in files that the
tests below compare.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fakes
from dataparams import DataParameters, SparseSGD, scaled_loss
from dataparams.data.indexed import WithIndex
from dataparams.data.memory import Augment, InMemoryLoader
from dataparams.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    LocalShareLoader,
    ReplicatedExchange,
    ShardedDataParameters,
    distributed_loss,
    init_distributed,
    local_share,
    loss_weights,
    shard_range,
    split_sizes,
    wrap_model,
)
from dataparams.engine import predict_by_index
from dataparams.losses import per_sample_cross_entropy

K, N, D = 5, 64, 8
B = 19  # global batches of 19, 19, 19, 7: shares 10/9 and, for the last one, 4/3
EPOCHS = 2
STEPS = EPOCHS * -(-N // B)
SAVE_AT = 5  # mid-run checkpoint, after 5 of the 8 steps
SEED = 3
DP_OPTIONS = dict(class_curriculum=True, instance_curriculum=True, init_class=1.0, init_instance=1.0,
                  clamp=(0.7, 1.5))
LR_CLASS, LR_INSTANCE, MOMENTUM = 0.3, 20.0, 0.9  # a large instance rate drives rows into the clamp
WD_CLASS, WD_INSTANCE = 0.05, 0.02
ATOL, RTOL = 1e-6, 1e-6


def _data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)


def _local_batches(rank: int, world_size: int) -> list[torch.Tensor]:
    sampler = GlobalBatchSampler(N, B, rank=rank, world_size=world_size, shuffle=True, seed=SEED)
    out = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        out += [torch.tensor(b, dtype=torch.long) for b in sampler]
    return out


def _train(kind: str, ctx: DistributedContext, *, start: int = 0, stop: int = STEPS, save_at: int | None = None,
           save_dir: Path | None = None, resume_dir: Path | None = None, options: dict = DP_OPTIONS) -> dict:
    """Train ``kind`` ("reference", "replicated", "sharded") over steps [start, stop) and return
    the final state; checkpoint after ``save_at`` steps, or start from ``resume_dir``.
    ``options`` are DataParameters' (the curriculum, init and clamp)."""
    x_all, y_all = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    net = wrap_model(model, ctx)
    if kind == "sharded":
        dp = ShardedDataParameters(K, N, ctx=ctx, **options, lr_class=LR_CLASS, lr_instance=LR_INSTANCE,
                                   momentum=MOMENTUM)
    else:
        dp = DataParameters(K, N, **options)
        groups = [{"params": [dp.class_log_sigma], "lr": LR_CLASS},
                  {"params": [dp.instance_log_sigma], "lr": LR_INSTANCE}]
        dp_opt = SparseSGD(groups, lr=LR_CLASS, momentum=MOMENTUM, bounds=dp.log_bounds)
        exchange = ReplicatedExchange(dp, ctx)
    if resume_dir is not None:
        state = torch.load(resume_dir / "model.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        dp.load(resume_dir)
    batches = _local_batches(ctx.rank, ctx.world_size)
    step_bytes = []
    for step in range(start, stop):
        idx = batches[step]
        x, y = x_all[idx], y_all[idx]
        opt.zero_grad()
        if kind == "reference":
            dp_opt.zero_grad()
            sigma, penalty = dp.sigma_and_regularizer(y, idx, wd_class=WD_CLASS, wd_instance=WD_INSTANCE)
            loss = scaled_loss(per_sample_cross_entropy, net(x), y, sigma) + penalty
            loss.backward()
            opt.step()
            dp_opt.step()
        elif kind == "replicated":
            dp_opt.zero_grad()
            plan = exchange.begin_step(y, idx)
            sigma, penalty = exchange.sigma_and_regularizer(plan, wd_class=WD_CLASS, wd_instance=WD_INSTANCE)
            per_sample = scaled_loss(per_sample_cross_entropy, net(x), y, sigma, reduction="none")
            distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                             world_size=ctx.world_size).backward()
            exchange.all_reduce_gradients(plan)
            step_bytes.append(plan.bytes_exchanged)
            opt.step()
            dp_opt.step()
        else:
            plan = dp.begin_step(y, idx)
            sigma, penalty = dp.sigma_and_regularizer(plan, wd_class=WD_CLASS, wd_instance=WD_INSTANCE)
            per_sample = scaled_loss(per_sample_cross_entropy, net(x), y, sigma, reduction="none")
            distributed_loss(per_sample, penalty, global_batch_size=plan.global_batch_size,
                             world_size=ctx.world_size).backward()
            step_bytes.append(dp.step(plan))
            opt.step()
        if save_at is not None and step + 1 == save_at:
            save_dir.mkdir(parents=True, exist_ok=True)
            if ctx.is_main:  # replicated state: rank 0 writes the one copy
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, save_dir / "model.pt")
            ctx.barrier()
            dp.save(save_dir)
    out = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "model_momentum": [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()],
        "bytes": step_bytes,
    }
    if kind == "sharded":
        out.update(shard=dp.shard, class_=dp.class_log_sigma.clone(), class_momentum=dp.class_momentum.clone(),
                   instance=dp.instance_log_sigma.clone(), instance_momentum=dp.instance_momentum.clone(),
                   gathered=dp.gather_instance_log_sigma())
    else:
        def momentum(p):  # a level that is off has no optimizer state: its momentum stays 0
            return dp_opt.state[p]["momentum_buffer"].clone() if p in dp_opt.state else torch.zeros_like(p.detach())

        out.update(shard=(0, N), class_=dp.class_log_sigma.detach().clone(),
                   class_momentum=momentum(dp.class_log_sigma), instance=dp.instance_log_sigma.detach().clone(),
                   instance_momentum=momentum(dp.instance_log_sigma))
    return out


def _exchange_bytes(ctx: DistributedContext, n: int) -> dict[str, int]:
    """Bytes one rank receives in one step of each mode, for a fixed global batch, at ``N = n``."""
    g = torch.Generator().manual_seed(11)
    idx = local_share(torch.randperm(n, generator=g)[:B], ctx.rank, ctx.world_size)
    y = local_share(torch.randint(0, K, (B,), generator=g), ctx.rank, ctx.world_size)
    dp = DataParameters(K, n, class_curriculum=True, instance_curriculum=True)
    exchange = ReplicatedExchange(dp, ctx)
    plan = exchange.begin_step(y, idx)
    sigma, penalty = exchange.sigma_and_regularizer(plan, wd_instance=0.1)
    (sigma.sum() + penalty).backward()
    exchange.all_reduce_gradients(plan)
    sdp = ShardedDataParameters(K, n, ctx=ctx, class_curriculum=True, instance_curriculum=True)
    splan = sdp.begin_step(y, idx)
    sigma, penalty = sdp.sigma_and_regularizer(splan, wd_instance=0.1)
    (sigma.sum() + penalty).backward()
    return {"replicated": plan.bytes_exchanged, "sharded": sdp.step(splan)}


def _worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tmp_path = Path(tmp)
    with init_distributed("cpu", timeout=timedelta(seconds=60)) as ctx:
        assert ctx.backend == "gloo" and ctx.world_size == world_size and ctx.is_main == (rank == 0)
        out = {
            "replicated": _train("replicated", ctx),
            "sharded": _train("sharded", ctx, save_at=SAVE_AT, save_dir=tmp_path / "saved_by_two"),
            "resumed_from_one": _train("sharded", ctx, start=SAVE_AT, resume_dir=tmp_path / "saved_by_one"),
            "bytes": {n: _exchange_bytes(ctx, n) for n in (N, 1_000_000)},
        }
        torch.save(out, tmp_path / f"rank{rank}.pt")
        ctx.barrier()



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    one = DistributedContext()
    reference = _train("reference", one)
    # A one-process sharded run to step SAVE_AT, which the two processes resume (1 -> 2).
    _train("sharded", one, stop=SAVE_AT, save_at=SAVE_AT, save_dir=tmp / "saved_by_one")
    mp.spawn(_worker, args=(2, fakes.free_port(), str(tmp)), nprocs=2, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {
        "reference": reference,
        "ranks": ranks,
        # The two processes' checkpoint resumed by one (2 -> 1).
        "resumed_from_two": _train("sharded", one, start=SAVE_AT, resume_dir=tmp / "saved_by_two"),
        "one_process_sharded": _train("sharded", one),
        "dir": tmp,
    }


def _assert_model_equal(state, ref):
    for k in ref["model"]:
        torch.testing.assert_close(state["model"][k], ref["model"][k], atol=ATOL, rtol=RTOL)
    for a, b in zip(state["model_momentum"], ref["model_momentum"]):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def _assert_data_parameters_equal(state, ref):
    for key in ("class_", "class_momentum", "instance", "instance_momentum"):
        torch.testing.assert_close(state[key], ref[key], atol=ATOL, rtol=RTOL, msg=key)


def _joined(shards: list[dict]) -> dict:
    """One state from the ranks' shards, checked to tile [0, N) in rank order."""
    assert [s["shard"] for s in shards] == [shard_range(N, len(shards), r) for r in range(len(shards))]
    out = dict(shards[0])
    out["instance"] = torch.cat([s["instance"] for s in shards])
    out["instance_momentum"] = torch.cat([s["instance_momentum"] for s in shards])
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_the_reference_run_exercises_clamp_and_momentum(runs):
    ref = runs["reference"]
    lo, hi = np.log(0.7), np.log(1.5)
    at_bound = (ref["instance"] - lo).abs().lt(1e-6) | (ref["instance"] - hi).abs().lt(1e-6)
    assert 0 < int(at_bound.sum()) < N
    assert ref["instance_momentum"].abs().gt(0).all()  # every sample was in a batch


@pytest.mark.distributed
@pytest.mark.slow
def test_replicated_two_processes_equal_one_process(runs):
    for state in (r["replicated"] for r in runs["ranks"]):
        _assert_model_equal(state, runs["reference"])
        _assert_data_parameters_equal(state, runs["reference"])


@pytest.mark.distributed
@pytest.mark.slow
def test_replicated_ranks_hold_identical_data_parameters(runs):
    a, b = (r["replicated"] for r in runs["ranks"])
    for key in ("class_", "class_momentum", "instance", "instance_momentum"):
        assert torch.equal(a[key], b[key]), key


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_two_processes_equal_one_process(runs):
    shards = [r["sharded"] for r in runs["ranks"]]
    assert torch.equal(shards[0]["class_"], shards[1]["class_"])
    assert torch.equal(shards[0]["class_momentum"], shards[1]["class_momentum"])
    _assert_model_equal(shards[0], runs["reference"])
    _assert_data_parameters_equal(_joined(shards), runs["reference"])
    # and equal to the replicated mode
    _assert_data_parameters_equal(_joined(shards), runs["ranks"][0]["replicated"])


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_one_process_equals_the_reference(runs):
    _assert_model_equal(runs["one_process_sharded"], runs["reference"])
    _assert_data_parameters_equal(runs["one_process_sharded"], runs["reference"])


@pytest.mark.parametrize("level", ["class", "instance", "off"])
def test_sharded_one_process_equals_the_reference_for_one_level(level):
    options = dict(DP_OPTIONS, class_curriculum=level == "class", instance_curriculum=level == "instance",
                   init_instance=0.8)
    one = DistributedContext()
    sharded, reference = _train("sharded", one, options=options), _train("reference", one, options=options)
    _assert_model_equal(sharded, reference)
    _assert_data_parameters_equal(sharded, reference)


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_gather_collects_every_row_on_rank_zero(runs):
    shards = [r["sharded"] for r in runs["ranks"]]
    assert torch.equal(shards[0]["gathered"], _joined(shards)["instance"])
    assert shards[1]["gathered"] is None


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_checkpoint_of_two_processes_resumes_in_one(runs):
    resumed = runs["resumed_from_two"]
    _assert_model_equal(resumed, runs["reference"])
    _assert_data_parameters_equal(resumed, runs["reference"])
    files = sorted(p.name for p in (runs["dir"] / "saved_by_two").iterdir())
    assert {"model.pt", "manifest.json"} < set(files) and not any(f.endswith(".tmp") for f in files)
    assert sum(f.startswith("shard-") for f in files) == 2 and sum(f.startswith("classes-") for f in files) == 1


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_checkpoint_of_one_process_resumes_in_two(runs):
    shards = [r["resumed_from_one"] for r in runs["ranks"]]
    _assert_model_equal(shards[0], runs["reference"])
    _assert_data_parameters_equal(_joined(shards), runs["reference"])


@pytest.mark.distributed
@pytest.mark.slow
def test_bytes_per_step_are_order_batch_and_do_not_grow_with_n(runs):
    for r in runs["ranks"]:
        small, large = r["bytes"][N], r["bytes"][1_000_000]
        assert small == large
        for mode, nbytes in small.items():
            # a few 8-byte counts, then 4-byte indices and values of the local share (both
            # levels), the B values of the sharded all-reduce: under 20 bytes a sample
            assert 0 < nbytes < 20 * B, (mode, nbytes)
        assert large["sharded"] < 4 * 1_000_000 / 1000  # a dense all-reduce would move 4 MB
    # Every training step communicated, the same amount on both ranks for these even shares.
    for mode in ("replicated", "sharded"):
        steps = [r[mode]["bytes"] for r in runs["ranks"]]
        assert len(steps[0]) == STEPS and all(b > 0 for b in steps[0])


# ---- one process: shares, samplers, loaders, the weighting rule, contexts, checkpoints --------


@pytest.mark.parametrize("total,parts", [(64, 2), (19, 2), (7, 3), (2, 4), (0, 3), (10**9 + 7, 8)])
def test_split_sizes_and_shard_range_match_numpy_array_split(total, parts):
    sizes = split_sizes(total, parts)
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1
    if total < 10**6:
        expected = [len(a) for a in np.array_split(np.arange(total), parts)]
        assert sizes == expected
    ranges = [shard_range(total, parts, r) for r in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert [e - s for s, e in ranges] == sizes


def test_local_shares_concatenate_to_the_batch():
    batch = torch.arange(19 * 3).view(19, 3)
    shares = [local_share(batch, r, 4) for r in range(4)]
    assert [len(s) for s in shares] == [5, 5, 5, 4]
    assert torch.equal(torch.cat(shares), batch)


def _images(n=37, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8), rng.integers(0, 4, n)


def test_sampler_shares_are_the_in_memory_loaders_batches():
    imgs, y = _images()
    loader = InMemoryLoader(imgs, y, batch_size=8, shuffle=True, seed=5)
    samplers = [GlobalBatchSampler(37, 8, rank=r, world_size=3, shuffle=True, seed=5) for r in range(3)]
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        for s in samplers:
            s.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(samplers[0]) == 5
        for (_, _, idx), *shares in zip(batches, *samplers):
            assert [len(s) for s in shares] == split_sizes(len(idx), 3)
            assert sum(shares, []) == idx.tolist()


def test_sampler_in_a_dataloader_yields_global_indices():
    x = torch.randn(37, 2)
    y = torch.arange(37) % 4
    sampler = GlobalBatchSampler(37, 8, rank=1, world_size=2, shuffle=True, seed=2)
    loader = DataLoader(WithIndex(TensorDataset(x, y)), batch_sampler=sampler)
    sampler.set_epoch(1)
    for (xb, yb, ib), batch in zip(loader, sampler.global_batches()):
        assert torch.equal(ib, local_share(batch, 1, 2))
        assert torch.equal(xb, x[ib]) and torch.equal(yb, y[ib])


def test_sampler_refuses_a_batch_that_leaves_a_rank_empty():
    with pytest.raises(ValueError, match="drop_last"):
        GlobalBatchSampler(37, 6, rank=0, world_size=2)  # the last batch holds 1 sample
    with pytest.raises(ValueError, match="every global batch"):
        GlobalBatchSampler(37, 2, rank=0, world_size=3)
    assert len(GlobalBatchSampler(37, 6, rank=0, world_size=2, drop_last=True)) == 6
    # With a placeholder (the file loaders' way) the empty share is the batch's first sample.
    s = GlobalBatchSampler(37, 6, rank=1, world_size=2, shuffle=False, placeholder=True)
    assert list(s)[-1] == [36] and list(s.share_sizes())[-1] == 0


def test_local_share_loader_keeps_order_and_augmentation_of_one_process():
    imgs, y = _images()
    options = dict(batch_size=8, shuffle=True, augment=Augment(2, True), seed=1)
    single = InMemoryLoader(imgs, y, **options)
    shared = [LocalShareLoader(InMemoryLoader(imgs, y, **options), rank=r, world_size=3) for r in range(3)]
    single.set_epoch(2)
    for s in shared:
        s.set_epoch(2)
    assert len(shared[0]) == len(single)
    for (x, t, i), *parts in zip(single, *shared):
        for k, full in enumerate((x, t, i)):
            assert torch.equal(torch.cat([p[k] for p in parts]), full)


def test_loss_weights_make_the_ranks_sum_to_the_single_process_gradient():
    # Three simulated ranks with shares 3, 3, 2 of a batch of 8, a sample index and classes
    # repeated across ranks: DDP's mean of the model gradients and the sum / P of the data
    # gradients must equal one process's gradients of mean(loss) + regulariser.
    P = 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0, 1, 2, 2])
    idx = torch.tensor([5, 1, 9, 5, 3, 0, 5, 7])
    torch.manual_seed(1)
    model = nn.Linear(4, 3)
    dp = DataParameters(3, 10, class_curriculum=True, instance_curriculum=True, init_instance=0.5)

    def grads(xs, ys, ids, weigh):
        model.zero_grad()
        dp.class_log_sigma.grad = dp.instance_log_sigma.grad = None
        sigma, penalty = dp.sigma_and_regularizer(ys, ids, wd_class=0.3, wd_instance=0.2)
        per_sample = scaled_loss(per_sample_cross_entropy, model(xs), ys, sigma, reduction="none")
        weigh(per_sample, penalty).backward()
        return ([p.grad.clone() for p in model.parameters()],
                [dp.class_log_sigma.grad.to_dense(), dp.instance_log_sigma.grad.to_dense()])

    ref_model, ref_data = grads(x, y, idx, lambda ps, pen: ps.mean() + pen)
    w = loss_weights(8, P)
    assert w == (P / 8, P, 1 / P)
    sum_model = [torch.zeros_like(t) for t in ref_model]
    sum_data = [torch.zeros_like(t) for t in ref_data]
    for r in range(P):
        share = [local_share(t, r, P) for t in (x, y, idx)]
        gm, gd = grads(*share, lambda ps, pen: distributed_loss(ps, pen, global_batch_size=8, world_size=P))
        sum_model = [a + b for a, b in zip(sum_model, gm)]
        sum_data = [a + b for a, b in zip(sum_data, gd)]
    for a, b in zip(sum_model, ref_model):
        torch.testing.assert_close(a / P, b)
    for a, b in zip(sum_data, ref_data):
        torch.testing.assert_close(a * w.data_gradient, b)


def test_distributed_loss_is_the_plain_loss_in_one_process():
    ps, pen = torch.tensor([1.0, 2.0, 4.0]), torch.tensor(0.5)
    torch.testing.assert_close(distributed_loss(ps, pen, global_batch_size=3, world_size=1), ps.mean() + pen)
    with pytest.raises(ValueError, match="exceed"):
        distributed_loss(ps, pen, global_batch_size=2, world_size=1)


def test_init_distributed_without_a_launcher_is_one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, None)
    assert ctx.is_main and not ctx.is_distributed
    assert ctx.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    ctx.barrier()
    ctx.close()
    model = nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model


def test_init_distributed_checks_its_environment(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="inconsistent"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "1")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            init_distributed("cuda")


def _sharded_after_steps(ctx, steps=3):
    sdp = ShardedDataParameters(K, N, ctx=ctx, **DP_OPTIONS, lr_class=LR_CLASS, lr_instance=LR_INSTANCE)
    x_all, y_all = _data()
    for idx in _local_batches(0, 1)[:steps]:
        plan = sdp.begin_step(y_all[idx], idx)
        sigma, penalty = sdp.sigma_and_regularizer(plan, wd_instance=WD_INSTANCE)
        ((x_all[idx, 0] * sigma).sum() + penalty).backward()
        sdp.step(plan)
    return sdp


def test_sharded_load_reads_its_own_rows_of_another_layout(tmp_path):
    saved = _sharded_after_steps(DistributedContext())
    # A whole-model state_dict saved by one rank would hold one shard only: the rows are left out.
    assert set(saved.state_dict()) == {"class_log_sigma", "class_momentum"}
    saved.save(tmp_path)
    saved.save(tmp_path)  # a second save replaces the first one's files
    assert sum(p.name.startswith("shard-") for p in tmp_path.iterdir()) == 1
    for rank in range(3):
        # No collective in load: a context that says "rank r of 3" is enough to test it here.
        part = ShardedDataParameters(K, N, ctx=DistributedContext(rank=rank, world_size=3), **DP_OPTIONS)
        part.load(tmp_path)
        start, end = shard_range(N, 3, rank)
        assert part.shard == (start, end)
        assert torch.equal(part.instance_log_sigma, saved.instance_log_sigma[start:end])
        assert torch.equal(part.instance_momentum, saved.instance_momentum[start:end])
        assert torch.equal(part.class_log_sigma, saved.class_log_sigma)
        assert torch.equal(part.class_momentum, saved.class_momentum)


def test_sharded_load_refuses_another_data_set(tmp_path):
    ShardedDataParameters(K, N, ctx=DistributedContext()).save(tmp_path)
    with pytest.raises(ValueError, match="N=64"):
        ShardedDataParameters(K, N + 1, ctx=DistributedContext()).load(tmp_path)


def test_sharded_grad_scale_unscales_and_skips_non_finite_steps():
    ctx = DistributedContext()
    a = ShardedDataParameters(K, N, ctx=ctx, **DP_OPTIONS, lr_instance=0.5)
    b = ShardedDataParameters(K, N, ctx=ctx, **DP_OPTIONS, lr_instance=0.5)
    y, idx = torch.tensor([0, 1, 1]), torch.tensor([4, 9, 4])
    for sdp, scale in ((a, 1.0), (b, 1024.0)):
        plan = sdp.begin_step(y, idx)
        (sdp.sigma_and_regularizer(plan)[0].sum() * scale).backward()
        sdp.step(plan, grad_scale=scale)
    torch.testing.assert_close(a.instance_log_sigma, b.instance_log_sigma)
    torch.testing.assert_close(a.class_momentum, b.class_momentum)
    before = a.instance_log_sigma.clone()
    plan = a.begin_step(y, idx)
    (a.sigma_and_regularizer(plan)[0].sum() * float("inf")).backward()
    a.step(plan, grad_scale=1.0)
    assert torch.equal(a.instance_log_sigma, before)


def test_sharded_begin_step_checks_its_batch():
    sdp = ShardedDataParameters(K, N, ctx=DistributedContext(), instance_curriculum=True)
    with pytest.raises(IndexError, match="outside"):
        sdp.begin_step(torch.tensor([0]), torch.tensor([N]))
    with pytest.raises(ValueError, match="differ"):
        sdp.begin_step(torch.tensor([0, 1]), torch.tensor([0]))


class _Unsaveable:
    def __reduce__(self):
        raise RuntimeError("refuses to be saved")


@pytest.mark.faults
def test_shard_file_writes_are_atomic_and_hashed_as_written(tmp_path):
    from dataparams.distributed.checkpoint import save_hashed

    path = tmp_path / "shard-00000-of-00001-0.pt"
    recorded = save_hashed({"step": 1}, path)
    assert recorded == {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with pytest.raises(RuntimeError, match="refuses"):
        save_hashed({"step": 2, "bad": _Unsaveable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _agree_worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    from types import SimpleNamespace

    from dataparams.config import ConfigError, TrainConfig
    from dataparams.experiment import check_ranks_agree

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    given = np.arange(20) % 4
    if rank == 1:
        given[3] = 0  # one label edited on one node only
    labels = SimpleNamespace(given=given, train_index=np.arange(20), num_train=20)
    cfg = TrainConfig()
    cfg.data.memory_budget_mb = 100 * (rank + 1)  # an execution field: allowed to differ
    results = {}
    with init_distributed("cpu", timeout=timedelta(seconds=60)) as ctx:
        check_ranks_agree(ctx, TrainConfig(), SimpleNamespace(given=np.arange(20) % 4, train_index=np.arange(20),
                                                              num_train=20), [])  # agree: no error
        try:
            check_ranks_agree(ctx, cfg, labels, [])
            results["error"] = None
        except ConfigError as e:
            results["error"] = str(e)
    torch.save(results, Path(tmp) / f"agree{rank}.pt")


@pytest.mark.distributed
def test_ranks_that_disagree_on_their_labels_all_stop_with_one_message(tmp_path):
    mp.spawn(_agree_worker, args=(2, fakes.free_port(), str(tmp_path)), nprocs=2, join=True)
    errors = [torch.load(tmp_path / f"agree{r}.pt", weights_only=False)["error"] for r in range(2)]
    assert errors[0] == errors[1] is not None  # the same message on every rank
    assert "disagree" in errors[0] and "rank 1: labels" in errors[0] and "config" not in errors[0].split("--")[0]


# ---- damaged sharded checkpoints ----------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":  # one byte in the middle of the file: its size stays the same
        path.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    else:
        raise ValueError(how)


_WHAT = {"delete": "is missing", "truncate": "is truncated", "flip": "is damaged: its SHA-256 does not match"}


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
@pytest.mark.parametrize("which", ["shard", "classes"])
@pytest.mark.faults
def test_sharded_load_names_a_missing_truncated_or_damaged_file(tmp_path, how, which):
    from dataparams.distributed import ShardFileError

    saved = _sharded_after_steps(DistributedContext())
    saved.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["checksums"]) == {manifest["classes"], manifest["shards"][0]["file"]}
    name = manifest["shards"][0]["file"] if which == "shard" else manifest["classes"]
    _damage(tmp_path / name, how)
    part = ShardedDataParameters(K, N, ctx=DistributedContext(rank=1, world_size=3), **DP_OPTIONS)
    before = {k: v.clone() for k, v in part.state_dict().items()} | {"rows": part.instance_log_sigma.clone()}
    with pytest.raises(ShardFileError) as info:
        part.load(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / name} {_WHAT[how]}" in message
    assert "Put the original file back" in message
    # Nothing was loaded.
    assert all(torch.equal(v, before[k]) for k, v in part.state_dict().items())
    assert torch.equal(part.instance_log_sigma, before["rows"])


@pytest.mark.faults
def test_sharded_load_of_a_save_without_checksums_and_of_a_foreign_shard(tmp_path):
    from dataparams.distributed import ShardFileError

    saved = _sharded_after_steps(DistributedContext())
    saved.save(tmp_path / "a")
    # A manifest written before checksums were kept: its files load as before.
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    del manifest["checksums"]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    part = ShardedDataParameters(K, N, ctx=DistributedContext(rank=2, world_size=3), **DP_OPTIONS)
    part.load(tmp_path / "a")
    start, end = shard_range(N, 3, 2)
    assert torch.equal(part.instance_log_sigma, saved.instance_log_sigma[start:end])
    # ... and its shard replaced by the shard of a save of another N under the same name is refused
    # on what the file holds (no checksum to compare).
    other = ShardedDataParameters(K, N + 6, ctx=DistributedContext(), **DP_OPTIONS)
    other.save(tmp_path / "b")
    other_manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    shard = tmp_path / "a" / manifest["shards"][0]["file"]
    shard.write_bytes((tmp_path / "b" / other_manifest["shards"][0]["file"]).read_bytes())
    with pytest.raises(ShardFileError, match=f"{shard} is not a shard of this checkpoint: it holds rows \\[0, 70\\)"):
        part.load(tmp_path / "a")
    # A truncated one of that old save: torch's error, named with the file, as a ShardFileError.
    shard.write_bytes(b"PK\x03\x04")
    with pytest.raises(ShardFileError, match=f"{shard} is unreadable"):
        part.load(tmp_path / "a")


def _damaged_worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    """Save with ``world_size`` processes, damage the last rank's shard (only that rank reads it
    back), load on every rank: each records its error and how long the load took."""
    import time

    from dataparams.distributed import ShardFileError

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    directory = Path(tmp) / "saved"
    result: dict = {}
    with init_distributed("cpu", timeout=timedelta(seconds=60)) as ctx:
        sdp = ShardedDataParameters(K, N, ctx=ctx, **DP_OPTIONS)
        sdp.instance_log_sigma.add_(0.01 * (rank + 1))
        sdp.save(directory)
        if ctx.is_main:
            manifest = json.loads((directory / "manifest.json").read_text())
            _damage(directory / manifest["shards"][-1]["file"], "flip")
        ctx.barrier()
        fresh = ShardedDataParameters(K, N, ctx=ctx, **DP_OPTIONS)
        began = time.perf_counter()
        try:
            fresh.load(directory)
            result["error"] = None
        except ShardFileError as e:
            result["error"] = str(e)
        result["seconds"] = time.perf_counter() - began
        result["untouched"] = torch.equal(fresh.instance_log_sigma, ShardedDataParameters(
            K, N, ctx=ctx, **DP_OPTIONS).instance_log_sigma)
        ctx.barrier()  # every rank got here: none waits in a collective of the load
    torch.save(result, Path(tmp) / f"damaged{rank}.pt")


@pytest.mark.distributed
@pytest.mark.faults
@pytest.mark.slow
def test_a_damaged_shard_stops_every_rank_with_one_message(tmp_path):
    mp.spawn(_damaged_worker, args=(3, fakes.free_port(), str(tmp_path)), nprocs=3, join=True)
    results = [torch.load(tmp_path / f"damaged{r}.pt", weights_only=False) for r in range(3)]
    errors = [r["error"] for r in results]
    assert errors[0] is not None and errors[0] == errors[1] == errors[2]
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
    assert f"{tmp_path / 'saved' / manifest['shards'][2]['file']} is damaged" in errors[0]
    assert all(r["untouched"] for r in results)
    print("load refused after", ", ".join(f"{r['seconds']:.2f} s" for r in results))
    assert max(r["seconds"] for r in results) < 10


# ---- the end of a run: each rank writes its share -----------------------------------------------


def _shares_worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    from dataparams.experiment import save_shares
    from dataparams.runs import RunDir

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    errors = {}
    with init_distributed("cpu", timeout=timedelta(seconds=60)) as ctx:
        for n in (7, 2):  # 3 + 2 + 2 rows; then 1 + 1 + 0: the last rank's share is empty
            run = RunDir(Path(tmp) / f"n{n}")
            lo, hi = shard_range(n, world_size, rank)
            rows = torch.arange(lo, hi)
            # What predict_training_set writes: predict_by_index's columns of this rank's share
            # (an empty share predicts an empty list), here with logits that encode the row.
            logits = torch.nn.functional.one_hot(rows % 3, 3).float() * 5 + rows[:, None] * 1e-3
            given = rows % 2
            share = [] if hi == lo else [(logits, given, torch.arange(hi - lo))]
            local = predict_by_index(torch.nn.Identity(), share, torch.device("cpu"), given)
            save_shares(run, "predictions.npz", {k: v.numpy() for k, v in local.items()}, lo, hi, n, ctx)
        # A full disk on rank 1 alone, half-way through its file: every rank raises with rank 1's
        # message, and no shard file (the others' removed again) nor a temporary file is left.
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        if rank == 1:
            np.lib.format.write_array = full
        try:
            save_shares(RunDir(Path(tmp) / "full"), "predictions.npz", {"x": np.zeros(hi - lo)}, lo, hi, 2, ctx)
        except OSError as e:
            errors["full"] = str(e)
    torch.save(errors, Path(tmp) / f"errors{rank}.pt")


@pytest.mark.distributed
@pytest.mark.faults
def test_each_ranks_share_written_as_its_own_file_reads_back_as_the_whole_column(tmp_path):
    from dataparams.runs import RunDir

    # A stale whole file and shards of another number of processes are removed first.
    (tmp_path / "n7").mkdir()
    np.savez(tmp_path / "n7" / "predictions.npz", pred=np.zeros(7))
    (tmp_path / "n7" / "predictions.shard-00000-of-00002.npz").write_bytes(b"old")
    mp.spawn(_shares_worker, args=(3, fakes.free_port(), str(tmp_path)), nprocs=3, join=True)
    for n in (7, 2):
        run = RunDir(tmp_path / f"n{n}")
        assert sorted(p.name for p in run.path.iterdir()) == [f"predictions.shard-0000{r}-of-00003.npz" for r in range(3)]
        got = run.load_arrays("predictions.npz")
        rows = torch.arange(n)
        logits = torch.nn.functional.one_hot(rows % 3, 3).float() * 5 + rows[:, None] * 1e-3
        want = predict_by_index(torch.nn.Identity(), [(logits, rows % 2, rows)], torch.device("cpu"), rows % 2)
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key].dtype == value.numpy().dtype, key
            assert np.array_equal(got[key], value.numpy()), (n, key)
    errors = [torch.load(tmp_path / f"errors{r}.pt", weights_only=False) for r in range(3)]
    assert all("rank 1: OSError" in e["full"] and "No space left on device" in e["full"] for e in errors)
    assert list((tmp_path / "full").iterdir()) == []
