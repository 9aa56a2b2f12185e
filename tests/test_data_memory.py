"""The in-memory loader: indices, determinism per (seed, epoch), augmentation by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataparams.data.memory import Augment, InMemoryLoader, random_crop, random_flip


def _images(n=37, h=6, w=5, c=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), rng.integers(0, 4, n)


def test_every_sample_once_per_epoch_with_its_own_label():
    imgs, y = _images()
    loader = InMemoryLoader(imgs, y, batch_size=8, shuffle=True, mean=(0, 0), std=(1, 1), seed=3)
    assert len(loader) == 5
    seen = []
    for x, t, idx in loader:
        assert x.shape[1:] == (2, 6, 5) and x.dtype == torch.float32
        assert torch.equal(t, torch.as_tensor(y)[idx])
        # pixels are the sample's own, scaled to [0, 1] (no augmentation here)
        expected = torch.as_tensor(imgs)[idx].permute(0, 3, 1, 2).float() / 255
        torch.testing.assert_close(x, expected)
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(37))


def test_order_depends_only_on_seed_and_epoch():
    imgs, y = _images()
    a = InMemoryLoader(imgs, y, batch_size=8, shuffle=True, augment=Augment(2, True), mean=(0, 0), std=(1, 1), seed=1)
    b = InMemoryLoader(imgs, y, batch_size=8, shuffle=True, augment=Augment(2, True), mean=(0, 0), std=(1, 1), seed=1)
    a.set_epoch(4)
    first = [(x.clone(), i.clone()) for x, _, i in a]
    # b iterates other epochs first: epoch 4 must still be identical
    for e in (0, 1, 2):
        b.set_epoch(e)
        list(b)
    b.set_epoch(4)
    for (xa, ia), (xb, _, ib) in zip(first, b):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    a.set_epoch(5)
    assert not torch.equal(next(iter(a))[2], first[0][1])


def test_random_crop_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    g_copy = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    dy = torch.randint(0, 5, (2,), generator=g_copy)
    dx = torch.randint(0, 5, (2,), generator=g_copy)
    padded = F.pad(x, (2, 2, 2, 2))
    for b in range(2):
        torch.testing.assert_close(out[b], padded[b, :, dy[b] : dy[b] + 4, dx[b] : dx[b] + 5])


def test_random_flip_by_hand():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 3, 4)
    out = random_flip(x, g)
    flip = torch.rand(16, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(flip.sum()) < 16
    for b in range(16):
        torch.testing.assert_close(out[b], x[b].flip(2) if flip[b] else x[b])


def test_normalisation_and_custom_index():
    imgs = np.full((4, 2, 2, 1), 255, dtype=np.uint8)
    loader = InMemoryLoader(imgs, [0, 1, 2, 3], batch_size=4, mean=(0.5,), std=(0.25,), index=[10, 11, 12, 13])
    x, _, idx = next(iter(loader))
    torch.testing.assert_close(x, torch.full((4, 1, 2, 2), 2.0))
    assert idx.tolist() == [10, 11, 12, 13]


def test_bad_inputs():
    imgs, y = _images()
    with pytest.raises(ValueError, match="uint8"):
        InMemoryLoader(imgs.astype(np.float32), y, batch_size=4, mean=(0, 0), std=(1, 1))
    with pytest.raises(ValueError, match="targets"):
        InMemoryLoader(imgs, y[:-1], batch_size=4, mean=(0, 0), std=(1, 1))
    with pytest.raises(ValueError, match="mean/std"):
        InMemoryLoader(imgs, y, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryLoader(imgs, y, batch_size=0, mean=(0, 0), std=(1, 1))


def _batches_augmented_one_by_one(loader):
    """The loader's batches as the per-batch path makes them: the epoch's generator draws the
    order, then each batch's crop offsets and flips as random_crop / random_flip draw them."""
    g = loader._generator()
    n = len(loader.images)
    order = torch.randperm(n, generator=g) if loader.shuffle else torch.arange(n)
    out = []
    for b in range(len(loader)):
        pos = order[b * loader.batch_size : (b + 1) * loader.batch_size]
        x = loader.images.index_select(0, pos).float().div_(255.0)
        if loader.augment is not None:
            x = random_crop(x, loader.augment.crop_padding, g)
            if loader.augment.flip:
                x = random_flip(x, g)
        out.append(((x - loader.mean) / loader.std, loader.targets[pos], loader.index[pos]))
    return out


@pytest.mark.parametrize("augment", [Augment(), Augment(crop_padding=2, flip=False), Augment(crop_padding=0),
                                     None])
@pytest.mark.parametrize("drop_last", [False, True])
def test_device_plan_gives_the_batches_of_the_per_batch_path(augment, drop_last):
    # The epoch's randomness is drawn up front and copied to the device once; the batches must
    # be exactly those of drawing it batch by batch (same seed, same epoch), ragged last batch too.
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(37, 8, 8, 3), dtype=np.uint8)
    loader = InMemoryLoader(images, rng.integers(0, 10, 37), batch_size=8, shuffle=True, augment=augment,
                            mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), seed=11, drop_last=drop_last)
    for epoch in (0, 5):
        loader.set_epoch(epoch)
        got = list(loader)
        want = _batches_augmented_one_by_one(loader)
        assert len(got) == len(want) == (4 if drop_last else 5)
        for (x, y, i), (wx, wy, wi) in zip(got, want):
            assert torch.equal(x, wx) and torch.equal(y, wy) and torch.equal(i, wi)
