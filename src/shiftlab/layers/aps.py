"""Adaptive polyphase sampling (Chaman & Dokmanić 2021, "Truly shift-invariant
convolutional neural networks"), for any integer stride ``s``.

A map ``x`` of size ``H×W`` (``s`` dividing both) has ``s²`` polyphase components
``x[..., i::s, j::s]``, numbered ``p = i·s + j``. APS keeps, per sample, the component of
largest norm (``l2``, ``l1`` or ``linf`` over channels and positions; ties go to the lowest
``p``). A circular shift of ``x`` by ``δ`` permutes the components and rolls each, so the
kept one is the same content rolled by ``floor((p + δ)/s)`` and the phase becomes
``(p + δ) mod s`` per axis:

.. math::  \\mathrm{APS}(T_δ x) = T_{\\lfloor (p+δ)/s \\rfloor} \\mathrm{APS}(x).

So a net of circular-padded stride-1 layers and APS layers, ended by global pooling, is
*exactly* invariant to every integer circular shift, trained or not, when the largest-norm
component is unique (ties have measure zero for real-valued data; a tie goes to the lowest
``p``, which does not follow the shift).

When ``s`` does not divide ``H`` (or ``W``) the map is first extended circularly (rows
from the top appended at the bottom) to the next multiple of ``s``, so the output has the
``ceil(H/s)`` rows of a strided op; the identity above, and exact invariance, then fail.

In a residual block the shortcut must downsample with the phase the main branch chose:
:class:`APSShortcut` reads it from the block's :class:`APS` (which records ``last_phase``).

>>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 1, 3] = 5.0
>>> y, phase = aps_downsample(x, 2)
>>> phase.tolist(), y[0, 0].tolist()
([3], [[0.0, 5.0], [0.0, 0.0]])
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ShiftlabError
from .blurpool import BlurPool, check_maps, check_stride
from .padding import pad2d

NORMS = ("l2", "l1", "linf")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ShiftlabError(f"unknown APS norm {norm!r}; choose one of {', '.join(NORMS)}")
    return norm


def _extend(x: Tensor, stride: int) -> Tensor:
    """Extend circularly at the bottom/right to multiples of ``stride``."""
    h, w = x.shape[-2:]
    bottom, right = -h % stride, -w % stride
    return pad2d(x, (0, bottom, 0, right), "circular") if bottom or right else x


def polyphase_components(x: Tensor, stride: int) -> Tensor:
    """``(N, C, H, W) → (N, s², C, H/s, W/s)``; component ``i·s + j`` is ``x[..., i::s, j::s]``."""
    check_maps(x)
    check_stride(stride)
    x = _extend(x, stride)
    n, c, h, w = x.shape
    parts = x.reshape(n, c, h // stride, stride, w // stride, stride)
    return parts.permute(0, 3, 5, 1, 2, 4).reshape(n, stride * stride, c, h // stride, w // stride)


def component_norms(components: Tensor, norm: str = "l2") -> Tensor:
    """``(N, s², ...) → (N, s²)``; ``l2`` is compared through its square (same order)."""
    a = components.flatten(2).abs()
    if check_norm(norm) == "linf":
        return a.amax(dim=2)
    return (a * a if norm == "l2" else a).sum(dim=2)


def phase_downsample(x: Tensor, phase: Tensor, stride: int) -> Tensor:
    """Keep component ``phase[n]`` (an ``(N,)`` int tensor) of every sample ``n``."""
    comps = polyphase_components(x, stride)
    phase = torch.as_tensor(phase, device=x.device).long()
    if phase.shape != (x.shape[0],) or bool((phase < 0).any() | (phase >= stride * stride).any()):
        raise ShiftlabError(f"phase must be {x.shape[0]} indices in [0, {stride * stride}), "
                            f"got shape {tuple(phase.shape)}")
    return comps[torch.arange(x.shape[0], device=x.device), phase]


def aps_downsample(x: Tensor, stride: int = 2, norm: str = "l2") -> tuple[Tensor, Tensor]:
    """Adaptive polyphase sampling: ``(kept components (N, C, H/s, W/s), phases (N,))``."""
    comps = polyphase_components(x, stride)
    phase = component_norms(comps, norm).argmax(dim=1)     # first maximum: lowest index wins
    return comps[torch.arange(x.shape[0], device=x.device), phase], phase


class APS(nn.Module):
    """Module twin of :func:`aps_downsample`, with an optional binomial pre-blur (stride 1).

    Args:
        stride: any positive integer. norm: ``l2`` | ``l1`` | ``linf``.
        blur_filter: binomial filter size (1..7) applied first, or ``None``.
        blur_padding: the pre-blur's padding (``circular`` keeps exact invariance).

    After each call, ``last_phase`` holds the chosen phases and ``last_size`` the size of
    the map they index (read by :class:`APSShortcut`).
    """

    def __init__(self, stride: int = 2, norm: str = "l2", blur_filter: int | None = None,
                 blur_padding: str = "circular"):
        super().__init__()
        self.stride = check_stride(stride)
        self.norm = check_norm(norm)
        self.blur = None if blur_filter is None else BlurPool(None, blur_filter, 1, blur_padding)
        self.last_phase: Tensor | None = None
        self.last_size: tuple[int, int] | None = None

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x)
        if self.blur is not None:
            x = self.blur(x)
        y, self.last_phase = aps_downsample(x, self.stride, self.norm)
        self.last_size = tuple(x.shape[-2:])
        return y

    def extra_repr(self) -> str:
        return f"stride={self.stride}, norm={self.norm!r}"


class APSShortcut(nn.Module):
    """Downsample with the phase that ``source`` (the main branch's APS) just chose.

    The source must run first in the same forward pass; its phase is used once and then
    cleared, so a stale phase from an earlier batch can never be applied. ``source`` is
    held by reference, not as a child (it belongs to the main branch).
    """

    def __init__(self, source: APS):
        super().__init__()
        if not isinstance(source, APS):
            raise ShiftlabError(f"APSShortcut needs an APS layer as its source, got {type(source).__name__}")
        self._source = [source]                           # a list: not registered as a child

    @property
    def source(self) -> APS:
        return self._source[0]

    def forward(self, x: Tensor) -> Tensor:
        phase = self.source.last_phase
        if phase is None or phase.shape[0] != x.shape[0]:
            raise ShiftlabError("APSShortcut ran before its main-branch APS in this forward "
                                "pass; run the main branch first")
        if tuple(x.shape[-2:]) != self.source.last_size:
            raise ShiftlabError(f"APSShortcut got a {x.shape[-2]}x{x.shape[-1]} map but its main "
                                f"branch chose the phase on a {self.source.last_size[0]}x"
                                f"{self.source.last_size[1]} map; both must have the same size")
        self.source.last_phase = None
        return phase_downsample(x, phase, self.source.stride)

    def extra_repr(self) -> str:
        return f"stride={self.source.stride} (phase of the main branch)"
