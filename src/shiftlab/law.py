"""The one law: compare ``f(T_δ x)`` with ``T'_δ f(x)`` on the region both maps define.

For a layer ``φ`` of cumulative stride ``s`` and a shift protocol ``T`` (:mod:`shiftlab.actions`):

.. math::

    φ(T_δ x) = T'_{δ/s}\\, φ(x) \\quad \\text{(a spatial map: equivariance)}, \\qquad
    φ(T_δ x) = φ(x) \\quad \\text{(no spatial axes: invariance)}.

When ``s`` divides ``δ`` the feature shift ``δ/s`` is exact; otherwise every floor/ceil
alignment is a candidate and each sample keeps the best ("nearest"), or, for the
fractional protocol, the map is Fourier-shifted by ``δ/s``. Only positions defined in
both maps count: for non-circular protocols the overlap (minus a margin); for a circular
protocol on a map it does not roll (a layer that changed the map size, such as a valid
convolution's 24×24 map of a 28×28 input), the positions whose receptive field did not
wrap, as :func:`shiftlab.probe.wrap_reach` measures them; for a protocol that fills what
leaves the frame (canvas), the positions whose receptive field met neither the band of
content that left nor the band of fill that entered, measured the same way. Where nothing
is left the layer is *not comparable* at that shift.

Everything here returns data: the audit's observers fold it into streaming metrics,
:mod:`shiftlab.testing` turns it into assertions, experiments and figures read it.

>>> import torch
>>> from shiftlab.actions import CircularShift
>>> act, x = CircularShift(), torch.rand(2, 3, 8, 8)
>>> conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
>>> geo = LayerGeometry.same_size(act, stride=1, size=(8, 8))
>>> c = compare(act, geo, conv(act(x, (2, -1))), conv(x), (2, -1))
>>> c.alignment, c.positions, float(relative_error(c)) < 1e-6
('exact', 64, True)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .actions import ShiftAction, overlap_blocks
from .errors import ShiftlabError
from .probe import LayerInfo, wrap_reach

__all__ = ["LayerGeometry", "Alignment", "Comparison", "alignments", "expected", "compare",
           "relative", "relative_error", "block_norms", "layer_geometries", "map_errors",
           "ReferenceMaps", "TOLERANCE", "tolerance", "CROSS_CHECK"]

_F64 = torch.float64

#: Relative errors below this count as exact (float rounding only), by the dtype the layers
#: compute in: 1e-5 for float32, 1e-10 for float64, and ten units of rounding (10·eps) for
#: the 16-bit dtypes of ``amp``: 9.8e-3 for float16, 7.8e-2 for bfloat16.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10,
             torch.float16: 10 * torch.finfo(torch.float16).eps,
             torch.bfloat16: 10 * torch.finfo(torch.bfloat16).eps}

#: Two computations of the same function (another kernel order, ONNX Runtime against
#: PyTorch, a shift and its period) agree when they differ by at most this, relative to
#: the output's magnitude.
CROSS_CHECK = 1e-4


def tolerance(dtype: torch.dtype) -> float:
    """The "exact" threshold of :data:`TOLERANCE` for ``dtype`` (float32's for any other)."""
    return TOLERANCE.get(dtype, TOLERANCE[torch.float32])


def relative(num: Tensor, den: Tensor) -> Tensor:
    """The relative error ``sqrt(num / den)`` of squared norms, element-wise, float64.

    Convention for a zero reference: ``0 / 0 = 0`` (nothing moved, nothing to move: exact)
    and ``x / 0 = inf`` for ``x > 0`` (written as ``null`` in JSON, which holds no infinity).

    >>> relative(torch.tensor([4.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])).tolist()
    [2.0, 0.0, inf]
    """
    num, den = torch.as_tensor(num, dtype=_F64), torch.as_tensor(den, dtype=_F64)
    ratio = num / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, ratio, torch.where(num > 0, float("inf"), 0.0)).sqrt()


@dataclass(frozen=True)
class LayerGeometry:
    """How a protocol acts on one layer's output.

    ``stride`` None: the output has no spatial axes (compared for invariance).
    ``rolls``: the protocol acts on this map as on the input. For a circular protocol that
    holds when the map's size times its stride is the input's size; otherwise the map is
    compared without wrap-around, only where ``reach`` (``{(axis, d): reached positions}``,
    from :func:`~shiftlab.probe.wrap_reach`; None when it could not be traced) says no
    wrapped input pixel arrives. ``margin``: positions this close to a border are ignored
    (non-circular protocols).

    ``frame``: the protocol fills what leaves the frame (:attr:`ShiftAction.fills
    <shiftlab.actions.ShiftAction.fills>`): a zero-padded convolution is exact there only
    where its receptive field meets neither the band of content that left (in ``φ(x)``)
    nor the band of fill that entered (in ``φ(T_δ x)``), so only those positions are
    compared, as ``reach`` says for the band of each sign. :func:`layer_geometries`
    measures it; :meth:`of` and :meth:`same_size` alone compare the whole overlap.
    """

    stride: int | None
    size: tuple[int, ...] = ()
    circular: bool = True
    rolls: bool = True
    reach: dict | None = None
    margin: int = 0
    frame: bool = False

    @classmethod
    def of(cls, action: ShiftAction, stride: int | None, size: Sequence[int],
           input_size: Sequence[int], margin: int = 0) -> "LayerGeometry":
        """The geometry of a map of ``size`` and ``stride`` under ``action`` on inputs of
        ``input_size`` (``reach`` still to be measured when :attr:`needs_reach`)."""
        rolls = stride is None or not action.circular or \
            [n * stride for n in size] == list(action.output_size(input_size))
        return cls(stride, tuple(size), action.circular, rolls, {} if rolls else None, margin)

    @classmethod
    def same_size(cls, action: ShiftAction, stride: int, size: Sequence[int],
                  margin: int = 0) -> "LayerGeometry":
        """A map the protocol acts on as on its input (a same-size or strided map)."""
        return cls(stride, tuple(size), action.circular, True, {}, margin)

    @property
    def needs_reach(self) -> bool:
        return (not self.rolls or self.frame) and self.reach is None

    @property
    def note(self) -> str | None:
        """What the comparison leaves out beyond the overlap, in words (None: nothing)."""
        if self.frame:
            return ("content leaves the frame and the fill enters, so compared only where "
                    "its receptive field met neither the band that left nor the band that "
                    "entered")
        if not self.rolls:
            return ("the layer changes the map size, so a circular shift of the input is "
                    "not a roll of its map: compared only where its receptive field did "
                    "not wrap")
        return None

    @property
    def not_comparable_note(self) -> str:
        """Why nothing was compared at any non-zero shift, in words."""
        if self.needs_reach:
            bands = "the bands that leave and enter the frame" if self.frame else "the wrapped pixels"
            return (f"not comparable: the model fails on NaN inputs, so which positions {bands} "
                    "reach cannot be traced")
        if self.frame:
            return ("not comparable: at every non-zero shift each position's receptive field "
                    "meets the band of content that left the frame or the band of fill that "
                    "entered (or the maps are too small for the shifts or the margin)")
        if not self.rolls:
            return ("not comparable: every position's receptive field wraps around under "
                    "these circular shifts")
        return ("not comparable: no feature position is defined in both maps at any "
                "non-zero shift (the maps are too small for the shifts or the margin)")

    def comparable(self, shift: Sequence[float]) -> bool:
        """False when no position may be compared at ``shift`` whatever the alignment: a
        sub-pixel shift moves every input pixel of a map the protocol does not act on as on
        its input, or the reach could not be traced."""
        if self.rolls and not self.frame:
            return True
        return self.reach is not None and all(d == round(d) for d in shift)

    def bounds(self, shift: Sequence[float], fshift: Sequence[int] | None = None):
        """Output positions per axis ``((lo, hi), …)`` that may be compared at ``shift``;
        None when every position may; ``()`` when none may (see :meth:`comparable`).

        Not rolled by a circular protocol: the positions no wrapped pixel reaches. A
        ``frame``: the longest run of positions that neither the band that entered reaches
        nor, moved by the feature shift ``fshift`` (default ``δ / s`` rounded down), the
        band that left."""
        if self.rolls and not self.frame:
            return None
        if not self.comparable(shift):
            return ()
        if self.frame:
            return self._frame_bounds(shift, fshift)
        out = []
        for axis, d in enumerate(int(round(d)) for d in shift):
            n = self.size[axis]
            reached = self.reach.get((axis, d)) if d else None
            hit = [] if reached is None else reached.nonzero().flatten().tolist()
            if not hit:
                out.append((0, n))
            elif d > 0:                                  # the wrapped band is at the start
                out.append((hit[-1] + 1, n))
            else:                                        # … at the end
                out.append((0, hit[0]))
        return tuple(out)

    def _frame_bounds(self, shift: Sequence[float], fshift: Sequence[int] | None):
        d_all = [int(round(d)) for d in shift]
        k_all = [d // self.stride for d in d_all] if fshift is None else [int(k) for k in fshift]
        out = []
        for axis, (d, k) in enumerate(zip(d_all, k_all)):
            n = self.size[axis]
            keep = torch.ones(n, dtype=torch.bool)
            if d:
                entered = self.reach.get((axis, d))      # φ(T_δ x) positions the fill reaches
                if entered is not None:
                    keep &= ~entered
                left = self.reach.get((axis, -d))        # φ(x) positions that read lost content
                if left is not None:                     # … seen at p = q + k in φ(T_δ x)
                    source = torch.arange(n) - k
                    inside = (source >= 0) & (source < n)
                    moved = torch.zeros(n, dtype=torch.bool)
                    moved[inside] = left[source[inside]]
                    keep &= ~moved
            out.append(_longest_run(keep))
        return tuple(out)


def _longest_run(keep: Tensor) -> tuple[int, int]:
    """``(lo, hi)`` of the longest run of True in a 1-D bool tensor (the first of equals;
    ``(0, 0)`` when there is none)."""
    best, start = (0, 0), None
    for i, v in enumerate(keep.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def layer_geometries(model, example: Tensor, action: ShiftAction, infos: Sequence[LayerInfo],
                     shifts: Tensor, margin: int = 0) -> dict[str, LayerGeometry]:
    """The geometry of every probed layer of ``model`` under ``action`` for inputs like
    ``example`` (one sample, as the model sees it) and the shifts ``(K, rank)`` to come:
    spatial maps get their stride and, where the protocol does not roll them, the measured
    reach of wrapped pixels; under a protocol that fills what leaves the frame, the
    measured reach of the bands that leave and enter (:attr:`LayerGeometry.frame`); layers
    without spatial axes compare for invariance."""
    rank, size = example.ndim - 2, tuple(example.shape[2:])
    out: dict[str, LayerGeometry] = {}
    for info in infos:
        if info.spatial and len(info.shape) == rank + 1:
            geometry = LayerGeometry.of(action, info.stride, info.shape[1:], size, margin)
            if action.fills:
                geometry = dataclasses.replace(geometry, frame=True, reach=None)
            out[info.name] = geometry
        else:
            out[info.name] = LayerGeometry(None)
    pending = [name for name, g in out.items() if g.needs_reach]
    if pending:
        bands = {(axis, int(d)) for shift in shifts.tolist()
                 for axis, d in enumerate(shift) if d == round(d) and d != 0}
        if action.fills:                  # the band that enters at one end, and that leaves at the other
            bands |= {(axis, -d) for axis, d in bands}
        bands = sorted(bands)
        try:
            reach = wrap_reach(model, example, list(dict.fromkeys(n.split("#")[0] for n in pending)),
                               bands)
        except ShiftlabError:           # the model refuses NaN: nothing can be traced
            reach = {}
        for name in pending:
            out[name] = dataclasses.replace(out[name], reach=reach.get(name))
    return out


@dataclass(frozen=True)
class Alignment:
    """One way to line ``φ(T_δ x)`` up with ``φ(x)`` at a shift: what the law compares.

    ``kind``: ``exact`` (the stride divides the shift), ``nearest`` (an integer alignment
    when it does not), ``fourier`` (a band-limited sub-pixel shift of the whole map) or
    ``invariance``. ``blocks``: for integer alignments, the ``(out_slices, ref_slices)``
    boxes that must agree (:func:`~shiftlab.actions.overlap_blocks`); None: the whole map.
    """

    kind: str
    feature_shift: tuple[float, ...]
    circular: bool = True
    blocks: list | None = None


def alignments(action: ShiftAction, geometry: LayerGeometry, shift: Sequence[float]) -> list[Alignment]:
    """The candidate alignments at shift ``δ``: one when exact, the floor/ceil integer
    alignments (or one Fourier shift) otherwise, none when nothing is comparable."""
    if geometry.stride is None:
        return [Alignment("invariance", ())]
    if not geometry.comparable(shift):
        return []
    candidates, exact = action.feature_shifts(torch.tensor([list(shift)], dtype=_F64), geometry.stride)
    if not action.integer and not bool(exact.all()):
        return [Alignment(action.inexact, tuple(float(v) for v in candidates[0][0]))]
    kind = "exact" if bool(exact.all()) else action.inexact
    wraps = action.circular and geometry.rolls
    out = []
    for fshift in dict.fromkeys(tuple(int(v) for v in c[0].tolist()) for c in candidates):
        blocks = overlap_blocks(geometry.size, fshift, circular=wraps, margin=geometry.margin,
                                bounds=geometry.bounds(shift, fshift))
        out.append(Alignment(kind, fshift, wraps, blocks))
    return out


def expected(action: ShiftAction, ref: Tensor, alignment: Alignment) -> tuple[Tensor, Tensor | None]:
    """``T'_δ φ(x)`` as a map and the ``(N, *spatial)`` mask where it is defined (None:
    everywhere), for element-wise checks (:mod:`shiftlab.testing`) and pictures."""
    if alignment.kind == "invariance":
        return ref, None
    if alignment.blocks is None:                          # Fourier shift of the whole map
        shift = torch.tensor(alignment.feature_shift, dtype=_F64, device=ref.device).expand(len(ref), -1)
        return action.on_features(ref, shift), None
    moved = torch.zeros_like(ref)
    mask = torch.zeros((len(ref),) + tuple(ref.shape[2:]), dtype=torch.bool, device=ref.device)
    for out_box, src_box in alignment.blocks:
        moved[(slice(None), slice(None)) + out_box] = ref[(slice(None), slice(None)) + src_box]
        mask[(slice(None),) + out_box] = True
    return moved, (None if bool(mask.all()) else mask)


def block_norms(out: Tensor, ref: Tensor, alignment: Alignment) -> tuple[Tensor, Tensor, int]:
    """Per-sample ``‖out − T'ref‖²`` and ``‖T'ref‖²`` over ``alignment``'s region, and the
    positions compared per sample (the plain way; :class:`ReferenceMaps` is its faster twin)."""
    if alignment.blocks is None:
        raise ValueError("block_norms needs an integer alignment")
    d2 = torch.zeros(len(out), dtype=_F64, device=out.device)
    r2 = torch.zeros_like(d2)
    positions = 0
    for out_box, src_box in alignment.blocks:
        a = out[(slice(None), slice(None)) + out_box]
        b = ref[(slice(None), slice(None)) + src_box]
        d2 += _sq(a - b)
        r2 += _sq(b)
        positions += a[0, 0].numel()
    return d2, r2, positions


@dataclass
class Comparison:
    """The law at one shift for a batch: per-sample squared norms of the difference and
    of the expected map over the compared region, the positions compared per sample (0:
    not comparable) and how the maps were aligned."""

    alignment: str | None              # "exact" | "nearest" | "fourier" | "invariance" | None
    diff_sq: Tensor                    # (N,) float64
    ref_sq: Tensor                     # (N,) float64
    positions: int


def compare(action: ShiftAction, geometry: LayerGeometry, out: Tensor, ref: Tensor,
            shift: Sequence[float], norms: Callable | None = None,
            cands: list[Alignment] | None = None) -> Comparison:
    """Compare ``out = φ(T_δ x)`` with ``T'_δ φ(x)`` (``ref = φ(x)``) for every sample.

    Integer alignments go through ``norms(out, alignment)`` (default :func:`block_norms`
    against ``ref``); of several candidates each sample keeps the smallest relative error.
    ``cands``: :func:`alignments` for this shift, when the caller keeps them.
    """
    cands = alignments(action, geometry, shift) if cands is None else cands
    if not cands:
        zero = torch.zeros(len(out), dtype=_F64, device=out.device)
        return Comparison(None, zero, zero, 0)
    first = cands[0]
    if first.blocks is None:                           # invariance or a Fourier shift
        moved, _ = expected(action, ref, first)
        return Comparison(first.kind, _sq(out - moved), _sq(moved), out[0].numel() if first.kind ==
                          "invariance" else out[0, 0].numel())
    norms = norms or (lambda o, a: block_norms(o, ref, a))
    best = None
    for cand in cands:
        d2, r2, positions = norms(out, cand)
        if best is None or not best[2]:
            best = (d2, r2, positions)
        elif positions:                                # keep the smaller relative error
            better = d2 * best[1] < best[0] * r2
            best = (torch.where(better, d2, best[0]), torch.where(better, r2, best[1]),
                    max(positions, best[2]))
    return Comparison(first.kind, *best)


def relative_error(c: Comparison) -> Tensor:
    """``sqrt(Σ diff² / Σ ref²)`` over the batch (:func:`relative`'s convention for 0)."""
    return relative(c.diff_sq.sum(), c.ref_sq.sum())


def map_errors(f: Callable[[Tensor], Tensor], x: Tensor, shifts, action: ShiftAction,
               stride: int = 1) -> list[float]:
    """The law for a whole map ``f`` that keeps the input's size (or divides it by
    ``stride``): the relative error of ``f(T_δ x)`` against ``T'_δ f(x)`` over the batch,
    one number per shift ``δ`` in ``shifts``. For experiments that test a function rather
    than a model's layers (a dense layer, a convolution theorem).

    >>> import torch
    >>> from shiftlab.actions import CircularShift
    >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular").double()
    >>> max(map_errors(conv, torch.rand(2, 1, 6, 6, dtype=torch.float64), [(1, 2)], CircularShift())) < 1e-12
    True
    """
    with torch.no_grad():
        fx = f(x)
        geometry = LayerGeometry.of(action, stride, fx.shape[2:], x.shape[2:])
        if geometry.needs_reach:
            geometry = dataclasses.replace(geometry, reach={})
        return [float(relative_error(compare(action, geometry, f(action(x, d)), fx, d)))
                for d in shifts]


def _sq(t: Tensor) -> Tensor:
    """Per-sample squared L2 norm in float64."""
    return torch.linalg.vector_norm(t.detach().flatten(1), dim=1).to(_F64).square()


#: values per piece of a fast comparison: the difference is written and read back while it
#: is still in the CPU cache (512 KB of float32; measured on resnet18 at 224: 3 % faster
#: than 1 MB pieces, 4 % than 4 MB)
CACHE_VALUES = 1 << 17


class ReferenceMaps:
    """One layer's reference maps ``φ(x)`` for a batch, compared fast with shifted rows.

    The law of :func:`compare` for integer alignments without rolled, masked or stacked
    copies: each box of an alignment is subtracted straight from the two maps into a small
    reused buffer, in pieces that stay in the CPU cache, and the reference's squared norm
    over a box comes from an integral image (summed-area table) of its energy, computed
    once per batch (only if some box is not the whole map) and shared by every shift. A test checks it equals :func:`block_norms`.

    Shape: ``ref`` is ``(N, C, *spatial)``; :meth:`norms` takes rows ``out`` of the same
    map for the samples ``images`` (a slice of the N) and returns per-row ``(‖out −
    T'ref‖², ‖T'ref‖², positions)`` over the alignment's boxes.
    """

    def __init__(self, ref: Tensor):
        self.ref, self.rank = ref, ref.ndim - 2
        self.energy = torch.linalg.vector_norm(ref, dim=1).to(_F64).square()   # (N, *spatial)
        self.total = self.energy.flatten(1).sum(1)                          # (N,) ‖φ(x)‖²
        self._integral: Tensor | None = None      # built when a box is not the whole map
        self._scratch = torch.empty(0, dtype=ref.dtype, device=ref.device)
        self._ref_sq: dict[int, tuple] = {}   # id(alignment) -> (alignment, ‖T'ref‖², positions)

    def box_sq(self, box: tuple[slice, ...]) -> Tensor:
        """``Σ ‖ref‖²`` over a box, per sample: inclusion–exclusion on the integral image
        (summed over the map once, the first time a box needs it)."""
        if self._integral is None:
            integral = self.energy
            for d in range(1, self.rank + 1):
                integral = integral.cumsum(d)
            self._integral = torch.nn.functional.pad(integral, (1, 0) * self.rank)
        total = 0
        for corner in range(1 << self.rank):
            index, sign = [slice(None)], 1
            for a, sl in enumerate(box):
                index.append(sl.start if corner >> a & 1 else sl.stop)
                sign = -sign if corner >> a & 1 else sign
            total = total + sign * self._integral[tuple(index)]
        return total

    def ref_sq(self, alignment: Alignment) -> tuple[Tensor, int]:
        """``‖T'ref‖²`` per sample over the alignment's boxes and the positions per sample
        (kept: an alignment is the same object for every batch row that uses it)."""
        key = id(alignment)
        if key not in self._ref_sq:
            spatial = self.ref.shape[2:]
            positions = sum(math.prod(s.stop - s.start for s in out) for out, _ in alignment.blocks)
            if positions == math.prod(spatial):                  # the whole map: its norm
                r2 = self.total
            else:
                r2 = sum((self.box_sq(src) for _, src in alignment.blocks), torch.zeros_like(self.total))
            self._ref_sq[key] = (alignment, r2, positions)     # held: its id stays its own
        return self._ref_sq[key][1:]

    def diff_sq(self, out: Tensor, alignment: Alignment, images: slice) -> Tensor:
        """``‖out − T'ref‖²`` per row of ``out`` (the samples ``images``), float64: each
        box's norm per row in ``out``'s dtype (as :func:`block_norms`), summed in float64."""
        ref, rows = self.ref[images], len(out)
        blocks = alignment.blocks
        norms = torch.empty(len(blocks), rows, dtype=out.dtype, device=out.device)
        for j, (out_box, src_box) in enumerate(blocks):
            a = out[(slice(None), slice(None)) + out_box]
            b = ref[(slice(None), slice(None)) + src_box]
            per_row = max(1, a[:1].numel())
            step = min(rows, max(1, CACHE_VALUES // per_row))
            if self._scratch.numel() < step * per_row:
                self._scratch = torch.empty(step * per_row, dtype=out.dtype, device=out.device)
            dims = tuple(range(1, a.ndim))
            for i in range(0, rows, step):
                part = a[i:i + step]
                diff = self._scratch[:part.numel()].view(part.shape)
                torch.sub(part, b[i:i + step], out=diff)
                torch.linalg.vector_norm(diff, dim=dims, out=norms[j, i:i + step])
        return norms.to(_F64).square().sum(0)

    def norms(self, out: Tensor, alignment: Alignment, images: slice) -> tuple[Tensor, Tensor, int]:
        """``(‖out − T'ref‖², ‖T'ref‖², positions)`` per row: :func:`block_norms`'s answer."""
        r2, positions = self.ref_sq(alignment)
        return self.diff_sq(out, alignment, images), r2[images], positions
