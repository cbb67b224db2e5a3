"""Anti-aliased downsampling with binomial filters (Zhang 2019, "Making convolutional
networks shift-invariant again").

The filter of size ``k`` is the normalised outer product of the binomial row
``C(k−1, 0..k−1)``: ``[1]``, ``[1, 1]``, ``[1, 2, 1]``, ``[1, 3, 3, 1]``, … ,

.. math::  K = b b^T / (\\sum b)^2,

applied to every channel alone (depthwise) after padding ``(k − 1) // 2`` before and the
rest after (asymmetric for even ``k``), then sampled every ``stride`` pixels, so an
``H×W`` map becomes ``ceil(H/stride) × ceil(W/stride)``. ``MaxBlurPool`` is a max-pool at
stride 1 followed by BlurPool, ``BlurConv`` a conv at stride 1 followed by BlurPool; both
keep the output size of the strided op they replace.

Padding (``reflect`` by default, as in Zhang's code) works on maps of any size, also those
smaller than the filter, where torch's reflect padding would raise: see
:mod:`shiftlab.layers.padding`.

>>> binomial_filter(3)
tensor([[0.0625, 0.1250, 0.0625],
        [0.1250, 0.2500, 0.1250],
        [0.0625, 0.1250, 0.0625]])
>>> blur_pool(torch.ones(1, 2, 5, 5), filter_size=3, stride=2).shape
torch.Size([1, 2, 3, 3])
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShiftlabError
from .padding import check_padding_mode, pad2d, same_padding

MAX_FILTER_SIZE = 7


def check_stride(stride) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ShiftlabError(f"stride must be a positive integer, got {stride!r}")
    return stride


def check_filter_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_FILTER_SIZE:
        raise ShiftlabError(f"filter_size must be an integer from 1 to {MAX_FILTER_SIZE}, got {size!r}")
    return size


def pair(value) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair (torch's ``_pair``, spelled out)."""
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def equal_stride(module: nn.Module, where: str) -> int:
    """The stride of a conv or pool (a pool's defaults to its kernel size), which must be the
    same along H and W; ``where`` starts the error message."""
    sy, sx = pair(module.stride if module.stride is not None else module.kernel_size)
    if sy != sx:
        raise ShiftlabError(f"{where}: strides differ along H and W ({sy}, {sx}); "
                            "only equal strides are supported")
    return sy


def at_stride_one(module: nn.Module) -> nn.Module:
    """A copy of a conv or pool with stride 1 (same weights, kernel and padding)."""
    twin = copy.deepcopy(module)
    twin.stride = (1, 1) if isinstance(module, nn.Conv2d) else 1
    return twin


def check_maps(x: Tensor, channels: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"expected an NCHW feature map (4-D tensor), got {shape}")
    if channels is not None and x.shape[1] != channels:
        raise ShiftlabError(f"this layer was built for {channels} channels, got {x.shape[1]}")


def binomial_filter(size: int, *, dtype=None, device=None) -> Tensor:
    """The ``size × size`` normalised binomial filter (sums to 1)."""
    check_filter_size(size)
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    kernel = torch.outer(row, row) / row.sum() ** 2
    return kernel.to(dtype=dtype or torch.get_default_dtype(), device=device)


def _blur(x: Tensor, kernel: Tensor, stride: int, padding: str) -> Tensor:
    k, c = kernel.shape[-1], x.shape[1]
    before, after = same_padding(k)
    x = pad2d(x, (before, after, before, after), padding)
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(c, 1, k, k)
    return F.conv2d(x, weight, stride=stride, groups=c)


def blur_pool(x: Tensor, filter_size: int = 3, stride: int = 2, padding: str = "reflect") -> Tensor:
    """Blur every channel with the binomial filter, then keep every ``stride``-th pixel.

    Shape: ``(N, C, H, W) → (N, C, ceil(H/stride), ceil(W/stride))``.
    """
    check_maps(x)
    check_stride(stride)
    check_padding_mode(padding)
    return _blur(x, binomial_filter(filter_size, dtype=x.dtype, device=x.device), stride, padding)


class BlurPool(nn.Module):
    """Module twin of :func:`blur_pool`; the filter is a non-persistent buffer.

    Args:
        channels: expected input channels (checked), or ``None`` for any.
        filter_size: 1..7 (1 = plain subsampling, 3 = ``[1, 2, 1]``, shiftlab's default;
            Zhang's antialiased-cnns defaults to 4 = ``[1, 3, 3, 1]``, ``filt_size=4``).
        stride: any positive integer. padding: ``reflect`` | ``replicate`` | ``zeros`` | ``circular``.
    """

    def __init__(self, channels: int | None = None, filter_size: int = 3, stride: int = 2,
                 padding: str = "reflect", *, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.filter_size = check_filter_size(filter_size)
        self.stride = check_stride(stride)
        self.padding = check_padding_mode(padding)
        self.register_buffer("filter", binomial_filter(filter_size, dtype=dtype, device=device),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x, self.channels)
        check_padding_mode(self.padding)
        return _blur(x, self.filter, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, filter_size={self.filter_size}, "
                f"stride={self.stride}, padding={self.padding!r}")


class Downsampled(nn.Sequential):
    """A strided op made anti-aliased: ``[pad →] op at stride 1 → down`` (BlurPool or APS).

    Children are named ``pad`` (optional), ``op`` and ``down``; the op keeps its weights.
    """

    def __init__(self, op: nn.Module, down: nn.Module, pad: nn.Module | None = None):
        parts = ([("pad", pad)] if pad is not None else []) + [("op", op), ("down", down)]
        super().__init__(OrderedDict(parts))


class MaxBlurPool(Downsampled):
    """``MaxPool2d(kernel_size, stride=1, pool_padding)`` then ``BlurPool(stride)`` (Zhang 2019).

    Its output has the size of ``MaxPool2d(kernel_size, stride, pool_padding)``.
    """

    def __init__(self, kernel_size: int = 2, stride: int = 2, filter_size: int = 3,
                 padding: str = "reflect", pool_padding: int = 0):
        super().__init__(nn.MaxPool2d(kernel_size, 1, pool_padding),
                         BlurPool(None, filter_size, stride, padding))


class BlurConv(Downsampled):
    """A copy of ``conv`` at stride 1 (same weights), then ``BlurPool`` at ``conv``'s stride.

    Its output has the size of ``conv``'s; with ``filter_size=1`` it computes ``conv`` exactly.
    Zhang puts the blur after the ReLU that follows the conv; this layer, which must stand
    where the conv stood, blurs right after the conv.
    """

    def __init__(self, conv: nn.Conv2d, filter_size: int = 3, padding: str = "reflect"):
        stride = equal_stride(conv, "BlurConv")
        super().__init__(at_stride_one(conv), BlurPool(None, filter_size, stride, padding))
