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

from torch import nn

from ..errors import ShiftlabError
from .convnet import ConvNet
from .registry import register_model


class AudioCNN(ConvNet):
    """``[conv 3×3 → ReLU → (max-pool 2)] × 3 → max over time (per band) → linear``: a
    :class:`~shiftlab.models.convnet.ConvNet` without biases, zero padding, He-initialised,
    with a per-band max instead of the global average.

    Args:
        channels: output channels of the three convolutions.
        bands: frequency bands kept by the pooling (0 = pool frequency too: global max).
        pool_after: conv indices followed by a ``2×2`` max-pool.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels=(8, 16, 32),
                 bands: int = 10, pool_after=(0, 1)):
        if bands < 0:
            raise ShiftlabError(f"bands must be 0 (global pooling) or positive, got {bands}")
        super().__init__(in_channels, channels, kernel_size=3, padding_mode="zeros",
                         pool_after=pool_after, num_classes=num_classes, bias=False)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.bands = bands
        self.pool = nn.AdaptiveMaxPool2d((max(bands, 1), 1))            # (C, bands, 1)
        self.head = nn.Linear(channels[-1] * max(bands, 1), num_classes)


@register_model
def audio_cnn(in_channels: int = 1, num_classes: int = 10, bands: int = 10) -> AudioCNN:
    """Spectrogram CNN: 3 convs, max over time per frequency band, linear head."""
    return AudioCNN(in_channels, num_classes, bands=bands)


@register_model
def audio_cnn_gap(in_channels: int = 1, num_classes: int = 10) -> AudioCNN:
    """audio-cnn with a global max over time and frequency (invariant along both axes)."""
    return AudioCNN(in_channels, num_classes, bands=0)
