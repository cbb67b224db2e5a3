"""Wolf's net applied to a larger canvas without retraining: its linear head slides.

``lenet-wolf`` ends with ``flatten → Linear`` sized for a 28×28 input, whose pooled map is
``k×k`` (``k = 6``). On a bigger canvas the same weights, reshaped to a ``k×k`` conv, score
every 28×28 window (stride 2, the pool's); each class keeps its best window:

.. math::  \\mathrm{logit}_c(x) = \\max_{u}\\; \\langle W_c,\\, z(x)_{u:u+k} \\rangle + b_c,
           \\qquad z = \\mathrm{pool}(\\mathrm{features}(x)).

On a 28×28 input there is one window and the output equals ``lenet-wolf``'s. The state
dict is ``lenet-wolf``'s, so its trained weights load unchanged. The score map
(:meth:`~SlidingLeNetWolf.window_scores`) is equivariant to shifts by multiples of 2 (one
window step) on its overlap; the max over windows is invariant to such a shift whenever the
best window stays on the canvas and no window entering at the border beats it. At odd shifts
the last max-pool aliases.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ShiftlabError
from .lenet import LeNetWolf
from .registry import register_model


class SlidingLeNetWolf(LeNetWolf):
    """A :class:`LeNetWolf` (linear head) trained on ``window``-sized inputs, run on any
    input at least that large."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, window: int = 28):
        super().__init__(in_channels, num_classes, input_size=window)
        self.window = window
        self.side = self._side(window, 5, "valid", (), (1, 1, 1, 1)) // 2

    def forward(self, x: Tensor) -> Tensor:
        return self.window_scores(x).amax(dim=(2, 3))

    def window_scores(self, x: Tensor) -> Tensor:
        """Logits of every window: ``(N, classes, rows, cols)``, one step = 2 input pixels."""
        z = self.pool(self.features(x))
        if min(z.shape[-2:]) < self.side:
            raise ShiftlabError(f"input {x.shape[-2]}x{x.shape[-1]} is smaller than the "
                                f"{self.window}x{self.window} window the head was trained on")
        kernel = self.head.weight.view(self.head.out_features, z.shape[1], self.side, self.side)
        return F.conv2d(z, kernel, self.head.bias)


@register_model
def lenet_wolf_sliding(in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                       window: int = 28) -> SlidingLeNetWolf:
    """lenet-wolf's trained weights on any canvas: the linear head slides, best window wins."""
    del input_size                                      # any input of at least `window`
    return SlidingLeNetWolf(in_channels, num_classes, window)
