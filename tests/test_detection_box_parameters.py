"""Box data parameters in the SSD loss (sec. 3.3), checked by hand and against torchvision.

* negatives take the mean sigma of the batch's boxes, positives their own box's (by hand);
* the classification term is the hand-written cross-entropy of logits / sigma with torchvision's
  hard-negative mining;
* the gradient reaches exactly the batch's boxes, and a SparseSGD step leaves every other box's
  sigma and momentum as they were;
* a box keeps its ``box_index`` through the augmentations and the epoch's batches;
* with sigma = 1 the loss is torchvision's ``SSD.compute_loss`` (and ``SSD.forward``) exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

import fakes
from dataparams import DataParameters, SparseSGD
from dataparams.detection.box_parameters import (
    SSDBoxParameterLoss,
    anchor_temperatures,
    ssd_box_parameter_loss,
)
from dataparams.detection.curriculum import rank_correlation
from dataparams.detection.kitti import KittiDetection
from dataparams.detection.models import AspectBoxGenerator, build_detector, ssd_training_outputs
from dataparams.detection.train import AugmentedDetection, epoch_batches
from dataparams.detection.transforms import Compose, RandomHorizontalFlip, RandomScale

CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def _hand_batch():
    """Two images, six anchors each, three classes (0 background); boxes 0,1 in image 0, box 0 in image 1."""
    g = torch.Generator().manual_seed(0)
    anchors = [torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20],
                             [5, 5, 15, 15], [20, 20, 30, 30]], dtype=torch.float32)] * 2
    boxes = [torch.tensor([[1.0, 1.0, 9.0, 11.0], [11.0, 10.0, 19.0, 21.0]]), torch.tensor([[9.0, 0.0, 21.0, 9.0]])]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    matched = [torch.tensor([0, -1, -1, 1, -1, -2]), torch.tensor([-1, 0, -1, -2, -1, -1])]
    logits = torch.randn(2, 6, 3, generator=g)
    regression = torch.randn(2, 6, 4, generator=g)
    return logits, regression, anchors, matched, boxes, labels


def test_negative_anchors_use_the_mean_sigma_of_the_batch_boxes():
    logits, regression, anchors, matched, boxes, labels = _hand_batch()
    box_sigma = [torch.tensor([0.5, 2.0]), torch.tensor([1.5])]
    anchor_sigma, negative, anchor_box = anchor_temperatures(matched, box_sigma)
    mean = (0.5 + 2.0 + 1.5) / 3  # every box of the batch, each once
    assert negative.item() == pytest.approx(mean)
    expected = torch.full((2, 6), mean)
    expected[0, 0], expected[0, 3], expected[1, 1] = 0.5, 2.0, 1.5
    torch.testing.assert_close(anchor_sigma, expected)
    assert anchor_box.tolist() == [[0, -1, -1, 1, -1, -1], [-1, 2, -1, -1, -1, -1]]

    # The classification term by hand: positives / their box's sigma, negatives / the mean,
    # 1 hard negative per positive chosen on the unscaled cross-entropy.
    parts = ssd_box_parameter_loss(logits, regression, anchors, matched, boxes, labels, box_sigma,
                                   box_coder=CODER, neg_to_pos_ratio=1.0)
    targets = torch.tensor([[1, 0, 0, 2, 0, 0], [0, 2, 0, 0, 0, 0]])
    total = 0.0
    for b in range(2):
        plain = [F.cross_entropy(logits[b, a], targets[b, a]).item() for a in range(6)]
        positives = [a for a in range(6) if targets[b, a] > 0]
        negatives = sorted((a for a in range(6) if targets[b, a] == 0), key=lambda a: -plain[a])[: len(positives)]
        assert set(torch.nonzero(parts.hard_negative[b]).flatten().tolist()) == set(negatives)
        for a in positives + negatives:
            total += F.cross_entropy(logits[b, a] / expected[b, a], targets[b, a]).item()
    assert parts.classification.item() == pytest.approx(total / 3, rel=1e-6)
    # Regression is not scaled: smooth-L1 of the encoded matched boxes over the 3 positives.
    reg = 0.0
    for b, pos in ((0, [(0, 0), (3, 1)]), (1, [(1, 0)])):
        for a, j in pos:
            target = CODER.encode_single(boxes[b][j : j + 1], anchors[b][a : a + 1])
            reg += F.smooth_l1_loss(regression[b, a : a + 1], target, reduction="sum").item()
    assert parts.bbox_regression.item() == pytest.approx(reg / 3, rel=1e-6)
    # Per-box small-loss score: mean unscaled CE of each box's anchors.
    assert parts.box_loss.tolist() == pytest.approx([F.cross_entropy(logits[0, 0], torch.tensor(1)).item(),
                                                     F.cross_entropy(logits[0, 3], torch.tensor(2)).item(),
                                                     F.cross_entropy(logits[1, 1], torch.tensor(2)).item()])


def test_a_batch_without_boxes_uses_sigma_one():
    logits, regression, anchors, _, _, _ = _hand_batch()
    none = [torch.full((6,), -1)] * 2
    empty = [torch.zeros(0, 4)] * 2
    sigma, negative, _ = anchor_temperatures(none, [torch.zeros(0)] * 2)
    assert negative.item() == 1.0 and torch.equal(sigma, torch.ones(2, 6))
    parts = ssd_box_parameter_loss(logits, regression, anchors, none, empty, [torch.zeros(0, dtype=torch.long)] * 2,
                                   [torch.zeros(0)] * 2, box_coder=CODER)
    assert parts.classification.item() == 0.0 and parts.bbox_regression.item() == 0.0


@pytest.mark.parametrize("negative_sigma_grad", [False, True])
def test_gradient_reaches_exactly_the_boxes_of_the_batch(negative_sigma_grad):
    logits, regression, anchors, matched, boxes, labels = _hand_batch()
    # Box 0 of image 1 keeps no anchor here: present in the batch all the same.
    matched = [matched[0], torch.full((6,), -1)]
    n = 50
    dp = DataParameters(3, n, instance_curriculum=True)
    with torch.no_grad():
        dp.instance_log_sigma.copy_(torch.linspace(-0.5, 0.5, n))
    criterion = SSDBoxParameterLoss(dp, box_coder=CODER, neg_to_pos_ratio=1.0, negative_sigma_grad=negative_sigma_grad)
    opt = SparseSGD(dp.param_groups(lr_instance=0.1, momentum=0.9))

    def step(index_0, index_1, scale=1.0):
        targets = [{"boxes": boxes[0], "labels": labels[0], "box_index": torch.tensor(index_0)},
                   {"boxes": boxes[1], "labels": labels[1], "box_index": torch.tensor(index_1)}]
        head = {"cls_logits": logits * scale, "bbox_regression": regression}
        opt.zero_grad()
        loss, _ = criterion(head, anchors, matched, targets)
        loss.backward()
        grad = dp.instance_log_sigma.grad
        assert grad.is_sparse
        rows = grad.coalesce().indices()[0].tolist()
        assert rows == sorted(index_0 + index_1)
        values = dict(zip(rows, grad.coalesce().values().tolist()))
        # The box without an anchor: gradient only through the negatives' mean, if that is on.
        assert (values[index_1[0]] != 0.0) == negative_sigma_grad
        opt.step()

    step([3, 17], [42])
    after_first = dp.instance_log_sigma.detach().clone()
    momentum = opt.state[dp.instance_log_sigma]["momentum_buffer"].clone()
    step([8, 17], [30], scale=2.0)
    changed = (dp.instance_log_sigma.detach() != after_first).nonzero().flatten().tolist()
    moved_momentum = (opt.state[dp.instance_log_sigma]["momentum_buffer"] != momentum).nonzero().flatten().tolist()
    assert set(changed) <= {8, 17, 30} and {8, 17} <= set(changed)
    assert set(moved_momentum) <= {8, 17, 30}
    # Boxes 3 and 42 were not in the second batch: value and momentum exactly as they were.
    for row in (3, 42):
        assert dp.instance_log_sigma[row].item() == after_first[row].item()
        assert opt.state[dp.instance_log_sigma]["momentum_buffer"][row].item() == momentum[row].item()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth", num_images=16, seed=11, flip_fraction=0.0)


def test_box_index_is_stable_under_the_augmentations(tiny_set):
    plain = KittiDetection(tiny_set, "train")
    g = torch.Generator().manual_seed(0)
    heavy = plain.with_transforms(Compose([RandomHorizontalFlip(1.0, generator=g), RandomScale(0.6, 1.4, generator=g)]))
    for i in range(len(plain)):
        ref = plain.get_target(i)
        image, target = heavy[i]
        assert torch.equal(target["box_index"], ref["box_index"])
        assert torch.equal(target["labels"], ref["labels"])
        # The box moved with the image: flipped, then scaled by the image's own factor.
        sx = image.shape[-1] / plain.load_image(i).shape[-1]
        w = plain.load_image(i).shape[-1]
        flipped_x1 = (w - ref["boxes"][:, 2]) * sx
        torch.testing.assert_close(target["boxes"][:, 0], flipped_x1, rtol=1e-5, atol=1e-3)

    # During training: each epoch's batches hold every box once, under its own index, flip or not.
    augmented = AugmentedDetection(plain, hflip=0.5, seed=3)
    seen_flips = set()
    for epoch in range(3):
        augmented.set_epoch(epoch)
        indices = []
        for batch in epoch_batches(len(plain), 5, seed=3, epoch=epoch):
            for i in batch:
                image, target = augmented[i]
                ref = plain.get_target(i)
                assert torch.equal(target["box_index"], ref["box_index"])
                flipped = bool(len(ref["boxes"])) and not torch.equal(target["boxes"], ref["boxes"])
                seen_flips.add(flipped)
                indices += target["box_index"].tolist()
        assert sorted(indices) == list(range(plain.num_boxes))
    assert seen_flips == {True, False}
    # The same (seed, epoch) gives the same batches and flips: what resume relies on.
    assert epoch_batches(len(plain), 5, seed=3, epoch=1) == epoch_batches(len(plain), 5, seed=3, epoch=1)
    augmented.set_epoch(1)
    a = augmented[2][0]
    augmented.set_epoch(1)
    assert torch.equal(a, augmented[2][0])


@pytest.mark.parametrize("arch, size, n", [("tiny_ssd", (128, 256), 6), ("ssd300_vgg16", (300, 300), 2)])
def test_sigma_one_equals_torchvision_ssd_loss(tiny_set, arch, size, n):
    dataset = KittiDetection(tiny_set, "train")
    torch.manual_seed(0)
    model = build_detector(arch, 3, image_size=size, width=16)
    model.train()
    items = [dataset[i] for i in range(n)]
    images, targets = [x for x, _ in items], [t for _, t in items]
    head, anchors, matched, resized = ssd_training_outputs(model, images, targets)
    reference = model.compute_loss(resized, head, anchors, matched)
    for instance in (False, True):  # off: sigma is the constant 1; on: learned, initialised at 1
        dp = DataParameters(3, dataset.num_boxes, instance_curriculum=instance, init_instance=1.0)
        criterion = SSDBoxParameterLoss(dp, box_coder=model.box_coder, neg_to_pos_ratio=model.neg_to_pos_ratio)
        loss, parts = criterion(head, anchors, matched, resized)
        assert torch.equal(parts.classification, reference["classification"])
        assert torch.equal(parts.bbox_regression, reference["bbox_regression"])
        assert torch.equal(loss, reference["classification"] + reference["bbox_regression"])
    if arch == "tiny_ssd":
        # And our partial forward is SSD.forward's training branch: the same losses from the model.
        direct = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        torch.testing.assert_close(direct["classification"], reference["classification"])
        torch.testing.assert_close(direct["bbox_regression"], reference["bbox_regression"])


def test_aspect_box_generator():
    square = AspectBoxGenerator([[2], [2, 3]], scales=[0.2, 0.5, 0.9], image_size=(300, 300))
    parent = DefaultBoxGenerator([[2], [2, 3]], scales=[0.2, 0.5, 0.9])
    for a, b in zip(square._wh_pairs, parent._wh_pairs):
        assert torch.equal(a, b)
    wide = AspectBoxGenerator([[2]], scales=[0.25, 0.5], image_size=(100, 400))
    w, h = wide._wh_pairs[0][0]  # the aspect-1 box at scale 0.25, normalised per axis
    assert (w * 400).item() == pytest.approx(25.0) and (h * 100).item() == pytest.approx(25.0)
    w, h = wide._wh_pairs[0][2]  # aspect 2: twice as wide as tall in pixels
    assert (w * 400 / (h * 100)).item() == pytest.approx(2.0)


def test_rank_correlation_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = rng.integers(0, 3, size=200)  # ties, as occlusion levels have
    assert rank_correlation(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert math.isnan(rank_correlation(np.ones(5), np.arange(5)))
