"""Starting ``ssd300_vgg16`` from local weights: a torchvision name read from torch hub's cache
only, or a state_dict file; nothing is ever downloaded.

The VGG16 features are made by torchvision's own ``vgg.make_layers`` (the layer layout of the
ImageNet file), and the loaded backbone is checked by running that VGG and the detector's backbone
on the same input, not by re-reading the key mapping under test.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision._internally_replaced_utils as tv_utils
import torchvision.models._api as tv_api
from torchvision.models.vgg import cfgs, make_layers

from dataparams.config import ConfigError
from dataparams.detection.config import validate_detection_config
from dataparams.detection.models import (
    build_detector,
    detector_from_config,
    load_detector_weights,
    weights_file,
)
from dataparams.detection.presets import get_detection_preset
from dataparams.detection.train import train_detection

NAME = "VGG16_Weights.IMAGENET1K_FEATURES"
FILE = "vgg16_features-amdegroot-88682ab5.pth"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder, and every download function made to fail."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download {args[:1]}")

    for module in (torch.hub, tv_api, tv_utils):
        if hasattr(module, "load_state_dict_from_url"):
            monkeypatch.setattr(module, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    folder = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(folder))
    return folder


def test_a_weights_name_not_in_the_cache_is_a_clear_error_and_nothing_is_downloaded(hub, tmp_path):
    with pytest.raises(ConfigError) as err:
        weights_file(NAME)
    message = str(err.value)
    assert FILE in message and str(hub / "checkpoints") in message and "model.weights=none" in message
    with pytest.raises(ConfigError, match=FILE):
        build_detector("ssd300_vgg16", 3, weights=NAME)
    # The trainer stops on it before reading any data (the data root does not even exist).
    cfg = get_detection_preset("kitti/instance", root=tmp_path / "no-data")
    assert cfg.model.weights == NAME and cfg.data.augment == "ssd"
    with pytest.raises(ConfigError, match=FILE):
        train_detection(cfg, tmp_path / "run", quiet=True, device="cpu")
    assert not (tmp_path / "run").exists()

    with pytest.raises(ConfigError, match="VGG16_Weights"):
        weights_file("ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="no torchvision weights name"):
        weights_file("VGG16_Weights.NOPE")
    with pytest.raises(ConfigError, match="no such file"):
        weights_file(tmp_path / "missing.pt")
    # tiny_ssd has no VGG backbone: refused when validated and when built.
    with pytest.raises(ConfigError, match="ssd300_vgg16 only"):
        build_detector("tiny_ssd", 3, image_size=(64, 64), weights=NAME)
    tiny = get_detection_preset("kitti-synth/instance", root=tmp_path)
    validate_detection_config(tiny)
    tiny.model.weights = NAME
    with pytest.raises(ConfigError, match="ssd300_vgg16 only"):
        validate_detection_config(tiny)
    tiny.model.weights, tiny.data.augment = None, "mosaic"
    with pytest.raises(ConfigError, match="data.augment"):
        validate_detection_config(tiny)


def test_imagenet_features_load_from_the_hub_cache(hub):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vgg = make_layers(cfgs["D"])  # torchvision's vgg16().features
    # As the file torchvision downloads: a whole vgg16 state_dict whose classifier is unusable.
    state = {f"features.{k}": v for k, v in vgg.state_dict().items()}
    state["classifier.0.weight"] = torch.full((2, 2), math.nan)
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "checkpoints" / FILE)
    assert weights_file(NAME) == hub / "checkpoints" / FILE

    model = build_detector("ssd300_vgg16", 3, weights=NAME)
    backbone = model.backbone
    assert torch.equal(backbone.features[0].weight, vgg[0].weight)  # conv1_1
    assert torch.equal(backbone.extra[0][5].weight, vgg[28].weight)  # conv5_3, after maxpool4
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        conv4_3 = backbone.features(x)
        torch.testing.assert_close(conv4_3, vgg[:23](x))
        torch.testing.assert_close(backbone.extra[0][:7](conv4_3), vgg[:30](x))
    # torchvision's trainable_backbone_layers=4 with pretrained weights: conv1 frozen, the rest trains.
    assert not any(p.requires_grad for p in backbone.features[:4].parameters())
    assert all(p.requires_grad for p in backbone.features[5:].parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_a_state_dict_file_loads_into_the_detector(hub, tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # What a resumed run builds: the layers the weights would freeze are frozen, and the weights
    # file is not even looked up (the cache is empty), since the checkpoint replaces every weight.
    model = build_detector("ssd300_vgg16", 2, image_size=(64, 128), weights=NAME, load_weights=False)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.features.0.weight", "backbone.features.0.bias", "backbone.features.2.weight",
                      "backbone.features.2.bias"]
    # Another detector's weights (every float tensor moved), as a run's checkpoint holds them.
    other = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": other, "epoch": 3}, tmp_path / "checkpoint.pt")
    assert load_detector_weights(model, tmp_path / "checkpoint.pt") == "detector"
    for key, value in model.state_dict().items():
        assert torch.equal(value, other[key]), key

    # VGG16 features alone, keyed as vgg16().features: the backbone's first 13 convolutions.
    vgg = make_layers(cfgs["D"])
    torch.save(vgg.state_dict(), tmp_path / "vgg.pt")
    assert load_detector_weights(model, weights_file(tmp_path / "vgg.pt")) == "backbone"
    assert torch.equal(model.backbone.features[21].weight, vgg[21].weight)  # conv4_3
    assert torch.equal(model.backbone.extra[0][1].bias, vgg[24].bias)  # conv5_1
    assert torch.equal(model.head.classification_head.module_list[0].weight,
                       other["head.classification_head.module_list.0.weight"])  # untouched

    broken = dict(other)
    broken["head.classification_head.module_list.0.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        load_detector_weights(model, tmp_path / "broken.pt")
    partial = {k: v for k, v in vgg.state_dict().items() if k != "28.bias"}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="13 convolutions"):
        load_detector_weights(model, tmp_path / "partial.pt")
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="neither VGG16"):
        load_detector_weights(model, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_detector_weights(model, tmp_path / "text.pt")


@pytest.mark.slow
def test_a_second_run_starts_from_the_first_runs_checkpoint_end_to_end(hub, tmp_path_factory, tmp_path, monkeypatch):
    # The weights option end to end (nothing downloaded): ssd300_vgg16 trained for one epoch from
    # random weights on the synthetic KITTI set, then a second run whose model.weights is the first
    # run's checkpoint.pt (checksum trailer and all). The second run's detector, as the trainer
    # builds it, must hold the first run's final weights before its first step, and it trains on.
    import dataparams.detection.train as detection_train
    import fakes
    from dataparams.runs import RunDir

    torch.set_num_threads(1)
    root = fakes.synthetic_kitti(tmp_path_factory, "synth_weights", num_images=8, seed=3, flip_fraction=0.0)
    cfg = get_detection_preset("kitti/instance", root=root)
    cfg.model.weights, cfg.model.image_size = None, [300, 300]
    cfg.data.batch_size = cfg.data.eval_batch_size = 3
    cfg.optim.epochs, cfg.eval_every = 1, 1
    built = []

    def recording(*args, **kwargs):
        model = detector_from_config(*args, **kwargs)
        built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(detection_train, "detector_from_config", recording)
    train_detection(cfg, tmp_path / "first", quiet=True, device="cpu")
    first = RunDir(tmp_path / "first")
    final = first.load_checkpoint()["model"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())
    # The first run's training moved its weights away from the initialisation.
    assert any(not torch.equal(built[0][k], final[k]) for k in final if final[k].is_floating_point())

    cfg.model.weights = str(first.checkpoint_file)
    train_detection(cfg, tmp_path / "second", quiet=True, device="cpu")
    assert set(built[1]) == set(final)
    for key in final:
        assert torch.equal(built[1][key], final[key]), key
    second = RunDir(tmp_path / "second")
    assert json.loads(second.config_file.read_text())["model"]["weights"] == str(first.checkpoint_file)
    (record,) = second.read_metrics()
    assert math.isfinite(record["train_loss"]) and "map40_moderate" in record


def test_detector_from_config_builds_the_networks_the_config_names():
    # The trainer and the tools that rebuild a run's detector read the model section through this
    # one helper: each post-processing setting and the input size must reach the network.
    cfg = get_detection_preset("kitti-synth/baseline", root="unused").model
    cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img = 0.2, 0.3, 7
    model = detector_from_config(cfg, 3, load_weights=False)
    expected = build_detector("tiny_ssd", 3, image_size=cfg.image_size, width=cfg.width, score_thresh=0.2,
                              nms_thresh=0.3, detections_per_img=7)
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == (0.2, 0.3, 7)
    assert model.transform.fixed_size == tuple(reversed(cfg.image_size))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in expected.state_dict().items()}
