"""Models used by the presets, built by name with :func:`build_model`."""

from __future__ import annotations

from torch import nn

from dataparams.models.small_cnn import SmallCNN
from dataparams.models.vgg import VGG16
from dataparams.models.wide_resnet import WideResNet, wrn28_10

__all__ = ["ARCHITECTURES", "VGG16", "SmallCNN", "WideResNet", "build_model", "wrn28_10"]

ARCHITECTURES = ("small_cnn", "wrn28_10", "resnet18", "vgg16")


def build_model(
    arch: str, num_classes: int, *, in_channels: int = 3, image_size: int = 32, dropout: float = 0.0
) -> nn.Module:
    """Build ``arch`` for inputs of ``in_channels`` x ``image_size`` x ``image_size``.

    ``resnet18`` is torchvision's (the paper's ImageNet / WebVision network), randomly
    initialised: no weights are downloaded.
    """
    if arch == "small_cnn":
        return SmallCNN(num_classes, in_channels=in_channels, image_size=image_size)
    if arch == "wrn28_10":
        return wrn28_10(num_classes, dropout=dropout, in_channels=in_channels)
    if arch == "vgg16":
        return VGG16(num_classes, in_channels=in_channels, dropout=dropout)
    if arch == "resnet18":
        from torchvision.models import resnet18

        model = resnet18(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return model
    raise ValueError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
