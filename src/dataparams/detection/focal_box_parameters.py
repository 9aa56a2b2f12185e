"""Per-box data parameters on RetinaNet's sigmoid class logits (a one-stage detector with focal loss).

The paper's detection experiment trains SSD (:mod:`dataparams.detection.box_parameters`); the
same idea carries to torchvision's ``RetinaNet`` because its training forward has the same
shape: the same matching hook (:func:`~dataparams.detection.models.ssd_training_outputs` runs a
``RetinaNet`` unchanged: ``transform``, ``backbone``, ``head``, ``anchor_generator``,
``box_iou`` + ``proposal_matcher``), one row of class logits per anchor, and every positive
anchor matched to exactly one annotation. What differs is the classification loss, and so what
the temperature divides:

* RetinaNet scores each class with its own sigmoid and trains them with the focal loss
  (Lin et al., ICCV 2017) over *every* anchor, not a softmax over classes on the positives and
  the mined hardest negatives. A positive anchor's ``C`` logits are divided by the sigma of its
  box before the sigmoids (eq. 1 of the paper applied to each binary classifier); a negative
  anchor's by the mean sigma of the batch's boxes (no gradient through that mean by default), as
  for SSD, so that positives and negatives "learn at the same pace".
* As for the softmax, a large sigma flattens the logits (every sigmoid towards 1/2) and scales
  the network's gradient by ``1 / sigma``, so a box whose given class the network contradicts
  stops pulling it; the gradient on ``log sigma`` is ``-(z / sigma) . dL/dz`` summed over the
  anchor's classes: positive (sigma grows) when the scaled logits point the wrong way for their
  targets, negative when they point the right way.
* Anchors the matcher leaves between its two IoU thresholds (``-2``) are out of the loss, as in
  torchvision; unmatched anchors inside an ignore region (:func:`~dataparams.detection.box_parameters.ignored_anchors`)
  are left out the same way, there being no hard-negative mining to keep them from.

The loss is torchvision's ``RetinaNetHead.compute_loss`` in every other respect (focal loss
alpha 0.25, gamma 2, summed over classes and anchors and divided per image by that image's
positive anchors, then averaged over the images; the head's own box loss, L1 on the encoded
offsets by default, likewise): with every sigma equal to 1 and no ignore region it is
torchvision's value for value (``tests/test_detection_focal.py``), which is how the baseline
runs the same code. The box regression is not scaled.

Notation as in :mod:`~dataparams.detection.box_parameters`: ``B`` images, ``A`` anchors per
image, ``C`` class logits per anchor (torchvision's convention: ``K + 1``, column 0 never a
target), ``M`` target boxes in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder, _box_loss
from torchvision.ops import sigmoid_focal_loss

from dataparams.detection.box_parameters import (
    BoxParameterLoss,
    anchor_temperatures,
    check_batch,
    mean_loss_per_box,
)
from dataparams.losses import scale_logits
from dataparams.parameters import DataParameters

__all__ = ["FocalBoxLoss", "FocalBoxParameterLoss", "focal_box_parameter_loss"]

#: torchvision's ``Matcher.BETWEEN_THRESHOLDS``: an anchor neither positive nor negative.
BETWEEN_THRESHOLDS = -2


@dataclass
class FocalBoxLoss:
    """What :func:`focal_box_parameter_loss` returns (the fields the trainer reads are those of
    :class:`~dataparams.detection.box_parameters.SSDBoxLoss`).

    Attributes
    ----------
    bbox_regression, classification : Tensor, scalar
        torchvision's two loss terms.
    anchor_sigma : Tensor (B, A)
        The temperature that divided each anchor's logits.
    negative_sigma : Tensor, scalar
        The temperature of the negative anchors (the mean sigma of the batch's boxes).
    foreground, valid : BoolTensor (B, A)
        Positive anchors, and the anchors in the classification loss (positives and negatives).
    ignored : BoolTensor (B, A)
        Unmatched anchors inside an ignore region (out of the loss).
    box_loss : Tensor (M,)
        Per target box, the mean *unscaled* focal loss (summed over classes) of its positive
        anchors (detached); NaN for a box that kept no anchor.
    """

    bbox_regression: Tensor
    classification: Tensor
    anchor_sigma: Tensor
    negative_sigma: Tensor
    foreground: Tensor
    valid: Tensor
    ignored: Tensor
    box_loss: Tensor

    @property
    def total(self) -> Tensor:
        """``bbox_regression + classification``."""
        return self.bbox_regression + self.classification


def focal_box_parameter_loss(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Sequence[Tensor],
    matched_idxs: Sequence[Tensor],
    target_boxes: Sequence[Tensor],
    target_labels: Sequence[Tensor],
    box_sigma: Sequence[Tensor],
    *,
    box_coder: BoxCoder,
    box_loss_type: str = "l1",
    alpha: float = 0.25,
    gamma: float = 2.0,
    negative_sigma_grad: bool = False,
    ignored: Sequence[Tensor] | None = None,
) -> FocalBoxLoss:
    """torchvision's RetinaNet loss with each anchor's logits divided by its box's sigma.

    Parameters
    ----------
    cls_logits : Tensor (B, A, C)
    bbox_regression : Tensor (B, A, 4)
        The head's outputs.
    anchors : sequence of B Tensors (A, 4)
        xyxy in the network input's pixels.
    matched_idxs : sequence of B LongTensors (A,)
        The matcher's output: box index within the image, ``-1`` background, ``-2`` between
        the thresholds (out of the loss).
    target_boxes : sequence of B Tensors (M_b, 4)
    target_labels : sequence of B LongTensors (M_b,)
        Columns of ``cls_logits`` (1..K).
    box_sigma : sequence of B Tensors (M_b,)
        Temperature of each target box (ones for the baseline).
    box_coder : torchvision ``BoxCoder``
        ``model.box_coder`` (weights 1, 1, 1, 1 in torchvision's RetinaNet).
    box_loss_type : str
        ``model.head.regression_head._loss_type`` (``l1`` in torchvision's RetinaNet).
    alpha, gamma : float
        The focal loss's (torchvision's defaults, which its RetinaNet uses).
    negative_sigma_grad : bool
        Let the gradient flow through the negatives' mean sigma (default: no).
    ignored : sequence of B BoolTensors (A,), optional
        Unmatched anchors to leave out of the loss (:func:`~dataparams.detection.box_parameters.ignored_anchors`).

    Returns
    -------
    FocalBoxLoss
    """
    num_images = cls_logits.shape[0]
    check_batch(num_images, anchors, matched_idxs, target_boxes, target_labels, box_sigma)
    matched = torch.stack(list(matched_idxs))  # (B, A)
    foreground = matched >= 0
    if ignored is None:
        ignore = torch.zeros_like(foreground)
    else:
        if len(ignored) != num_images:
            raise ValueError(f"got {len(ignored)} ignore masks for {num_images} images")
        ignore = torch.stack([m.to(device=foreground.device, dtype=torch.bool) for m in ignored]) & ~foreground
    valid = (matched != BETWEEN_THRESHOLDS) & ~ignore

    # One-hot targets of the positive anchors, as torchvision builds them per image.
    targets = torch.zeros_like(cls_logits)
    regression = []
    for b, (boxes, labels, anchors_b, matched_b) in enumerate(zip(target_boxes, target_labels, anchors, matched_idxs)):
        fg = torch.where(matched_b >= 0)[0]
        targets[b, fg, labels[matched_b[fg]]] = 1.0
        regression.append(_box_loss(box_loss_type, box_coder, anchors_b[fg], boxes[matched_b[fg]],
                                    bbox_regression[b, fg]))
    per_image_fg = foreground.sum(1).clamp(min=1).to(cls_logits.dtype)  # (B,): max(1, positives) per image

    anchor_sigma, negative_sigma, anchor_box = anchor_temperatures(
        matched_idxs, box_sigma, negative_sigma_grad=negative_sigma_grad
    )
    scaled = scale_logits(cls_logits, anchor_sigma)
    focal = sigmoid_focal_loss(scaled, targets, alpha=alpha, gamma=gamma, reduction="none").sum(-1)  # (B, A)
    classification = ((focal * valid).sum(1) / per_image_fg).sum() / num_images
    bbox = (torch.stack(regression) / per_image_fg).sum() / num_images

    with torch.no_grad():  # per box: the mean unscaled focal loss of its positive anchors
        plain = sigmoid_focal_loss(cls_logits.detach(), targets, alpha=alpha, gamma=gamma, reduction="none").sum(-1)
        box_loss = mean_loss_per_box(plain, foreground, anchor_box, sum(int(s.numel()) for s in box_sigma))
    return FocalBoxLoss(bbox_regression=bbox, classification=classification, anchor_sigma=anchor_sigma,
                        negative_sigma=negative_sigma, foreground=foreground, valid=valid, ignored=ignore,
                        box_loss=box_loss)


class FocalBoxParameterLoss(BoxParameterLoss):
    """:func:`focal_box_parameter_loss` with the boxes' sigma from :class:`DataParameters`; the
    same interface as :class:`~dataparams.detection.box_parameters.SSDBoxParameterLoss`, so the
    trainer takes either.

    Parameters
    ----------
    data_parameters, negative_sigma_grad, wd_instance, ignore_overlap
        As for :class:`~dataparams.detection.box_parameters.BoxParameterLoss` (an ignored anchor
        is left out of the loss here, there being no negatives to mine).
    box_coder : torchvision ``BoxCoder``
        ``model.box_coder``.
    box_loss_type : str
        ``model.head.regression_head._loss_type``.
    """

    def __init__(
        self,
        data_parameters: DataParameters,
        *,
        box_coder: BoxCoder,
        box_loss_type: str = "l1",
        negative_sigma_grad: bool = False,
        wd_instance: float = 0.0,
        ignore_overlap: float | None = None,
    ) -> None:
        super().__init__(data_parameters, negative_sigma_grad=negative_sigma_grad, wd_instance=wd_instance,
                         ignore_overlap=ignore_overlap)
        self.box_coder = box_coder
        self.box_loss_type = box_loss_type

    def forward(
        self,
        head_outputs: dict[str, Tensor],
        anchors: Sequence[Tensor],
        matched_idxs: Sequence[Tensor],
        targets: Sequence[dict[str, Any]],
    ) -> tuple[Tensor, FocalBoxLoss]:
        """Loss of a batch, from :func:`~dataparams.detection.models.ssd_training_outputs` of a
        ``RetinaNet``: ``(regression + classification + penalty, parts)``."""
        boxes, labels, sigma, penalty, ignored = self.batch_terms(anchors, matched_idxs, targets,
                                                                  head_outputs["cls_logits"].device)
        parts = focal_box_parameter_loss(
            head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors, matched_idxs, boxes, labels, sigma,
            box_coder=self.box_coder, box_loss_type=self.box_loss_type,
            negative_sigma_grad=self.negative_sigma_grad, ignored=ignored,
        )
        return parts.total + penalty, parts
