"""p4 group convolutions (Cohen & Welling 2016): exactly equivariant to quarter turns.

The group p4 = translations ⋊ C4 (rotations by multiples of 90°). Let ``R`` be
``torch.rot90(·, 1, dims=(-2, -1))`` on images. A *p4 feature map* has shape
``(N, C, 4, H, W)``: for each channel one spatial map per rotation ``r``. ``R`` acts on it by
rotating every map and cyclically shifting the rotation axis,

.. math::  (R f)[n, c, r] = R\\big(f[n, c, r - 1 \\bmod 4]\\big)          (:func:`rotate_p4`)

* **Lifting** (image → p4): ``out[:, :, r] = x ⋆ R^r w`` (cross-correlation with the filter
  turned ``r`` times). Since ``(R x) ⋆ (R w) = R(x ⋆ w)``,  ``lift(R x) = R lift(x)``.
* **Group conv** (p4 → p4): ``out[:, :, r] = Σ_s f[:, :, s] ⋆ (R^r w)[:, :, s]`` where
  ``R^r w`` rotates the filter spatially *and* rolls its rotation axis by ``r``:
  ``(R^r w)[:, :, s] = R^r(w[:, :, s − r])``. Then ``gconv(R f) = R gconv(f)``.
* **Rotation pooling**: max (or mean) over the 4 rotations gives an ordinary map with
  ``pool(R f) = R pool(f)``; a global spatial pool after it is rot90-*invariant*.

Exactness condition: ``(x ⋆ w)`` on a grid commutes with ``R`` only when the sampled output
grid is symmetric about the image centre. With odd kernels, padding ``k // 2`` and stride
``s`` that holds iff ``s`` divides ``H − 1`` (and ``W − 1``); along a chain, iff the
*total* stride divides ``H − 1`` (e.g. 29×29 inputs for total stride 4, not 28×28).
Square inputs are required for rot90 to map the input space onto itself.

>>> torch.manual_seed(0) and None
>>> lift, x = P4Lifting(1, 2, 3, stride=2), torch.randn(1, 1, 9, 9)
>>> bool((lift(torch.rot90(x, 1, (-2, -1))) - rotate_p4(lift(x), 1)).abs().max() < 1e-5)
True
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShiftlabError
from .geometry import Geometry
from .registry import register_model

__all__ = ["P4Lifting", "P4GroupConv", "P4Pool", "P4CNN", "p4_lifting", "p4_group_conv",
           "p4_pool", "rotate_p4", "p4_cnn"]

ROTATIONS = 4


# ----------------------------------------------------------------------------- functions
def rotate_p4(f: Tensor, k: int = 1) -> Tensor:
    """The action of ``k`` quarter turns on a p4 feature map ``(N, C, 4, H, W)``."""
    _check_p4(f, "rotate_p4")
    return torch.rot90(torch.roll(f, int(k) % 4, dims=2), int(k) % 4, dims=(-2, -1))


def lifting_filters(weight: Tensor) -> Tensor:
    """``(Cout, Cin, k, k)`` → ``(Cout·4, Cin, k, k)``: each filter turned 0, 1, 2, 3 times."""
    turned = torch.stack([torch.rot90(weight, r, dims=(-2, -1)) for r in range(ROTATIONS)], 1)
    return turned.flatten(0, 1)                                   # (Cout·4, Cin, k, k)


def group_filters(weight: Tensor) -> Tensor:
    """``(Cout, Cin, 4, k, k)`` → ``(Cout·4, Cin·4, k, k)``: output rotation ``r`` uses the
    filter rolled by ``r`` along its rotation axis and turned ``r`` times. A weight stored
    as ``(Cout, Cin·4, k, k)`` (as :class:`P4GroupConv` keeps it) is read as the former."""
    if weight.ndim == 4:
        weight = weight.unflatten(1, (-1, ROTATIONS))
    turned = [torch.rot90(torch.roll(weight, r, dims=2), r, dims=(-2, -1)) for r in range(ROTATIONS)]
    return torch.stack(turned, 1).flatten(0, 1).flatten(1, 2)     # (Cout·4, Cin·4, k, k)


def p4_lifting(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
               padding: int | None = None) -> Tensor:
    """Lift an image batch ``(N, Cin, H, W)`` to a p4 map ``(N, Cout, 4, H', W')``."""
    if x.ndim != 4:
        raise ShiftlabError(f"p4 lifting expects an NCHW image batch, got shape {tuple(x.shape)}")
    k = weight.shape[-1]
    out = F.conv2d(x, lifting_filters(weight), _repeat_bias(bias), stride,
                   k // 2 if padding is None else padding)
    return out.unflatten(1, (weight.shape[0], ROTATIONS))


def p4_group_conv(f: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
                  padding: int | None = None) -> Tensor:
    """Group-convolve a p4 map ``(N, Cin, 4, H, W)`` → ``(N, Cout, 4, H', W')``; ``weight`` is
    ``(Cout, Cin, 4, k, k)`` or the same with the rotation axis folded: ``(Cout, Cin·4, k, k)``."""
    _check_p4(f, "p4 group conv")
    filters, k = group_filters(weight), weight.shape[-1]
    if filters.shape[1] != f.shape[1] * ROTATIONS:
        raise ShiftlabError(f"p4 group conv expects {filters.shape[1] // ROTATIONS} input channels, "
                            f"got a map of shape {tuple(f.shape)}")
    out = F.conv2d(f.flatten(1, 2), filters, _repeat_bias(bias), stride,
                   k // 2 if padding is None else padding)
    return out.unflatten(1, (weight.shape[0], ROTATIONS))


def p4_pool(f: Tensor, mode: str = "max") -> Tensor:
    """Rotation pooling: ``(N, C, 4, H, W)`` → ``(N, C, H, W)`` by max or mean over rotations."""
    _check_p4(f, "rotation pooling")
    if mode == "max":
        return f.amax(dim=2)
    if mode == "mean":
        return f.mean(dim=2)
    raise ShiftlabError(f"rotation pooling mode must be 'max' or 'mean', got {mode!r}")


def _repeat_bias(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.repeat_interleave(ROTATIONS)


def _check_p4(f: Tensor, what: str) -> None:
    if not isinstance(f, Tensor) or f.ndim != 5 or f.shape[2] != ROTATIONS:
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ShiftlabError(f"{what} expects a p4 feature map (N, C, 4, H, W), got {shape}")


# ----------------------------------------------------------------------------- modules
class _P4Conv(nn.Module):
    """Shared set-up: an odd square kernel, 'same'-style padding ``k // 2`` by default."""

    def __init__(self, in_channels: int, out_channels: int, weight_shape: tuple[int, ...],
                 kernel_size: int, stride: int, padding: int | None, bias: bool, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ShiftlabError(f"p4 kernels must have an odd size (a centre pixel), got {kernel_size}")
        if stride < 1:
            raise ShiftlabError(f"stride must be at least 1, got {stride}")
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.weight = nn.Parameter(torch.empty(weight_shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0], device=device, dtype=dtype)) if bias else None
        bound = math.sqrt(6 / math.prod(weight_shape[1:]))          # He (uniform) for ReLU nets
        nn.init.uniform_(self.weight, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class P4Lifting(_P4Conv):
    """Image ``(N, Cin, H, W)`` → p4 map ``(N, Cout, 4, H', W')``; ``lift(R x) = R lift(x)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, (out_channels, in_channels, kernel_size, kernel_size),
                         kernel_size, stride, padding, bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return p4_lifting(x, self.weight, self.bias, self.stride, self.padding)


class P4GroupConv(_P4Conv):
    """p4 map ``(N, Cin, 4, H, W)`` → ``(N, Cout, 4, H', W')``; ``gconv(R f) = R gconv(f)``.

    The weight is stored as ``(Cout, Cin·4, k, k)`` (index ``cin·4 + s``), i.e. the
    ``(Cout, Cin, 4, k, k)`` filter with its rotation axis folded in, so that it stays a
    4-D tensor like any conv weight (``channels_last`` and other conv tooling accept it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels,
                         (out_channels, in_channels * ROTATIONS, kernel_size, kernel_size),
                         kernel_size, stride, padding, bias, device, dtype)

    def forward(self, f: Tensor) -> Tensor:
        return p4_group_conv(f, self.weight, self.bias, self.stride, self.padding)


class P4Pool(nn.Module):
    """Rotation pooling ``(N, C, 4, H, W)`` → ``(N, C, H, W)``; ``pool(R f) = R pool(f)``."""

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in ("max", "mean"):
            raise ShiftlabError(f"rotation pooling mode must be 'max' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, f: Tensor) -> Tensor:
        return p4_pool(f, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class P4CNN(nn.Module):
    """A small p4 net in the manner of Cohen & Welling's P4CNN (2016): lifting, three group
    convs (two with stride 2), each after batch norm and ReLU, then rotation pooling, ReLU,
    global max pooling and a linear head.

    Total stride 4, so its logits are exactly rot90-invariant on square inputs with
    ``(H − 1) % 4 == 0`` (29×29, 33×33, …) in ``eval()`` mode. Its receptive field (31 px
    with the default kernels 5, 3, 5, 5) covers a whole 29×29 canvas, so the units that the
    global pool keeps see the digit's whole layout, not a part of it (with 3×3 group convs,
    a 19-px field, the same net stalls near 90 % on MNIST).

    Batch norm on a p4 map (``nn.BatchNorm3d`` on ``(N, C, 4, H, W)``) shares its statistics
    over the 4 rotations and all positions of a channel, so in eval mode it is a per-channel
    affine map and commutes with the rotation action. ReLUs inside the group part are applied
    functionally (a p4 map has 5 axes); the modules ``rotation_pool`` → ``relu`` → ``pool`` →
    ``head`` are ordinary 4-D layers.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels=(8, 16, 16),
                 pooling: str = "max", kernel_sizes=(5, 3, 5, 5)):
        super().__init__()
        c1, c2, c3 = channels
        k0, k1, k2, k3 = kernel_sizes
        self.lift = P4Lifting(in_channels, c1, k0)                 # H
        self.norm1 = nn.BatchNorm3d(c1)
        self.gconv1 = P4GroupConv(c1, c2, k1, stride=2)            # (H − 1)/2 + 1
        self.norm2 = nn.BatchNorm3d(c2)
        self.gconv2 = P4GroupConv(c2, c3, k2, stride=2)            # (H − 1)/4 + 1
        self.norm3 = nn.BatchNorm3d(c3)
        self.gconv3 = P4GroupConv(c3, c3, k3)
        self.rotation_pool = P4Pool(pooling)                       # (N, c3, H/4, W/4)
        self.relu = nn.ReLU()                                      # commutes with max over rotations
        self.pool = nn.AdaptiveMaxPool2d(1)                        # trains faster than the mean here
        self.head = nn.Linear(c3, num_classes)

    def group_layers(self) -> list[_P4Conv]:
        return [self.lift, self.gconv1, self.gconv2, self.gconv3]

    @property
    def geometry(self) -> Geometry:
        """Total stride and receptive field (``r ← r + (k − 1)·j``, then ``j ← j·s``)."""
        jump, field = 1, 1
        for layer in self.group_layers():
            field += (layer.kernel_size - 1) * jump
            jump *= layer.stride
        return Geometry(jump, field)

    def features(self, x: Tensor) -> Tensor:
        """The last p4 map ``(N, c3, 4, H', W')`` (before rotation pooling)."""
        f = self.lift(x)
        for norm, layer in ((self.norm1, self.gconv1), (self.norm2, self.gconv2), (self.norm3, self.gconv3)):
            f = layer(F.relu(norm(f)))
        return f

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ShiftlabError(f"p4-cnn needs square images (rot90 must map them onto themselves), "
                                f"got {x.shape[-2]}x{x.shape[-1]}")
        return self.head(self.pool(self.relu(self.rotation_pool(self.features(x)))).flatten(1))


@register_model
def p4_cnn(in_channels: int = 1, num_classes: int = 10) -> P4CNN:
    """p4 group-conv net (lifting, group convs, rotation pooling): rot90-invariant logits."""
    return P4CNN(in_channels, num_classes)
