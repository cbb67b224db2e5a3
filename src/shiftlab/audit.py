"""The audit engine: data × shifts → model with probes → streaming metrics → AuditResult.

For every batch of images the engine forwards, in chunks of at most ``batch_size`` rows:

1. the reference views ``T_0 x`` (their features are kept for the batch);
2. every non-zero shift of the grid, for the per-layer equivariance error, the grid
   accuracy, the flip rate and the translation-sensitivity map;
3. ``pairs`` random shift pairs per image, for consistency.

Memory is bounded by the batch size, not the dataset: nothing but metric state outlives
a batch. Random pairs are a pure function of (seed, image index), so the numbers do not
depend on how the data is batched.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ShiftlabError
from .metrics import Consistency, EquivarianceError, GridStability, SensitivityMap, masked_sq_norms
from .probe import OUTPUT, LayerInfo, Probe, infer_layers, resolve_layers, wrap_reach
from .result import AuditResult, InvarianceResult, LayerResult, Provenance
from .shifts import ShiftSet
from .transforms import ShiftAction, make_action, overlap_blocks

__all__ = ["audit", "iter_batches", "pair_shifts", "default_shifts", "TOLERANCE"]

#: Relative errors below this count as exact (float rounding only).
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 1e-2}

DEFAULT_SHIFTS = {"circular": "-4:4", "canvas": "-4:4", "crop": "-4:4", "fractional": "-2:2:0.5"}


def default_shifts(protocol: str) -> str:
    return DEFAULT_SHIFTS.get(protocol, "-4:4")


# ----------------------------------------------------------------------------- data
def _check_batch(x, y) -> tuple[Tensor, Tensor | None]:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"images must be an N x C x H x W tensor, got {shape}; "
                            "add a channel axis for grey images (x[:, None])")
    if not x.is_floating_point():
        raise ShiftlabError(f"images must be floating point, got {x.dtype}; scale them, "
                            "e.g. x.float() / 255")
    if not bool(torch.isfinite(x).all()):
        raise ShiftlabError("images contain NaN or infinite values; clean the data first")
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
    """Yield ``(images, labels or None)`` of at most ``size`` images from a tensor, an
    ``(images, labels)`` pair, or an iterable of either (a DataLoader)."""
    if isinstance(data, Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = _check_batch(*data)
        for i in range(0, len(x), size):
            yield x[i:i + size], (None if y is None else y[i:i + size])
        return
    if not isinstance(data, Iterable):
        raise ShiftlabError(f"cannot read images from a {type(data).__name__}; pass a tensor, "
                            "an (images, labels) pair or a DataLoader")
    for item in data:
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        yield from iter_batches((x, y), size)


# ----------------------------------------------------------------------------- pairs
def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pair_shifts(seed: int, start: int, n: int, pairs: int, low: float, high: float,
                integer: bool = True) -> Tensor:
    """Random shifts ``(2·pairs, n, 2)`` for images ``start … start+n−1``, uniform in
    ``[low, high)`` per axis; a pure function of (seed, image index), so batching does
    not change them."""
    with np.errstate(over="ignore"):
        img = np.arange(start, start + n, dtype=np.uint64)[None, :, None]
        slot = np.arange(2 * pairs, dtype=np.uint64)[:, None, None]
        axis = np.arange(2, dtype=np.uint64)[None, None, :]
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(img * np.uint64(4096) + slot * np.uint64(2) + axis))
        u = (key >> np.uint64(11)).astype(np.float64) * 2.0 ** -53       # uniform [0, 1)
    values = low + u * (high - low)
    if integer:
        values = np.floor(values)
    return torch.from_numpy(values)


#: How the crop protocol draws window offsets for consistency pairs.
CROP_OFFSETS = {
    "zhang": "[0, D) (Zhang 2019 and antialiased-cnns: randint(D))",
    "inclusive": "[0, D] (every window position)",
}


@dataclass(frozen=True)
class PairRange:
    """Where consistency shifts are drawn: uniform in ``[low, high)`` per axis (floored
    for integer protocols), and that rule in words for the result."""

    low: tuple[float, float]
    high: tuple[float, float]
    words: str

    def as_list(self) -> list[float]:
        """``[low, high)`` for both axes, or ``[low_y, high_y, low_x, high_x]``."""
        if self.low[0] == self.low[1] and self.high[0] == self.high[1]:
            return [self.low[0], self.high[0]]
        return [self.low[0], self.high[0], self.low[1], self.high[1]]


def _pair_range(action: ShiftAction, size: tuple[int, int], grid: ShiftSet,
                pair_range: float | None, crop_offsets: str = "zhang") -> PairRange:
    """The consistency protocol of ``action`` on images of ``size``.

    crop: window offsets ``o`` in ``[0, D)`` per axis with ``D`` = image − window (Zhang
    2019: resize 256, 224 windows, ``randint(32)``), or ``[0, D]`` with ``"inclusive"``;
    a shift is ``anchor − o``. canvas: ``[−R, R]`` with R the grid's largest shift.
    circular and fractional: ``[−R, R)`` with ``R = min(32, side / 2)`` (the APS and
    alias-free papers' ±32 on ImageNet).
    """
    if action.name == "crop":
        if crop_offsets not in CROP_OFFSETS:
            raise ShiftlabError(f"crop offsets must be one of {', '.join(CROP_OFFSETS)}, "
                                f"got {crop_offsets!r}")
        span = [n - c for n, c in zip(size, action.size)]                  # D per axis
        anchor = [d // 2 for d in span]
        if crop_offsets == "zhang" and min(span) < 1:
            raise ShiftlabError(
                f"a {action.size[0]}x{action.size[1]} crop of {size[0]}x{size[1]} images has no "
                "window offsets in [0, D) (D = 0); give larger images or a smaller --crop, or "
                "--crop-offsets inclusive")
        first = 1 if crop_offsets == "zhang" else 0
        low = tuple(float(a - d + first) for a, d in zip(anchor, span))
        high = tuple(float(a + 1) for a in anchor)
        d_text = str(span[0]) if span[0] == span[1] else f"{span[0]} (rows), {span[1]} (columns)"
        return PairRange(low, high, f"crop window offsets uniform in "
                                    f"{CROP_OFFSETS[crop_offsets]} per axis, D = {d_text}")
    if action.name == "canvas":
        r = float(pair_range if pair_range is not None else grid.max_abs())
        return PairRange((-r, -r), (r + 1, r + 1),
                         f"integer shifts uniform in [-{r:g}, {r:g}] per axis")
    r = float(pair_range if pair_range is not None else min(32, min(size) // 2))
    kind = "integer" if action.integer else "real"
    return PairRange((-r, -r), (r, r), f"{kind} shifts uniform in [-{r:g}, {r:g}) per axis")


# ----------------------------------------------------------------------------- engine
@dataclass
class _Compared:
    """A probed layer and how its outputs are compared.

    ``rolls``: the protocol acts on this map as on the input (always, except for a
    circular protocol on a map whose size times its stride is not the input's size, such
    as a valid convolution's 24×24 map of a 28×28 input: a roll of the input is not a roll
    of that map). Such a map is compared without wrap-around, only at positions whose
    receptive field did not wrap, as measured by :func:`~shiftlab.probe.wrap_reach`
    (``reach``).
    """

    info: LayerInfo
    comparison: str       # "equivariance" | "invariance" | "skipped"
    metric: EquivarianceError | None
    rolls: bool = True
    reach: dict | None = None

    def bounds(self, shift: tuple[float, float]):
        """Output positions ``((lo_y, hi_y), (lo_x, hi_x))`` no wrapped pixel reaches, or
        None when every position may be compared; ``()`` when none may (a sub-pixel shift
        moves every pixel of the input)."""
        if self.rolls:
            return None
        if self.reach is None or any(d != round(d) for d in shift):
            return ()
        out = []
        for axis, d in enumerate(int(round(d)) for d in shift):
            n = self.info.shape[1 + axis]
            reached = self.reach.get((axis, d)) if d else None
            hit = [] if reached is None else reached.nonzero().flatten().tolist()
            if not hit:
                out.append((0, n))
            elif d > 0:                                  # the wrapped band is at the top/left
                out.append((hit[-1] + 1, n))
            else:                                        # … at the bottom/right
                out.append((0, hit[0]))
        return tuple(out)


class _Aligner:
    """Compares one layer's outputs at a shift with its reference outputs, fast.

    For an integer feature shift ``(ky, kx)`` the reference is shifted along W once per
    ``kx`` (cached: the engine visits shifts column by column), then compared with
    contiguous row slices; the few columns outside the overlap are zeroed in the
    difference. Reference norms over any overlap rectangle come from an integral image.
    The result equals comparing against :meth:`ShiftAction.on_features` under
    :meth:`ShiftAction.valid_mask` (a test checks this).
    """

    def __init__(self, ref: Tensor, circular: bool, margin: int):
        self.ref, self.circular, self.margin = ref, circular, margin
        self.h, self.w = ref.shape[-2:]
        energy = ref.to(torch.float64).square().sum(1)                  # (N, H, W)
        self.integral = torch.nn.functional.pad(energy.cumsum(1).cumsum(2), (1, 0, 1, 0))
        self._shifted: dict[int, Tensor] = {}        # kx -> reference shifted along W
        self._scratch = torch.empty(ref.numel(), dtype=ref.dtype, device=ref.device)

    def _ref_shifted_x(self, kx: int) -> Tensor:
        if kx not in self._shifted:
            if len(self._shifted) >= 2:              # shifts come column by column: keep two
                self._shifted.pop(next(iter(self._shifted)))
            buf = torch.empty_like(self.ref)
            r = kx % self.w if self.circular else kx
            if r == 0:
                buf.copy_(self.ref)
            elif self.circular:
                buf[..., r:] = self.ref[..., :self.w - r]
                buf[..., :r] = self.ref[..., self.w - r:]
            elif abs(r) < self.w:                    # outside columns are zeroed later
                buf[..., max(r, 0):self.w + min(r, 0)] = self.ref[..., max(-r, 0):self.w - max(r, 0)]
            self._shifted[kx] = buf
        return self._shifted[kx]

    def _ref_sq(self, rows: slice, cols: slice, images: slice) -> Tensor:
        s = self.integral[images]
        return (s[:, rows.stop, cols.stop] - s[:, rows.start, cols.stop]
                - s[:, rows.stop, cols.start] + s[:, rows.start, cols.start])

    def sq_norms(self, out: Tensor, fshift: tuple[int, int], images: slice,
                 bounds=None) -> tuple[Tensor, Tensor, int]:
        """``‖out − T'ref‖²`` and ``‖T'ref‖²`` per row over the overlap, for one shift,
        and the number of positions compared (the same for every row)."""
        ky, kx = fshift
        ref_x = self._ref_shifted_x(kx)[images]
        d2 = torch.zeros(len(out), dtype=torch.float64, device=out.device)
        r2 = torch.zeros_like(d2)
        positions = 0
        blocks = overlap_blocks((self.h, self.w), (ky, kx), circular=self.circular,
                                margin=self.margin, bounds=bounds)
        for (rows, cols), (src_rows, src_cols) in blocks:
            if cols.start != 0 and self.circular:
                continue                                   # W already wrapped in ref_x
            a = out[..., rows, :]
            diff = self._scratch[:a.numel()].view(a.shape)   # reused: no fresh pages
            torch.sub(a, ref_x[..., src_rows, :], out=diff)
            if not self.circular:
                diff[..., :cols.start] = 0
                diff[..., cols.stop:] = 0
            d2 += torch.linalg.vector_norm(diff, dim=(1, 2, 3)).to(torch.float64).square()
            width = slice(0, self.w) if self.circular else cols
            r2 += self._ref_sq(src_rows, src_cols if not self.circular else width, images)
            positions += (rows.stop - rows.start) * (width.stop - width.start)
        return d2, r2, positions


def _compare(action: ShiftAction, item: _Compared, out: Tensor, ref: Tensor,
             aligner: _Aligner | None, shift: tuple[float, float],
             images: slice) -> tuple[Tensor, Tensor, int]:
    """Per-row ``‖φ(T_δ x) − T'_δ φ(x)‖²`` and ``‖T'_δ φ(x)‖²`` for rows sharing one shift,
    and the number of positions compared per row (0: nothing to compare).

    Non-spatial layers are compared as they are. Spatial layers are compared on the
    overlap of the feature shift ``δ/s``; when ``s`` does not divide ``δ`` each row keeps
    the best of the floor/ceil alignments (for the fractional protocol: the
    Fourier-shifted map).
    """
    if item.comparison == "invariance":                  # no spatial axes: compare as is
        d2, r2 = masked_sq_norms(out.flatten(1), ref[images].flatten(1))
        return d2, r2, out[0].numel()
    bounds = item.bounds(shift)
    if bounds == ():                                     # nothing is comparable
        zero = torch.zeros(len(out), dtype=torch.float64, device=out.device)
        return zero, zero, 0
    candidates, exact = action.feature_shifts(torch.tensor([shift], dtype=torch.float64),
                                              item.info.stride)
    if not action.integer and not bool(exact.all()):     # sub-pixel: Fourier-shift the map
        moved = action.on_features(ref[images], candidates[0].expand(len(out), 2))
        d2, r2 = masked_sq_norms(out, moved)
        return d2, r2, out[0, 0].numel()
    best = None
    for fshift in sorted({tuple(int(v) for v in c[0].tolist()) for c in candidates},
                         key=lambda c: (c[1], c[0])):
        d2, r2, positions = aligner.sq_norms(out, fshift, images, bounds)
        if best is None:
            best = (d2, r2, positions)
        elif positions:                                  # keep the smaller relative error
            better = d2 * best[1] < best[0] * r2
            if not best[2]:
                better = torch.ones_like(better)
            best = (torch.where(better, d2, best[0]), torch.where(better, r2, best[1]),
                    max(positions, best[2]))
    return best


def _first_conv_channels(model: nn.Module) -> int | None:
    """Input channels of the first ``Conv2d``, to check the data against (None if none)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


class _Engine:
    """Holds the metric state of one audit; :meth:`process` folds in one image batch."""

    def __init__(self, model, action: ShiftAction, grid: ShiftSet, names: list[str], *,
                 pairs: int, pair_range, margin: int, batch_size: int, seed: int,
                 sensitivity_layer: str, crop_offsets: str = "zhang"):
        self.model, self.action, self.grid, self.names = model, action, grid, names
        self.pairs, self.pair_range, self.margin = pairs, pair_range, margin
        self.crop_offsets = crop_offsets
        self.batch_size, self.seed, self.sensitivity_layer = batch_size, seed, sensitivity_layer
        self.shifts = grid.tensor()                       # (K, 2) float64
        self.zero = grid.zero_index
        self.compared: list[_Compared] = []
        self.stability = self.consistency = None
        self.sensitivity = SensitivityMap(self.shifts)
        self.n_images = self.forwards = self.clean_hits = self.clean_labelled = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.input_shape: list[int] = []
        self.probe: Probe | None = None
        self.aligners: dict[str, _Aligner] = {}

    # --- first batch: validate and learn the model's layers ----------------------------
    def setup(self, x: Tensor) -> None:
        channels = _first_conv_channels(self.model)
        if channels is not None and x.shape[1] != channels:
            raise ShiftlabError(f"the model expects {channels}-channel images, the data has "
                                f"{x.shape[1]}; convert the images or pick another model")
        size = tuple(x.shape[-2:])
        if 2 * self.margin >= min(self.action.output_size(size)):
            raise ShiftlabError(f"a margin of {self.margin} leaves no position of the "
                                f"{'x'.join(map(str, self.action.output_size(size)))} input to "
                                f"compare; use a margin below {min(self.action.output_size(size)) // 2}")
        self.action.check_shifts(size, self.shifts)
        self.pair_rule = _pair_range(self.action, size, self.grid, self.pair_range,
                                     self.crop_offsets)
        if self.pairs:
            lo, hi = self.pair_rule.low, self.pair_rule.high
            last = [h - 1 if self.action.integer else h for h in hi]
            try:
                self.action.check_shifts(size, torch.tensor([lo, last], dtype=torch.float64))
            except ShiftlabError as err:
                raise ShiftlabError(f"consistency pairs ({self.pair_rule.words}): {err}") from None
        reference = self.action.reference(x[:1])
        self.input_shape = list(reference.shape[1:])
        infos = infer_layers(self.model, reference, self.names)
        period = 1                      # the largest stride so far: what pooling can forgive
        for info in infos:
            if info.stride is not None and len(info.shape) == 3:
                comparison = "equivariance"
                period = max(period, info.stride)
            elif info.stride_source == "unknown":
                comparison = "skipped"
            else:
                comparison = "invariance"
                info = dataclasses.replace(info, stride=period)
            metric = None if comparison == "skipped" else EquivarianceError(len(self.grid))
            rolls = comparison != "equivariance" or not self.action.circular or \
                [n * info.stride for n in info.shape[1:]] == list(reference.shape[-2:])
            self.compared.append(_Compared(info, comparison, metric, rolls))
        resized = [i for i in self.compared if not i.rolls]
        if resized:                     # where do a circular shift's wrapped pixels reach?
            bands = {(axis, int(d)) for shift in self.shifts.tolist()
                     for axis, d in enumerate(shift) if d == round(d) and d != 0}
            names = list(dict.fromkeys(i.info.name.split("#")[0] for i in resized))
            try:
                reach = wrap_reach(self.model, reference, names, sorted(bands))
            except ShiftlabError:       # the model refuses NaN: nothing can be traced
                reach = {}
            for item in resized:
                item.reach = reach.get(item.info.name)
        if not any(i.info.name == self.sensitivity_layer for i in self.compared):
            raise ShiftlabError(f"sensitivity layer {self.sensitivity_layer!r} produced no "
                                "tensor output")
        self.classifier = len(infos[-1].shape) == 1            # output: N x classes
        self.classes = infos[-1].shape[0] if self.classifier else None
        if self.classifier:
            self.stability = GridStability(len(self.grid), self.grid.neighbours())
            self.consistency = Consistency()
        self.sample_shape = tuple(x.shape[1:])
        self.probe = Probe(self.model, self.names,
                           clone=[i.name for i in infos if i.overwritten]).__enter__()

    def close(self) -> None:
        if self.probe is not None:
            self.probe.__exit__(None, None, None)

    # --- one batch of images -----------------------------------------------------------
    def _update_layers(self, feats: dict[str, Tensor], ref: dict[str, Tensor], images: slice,
                       k: int) -> None:
        """Fold in the rows ``feats`` = images ``images`` of the batch shifted by grid shift k."""
        shift = tuple(self.shifts[k].tolist())
        n = images.stop - images.start
        gidx = torch.full((n,), k, dtype=torch.int64)
        for item in self.compared:
            if item.metric is None:
                continue
            name = item.info.name
            out = feats[name]
            d2, r2, positions = _compare(self.action, item, out, ref[name],
                                         self.aligners.get(name), shift, images)
            item.metric.update(gidx, d2, r2, positions)
            if name == self.sensitivity_layer:
                if item.comparison != "invariance":             # the map compares unaligned
                    d2, r2 = masked_sq_norms(out.flatten(1), ref[name][images].flatten(1))
                self.sensitivity.update(gidx, d2, r2)

    def process(self, x: Tensor, y: Tensor | None) -> None:
        if self.sample_shape is None:
            self.setup(x)
        elif tuple(x.shape[1:]) != self.sample_shape:
            raise ShiftlabError(f"all images must have one shape; got {tuple(x.shape[1:])} "
                                f"after {self.sample_shape}")
        if y is not None and self.classifier and len(y) and \
                (int(y.min()) < 0 or int(y.max()) >= self.classes):
            raise ShiftlabError(f"labels must be class indices in [0, {self.classes - 1}] for this "
                                f"model's {self.classes} outputs, got values in "
                                f"[{int(y.min())}, {int(y.max())}]; check the data's labels")
        n, k_grid = len(x), len(self.grid)
        # rows: the non-zero grid shifts (shift-major, column by column), then the pairs
        order = sorted((k for k in range(k_grid) if k != self.zero),
                       key=lambda k: (self.shifts[k, 1].item(), self.shifts[k, 0].item()))
        order = torch.tensor(order, dtype=torch.int64)
        row_shift = self.shifts[order].repeat_interleave(n, 0)
        row_grid = order.repeat_interleave(n)
        n_grid_rows = len(row_shift)
        if self.pairs and self.classifier:
            ps = pair_shifts(self.seed, self.n_images, n, self.pairs,
                             np.array(self.pair_rule.low), np.array(self.pair_rule.high),
                             integer=self.action.integer)
            row_shift = torch.cat([row_shift, ps.reshape(-1, 2)])
            row_grid = torch.cat([row_grid, torch.full((2 * self.pairs * n,), -1)])
        row_img = torch.arange(n).repeat(len(row_shift) // n)
        if self.action.integer:
            row_shift_arg = row_shift.to(torch.int64)
        else:
            row_shift_arg = row_shift

        with torch.inference_mode():
            ref = self.probe(self.action.reference(x))
            self.forwards += n
            self.aligners = {i.info.name: _Aligner(ref[i.info.name], self.action.circular and i.rolls,
                                                   self.margin)
                             for i in self.compared if i.comparison == "equivariance"}
            if self.classifier:
                grid_logits = ref[OUTPUT].new_zeros(k_grid, n, ref[OUTPUT].shape[-1])
                pair_pred = torch.zeros(len(row_shift) - n_grid_rows, dtype=torch.int64)
            if self.zero is not None:                   # the identity: compared with itself
                self._update_layers(ref, ref, slice(0, n), self.zero)
                if self.classifier:
                    grid_logits[self.zero] = ref[OUTPUT]
            for lo in range(0, len(row_shift), self.batch_size):
                hi = min(lo + self.batch_size, len(row_shift))
                img = row_img[lo:hi]
                feats = self.probe(self.action(x[img.to(x.device)], row_shift_arg[lo:hi].to(x.device)))
                self.forwards += hi - lo
                n_on_grid = max(0, min(hi, n_grid_rows) - lo)   # grid rows come first
                # grid rows are shift-major: split them into runs of one shift, each a
                # contiguous range of images
                starts = [lo] + list(range((lo // n + 1) * n, lo + n_on_grid, n))
                for run_lo in starts[:1 if n_on_grid else 0] + starts[1:]:
                    run_hi = min(lo + n_on_grid, (run_lo // n + 1) * n)
                    k = int(row_grid[run_lo])
                    images = slice(run_lo % n, run_lo % n + run_hi - run_lo)
                    part = {name: v[run_lo - lo:run_hi - lo] for name, v in feats.items()}
                    self._update_layers(part, ref, images, k)
                    if self.classifier:
                        grid_logits[k, images] = part[OUTPUT]
                if self.classifier and hi > n_grid_rows:
                    p_lo = max(lo, n_grid_rows) - n_grid_rows
                    pair_pred[p_lo:hi - n_grid_rows] = feats[OUTPUT][n_on_grid:].argmax(-1).cpu()

        if self.classifier:
            if self.zero is not None or k_grid:
                self.stability.update(grid_logits.softmax(-1), y)
            if len(pair_pred):
                preds = pair_pred.reshape(2 * self.pairs, n)
                self.consistency.update(preds[0::2], preds[1::2])
            if y is not None:
                self.clean_hits += int((ref[OUTPUT].argmax(-1).cpu() == y.cpu()).sum())
                self.clean_labelled += n
        self.n_images += n

    # --- the result --------------------------------------------------------------------
    def layer_results(self) -> list[LayerResult]:
        out = []
        nonzero = (self.shifts != 0).any(dim=1)
        size = "x".join(map(str, self.input_shape[-2:]))
        for item in self.compared:
            info, k = item.info, len(self.grid)
            if item.metric is None:
                out.append(LayerResult(info.name, info.kind, list(info.shape), info.stride,
                                       "skipped", [], [], [], None, None))
                continue
            _, exact = self.action.feature_shifts(self.shifts, info.stride)
            if item.comparison == "invariance":
                alignment = ["invariance"] * k
            else:
                other = "fourier" if self.action.name == "fractional" else "nearest"
                alignment = ["exact" if e else other for e in exact.tolist()]
            m = item.metric
            computed = m.compute()
            compared = m.positions > 0
            comparison, note = item.comparison, None
            if not item.rolls:
                note = (f"a circular shift of the {size} input is not a roll of this "
                        f"{'x'.join(map(str, info.shape[1:]))} map (the layer changes the map "
                        "size): compared only where its receptive field did not wrap")
            if comparison == "equivariance" and bool(nonzero.any()) and not bool((compared & nonzero).any()):
                comparison = "not comparable"
                note = ("not comparable: the model fails on NaN inputs, so which positions "
                        "the wrapped pixels reach cannot be traced" if not item.rolls and item.reach is None else
                        "not comparable: every position's receptive field wraps around under "
                        "these circular shifts" if not item.rolls else
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
        sens = self.sensitivity.compute()
        inv.sensitivity_layer = self.sensitivity_layer
        inv.sensitivity, inv.sensitivity_radius, inv.sensitivity_radial = \
            sens["map"], sens["radius"], sens["radial"]
        return inv


#: Most random pairs per image (each pair costs two forward passes per image).
MAX_PAIRS = 10_000
MAX_BATCH = 1 << 20


def _check_options(*, batch_size: int, pairs: int, pair_range, margin: int, fill: float,
                   seed: int) -> None:
    """One-line errors for audit options that cannot work, before any model runs."""
    import math
    if not 1 <= batch_size <= MAX_BATCH:
        raise ShiftlabError(f"batch size must be in [1, {MAX_BATCH}], got {batch_size}")
    if not 0 <= pairs <= MAX_PAIRS:
        raise ShiftlabError(f"pairs per image must be in [0, {MAX_PAIRS}], got {pairs}")
    if pair_range is not None and not (math.isfinite(pair_range) and pair_range > 0):
        raise ShiftlabError(f"pair range must be a positive number of pixels, got {pair_range}")
    if margin < 0:
        raise ShiftlabError(f"margin must be 0 or more, got {margin}")
    if not math.isfinite(fill):
        raise ShiftlabError(f"the canvas fill must be a finite number, got {fill}")
    if not 0 <= seed < 2 ** 63:
        raise ShiftlabError(f"seed must be in [0, 2**63), got {seed}")


def audit(model: nn.Module, data, *, protocol: str = "circular",
          shifts: "str | ShiftSet | Iterable | None" = None, layers=None, pairs: int = 5,
          pair_range: float | None = None, margin: int = 0, fill: float = 0.0,
          crop: tuple[int, int] | None = None, crop_offsets: str = "zhang",
          batch_size: int = 256, seed: int = 0,
          sensitivity_layer: str = OUTPUT, name: str | None = None,
          progress: bool = False) -> AuditResult:
    """Measure how ``model`` responds to shifts of ``data``.

    Args:
        model: any ``nn.Module`` taking ``N×C×H×W`` images (in ``eval()`` during the audit).
        data: an image tensor, an ``(images, labels)`` pair, or an iterable of either.
        protocol: ``circular`` | ``canvas`` | ``crop`` | ``fractional`` (:mod:`shiftlab.transforms`).
        shifts: the shift grid for per-layer errors and grid metrics: a spec such as
            ``"-4:4"`` (see :mod:`shiftlab.shifts`), a list of ``(dy, dx)``, or a ShiftSet.
        layers: names of the layers to probe (default: convs, pools, activations, blocks).
        pairs: random shift pairs per image for consistency (0 skips them).
        pair_range: consistency shifts in ``[-R, R)`` (default circular/fractional:
            ``min(32, H/2)``; canvas: ``[-R, R]`` with R the grid's largest shift).
        crop_offsets: crop protocol's consistency windows: ``"zhang"`` draws offsets in
            ``[0, D)`` per axis (Zhang 2019's evaluation, ``randint(D)``), ``"inclusive"``
            in ``[0, D]``. The result records the rule in ``provenance.pair_offsets``.
        margin: feature positions this close to a border are ignored (canvas, crop).
        fill: the canvas background. crop: the window ``(h, w)`` of the crop protocol.
        batch_size: the most rows (shifted images) in one forward pass; bounds memory.
        seed: seeds the random pairs. sensitivity_layer: the layer of the sensitivity map.
        name: the model's name in the result. progress: show a progress bar.

    Returns:
        An :class:`~shiftlab.result.AuditResult`; ``result.table()`` prints it,
        ``result.to_json(path)`` saves it.
    """
    _check_options(batch_size=batch_size, pairs=pairs, pair_range=pair_range, margin=margin,
                   fill=fill, seed=seed)
    from tqdm.auto import tqdm

    action = make_action(protocol, fill=fill, crop=crop)
    grid = ShiftSet.parse(shifts if shifts is not None else default_shifts(protocol))
    names = resolve_layers(model, layers)
    if sensitivity_layer != OUTPUT and sensitivity_layer not in names:
        names += resolve_layers(model, [sensitivity_layer])
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    engine = _Engine(model, action, grid, names, pairs=pairs, pair_range=pair_range,
                     margin=margin, batch_size=batch_size, seed=seed,
                     sensitivity_layer=sensitivity_layer, crop_offsets=crop_offsets)
    total = len(data) if isinstance(data, Tensor) else \
        len(data[0]) if isinstance(data, tuple) and isinstance(data[0], Tensor) else None
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="img", desc="audit", disable=not progress, leave=False) as bar:
            for x, y in iter_batches(data, batch_size):
                engine.process(x.to(device=device, dtype=dtype), y)
                bar.update(len(x))
    finally:
        engine.close()
        model.train(was_training)
    if engine.n_images == 0:
        raise ShiftlabError("no images to audit: the data is empty")
    provenance = Provenance(
        model=name or type(model).__name__, protocol=protocol, shifts=grid.spec,
        n_images=engine.n_images, seed=seed, input_shape=engine.input_shape,
        dtype=str(dtype).replace("torch.", ""), tolerance=TOLERANCE.get(dtype, 1e-5),
        margin=margin, fill=fill if protocol == "canvas" else None,
        crop=list(crop) if protocol == "crop" else None,
        pairs_per_image=pairs if engine.consistency is not None else 0,
        pair_range=engine.pair_rule.as_list() if engine.consistency is not None and pairs else None,
        pair_offsets=engine.pair_rule.words if engine.consistency is not None and pairs else None,
        batch_size=batch_size,
        versions={"shiftlab": _version(), "torch": torch.__version__,
                  "python": platform.python_version()})
    return AuditResult(provenance, engine.shifts.tolist(),
                       list(grid.shape) if grid.shape else None, engine.layer_results(),
                       engine.invariance(), seconds=round(time.perf_counter() - start, 3),
                       forwards=engine.forwards)


def _version() -> str:
    from . import __version__
    return __version__
