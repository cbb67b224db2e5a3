"""Seeded synthetic images, for demos and tests that need no dataset."""
from __future__ import annotations

import torch
from torch import Tensor


def synthetic_images(n: int = 256, shape=(1, 28, 28), seed: int = 0) -> Tensor:
    """``n`` smooth random images in [0, 1): white noise blurred by a 5x5 box, rescaled."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, *shape, generator=g)
    kernel = torch.ones(shape[0], 1, 5, 5) / 25
    smooth = torch.nn.functional.conv2d(noise, kernel, padding=2, groups=shape[0])
    lo = smooth.amin(dim=(1, 2, 3), keepdim=True)
    hi = smooth.amax(dim=(1, 2, 3), keepdim=True)
    return ((smooth - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1 - 1e-6)
