"""ImageNet ResNets in plain torch, with torchvision's exact parameter and buffer names.

He, Zhang, Ren & Sun 2016, "Deep residual learning for image recognition", in the layout
of ``torchvision.models.resnet`` ("v1.5": a bottleneck block strides in its 3x3 conv, not
in its first 1x1 conv). torchvision is not needed: a ``state_dict`` saved from
``torchvision.models.resnet18()`` / ``resnet50()`` loads here with ``--weights``, key for
key and shape for shape (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``, ...; BatchNorm buffers included). Parameters: ResNet-18 11,689,512, ResNet-50
25,557,032 (1000 classes).

=====================  =============================================================
``resnet18``           BasicBlock x (2, 2, 2, 2), widths 64..512; total stride 32, RF 435
``resnet50``           Bottleneck x (3, 4, 6, 3), widths 64..512 (x4 out); stride 32
``resnetNN-blur``      every strided conv → :class:`~shiftlab.layers.BlurConv`, the
                       max-pool → :class:`~shiftlab.layers.MaxBlurPool` (filter 3, reflect)
``resnetNN-aps``       circular convs, strided convs and the max-pool → APS, each
                       shortcut tied to its block's phase: exactly circular-invariant
=====================  =============================================================

Stem: ``conv 7x7/2 → BN → ReLU → max-pool 3x3/2``; four stages (strides 1, 2, 2, 2);
global average pooling; ``fc``. A stage's first block changes width or stride, and its
shortcut ``downsample`` is ``conv1x1(stride) → BN``. Like torchvision, a block applies one
in-place ``ReLU`` module (``relu``) twice; the probes record it as ``relu`` and ``relu#2``.

The fixes are made by :func:`shiftlab.convert.convert` from the baseline, as for the rest
of the zoo. The layers they replace get new names (``conv1`` → ``conv1.op``), every other
parameter keeps torchvision's name; ``shiftlab convert --method blurpool`` of a
torchvision checkpoint writes exactly the keys of ``resnetNN-blur``. Where shiftlab's
generic conversion differs from Zhang's antialiased ResNets (antialiased-cnns,
``pool_only=True``): Zhang keeps ``conv1`` strided, replaces the 3x3 max-pool by a 2x2
one at stride 1, and blurs a strided block conv after its BN and ReLU (before the next
conv, so his keys read ``conv2.1``); here every strided op is blurred right where it
stands, and the default filter is 3 (``[1, 2, 1]``; Zhang's package defaults to 4).
Under ``aps`` (Chaman & Dokmanić 2021) inputs whose sides are multiples of 32 keep every
APS map even-sided, which exact invariance needs.

>>> sum(p.numel() for p in resnet18().parameters())
11689512
>>> resnet18().geometry
Geometry(total_stride=32, receptive_field=435)
"""
from __future__ import annotations

from torch import Tensor, nn

from .fixed import _fixed, geometry_path
from .geometry import Geometry, chain_geometry
from .registry import register_model

EXAMPLE = (3, 32, 32)          # the small input the zoo tests run these nets at


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """``conv3x3(stride) → BN → ReLU → conv3x3 → BN``, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def main_path(self) -> list[nn.Module]:
        return [self.conv1, self.conv2]

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)   # after the main
        return self.relu(out + identity)                                  # branch, as torchvision


class Bottleneck(nn.Module):
    """``conv1x1 → BN → ReLU → conv3x3(stride) → BN → ReLU → conv1x1 (x4) → BN``, plus the
    shortcut, then ReLU (v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def main_path(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet: stem, ``layer1`` .. ``layer4`` of ``blocks`` blocks each
    (widths 64, 128, 256, 512 times the block's expansion; strides 1, 2, 2, 2), global
    average pooling, ``fc``. Initialised as torchvision does (He-normal, fan-out convs;
    BN weight 1, bias 0).

    Shape: ``(N, in_channels, H, W) → (N, num_classes)``, any ``H, W ≥ 1`` (global pooling).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int, int, int],
                 num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.c_in = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._stage(block, 64, blocks[0], 1)
        self.layer2 = self._stage(block, 128, blocks[1], 2)
        self.layer3 = self._stage(block, 256, blocks[2], 2)
        self.layer4 = self._stage(block, 512, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        c_out = planes * block.expansion
        downsample = None if stride == 1 and self.c_in == c_out else \
            nn.Sequential(conv1x1(self.c_in, c_out, stride), nn.BatchNorm2d(c_out))
        layers = [block(self.c_in, planes, stride, downsample)]
        self.c_in = c_out
        layers += [block(c_out, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def main_path(self) -> list[nn.Module]:
        """The spatial chain input → last stage: stem conv, max-pool, every block's convs."""
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [self.conv1, self.maxpool] + [m for stage in stages for b in stage for m in b.main_path()]

    @property
    def geometry(self) -> Geometry:
        return chain_geometry(geometry_path(self.main_path()))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))           # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))        # (N, 512·e, H/32, W/32)
        return self.fc(self.avgpool(x).flatten(1))                     # (N, num_classes)


@register_model(example=EXAMPLE)
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 in torchvision's layout and names (loads its state dicts); 3x224x224, 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model(example=EXAMPLE)
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 v1.5 in torchvision's layout and names (loads its state dicts); 3x224x224."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


@register_model(example=EXAMPLE)
def resnet18_blur(num_classes: int = 1000, in_channels: int = 3, filter_size: int = 3) -> ResNet:
    """resnet18 anti-aliased: BlurConv for strided convs, MaxBlurPool for the max-pool (filter 3)."""
    return _fixed(resnet18(num_classes, in_channels), "blurpool", filter_size=filter_size)


@register_model(example=EXAMPLE)
def resnet50_blur(num_classes: int = 1000, in_channels: int = 3, filter_size: int = 3) -> ResNet:
    """resnet50 anti-aliased: BlurConv for strided convs, MaxBlurPool for the max-pool (filter 3)."""
    return _fixed(resnet50(num_classes, in_channels), "blurpool", filter_size=filter_size)


@register_model(example=EXAMPLE)
def resnet18_aps(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """resnet18, circular convs, APS downsampling (shortcuts share the phase): circular-invariant."""
    return _fixed(resnet18(num_classes, in_channels), "aps", "circular")


@register_model(example=EXAMPLE)
def resnet50_aps(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """resnet50, circular convs, APS downsampling (shortcuts share the phase): circular-invariant."""
    return _fixed(resnet50(num_classes, in_channels), "aps", "circular")
