"""Adaptive polyphase sampling (Chaman & Dokmanić 2021, "Truly shift-invariant
convolutional neural networks"), for any integer stride ``s``, on signals ``N×C×T`` and
images ``N×C×H×W`` alike.

A map ``x`` with ``d`` spatial axes (``s`` dividing every side) has ``s^d`` polyphase
components: ``x[..., i::s]`` for a signal (``p = i``, ``s`` of them) and
``x[..., i::s, j::s]`` for an image (``p = i·s + j``, ``s²`` of them; row-major in general).
APS keeps, per sample, the component of largest norm (``l2``, ``l1`` or ``linf`` over
channels and positions; ties go to the lowest ``p``). A circular shift of ``x`` by ``δ``
(``torch.roll``: ``(T_δ x)[t] = x[t − δ]``) permutes the components and rolls each, so the
kept one is the same content rolled by ``floor((p + δ)/s)`` and the phase becomes
``(p + δ) mod s``, per axis:

.. math::  \\mathrm{APS}(T_δ x) = T_{\\lfloor (p+δ)/s \\rfloor} \\mathrm{APS}(x).

So a net of circular-padded stride-1 layers and APS layers, ended by global pooling, is
*exactly* invariant to every integer circular shift, trained or not, when the largest-norm
component is unique (ties have measure zero for real-valued data; a tie goes to the lowest
``p``, which does not follow the shift).

Ties between *different* components are not of measure zero in three cases; the choice
then falls to rounding or to the lowest ``p`` and invariance is lost:

* ``norm="linf"`` when the largest value lies in a constant channel (a ReLU channel whose
  input is all zero holds ``ReLU(bias)`` everywhere), since every component holds it.

After a binomial pre-blur on non-negative maps (after a ReLU or a max-pool):

* ``norm="l1"`` at stride 2, any filter size ≥ 2: the binomial row puts exactly half its
  mass on even taps and half on odd ones (``(1 − 1)^{k−1} = 0``), so with circular padding
  every stride-2 component has the same l1 norm;
* an even filter size (2, 4, 6), any norm: a map that is one isolated positive sample
  (common on small, sparse ReLU maps) blurred by ``[1, 3, 3, 1]`` is ``[1, 3, 3, 1]``,
  whose stride-2 components ``[1, 3]`` and ``[3, 1]`` have equal norms.

So prefer ``l2`` (the paper's choice) and, with a pre-blur, an odd size (3, 5, 7).

When ``s`` does not divide a side the map is first extended circularly (samples from the
start appended at the end) to the next multiple of ``s``, so the output has the
``ceil(T/s)`` samples of a strided op; the identity above, and exact invariance, then fail.

In a residual block the shortcut must downsample with the phase the main branch chose:
:class:`APSShortcut` reads it from the block's :class:`APS` (which records ``last_phase``).

Convention: functions take the rank from the input; :class:`APS` takes ``dims=1 | 2``
(default 2) and refuses the other rank with one line.

>>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 1, 3] = 5.0
>>> y, phase = aps_downsample(x, 2)
>>> phase.tolist(), y[0, 0].tolist()
([3], [[0.0, 5.0], [0.0, 0.0]])
>>> y, phase = aps_downsample(torch.tensor([[[0., 1., 0., 0., 7., 0.]]]), 3)
>>> phase.tolist(), y.tolist()
([1], [[[1.0, 7.0]]])
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ShiftlabError
from .blurpool import BlurPool, check_stride
from .padding import int_mod
from ..shapes import check_dims, check_maps, size_text

NORMS = ("l2", "l1", "linf")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ShiftlabError(f"unknown APS norm {norm!r}; choose one of {', '.join(NORMS)}")
    return norm


def _extend(x: Tensor, stride: int) -> Tensor:
    """Extend circularly at the end of every spatial axis to a multiple of ``stride``.

    Always by index (also when nothing is added), with no branch on the size: an ONNX
    graph exported at an even size must also split odd ones."""
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        x = x.index_select(axis, int_mod(torch.arange((n + stride - 1) // stride * stride, device=x.device), n))
    return x


def polyphase_components(x: Tensor, stride: int) -> Tensor:
    """The ``s^d`` polyphase components of every sample, stacked on axis 1.

    Shape: ``(N, C, T) → (N, s, C, T/s)``, component ``i`` is ``x[..., i::s]``;
    ``(N, C, H, W) → (N, s², C, H/s, W/s)``, component ``i·s + j`` is ``x[..., i::s, j::s]``.
    """
    d = check_maps(x, who="polyphase_components")
    check_stride(stride)
    x = _extend(x, stride)
    n, c, sizes = x.shape[0], x.shape[1], [side // stride for side in x.shape[2:]]
    split = [v for m in sizes for v in (m, stride)]                  # (..., m_a, s, ...) per axis a
    parts = x.reshape(n, c, *split)
    order = [0] + [3 + 2 * a for a in range(d)] + [1] + [2 + 2 * a for a in range(d)]
    return parts.permute(*order).reshape(n, stride ** d, c, *sizes)


def component_norms(components: Tensor, norm: str = "l2") -> Tensor:
    """``(N, s^d, ...) → (N, s^d)``; ``l2`` is compared through its square (same order)."""
    a = components.flatten(2).abs()
    if check_norm(norm) == "linf":
        return a.amax(dim=2)
    return (a * a if norm == "l2" else a).sum(dim=2)


def _take(comps: Tensor, phase: Tensor) -> Tensor:
    """Component ``phase[n]`` of every sample ``n``: a gather with computed indices (no
    check on the values, so it exports to ONNX)."""
    return comps[torch.arange(comps.shape[0], device=comps.device), phase]


def phase_downsample(x: Tensor, phase: Tensor, stride: int) -> Tensor:
    """Keep component ``phase[n]`` (an ``(N,)`` int tensor in ``[0, s^d)``) of every sample ``n``."""
    comps = polyphase_components(x, stride)
    count = comps.shape[1]
    phase = torch.as_tensor(phase, device=x.device).long()
    if phase.shape != (x.shape[0],) or bool((phase < 0).any() | (phase >= count).any()):
        raise ShiftlabError(f"phase must be {x.shape[0]} indices in [0, {count}), "
                            f"got shape {tuple(phase.shape)}")
    return _take(comps, phase)


def aps_downsample(x: Tensor, stride: int = 2, norm: str = "l2") -> tuple[Tensor, Tensor]:
    """Adaptive polyphase sampling: ``(kept components, phases (N,))``.

    Shape: ``(N, C, T) → (N, C, ceil(T/s))`` or ``(N, C, H, W) → (N, C, ceil(H/s), ceil(W/s))``.
    """
    comps = polyphase_components(x, stride)
    phase = component_norms(comps, norm).argmax(dim=1)     # first maximum: lowest index wins
    return _take(comps, phase), phase


def plain_value(t: Tensor) -> Tensor | None:
    """``t`` as a tensor that may outlive the ``torch.func`` transforms it was made in.

    Outside any transform: ``t`` itself. Inside ``grad`` or ``jvp``: its value, unwrapped from
    every level (those levels keep shapes and values; an integer phase carries no tangent).
    Inside ``vmap``: None (a batched value has no plain per-sample form)."""
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is None or not hasattr(functorch, "is_functorch_wrapped_tensor"):
        return t                                           # a torch without torch.func
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return None
        t = functorch.get_unwrapped(t)
    return t


class APS(nn.Module):
    """Module twin of :func:`aps_downsample`, with an optional binomial pre-blur (stride 1).

    Args:
        stride: any positive integer. norm: ``l2`` | ``l1`` | ``linf``.
        blur_filter: binomial filter size (1..7) applied first, or ``None``.
        blur_padding: the pre-blur's padding (``circular`` keeps exact invariance).
        dims: 2 for ``N×C×H×W`` images (default), 1 for ``N×C×T`` signals.

    After each call, ``last_phase`` holds the chosen phases and ``last_size`` the spatial
    size of the map they index (read by :class:`APSShortcut`). ``last_phase`` is always a
    plain tensor: a call inside a ``torch.func`` transform (the Lie derivative's ``jvp``)
    keeps the phases' values, never the transform's wrapper, which could not be saved,
    copied or converted once the transform is over.
    """

    def __init__(self, stride: int = 2, norm: str = "l2", blur_filter: int | None = None,
                 blur_padding: str = "circular", *, dims: int = 2, device=None, dtype=None):
        super().__init__()
        self.stride = check_stride(stride)
        self.norm = check_norm(norm)
        self.dims = check_dims(dims)
        self.blur = None if blur_filter is None else \
            BlurPool(None, blur_filter, 1, blur_padding, dims=dims, device=device, dtype=dtype)
        self.last_phase: Tensor | None = None
        self.last_size: tuple[int, ...] | None = None

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x, dims=self.dims, who="APS")
        if self.blur is not None:
            x = self.blur(x)
        y, phase = aps_downsample(x, self.stride, self.norm)
        self.last_phase, self.last_size = plain_value(phase), tuple(x.shape[2:])
        return y

    def extra_repr(self) -> str:
        return f"stride={self.stride}, norm={self.norm!r}, dims={self.dims}"


class APSShortcut(nn.Module):
    """Downsample with the phase that ``source`` (the main branch's APS) just chose.

    The source must run first in the same forward pass; its phase is used once and then
    cleared, so a stale phase from an earlier batch can never be applied. ``source`` is
    held by reference, not as a child (it belongs to the main branch).
    """

    def __init__(self, source: APS):
        super().__init__()
        if not isinstance(source, APS):
            raise ShiftlabError(f"APSShortcut needs an APS layer as its source, got {type(source).__name__}")
        self._source = [source]                           # a list: not registered as a child

    @property
    def source(self) -> APS:
        return self._source[0]

    @property
    def dims(self) -> int:
        return self.source.dims

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x, dims=self.dims, who="APSShortcut")
        phase = self.source.last_phase
        if phase is None or phase.shape[0] != x.shape[0]:
            raise ShiftlabError("APSShortcut ran before its main-branch APS in this forward "
                                "pass; run the main branch first (under torch.func.vmap APS "
                                "cannot hand its phase over)")
        if tuple(x.shape[2:]) != self.source.last_size:
            raise ShiftlabError(f"APSShortcut got a {size_text(x.shape[2:])} map but its main "
                                f"branch chose the phase on a {size_text(self.source.last_size)} "
                                "map; both must have the same size")
        self.source.last_phase = None
        return _take(polyphase_components(x, self.source.stride), phase)   # APS made the phase

    def extra_repr(self) -> str:
        return f"stride={self.source.stride} (phase of the main branch)"
