"""Exact group actions on NCHW batches, and the actions they induce on feature maps.

Convention (all shift actions): a shift ``δ = (dy, dx)`` moves the content down by ``dy``
and right by ``dx`` pixels,

.. math::  (T_δ x)[n, c, i, j] = x[n, c, i - dy, j - dx],

exactly like ``torch.roll(x, (dy, dx), dims=(-2, -1))``. ``shifts`` is either one pair,
applied to every sample, or an ``(N, 2)`` tensor with one pair per sample.

A layer of cumulative stride ``s`` sees the shift ``δ / s``; when ``s`` divides ``δ`` the
induced action :meth:`ShiftAction.on_features` is exact, and :meth:`ShiftAction.valid_mask`
tells which feature positions are defined in both the shifted map and the shifted-back one.

>>> x = torch.arange(16.).reshape(1, 1, 4, 4)
>>> torch.equal(circular_shift(x, (1, 2)), torch.roll(x, (1, 2), dims=(-2, -1)))
True
>>> canvas_shift(x, (0, 1), fill=-1.0)[0, 0, 0].tolist()
[-1.0, 0.0, 1.0, 2.0]
>>> torch.equal(fractional_shift(x, (1.0, -3.0)), circular_shift(x, (1, -3)))
True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from .errors import ShiftlabError

ShiftLike = Union[Sequence[float], Tensor]

__all__ = [
    "ShiftAction", "CircularShift", "CanvasShift", "CropShift", "FractionalShift",
    "circular_shift", "canvas_shift", "crop_shift", "fractional_shift", "rot90", "flip",
    "Rot90", "Flip", "make_action", "PROTOCOLS", "overlap_blocks",
]


# ----------------------------------------------------------------------------- helpers
def as_shifts(shifts: ShiftLike, n: int, *, integer: bool = True, device=None) -> Tensor:
    """Return shifts as an ``(n, 2)`` tensor (int64 if ``integer`` else float64)."""
    dtype = torch.int64 if integer else torch.float64
    t = torch.as_tensor(shifts, device=device)
    if t.is_floating_point() and integer:
        if not torch.equal(t, t.round()):
            raise ShiftlabError(f"integer shifts expected, got {t.flatten().tolist()[:6]}; "
                                "use the 'fractional' protocol for sub-pixel shifts")
    t = t.to(dtype)
    if t.ndim == 1 and t.numel() == 2:
        t = t.expand(n, 2)
    if t.shape != (n, 2):
        raise ShiftlabError(f"shifts must be one (dy, dx) pair or an ({n}, 2) tensor, "
                            f"got shape {tuple(t.shape)}")
    return t


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"expected an NCHW image batch (4-D tensor), got {shape}")


def _gather(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]]`` (indices must be in range)."""
    n, c, h, w = x.shape
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, -1)
    out = torch.gather(x.reshape(n, c, h * w), 2, index.expand(n, c, index.shape[-1]))
    return out.reshape(n, c, rows.shape[1], cols.shape[1])


def _axis_valid(size: int, shift: Tensor, margin: int) -> Tensor:
    """Positions ``p`` (per sample) with ``p`` and ``p - shift`` both in ``[margin, size - margin)``."""
    p = torch.arange(size, device=shift.device)
    src = p[None, :] - shift[:, None]
    return (src >= margin) & (src < size - margin) & (p >= margin) & (p < size - margin)


def translate(x: Tensor, shifts: ShiftLike, *, circular: bool, fill: float = 0.0) -> Tensor:
    """Integer translation of every sample by its own shift.

    ``circular=True`` wraps around (a roll); otherwise positions whose source falls
    outside the image take the value ``fill`` (what leaves is lost).
    """
    _check_images(x)
    n, _, h, w = x.shape
    d = as_shifts(shifts, n, device=x.device)
    if circular and bool((d == d[0]).all()):                     # one shift for all: roll
        return torch.roll(x, (int(d[0, 0]), int(d[0, 1])), dims=(-2, -1))
    rows = torch.arange(h, device=x.device)[None] - d[:, :1]     # (N, H) source rows
    cols = torch.arange(w, device=x.device)[None] - d[:, 1:]     # (N, W) source cols
    if circular:
        return _gather(x, rows % h, cols % w)
    out = _gather(x, rows.clamp(0, h - 1), cols.clamp(0, w - 1))
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    return torch.where(inside[:, None], out, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


def circular_shift(x: Tensor, shifts: ShiftLike) -> Tensor:
    """Circular shift (``torch.roll`` over H, W), one pair or one per sample."""
    return translate(x, shifts, circular=True)


def canvas_shift(x: Tensor, shifts: ShiftLike, fill: float = 0.0) -> Tensor:
    """Move the content over a fixed background of value ``fill``; what leaves is lost."""
    return translate(x, shifts, circular=False, fill=fill)


def crop_shift(x: Tensor, shifts: ShiftLike, size: tuple[int, int],
               anchor: tuple[int, int] | None = None) -> Tensor:
    """An ``h×w`` window moved over a larger image (Zhang 2019's protocol).

    The window's top-left corner is at ``anchor - δ`` (default anchor: centred), so a
    positive shift moves the content down/right inside the window, as for the others.
    Raises if the window would leave the image.
    """
    _check_images(x)
    n, _, big_h, big_w = x.shape
    h, w = size
    ay, ax = anchor if anchor is not None else ((big_h - h) // 2, (big_w - w) // 2)
    d = as_shifts(shifts, n, device=x.device)
    top, left = ay - d[:, 0], ax - d[:, 1]
    if h > big_h or w > big_w or (top < 0).any() or (top + h > big_h).any() \
            or (left < 0).any() or (left + w > big_w).any():
        raise ShiftlabError(
            f"crop window {h}x{w} shifted by up to {d.abs().max().item()} px leaves the "
            f"{big_h}x{big_w} image; use smaller shifts or a smaller crop")
    rows = top[:, None] + torch.arange(h, device=x.device)[None]
    cols = left[:, None] + torch.arange(w, device=x.device)[None]
    return _gather(x, rows, cols)


def fractional_shift(x: Tensor, shifts: ShiftLike) -> Tensor:
    """Band-limited circular shift by any real amount (Fourier phase ramp).

    The integer part is applied with :func:`circular_shift`, so an integer shift equals
    ``torch.roll`` exactly; the fractional part ``f`` multiplies the 2-D spectrum by
    ``exp(-2πi (k_y f_y / H + k_x f_x / W))``. On even sizes the Nyquist bin keeps its
    real part (``cos(π f)``), so the output stays real.
    """
    _check_images(x)
    n, _, h, w = x.shape
    d = as_shifts(shifts, n, integer=False, device=x.device)
    whole = torch.floor(d)
    out = circular_shift(x, whole.to(torch.int64))
    frac = d - whole
    moving = (frac != 0).any(dim=1)
    if moving.any():
        f = frac[moving].to(x.real.dtype if not x.is_complex() else torch.float64)
        ky = torch.fft.fftfreq(h, device=x.device, dtype=f.dtype)    # cycles per pixel
        kx = torch.fft.fftfreq(w, device=x.device, dtype=f.dtype)
        phase = -2j * math.pi * (f[:, 0, None, None] * ky[None, :, None]
                                 + f[:, 1, None, None] * kx[None, None, :])
        spectrum = torch.fft.fft2(out[moving]) * torch.exp(phase)[:, None]
        out = out.clone()
        out[moving] = torch.fft.ifft2(spectrum).real.to(x.dtype)
    return out


def rot90(x: Tensor, k: int = 1) -> Tensor:
    """Rotate by ``k`` quarter turns counter-clockwise in the (H, W) plane."""
    _check_images(x)
    return torch.rot90(x, int(k) % 4, dims=(-2, -1))


def flip(x: Tensor, axis: str = "x") -> Tensor:
    """Mirror along ``axis``: ``"x"`` flips left-right, ``"y"`` flips up-down."""
    _check_images(x)
    if axis not in ("x", "y"):
        raise ShiftlabError(f"flip axis must be 'x' or 'y', got {axis!r}")
    return torch.flip(x, dims=(-1,) if axis == "x" else (-2,))


# ----------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class ShiftAction:
    """A translation protocol: how it moves images and the feature maps they produce.

    Subclasses set ``name``, ``circular`` (do feature positions wrap around) and
    ``integer`` (are shifts whole pixels), and implement :meth:`__call__`.
    """

    name = "shift"
    circular = True
    integer = True

    def __call__(self, x: Tensor, shifts: ShiftLike) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def reference(self, x: Tensor) -> Tensor:
        """The unshifted view ``T_0 x`` that shifted views are compared against."""
        return self(x, (0, 0))

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of ``T_δ x`` for an input of spatial size ``size``."""
        return size

    def check_shifts(self, size: tuple[int, int], shifts: Tensor) -> None:
        """Raise :class:`ShiftlabError` when a shift is impossible for images of ``size``."""
        h, w = size
        if shifts.numel() and ((shifts[:, 0].abs() >= h).any() or (shifts[:, 1].abs() >= w).any()):
            raise ShiftlabError(f"shift of {shifts.abs().max().item():g} px is not smaller than "
                                f"the {h}x{w} image; use smaller shifts")
        if self.integer and shifts.numel() and not torch.equal(shifts, shifts.round()):
            raise ShiftlabError(f"the '{self.name}' protocol takes integer shifts; use "
                                "'fractional' for sub-pixel shifts")

    # --- the induced action on a feature map of cumulative stride s --------------------
    def feature_shifts(self, shifts: Tensor, stride: int) -> tuple[list[Tensor], Tensor]:
        """Feature-map shifts to compare against, and which rows are exact.

        Returns ``(candidates, exact)``: when ``s`` divides ``δ`` the single candidate is
        ``δ / s`` (exact); otherwise the floor/ceil integer alignments, of which the caller
        keeps the best ("nearest" alignment, an approximation reported as such).
        """
        q = shifts.to(torch.float64) / stride
        lo, hi = torch.floor(q), torch.ceil(q)
        exact = (lo == hi).all(dim=1)
        if bool(exact.all()):
            return [lo.to(torch.int64)], exact
        combos = [(a, b) for a in (lo, hi) for b in (lo, hi)]
        return [torch.stack([a[:, 0], b[:, 1]], 1).to(torch.int64) for a, b in combos], exact

    def on_features(self, phi: Tensor, fshifts: Tensor) -> Tensor:
        """Apply the feature-level shift ``fshifts`` (already divided by the stride)."""
        return translate(phi, fshifts, circular=self.circular)

    def valid_mask(self, size: tuple[int, int], fshifts: Tensor, margin: int = 0) -> Tensor:
        """``(N, h, w)`` bool: positions defined in both ``φ(T_δ x)`` and ``T'φ(x)``.

        For non-circular protocols a position is valid when it and its source lie inside
        the map, at least ``margin`` positions from its border (to exclude padding effects).
        """
        h, w = size
        n = fshifts.shape[0]
        if self.circular:
            return torch.ones(n, h, w, dtype=torch.bool, device=fshifts.device)
        d = torch.round(fshifts).to(torch.int64)
        return _axis_valid(h, d[:, 0], margin)[:, :, None] & _axis_valid(w, d[:, 1], margin)[:, None, :]


    def overlap_blocks(self, size: tuple[int, int], fshift: tuple[int, int], margin: int = 0):
        """Rectangles where ``φ(T_δ x)`` must equal ``φ(x)`` for the integer feature shift
        (see :func:`overlap_blocks`, with this protocol's wrap-around)."""
        return overlap_blocks(size, fshift, circular=self.circular, margin=margin)


def overlap_blocks(size: tuple[int, int], fshift: tuple[int, int], *, circular: bool,
                   margin: int = 0, bounds=None):
    """Rectangles where ``φ(T_δ x)`` must equal ``φ(x)`` for the integer feature shift.

    Returns ``[((rows, cols), (src_rows, src_cols)), ...]`` slice pairs with
    ``out[..., rows, cols] == ref[..., src_rows, src_cols]`` for an exactly equivariant
    map: one rectangle, or up to four wrapped pieces when ``circular``. Together they cover
    :meth:`ShiftAction.valid_mask`, so comparisons need no copy or mask. ``bounds``
    ``((lo_y, hi_y), (lo_x, hi_x))`` further limits the output positions compared (not
    with ``circular``).

    >>> overlap_blocks((5, 5), (1, 0), circular=False, bounds=((2, 5), (0, 5)))
    [((slice(2, 5, None), slice(0, 5, None)), (slice(1, 4, None), slice(0, 5, None)))]
    """
    bounds = bounds or ((0, size[0]), (0, size[1]))
    per_axis = [_axis_blocks(n, int(k), circular, margin, b) for n, k, b in zip(size, fshift, bounds)]
    return [((ry, rx), (sy, sx)) for ry, sy in per_axis[0] for rx, sx in per_axis[1]]


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


@dataclass(frozen=True)
class CircularShift(ShiftAction):
    """``torch.roll``: nothing is lost, positions wrap around."""

    name = "circular"

    def __call__(self, x, shifts):
        return circular_shift(x, shifts)


@dataclass(frozen=True)
class CanvasShift(ShiftAction):
    """Content moves over a fixed background ``fill``; what leaves the canvas is lost."""

    fill: float = 0.0
    name = "canvas"
    circular = False

    def __call__(self, x, shifts):
        return canvas_shift(x, shifts, fill=self.fill)


@dataclass(frozen=True)
class CropShift(ShiftAction):
    """A ``size`` window moved over a larger image; the reference is the centred window."""

    size: tuple[int, int] = (28, 28)
    name = "crop"
    circular = False

    def __call__(self, x, shifts):
        return crop_shift(x, shifts, self.size)

    def output_size(self, size):
        return tuple(self.size)

    def check_shifts(self, size, shifts):
        h, w = self.size
        if h > size[0] or w > size[1]:
            raise ShiftlabError(f"crop size {h}x{w} is larger than the {size[0]}x{size[1]} "
                                "images; give a smaller --crop")
        lo_y, lo_x = (size[0] - h) // 2 - (size[0] - h), (size[1] - w) // 2 - (size[1] - w)
        hi_y, hi_x = (size[0] - h) // 2, (size[1] - w) // 2
        if shifts.numel() and ((shifts[:, 0] < lo_y).any() or (shifts[:, 0] > hi_y).any()
                               or (shifts[:, 1] < lo_x).any() or (shifts[:, 1] > hi_x).any()):
            raise ShiftlabError(
                f"a {h}x{w} crop of {size[0]}x{size[1]} images allows shifts dy in "
                f"[{lo_y}, {hi_y}], dx in [{lo_x}, {hi_x}]; use smaller shifts")
        super().check_shifts(size, shifts)


@dataclass(frozen=True)
class FractionalShift(ShiftAction):
    """Band-limited circular shift by real amounts; integers reduce to ``torch.roll``."""

    name = "fractional"
    integer = False

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

    name = "rot90"

    def __call__(self, x: Tensor, k: int) -> Tensor:
        return rot90(x, k)

    on_features = __call__


@dataclass(frozen=True)
class Flip:
    """Mirror symmetry; element ``True`` flips along ``axis``, ``False`` is the identity."""

    axis: str = "x"
    name = "flip"

    def __call__(self, x: Tensor, g: bool) -> Tensor:
        return flip(x, self.axis) if g else x

    on_features = __call__


PROTOCOLS = {"circular": CircularShift, "canvas": CanvasShift, "crop": CropShift,
             "fractional": FractionalShift}


def make_action(protocol: str, *, fill: float = 0.0,
                crop: tuple[int, int] | None = None) -> ShiftAction:
    """Build the shift action for a protocol name."""
    if protocol not in PROTOCOLS:
        raise ShiftlabError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "canvas":
        return CanvasShift(fill=fill)
    if protocol == "crop":
        if crop is None:
            raise ShiftlabError("the 'crop' protocol needs a window size (crop=(h, w), --crop HxW)")
        size = tuple(int(v) for v in crop)
        if len(size) != 2 or min(size) < 1:
            raise ShiftlabError(f"crop window must be two positive sizes (h, w), got {tuple(crop)}")
        return CropShift(size=size)
    return PROTOCOLS[protocol]()


# ----------------------------------------------------------------------------- interpolated
__all__ += ["rotate", "rescale", "central_mask"]


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
    _check_images(x)
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
    _check_images(x)
    f = _per_sample(factor, x.shape[0], "scale factor")
    if (f <= 0).any():
        raise ShiftlabError(f"scale factors must be positive, got {f.tolist()[:6]}")
    inverse = torch.eye(2, dtype=torch.float64) / f[:, None, None]
    return _resample(x, inverse, mask)
