"""The small CPU CNN of the Fashion-MNIST / MNIST presets.

Two 3x3 convolutions (32 and 64 channels) with max pooling and a 128-unit hidden layer: small
enough that an epoch of 10,000 images takes seconds on two cores, and large enough to memorise
noisy labels the way WideResNet-28-10 does on CIFAR (the regime the paper studies).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """conv(32)-pool-conv(64)-pool-fc(128)-fc(K) for square images of side ``image_size``."""

    def __init__(
        self, num_classes: int = 10, *, in_channels: int = 1, image_size: int = 28, width: int = 32
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
