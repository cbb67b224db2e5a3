"""The spatial rank of maps and of torch layers: one place that checks shapes, for the
actions, the law and every layer in :mod:`shiftlab.layers`.

A batch has two leading axes, samples ``N`` and channels ``C``, then ``d`` spatial axes:
``d = 1`` for signals ``N×C×T`` (audio, time series, one spectrogram row), ``d = 2`` for
images ``N×C×H×W``. Every layer here is written once for any ``d`` in :data:`SPATIAL_RANKS`.

Convention: functions take the rank from the input (3-D tensor → ``d = 1``, 4-D → ``d = 2``);
modules are built for one rank (``dims=2`` by default, like ``nn.MaxPool2d``; ``dims=1`` for
signals) and refuse the other with a one-line :class:`ShiftlabError`, because a 3-D tensor
fed to an image layer is more often a missing batch axis than a signal.

>>> spatial_rank(torch.zeros(8, 2, 100)), spatial_rank(torch.zeros(8, 1, 28, 28))
(1, 2)
>>> per_axis(3, 2), per_axis((2,), 1), module_rank(nn.Conv1d(1, 1, 3)), module_rank(nn.ReLU())
((3, 3), (2,), 1, None)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ShiftlabError

SPATIAL_RANKS = (1, 2)
LAYOUT = {1: "N×C×T signal (3-D tensor)", 2: "N×C×H×W map (4-D tensor)"}
KIND = {1: "N×C×T signals", 2: "N×C×H×W images"}
_MODULES_BY_RANK = {
    1: (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
        nn.FractionalMaxPool2d),
}


def check_dims(dims) -> int:
    """``dims`` must be a spatial rank in :data:`SPATIAL_RANKS`."""
    if isinstance(dims, bool) or dims not in SPATIAL_RANKS:
        raise ShiftlabError(f"dims must be 1 ({KIND[1]}) or 2 ({KIND[2]}), got {dims!r}")
    return dims


def spatial_rank(x, rank: int | None = None) -> int:
    """The number of spatial axes of an ``N×C×T`` or ``N×C×H×W`` tensor (1 or 2); with
    ``rank`` given, the tensor must have exactly that many."""
    if not isinstance(x, Tensor):
        raise ShiftlabError(f"expected a tensor, an {LAYOUT[1]} or an {LAYOUT[2]}, got {type(x).__name__}")
    if x.ndim - 2 not in SPATIAL_RANKS:
        raise ShiftlabError(f"expected an {LAYOUT[1]} or an {LAYOUT[2]}, got shape {tuple(x.shape)}")
    if rank is not None and x.ndim - 2 != rank:
        raise ShiftlabError(f"expected {KIND[rank]} ({LAYOUT[rank].split(' (')[1][:-1]}), got "
                            f"shape {tuple(x.shape)}")
    return x.ndim - 2


def check_maps(x, channels: int | None = None, dims: int | None = None, who: str = "this layer") -> int:
    """Check a batch of maps and return its spatial rank.

    ``dims`` (if given) is the rank ``who`` was built for; ``channels`` (if given) the
    channel count it expects. Every spatial side must be at least 1.
    """
    if dims is not None and isinstance(x, Tensor) and x.ndim != dims + 2:
        other = {1: 2, 2: 1}[dims]
        hint = f"; build it with dims={other} for {KIND[other]}" if x.ndim == other + 2 else ""
        raise ShiftlabError(f"{who} was built for dims={dims} ({KIND[dims]}): expected a "
                            f"{dims + 2}-D tensor, got shape {tuple(x.shape)}{hint}")
    d = spatial_rank(x)
    if min(x.shape[2:]) < 1:
        raise ShiftlabError(f"{who} got an empty map of shape {tuple(x.shape)}; every spatial side must be 1 or more")
    if channels is not None and x.shape[1] != channels:
        raise ShiftlabError(f"{who} was built for {channels} channels, got {x.shape[1]}")
    return d


def per_axis(value, dims: int) -> tuple[int, ...]:
    """``value`` for each of ``dims`` axes, from an int or a sequence of ``dims`` ints
    (torch's ``_single`` / ``_pair``, spelled out)."""
    if isinstance(value, (tuple, list)):
        if len(value) != dims:
            raise ShiftlabError(f"expected {dims} value(s), one per spatial axis, got {tuple(value)}")
        return tuple(int(v) for v in value)
    return (int(value),) * dims


def module_rank(module: nn.Module) -> int | None:
    """The spatial rank a torch conv or pool works on (``Conv1d`` → 1, ``MaxPool2d`` → 2),
    ``None`` for other modules."""
    for d, kinds in _MODULES_BY_RANK.items():
        if isinstance(module, kinds):
            return d
    return None


def size_text(sizes) -> str:
    """``(12,)`` → ``'12'``, ``(7, 9)`` → ``'7x9'``: a map size in a message."""
    return "x".join(str(int(s)) for s in sizes)


def check_model_fits(model: nn.Module, x: Tensor) -> None:
    """A one-line error when ``x`` (``N×C×…``) has another spatial rank or channel count
    than ``model``'s first convolution or pooling expects (torch would read a signal given
    to a ``Conv2d`` as one unbatched image and fail later, far from the cause)."""
    first = next((m for m in model.modules() if module_rank(m) is not None), None)
    if first is None:
        return
    rank, got = module_rank(first), x.ndim - 2
    if rank != got:
        raise ShiftlabError(
            f"the model starts with a {type(first).__name__} ({rank}-D inputs) but the data are "
            f"{ {1: '1-D signals (N×C×T)', 2: '2-D images (N×C×H×W)'}.get(got, f'{x.ndim}-D tensors') }"
            f" of shape {tuple(x.shape)}; pick a model for this data")
    channels = getattr(first, "in_channels", None)
    if channels is not None and x.shape[1] != channels:
        raise ShiftlabError(f"the model expects {channels}-channel inputs, the data has "
                            f"{x.shape[1]}; convert the data or pick another model")
