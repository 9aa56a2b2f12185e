"""Models built by name: the presets' networks unchanged, the MLP, torchvision by name, local weights."""

import pytest
import torch
from torch import nn

from dataparams.models import (
    MLP,
    VGG16,
    SmallCNN,
    build_model,
    default_arch,
    is_known_arch,
    load_local_weights,
    wrn28_10,
)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    # Any attempt to fetch weights fails the test: every model is built with weights=None.
    def refuse(*args, **kwargs):
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_preset_architectures_are_built_as_before():
    from torchvision.models import resnet18

    assert _same_state(_seeded(lambda: build_model("small_cnn", 10, in_channels=1, image_size=28)),
                       _seeded(lambda: SmallCNN(10, in_channels=1, image_size=28)))
    assert _same_state(_seeded(lambda: build_model("vgg16", 7, in_channels=3)), _seeded(lambda: VGG16(7, in_channels=3)))
    assert _same_state(_seeded(lambda: build_model("wrn28_10", 5, dropout=0.1)), _seeded(lambda: wrn28_10(5, dropout=0.1)))
    # resnet18 with 3 channels is torchvision's own, with 1 channel its conv1 is replaced
    assert _same_state(_seeded(lambda: build_model("resnet18", 4)), _seeded(lambda: resnet18(weights=None, num_classes=4)))
    grey = build_model("resnet18", 4, in_channels=1)
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("small_cnn", 10, in_channels=1, image_size=30)


def test_mlp_shapes_and_width():
    model = build_model("mlp", 3, in_features=64)
    assert isinstance(model, MLP)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 256, 3]
    assert model(torch.randn(5, 64)).shape == (5, 3)
    with_dropout = build_model("mlp", 3, in_features=8, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) for m in with_dropout.modules())
    with pytest.raises(ValueError, match="needs in_features"):
        build_model("mlp", 3)
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, 2, dropout=1.0)


def test_torchvision_models_by_name_with_one_channel():
    from torchvision.models import shufflenet_v2_x0_5

    # with 3 channels: exactly torchvision's constructor (the check forward changes nothing)
    ours = _seeded(lambda: build_model("shufflenet_v2_x0_5", 7, in_channels=3, image_size=32))
    theirs = _seeded(lambda: shufflenet_v2_x0_5(weights=None, num_classes=7))
    assert _same_state(ours, theirs) and ours.training
    for arch in ("mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5"):
        model = build_model(arch, 5, in_channels=1, image_size=32)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.in_channels == 1, arch
        model.eval()
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5), arch
    # googlenet trains with logits only (no auxiliary outputs)
    g = build_model("googlenet", 3, in_channels=1, image_size=32)
    assert g.train()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_torchvision_prefix_unknown_names_and_too_small_inputs():
    assert isinstance(build_model("vgg16", 3), VGG16)  # ours, the CIFAR VGG16-BN
    tv = build_model("torchvision.squeezenet1_1", 3, in_channels=1, image_size=32)
    assert tv.features[0].in_channels == 1
    assert is_known_arch("mlp") and is_known_arch("resnet50") and is_known_arch("torchvision.vgg16")
    assert not is_known_arch("resnet9000")
    with pytest.raises(ValueError, match="unknown model.arch 'resnet9000'"):
        build_model("resnet9000", 3)
    with pytest.raises(ValueError, match=r"alexnet does not accept 1 x 16 x 16 inputs"):
        build_model("alexnet", 3, in_channels=1, image_size=16)


def test_default_arch():
    assert default_arch("features", None, 1797)[0] == "mlp"
    arch, why = default_arch("images", 28, 1800)
    assert arch == "small_cnn" and "28 px" in why
    assert default_arch("images", 64, 50_000)[0] == "small_cnn"
    arch, why = default_arch("images", 96, 1800)
    assert arch == "resnet18" and "pretrained weights" in why
    assert default_arch("images", 30, 1800)[0] == "resnet18"  # small CNN needs a multiple of 4
    with pytest.raises(ValueError, match="kind"):
        default_arch("audio", 28, 10)


def test_local_weights_skip_the_head_and_fold_rgb_into_grey(tmp_path):
    from torchvision.models import resnet18

    source = _seeded(lambda: resnet18(weights=None, num_classes=1000), seed=1)
    state = source.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "wrapped.pt")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "parallel.pt")

    for name in ("plain.pt", "wrapped.pt", "parallel.pt"):
        model = build_model("resnet18", 5, in_channels=1)
        fc_before = model.fc.weight.detach().clone()
        report = load_local_weights(model, tmp_path / name)
        assert [s[0] for s in report.skipped] == ["fc.weight", "fc.bias"], name
        assert report.skipped[0][1:] == ((1000, 512), (5, 512))
        assert report.adapted == ["conv1.weight"] and not report.missing and not report.unexpected
        assert torch.equal(model.fc.weight, fc_before)  # the head keeps its own initialisation
        assert torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
        assert torch.equal(model.bn1.running_var, source.bn1.running_var)
        assert "skipped 2 of another shape" in report.summary()
    # the folded filters see a grey image as the RGB filters see it repeated in three channels
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(model.conv1(x), source.conv1(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_local_weights_errors(tmp_path):
    model = build_model("mlp", 3, in_features=4)
    with pytest.raises(FileNotFoundError):
        load_local_weights(model, tmp_path / "none.pt")
    torch.save(build_model("small_cnn", 3, in_channels=1, image_size=8).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(ValueError, match="another architecture"):
        load_local_weights(model, tmp_path / "cnn.pt")
    torch.save({"lr": 0.1}, tmp_path / "notes.pt")
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_local_weights(model, tmp_path / "notes.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read it as a tensor checkpoint"):
        load_local_weights(model, tmp_path / "junk.pt")
    # a partial checkpoint: what it lacks is reported as missing
    other = build_model("mlp", 3, in_features=4)
    torch.save({k: v for k, v in other.state_dict().items() if k.startswith("features.")}, tmp_path / "body.pt")
    report = load_local_weights(model, tmp_path / "body.pt")
    assert report.missing == ["classifier.weight", "classifier.bias"]
    assert torch.equal(model.features[0].weight, other.features[0].weight)


def test_a_model_given_the_other_kind_of_input_is_refused_by_name():
    # Feature rows to a convolutional network, or images to the MLP: a ConfigError naming what fits,
    # not a shape error inside the first training step.
    from dataparams.config import ConfigError

    for arch in ("resnet18", "small_cnn", "mobilenet_v3_small"):
        with pytest.raises(ConfigError, match=rf"'{arch}' takes images, not feature vectors; use mlp"):
            build_model(arch, 3, in_features=8)
    with pytest.raises(ConfigError, match="'mlp' takes feature vectors .* not images; use small_cnn"):
        build_model("mlp", 3, in_channels=1, image_size=28)
