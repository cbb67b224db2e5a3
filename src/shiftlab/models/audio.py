"""A small CNN for spectrograms ``(N, 1, F, T)``: frequency on rows, time on columns.

``audio-cnn``: three ``3×3`` convolutions without bias (so digital silence, 0 after a
``log(1 + A/ref)`` spectrogram, stays exactly 0 through every layer and a canvas shift over
silence is exact), ReLU, ``2×2`` max-pools after the first two, then a **max over all of
time within each of ``bands`` frequency bands** and a linear head on ``channels × bands``.
The time max makes the prediction invariant to time shifts wherever the features are
equivariant; the head still reads *which band* a feature is in, so the net is not
invariant along frequency. ``audio-cnn-gap`` pools over both axes (a global max): the
contrast, invariant to frequency-bin shifts too.

Any input size works (adaptive pooling); a test audits every zoo model on 28×28 inputs.

>>> import torch
>>> net = audio_cnn()
>>> net(torch.zeros(2, 1, 40, 81)).shape, net.geometry.total_stride
(torch.Size([2, 10]), 4)
"""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ShiftlabError
from .geometry import Geometry, chain_geometry
from .registry import register_model


class AudioCNN(nn.Module):
    """``[conv 3×3 → ReLU → (max-pool 2)] × 3 → max over time (per band) → linear``.

    Args:
        channels: output channels of the three convolutions.
        bands: frequency bands kept by the pooling (0 = pool frequency too: global max).
        pool_after: conv indices followed by a ``2×2`` max-pool.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels=(8, 16, 32),
                 bands: int = 10, pool_after=(0, 1)):
        super().__init__()
        if bands < 0:
            raise ShiftlabError(f"bands must be 0 (global pooling) or positive, got {bands}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.bands = bands
        self.pool = nn.AdaptiveMaxPool2d((max(bands, 1), 1))            # (C, bands, 1)
        self.head = nn.Linear(c_in * max(bands, 1), num_classes)

    def main_path(self) -> list[nn.Module]:
        return list(self.features)

    @property
    def geometry(self) -> Geometry:
        """Total stride and receptive field of the convolutional part (before the pooling)."""
        return chain_geometry(self.main_path())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model
def audio_cnn(in_channels: int = 1, num_classes: int = 10, bands: int = 10) -> AudioCNN:
    """Spectrogram CNN: 3 convs, max over time per frequency band, linear head."""
    return AudioCNN(in_channels, num_classes, bands=bands)


@register_model
def audio_cnn_gap(in_channels: int = 1, num_classes: int = 10) -> AudioCNN:
    """audio-cnn with a global max over time and frequency (invariant along both axes)."""
    return AudioCNN(in_channels, num_classes, bands=0)
