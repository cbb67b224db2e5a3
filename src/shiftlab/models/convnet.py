"""A small configurable conv net: the built-in subjects of the audit.

``ConvNet`` stacks ``conv → ReLU [→ pool]`` blocks and ends with global average pooling
and a linear classifier, so it runs on any input size. The two registered variants
isolate one claim each:

* ``conv-circular``: stride 1, circular padding — exactly shift-equivariant, and its
  pooled output exactly shift-invariant (to float rounding).
* ``conv-maxpool``: the same with a 2x2 max-pool after the first two blocks (total stride
  4) — exact only for shifts that are multiples of 4: max-pooling aliases.
* ``conv1d-circular``, ``conv1d-maxpool``: the same two for 1-D signals (``N×C×T``).
"""
from __future__ import annotations

from torch import Tensor, nn

from .geometry import Geometry, chain_geometry
from .registry import register_model


class ConvNet(nn.Module):
    """``conv(k) → ReLU [→ max-pool(2)]`` per entry of ``channels``, then GAP and a linear head.

    Args:
        in_channels: input channels. channels: output channels of each conv.
        dims: 2 for images (``Conv2d``), 1 for signals (``Conv1d``). bias: conv biases.
        kernel_size: odd conv kernel size. padding_mode: ``"zeros"`` or ``"circular"``.
        pool_after: indices of the blocks followed by a 2x2 max-pool.
        num_classes: outputs of the linear head.
    """

    def __init__(self, in_channels: int = 1, channels=(16, 32, 32), kernel_size: int = 3,
                 padding_mode: str = "circular", pool_after=(), num_classes: int = 10,
                 dims: int = 2, bias: bool = True):
        super().__init__()
        conv, pool, gap = {1: (nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
                           2: (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)}[dims]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            layers += [conv(c_in, c_out, kernel_size, padding=kernel_size // 2,
                            padding_mode=padding_mode, bias=bias), nn.ReLU()]
            if i in pool_after:
                layers.append(pool(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = gap(1)
        self.head = nn.Linear(c_in, num_classes)

    def main_path(self) -> list[nn.Module]:
        return list(self.features)

    @property
    def geometry(self) -> Geometry:
        return chain_geometry(self.main_path())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model
def conv_circular(in_channels: int = 1, num_classes: int = 10) -> ConvNet:
    """3 circular-padded 3x3 convs, stride 1, GAP head: exactly equivariant."""
    return ConvNet(in_channels, padding_mode="circular", num_classes=num_classes)


@register_model
def conv_maxpool(in_channels: int = 1, num_classes: int = 10) -> ConvNet:
    """conv-circular with 2x2 max-pools after blocks 1 and 2 (total stride 4)."""
    return ConvNet(in_channels, padding_mode="circular", pool_after=(0, 1), num_classes=num_classes)


@register_model
def conv1d_circular(in_channels: int = 1, num_classes: int = 10) -> ConvNet:
    """conv-circular for 1-D signals (N x C x T): exactly equivariant."""
    return ConvNet(in_channels, padding_mode="circular", num_classes=num_classes, dims=1)


@register_model
def conv1d_maxpool(in_channels: int = 1, num_classes: int = 10) -> ConvNet:
    """conv-maxpool for 1-D signals: max-pools of 2 after blocks 1 and 2 (stride 4)."""
    return ConvNet(in_channels, padding_mode="circular", pool_after=(0, 1), num_classes=num_classes,
                   dims=1)
