"""Host syncs of a steady-state detection training step (kitti-synth, tiny_ssd), by name.

The step is everything :func:`dataparams.engine.train_one_epoch` does with one batch of
:class:`~dataparams.detection.train.DetectionStep` (from ``DetectionStep.loss``, which moves the
batch to the device, through the backward pass, both optimizers' steps and the per-step schedule,
to the end of ``DetectionStep.record``), counted with :func:`dataparams.syncs.count_host_syncs`
inside a real run of :func:`~dataparams.detection.train.train_detection`, so that the setup is the
trainer's own.
"""

import pytest
import torch

import fakes
from dataparams.detection import train as detection_train
from dataparams.detection.presets import get_detection_preset
from dataparams.syncs import count_host_syncs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return fakes.synthetic_kitti(tmp_path_factory, "synth", num_images=24)


def counted_steps(root, tmp_path, monkeypatch, **overrides):
    """The sync points of every training step of a one-epoch kitti-synth/instance run."""
    cfg = get_detection_preset("kitti-synth/instance", root=root)
    cfg.seed, cfg.model.width, cfg.data.batch_size, cfg.optim.epochs, cfg.eval_every = 4, 8, 6, 1, 1
    for key, value in overrides.items():
        setattr(cfg.data, key, value)
    assert cfg.model.arch == "tiny_ssd"
    steps = []
    loss, record = detection_train.DetectionStep.loss, detection_train.DetectionStep.record
    counting = []

    def counted_loss(self, batch):  # the step starts: count until its record() has returned
        cm = count_host_syncs()
        counting.append((cm, cm.__enter__()))
        try:
            return loss(self, batch)
        except BaseException:
            cm.__exit__(None, None, None)  # the counter's lock must not outlive a failed step
            raise

    def counted_record(self, callbacks):
        record(self, callbacks)
        cm, syncs = counting.pop()
        cm.__exit__(None, None, None)
        steps.append(dict(syncs.calls))

    monkeypatch.setattr(detection_train.DetectionStep, "loss", counted_loss)
    monkeypatch.setattr(detection_train.DetectionStep, "record", counted_record)
    detection_train.train_detection(cfg, tmp_path / "run", quiet=True, device="cpu")
    return steps


# The sync points of one steady-state step of 6 images (B = 6), by name; per image unless said.
# Before this count was kept, a step had 119 (70 in our code): .cpu() x5 for the box losses and
# the loss sums, a Python-side zero-size box check (__bool__ x B), boolean-mask selections for the
# box losses (x2), host offsets and ignore-region resize ratios built as device tensors (x49).
STEADY_STEP = {
    # Ours, dataparams.detection.box_parameters.ssd_box_parameter_loss. They stay because they are
    # torchvision's SSD.compute_loss as it is: the smooth-L1 sum over exactly the positive anchors
    # (torch.where per image) and the cross-entropy sums over the positives and over the hard
    # negatives (two masks per batch). Summing masked full tensors instead would add the same
    # terms in another order and move the loss off torchvision's in its last bits.
    "torch.where(condition)": 6,  # x B
    "Tensor[bool mask]": 2,  # per batch
    # torchvision, which we do not control:
    # GeneralizedRCNNTransform.torch_choice draws the resize size with .item() on a CPU tensor
    # (no device involved; a real device sync only in name).
    "Tensor.item": 6,  # x B
    # GeneralizedRCNNTransform.normalize (mean and std, x 2B) and BoxCoder.encode_single (its
    # weights, x B, called by our loss through model.box_coder).
    "torch.as_tensor(device=)": 18,
    # resize_boxes on the target boxes (two ratios of two tensors, x 4B) and
    # DefaultBoxGenerator.forward (the image size, once).
    "torch.tensor(device=)": 25,
}


def test_count_sees_where_and_as_tensor():
    x = torch.arange(4)
    with count_host_syncs() as syncs:
        torch.where(x > 1)  # a nonzero
        torch.where(x > 1, x, 0)  # elementwise: not counted
        torch.as_tensor([1.0, 2.0], device=x.device)  # host data to the device
        torch.as_tensor(x, device=x.device)  # a tensor: not counted
    assert syncs.calls == {"torch.where(condition)": 1, "torch.as_tensor(device=)": 1}


def test_a_steady_state_detection_step_syncs_only_where_torchvision_does(data_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    steps = counted_steps(data_root, tmp_path, monkeypatch)
    assert len(steps) == 3  # 18 training images in batches of 6
    # The first step allocates the optimizers' state; the ones after it are the steady state.
    assert steps[1:] == [STEADY_STEP] * 2, steps
