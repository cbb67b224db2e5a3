"""The audit engine: data × shifts → model with probes → the law → streaming metrics → AuditResult.

For every batch of signals (N×C×T) or images (N×C×H×W) the engine forwards, in chunks of
at most ``batch_size`` rows:

1. the reference views ``T_0 x`` (their features are kept for the batch);
2. every non-zero shift of the grid, for the per-layer equivariance error (the one
   comparison of :mod:`shiftlab.law`), the grid accuracy, the flip rate and the
   translation-sensitivity map;
3. ``pairs`` random shift pairs per image, for consistency;
4. with ``half_pixel``, output only: the half-pixel lattice around the grid and ``pairs``
   half-pixel shifts per image (band-limited Fourier shifts), for the worst-case shift gap
   and half-pixel consistency of Michaeli, Michaeli & Soudry (CVPR 2023).

The worst-case shift gap is clean accuracy minus worst-case accuracy over a set of shifts:
over the grid's integer shifts (always, from step 2) and over the half-pixel lattice (4.).

Memory is bounded by the batch size, not the dataset: nothing but metric state outlives
a batch. Random pairs are a pure function of (seed, image index), so the numbers do not
depend on how the data is batched. The options travel as one :class:`AuditConfig`.

The engine follows the model's device; ``amp`` runs the forward passes under autocast and
compares the maps in float32, with the "exact" tolerance of the 16-bit compute dtype.
Inside an initialised ``torch.distributed`` process group each rank audits an exact shard
and the metric states are merged in rank order (:mod:`shiftlab.distributed`).
"""
from __future__ import annotations

import dataclasses
import math
import platform
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .actions import FractionalShift, ShiftAction, make_action, spatial_rank
from .config import MAX_PAIRS, AuditConfig
from .data.preprocess import normalization, normalization_record, normalize
from .device import AMP, autocast, check_amp, device_name, ieee_float32
from .shapes import check_model_fits
from .errors import ShiftlabError, check_seed
from .law import Alignment, LayerGeometry, alignments, compare, layer_geometries
from .metrics import (Consistency, EquivarianceError, GridStability, SensitivityMap, WorstCase,
                      masked_sq_norms)
from .probe import OUTPUT, LayerInfo, Probe, infer_layers, resolve_layers
from .result import AuditResult, InvarianceResult, LayerResult, Provenance
from .shifts import ShiftSet

__all__ = ["audit", "AuditConfig", "iter_batches", "pair_shifts", "half_pixel_lattice",
           "TOLERANCE", "MAX_PAIRS"]

#: Relative errors below this count as exact (float rounding only), by the dtype the layers
#: compute in: 1e-5 for float32, 1e-10 for float64, and ten units of rounding (10·eps) for
#: the 16-bit dtypes of ``amp``: 9.8e-3 for float16, 7.8e-2 for bfloat16.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10,
             torch.float16: 10 * torch.finfo(torch.float16).eps,
             torch.bfloat16: 10 * torch.finfo(torch.bfloat16).eps}

# ----------------------------------------------------------------------------- data
def _check_batch(x, y) -> tuple[Tensor, Tensor | None]:
    if not isinstance(x, Tensor) or x.ndim not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"inputs must be N x C x T signals or N x C x H x W images, got "
                            f"{shape}; add a channel axis for grey images (x[:, None])")
    if not x.is_floating_point():
        raise ShiftlabError(f"inputs must be floating point, got {x.dtype}; scale them, "
                            "e.g. x.float() / 255")
    if not bool(torch.isfinite(x).all()):
        raise ShiftlabError("inputs contain NaN or infinite values; clean the data first")
    if y is not None:
        y = torch.as_tensor(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ShiftlabError(f"labels must be a vector of {len(x)} class indices, "
                                f"got shape {tuple(y.shape)}")
        if y.is_complex() or y.dtype == torch.bool or (y.is_floating_point() and not (
                bool(torch.isfinite(y).all()) and torch.equal(y, y.round()))):
            raise ShiftlabError(f"labels must be whole class indices, got {y.dtype} values "
                                f"such as {y[:4].tolist()}")
        y = y.to(torch.int64)
    return x, y


def iter_batches(data, size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(inputs, labels or None)`` of at most ``size`` samples from a tensor, an
    ``(inputs, labels)`` pair, or an iterable of either (a DataLoader)."""
    if isinstance(data, Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = _check_batch(*data)
        for i in range(0, len(x), size):
            yield x[i:i + size], (None if y is None else y[i:i + size])
        return
    if not isinstance(data, Iterable):
        raise ShiftlabError(f"cannot read inputs from a {type(data).__name__}; pass a tensor, "
                            "an (inputs, labels) pair or a DataLoader")
    for item in data:
        yield from iter_batches(_pair(item), size)


def _pair(item) -> tuple:
    """One item of an iterable of batches as ``(inputs, labels or None)``."""
    return (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)


def shard_batches(data, size: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """Rank ``rank`` of ``world``'s batches of :func:`iter_batches`, each as ``(index of its
    first sample in the whole data, inputs, labels or None)``: an exact shard, no padding,
    no duplicates (the rules are in :mod:`shiftlab.distributed`). One process gets every
    batch."""
    if isinstance(data, Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = _check_batch(*data)                               # the whole data, as one process
        run = distributed.block(-(-len(x) // size), rank, world)
        lo, hi = run.start * size, min(run.stop * size, len(x))
        for i in range(lo, hi, size):
            yield i, x[i:i + size], (None if y is None else y[i:i + size])
        return
    shard = distributed.loader_shard(data, rank, world)
    if shard is not None:                                        # a DataLoader read in order
        loader, first, per = shard
        for b, item in enumerate(loader):
            start = first + b * per
            for x, y in iter_batches(_pair(item), size):
                yield start, x, y
                start += len(x)
        return
    if not isinstance(data, Iterable):
        raise ShiftlabError(f"cannot read inputs from a {type(data).__name__}; pass a tensor, "
                            "an (inputs, labels) pair or a DataLoader")
    start = 0
    for b, item in enumerate(data):                              # any iterable: strided
        x, y = _pair(item)
        if b % world == rank:
            for xb, yb in iter_batches((x, y), size):
                yield start, xb, yb
                start += len(xb)
        else:
            start += len(x) if isinstance(x, Tensor) and x.ndim else 0


# ----------------------------------------------------------------------------- pairs
def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pair_shifts(seed: int, start: int, n: int, pairs: int, low, high,
                integer: bool = True, rank: int = 2) -> Tensor:
    """Random shifts ``(2·pairs, n, rank)`` for samples ``start … start+n−1``, uniform in
    ``[low, high)`` per axis (numbers, or one per axis); a pure function of (seed, sample
    index), so batching does not change them."""
    with np.errstate(over="ignore"):
        img = np.arange(start, start + n, dtype=np.uint64)[None, :, None]
        slot = np.arange(2 * pairs, dtype=np.uint64)[:, None, None]
        axis = np.arange(rank, dtype=np.uint64)[None, None, :]
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(img * np.uint64(4096) + slot * np.uint64(2) + axis))
        u = (key >> np.uint64(11)).astype(np.float64) * 2.0 ** -53       # uniform [0, 1)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    values = low + u * (high - low)
    if integer:
        values = np.floor(values)
    return torch.from_numpy(values)


#: The random stream of the half-pixel pairs (ASCII "HALF"), apart from the integer pairs'.
HALF_PIXEL_STREAM = 0x48414C46


def stream_seed(seed: int, stream: int) -> int:
    """A seed for another independent stream of :func:`pair_shifts` draws from ``seed``."""
    with np.errstate(over="ignore"):
        return int(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(stream)))


def half_pixel_lattice(shifts: Tensor) -> Tensor:
    """The half-pixel lattice around a shift set ``(K, rank)``: per axis every multiple of ½
    from the smallest to the largest shift on that axis (0 always included), all
    combinations, ``(L, rank)`` float64 with the last axis fastest. It holds every integer
    point of that box, so a worst case over it is at most the worst case over those.

    >>> half_pixel_lattice(torch.tensor([[0.0, -1.0], [0.0, 1.0]])).tolist()
    [[0.0, -1.0], [0.0, -0.5], [0.0, 0.0], [0.0, 0.5], [0.0, 1.0]]
    """
    axes = []
    for a in range(shifts.shape[1]):
        lo = min(0, math.floor(2 * float(shifts[:, a].min())))           # in half pixels
        hi = max(0, math.ceil(2 * float(shifts[:, a].max())))
        axes.append(torch.arange(lo, hi + 1, dtype=torch.float64) / 2)
    return torch.cartesian_prod(*axes).reshape(-1, len(axes))


def _lattice_words(lattice: Tensor) -> str:
    """``{-4, -3.5, …, 4} per axis`` (or per named axis when they differ)."""
    names = {1: ["t"], 2: ["y", "x"], 3: ["z", "y", "x"]}[lattice.shape[1]]
    spans = [(float(lattice[:, a].min()), float(lattice[:, a].max())) for a in range(lattice.shape[1])]

    def span(lo, hi):
        return f"{{{lo:g}}}" if lo == hi else f"{{{lo:g}, {lo + 0.5:g}, …, {hi:g}}}"
    if len(set(spans)) == 1:
        return f"{span(*spans[0])} per axis"
    return ", ".join(f"{n} in {span(*sp)}" for n, sp in zip(names, spans))


# ----------------------------------------------------------------------------- engine
@dataclass
class _Layer:
    """A probed layer: what the probe learned, how the law compares it, its metric."""

    info: LayerInfo
    comparison: str                   # "equivariance" | "invariance" | "skipped"
    geometry: LayerGeometry | None
    metric: EquivarianceError | None
    aligned: dict = dataclasses.field(default_factory=dict)   # shift -> the law's alignments

    def alignments(self, action: ShiftAction, shift: tuple[float, ...]) -> list[Alignment]:
        """The law's alignments at ``shift`` (the same for every batch: kept)."""
        if shift not in self.aligned:
            self.aligned[shift] = alignments(action, self.geometry, shift)
        return self.aligned[shift]


#: values per chunk of a layer comparison: the difference is written and read back while it is
#: still in the CPU cache (measured: about 1.5x faster than one pass over a whole 6 MB batch)
CACHE_VALUES = 1 << 19


class _FastNorms:
    """:func:`shiftlab.law.block_norms` without copies, for one layer's reference maps.

    The reference is shifted along the last axis once per feature shift there (cached:
    the engine visits shifts with that axis slowest), then compared box by box over the
    leading axes; positions outside the overlap along the last axis are zeroed in the
    difference. Reference norms over any box come from an integral image. A test checks
    it equals the plain :func:`~shiftlab.law.block_norms`.
    """

    def __init__(self, ref: Tensor, circular: bool):
        self.ref, self.circular = ref, circular
        self.rank = ref.ndim - 2
        self.n_last = ref.shape[-1]
        energy = ref.to(torch.float64).square().sum(1)                  # (N, *spatial)
        for d in range(1, self.rank + 1):
            energy = energy.cumsum(d)
        self.integral = nn.functional.pad(energy, (1, 0) * self.rank)
        self._shifted: dict[int, Tensor] = {}        # k -> reference shifted along the last axis
        self._scratch = torch.empty(ref.numel(), dtype=ref.dtype, device=ref.device)

    def _ref_shifted_last(self, k: int) -> Tensor:
        if k not in self._shifted:
            if len(self._shifted) >= 2:              # shifts come last-axis-major: keep two
                self._shifted.pop(next(iter(self._shifted)))
            n, buf = self.n_last, torch.empty_like(self.ref)
            r = k % n if self.circular else k
            if r == 0:
                buf.copy_(self.ref)
            elif self.circular:
                buf[..., r:] = self.ref[..., :n - r]
                buf[..., :r] = self.ref[..., n - r:]
            elif abs(r) < n:                         # outside positions are zeroed later
                buf[..., max(r, 0):n + min(r, 0)] = self.ref[..., max(-r, 0):n - max(r, 0)]
            self._shifted[k] = buf
        return self._shifted[k]

    def _box_sq(self, box: tuple[slice, ...], images: slice) -> Tensor:
        """``Σ ‖ref‖²`` over a box, per sample (inclusion–exclusion on the integral image)."""
        s = self.integral[images]
        if self.rank == 2:                               # the common case, spelled out
            (r, c) = box
            return (s[:, r.stop, c.stop] - s[:, r.start, c.stop]
                    - s[:, r.stop, c.start] + s[:, r.start, c.start])
        total = 0
        for corner in range(1 << self.rank):
            index, sign = [slice(None)], 1
            for a, sl in enumerate(box):
                if corner >> a & 1:
                    index.append(sl.start)
                    sign = -sign
                else:
                    index.append(sl.stop)
            total = total + sign * s[tuple(index)]
        return total

    def __call__(self, out: Tensor, alignment: Alignment, images: slice) -> tuple[Tensor, Tensor, int]:
        ref_last = self._ref_shifted_last(int(alignment.feature_shift[-1]))[images]
        d2 = torch.zeros(len(out), dtype=torch.float64, device=out.device)
        r2 = torch.zeros_like(d2)
        positions = 0
        whole = slice(0, self.n_last)
        for out_box, src_box in alignment.blocks:
            last = out_box[-1]
            if self.circular and last.start != 0:
                continue                                   # the last axis is wrapped in ref_last
            lead = (slice(None), slice(None)) + out_box[:-1]
            a, b = out[lead], ref_last[(slice(None), slice(None)) + src_box[:-1]]
            rows = max(1, CACHE_VALUES // max(1, a[:1].numel()))
            for i in range(0, len(a), rows):              # chunks whose difference stays in cache
                part = a[i:i + rows]
                diff = self._scratch[:part.numel()].view(part.shape)   # reused: no fresh pages
                torch.sub(part, b[i:i + rows], out=diff)
                if not self.circular:
                    diff[..., :last.start] = 0
                    diff[..., last.stop:] = 0
                d2[i:i + rows] += torch.linalg.vector_norm(diff.flatten(1), dim=1).to(torch.float64).square()
            width = whole if self.circular else src_box[-1]
            r2 += self._box_sq(src_box[:-1] + (width,), images)
            positions += math.prod(s.stop - s.start for s in out_box[:-1]) * (width.stop - width.start)
        return d2, r2, positions


class _Engine:
    """Holds the metric state of one audit; :meth:`process` folds in one batch."""

    def __init__(self, model: nn.Module, config: AuditConfig, names: list[str],
                 amp: torch.dtype | None = None):
        self.model, self.config, self.names, self.amp = model, config, names, amp
        self.action = config.action
        self.layers: list[_Layer] = []
        self.stability = self.consistency = None
        self.integer_worst = self.half_worst = self.half_consistency = None   # the gap (classifiers)
        self.n_images = self.forwards = self.clean_hits = self.clean_labelled = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.data_records: list[dict] = []    # what the data said about itself (folder streams)
        self.probe: Probe | None = None

    # --- first batch: validate and learn the model's layers ----------------------------
    def setup(self, x: Tensor) -> None:
        rank, cfg = spatial_rank(x), self.config
        check_model_fits(self.model, x)
        self.grid = ShiftSet.parse(cfg.shifts if cfg.shifts is not None else self.action.default_shifts,
                                   rank=rank)
        self.shifts = self.grid.tensor()                      # (K, rank) float64
        self.zero = self.grid.zero_index
        size = tuple(x.shape[2:])
        seen = self.action.output_size(size)
        if 2 * cfg.margin >= min(seen):
            raise ShiftlabError(f"a margin of {cfg.margin} leaves no position of the "
                                f"{'x'.join(map(str, seen))} input to compare; use a margin "
                                f"below {min(seen) // 2}")
        self.action.check_shifts(size, self.shifts)
        self.pair_rule = self.action.pair_range(size, self.grid.max_abs(), cfg.pair_range)
        if cfg.pairs:
            lo, hi = self.pair_rule.low, self.pair_rule.high
            if any(h - l < (1 if self.action.integer else 1e-9) for l, h in zip(lo, hi)):
                raise ShiftlabError(f"no room for random consistency shifts on "
                                    f"{'x'.join(map(str, size))} inputs ({self.pair_rule.words}); "
                                    "use --pairs 0 or larger inputs")
            last = [h - 1 if self.action.integer else h for h in hi]
            try:
                self.action.check_shifts(size, torch.tensor([lo, last], dtype=torch.float64))
            except ShiftlabError as err:
                raise ShiftlabError(f"consistency pairs ({self.pair_rule.words}): {err}") from None
        reference = self.action.reference(x[:1])
        self.input_shape = list(reference.shape[1:])
        infos = infer_layers(self.model, reference, self.names)
        geometries = layer_geometries(self.model, reference, self.action, infos, self.shifts, cfg.margin)
        period = 1                      # the largest stride so far: what pooling can forgive
        for info in infos:
            geometry = geometries[info.name]
            if geometry.stride is not None:
                comparison = "equivariance"
                period = max(period, info.stride)
            elif info.stride_source == "unknown":
                comparison = "skipped"
            else:
                comparison = "invariance"
                info = dataclasses.replace(info, stride=period)
            metric = None if comparison == "skipped" else EquivarianceError(len(self.grid))
            self.layers.append(_Layer(info, comparison, geometry, metric))
        if not any(l.info.name == cfg.sensitivity_layer for l in self.layers):
            raise ShiftlabError(f"sensitivity layer {cfg.sensitivity_layer!r} produced no "
                                "tensor output")
        self.sensitivity = SensitivityMap(self.shifts)
        self.classifier = len(infos[-1].shape) == 1            # output: N x classes
        self.classes = infos[-1].shape[0] if self.classifier else None
        if self.classifier:
            self.stability = GridStability(len(self.grid), self.grid.neighbours())
            self.consistency = Consistency()
            self._setup_gap()
        if cfg.half_pixel:
            self._setup_half_pixel(size, infos[-1].shape)
        self.sample_shape = tuple(x.shape[1:])
        self.probe = Probe(self.model, self.names,
                           clone=[i.name for i in infos if i.overwritten]).__enter__()

    def _setup_gap(self) -> None:
        """The worst case over integer shifts: the unshifted input and the grid's integer shifts."""
        on_integers = (self.shifts == self.shifts.round()).all(dim=1)
        if self.zero is not None:
            on_integers[self.zero] = False                   # the unshifted input is counted once
        self.integer_grid = torch.nonzero(on_integers).flatten()
        self.integer_worst = WorstCase()
        self.integer_words = (f"right unshifted and at all {len(self.integer_grid)} non-zero "
                              f"integer shifts of the {self.action.name} grid"
                              if len(self.integer_grid) else
                              "right unshifted (the grid has no non-zero integer shift)")

    def _setup_half_pixel(self, size: tuple[int, ...], output_shape: list[int]) -> None:
        """The half-pixel lattice around the grid, minus what the grid already passes, and
        the half-pixel pairs' range; both checked against the input size."""
        if not self.classifier:
            raise ShiftlabError(f"half-pixel worst case and consistency compare class predictions; "
                                f"this model's output per input is {'x'.join(map(str, output_shape))}, "
                                "not a vector of class scores: drop --half-pixel")
        self.half_action = FractionalShift()
        lattice = half_pixel_lattice(self.shifts)
        low = [math.floor(v) + 0.5 for v in self.pair_rule.low]
        high = [math.ceil(v) - 0.5 for v in self.pair_rule.high]
        for what, shifts in (("half-pixel lattice", lattice),
                             ("half-pixel pairs", torch.tensor([low, high], dtype=torch.float64))):
            try:
                self.half_action.check_shifts(size, shifts)
            except ShiftlabError as err:
                raise ShiftlabError(f"{what}: {err}") from None
        grid_index = {tuple(v): k for k, v in enumerate(self.shifts.tolist())}
        points = lattice.tolist()
        self.half_grid = torch.tensor([grid_index[tuple(v)] for v in points
                                       if tuple(v) in grid_index and any(v)], dtype=torch.int64)
        self.half_extra = lattice[[tuple(v) not in grid_index and any(v) for v in points]]
        self.half_seed = stream_seed(self.config.seed, HALF_PIXEL_STREAM)
        self.half_worst, self.half_consistency = WorstCase(), Consistency()
        self.half_words = (f"right at all {len(lattice)} shifts of the half-pixel lattice "
                           f"{_lattice_words(lattice)} (integer ones and the unshifted input "
                           "included; band-limited Fourier circular shifts)")
        lo, hi = self.pair_rule.low, self.pair_rule.high
        r = (f"[{lo[0]:g}, {hi[0]:g})" if len(set(lo)) == 1 and len(set(hi)) == 1 else
             " x ".join(f"[{a:g}, {b:g})" for a, b in zip(lo, hi)))
        self.half_rule = ("P[ŷ(x) = ŷ(T_δ x)]: the unshifted input against δ = s + ½ per axis, s an "
                          f"integer uniform in {r} per axis, a band-limited Fourier circular shift "
                          "(Michaeli et al. 2023, shift_eval.py, random shifts with up=2)")

    def close(self) -> None:
        if self.probe is not None:
            self.probe.__exit__(None, None, None)
            self.probe = None

    # --- shards: sent to the other ranks, merged in rank order ---------------------------
    def __getstate__(self) -> dict:
        """What another rank needs to merge this shard: no model, no hooks, no caches."""
        state = dict(self.__dict__, model=None, probe=None)
        state["layers"] = [dataclasses.replace(l, aligned={}) for l in self.layers]
        return state

    def merge(self, other: "_Engine") -> None:
        """Fold in the metric state of another shard of the same audit (a no-op if it saw
        no data); both were set up by the same model on the same data."""
        if other.sample_shape is None:
            return
        if other.sample_shape != self.sample_shape:
            raise ShiftlabError(f"all inputs must have one shape; got {other.sample_shape} "
                                f"after {self.sample_shape}")
        if [l.info.name for l in other.layers] != [l.info.name for l in self.layers]:
            raise ShiftlabError("the processes probed different layers; give every rank the same model")
        for mine, theirs in zip(self.layers, other.layers):
            if mine.metric is not None:
                mine.metric.merge(theirs.metric)
        for name in ("sensitivity", "stability", "consistency", "integer_worst", "half_worst",
                     "half_consistency"):
            if getattr(self, name) is not None:
                getattr(self, name).merge(getattr(other, name))
        for name in ("n_images", "forwards", "clean_hits", "clean_labelled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.data_records = self.data_records + other.data_records

    def data_record(self) -> dict | None:
        """Where the data came from (a folder stream's record, merged over shards)."""
        from .data.folder import merge_records
        return merge_records(self.data_records)

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        """The probed maps of the (shifted) inputs ``x``, normalised first when configured
        (under autocast with ``amp``), as the law compares them: 16-bit maps in float32, and
        on the CPU when the device has no float64 (MPS)."""
        norm = self.config.normalize
        with autocast(x.device, self.amp):
            feats = self.probe(x if norm is None else normalize(x, norm))
        if self.amp is None and x.device.type != "mps":
            return feats
        low = (torch.float16, torch.bfloat16)
        return {k: v.to(device="cpu" if v.device.type == "mps" else v.device,
                        dtype=torch.float32 if v.dtype in low else v.dtype) for k, v in feats.items()}

    def _predict(self, x: Tensor) -> Tensor:
        """Top-1 classes of the (shifted) inputs ``x``, on the CPU: the output only."""
        norm = self.config.normalize
        with autocast(x.device, self.amp):
            out = self.probe(x if norm is None else normalize(x, norm))[OUTPUT]
        return out.argmax(-1).cpu()

    # --- one batch ---------------------------------------------------------------------
    def _update_layers(self, feats: dict[str, Tensor], ref: dict[str, Tensor],
                       norms: dict[str, _FastNorms], images: slice, k: int) -> None:
        """Fold in the rows ``feats`` = samples ``images`` of the batch shifted by grid shift k."""
        shift = tuple(self.shifts[k].tolist())
        gidx = torch.full((images.stop - images.start,), k, dtype=torch.int64)
        for layer in self.layers:
            if layer.metric is None:
                continue
            name = layer.info.name
            out, fast = feats[name], norms.get(name)
            c = compare(self.action, layer.geometry, out, ref[name][images], shift,
                        norms=None if fast is None else (lambda o, a, f=fast: f(o, a, images)),
                        cands=layer.alignments(self.action, shift))
            layer.metric.update(gidx, c.diff_sq, c.ref_sq, c.positions)
            if name == self.config.sensitivity_layer:
                d2, r2 = c.diff_sq, c.ref_sq
                if layer.comparison != "invariance":            # the map compares unaligned
                    d2, r2 = masked_sq_norms(out.flatten(1), ref[name][images].flatten(1))
                self.sensitivity.update(gidx, d2, r2)

    def process(self, x: Tensor, y: Tensor | None, start: int | None = None) -> None:
        """Fold in a batch whose first sample has index ``start`` in the whole data (this
        engine's image count when None): the index keys the random pairs."""
        start = self.n_images if start is None else start
        if self.sample_shape is None:
            self.setup(x)
        elif tuple(x.shape[1:]) != self.sample_shape:
            raise ShiftlabError(f"all inputs must have one shape; got {tuple(x.shape[1:])} "
                                f"after {self.sample_shape}")
        if y is not None and self.classifier and len(y) and \
                (int(y.min()) < 0 or int(y.max()) >= self.classes):
            raise ShiftlabError(f"labels must be class indices in [0, {self.classes - 1}] for this "
                                f"model's {self.classes} outputs, got values in "
                                f"[{int(y.min())}, {int(y.max())}]; check the data's labels")
        cfg, n, k_grid, rank = self.config, len(x), len(self.grid), self.shifts.shape[1]
        # rows: the non-zero grid shifts (shift-major, the last axis slowest), then the pairs
        order = sorted((k for k in range(k_grid) if k != self.zero),
                       key=lambda k: tuple(reversed(self.shifts[k].tolist())))
        order = torch.tensor(order, dtype=torch.int64)
        row_shift = self.shifts[order].repeat_interleave(n, 0)
        row_grid = order.repeat_interleave(n)
        n_grid_rows = len(row_shift)
        if cfg.pairs and self.classifier:
            ps = pair_shifts(cfg.seed, start, n, cfg.pairs, self.pair_rule.low,
                             self.pair_rule.high, integer=self.action.integer, rank=rank)
            row_shift = torch.cat([row_shift, ps.reshape(-1, rank)])
            row_grid = torch.cat([row_grid, torch.full((2 * cfg.pairs * n,), -1)])
        row_img = torch.arange(n).repeat(len(row_shift) // n)
        row_shift_arg = row_shift.to(torch.int64) if self.action.integer else row_shift

        with torch.inference_mode():
            ref = self._forward(self.action.reference(x))
            self.forwards += n
            norms = {l.info.name: _FastNorms(ref[l.info.name], self.action.circular and l.geometry.rolls)
                     for l in self.layers if l.comparison == "equivariance"}
            if self.classifier:
                grid_logits = ref[OUTPUT].new_zeros(k_grid, n, ref[OUTPUT].shape[-1])
                pair_pred = torch.zeros(len(row_shift) - n_grid_rows, dtype=torch.int64)
            if self.zero is not None:                   # the identity: compared with itself
                self._update_layers(ref, ref, norms, slice(0, n), self.zero)
                if self.classifier:
                    grid_logits[self.zero] = ref[OUTPUT]
            for lo in range(0, len(row_shift), cfg.batch_size):
                hi = min(lo + cfg.batch_size, len(row_shift))
                img = row_img[lo:hi]
                feats = self._forward(self.action(x[img.to(x.device)], row_shift_arg[lo:hi].to(x.device)))
                self.forwards += hi - lo
                n_on_grid = max(0, min(hi, n_grid_rows) - lo)   # grid rows come first
                # grid rows are shift-major: split them into runs of one shift, each a
                # contiguous range of samples
                starts = [lo] + list(range((lo // n + 1) * n, lo + n_on_grid, n))
                for run_lo in starts[:1 if n_on_grid else 0] + starts[1:]:
                    run_hi = min(lo + n_on_grid, (run_lo // n + 1) * n)
                    k = int(row_grid[run_lo])
                    images = slice(run_lo % n, run_lo % n + run_hi - run_lo)
                    part = {name: v[run_lo - lo:run_hi - lo] for name, v in feats.items()}
                    self._update_layers(part, ref, norms, images, k)
                    if self.classifier:
                        grid_logits[k, images] = part[OUTPUT]
                if self.classifier and hi > n_grid_rows:
                    p_lo = max(lo, n_grid_rows) - n_grid_rows
                    pair_pred[p_lo:hi - n_grid_rows] = feats[OUTPUT][n_on_grid:].argmax(-1).cpu()
            if self.classifier:
                self._worst_cases(x, y, start, ref[OUTPUT].argmax(-1).cpu(), grid_logits.argmax(-1).cpu())

        if self.classifier:
            if self.zero is not None or k_grid:
                self.stability.update(grid_logits.softmax(-1), y)
            if len(pair_pred):
                preds = pair_pred.reshape(2 * cfg.pairs, n)
                self.consistency.update(preds[0::2], preds[1::2])
            if y is not None:
                self.clean_hits += int((ref[OUTPUT].argmax(-1).cpu() == y.cpu()).sum())
                self.clean_labelled += n
        self.n_images += n

    def _worst_cases(self, x: Tensor, y: Tensor | None, start: int, clean: Tensor,
                     grid: Tensor) -> None:
        """Fold in the worst cases over integer shifts and (``half_pixel``) over the half-pixel
        lattice, and half-pixel consistency. ``clean``: top-1 classes ``(N,)`` unshifted;
        ``grid``: ``(K, N)`` at the grid's shifts. Lattice points off the grid and the
        half-pixel pairs get their own forward passes (output only)."""
        cfg, n, rank = self.config, len(x), self.shifts.shape[1]
        if y is not None:
            y = y.cpu()
            clean_hit = (clean == y)[None]
            self.integer_worst.update(torch.cat([clean_hit, grid[self.integer_grid] == y]))
        if self.half_worst is None:
            return
        rows = [self.half_extra.repeat_interleave(n, 0)] if y is not None else []
        n_lattice = len(rows[0]) if rows else 0
        if cfg.pairs:
            s = pair_shifts(self.half_seed, start, n, cfg.pairs, self.pair_rule.low,
                            self.pair_rule.high, integer=True, rank=rank)[:cfg.pairs]
            rows.append((s + 0.5).reshape(-1, rank))              # pair-major: (pairs·N, rank)
        shifts = torch.cat(rows) if rows else torch.zeros(0, rank, dtype=torch.float64)
        image = torch.arange(n).repeat(len(shifts) // n)
        pred = torch.empty(len(shifts), dtype=torch.int64)
        for lo in range(0, len(shifts), cfg.batch_size):
            hi = min(lo + cfg.batch_size, len(shifts))
            moved = self.half_action(x[image[lo:hi].to(x.device)], shifts[lo:hi].to(x.device))
            pred[lo:hi] = self._predict(moved)
        self.forwards += len(shifts)
        if y is not None:
            self.half_worst.update(torch.cat([clean_hit, grid[self.half_grid] == y,
                                              pred[:n_lattice].reshape(-1, n) == y]))
        if cfg.pairs:
            self.half_consistency.update(clean.expand(cfg.pairs, n),
                                         pred[n_lattice:].reshape(cfg.pairs, n))

    # --- the result --------------------------------------------------------------------
    def layer_results(self) -> list[LayerResult]:
        out = []
        nonzero = (self.shifts != 0).any(dim=1)
        for layer in self.layers:
            info, k = layer.info, len(self.grid)
            if layer.metric is None:
                out.append(LayerResult(info.name, info.kind, list(info.shape), info.stride,
                                       "skipped", [], [], [], None, None))
                continue
            _, exact = self.action.feature_shifts(self.shifts, info.stride)
            if layer.comparison == "invariance":
                alignment = ["invariance"] * k
            else:
                alignment = ["exact" if e else self.action.inexact for e in exact.tolist()]
            m = layer.metric
            computed = m.compute()
            compared = m.positions > 0
            comparison, note, geometry = layer.comparison, None, layer.geometry
            if not geometry.rolls:
                note = ("the layer changes the map size, so a circular shift of the input is "
                        "not a roll of its map: compared only where its receptive field did "
                        "not wrap")
            if comparison == "equivariance" and bool(nonzero.any()) and not bool((compared & nonzero).any()):
                comparison = "not comparable"
                note = ("not comparable: the model fails on NaN inputs, so which positions "
                        "the wrapped pixels reach cannot be traced"
                        if not geometry.rolls and geometry.reach is None else
                        "not comparable: every position's receptive field wraps around under "
                        "these circular shifts" if not geometry.rolls else
                        "not comparable: no feature position is defined in both maps at any "
                        "non-zero shift (the maps are too small for the shifts or the margin)")
            out.append(LayerResult(
                info.name, info.kind, list(info.shape), info.stride, comparison, alignment,
                computed["error"], computed["max_error"],
                EquivarianceError.pooled(m.diff_sq, m.ref_sq, exact & nonzero & compared),
                EquivarianceError.pooled(m.diff_sq, m.ref_sq, ~exact & nonzero & compared),
                note))
        return out

    def invariance(self) -> InvarianceResult:
        inv = InvarianceResult()
        if self.stability is not None:
            s = self.stability.compute()
            inv.flip_rate, inv.mean_abs_change, inv.steps = s["flip_rate"], s["mean_abs_change"], s["steps"]
            inv.step_size = self.grid.step
            inv.accuracy, inv.true_class_prob = s.get("accuracy"), s.get("true_class_prob")
            inv.worst_case_accuracy = s.get("worst_case_accuracy")
        if self.consistency is not None:
            c = self.consistency.compute()
            inv.consistency, inv.pairs = c["consistency"], c["pairs"]
        if self.clean_labelled:
            inv.clean_accuracy = self.clean_hits / self.clean_labelled
        for metric, gap, worst, words in (
                (self.integer_worst, "gap_integer", "integer_worst_case_accuracy", "integer_words"),
                (self.half_worst, "gap_half_pixel", "half_pixel_worst_case_accuracy", "half_words")):
            w = metric.compute() if metric is not None else {"labelled": 0}
            if w["labelled"]:                   # the same labelled images as clean_accuracy
                setattr(inv, worst, w["worst_case_accuracy"])
                setattr(inv, gap, (self.clean_hits - w["robust"]) / self.clean_labelled)
                setattr(inv, f"{gap}_shifts", getattr(self, words))
        if self.half_consistency is not None:
            c = self.half_consistency.compute()
            inv.half_pixel_consistency, inv.half_pixel_pairs = c["consistency"], c["pairs"]
            inv.half_pixel_consistency_rule = self.half_rule if c["pairs"] else None
        sens = self.sensitivity.compute()
        inv.sensitivity_layer = self.config.sensitivity_layer
        inv.sensitivity, inv.sensitivity_radius, inv.sensitivity_radial = \
            sens["map"], sens["radius"], sens["radial"]
        return inv

    def result(self, dtype: torch.dtype, device: torch.device, processes: int,
               seconds: float = 0.0) -> AuditResult:
        return AuditResult(self.provenance(dtype, device, processes), self.shifts.tolist(),
                           list(self.grid.shape) if self.grid.shape else None,
                           self.layer_results(), self.invariance(), seconds=round(seconds, 3),
                           forwards=self.forwards)

    def provenance(self, dtype: torch.dtype, device: torch.device, processes: int) -> Provenance:
        cfg, settings = self.config, self.action.settings()
        paired = self.consistency is not None and cfg.pairs > 0
        compute = self.amp or dtype
        return Provenance(
            model=cfg.name or type(self.model).__name__, protocol=self.action.name,
            shifts=self.grid.spec, n_images=self.n_images, seed=cfg.seed,
            input_shape=self.input_shape, dtype=str(dtype).replace("torch.", ""),
            tolerance=TOLERANCE.get(compute, 1e-5), margin=cfg.margin,
            fill=settings.get("fill"), crop=settings.get("crop"),
            pairs_per_image=cfg.pairs if self.consistency is not None else 0,
            pair_range=self.pair_rule.as_list() if paired else None,
            pair_offsets=self.pair_rule.words if paired else None,
            batch_size=cfg.batch_size, device=device_name(device), amp=cfg.amp,
            compute_dtype=str(compute).replace("torch.", ""), processes=processes,
            normalize=normalization_record(cfg.normalize), data=self.data_record(),
            versions={"shiftlab": _version(), "torch": torch.__version__,
                      "python": platform.python_version()})


def audit(model: nn.Module, data, config: AuditConfig | None = None, **options) -> AuditResult:
    """Measure how ``model`` responds to shifts of ``data``.

    Args:
        model: any ``nn.Module`` taking ``N×C×T`` signals or ``N×C×H×W`` images (in
            ``eval()`` during the audit), on any device: the batches follow it.
        data: an input tensor, an ``(inputs, labels)`` pair, or an iterable of either
            (a DataLoader).
        config: an :class:`AuditConfig`; keyword ``options`` override its fields
            (``protocol="canvas"``, ``shifts="-4:4"``, ``pairs=5``, ``amp="bf16"``, …).

    Inside an initialised ``torch.distributed`` process group, call it on every rank with
    the same arguments: each rank audits an exact shard of ``data`` and every rank returns
    the merged result, equal to one process's (see :mod:`shiftlab.distributed`). If any
    rank fails, every rank raises. ``shard=False`` audits all of ``data`` in this process
    alone (e.g. on rank 0 only of a training job).

    Returns:
        An :class:`~shiftlab.result.AuditResult`; ``result.table()`` prints it,
        ``result.to_json(path)`` saves it.
    """
    start = time.perf_counter()
    config = dataclasses.replace(config or AuditConfig(), **options)
    group = distributed.current() if config.shard else None
    rank, world = (group.rank, group.size) if group else (0, 1)
    try:
        config = config.check()
        engine, dtype, device = _audit_shard(model, data, config, rank, world)
    except Exception as err:
        if group is None:
            raise
        group.exchange(error=err)              # tell the others; raises err
        raise
    if group is not None:
        sent = group.exchange((engine, _fingerprint(model) if world > 1 else None))
        if len({digest for _, digest in sent}) > 1:
            raise group.fail("the processes hold different models (their weights differ); load "
                             "the same weights on every rank (--weights) or seed the model's "
                             "construction")
        try:
            engine = _merge_shards([e for e, _ in sent])      # every rank's engine, in rank order
        except ShiftlabError as err:
            raise group.fail(str(err)) from None
        engine.model = model
    if engine.n_images == 0:
        message = "no inputs to audit: the data is empty"
        raise group.fail(message) if group else ShiftlabError(message)
    return engine.result(dtype, device, world, seconds=time.perf_counter() - start)


def _merge_shards(shards: list[_Engine]) -> _Engine:
    """The shards' engines merged in rank order into the first that saw data: integer
    counts add exactly, float64 sums add, maxima take the larger."""
    first = next((k for k, e in enumerate(shards) if e.sample_shape is not None), 0)
    engine = shards[first]
    for other in shards[first + 1:]:
        engine.merge(other)
    return engine


def _fingerprint(model: nn.Module) -> str | None:
    """SHA-256 of the model's parameters and buffers (None if its state is not plain tensors)."""
    from .io import digest
    try:
        return digest(dict(model.state_dict()))
    except TypeError:
        return None


def _audit_shard(model: nn.Module, data, config: AuditConfig, rank: int, world: int):
    """Run this rank's shard of the audit; return its engine, the model's dtype and device."""
    from tqdm.auto import tqdm

    names = resolve_layers(model, config.layers)
    if config.sensitivity_layer != OUTPUT and config.sensitivity_layer not in names:
        names += resolve_layers(model, [config.sensitivity_layer])
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    engine = _Engine(model, config, names, amp=check_amp(config.amp, device, dtype))
    total = len(data) if isinstance(data, Tensor) else \
        len(data[0]) if isinstance(data, tuple) and isinstance(data[0], Tensor) else None
    if total is not None and world > 1:
        run = distributed.block(-(-total // config.batch_size), rank, world)
        total = min(run.stop * config.batch_size, total) - run.start * config.batch_size
    stream = data.shard(rank, world) if callable(getattr(data, "indexed", None)) else None
    batches = stream.indexed() if stream is not None else \
        shard_batches(data, config.batch_size, rank, world)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=total, unit="img", desc="audit", leave=False,
                  disable=not config.progress or rank != 0) as bar, ieee_float32(device):
            for first, x, y in batches:
                engine.process(x.to(device=device, dtype=dtype), y, first)
                bar.update(len(x))
    finally:
        engine.close()
        model.train(was_training)
    source = stream if stream is not None else data              # what was read, and how
    engine.data_records = [source.record()] if callable(getattr(source, "record", None)) else []
    return engine, dtype, device


def _version() -> str:
    from . import __version__
    return __version__
