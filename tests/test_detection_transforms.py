"""Transforms of detection items: SSD's augmentation carries every per-box entry with the boxes.

* the crop keeps exactly the boxes whose centre lies inside it, with every per-box entry (box
  index, label, annotation fields) and coordinates clipped as computed by hand; regions are
  cropped and dropped when nothing is left;
* the zoom-out shifts boxes by the image's offset on a mean-coloured canvas;
* the photometric distortion moves no box and is a function of its generator's seed;
* each random transform, given a generator seeded like torch's global one, is torchvision's
  ``transforms.v2`` transform (an implementation we did not write), draws and arithmetic
  included; the crop's aspect check differs only for non-square network inputs, by design;
* the trainer's augmentation is a function of (seed, epoch, image).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

import fakes
from dataparams.detection.kitti import KittiDetection
from dataparams.detection.train import AugmentedDetection
from dataparams.detection.transforms import (
    SSD_MEAN,
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomZoomOut,
    crop,
    photometric_distort,
    select_boxes,
    zoom_out,
)

H, W = 40, 60


def _image():
    """Pixel (c, y, x) holds 1000 c + 100 y + x (scaled), so any cut or shift can be read off."""
    c, y, x = torch.meshgrid(torch.arange(3.0), torch.arange(H * 1.0), torch.arange(W * 1.0), indexing="ij")
    return (1000 * c + 100 * y + x) / 10_000


def _target():
    boxes = torch.tensor([
        [2.0, 6.0, 18.0, 20.0],    # A, centre (10, 13)
        [0.0, 0.0, 10.0, 6.0],     # B, centre (5, 3)
        [30.0, 20.0, 60.0, 40.0],  # C, centre (45, 30)
        [50.0, 10.0, 58.0, 20.0],  # D, centre (54, 15)
        [4.0, 10.0, 12.0, 20.0],   # E, centre (8, 15): on the crop's left edge
    ])
    return {
        "boxes": boxes,
        "labels": torch.tensor([1, 2, 3, 1, 2]),
        "box_index": torch.tensor([10, 11, 12, 13, 14]),
        "difficulty": torch.tensor([0, 1, 2, -1, 0]),
        "occluded": torch.tensor([0, 1, 2, 3, 0]),
        "truncated": torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4]),
        "height": boxes[:, 3] - boxes[:, 1],
        "ann_id": torch.tensor([100, 101, 102, 103, 104]),  # any other per-box entry rides along
        "dontcare": torch.tensor([[0.0, 0.0, 60.0, 40.0]]),
        "ignore": torch.tensor([[0.0, 0.0, 5.0, 40.0], [20.0, 10.0, 30.0, 20.0]]),
        "image_id": "000042",
    }


# ---------------------------------------------------------------------------------------------
# (a) the IoU crop
# ---------------------------------------------------------------------------------------------
def test_crop_keeps_the_boxes_centred_inside_with_every_per_box_entry():
    image, target = _image(), _target()
    # Crop x in [8, 48), y in [4, 34): A and C are centred inside; B, D outside; E's centre lies
    # on the left edge, and "inside" is strict, as in SSD and torchvision.
    out_image, out = crop(image, target, top=4, left=8, height=30, width=40)
    assert out_image.shape == (3, 30, 40)
    assert out_image[1, 0, 0].item() == pytest.approx((1000 + 100 * 4 + 8) / 10_000)
    assert out_image[2, 29, 39].item() == pytest.approx((2000 + 100 * 33 + 47) / 10_000)
    assert out["box_index"].tolist() == [10, 12]
    assert out["labels"].tolist() == [1, 3] and out["ann_id"].tolist() == [100, 102]
    assert out["difficulty"].tolist() == [0, 2] and out["occluded"].tolist() == [0, 2]
    assert out["truncated"].tolist() == pytest.approx([0.0, 0.2])
    assert out["height"].tolist() == [14.0, 20.0]  # the label's, not the clipped box's
    # A: (2-8, 6-4, 18-8, 20-4) clipped at x = 0 -> (0, 2, 10, 16).
    # C: (30-8, 20-4, 60-8, 40-4) = (22, 16, 52, 36) clipped to 40 x 30 -> (22, 16, 40, 30).
    assert out["boxes"].tolist() == [[0.0, 2.0, 10.0, 16.0], [22.0, 16.0, 40.0, 30.0]]
    # Regions: the whole-image DontCare becomes the whole crop; the ignore strip x in [0, 5]
    # falls left of the crop and goes; the other moves by (-8, -4).
    assert out["dontcare"].tolist() == [[0.0, 0.0, 40.0, 30.0]]
    assert out["ignore"].tolist() == [[12.0, 6.0, 22.0, 16.0]]
    assert out["image_id"] == "000042"
    assert target["boxes"].shape == (5, 4)  # the input is not changed
    with pytest.raises(ValueError, match="inside"):
        crop(image, target, top=20, left=0, height=30, width=10)


def test_select_boxes_refuses_an_entry_that_is_not_per_box():
    target = _target()
    assert select_boxes(target, torch.tensor([4, 0]))["box_index"].tolist() == [14, 10]
    target["image_size"] = torch.tensor([H, W])
    with pytest.raises(ValueError, match="image_size"):
        select_boxes(target, torch.tensor([True, False, True, False, True]))


@pytest.mark.parametrize("size", [(40, 40), (40, 60)])
def test_random_iou_crop_is_torchvisions(size):
    h, w = size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[2.0, 3.0, 20.0, 25.0], [15.0, 10.0, 39.0, 30.0], [30.0, 30.0, 38.0, 39.0]])
    target = {"boxes": boxes, "box_index": torch.tensor([5, 6, 7])}
    cropped = 0
    for seed in range(60):
        torch.manual_seed(seed)
        ref_image, ref_boxes = v2.RandomIoUCrop()(
            tv_tensors.Image(image), tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)))
        # torchvision bounds the crop's own aspect ratio: ours with a square network input.
        g = torch.Generator().manual_seed(seed)
        out_image, out = RandomIoUCrop(input_aspect=1.0, generator=g)(image, target)
        ref_boxes = ref_boxes.as_subclass(torch.Tensor)
        kept = ref_boxes[:, 2] > ref_boxes[:, 0]  # torchvision zeroes the boxes it drops
        assert torch.equal(out_image, ref_image.as_subclass(torch.Tensor))
        assert torch.equal(out["boxes"], ref_boxes[kept])
        assert out["box_index"].tolist() == [i for i, k in zip([5, 6, 7], kept.tolist()) if k]
        cropped += out_image.shape != image.shape
    assert cropped > 20


def test_random_iou_crop_keeps_exactly_the_centred_boxes_and_bounds_the_stretch():
    image, target = _image(), _target()
    centres = ((target["boxes"][:, :2] + target["boxes"][:, 2:]) / 2).numpy()
    seen_drops = False
    for seed in range(40):
        transform = RandomIoUCrop(generator=torch.Generator().manual_seed(seed))
        params = transform.params(image, target)
        again = RandomIoUCrop(generator=torch.Generator().manual_seed(seed))(image, target)
        if params is None:
            assert again[1] is target
            continue
        top, left, h, w = params["top"], params["left"], params["height"], params["width"]
        # Relative to the 60 x 40 image's own aspect: the resize back stretches by at most 2.
        assert 0.5 <= (w / h) / (W / H) <= 2.0 and 0.3 * W - 1 <= w <= W and 0.3 * H - 1 <= h <= H
        inside = ((left < centres[:, 0]) & (centres[:, 0] < left + w) & (top < centres[:, 1])
                  & (centres[:, 1] < top + h))
        assert again[1]["box_index"].tolist() == (np.arange(10, 15)[inside]).tolist()
        assert again[1]["labels"].tolist() == target["labels"][torch.from_numpy(inside)].tolist()
        seen_drops |= not inside.all()
    assert seen_drops
    empty = {**target, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "box_index": torch.zeros(0, dtype=torch.int64), "difficulty": torch.zeros(0), "occluded": torch.zeros(0),
             "truncated": torch.zeros(0), "height": torch.zeros(0), "ann_id": torch.zeros(0)}
    assert RandomIoUCrop(generator=torch.Generator().manual_seed(0))(image, empty)[1] is empty


# ---------------------------------------------------------------------------------------------
# (b) the zoom-out
# ---------------------------------------------------------------------------------------------
def test_zoom_out_shifts_boxes_by_the_offset_on_a_mean_canvas():
    image, target = _image(), _target()
    out_image, out = zoom_out(image, target, canvas_size=(100, 150), top=7, left=30)
    assert out_image.shape == (3, 100, 150)
    assert torch.equal(out_image[:, 7:47, 30:90], image)
    mask = torch.ones(100, 150, dtype=torch.bool)
    mask[7:47, 30:90] = False
    for c in range(3):
        assert torch.all(out_image[c][mask] == torch.tensor(SSD_MEAN[c]))
    assert SSD_MEAN == pytest.approx((123 / 255, 117 / 255, 104 / 255))
    # Every box and region moves by (+30, +7); nothing is lost, the per-box entries are untouched.
    assert out["boxes"][0].tolist() == [32.0, 13.0, 48.0, 27.0]
    assert torch.equal(out["boxes"], target["boxes"] + torch.tensor([30.0, 7.0, 30.0, 7.0]))
    assert out["ignore"].tolist() == [[30.0, 7.0, 35.0, 47.0], [50.0, 17.0, 60.0, 27.0]]
    assert out["dontcare"].tolist() == [[30.0, 7.0, 90.0, 47.0]]
    assert out["box_index"] is target["box_index"] and out["labels"] is target["labels"]
    grey, _ = zoom_out(image[:1], target, canvas_size=(50, 60), top=0, left=0)
    assert grey[0, 45, 0].item() == pytest.approx(sum(SSD_MEAN) / 3)
    with pytest.raises(ValueError, match="fit"):
        zoom_out(image, target, canvas_size=(50, 60), top=11, left=0)


def test_random_zoom_out_is_torchvisions_and_moves_boxes_with_the_pixels():
    image, target = _image(), _target()
    zoomed = 0
    for seed in range(30):
        torch.manual_seed(seed)
        ref_image, ref_boxes = v2.RandomZoomOut(fill={tv_tensors.Image: list(SSD_MEAN), "others": 0})(
            tv_tensors.Image(image), tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(H, W)))
        out_image, out = RandomZoomOut(generator=torch.Generator().manual_seed(seed))(image, target)
        assert torch.equal(out_image, ref_image.as_subclass(torch.Tensor))
        assert torch.equal(out["boxes"], ref_boxes.as_subclass(torch.Tensor))
        if out_image.shape != image.shape:
            zoomed += 1
            # The offset read off the pixels (pixel (0, 0, 0) of the image is 0) is the boxes' shift.
            top, left = (int(v) for v in torch.nonzero(out_image[0] == 0)[0])
            assert torch.equal(out["boxes"] - target["boxes"], torch.tensor([left, top, left, top]).float().expand(5, 4))
            assert 1.0 <= out_image.shape[-1] / W < 4.0
    assert 5 < zoomed < 25  # p = 0.5


# ---------------------------------------------------------------------------------------------
# (c) the photometric distortion
# ---------------------------------------------------------------------------------------------
def test_photometric_distortion_moves_no_box_and_follows_its_seed():
    image, target = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1)), _target()

    def run(seed):
        return RandomPhotometricDistort(generator=torch.Generator().manual_seed(seed))(image, target)

    outputs = [run(seed) for seed in range(8)]
    for seed, (out_image, out) in enumerate(outputs):
        assert out is target  # not a box, region or index is touched
        assert torch.equal(out_image, run(seed)[0])
        assert out_image.shape == image.shape and 0.0 <= out_image.min() and out_image.max() <= 1.0
    assert len({out_image.sum().item() for out_image, _ in outputs}) == 8
    for seed in range(30):
        torch.manual_seed(seed)
        reference = v2.RandomPhotometricDistort()(image)
        torch.testing.assert_close(run(seed)[0], reference, rtol=0, atol=1e-6)
    # The explicit form: a channel permutation alone reorders the channels.
    assert torch.equal(photometric_distort(image, permutation=[2, 0, 1]), image[[2, 0, 1]])


# ---------------------------------------------------------------------------------------------
# (d) the trainer's pipeline
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth", num_images=12, seed=3, flip_fraction=0.0)


def test_ssd_pipeline_is_a_function_of_seed_epoch_and_image(synth_root):
    torch.set_num_threads(1)
    base = KittiDetection(synth_root, "train")
    a = AugmentedDetection(base, hflip=0.5, seed=7, augment="ssd")
    b = AugmentedDetection(base, hflip=0.5, seed=7, augment="ssd")
    items = {(epoch, i): a[(epoch, i)] for epoch in range(3) for i in range(len(base))}
    dropped = changed = 0
    for epoch in range(2):
        for i in range(len(base)):
            image, target = items[(epoch, i)]
            b.set_epoch(epoch)
            image_b, target_b = b[i]
            assert torch.equal(image, image_b) and target.keys() == target_b.keys()
            for key, value in target.items():
                assert torch.equal(value, target_b[key]) if torch.is_tensor(value) else value == target_b[key]
            # The kept boxes are a subset of the image's, each with its own label and fields.
            ref = base.get_target(i)
            rows = torch.searchsorted(ref["box_index"], target["box_index"])
            assert torch.equal(ref["box_index"][rows], target["box_index"])
            for key in ("labels", "difficulty", "occluded", "truncated", "height"):
                assert torch.equal(target[key], ref[key][rows]), key
            # The crop keeps at least one box, clipped to the image and never empty.
            assert len(target["boxes"]) >= 1 or len(ref["boxes"]) == 0
            boxes = target["boxes"]
            assert bool((boxes[:, 2:] > boxes[:, :2]).all()) and bool((boxes >= 0).all())
            assert bool((boxes[:, 2] <= image.shape[-1]).all()) and bool((boxes[:, 3] <= image.shape[-2]).all())
            dropped += len(ref["boxes"]) - len(target["boxes"])
            changed += not torch.equal(image, items[(epoch + 1, i)][0])
    assert dropped > 0 and changed == 2 * len(base)
    # The flip setting keeps every box.
    flip = AugmentedDetection(base, hflip=0.5, seed=7)
    for i in range(len(base)):
        image, target = flip[(1, i)]
        assert torch.equal(target["box_index"], base.get_target(i)["box_index"])
    with pytest.raises(ValueError, match="augmentation"):
        AugmentedDetection(base, hflip=0.5, seed=7, augment="mosaic")
