"""One data parameter per box annotation: the SSD loss of the paper's detection experiment.

Saxena, Tuzel & DeCoste, NeurIPS 2019, sec. 3.3: "we associate a learnable parameter to each
bounding box annotation. Anchors assigned to a bounding box annotation use the value of
parameter associated to that instance to rescale their logits before predicting the target
class label. [...] Anchors assigned to background do not have a bounding box associated to
them. [...] for each mini-batch, we compute the mean value of instance parameter over target
bounding box instances, and use that for negative anchors. This ensures that positive and
negative anchors learn at the same pace." Instance level only, learning rate 0.1, no momentum,
no weight decay.

The loss is torchvision's ``SSD.compute_loss`` (smooth-L1 box regression on the positive
anchors, cross-entropy on the positives and on the hardest negatives at 3 negatives per
positive, both divided by the number of positives) with one change: the classification logits
of every anchor are divided by a temperature before the softmax (eq. 1),

* a positive anchor (matched to ground-truth box ``j``) by ``sigma_j``, the data parameter of
  box ``j``, looked up by the box's global ``box_index`` through
  :class:`~dataparams.parameters.DataParameters` (whose :func:`~dataparams.parameters.gather_rows`
  gives the sparse gradient over exactly the batch's boxes);
* a negative anchor by the mean ``sigma`` of the batch's target boxes (every box of every image
  of the batch, each once); 1 when the batch holds no box.

The box regression is not scaled. With every sigma equal to 1 the loss is torchvision's, value
for value (``tests/test_detection_box_parameters.py``), which is how the baseline runs the same
code.

Choices the paper leaves open, and why:

* **No gradient through the negatives' mean** (``negative_sigma_grad=False``, the default). The
  negatives are a follower: their temperature tracks the positives' so that the two "learn at
  the same pace", but it is not itself learned. Letting it carry gradient would add to every box
  of the batch the same push from the background anchors, which hard-negative mining chooses for
  being misclassified (so the push is upward, and three times as many anchors as the positives):
  a common-mode term set by the image's background, not by the box. A box's temperature would
  then rank its batch's background as much as its own fit, which is not the per-instance
  curriculum of sec. 2.2. The option exists to test the other reading; the gradient rows are
  the batch's boxes either way.
* **Hard negatives are mined on the unscaled loss.** Which background anchors are the hardest
  is a property of the detector, not of the curriculum; mining on the unscaled cross-entropy
  keeps the baseline's and the curriculum's selection rule identical (with sigma = 1 the two are
  the same anyway).

Ignore regions (KITTI's DontCare regions and the devkit's neighbour types, COCO's crowd boxes;
``target["ignore"]``, see :mod:`dataparams.detection.kitti`): an anchor that no box matched and
that has more than the fraction ``ignore_overlap`` of its area inside one ignore region
(intersection over the *anchor's* area, :func:`ignored_anchors`) is neither positive nor
negative: it is left out of the pool that hard-negative mining draws from, and so out of the
loss. Hard-negative mining picks the
background anchors the detector finds most object-like, which on a DontCare region are the
unlabelled cars themselves; training them as background teaches the detector to suppress what
the evaluation does not count against it. Intersection over the anchor rather than IoU, because
DontCare regions are often much larger than an anchor (a row of parked cars, a crowd): an anchor
wholly inside one has a small IoU with it but looks at nothing but unlabelled objects. It is
also the devkit's own test (:mod:`~dataparams.detection.kitti_eval`: an unmatched detection is
no false positive when its intersection with a DontCare box over *its own* area exceeds the
class's IoU threshold), and mmdetection's ``ignore_iof_thr`` (0.5) of its ``MaxIoUAssigner``;
one threshold for all classes, since an anchor has none. The paper says nothing about DontCare.
A matched anchor stays positive whatever it overlaps. With ``ignore_overlap=None`` (or no ignore
regions) the loss is torchvision's.

Notation: ``B`` images, ``A`` anchors per image, ``C = K + 1`` classes (0 background), ``M_b``
target boxes of image ``b``, ``M = sum_b M_b`` boxes in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from dataparams.losses import scale_logits
from dataparams.parameters import DataParameters

__all__ = [
    "SSDBoxLoss",
    "SSDBoxParameterLoss",
    "anchor_temperatures",
    "check_batch",
    "BoxParameterLoss",
    "ignored_anchors",
    "mean_loss_per_box",
    "ssd_box_parameter_loss",
]


@dataclass
class SSDBoxLoss:
    """What :func:`ssd_box_parameter_loss` returns.

    Attributes
    ----------
    bbox_regression, classification : Tensor, scalar
        torchvision's two loss terms (each divided by the number of positive anchors).
    anchor_sigma : Tensor (B, A)
        The temperature that divided each anchor's logits.
    negative_sigma : Tensor, scalar
        The temperature of the negative anchors (the mean sigma of the batch's boxes).
    foreground, hard_negative : BoolTensor (B, A)
        Positive anchors, and the negatives chosen by hard-negative mining.
    ignored : BoolTensor (B, A)
        Unmatched anchors inside an ignore region: neither positive nor negative.
    box_loss : Tensor (M,)
        Per target box, the mean *unscaled* cross-entropy of its positive anchors (detached);
        NaN for a box that kept no anchor. The small-loss score of the box.
    """

    bbox_regression: Tensor
    classification: Tensor
    anchor_sigma: Tensor
    negative_sigma: Tensor
    foreground: Tensor
    hard_negative: Tensor
    box_loss: Tensor
    ignored: Tensor

    @property
    def total(self) -> Tensor:
        """``bbox_regression + classification``."""
        return self.bbox_regression + self.classification


def anchor_temperatures(
    matched_idxs: Sequence[Tensor],
    box_sigma: Sequence[Tensor],
    *,
    negative_sigma_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The temperature of every anchor: its box's sigma, or the batch's mean box sigma.

    Parameters
    ----------
    matched_idxs : sequence of B LongTensors (A,)
        Per anchor, the index of its matched box within the image, or a negative value.
    box_sigma : sequence of B Tensors (M_b,)
        Sigma of each target box of each image.
    negative_sigma_grad : bool
        Whether the gradient flows through the mean into the boxes' sigma (see the module notes).

    Returns
    -------
    anchor_sigma : Tensor (B, A)
    negative_sigma : Tensor, scalar
        Mean of all ``M`` box sigmas; 1 when ``M == 0``.
    anchor_box : LongTensor (B, A)
        Per anchor, its box's position in the concatenation of ``box_sigma`` (``-1`` for
        background).
    """
    if len(matched_idxs) != len(box_sigma):
        raise ValueError(f"got {len(matched_idxs)} matchings for {len(box_sigma)} images")
    if len(matched_idxs) == 0:
        raise ValueError("need at least one image")
    device = matched_idxs[0].device
    all_sigma = torch.cat([s.reshape(-1) for s in box_sigma]) if box_sigma else torch.zeros(0, device=device)
    # Each image's offset in the concatenation, added as a Python number: a tensor of offsets
    # built from host data would be a blocking copy on a GPU.
    offsets = [0]
    for s in box_sigma[:-1]:
        offsets.append(offsets[-1] + int(s.numel()))
    matched = torch.stack(list(matched_idxs))  # (B, A)
    foreground = matched >= 0
    shifted = torch.stack([m + offset for m, offset in zip(matched_idxs, offsets)])
    anchor_box = torch.where(foreground, shifted, torch.full_like(matched, -1))
    if all_sigma.numel() == 0:
        negative_sigma = torch.ones((), device=device)
    else:
        negative_sigma = all_sigma.mean()
        if not negative_sigma_grad:
            negative_sigma = negative_sigma.detach()
    # Gather from (M,) with a placeholder row for the background, so that the result is one
    # dense (B, A) tensor whose gradient reaches the boxes' sigma through the positives only
    # (and, with negative_sigma_grad, through the mean).
    gathered = all_sigma[anchor_box.clamp(min=0)] if all_sigma.numel() else torch.ones_like(matched, dtype=torch.float32)
    anchor_sigma = torch.where(foreground, gathered, negative_sigma.to(gathered.dtype))
    return anchor_sigma, negative_sigma, anchor_box


def check_batch(num_images: int, anchors: Sequence[Tensor], matched_idxs: Sequence[Tensor],
                target_boxes: Sequence[Tensor], target_labels: Sequence[Tensor], box_sigma: Sequence[Tensor]) -> None:
    """Raise ``ValueError`` unless every per-image input covers the ``num_images`` images and each
    image has as many labels and sigmas as boxes."""
    if not (len(anchors) == len(matched_idxs) == len(target_boxes) == len(target_labels) == len(box_sigma)
            == num_images):
        raise ValueError("cls_logits, anchors, matched_idxs, target_boxes, target_labels and box_sigma must all "
                         "cover the same images")
    for b, (boxes, labels, sigma) in enumerate(zip(target_boxes, target_labels, box_sigma)):
        if not (boxes.shape[0] == labels.shape[0] == sigma.shape[0]):
            raise ValueError(f"image {b}: {boxes.shape[0]} boxes, {labels.shape[0]} labels and "
                             f"{sigma.shape[0]} sigmas")


def mean_loss_per_box(anchor_loss: Tensor, foreground: Tensor, anchor_box: Tensor, num_boxes: int) -> Tensor:
    """Per box of the batch, the mean of ``anchor_loss`` (B, A) over its positive anchors, (M,);
    NaN for a box no anchor matched. ``anchor_box`` is :func:`anchor_temperatures`' third output.

    O(anchors of the batch). Every anchor is added, the background ones into a spare last row,
    so that no selection has a data-dependent size (a read-back on a GPU); the boxes' rows get
    the same terms in the same order as from a selection of the positives.
    """
    rows = torch.where(foreground, anchor_box, num_boxes).reshape(-1)
    sums = torch.zeros(num_boxes + 1, dtype=anchor_loss.dtype, device=anchor_loss.device).index_add_(
        0, rows, anchor_loss.reshape(-1))[:num_boxes]
    hits = torch.zeros(num_boxes + 1, dtype=anchor_loss.dtype, device=anchor_loss.device).index_add_(
        0, rows, foreground.reshape(-1).to(anchor_loss.dtype))[:num_boxes]
    return torch.where(hits > 0, sums / hits.clamp(min=1), torch.full_like(sums, float("nan")))


def ignored_anchors(
    anchors: Tensor,
    matched_idxs: Tensor,
    regions: Tensor,
    *,
    min_overlap: float = 0.5,
) -> Tensor:
    """The unmatched anchors of one image that lie inside an ignore region.

    Parameters
    ----------
    anchors : Tensor (A, 4)
        Default boxes, xyxy pixels.
    matched_idxs : LongTensor (A,)
        The matcher's output; an anchor with a value >= 0 is positive and never ignored.
    regions : Tensor (R, 4)
        Ignore regions in the same pixels.
    min_overlap : float
        An anchor is ignored when more than this fraction of its area lies inside one region.

    Returns
    -------
    BoolTensor (A,)

    Examples
    --------
    >>> anchors = torch.tensor([[0., 0., 10., 10.], [8., 0., 18., 10.], [30., 0., 40., 10.]])
    >>> ignored_anchors(anchors, torch.tensor([-1, -1, 0]), torch.tensor([[0., 0., 100., 10.]]))
    tensor([ True,  True, False])
    >>> ignored_anchors(anchors, torch.tensor([-1, -1, -1]), torch.tensor([[5., 0., 12., 10.]]))
    tensor([False, False, False])
    """
    if regions.numel() == 0 or anchors.numel() == 0:
        return torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    regions = regions.to(anchors.dtype)
    lt = torch.maximum(anchors[:, None, :2], regions[None, :, :2])
    rb = torch.minimum(anchors[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (A, R)
    area = (anchors[:, 2:] - anchors[:, :2]).clamp(min=0).prod(-1)  # (A,)
    return (inter.amax(1) > min_overlap * area) & (matched_idxs < 0)


def ssd_box_parameter_loss(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Sequence[Tensor],
    matched_idxs: Sequence[Tensor],
    target_boxes: Sequence[Tensor],
    target_labels: Sequence[Tensor],
    box_sigma: Sequence[Tensor],
    *,
    box_coder: BoxCoder,
    neg_to_pos_ratio: float = 3.0,
    negative_sigma_grad: bool = False,
    ignored: Sequence[Tensor] | None = None,
) -> SSDBoxLoss:
    """torchvision's SSD loss with each anchor's logits divided by its box's sigma (sec. 3.3).

    Parameters
    ----------
    cls_logits : Tensor (B, A, C)
    bbox_regression : Tensor (B, A, 4)
        The head's outputs.
    anchors : sequence of B Tensors (A, 4)
        Default boxes, xyxy in the network input's pixels.
    matched_idxs : sequence of B LongTensors (A,)
        The matcher's output: box index within the image, or -1 / -2 for background.
    target_boxes : sequence of B Tensors (M_b, 4)
        Ground truth in the network input's pixels.
    target_labels : sequence of B LongTensors (M_b,)
        In 1..K.
    box_sigma : sequence of B Tensors (M_b,)
        Temperature of each target box (ones for the baseline).
    box_coder : torchvision ``BoxCoder``
        ``model.box_coder`` (weights 10, 10, 5, 5 in torchvision's SSD).
    neg_to_pos_ratio : float
        Hard negatives per positive anchor (``model.neg_to_pos_ratio``, 3).
    negative_sigma_grad : bool
        Let the gradient flow through the negatives' mean sigma (default: no; see module notes).
    ignored : sequence of B BoolTensors (A,), optional
        Anchors that are neither positive nor negative (:func:`ignored_anchors`); they are never
        mined as hard negatives. A positive anchor marked here stays positive.

    Returns
    -------
    SSDBoxLoss
    """
    num_images = cls_logits.shape[0]
    check_batch(num_images, anchors, matched_idxs, target_boxes, target_labels, box_sigma)

    # Box regression and class targets, image by image as in torchvision's SSD.compute_loss.
    num_foreground = 0
    bbox_loss = []
    cls_targets = []
    for boxes, labels, regression, anchors_b, matched in zip(
        target_boxes, target_labels, bbox_regression, anchors, matched_idxs
    ):
        fg = torch.where(matched >= 0)[0]
        fg_matched = matched[fg]
        num_foreground += fg_matched.numel()
        target_regression = box_coder.encode_single(boxes[fg_matched], anchors_b[fg, :])
        bbox_loss.append(F.smooth_l1_loss(regression[fg, :], target_regression, reduction="sum"))
        target = torch.zeros((cls_logits.shape[1],), dtype=labels.dtype, device=labels.device)
        target[fg] = labels[fg_matched]
        cls_targets.append(target)
    targets = torch.stack(cls_targets)  # (B, A)
    foreground = targets > 0
    if ignored is None:
        ignore = torch.zeros_like(foreground)
    else:
        if len(ignored) != num_images:
            raise ValueError(f"got {len(ignored)} ignore masks for {num_images} images")
        ignore = torch.stack([m.to(device=foreground.device, dtype=torch.bool) for m in ignored]) & ~foreground
    # The pool hard-negative mining draws from.
    background = ~foreground & ~ignore

    anchor_sigma, negative_sigma, anchor_box = anchor_temperatures(
        matched_idxs, box_sigma, negative_sigma_grad=negative_sigma_grad
    )
    num_classes = cls_logits.shape[-1]
    scaled = scale_logits(cls_logits, anchor_sigma)
    cls_loss = F.cross_entropy(scaled.reshape(-1, num_classes), targets.reshape(-1), reduction="none").view(
        targets.shape
    )

    with torch.no_grad():
        # Mining on the unscaled loss (module notes); at sigma = 1 this is cls_loss itself.
        plain = F.cross_entropy(cls_logits.detach().reshape(-1, num_classes), targets.reshape(-1),
                                reduction="none").view(targets.shape)
        num_negative = neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        negative_loss = plain.masked_fill(~background, -float("inf"))
        _, order = negative_loss.sort(1, descending=True)
        # "& background": when the pool holds fewer than num_negative anchors, torchvision would
        # take the -inf ones (positives) as negatives too; ignored anchors must never be.
        hard_negative = (order.sort(1)[1] < num_negative) & background

        box_loss = mean_loss_per_box(plain, foreground, anchor_box, sum(int(s.numel()) for s in box_sigma))

    n = max(1, num_foreground)
    return SSDBoxLoss(
        bbox_regression=torch.stack(bbox_loss).sum() / n,
        classification=(cls_loss[foreground].sum() + cls_loss[hard_negative].sum()) / n,
        anchor_sigma=anchor_sigma,
        negative_sigma=negative_sigma,
        foreground=foreground,
        hard_negative=hard_negative,
        box_loss=box_loss,
        ignored=ignore,
    )


class BoxParameterLoss(nn.Module):
    """What the detectors' losses with box data parameters share: the boxes' sigma looked up once
    per batch from :class:`DataParameters` (with the L2 penalty on their log sigma) and the
    anchors to ignore; a subclass's :meth:`forward` passes them to its loss function.

    Parameters
    ----------
    data_parameters : DataParameters
        ``num_classes = K`` and ``num_instances`` = the number of box annotations of the
        training set; the instance level on for the curriculum, off (sigma = 1) for the
        baseline. Box ``j`` of a target uses row ``target["box_index"][j]``.
    negative_sigma_grad : bool
        See the module notes.
    wd_instance : float
        L2 penalty on the batch boxes' log sigma (sec. 3.1); the paper uses none for detection.
    ignore_overlap : float, optional
        Leave the unmatched anchors whose area lies more than this fraction inside one of a
        target's ``ignore`` regions out of the negatives (:func:`ignored_anchors`); None (the
        default) ignores nothing, which is torchvision's loss. The trainer passes
        ``model.ignore_overlap`` (0.5).

    Notes
    -----
    Each box of the batch is gathered once; the gradient of
    ``data_parameters.instance_log_sigma`` is then a sparse tensor over exactly those rows, and a
    :class:`~dataparams.optim.SparseSGD` step touches nothing else: O(boxes in the batch).
    """

    def __init__(self, data_parameters: DataParameters, *, negative_sigma_grad: bool = False,
                 wd_instance: float = 0.0, ignore_overlap: float | None = None) -> None:
        super().__init__()
        if wd_instance < 0:
            raise ValueError(f"wd_instance must be >= 0, got {wd_instance}")
        if ignore_overlap is not None and not 0.0 <= ignore_overlap < 1.0:
            raise ValueError(f"ignore_overlap must lie in [0, 1) or be None, got {ignore_overlap}")
        self.ignore_overlap = ignore_overlap
        self.data_parameters = data_parameters
        self.negative_sigma_grad = bool(negative_sigma_grad)
        self.wd_instance = float(wd_instance)

    def batch_terms(self, anchors: Sequence[Tensor], matched_idxs: Sequence[Tensor], targets: Sequence[dict[str, Any]],
                    device: torch.device) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor, list[Tensor] | None]:
        """``(boxes, labels, box_sigma, penalty, ignored)`` of a batch: per image its boxes,
        labels and sigmas on ``device``, the L2 penalty, and the ignore masks (None without
        ``ignore_overlap``)."""
        labels = [t["labels"].to(device) for t in targets]
        index = torch.cat([t["box_index"].to(device) for t in targets])
        counts = [int(t["labels"].numel()) for t in targets]
        # Classes are 1..K with 0 for background; DataParameters counts classes from 0.
        sigma, penalty = self.data_parameters.sigma_and_regularizer(
            torch.cat(labels) - 1, index, wd_instance=self.wd_instance
        )
        ignored = None
        if self.ignore_overlap is not None:
            ignored = [ignored_anchors(a, m, t["ignore"].to(device), min_overlap=self.ignore_overlap)
                       if "ignore" in t else torch.zeros_like(m, dtype=torch.bool)
                       for a, m, t in zip(anchors, matched_idxs, targets)]
        return [t["boxes"].to(device) for t in targets], labels, list(sigma.split(counts)), penalty, ignored


class SSDBoxParameterLoss(BoxParameterLoss):
    """:func:`ssd_box_parameter_loss` with the boxes' sigma from :class:`DataParameters`.

    Parameters
    ----------
    data_parameters, negative_sigma_grad, wd_instance, ignore_overlap
        As for :class:`BoxParameterLoss`.
    box_coder : torchvision ``BoxCoder``
        ``model.box_coder``.
    neg_to_pos_ratio : float
        ``model.neg_to_pos_ratio``.
    """

    def __init__(
        self,
        data_parameters: DataParameters,
        *,
        box_coder: BoxCoder,
        neg_to_pos_ratio: float = 3.0,
        negative_sigma_grad: bool = False,
        wd_instance: float = 0.0,
        ignore_overlap: float | None = None,
    ) -> None:
        if neg_to_pos_ratio < 0:
            raise ValueError(f"neg_to_pos_ratio must be >= 0, got {neg_to_pos_ratio}")
        super().__init__(data_parameters, negative_sigma_grad=negative_sigma_grad, wd_instance=wd_instance,
                         ignore_overlap=ignore_overlap)
        self.box_coder = box_coder
        self.neg_to_pos_ratio = float(neg_to_pos_ratio)

    def forward(
        self,
        head_outputs: dict[str, Tensor],
        anchors: Sequence[Tensor],
        matched_idxs: Sequence[Tensor],
        targets: Sequence[dict[str, Any]],
    ) -> tuple[Tensor, SSDBoxLoss]:
        """Loss of a batch, from :func:`~dataparams.detection.models.ssd_training_outputs`.

        Parameters
        ----------
        head_outputs : dict with ``cls_logits`` (B, A, C) and ``bbox_regression`` (B, A, 4)
        anchors, matched_idxs : sequences of B tensors (A, 4), (A,)
        targets : sequence of B dicts
            ``boxes`` (M_b, 4) in the network input's pixels, ``labels`` (M_b,) in 1..K,
            ``box_index`` (M_b,) in [0, N) and, optionally, ``ignore`` (R_b, 4) in the same
            pixels.

        Returns
        -------
        loss : Tensor, scalar
            Regression + classification + the L2 penalty on log sigma (0 by default).
        parts : SSDBoxLoss
        """
        boxes, labels, sigma, penalty, ignored = self.batch_terms(anchors, matched_idxs, targets,
                                                                  head_outputs["cls_logits"].device)
        parts = ssd_box_parameter_loss(
            head_outputs["cls_logits"],
            head_outputs["bbox_regression"],
            anchors,
            matched_idxs,
            boxes,
            labels,
            sigma,
            box_coder=self.box_coder,
            neg_to_pos_ratio=self.neg_to_pos_ratio,
            negative_sigma_grad=self.negative_sigma_grad,
            ignored=ignored,
        )
        return parts.total + penalty, parts
