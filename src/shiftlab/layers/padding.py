"""Padding of NCHW maps by index arithmetic, so every mode works on maps of any size.

``torch.nn.functional.pad`` refuses ``reflect`` when the pad is not smaller than the map
and ``circular`` when it is larger; small feature maps (a 2x2 map under a 7-tap filter)
hit both. Here each padded position reads the source index

* ``circular``:  ``i mod n`` (the periodic extension),
* ``replicate``: ``clamp(i, 0, n − 1)``,
* ``reflect``:   the mirror without repeating the edge, extended periodically with period
  ``2(n − 1)`` (numpy's ``reflect``; equal to torch's wherever torch accepts the pad; a
  1-pixel map repeats itself),
* ``zeros``:     zero outside the map.

>>> x = torch.tensor([[[[1., 2., 3.]]]])
>>> pad2d(x, (0, 0, 2, 2), "reflect")[0, 0, 0].tolist()
[3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]
>>> pad2d(x, (0, 0, 4, 0), "circular")[0, 0, 0].tolist()
[3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShiftlabError

PADDING_MODES = ("reflect", "replicate", "zeros", "circular")


def check_padding_mode(mode: str) -> str:
    if mode not in PADDING_MODES:
        raise ShiftlabError(f"unknown padding {mode!r}; choose one of {', '.join(PADDING_MODES)}")
    return mode


def same_padding(size: int) -> tuple[int, int]:
    """Pads ``(before, after)`` that keep a ``size``-tap filter's output size at stride 1:
    ``(size − 1) // 2`` before and the rest after (asymmetric for even sizes)."""
    before = (size - 1) // 2
    return before, size - 1 - before


def source_indices(n: int, before: int, after: int, mode: str, device=None) -> Tensor:
    """Index into a length-``n`` axis for each of the ``before + n + after`` padded positions."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "circular":
        return i % n
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if n == 1:                                           # reflect on one pixel: itself
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i % period
    return torch.where(i < n, i, period - i)


def pad2d(x: Tensor, padding: tuple[int, int, int, int], mode: str = "reflect") -> Tensor:
    """Pad the last two axes by ``padding = (top, bottom, left, right)`` in ``mode``."""
    check_padding_mode(mode)
    if x.ndim != 4:
        raise ShiftlabError(f"expected an NCHW tensor, got shape {tuple(x.shape)}")
    top, bottom, left, right = (int(p) for p in padding)
    if min(top, bottom, left, right) < 0:
        raise ShiftlabError(f"padding must be 0 or more, got {padding}")
    if mode == "zeros":
        return F.pad(x, (left, right, top, bottom))
    rows = source_indices(x.shape[-2], top, bottom, mode, x.device)
    cols = source_indices(x.shape[-1], left, right, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class Pad2d(nn.Module):
    """Module twin of :func:`pad2d`; ``padding`` is ``(top, bottom, left, right)``."""

    def __init__(self, padding: tuple[int, int, int, int], mode: str = "circular"):
        super().__init__()
        self.padding = tuple(int(p) for p in padding)
        self.mode = check_padding_mode(mode)

    def forward(self, x: Tensor) -> Tensor:
        return pad2d(x, self.padding, self.mode)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, mode={self.mode!r}"
