"""Zoo models with the fixes built in, made by :func:`shiftlab.convert.convert` from their
baselines, so ``shiftlab train --model NAME`` trains them.

=============================  ==================================================================
``lenet-wolf-blur``            lenet-wolf, final max-pool → MaxBlurPool (filter 3, reflect)
``lenet-wolf-maxpool-blur``    lenet-wolf-maxpool, both pools and the head pool → MaxBlurPool;
                               ``filter_size`` 3 (``-blur2`` / ``-blur5``: filters 2 and 5)
``lenet-wolf-stride-blur``     lenet-wolf-stride, strided convs → BlurConv, head pool → MaxBlurPool
``lenet-wolf-maxpool-aps``     circular 'same' convs, pools after convs 1 and 2 → APS, GAP head
                               (class maps): exactly invariant to circular shifts (sides ÷ 4)
``resnet-small-blur``          resnet-small, strided convs (main and shortcut) → BlurConv
``resnet-small-aps``           resnet-small with circular convs; strided convs → APS, the
                               shortcut tied to its block's phase: exactly circular-invariant
``lenet-wolf-maxpool-          circular 'same' convs, ReLUs → the paper's polynomial on the ×2
alias-free``                   grid, pools → average + ideal downsampling, GAP head: exactly
                               invariant to sub-pixel circular shifts (sides ÷ 4)
=============================  ==================================================================

"Exactly" holds when every APS finds a unique largest-norm component (ties have measure
zero for real-valued data; a tie goes to the lowest index, which does not follow the shift).

There is no ``lenet-wolf-aps``: the no-pool net's only downsampling is the max-pool before
its flatten + Linear head, which APS cannot make invariant; with circular padding and a
global-pooling head (``lenet-wolf-gap`` made circular) it has nothing left to sample.
"""
from __future__ import annotations

from torch import nn

from ..convert import convert
from ..layers import APS, BlurPool, IdealDownsample
from .geometry import Geometry, chain_geometry
from .lenet import LeNetWolf
from .registry import register_model
from .resnet import ResNetSmall


def geometry_path(modules) -> list[nn.Module]:
    """Expand converted blocks into the convs and pools :func:`chain_geometry` reads: a
    BlurPool of size k and stride s covers what a k×k pool of stride s covers; APS keeps
    one pixel of every s×s cell, like a 1×1 pool of stride s."""
    path: list[nn.Module] = []
    for m in modules:
        if isinstance(m, BlurPool):
            path.append(nn.AvgPool2d(m.filter_size, m.stride))
        elif isinstance(m, APS):
            path += geometry_path([m.blur] if m.blur is not None else [])
            path.append(nn.MaxPool2d(1, m.stride))
        elif hasattr(m, "source") and isinstance(m.source, APS):     # APSShortcut
            path.append(nn.MaxPool2d(1, m.source.stride))
        elif isinstance(m, IdealDownsample):     # stride s; its ideal filter spans the map
            path.append(nn.MaxPool2d(1, m.stride))
        elif any(True for _ in m.children()):
            path += geometry_path(m.children())
        else:
            path.append(m)
    return path


class _ConvertedPath:
    """Mixin: the main path of a converted zoo net, expanded for its ``geometry``."""

    def main_path(self) -> list[nn.Module]:
        return geometry_path(super().main_path())


class FixedLeNetWolf(_ConvertedPath, LeNetWolf):
    """A :class:`LeNetWolf` whose layers :func:`convert` replaced."""

    @property
    def geometry(self) -> Geometry:
        return chain_geometry(self.main_path() if self.head_kind == "linear"
                              else geometry_path(self.features))


class FixedResNetSmall(_ConvertedPath, ResNetSmall):
    """A :class:`ResNetSmall` whose layers :func:`convert` replaced."""


def _fixed(model: nn.Module, *methods: str, **options) -> nn.Module:
    for method in methods:
        model = convert(model, method, inplace=True, **options)[0]
    return model


@register_model
def lenet_wolf_blur(in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                    filter_size: int = 3) -> LeNetWolf:
    """lenet-wolf with its max-pool anti-aliased: MaxBlurPool, binomial filter 3."""
    return _fixed(FixedLeNetWolf(in_channels, num_classes, input_size), "blurpool", filter_size=filter_size)


@register_model
def lenet_wolf_maxpool_blur(in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                            filter_size: int = 3) -> LeNetWolf:
    """lenet-wolf-maxpool with every max-pool a MaxBlurPool (binomial filter 3)."""
    return _fixed(FixedLeNetWolf(in_channels, num_classes, input_size, padding="zeros",
                                 pool_after=(0, 1)), "blurpool", filter_size=filter_size)


@register_model
def lenet_wolf_maxpool_blur2(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """lenet-wolf-maxpool-blur with the 2-tap filter [1, 1]."""
    return lenet_wolf_maxpool_blur(in_channels, num_classes, input_size, filter_size=2)


@register_model
def lenet_wolf_maxpool_blur5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNetWolf:
    """lenet-wolf-maxpool-blur with the 5-tap filter [1, 4, 6, 4, 1]."""
    return lenet_wolf_maxpool_blur(in_channels, num_classes, input_size, filter_size=5)


@register_model
def lenet_wolf_stride_blur(in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                           filter_size: int = 3) -> LeNetWolf:
    """lenet-wolf-stride with BlurConv for its strided convs and a MaxBlurPool head pool."""
    return _fixed(FixedLeNetWolf(in_channels, num_classes, input_size, padding="zeros",
                                 strides=(1, 2, 2, 1)), "blurpool", filter_size=filter_size)


@register_model
def lenet_wolf_maxpool_aps(in_channels: int = 1, num_classes: int = 10) -> LeNetWolf:
    """Circular lenet-wolf-maxpool with APS pools and a GAP head: exactly circular-invariant."""
    return _fixed(FixedLeNetWolf(in_channels, num_classes, padding="circular", pool_after=(0, 1),
                                 head="gap"), "aps")


@register_model
def lenet_wolf_maxpool_alias_free(in_channels: int = 1, num_classes: int = 10) -> LeNetWolf:
    """Circular lenet-wolf-maxpool made alias-free (polynomial activations), GAP head."""
    return _fixed(FixedLeNetWolf(in_channels, num_classes, padding="circular", pool_after=(0, 1),
                                 head="gap"), "alias-free")


@register_model
def resnet_small_blur(in_channels: int = 1, num_classes: int = 10, filter_size: int = 3) -> ResNetSmall:
    """resnet-small with BlurConv for every strided conv (main and shortcut), filter 3."""
    return _fixed(FixedResNetSmall(in_channels, num_classes), "blurpool", filter_size=filter_size)


@register_model
def resnet_small_aps(in_channels: int = 1, num_classes: int = 10) -> ResNetSmall:
    """resnet-small, circular convs, APS downsampling (shortcuts share the phase): invariant."""
    return _fixed(FixedResNetSmall(in_channels, num_classes), "circular", "aps")
