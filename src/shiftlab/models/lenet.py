"""The reference experiment's net (Christian Wolf, 2020): four 5x5 convs without pooling.

``conv 1→20→40→40→5`` (kernel 5, no padding, ReLU after each), then a 2x2 max-pool and a
linear layer. Without padding every conv is exactly translation-equivariant on the overlap
(no border effects), so the only equivariance break is the final max-pool. The linear head
is sized from ``input_size`` (28 for MNIST, 38 for the sliding-digit canvas).
"""
from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


class LeNetWolf(nn.Module):
    """conv(1→20→40→40→5, k=5, valid) + ReLU, max-pool 2, linear head for ``input_size``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                 channels=(20, 40, 40, 5), kernel_size: int = 5):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = in_channels, input_size
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, kernel_size), nn.ReLU()]
            c_in, side = c_out, side - (kernel_size - 1)
        if side < 2:
            raise ValueError(f"input_size {input_size} is too small for {len(channels)} "
                             f"{kernel_size}x{kernel_size} convs")
        self.features = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(c_in * (side // 2) ** 2, num_classes)   # side: last map's width

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model
def lenet_wolf(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """Wolf's 4-conv net without pooling (k=5, valid), max-pool 2, linear head."""
    return LeNetWolf(in_channels, num_classes, input_size)
