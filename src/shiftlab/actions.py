"""Exact group actions on batches of signals (N×C×T) and images (N×C×H×W), and the
actions they induce on stride-s feature maps.

Convention (all shift actions): a shift ``δ`` has one entry per spatial axis, ``(dt,)``
for signals and ``(dy, dx)`` for images, and moves the content towards larger indices,

.. math::  (T_δ x)[n, c, i, j] = x[n, c, i - dy, j - dx],

exactly like ``torch.roll(x, δ, dims=spatial axes)``. ``shifts`` is either one shift,
applied to every sample, or an ``(N, rank)`` tensor with one shift per sample.

A protocol is one class (:class:`CircularShift`, :class:`CanvasShift`,
:class:`CropShift`, :class:`FractionalShift`) that owns everything about itself: how it
moves inputs, its induced action on a stride-``s`` map (exact when ``s`` divides ``δ``),
which positions both maps define, where its consistency pairs are drawn, its default
shifts and its settings for the result. Its name and capability flags (``circular``,
``has_half_pixel``, ``has_all_shifts``, ``needs_crop`` …) it inherits from its torch-free
declaration in :mod:`shiftlab.protocols`. Nothing outside switches on its name.

>>> x = torch.arange(16.).reshape(1, 1, 4, 4)
>>> torch.equal(circular_shift(x, (1, 2)), torch.roll(x, (1, 2), dims=(-2, -1)))
True
>>> canvas_shift(x, (0, 1), fill=-1.0)[0, 0, 0].tolist()
[-1.0, 0.0, 1.0, 2.0]
>>> torch.equal(fractional_shift(x, (1.0, -3.0)), circular_shift(x, (1, -3)))
True
>>> circular_shift(torch.arange(5.).reshape(1, 1, 5), (2,)).flatten().tolist()
[3.0, 4.0, 0.0, 1.0, 2.0]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence, Union

import torch
from torch import Tensor

from .errors import ShiftlabError
from .protocols import CROP_OFFSETS, Canvas, Circular, Crop, Fractional, Protocol
from .shapes import spatial_rank

ShiftLike = Union[Sequence[float], Tensor]

__all__ = [
    "ShiftAction", "CircularShift", "CanvasShift", "CropShift", "FractionalShift", "PairRange",
    "circular_shift", "canvas_shift", "crop_shift", "fractional_shift", "translate",
    "rot90", "flip", "Rot90", "Flip", "make_action", "PROTOCOLS", "overlap_blocks",
    "spatial_rank", "as_shifts", "rotate", "rescale", "central_mask",
]



# ----------------------------------------------------------------------------- helpers
def as_shifts(shifts: ShiftLike, n: int, rank: int = 2, *, integer: bool = True,
              device=None) -> Tensor:
    """Return shifts as an ``(n, rank)`` tensor (int64 if ``integer`` else float64)."""
    dtype = torch.int64 if integer else torch.float64
    t = torch.as_tensor(shifts, device=device)
    if t.is_floating_point() and integer:
        if not torch.equal(t, t.round()):
            raise ShiftlabError(f"integer shifts expected, got {t.flatten().tolist()[:6]}; "
                                "use the 'fractional' protocol for sub-pixel shifts")
    t = t.to(dtype)
    if t.ndim <= 1 and t.numel() == rank:
        t = t.reshape(1, rank).expand(n, rank)
    if t.shape != (n, rank):
        one = "(dt,)" if rank == 1 else "(dy, dx)"
        raise ShiftlabError(f"shifts must be one {one} shift or an ({n}, {rank}) tensor for "
                            f"{rank}-D data, got shape {tuple(t.shape)}")
    return t


def _gather(x: Tensor, index: list[Tensor]) -> Tensor:
    """``out[n, c, i, j] = x[n, c, index[0][n, i], index[1][n, j]]`` (any rank; in range)."""
    n, c, *size = x.shape
    flat, stride = 0, 1
    for axis in reversed(range(len(size))):
        view = [n] + [1] * len(size)
        view[1 + axis] = index[axis].shape[1]
        flat = flat + index[axis].reshape(view) * stride
        stride *= size[axis]
    out_size = [ix.shape[1] for ix in index]
    flat = torch.as_tensor(flat).expand(n, *out_size).reshape(n, 1, -1)
    out = torch.gather(x.reshape(n, c, -1), 2, flat.expand(n, c, flat.shape[-1]))
    return out.reshape(n, c, *out_size)


def translate(x: Tensor, shifts: ShiftLike, *, circular: bool, fill: float = 0.0) -> Tensor:
    """Integer translation of every sample by its own shift.

    ``circular=True`` wraps around (a roll); otherwise positions whose source falls
    outside the signal or image take the value ``fill`` (what leaves is lost).
    """
    rank = spatial_rank(x)
    n, size = x.shape[0], x.shape[2:]
    dims = tuple(range(-rank, 0))
    d = as_shifts(shifts, n, rank, device=x.device)
    if circular and bool((d == d[0]).all()):                     # one shift for all: roll
        return torch.roll(x, tuple(int(v) for v in d[0]), dims=dims)
    src = [torch.arange(s, device=x.device)[None] - d[:, a:a + 1] for a, s in enumerate(size)]
    if circular:
        return _gather(x, [ix % s for ix, s in zip(src, size)])
    out = _gather(x, [ix.clamp(0, s - 1) for ix, s in zip(src, size)])
    inside = torch.ones((), dtype=torch.bool, device=x.device)
    for a, (ix, s) in enumerate(zip(src, size)):
        view = [n] + [1] * rank
        view[1 + a] = s
        inside = inside & ((ix >= 0) & (ix < s)).reshape(view)
    return torch.where(inside[:, None], out, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def circular_shift(x: Tensor, shifts: ShiftLike) -> Tensor:
    """Circular shift (``torch.roll`` over the spatial axes), one shift or one per sample."""
    return translate(x, shifts, circular=True)


def canvas_shift(x: Tensor, shifts: ShiftLike, fill: float = 0.0) -> Tensor:
    """Move the content over a fixed background of value ``fill``; what leaves is lost."""
    return translate(x, shifts, circular=False, fill=fill)


def crop_shift(x: Tensor, shifts: ShiftLike, size: Sequence[int],
               anchor: Sequence[int] | None = None) -> Tensor:
    """A window of ``size`` moved over a larger signal or image (Zhang 2019's protocol).

    The window's first corner is at ``anchor - δ`` (default anchor: centred), so a
    positive shift moves the content towards larger indices inside the window, as for
    the others. Raises if the window would leave the input.
    """
    rank = spatial_rank(x)
    big, size = tuple(x.shape[2:]), tuple(int(s) for s in size)
    if len(size) != rank:
        raise ShiftlabError(f"a crop window of {len(size)} sizes does not fit {rank}-D data")
    anchor = tuple(anchor) if anchor is not None else tuple((b - s) // 2 for b, s in zip(big, size))
    d = as_shifts(shifts, x.shape[0], rank, device=x.device)
    start = [a - d[:, k] for k, a in enumerate(anchor)]
    if any(s > b or bool((st < 0).any()) or bool((st + s > b).any())
           for s, b, st in zip(size, big, start)):
        raise ShiftlabError(
            f"crop window {'x'.join(map(str, size))} shifted by up to {d.abs().max().item()} px "
            f"leaves the {'x'.join(map(str, big))} input; use smaller shifts or a smaller crop")
    index = [st[:, None] + torch.arange(s, device=x.device)[None] for st, s in zip(start, size)]
    return _gather(x, index)


def fractional_shift(x: Tensor, shifts: ShiftLike) -> Tensor:
    """Band-limited circular shift by any real amount (Fourier phase ramp).

    The integer part is applied with :func:`circular_shift`, so an integer shift equals
    ``torch.roll`` exactly; the fractional part ``f`` multiplies the spectrum by
    ``exp(-2πi Σ_a k_a f_a / N_a)``. On even sizes the Nyquist bin keeps its real part
    (``cos(π f)``), so the output stays real.
    """
    rank = spatial_rank(x)
    n, size = x.shape[0], x.shape[2:]
    dims = tuple(range(-rank, 0))
    d = as_shifts(shifts, n, rank, integer=False, device=x.device)
    whole = torch.floor(d)
    out = circular_shift(x, whole.to(torch.int64))
    frac = d - whole
    moving = (frac != 0).any(dim=1)
    if moving.any():
        f = frac[moving].to(x.real.dtype if not x.is_complex() else torch.float64)
        phase = 0
        for a, s in enumerate(size):
            k = torch.fft.fftfreq(s, device=x.device, dtype=f.dtype)      # cycles per pixel
            view = [-1] + [1] * rank
            view[1 + a] = s
            phase = phase + (f[:, a, None] * k[None]).reshape(view)
        spectrum = torch.fft.fftn(out[moving], dim=dims) * torch.exp(-2j * math.pi * phase)[:, None]
        out = out.clone()
        out[moving] = torch.fft.ifftn(spectrum, dim=dims).real.to(x.dtype)
    return out


def rot90(x: Tensor, k: int = 1) -> Tensor:
    """Rotate by ``k`` quarter turns counter-clockwise in the (H, W) plane."""
    spatial_rank(x, 2)
    return torch.rot90(x, int(k) % 4, dims=(-2, -1))


def flip(x: Tensor, axis: str = "x") -> Tensor:
    """Mirror along ``axis``: ``"x"`` flips left-right, ``"y"`` flips up-down."""
    spatial_rank(x, 2)
    if axis not in ("x", "y"):
        raise ShiftlabError(f"flip axis must be 'x' or 'y', got {axis!r}")
    return torch.flip(x, dims=(-1,) if axis == "x" else (-2,))


# ----------------------------------------------------------------------------- geometry
def overlap_blocks(size: Sequence[int], fshift: Sequence[int], *, circular: bool,
                   margin: int = 0, bounds=None):
    """Boxes where ``φ(T_δ x)`` must equal ``φ(x)`` for the integer feature shift.

    Returns ``[(out_slices, src_slices), ...]`` (one slice per spatial axis) with
    ``out[..., out_slices] == ref[..., src_slices]`` for an exactly equivariant map: one
    box, or up to ``2^rank`` wrapped pieces when ``circular``. Together they cover
    :meth:`ShiftAction.valid_mask`, so comparisons need no copy or mask. ``bounds``
    (one ``(lo, hi)`` per axis) further limits the output positions compared (not with
    ``circular``).

    >>> overlap_blocks((5, 5), (1, 0), circular=False, bounds=((2, 5), (0, 5)))
    [((slice(2, 5, None), slice(0, 5, None)), (slice(1, 4, None), slice(0, 5, None)))]
    >>> overlap_blocks((6,), (2,), circular=True)
    [((slice(2, 6, None),), (slice(0, 4, None),)), ((slice(0, 2, None),), (slice(4, 6, None),))]
    """
    bounds = bounds or tuple((0, n) for n in size)
    per_axis = [_axis_blocks(n, int(k), circular, margin, b) for n, k, b in zip(size, fshift, bounds)]
    boxes = [((), ())]
    for pieces in per_axis:
        boxes = [(o + (po,), s + (ps,)) for o, s in boxes for po, ps in pieces]
    return boxes


def _axis_blocks(n: int, k: int, circular: bool, margin: int,
                 bound: tuple[int, int] = (0, 1 << 62)) -> list[tuple[slice, slice]]:
    """1-D pieces ``(out, src)`` with ``out = src + k`` (mod n when circular)."""
    if circular:
        r = k % n
        if r == 0:
            return [(slice(0, n), slice(0, n))]
        return [(slice(r, n), slice(0, n - r)), (slice(0, r), slice(n - r, n))]
    lo = max(max(0, k) + margin, bound[0])
    hi = min(min(n, n + k) - margin, bound[1])
    return [(slice(lo, hi), slice(lo - k, hi - k))] if hi > lo else []


def _axis_valid(size: int, shift: Tensor, margin: int) -> Tensor:
    """Positions ``p`` (per sample) with ``p`` and ``p - shift`` both in ``[margin, size - margin)``."""
    p = torch.arange(size, device=shift.device)
    src = p[None, :] - shift[:, None]
    return (src >= margin) & (src < size - margin) & (p >= margin) & (p < size - margin)


@dataclass(frozen=True)
class PairRange:
    """Where consistency shifts are drawn: uniform in ``[low, high)`` per axis (floored
    for integer protocols), and that rule in words for the result."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    words: str

    def as_list(self) -> list[float]:
        """``[low, high)`` when every axis agrees, else ``[low_0, high_0, low_1, high_1]``."""
        if len(set(self.low)) == 1 and len(set(self.high)) == 1:
            return [self.low[0], self.high[0]]
        return [v for lo, hi in zip(self.low, self.high) for v in (lo, hi)]


# ----------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class ShiftAction(Protocol):
    """A translation protocol: how it moves inputs and the feature maps they produce.

    Subclasses inherit their declaration from :mod:`shiftlab.protocols` (``name``,
    ``circular``: do feature positions wrap around, ``fills``: does content that leaves the
    frame give way to a fill value, ``integer``: are shifts whole pixels,
    ``inexact``: what an alignment is called when the stride does not divide the shift,
    ``default_shifts`` and the capability flags) and implement :meth:`__call__`.
    """

    @classmethod
    def from_options(cls, *, fill: float = 0.0, crop=None, crop_offsets: str = "zhang") -> "ShiftAction":
        """Build the protocol from the CLI's options; each protocol takes what it uses."""
        return cls()

    def __call__(self, x: Tensor, shifts: ShiftLike) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def settings(self) -> dict:
        """The protocol's own settings, recorded in the result (fill, crop window …)."""
        return {}

    def reference(self, x: Tensor) -> Tensor:
        """The unshifted view ``T_0 x`` that shifted views are compared against."""
        return self(x, (0,) * spatial_rank(x))

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Spatial size of ``T_δ x`` for an input of spatial size ``size``."""
        return tuple(size)

    def check_shifts(self, size: Sequence[int], shifts: Tensor) -> None:
        """Raise :class:`ShiftlabError` when a shift is impossible for inputs of ``size``."""
        size = tuple(size)
        if shifts.numel() and shifts.shape[-1] != len(size):
            raise ShiftlabError(f"{shifts.shape[-1]}-D shifts do not fit {len(size)}-D data "
                                f"({'x'.join(map(str, size))}); give "
                                + ("one number per shift, e.g. --shifts=-4:4 or x=-8:8"
                                   if len(size) == 1 else "(dy, dx) shifts"))
        if shifts.numel() and any(bool((shifts[:, a].abs() >= s).any()) for a, s in enumerate(size)):
            raise ShiftlabError(f"shift of {shifts.abs().max().item():g} px is not smaller than "
                                f"the {'x'.join(map(str, size))} input; use smaller shifts")
        if self.integer and shifts.numel() and not torch.equal(shifts, shifts.round()):
            raise ShiftlabError(f"the '{self.name}' protocol takes integer shifts; use "
                                "'fractional' for sub-pixel shifts")

    # --- the induced action on a feature map of cumulative stride s --------------------
    def feature_shifts(self, shifts: Tensor, stride: int) -> tuple[list[Tensor], Tensor]:
        """Feature-map shifts to compare against, and which rows are exact.

        Returns ``(candidates, exact)``: when ``s`` divides ``δ`` the single candidate is
        ``δ / s`` (exact); otherwise every floor/ceil integer alignment, of which the
        caller keeps the best ("nearest" alignment, an approximation reported as such).
        """
        q = shifts.to(torch.float64) / stride
        lo, hi = torch.floor(q), torch.ceil(q)
        exact = (lo == hi).all(dim=1)
        if bool(exact.all()):
            return [lo.to(torch.int64)], exact
        combos = [[]]
        for a in range(q.shape[1]):
            combos = [c + [side[:, a]] for c in combos for side in (lo, hi)]
        return [torch.stack(c, 1).to(torch.int64) for c in combos], exact

    def on_features(self, phi: Tensor, fshifts: Tensor) -> Tensor:
        """Apply the feature-level shift ``fshifts`` (already divided by the stride)."""
        return translate(phi, fshifts, circular=self.circular)

    def valid_mask(self, size: Sequence[int], fshifts: Tensor, margin: int = 0) -> Tensor:
        """``(N, *size)`` bool: positions defined in both ``φ(T_δ x)`` and ``T'φ(x)``.

        For non-circular protocols a position is valid when it and its source lie inside
        the map, at least ``margin`` positions from its border (to exclude padding effects).
        """
        n = fshifts.shape[0]
        if self.circular:
            return torch.ones(n, *size, dtype=torch.bool, device=fshifts.device)
        d = torch.round(fshifts).to(torch.int64)
        mask = torch.ones((), dtype=torch.bool, device=fshifts.device)
        for a, s in enumerate(size):
            view = [n] + [1] * len(size)
            view[1 + a] = s
            mask = mask & _axis_valid(s, d[:, a], margin).reshape(view)
        return mask.expand(n, *size)

    def overlap_blocks(self, size: Sequence[int], fshift: Sequence[int], margin: int = 0):
        """Boxes where ``φ(T_δ x)`` must equal ``φ(x)`` for the integer feature shift
        (see :func:`overlap_blocks`, with this protocol's wrap-around)."""
        return overlap_blocks(size, fshift, circular=self.circular, margin=margin)

    # --- consistency pairs ------------------------------------------------------------
    def pair_range(self, size: Sequence[int], largest_shift: float,
                   pair_range: float | None = None) -> PairRange:
        """Where consistency pairs are drawn: ``[−R, R)`` per axis with ``R = min(32,
        side / 2)`` by default (the APS and alias-free papers' ±32 on ImageNet)."""
        r = float(pair_range if pair_range is not None else min(32, min(size) // 2))
        kind = "integer" if self.integer else "real"
        rank = len(size)
        return PairRange((-r,) * rank, (r,) * rank,
                         f"{kind} shifts uniform in [-{r:g}, {r:g}) per axis")


@dataclass(frozen=True)
class CircularShift(ShiftAction, Circular):
    """``torch.roll``: nothing is lost, positions wrap around."""

    def __call__(self, x, shifts):
        return circular_shift(x, shifts)


@dataclass(frozen=True)
class CanvasShift(ShiftAction, Canvas):
    """Content moves over a fixed background ``fill``; what leaves the canvas is lost.
    Consistency pairs: integer shifts in ``[−R, R]`` with R the grid's largest shift."""

    fill: float = 0.0

    def __post_init__(self):
        if not math.isfinite(self.fill):
            raise ShiftlabError(f"the canvas fill must be a finite number, got {self.fill}")

    @classmethod
    def from_options(cls, *, fill=0.0, crop=None, crop_offsets="zhang"):
        return cls(fill=float(fill))

    def __call__(self, x, shifts):
        return canvas_shift(x, shifts, fill=self.fill)

    def settings(self):
        return {"fill": self.fill}

    def pair_range(self, size, largest_shift, pair_range=None):
        r = float(pair_range if pair_range is not None else largest_shift)
        rank = len(size)
        return PairRange((-r,) * rank, (r + 1,) * rank,
                         f"integer shifts uniform in [-{r:g}, {r:g}] per axis")


@dataclass(frozen=True)
class CropShift(ShiftAction, Crop):
    """A ``size`` window moved over a larger input; the reference is the centred window.

    Consistency pairs (Zhang 2019: resize 256, 224 windows, ``randint(32)``): window
    offsets ``o`` uniform in ``[0, D)`` per axis, ``D`` = input − window (``offsets=
    "zhang"``), or in ``[0, D]`` (``"inclusive"``); a shift is ``anchor − o``.
    """

    size: tuple[int, ...] = (28, 28)
    offsets: str = "zhang"

    def __post_init__(self):
        if self.offsets not in CROP_OFFSETS:
            raise ShiftlabError(f"crop offsets must be one of {', '.join(CROP_OFFSETS)}, "
                                f"got {self.offsets!r}")
        if not self.size or min(self.size) < 1:
            raise ShiftlabError(f"crop window must be positive sizes, got {tuple(self.size)}")

    @classmethod
    def from_options(cls, *, fill=0.0, crop=None, crop_offsets="zhang"):
        if crop is None:
            raise ShiftlabError("the 'crop' protocol needs a window size (crop=(h, w), --crop HxW)")
        return cls(size=tuple(int(v) for v in crop), offsets=crop_offsets)

    def __call__(self, x, shifts):
        return crop_shift(x, shifts, self.size)

    def settings(self):
        return {"crop": list(self.size), "crop_offsets": self.offsets}

    def output_size(self, size):
        return tuple(self.size)

    def check_shifts(self, size, shifts):
        size, window = tuple(size), tuple(self.size)
        text = "x".join(map(str, window))
        if len(window) != len(size):
            raise ShiftlabError(f"a {text} crop window does not fit {len(size)}-D data "
                                f"({'x'.join(map(str, size))}); give {len(size)} sizes")
        if any(c > s for c, s in zip(window, size)):
            raise ShiftlabError(f"crop size {text} is larger than the {'x'.join(map(str, size))} "
                                "inputs; give a smaller --crop")
        lo = [(s - c) // 2 - (s - c) for s, c in zip(size, window)]
        hi = [(s - c) // 2 for s, c in zip(size, window)]
        if shifts.numel() and shifts.shape[-1] == len(size) and any(
                bool((shifts[:, a] < lo[a]).any() or (shifts[:, a] > hi[a]).any())
                for a in range(len(size))):
            allowed = ", ".join(f"[{a}, {b}]" for a, b in zip(lo, hi))
            raise ShiftlabError(f"a {text} crop of {'x'.join(map(str, size))} inputs allows "
                                f"shifts in {allowed} per axis; use smaller shifts")
        super().check_shifts(size, shifts)

    def pair_range(self, size, largest_shift, pair_range=None):
        span = [n - c for n, c in zip(size, self.size)]                    # D per axis
        anchor = [d // 2 for d in span]
        if self.offsets == "zhang" and min(span) < 1:
            raise ShiftlabError(
                f"a {'x'.join(map(str, self.size))} crop of {'x'.join(map(str, size))} inputs "
                "has no window offsets in [0, D) (D = 0); give larger inputs or a smaller "
                "--crop, or --crop-offsets inclusive")
        first = 1 if self.offsets == "zhang" else 0
        low = tuple(float(a - d + first) for a, d in zip(anchor, span))
        high = tuple(float(a + 1) for a in anchor)
        d_text = str(span[0]) if len(set(span)) == 1 else " x ".join(map(str, span))
        return PairRange(low, high, f"crop window offsets uniform in "
                                    f"{CROP_OFFSETS[self.offsets]} per axis, D = {d_text}")


@dataclass(frozen=True)
class FractionalShift(ShiftAction, Fractional):
    """Band-limited circular shift by real amounts; integers reduce to ``torch.roll``."""

    def __call__(self, x, shifts):
        return fractional_shift(x, shifts)

    def feature_shifts(self, shifts, stride):
        q = shifts.to(torch.float64) / stride
        return [q], (q == torch.round(q)).all(dim=1)

    def on_features(self, phi, fshifts):
        return fractional_shift(phi, fshifts)


@dataclass(frozen=True)
class Rot90:
    """Quarter-turn rotations (group C4); element ``k`` rotates by ``k·90°``."""

    name: ClassVar[str] = "rot90"

    def __call__(self, x: Tensor, k: int) -> Tensor:
        return rot90(x, k)

    on_features = __call__


@dataclass(frozen=True)
class Flip:
    """Mirror symmetry; element ``True`` flips along ``axis``, ``False`` is the identity."""

    axis: str = "x"
    name: ClassVar[str] = "flip"

    def __call__(self, x: Tensor, g: bool) -> Tensor:
        return flip(x, self.axis) if g else x

    on_features = __call__


PROTOCOLS: dict[str, type[ShiftAction]] = {
    cls.name: cls for cls in (CircularShift, CanvasShift, CropShift, FractionalShift)}


def make_action(protocol: str, *, fill: float = 0.0, crop: Sequence[int] | None = None,
                crop_offsets: str = "zhang") -> ShiftAction:
    """Build the shift action for a protocol name (each protocol takes the options it uses)."""
    if protocol not in PROTOCOLS:
        raise ShiftlabError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol].from_options(fill=fill, crop=crop, crop_offsets=crop_offsets)


# ----------------------------------------------------------------------------- interpolated
def central_mask(size: tuple[int, int], device=None) -> Tensor:
    """``(H, W)`` bool: pixel centres inside the disk inscribed in the image (radius
    ``min(H, W) / 2`` about the centre), the region any rotation maps onto itself."""
    h, w = size
    yy = torch.arange(h, device=device, dtype=torch.float64)[:, None] - (h - 1) / 2
    xx = torch.arange(w, device=device, dtype=torch.float64)[None, :] - (w - 1) / 2
    return yy ** 2 + xx ** 2 <= (min(h, w) / 2) ** 2


def _resample(x: Tensor, inverse: Tensor, mask: bool) -> Tensor:
    """Bilinear resampling: output pixel ``p`` (centred pixel units, (x right, y down)) takes
    the input at ``inverse[n] @ p``; zeros outside; optionally zero outside the central disk."""
    from torch.nn import functional as F
    n, _, h, w = x.shape
    to_norm = torch.tensor([[2.0 / w, 0.0], [0.0, 2.0 / h]], dtype=torch.float64)
    from_norm = torch.tensor([[w / 2.0, 0.0], [0.0, h / 2.0]], dtype=torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = to_norm @ inverse @ from_norm
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask:
        out = out * central_mask((h, w), x.device).to(x.dtype)
    return out


def _per_sample(values, n: int, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n or not torch.isfinite(t).all():
        raise ShiftlabError(f"{what} must be one finite number or one per sample ({n}), "
                            f"got {t.tolist()[:6]}")
    return t


def rotate(x: Tensor, degrees, *, mask: bool = False) -> Tensor:
    """Rotate by ``degrees`` counter-clockwise about the image centre (bilinear, zero fill).

    Same sense as :func:`rot90`: ``rotate(x, 90)`` equals ``rot90(x, 1)`` on square images
    up to rounding. ``degrees`` is one number or one per sample. ``mask=True`` zeroes the
    corners outside the central disk (:func:`central_mask`), which a rotation would cut.
    Interpolation blurs: ``rotate(rotate(x, a), -a) ≠ x`` in general.
    """
    spatial_rank(x, 2)
    if x.shape[-1] != x.shape[-2]:
        raise ShiftlabError(f"rotate needs square images, got {x.shape[-2]}x{x.shape[-1]}; "
                            "crop or pad them first")
    a = torch.deg2rad(_per_sample(degrees, x.shape[0], "degrees"))
    c, s = torch.cos(a), torch.sin(a)
    inverse = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)   # (N, 2, 2)
    return _resample(x, inverse, mask)


def rescale(x: Tensor, factor, *, mask: bool = False) -> Tensor:
    """Zoom by ``factor`` about the image centre (bilinear, zero fill; > 1 enlarges).

    ``factor`` is one positive number or one per sample. Shrinking aliases (no low-pass
    filter first); ``mask=True`` zeroes pixels outside the central disk.
    """
    spatial_rank(x, 2)
    f = _per_sample(factor, x.shape[0], "scale factor")
    if (f <= 0).any():
        raise ShiftlabError(f"scale factors must be positive, got {f.tolist()[:6]}")
    inverse = torch.eye(2, dtype=torch.float64) / f[:, None, None]
    return _resample(x, inverse, mask)
