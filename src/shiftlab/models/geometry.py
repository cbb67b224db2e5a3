"""Total stride and receptive field of a chain of layers, computed from their settings.

Along a chain, with ``j`` the input-pixel distance between neighbouring units so far and
``r`` the receptive field so far, a layer of kernel ``k``, dilation ``d`` and stride ``s``
gives ``r ← r + (k − 1)·d·j`` and then ``j ← j·s``. Zoo models list their main path
(``main_path()``); the probes measure the stride independently, and a test compares.

>>> from torch import nn
>>> chain_geometry([nn.Conv2d(1, 1, 5), nn.Conv2d(1, 1, 5), nn.MaxPool2d(2)])
Geometry(total_stride=2, receptive_field=10)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn


@dataclass(frozen=True)
class Geometry:
    total_stride: int
    receptive_field: int


def _pair(v) -> int:
    v = v if isinstance(v, int) else v[0]
    return int(v)


def chain_geometry(layers: Iterable[nn.Module]) -> Geometry:
    """Geometry of convs and pools applied one after the other (others are ignored)."""
    jump, field = 1, 1
    for m in layers:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
            k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
            d = _pair(getattr(m, "dilation", 1))
            field += (k - 1) * d * jump
            jump *= s
    return Geometry(jump, field)
