"""The reference experiment's net (Christian Wolf, 2020) and variants that isolate one claim each.

``lenet-wolf``: ``conv 1→20→40→40→5`` (kernel 5, *no padding*, ReLU after each), then a
2x2 max-pool and a linear layer. Without padding every conv is exactly
translation-equivariant on the overlap, so the final max-pool is the only break. The
linear head is **sized from the input** (``input_size``: 28 for MNIST, 38 for the
sliding-digit canvas); the CLI passes the data's size.

=========================  ==========================================================
``lenet-wolf-maxpool``     'same' zero padding, 2x2 max-pool after conv 1 and conv 2
``lenet-wolf-stride``      'same' zero padding, conv 2 and conv 3 with stride 2
``lenet-wolf-gap``         last conv gives 10 class maps, global average pool = logits
``lenet-wolf-circular``    'same' circular padding (exact under circular shifts)
=========================  ==========================================================
"""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ShiftlabError
from .geometry import Geometry, chain_geometry
from .registry import register_model

HEADS = ("linear", "gap")
PADDINGS = ("valid", "zeros", "circular")


class LeNetWolf(nn.Module):
    """Four ``k×k`` convs with ReLU, optional pools/strides in between, then a head.

    Args:
        padding: ``"valid"`` (none), ``"zeros"`` or ``"circular"`` ('same' size).
        pool_after: conv indices followed by a 2x2 max-pool.
        strides: stride of each conv.
        head: ``"linear"`` (2x2 max-pool, flatten, linear sized from ``input_size``) or
            ``"gap"`` (global average pool of the last conv's maps, which have no ReLU:
            they are the class maps, their means the logits; invariant wherever the last
            map is equivariant).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                 channels=(20, 40, 40, 5), kernel_size: int = 5, padding: str = "valid",
                 pool_after=(), strides=(1, 1, 1, 1), head: str = "linear"):
        super().__init__()
        if head not in HEADS:
            raise ShiftlabError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if padding not in PADDINGS:
            raise ShiftlabError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        if head == "gap":
            channels = (*channels[:-1], num_classes)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, (c_out, s) in enumerate(zip(channels, strides)):
            pad = 0 if padding == "valid" else kernel_size // 2
            mode = "zeros" if padding == "valid" else padding
            layers.append(nn.Conv2d(c_in, c_out, kernel_size, s, pad, padding_mode=mode))
            if not (head == "gap" and i == len(channels) - 1):   # class maps stay signed
                layers.append(nn.ReLU())
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        for conv in self.features:                    # He init: the ReLU stack starts with
            if isinstance(conv, nn.Conv2d):           # unit gain, so four convs train fast
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        self.head_kind = head
        if head == "gap":
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Identity()
        else:
            self.pool = nn.MaxPool2d(2)
            side = self._side(input_size, kernel_size, padding, pool_after, strides)
            if side < 2:
                least = self._smallest(kernel_size, padding, pool_after, strides)
                raise ShiftlabError(f"input_size {input_size} is too small for this net; "
                                    f"images need at least {least}x{least} pixels")
            self.head = nn.Linear(c_in * (side // 2) ** 2, num_classes)

    @staticmethod
    def _side(size: int, k: int, padding: str, pool_after, strides) -> int:
        for i, s in enumerate(strides):
            size = (size + (0 if padding == "valid" else 2 * (k // 2)) - k) // s + 1
            if i in pool_after:
                size //= 2
        return size

    @classmethod
    def _smallest(cls, k: int, padding: str, pool_after, strides) -> int:
        """The smallest input side whose last map is at least 2x2 (what the 2x2 max-pool needs)."""
        size = 1
        while cls._side(size, k, padding, pool_after, strides) < 2:
            size += 1
        return size

    def main_path(self) -> list[nn.Module]:
        return [*self.features, self.pool]

    @property
    def geometry(self) -> Geometry:
        """Total stride and receptive field of the spatial part (before the head)."""
        return chain_geometry(self.main_path() if self.head_kind == "linear" else self.features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model
def lenet_wolf(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """Wolf's net: 4 valid 5x5 convs, no pooling between, max-pool 2, linear head."""
    return LeNetWolf(in_channels, num_classes, input_size)


@register_model
def lenet_wolf_maxpool(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """lenet-wolf with 'same' padding and 2x2 max-pools after convs 1 and 2."""
    return LeNetWolf(in_channels, num_classes, input_size, padding="zeros", pool_after=(0, 1))


@register_model
def lenet_wolf_stride(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """lenet-wolf with 'same' padding and stride-2 convs 2 and 3."""
    return LeNetWolf(in_channels, num_classes, input_size, padding="zeros", strides=(1, 2, 2, 1))


@register_model
def lenet_wolf_gap(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """lenet-wolf whose last conv gives class maps, averaged globally (no linear head)."""
    return LeNetWolf(in_channels, num_classes, input_size, head="gap")


@register_model
def lenet_wolf_circular(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """lenet-wolf with 'same' circular padding: exactly equivariant under circular shifts."""
    return LeNetWolf(in_channels, num_classes, input_size, padding="circular")
