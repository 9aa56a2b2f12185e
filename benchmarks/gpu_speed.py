"""Training speed with and without data parameters, on a GPU in one short call (or tiny on the CPU).

    python benchmarks/gpu_speed.py [--device auto] [--models wrn28_10 resnet18] [--batch 128 512]
        [--curriculum joint] [--dp-sizes 5e4 1.28e6 1e7] [--out gpu_speed.md] [--check]

The data are synthetic CIFAR-shaped tensors (no CIFAR on these machines): ``--train-size`` uint8
images (N, 3, 32, 32) held on the device and random labels of 10 classes. For each model
(``wrn28_10``, ``resnet18``: the project's builder, ``dataparams.models.build_model``) and batch
size, three training loops run side by side:

(a) reference: a minimal hand-written loop without data parameters -- the batch gathered from the
    device tensor by a random index, /255, the preset's augmentation (random crop with 4 px padding
    and flip, offsets drawn on the device) and normalised, the model under autocast, cross-entropy,
    ``torch.optim.SGD`` (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4);
(b) the same loop with data parameters: ``DataParameters(K, N, ...)`` with the levels of
    ``--curriculum`` (``joint`` by default: class and instance temperatures, the most work per
    step), ``dp.sigma_and_regularizer(y, idx, ...)``, the logits divided by sigma,
    ``SparseSGD(dp.param_groups(...), momentum=...)`` stepped after the model's optimizer; learning
    rates, weight decays and initial values of the ``cifar10/<curriculum>`` preset;
(c) the project's engine, ``dataparams.engine.train_one_epoch``, with the ``cifar10/<curriculum>``
    preset's settings (``build_objective``, ``build_optimizer``) and an ``InMemoryLoader`` over the
    same device tensor with the preset's augmentation, so that (c)/(a) compares the same work.

Each loop has its own model and optimizer. After ``--warmup`` untimed steps of each, ``--repeats``
rounds time ``--steps`` steps of every loop in turn (the order rotates each round, so drift biases
none), synchronised on CUDA. Reported: median images/s over the rounds, the median over rounds of
the per-round ratio to (a), and the peak memory of the loop's timed steps
(``torch.cuda.max_memory_allocated``; in parentheses what the step adds to the memory held before
it, i.e. without the other loops' models). On the CPU the memory column is the process's max RSS
(``ru_maxrss``) after the model's steps, the same for all three loops.

Also measured:

* the data-parameter update alone at each of ``--dp-sizes`` instances (``--dp-batch`` rows):
  gather + backward of a tiny loss + ``SparseSGD.step``, the way ``gpu_check.py`` times it
  (``gather_rows`` on one (N,) parameter), and the same through ``DataParameters`` with the
  ``--curriculum`` levels (``sigma_and_regularizer``, which range-checks the batch); median ms;
* host syncs per steady-state step of every loop, for each model at the first batch size: with
  ``dataparams.syncs.count_host_syncs`` (any device; it counts Python-level calls into operations
  that synchronise a GPU, by name) and, on CUDA, the warnings of
  ``torch.cuda.set_sync_debug_mode("warn")``, which also see syncs inside C++ (a blocking copy
  from pageable host memory, a data-dependent size) but, as torch documents, not all of them (the
  ``torch.sparse`` namespace is not covered); their calling lines are listed below the table. The
  two counts complement each other. For the engine, one step is the difference between a
  two-step and a one-step ``train_one_epoch`` (which reads its statistics back at its end), both
  started inside an epoch so that the loader's per-epoch shuffle is not counted.

Defaults: on CUDA batch 128 and 512, 30 steps x 3 rounds after 10 warm-up steps, 50,000 images,
``--amp bf16``, channels-last (sized for well under 5 minutes on one H100). On the CPU batch 4, 2 steps x 1
round after 1 warm-up step, 1,024 images, ``--amp off``, channels-last (as ``dataparams train``):
WRN-28-10 costs one to a few seconds per step of 4 images on 2 cores, and each loop runs about 5
steps, so the whole run takes under a minute on an idle 2-core machine. The CPU numbers only show
that everything runs; they are not speeds to compare.

``--check`` (CUDA only; elsewhere it says so and exits 2) exits 1 with the failed bounds named
when: the update at N = 1e7 (``gather_rows`` + SparseSGD, ``--dp-batch``) takes more than 0.1 ms;
a steady-state step of (b) or (c) has a host sync (either count); (b)/(a) < 0.98 or
(c)/(a) < 0.95 for a model and batch size; or one of these was not measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from _table import emit
from dataparams import DataParameters, SparseSGD
from dataparams.data.memory import crop_at, flip_where
from dataparams.parameters import gather_rows
from dataparams.syncs import count_host_syncs

NUM_CLASSES = 10
KINDS = ("(a) reference", "(b) data parameters", "(c) engine")
BOUND_UPDATE_MS = 0.1
BOUND_UPDATE_N = 10_000_000
BOUND_RATIO = {KINDS[1]: 0.98, KINDS[2]: 0.95}
SYNC_TEXT = "synchronizing"  # torch's sync-debug warning: "called a synchronizing CUDA operation"

_DEFAULTS = {
    "cuda": dict(batch=[128, 512], steps=30, warmup=10, repeats=3, train_size=50_000, amp="bf16", dp_iters=200),
    "cpu": dict(batch=[4], steps=2, warmup=1, repeats=1, train_size=1024, amp="off", dp_iters=50),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# The three loops


@dataclass
class Loop:
    """One training loop: ``run(n, batch)`` does n steps; ``release()`` frees its gradients."""

    kind: str
    run: Callable[[int, int], None]
    release: Callable[[], None]
    count_step: Callable[[int, Callable[[Callable[[], None]], int]], int] | None = None


def _normalise(images: torch.Tensor, idx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               channels_last: bool, padding: int = 0, flip: bool = False) -> torch.Tensor:
    x = images.index_select(0, idx).float().div_(255.0)
    # The preset's augmentation, as the engine's loader does it, with the offsets drawn on the device.
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (len(idx),), device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (len(idx),), device=x.device)
        x = crop_at(x, padding, dy, dx)
    if flip:
        x = flip_where(x, torch.rand(len(idx), device=x.device) < 0.5)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _hand_loop(kind: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, exe: Any,
               mean: torch.Tensor, std: torch.Tensor, cfg: Any, with_dp: bool) -> Loop:
    """(a) or (b): the hand-written loop, on random indices drawn on the device."""
    n = images.shape[0]
    o, c, d = cfg.optim, cfg.curriculum, cfg.data
    augment = (d.crop_padding, d.flip) if d.augment else (0, False)
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    optimizers: list[torch.optim.Optimizer] = [opt]
    dp = None
    if with_dp:
        dp = DataParameters(NUM_CLASSES, n, class_curriculum=c.class_curriculum,
                            instance_curriculum=c.instance_curriculum, init_class=c.init_class,
                            init_instance=c.init_instance).to(images.device)
        optimizers.append(SparseSGD(dp.param_groups(lr_class=c.lr_class, lr_instance=c.lr_instance),
                                    momentum=c.momentum))

    def step(batch: int) -> None:
        idx = torch.randint(0, n, (batch,), device=images.device)
        x = _normalise(images, idx, mean, std, exe.channels_last, *augment)
        y = labels.index_select(0, idx)
        for opt_ in optimizers:
            opt_.zero_grad(set_to_none=True)
        with exe.autocast():
            logits = model(x)
        logits = logits.float()
        if dp is None:
            loss = F.cross_entropy(logits, y)
        else:
            sigma, penalty = dp.sigma_and_regularizer(y, idx, wd_class=c.wd_class, wd_instance=c.wd_instance)
            loss = F.cross_entropy(logits / sigma[:, None], y) + penalty
        loss.backward()
        for opt_ in optimizers:  # the model's first, then the data parameters'
            opt_.step()

    def run(steps: int, batch: int) -> None:
        for _ in range(steps):
            step(batch)

    def release() -> None:
        for opt_ in optimizers:
            opt_.zero_grad(set_to_none=True)

    def count_step(batch: int, counter: Callable[[Callable[[], None]], int]) -> int:
        return counter(lambda: step(batch))

    return Loop(kind, run, release, count_step)


class _Batches:
    """Endless batches of one loader, handed out ``n`` at a time as ``train_one_epoch``'s loader."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.epoch, self.it = loader, 0, None

    def _next(self) -> Any:
        while True:
            if self.it is None:
                self.loader.set_epoch(self.epoch)
                self.epoch += 1
                self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                self.it = None

    def new_epoch(self) -> None:
        """Start an epoch now (its shuffle and first batch, discarded): the next batches are steady ones."""
        self.it = None
        self._next()

    def take(self, n: int) -> Iterator[Any]:
        for _ in range(n):
            yield self._next()


def _engine_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, exe: Any, cfg: Any,
                 batches: list[int]) -> Loop:
    """(c): ``train_one_epoch`` with the preset's objective, optimizer and in-memory loader."""
    from dataparams.build import build_optimizer
    from dataparams.data.memory import Augment, InMemoryLoader
    from dataparams.data.registry import DATASETS
    from dataparams.engine import ClassificationStep, train_one_epoch
    from dataparams.methods.registry import build_objective

    device = images.device
    objective = build_objective(cfg, num_classes=NUM_CLASSES, num_train=images.shape[0], device=device)
    optimizer, _ = build_optimizer(cfg, model, objective)
    info, d = DATASETS["cifar10"], cfg.data
    streams = {
        b: _Batches(InMemoryLoader(images, labels, batch_size=b, shuffle=True,
                                   augment=Augment(d.crop_padding, d.flip) if d.augment else None,
                                   mean=info.mean, std=info.std, device=device, seed=0, drop_last=True,
                                   channels_last=False))
        for b in batches
    }

    def run(steps: int, batch: int) -> None:
        train_one_epoch(ClassificationStep(model, objective, optimizer, device, execution=exe),
                        streams[batch].take(steps))

    def release() -> None:
        for opt in (optimizer, *objective.optimizers().values()):
            opt.zero_grad(set_to_none=True)

    def count_step(batch: int, counter: Callable[[Callable[[], None]], int]) -> int:
        # train_one_epoch reads its statistics back once at its end: count 2 steps minus 1 step.
        streams[batch].new_epoch()
        one = counter(lambda: run(1, batch))
        streams[batch].new_epoch()
        two = counter(lambda: run(2, batch))
        return two - one

    return Loop(KINDS[2], run, release, count_step)


# --------------------------------------------------------------------------------------------
# Counting host syncs


@dataclass
class SyncCount:
    model: str
    kind: str
    counted: int  # count_host_syncs total per step
    calls: Counter = field(default_factory=Counter)
    cuda: int | None = None  # sync-debug warnings per step (CUDA only)
    where: Counter = field(default_factory=Counter)


def _count_host_syncs(fn: Callable[[], None], calls: list[Counter]) -> int:
    with count_host_syncs() as s:
        fn()
    calls.append(Counter(s.calls))
    return s.total


def _count_cuda_warnings(fn: Callable[[], None], device: torch.device, where: list[Counter]) -> int:
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _sync(device)
    hits = [w for w in caught if SYNC_TEXT in str(w.message)]
    where.append(Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in hits))
    return len(hits)


def _per_step(counts: list[Counter]) -> Counter:
    """One count, or the second minus the first (the engine's two-step minus one-step run)."""
    if len(counts) == 1:
        return counts[0]
    out = counts[1].copy()
    out.subtract(counts[0])
    return +out


def _syncs_of(loop: Loop, model_name: str, batch: int, device: torch.device) -> SyncCount:
    assert loop.count_step is not None
    calls: list[Counter] = []
    out = SyncCount(model_name, loop.kind, loop.count_step(batch, lambda fn: _count_host_syncs(fn, calls)))
    out.calls = _per_step(calls)
    if device.type == "cuda":
        where: list[Counter] = []
        out.cuda = loop.count_step(batch, lambda fn: _count_cuda_warnings(fn, device, where))
        out.where = _per_step(where)
    loop.release()
    return out


# --------------------------------------------------------------------------------------------
# Speed of the loops


@dataclass
class Speed:
    model: str
    batch: int
    kind: str
    ips: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    peak_mib: float = 0.0
    added_mib: float | None = None

    @property
    def median_ips(self) -> float:
        return statistics.median(self.ips)

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratio)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _timed(loop: Loop, steps: int, batch: int, device: torch.device, speed: Speed) -> float:
    loop.release()
    _sync(device)
    if device.type == "cuda":
        held = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    loop.run(steps, batch)
    _sync(device)
    wall = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        speed.peak_mib = max(speed.peak_mib, peak / 2**20)
        speed.added_mib = max(speed.added_mib or 0.0, (peak - held) / 2**20)
    loop.release()
    return steps * batch / wall


def measure_model(name: str, args: argparse.Namespace, device: torch.device, images: torch.Tensor,
                  labels: torch.Tensor) -> tuple[list[Speed], list[SyncCount]]:
    from dataparams.data.registry import DATASETS
    from dataparams.engine import Execution
    from dataparams.models import build_model
    from dataparams.presets import get_preset

    cfg = get_preset(f"cifar10/{args.curriculum}")
    cfg.model.arch = name
    exe = Execution.create(device, args.amp, channels_last=args.channels_last)
    info = DATASETS["cifar10"]
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return exe.model(build_model(name, NUM_CLASSES, dropout=cfg.model.dropout))

    loops = [
        _hand_loop(KINDS[0], fresh(), images, labels, exe, mean, std, cfg, with_dp=False),
        _hand_loop(KINDS[1], fresh(), images, labels, exe, mean, std, cfg, with_dp=True),
        _engine_loop(fresh(), images, labels, exe, cfg, args.batch),
    ]
    speeds, syncs = [], []
    for b_i, batch in enumerate(args.batch):
        rows = {loop.kind: Speed(name, batch, loop.kind) for loop in loops}
        for loop in loops:
            if args.warmup:
                loop.run(args.warmup, batch)
            loop.release()
        for r in range(args.repeats):
            order = loops[r % len(loops):] + loops[: r % len(loops)]
            got = {loop.kind: _timed(loop, args.steps, batch, device, rows[loop.kind]) for loop in order}
            for kind, ips in got.items():
                rows[kind].ips.append(ips)
                rows[kind].ratio.append(ips / got[KINDS[0]])
        if device.type != "cuda":
            rss = _max_rss_mib()
            for row in rows.values():
                row.peak_mib = rss
        speeds += rows.values()
        if b_i == 0:
            syncs += [_syncs_of(loop, name, batch, device) for loop in loops]
        print(f"  {name} batch {batch}: " + ", ".join(f"{k} {v.median_ips:,.0f} img/s" for k, v in rows.items()),
              file=sys.stderr, flush=True)
    return speeds, syncs


# --------------------------------------------------------------------------------------------
# The data-parameter update alone


@dataclass
class Update:
    what: str
    n: int
    batch: int
    median_ms: float


def update_times(n: int, batch: int, iters: int, device: torch.device, curriculum: str) -> list[Update]:
    """Median ms of gather + backward of a tiny loss + SparseSGD.step: gpu_check.py's way
    (``gather_rows`` on one (N,) parameter) and through ``DataParameters``."""
    out = []
    warm = max(2, iters // 10)

    p = torch.nn.Parameter(torch.zeros(n, device=device))
    opt = SparseSGD([p], lr=0.1, momentum=0.9)

    def plain(idx: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        gather_rows(p, idx).sum().backward()
        opt.step()

    dp = DataParameters(NUM_CLASSES, n, class_curriculum=curriculum in ("class", "joint"),
                        instance_curriculum=curriculum in ("instance", "joint")).to(device)
    dp_opt = SparseSGD(dp.param_groups(lr_class=0.1, lr_instance=0.2), momentum=0.9)

    def through_dp(idx: torch.Tensor, y: torch.Tensor) -> None:
        dp_opt.zero_grad()
        sigma, penalty = dp.sigma_and_regularizer(y, idx, wd_class=5e-4, wd_instance=0.0)
        (sigma.sum() + penalty).backward()
        dp_opt.step()

    for what, fn in (("gather_rows + SparseSGD.step (gpu_check.py)", plain),
                     (f"DataParameters {curriculum}: sigma_and_regularizer + SparseSGD.step", through_dp)):
        times = []
        for i in range(warm + iters):
            idx = torch.randint(0, n, (batch,), device=device)
            y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
            _sync(device)
            t0 = time.perf_counter()
            fn(idx, y)
            _sync(device)
            if i >= warm:
                times.append(time.perf_counter() - t0)
        out.append(Update(what, n, batch, 1e3 * statistics.median(times)))
    return out


# --------------------------------------------------------------------------------------------
# Bounds


def check_bounds(speeds: list[Speed], updates: list[Update], syncs: list[SyncCount],
                 models: list[str], batches: list[int]) -> list[str]:
    """The acceptance bounds (for CUDA): a message per failed or unmeasured bound."""
    fails = []
    at = [u for u in updates if u.n == BOUND_UPDATE_N and u.what.startswith("gather_rows")]
    if not at:
        fails.append(f"update at N = {BOUND_UPDATE_N:.0e} not measured (add it to --dp-sizes)")
    for u in at:
        if u.median_ms > BOUND_UPDATE_MS:
            fails.append(f"update at N = {u.n:.0e}, B = {u.batch}: {u.median_ms:.3f} ms > {BOUND_UPDATE_MS} ms")
    for model in models:
        for kind in KINDS[1:]:
            found = [s for s in syncs if s.model == model and s.kind == kind]
            if not found:
                fails.append(f"host syncs of {model} {kind} not measured")
            for s in found:
                if s.counted != 0:
                    fails.append(f"{model} {kind}: {s.counted} host sync(s) per step by count_host_syncs "
                                 f"({_calls(s.calls)})")
                if s.cuda is None:
                    fails.append(f"{model} {kind}: CUDA sync-debug count not measured (not on CUDA)")
                elif s.cuda != 0:
                    fails.append(f"{model} {kind}: {s.cuda} synchronizing CUDA operation(s) per step "
                                 f"({_calls(s.where)})")
        for batch in batches:
            for kind, bound in BOUND_RATIO.items():
                found = [s for s in speeds if s.model == model and s.batch == batch and s.kind == kind]
                if not found:
                    fails.append(f"{model} batch {batch} {kind}: not measured")
                for s in found:
                    if s.median_ratio < bound:
                        fails.append(f"{model} batch {batch}: {kind} / (a) = {s.median_ratio:.3f} < {bound}")
    return fails


# --------------------------------------------------------------------------------------------
# Table


def _calls(c: Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def _device_line(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} torch threads")
    return f"{name}, torch {torch.__version__}"


def table(args: argparse.Namespace, device: torch.device, speeds: list[Speed], updates: list[Update],
          syncs: list[SyncCount]) -> list[str]:
    cuda = device.type == "cuda"
    lines = [
        f"# Training speed with data parameters: {_device_line(device)}",
        "",
        f"Synthetic CIFAR-shaped data on {device.type}: {args.train_size:,} uint8 images 3x32x32, "
        f"{NUM_CLASSES} classes; amp {args.amp}, channels-last {'on' if args.channels_last else 'off'}; "
        f"curriculum {args.curriculum} (cifar10/{args.curriculum} preset); {args.steps} steps x "
        f"{args.repeats} round(s) after {args.warmup} warm-up step(s), loops alternated.",
        "",
        "| model | batch | loop | images/s | vs (a) | peak memory MiB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for s in speeds:
        mem = (f"{s.peak_mib:,.0f} (+{s.added_mib:,.0f})" if cuda and s.added_mib is not None
               else f"{s.peak_mib:,.0f} (process max RSS)")
        lines.append(f"| {s.model} | {s.batch} | {s.kind} | {s.median_ips:,.1f} | {s.median_ratio:.3f} | {mem} |")
    lines += [
        "",
        "| data-parameter update | N | B | median ms |",
        "|---|---:|---:|---:|",
    ]
    for u in updates:
        lines.append(f"| {u.what} | {u.n:,} | {u.batch} | {u.median_ms:.4f} |")
    lines += [
        "",
        "| host syncs per steady-state step | model | loop | count_host_syncs | calls | CUDA sync-debug warnings |",
        "|---|---|---|---:|---|---:|",
    ]
    for s in syncs:
        warn = str(s.cuda) if s.cuda is not None else "n/a (not CUDA)"
        lines.append(f"| host syncs | {s.model} | {s.kind} | {s.counted} | {_calls(s.calls)} | {warn} |")
    where: Counter = Counter()
    for s in syncs:
        where.update({f"{loc} ({s.kind[:3]})": n for loc, n in s.where.items()})
    if where:
        lines += ["", "Synchronizing CUDA operations per step, by calling line (summed over models):", ""]
        lines += [f"- {loc}: {n}" for loc, n in sorted(where.items(), key=lambda kv: (-kv[1], kv[0]))]
    return lines


# --------------------------------------------------------------------------------------------


def _positive(s: str) -> int:
    v = int(float(s))
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def _count(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", nargs="+", default=["wrn28_10", "resnet18"],
                        help="names for dataparams.models.build_model (default: wrn28_10 resnet18)")
    parser.add_argument("--batch", nargs="+", type=_positive, help="batch sizes (CUDA: 128 512; CPU: 4)")
    parser.add_argument("--steps", type=_positive, help="timed steps per loop and round (CUDA 30, CPU 2)")
    parser.add_argument("--warmup", type=_count, help="untimed steps per loop first (CUDA 10, CPU 1)")
    parser.add_argument("--repeats", type=_positive, help="rounds of timed steps (CUDA 3, CPU 1)")
    parser.add_argument("--train-size", type=_positive, help="images in the synthetic set (CUDA 50,000, CPU 1,024)")
    parser.add_argument("--curriculum", choices=("joint", "instance", "class"), default="joint",
                        help="data-parameter levels of (b), (c) and the DataParameters update (default joint)")
    parser.add_argument("--dp-sizes", nargs="+", type=_positive, default=[50_000, 1_280_000, 10_000_000],
                        help="N for the update timing (default 5e4 1.28e6 1e7)")
    parser.add_argument("--dp-batch", type=_positive, default=128, help="B for the update timing (default 128)")
    parser.add_argument("--dp-iters", type=_positive, help="timed updates per N (CUDA 200, CPU 50)")
    parser.add_argument("--amp", choices=("off", "bf16"), help="autocast (CUDA: bf16, CPU: off)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC images and models (default on)")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    parser.add_argument("--check", action="store_true", help="exit 1 if an acceptance bound fails (CUDA only)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          args.device if args.device != "auto" else "cpu")
    for k, v in _DEFAULTS[device.type].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    need = 3 * max(args.batch)
    if args.train_size < need:
        parser.error(f"--train-size {args.train_size} is too small: the engine's counted steps need 3 batches "
                     f"of {max(args.batch)} in one epoch ({need} images)")
    return args, device


def main(argv: list[str] | None = None) -> int:
    args, device = parse_args(argv)
    print(f"gpu_speed: {_device_line(device)}", file=sys.stderr, flush=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.train_size, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, NUM_CLASSES, (args.train_size,), generator=g).to(device)
    speeds: list[Speed] = []
    syncs: list[SyncCount] = []
    for name in args.models:
        more, counted = measure_model(name, args, device, images, labels)
        speeds += more
        syncs += counted
        if device.type == "cuda":
            torch.cuda.empty_cache()
    updates: list[Update] = []
    for n in args.dp_sizes:
        updates += update_times(n, args.dp_batch, args.dp_iters, device, args.curriculum)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit(table(args, device, speeds, updates, syncs), args.out)
    if not args.check:
        return 0
    if device.type != "cuda":
        print(f"--check: the bounds are for CUDA; nothing is checked on {device.type}", file=sys.stderr)
        return 2
    fails = check_bounds(speeds, updates, syncs, args.models, args.batch)
    for f in fails:
        print(f"FAIL: {f}", file=sys.stderr)
    if fails:
        return 1
    print("all bounds hold", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
