"""A small ResNet for 32x32 inputs (He et al. 2016, CIFAR layout, one block per stage)."""
from __future__ import annotations

from torch import Tensor, nn

from .geometry import Geometry, chain_geometry
from .registry import register_model


class BasicBlock(nn.Module):
    """``conv3x3(stride) → BN → ReLU → conv3x3 → BN``, plus the shortcut, then ReLU. A
    strided block's shortcut is a strided 1x1 conv with BN."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem conv, three stages of width ``widths`` with strides 1, 2, 2, GAP, linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c_in = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c_in, w, 1 if i == 0 else 2))
            c_in = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def main_path(self) -> list[nn.Module]:
        return [self.stem[0]] + [m for b in self.stages for m in (b.conv1, b.conv2)]

    @property
    def geometry(self) -> Geometry:
        return chain_geometry(self.main_path())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))


@register_model
def resnet_small(in_channels: int = 1, num_classes: int = 10) -> ResNetSmall:
    """A 3-stage ResNet for 32x32 inputs (total stride 4), GAP head."""
    return ResNetSmall(in_channels, num_classes)
