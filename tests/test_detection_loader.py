"""The detection trainer's DataLoaders: settings per device, built once per run, epoch-true flips.

* :func:`loader_kwargs`: on CUDA, ``data.workers`` none means min(4, usable CPUs) persistent
  workers with pinned memory; on the CPU, 0 workers and no pinning (no GPU is needed: the
  settings are a function of the device);
* a persistent worker process flips each epoch's images as the main process would for that epoch
  (the epoch travels with the index, :class:`EpochBatchSampler`);
* ``train_detection`` builds its training and validation loaders once and iterates them every
  epoch.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import dataparams.detection.train as train_module
import fakes
from dataparams.config import ConfigError
from dataparams.detection.config import validate_detection_config
from dataparams.detection.kitti import KittiDetection
from dataparams.detection.presets import get_detection_preset
from dataparams.detection.train import (
    AugmentedDetection,
    EpochBatchSampler,
    epoch_batches,
    loader_kwargs,
    train_detection,
)
from dataparams.detection.transforms import collate_detection


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth", num_images=16, seed=7, flip_fraction=0.0)


@pytest.mark.parametrize("cpus, expected", [(16, 4), (4, 4), (2, 2), (1, 1)])
def test_cuda_default_is_min_four_and_usable_cpus_persistent_and_pinned(monkeypatch, cpus, expected):
    monkeypatch.setattr(train_module, "_usable_cpus", lambda: cpus)
    assert loader_kwargs(torch.device("cuda"), None) == {"num_workers": expected, "pin_memory": True,
                                                         "persistent_workers": True}
    assert loader_kwargs("cuda:1") == loader_kwargs(torch.device("cuda"), None)


def test_cpu_default_loads_in_process_and_explicit_counts_win(monkeypatch):
    monkeypatch.setattr(train_module, "_usable_cpus", lambda: 16)
    assert loader_kwargs("cpu", None) == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert loader_kwargs("mps", None)["num_workers"] == 0
    assert loader_kwargs("cuda", 0) == {"num_workers": 0, "pin_memory": True, "persistent_workers": False}
    assert loader_kwargs("cpu", 2) == {"num_workers": 2, "pin_memory": False, "persistent_workers": True}
    with pytest.raises(ValueError, match="workers"):
        loader_kwargs("cpu", -1)
    # The config: none (the default) is auto, a negative count is refused before any data is read.
    cfg = get_detection_preset("kitti-synth/instance", root="somewhere")
    assert cfg.data.workers is None
    validate_detection_config(cfg)
    cfg.data.workers = -1
    with pytest.raises(ConfigError, match="data.workers"):
        validate_detection_config(cfg)


def test_persistent_workers_flip_each_epoch_as_the_main_process_does(data_root):
    base = KittiDetection(data_root, "train")
    augmented = AugmentedDetection(base, hflip=0.5, seed=3)
    sampler = EpochBatchSampler(len(base), 5, seed=3)
    loader = DataLoader(augmented, batch_sampler=sampler, collate_fn=collate_detection, num_workers=1,
                        persistent_workers=True)
    seen: list[dict[int, list]] = []
    iterators = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        boxes: dict[int, list] = {}
        order: list[int] = []
        for images, targets in loader:
            for image, target in zip(images, targets):
                i = base.image_ids.index(target["image_id"])
                order.append(i)
                # The main process's item for this (epoch, image), and set_epoch's, agree.
                expected_image, expected = augmented[(epoch, i)]
                augmented.set_epoch(epoch)
                assert torch.equal(augmented[i][1]["boxes"], expected["boxes"])
                assert torch.equal(image, expected_image)
                assert torch.equal(target["boxes"], expected["boxes"])
                boxes[i] = target["boxes"].tolist()
        assert order == [i for batch in epoch_batches(len(base), 5, seed=3, epoch=epoch) for i in batch]
        seen.append(boxes)
        iterators.append(loader._iterator)
    # One set of workers served all three epochs, and the flips changed between epochs (a worker
    # stuck in epoch 0 would repeat them).
    assert iterators[0] is iterators[1] is iterators[2]
    assert seen[0] != seen[1] or seen[1] != seen[2]
    train_module._close_loader(loader)
    assert loader._iterator is None


def test_the_trainer_builds_its_loaders_once(data_root, tmp_path, monkeypatch):
    built: list[DataLoader] = []
    passes: dict[int, int] = {}

    class CountingLoader(DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

        def __iter__(self):
            passes[id(self)] = passes.get(id(self), 0) + 1
            return super().__iter__()

    monkeypatch.setattr(train_module, "DataLoader", CountingLoader)
    cfg = get_detection_preset("kitti-synth/baseline", root=data_root)
    cfg.model.width, cfg.data.batch_size, cfg.data.eval_batch_size = 8, 6, 6
    cfg.optim.epochs, cfg.eval_every = 3, 1
    train_detection(cfg, tmp_path / "run", device="cpu", quiet=True)
    assert len(built) == 2  # training and validation, for three epochs with three evaluations
    train_loader, val_loader = built
    assert isinstance(train_loader.batch_sampler, EpochBatchSampler)
    assert passes[id(train_loader)] == 3 and passes[id(val_loader)] == 3
    assert train_loader.num_workers == 0 and not train_loader.pin_memory  # CPU: today's behaviour
