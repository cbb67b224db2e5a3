"""Exact placement of images on a larger background (no interpolation).

>>> import torch
>>> digit = torch.ones(1, 1, 2, 2)
>>> place_on_canvas(digit, (4, 4), torch.tensor([[1, 2]]))[0, 0]
tensor([[0., 0., 0., 0.],
        [0., 0., 1., 1.],
        [0., 0., 1., 1.],
        [0., 0., 0., 0.]])
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShiftlabError
from ..actions import canvas_shift


def centred_position(image_size: tuple[int, int], canvas_size: tuple[int, int]) -> tuple[int, int]:
    return ((canvas_size[0] - image_size[0]) // 2, (canvas_size[1] - image_size[1]) // 2)


def place_on_canvas(images: Tensor, canvas_size: tuple[int, int], positions=None,
                    fill: float = 0.0) -> Tensor:
    """Copy ``images (N, C, h, w)`` onto ``H×W`` canvases of value ``fill``.

    ``positions``: top-left corners, one ``(y, x)`` pair or an ``(N, 2)`` tensor; default
    centred. Every image must fit entirely: ``0 <= y <= H - h`` and ``0 <= x <= W - w``.
    """
    n, _, h, w = images.shape
    big_h, big_w = canvas_size
    if h > big_h or w > big_w:
        raise ShiftlabError(f"{h}x{w} images do not fit on a {big_h}x{big_w} canvas; "
                            "use a larger canvas")
    if positions is None:
        positions = centred_position((h, w), (big_h, big_w))
    pos = torch.as_tensor(positions, dtype=torch.int64).reshape(-1, 2).expand(n, 2)
    if (pos < 0).any() or (pos[:, 0] > big_h - h).any() or (pos[:, 1] > big_w - w).any():
        raise ShiftlabError(f"positions must keep the {h}x{w} image inside the {big_h}x{big_w} "
                            f"canvas: y in [0, {big_h - h}], x in [0, {big_w - w}]")
    padded = torch.nn.functional.pad(images, (0, big_w - w, 0, big_h - h), value=fill)
    return canvas_shift(padded, pos, fill=fill)


def random_positions(n: int, image_size: tuple[int, int], canvas_size: tuple[int, int],
                     generator: torch.Generator | None = None, region: int | None = None) -> Tensor:
    """Uniform top-left corners keeping each image inside the canvas; ``region`` limits
    them to within ``region`` pixels of the centred position."""
    cy, cx = centred_position(image_size, canvas_size)
    hi_y, hi_x = canvas_size[0] - image_size[0], canvas_size[1] - image_size[1]
    lo = torch.tensor([0, 0]) if region is None else torch.tensor([max(0, cy - region), max(0, cx - region)])
    hi = torch.tensor([hi_y, hi_x]) if region is None else \
        torch.tensor([min(hi_y, cy + region), min(hi_x, cx + region)])
    u = torch.rand(n, 2, generator=generator)
    return (lo + (u * (hi - lo + 1)).floor().to(torch.int64)).clamp(max=hi)
