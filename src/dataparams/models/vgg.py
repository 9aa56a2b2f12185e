"""VGG16 with batch normalisation for 32x32 inputs (sec. 3.5, the random-label experiment).

The CIFAR variant: the 13 convolutions of VGG16 (Simonyan & Zisserman 2015) with batch norm,
then one linear classifier on the 512-d pooled feature.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["VGG16"]

_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    def __init__(self, num_classes: int = 100, *, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(512, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
