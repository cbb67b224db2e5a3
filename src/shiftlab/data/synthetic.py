"""Seeded synthetic images and signals, for demos and tests that need no dataset."""
from __future__ import annotations

import torch
from torch import Tensor


def synthetic_images(n: int = 256, shape=(1, 28, 28), seed: int = 0) -> Tensor:
    """``n`` smooth random inputs in [0, 1): white noise blurred by a box of 5 per spatial
    axis, rescaled. ``shape`` is ``(C, H, W)`` for images or ``(C, T)`` for signals."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, *shape, generator=g)
    rank = len(shape) - 1
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d)[rank - 1]
    kernel = torch.ones(shape[0], 1, *([5] * rank)) / 5 ** rank
    smooth = conv(noise, kernel, padding=2, groups=shape[0])
    dims = tuple(range(1, rank + 2))
    lo = smooth.amin(dim=dims, keepdim=True)
    hi = smooth.amax(dim=dims, keepdim=True)
    return ((smooth - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1 - 1e-6)
