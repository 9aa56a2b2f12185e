"""Box data parameters on RetinaNet's focal loss, checked against torchvision and by hand.

* with sigma = 1 the loss is torchvision's ``RetinaNet.compute_loss`` (and its ``forward``),
  through the same matching hook as SSD's;
* the classification term is the hand-written focal loss of logits / sigma, the ignore
  regions and the matcher's between-thresholds anchors left out;
* sigma grows for a box whose given class the network contradicts and shrinks for one it fits;
* a short training run on the synthetic KITTI set goes through the trainer.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

import fakes
from dataparams import DataParameters
from dataparams.detection.focal_box_parameters import FocalBoxParameterLoss, focal_box_parameter_loss
from dataparams.detection.kitti import KittiDetection
from dataparams.detection.models import build_detector, ssd_training_outputs

CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth_focal", num_images=16, seed=11, flip_fraction=0.0)


def test_sigma_one_equals_torchvision_retinanet_loss(tiny_set):
    dataset = KittiDetection(tiny_set, "train")
    torch.manual_seed(0)
    model = build_detector("tiny_retinanet", 3, image_size=(128, 256), width=16)
    model.train()
    items = [dataset[i] for i in range(4)]
    images, targets = [x for x, _ in items], [t for _, t in items]
    head, anchors, matched, resized = ssd_training_outputs(model, images, targets)
    assert any((m == -2).any() for m in matched)  # between the thresholds: out of both losses
    reference = model.head.compute_loss(resized, head, anchors, matched)
    # RetinaNet.compute_loss matches the anchors itself: the hook's matching is the same.
    own = model.compute_loss(resized, head, anchors)
    assert all(torch.equal(own[k], reference[k]) for k in reference)
    for instance in (False, True):  # off: sigma is the constant 1; on: learned, initialised at 1
        dp = DataParameters(3, dataset.num_boxes, instance_curriculum=instance, init_instance=1.0)
        criterion = FocalBoxParameterLoss(dp, box_coder=model.box_coder,
                                          box_loss_type=model.head.regression_head._loss_type)
        loss, parts = criterion(head, anchors, matched, resized)
        torch.testing.assert_close(parts.classification, reference["classification"], rtol=1e-6, atol=0)
        torch.testing.assert_close(parts.bbox_regression, reference["bbox_regression"], rtol=1e-6, atol=0)
    # And the hook is RetinaNet.forward's training branch: the same losses from the model itself.
    direct = model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    torch.testing.assert_close(direct["classification"], reference["classification"])
    torch.testing.assert_close(direct["bbox_regression"], reference["bbox_regression"])


def _focal(z: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-z))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))


def test_classification_is_the_focal_loss_of_logits_over_sigma_by_hand():
    # One image, four anchors, C = 3 columns (0 background): anchor 0 matched to box 0 (class 2),
    # anchor 1 background, anchor 2 between the thresholds, anchor 3 background inside an ignore
    # region. Box sigma 2, so the negatives' temperature (the batch's mean box sigma) is 2 too.
    logits = torch.tensor([[[0.3, -1.0, 2.0], [1.5, -0.5, 0.2], [4.0, 4.0, 4.0], [-2.0, 3.0, 1.0]]])
    regression = torch.zeros(1, 4, 4)
    anchors = [torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]], dtype=torch.float32)]
    matched = [torch.tensor([0, -1, -2, -1])]
    boxes, labels = [torch.tensor([[1.0, 1.0, 9.0, 9.0]])], [torch.tensor([2])]
    ignored = [torch.tensor([False, False, False, True])]
    parts = focal_box_parameter_loss(logits, regression, anchors, matched, boxes, labels, [torch.tensor([2.0])],
                                     box_coder=CODER, ignored=ignored)
    positive = sum(_focal(z / 2.0, float(c == 2)) for c, z in enumerate([0.3, -1.0, 2.0]))
    negative = sum(_focal(z / 2.0, 0.0) for z in [1.5, -0.5, 0.2])
    assert parts.classification.item() == pytest.approx(positive + negative, rel=1e-6)  # / one positive
    assert parts.valid.tolist() == [[True, True, False, False]]
    # The box's own score: its anchor's loss at sigma = 1 (unscaled).
    assert parts.box_loss.item() == pytest.approx(sum(_focal(z, float(c == 2)) for c, z in enumerate([0.3, -1.0, 2.0])),
                                                  rel=1e-6)


@pytest.mark.parametrize("given, grows", [(2, False), (1, True)])
def test_sigma_shrinks_for_a_fitted_box_and_grows_for_a_contradicted_one(given, grows):
    # The network is confident the anchor shows class 2: a box labelled 2 is fitted (its sigma's
    # gradient step lowers it), a box labelled 1 is contradicted (raises it).
    logits = torch.tensor([[[-4.0, -4.0, 4.0], [-4.0, -4.0, -4.0]]])
    anchors = [torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10]], dtype=torch.float32)]
    log_sigma = torch.zeros(1, requires_grad=True)
    parts = focal_box_parameter_loss(logits, torch.zeros(1, 2, 4), anchors, [torch.tensor([0, -1])],
                                     [torch.tensor([[1.0, 1.0, 9.0, 9.0]])], [torch.tensor([given])],
                                     [log_sigma.exp()], box_coder=CODER)
    parts.classification.backward()
    # Gradient descent moves log sigma against the gradient: up for a contradicted box.
    assert log_sigma.grad.item() < 0 if grows else log_sigma.grad.item() > 0


@pytest.mark.slow
def test_a_tiny_retinanet_trains_with_box_data_parameters(tiny_set, tmp_path):
    from dataparams.detection.presets import get_detection_preset
    from dataparams.detection.train import train_detection
    from dataparams.runs import RunDir

    torch.set_num_threads(1)
    cfg = get_detection_preset("kitti-synth/instance", root=tiny_set)
    cfg.model.arch, cfg.model.width = "tiny_retinanet", 16
    cfg.optim.epochs, cfg.eval_every = 2, 2
    summary = train_detection(cfg, tmp_path / "run", quiet=True, device="cpu")
    run = RunDir(tmp_path / "run")
    snap = run.load_snapshot(2)
    dataset = KittiDetection(tiny_set, "train")
    assert snap["box_sigma"].shape == (dataset.num_boxes,)
    assert (snap["box_sigma"] != 1.0).any()  # the per-box temperatures moved
    assert math.isfinite(summary["map40_moderate"])


def test_a_width_the_retinanet_head_cannot_take_is_refused_before_a_run_starts():
    from dataparams.config import ConfigError
    from dataparams.detection.config import validate_detection_config
    from dataparams.detection.presets import get_detection_preset

    cfg = get_detection_preset("kitti-synth/instance", root="unused")
    cfg.model.arch, cfg.model.width = "tiny_retinanet", 12
    with pytest.raises(ConfigError, match="multiple of 8"):
        validate_detection_config(cfg)
    cfg.model.arch = "tiny_ssd"  # SSD's head has no GroupNorm
    validate_detection_config(cfg)


def test_background_column_detections_are_dropped_from_the_predictions(tiny_set):
    # RetinaNet's post-processing scores every column, the background one included; an untrained
    # network returns some of those, which must not become objects of the last class.
    from dataparams.detection.train import predict_detections

    dataset = KittiDetection(tiny_set, "train")
    torch.manual_seed(0)
    model = build_detector("tiny_retinanet", 3, image_size=(128, 256), width=16, score_thresh=0.0)
    model.eval()
    with torch.no_grad():
        raw = model([dataset[i][0] for i in range(2)])
        got = predict_detections(model, dataset, batch_size=2, device=torch.device("cpu"))
    first = [dataset.image_ids[i] for i in range(2)]
    background = [int((r["labels"] == 0).sum()) for r in raw]
    assert sum(background) > 0
    assert [len(got[i]) for i in first] == [len(r["labels"]) - b for r, b in zip(raw, background)]
