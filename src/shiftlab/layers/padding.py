"""Padding of ``N×C×T`` signals and ``N×C×H×W`` maps by index arithmetic, so every mode
works on maps of any size, along any number of spatial axes.

``torch.nn.functional.pad`` refuses ``reflect`` when the pad is not smaller than the map
and ``circular`` when it is larger; small feature maps (a 2x2 map, or a 3-sample signal,
under a 7-tap filter) hit both. Here each padded position ``i ∈ [−before, n + after)`` of a
length-``n`` axis reads the source index

* ``circular``:  ``i mod n`` (the periodic extension),
* ``replicate``: ``clamp(i, 0, n − 1)``,
* ``reflect``:   the mirror without repeating the edge, extended periodically with period
  ``2(n − 1)`` (numpy's ``reflect``; equal to torch's wherever torch accepts the pad; a
  1-sample axis repeats itself),
* ``zeros``:     zero outside the map.

Convention: ``padding`` lists ``(before, after)`` per spatial axis, first spatial axis first:
``(left, right)`` for a signal, ``(top, bottom, left, right)`` for an image. (torch's
``F.pad`` lists the *last* axis first.) The axes are padded independently, so a 2-D pad is
the 1-D pad applied along H, then along W.

>>> x = torch.tensor([[[1., 2., 3.]]])                   # one signal of length 3
>>> pad(x, (2, 2), "reflect")[0, 0].tolist()
[3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]
>>> pad2d(x[None], (0, 0, 4, 0), "circular")[0, 0, 0].tolist()
[3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
>>> same_padding(4), same_padding((3, 4))
((1, 2), (1, 1, 1, 2))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShiftlabError
from ..shapes import LAYOUT, SPATIAL_RANKS, check_maps

PADDING_MODES = ("reflect", "replicate", "zeros", "circular")


def check_padding_mode(mode: str) -> str:
    if mode not in PADDING_MODES:
        raise ShiftlabError(f"unknown padding {mode!r}; choose one of {', '.join(PADDING_MODES)}")
    return mode


def same_padding(size) -> tuple[int, ...]:
    """Pads that keep a ``size``-tap filter's output size at stride 1: ``(size − 1) // 2``
    before and the rest after (asymmetric for even sizes).

    ``size`` is an int (one axis: ``(before, after)``) or a kernel size per axis, such as a
    ``Conv1d``'s ``(k,)`` or a ``Conv2d``'s ``(kh, kw)``: then the flat pads of every axis,
    in :func:`pad`'s order.
    """
    if isinstance(size, (tuple, list)):
        return tuple(p for k in size for p in same_padding(int(k)))
    before = (size - 1) // 2
    return before, size - 1 - before


def _check_pads(padding, dims: int | None = None) -> tuple[int, ...]:
    try:
        pads = tuple(int(p) for p in padding)
    except (TypeError, ValueError):
        raise ShiftlabError(f"padding must be a tuple of (before, after) ints per spatial axis, "
                            f"got {padding!r}") from None
    if len(pads) // 2 not in SPATIAL_RANKS or len(pads) % 2 or (dims and len(pads) != 2 * dims):
        want = f"{2 * dims} numbers" if dims else "2 numbers (left, right) or 4 (top, bottom, left, right)"
        raise ShiftlabError(f"padding must be {want}, got {padding!r}")
    if min(pads) < 0:
        raise ShiftlabError(f"padding must be 0 or more, got {padding!r}")
    return pads


def int_mod(i: Tensor, n) -> Tensor:
    """``i mod n`` (non-negative) for an int tensor ``i`` and an int or a symbolic size ``n``.

    ``n`` enters as a 0-d tensor: the ONNX exporter cannot lower ``tensor % size`` when the
    size is dynamic (a ``torch.export`` symbol), but lowers tensor-by-tensor ``Mod``.
    """
    return torch.remainder(i, torch.zeros((), dtype=i.dtype, device=i.device) + n)


def source_indices(n: int, before: int, after: int, mode: str, device=None) -> Tensor:
    """Index into a length-``n`` axis for each of the ``before + n + after`` padded positions."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "circular":
        return int_mod(i, n)
    if mode == "replicate":
        return i.clamp(0, n - 1)
    # reflect: the mirror with period 2(n − 1); one sample (period 0) reflects onto itself
    period = torch.clamp(torch.zeros((), dtype=i.dtype, device=i.device) + 2 * (n - 1), min=1)
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - i)


def pad(x: Tensor, padding, mode: str = "reflect") -> Tensor:
    """Pad the last ``len(padding) // 2`` axes of ``x`` by ``padding`` in ``mode``.

    Shape: ``(N, C, T) → (N, C, T + l + r)`` for ``padding = (l, r)``;
    ``(N, C, H, W) → (N, C, H + t + b, W + l + r)`` for ``(t, b, l, r)``.
    """
    check_padding_mode(mode)
    pads = _check_pads(padding)
    d = len(pads) // 2
    if not isinstance(x, Tensor) or x.ndim != d + 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"padding {pads} is for an {LAYOUT[d]}, got {shape}")
    check_maps(x, who="pad")
    if mode == "zeros":
        return F.pad(x, tuple(p for a in reversed(range(d)) for p in pads[2 * a:2 * a + 2]))
    for a in range(d):                                   # axis a of the spatial axes
        axis = 2 + a
        x = x.index_select(axis, source_indices(x.shape[axis], pads[2 * a], pads[2 * a + 1], mode, x.device))
    return x


def pad1d(x: Tensor, padding: tuple[int, int], mode: str = "reflect") -> Tensor:
    """Pad a signal's time axis by ``padding = (left, right)`` in ``mode`` (see :func:`pad`)."""
    return pad(x, _check_pads(padding, 1), mode)


def pad2d(x: Tensor, padding: tuple[int, int, int, int], mode: str = "reflect") -> Tensor:
    """Pad an image's last two axes by ``padding = (top, bottom, left, right)`` in ``mode``."""
    return pad(x, _check_pads(padding, 2), mode)


class Pad(nn.Module):
    """Module twin of :func:`pad`; its rank is ``len(padding) // 2`` and it refuses inputs
    of another rank with one line. ``mode`` may be changed after construction (``convert``
    makes pads circular)."""

    def __init__(self, padding, mode: str = "circular"):
        super().__init__()
        self.padding = _check_pads(padding, getattr(self, "DIMS", None))
        self.dims = len(self.padding) // 2
        self.mode = check_padding_mode(mode)

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x, dims=self.dims, who=type(self).__name__)
        return pad(x, self.padding, self.mode)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, mode={self.mode!r}"


class Pad1d(Pad):
    """:class:`Pad` for signals; ``padding`` is ``(left, right)``."""
    DIMS = 1


class Pad2d(Pad):
    """:class:`Pad` for images; ``padding`` is ``(top, bottom, left, right)``."""
    DIMS = 2
