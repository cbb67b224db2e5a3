"""Anti-aliased downsampling with binomial filters (Zhang 2019, "Making convolutional
networks shift-invariant again"), for signals ``N×C×T`` and images ``N×C×H×W`` alike.

The filter of size ``k`` is separable: the binomial row ``b = C(k−1, 0..k−1)`` —
``[1]``, ``[1, 1]``, ``[1, 2, 1]``, ``[1, 3, 3, 1]``, … — normalised, along each of the
``d`` spatial axes,

.. math::  K = b / \\textstyle\\sum b \\;(d = 1), \\qquad K = b b^T / (\\sum b)^2 \\;(d = 2),

applied to every channel alone (depthwise) after padding ``(k − 1) // 2`` before and the
rest after along each axis (asymmetric for even ``k``), then sampled every ``stride``
samples, so a length-``T`` signal becomes ``ceil(T/stride)`` long and an ``H×W`` map
``ceil(H/stride) × ceil(W/stride)``:

.. math::  \\mathrm{BlurPool}(x)[c, i] = \\sum_{j} K[j]\\, \\mathrm{pad}(x)[c, s\\,i + j].

``MaxBlurPool`` is a max-pool at stride 1 followed by BlurPool, ``BlurConv`` a conv at
stride 1 followed by BlurPool; both keep the output size of the strided op they replace.
With circular padding, BlurPool commutes with circular shifts by multiples of the stride:
``BlurPool(T_{sδ} x) = T_δ BlurPool(x)`` (``T_δ`` = ``torch.roll`` by ``δ``).

Padding (``reflect`` by default, as in Zhang's code) works on maps of any size, also those
smaller than the filter, where torch's reflect padding would raise: see
:mod:`shiftlab.layers.padding`. shiftlab's default filter size is 3 (``[1, 2, 1]``);
Zhang's antialiased-cnns defaults to ``filt_size=4`` (``[1, 3, 3, 1]``).

Convention: functions take the rank from the input (3-D → signal, 4-D → image); modules
take ``dims=1 | 2`` at construction (default 2) and refuse the other rank with one line.

>>> binomial_filter(3)
tensor([[0.0625, 0.1250, 0.0625],
        [0.1250, 0.2500, 0.1250],
        [0.0625, 0.1250, 0.0625]])
>>> binomial_filter(4, dims=1)
tensor([0.1250, 0.3750, 0.3750, 0.1250])
>>> blur_pool(torch.ones(1, 2, 5, 5), filter_size=3, stride=2).shape
torch.Size([1, 2, 3, 3])
>>> blur_pool(torch.tensor([[[0., 0., 4., 0., 0., 0.]]]), 3, stride=2)
tensor([[[0., 2., 0.]]])
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShiftlabError
from .padding import check_padding_mode, pad, same_padding
from ..shapes import check_dims, check_maps, module_rank, per_axis

MAX_FILTER_SIZE = 7
_CONV = {1: F.conv1d, 2: F.conv2d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}


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
    return per_axis(value, 2)


def equal_stride(module: nn.Module, where: str) -> int:
    """The stride of a conv or pool of any rank (a pool's defaults to its kernel size), which
    must be the same along every axis (H and W); ``where`` starts the error message."""
    value = module.stride if module.stride is not None else module.kernel_size
    strides = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),)
    if len(set(strides)) > 1:
        raise ShiftlabError(f"{where}: strides differ along H and W {strides}; "
                            "only equal strides are supported")
    return strides[0]


def at_stride_one(module: nn.Module) -> nn.Module:
    """A copy of a conv or pool with stride 1 (same weights, kernel and padding)."""
    twin = copy.deepcopy(module)
    twin.stride = (1,) * len(module.stride) if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1
    return twin


def binomial_filter(size: int, *, dims: int = 2, dtype=None, device=None) -> Tensor:
    """The normalised binomial filter (sums to 1): ``size`` taps for ``dims=1``,
    ``size × size`` (the outer product of the row with itself) for ``dims=2``."""
    check_filter_size(size)
    check_dims(dims)
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    row = row / row.sum()
    kernel = row if dims == 1 else torch.outer(row, row)
    return kernel.to(dtype=dtype or torch.get_default_dtype(), device=device)


def _blur(x: Tensor, kernel: Tensor, stride: int, padding: str) -> Tensor:
    """Depthwise ``kernel`` (``d`` axes) after 'same' padding, sampled every ``stride``.

    The filter is expanded to ``x``'s channel count, a Python int (static) when exported,
    so the ONNX graph holds a constant ``C×1×k×k`` filter and reads nothing at run time
    (tests/test_onnx.py checks every Conv weight is an initializer). A channel-independent
    form (channels folded into the batch, one ``1×1×k×k`` filter) measured 2.4–11x slower on
    CPU, so the grouped convolution stays.
    """
    d, k, c = kernel.ndim, kernel.shape[-1], x.shape[1]
    x = pad(x, same_padding((k,) * d), padding)
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(c, 1, *kernel.shape)
    return _CONV[d](x, weight, stride=stride, groups=c)


def blur_pool(x: Tensor, filter_size: int = 3, stride: int = 2, padding: str = "reflect") -> Tensor:
    """Blur every channel with the binomial filter, then keep every ``stride``-th sample.

    Shape: ``(N, C, T) → (N, C, ceil(T/stride))``;
    ``(N, C, H, W) → (N, C, ceil(H/stride), ceil(W/stride))``; the rank comes from ``x``.
    """
    d = check_maps(x, who="blur_pool")
    check_stride(stride)
    check_padding_mode(padding)
    return _blur(x, binomial_filter(filter_size, dims=d, dtype=x.dtype, device=x.device), stride, padding)


class BlurPool(nn.Module):
    """Module twin of :func:`blur_pool`; the filter is a non-persistent buffer.

    Args:
        channels: expected input channels (checked), or ``None`` for any.
        filter_size: 1..7 (1 = plain subsampling, 3 = ``[1, 2, 1]``, shiftlab's default;
            Zhang's antialiased-cnns defaults to 4 = ``[1, 3, 3, 1]``, ``filt_size=4``).
        stride: any positive integer. padding: ``reflect`` | ``replicate`` | ``zeros`` | ``circular``.
        dims: 2 for ``N×C×H×W`` images (default), 1 for ``N×C×T`` signals; the other rank
            is refused.

    Shape: ``(N, C, T) → (N, C, ceil(T/s))`` or ``(N, C, H, W) → (N, C, ceil(H/s), ceil(W/s))``.
    """

    def __init__(self, channels: int | None = None, filter_size: int = 3, stride: int = 2,
                 padding: str = "reflect", *, dims: int = 2, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.filter_size = check_filter_size(filter_size)
        self.stride = check_stride(stride)
        self.padding = check_padding_mode(padding)
        self.dims = check_dims(dims)
        self.register_buffer("filter", binomial_filter(filter_size, dims=dims, dtype=dtype, device=device),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x, self.channels, self.dims, who="BlurPool")
        check_padding_mode(self.padding)
        return _blur(x, self.filter, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, filter_size={self.filter_size}, "
                f"stride={self.stride}, padding={self.padding!r}, dims={self.dims}")


class Downsampled(nn.Sequential):
    """A strided op made anti-aliased: ``[pad →] op at stride 1 → down`` (BlurPool or APS).

    Children are named ``pad`` (optional), ``op`` and ``down``; the op keeps its weights.
    ``dims`` is the rank of ``down`` (``None`` if it has none); inputs of another rank are
    refused with one line before the op runs.
    """

    def __init__(self, op: nn.Module, down: nn.Module, pad: nn.Module | None = None):
        parts = ([("pad", pad)] if pad is not None else []) + [("op", op), ("down", down)]
        super().__init__(OrderedDict(parts))

    @property
    def dims(self) -> int | None:
        return getattr(self.down, "dims", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.dims is not None:
            check_maps(x, dims=self.dims, who=type(self).__name__)
        return super().forward(x)


class MaxBlurPool(Downsampled):
    """``MaxPool{1,2}d(kernel_size, stride=1, pool_padding)`` then ``BlurPool(stride)`` (Zhang 2019).

    Its output has the size of ``MaxPool{1,2}d(kernel_size, stride, pool_padding)``;
    ``dims`` chooses the rank as in :class:`BlurPool` (``kernel_size`` and ``pool_padding``
    take what ``nn.MaxPool1d`` / ``nn.MaxPool2d`` take).
    """

    def __init__(self, kernel_size=2, stride: int = 2, filter_size: int = 3,
                 padding: str = "reflect", pool_padding=0, *, dims: int = 2, device=None, dtype=None):
        super().__init__(_MAX_POOL[check_dims(dims)](kernel_size, 1, pool_padding),
                         BlurPool(None, filter_size, stride, padding, dims=dims, device=device, dtype=dtype))


class BlurConv(Downsampled):
    """A copy of ``conv`` (a ``Conv1d`` or ``Conv2d``) at stride 1 (same weights), then
    ``BlurPool`` of the conv's rank at ``conv``'s stride.

    Its output has the size of ``conv``'s; with ``filter_size=1`` it computes ``conv`` exactly.
    Zhang puts the blur after the ReLU that follows the conv; this layer, which must stand
    where the conv stood, blurs right after the conv.
    """

    def __init__(self, conv: nn.Module, filter_size: int = 3, padding: str = "reflect"):
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
            raise ShiftlabError(f"BlurConv needs a Conv1d or Conv2d, got {type(conv).__name__}")
        stride = equal_stride(conv, "BlurConv")
        super().__init__(at_stride_one(conv),
                         BlurPool(None, filter_size, stride, padding, dims=module_rank(conv),
                                  device=conv.weight.device, dtype=conv.weight.dtype))
