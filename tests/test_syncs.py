"""Host syncs: the counter itself, and a steady-state training step that never waits for the device.

On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` is the check (benchmarks/gpu_speed.py); here
the same code path is checked by counting the Python calls into operations that sync a GPU.
"""

import numpy as np
import torch

import fakes
from dataparams import DataParameters
from dataparams.data.memory import Augment, InMemoryLoader
from dataparams.engine import ClassificationStep, train_one_epoch
from dataparams.objectives import DataParameterObjective
from dataparams.syncs import count_host_syncs


def test_counts_each_kind_of_sync_and_restores_torch():
    item, getitem, tensor = torch.Tensor.item, torch.Tensor.__getitem__, torch.tensor
    x = torch.arange(6.0)
    with count_host_syncs() as syncs:
        x.sum().item()
        if x.any():
            pass
        x[x > 2]
        x.tolist()
        torch.nonzero(x)
        x.unique()
        x[1:3]  # a slice has a static size: not counted
        x.to(torch.float64)  # a dtype change on the device: not counted
        torch.sparse_coo_tensor(torch.tensor([[0, 0]]), torch.ones(2), (3,), check_invariants=False).coalesce()
        torch.tensor([1, 2], device=x.device)  # host data to the device: a blocking copy on a GPU
        torch.full((2,), 3, device=x.device)  # filled on the device: not counted
    assert syncs.calls == {"Tensor.item": 1, "Tensor.__bool__": 1, "Tensor[bool mask]": 1, "Tensor.tolist": 1,
                           "torch.nonzero": 1, "torch.unique": 1, "Tensor.coalesce": 1, "torch.tensor(device=)": 1}
    assert syncs.total == 8
    assert torch.Tensor.item is item and torch.Tensor.__getitem__ is getitem and torch.tensor is tensor
    x.sum().item()  # after the block nothing is counted any more
    assert syncs.total == 8


def _objective(n=50, k=4):
    dp = DataParameters(k, n, class_curriculum=True, instance_curriculum=True)
    objective = DataParameterObjective(dp, lr_class=0.1, lr_instance=0.5, wd_class=1e-3, wd_instance=1e-3)
    objective.track_probabilities(k)
    return objective


def test_a_data_parameter_step_never_waits_for_the_device():
    # Gather, scaled loss, sparse backward, SparseSGD (repeated classes summed, range checked,
    # clamped) and the score buffers: all on the device, sizes fixed by the batch.
    torch.manual_seed(0)
    objective = _objective()
    model = torch.nn.Linear(5, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = []
    for _ in range(4):
        x, y = torch.randn(8, 5), torch.randint(0, 4, (8,))
        idx = torch.randperm(50)[:8]
        steps.append(fakes.counted_step(model, opt, objective, x, y, idx))
    # The first step allocates the momentum buffers; from then on nothing may read back.
    assert steps[1:] == [{}, {}, {}], steps
    assert not torch.equal(objective.dp.instance_log_sigma[idx], torch.zeros(8))  # it did update


def test_an_epoch_reads_back_once_however_many_batches():
    # The in-memory loader draws the epoch's order and augmentation up front; the engine keeps its
    # running sums on the device. The one read is the epoch's statistics at its end.
    rng = np.random.default_rng(0)
    counts = {}
    for n in (16, 48):
        images = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
        loader = InMemoryLoader(images, rng.integers(0, 4, n), batch_size=8, shuffle=True, augment=Augment(2),
                                seed=1)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
        objective = _objective(n)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader.set_epoch(0)
        step = ClassificationStep(model, objective, opt, torch.device("cpu"))
        train_one_epoch(step, loader)  # first visit allocates
        loader.set_epoch(1)
        with count_host_syncs() as syncs:
            train_one_epoch(step, loader)
        counts[n] = dict(syncs.calls)
    assert counts[16] == counts[48] == {"Tensor.tolist": 1}, counts


def test_out_of_range_rows_are_still_refused_on_the_cpu():
    # The range checks moved to the device; on the CPU they still raise before anything changes.
    dp = DataParameters(3, 10, class_curriculum=True, instance_curriculum=True)
    before = dp.instance_log_sigma.detach().clone()
    try:
        dp(torch.tensor([0, 1]), torch.tensor([2, 10]))
    except IndexError as e:
        assert "indices holds 10, outside [0, 10)" in str(e)
    else:
        raise AssertionError("no IndexError")
    assert torch.equal(dp.instance_log_sigma.detach(), before)  # (SparseSGD's case: tests/test_optim.py)
