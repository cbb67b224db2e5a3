"""The audit's observers: each metric family owns its state, its updates, its merge and its
part of the result; the driver (:mod:`shiftlab.audit`) only forwards and hands them data.

Per audit the driver calls ``setup(plan)``; per batch ``reference(batch)`` once the
unshifted maps are in, ``on_map(name, out, chunk)`` for every probed map of every chunk of
shifted rows (observers with ``maps = True``; called from the forward hook, while the map
is in cache), and ``batch(batch)`` once the batch's outputs are in; at the end
``contribute(parts)``. Merging shards needs no code: :meth:`Observer.merge` folds in every
:class:`~shiftlab.metrics.StreamingMetric` the observer holds (directly or in a list or
dict) by the reductions it declared. Attributes whose names start with ``_`` are the
current batch's scratch and never leave the process.

A new metric is one new observer: subclass :class:`Observer` and add it to
:func:`observers_for` (built in) or pass it to ``audit(..., observers=[Mine])``; it is
updated, merged over ``torchrun`` ranks and written (an extra one under
``parts["extra"][its name]``, which lands in :attr:`AuditResult.extra`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from .actions import FractionalShift
from .batches import HALF_PIXEL_STREAM, pair_shifts, stream_seed
from .errors import ShiftlabError
from .law import ReferenceMaps, compare
from .metrics import (Consistency, Counts, EquivarianceError, GridStability, SensitivityMap,
                      StreamingMetric, WorstCase, masked_sq_norms)
from .plan import AuditPlan, Chunk
from .probe import OUTPUT
from .result import LayerResult

__all__ = ["Observer", "Batch", "LayerErrors", "Sensitivity", "GridInvariance", "IntegerGap",
           "HalfPixel", "observers_for", "half_pixel_lattice"]

_F64 = torch.float64


@dataclass
class Batch:
    """One batch as the observers see it. ``ref``: the unshifted maps; ``grid_logits``
    ``(K, N, C)`` and ``pair_pred`` ``(2·pairs·N,)``, pair-major: a classifier's outputs at the grid's
    shifts and the consistency pairs' top-1; ``predict``: top-1 classes of more inputs
    (counted as forwards)."""

    x: Tensor
    y: Tensor | None
    start: int
    ref: dict[str, Tensor]
    predict: Callable[[Tensor], Tensor]
    grid_logits: Tensor | None = None
    pair_pred: Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def clean_pred(self) -> Tensor:
        return self.ref[OUTPUT].argmax(-1).cpu()


class Observer:
    """Base class (see the module doc): every hook is a no-op until a subclass writes it."""

    maps = False                     # wants every probed map of every chunk (on_map)

    def setup(self, plan: AuditPlan) -> None:
        self.plan = plan

    def reference(self, batch: Batch) -> None: ...

    def on_map(self, name: str, out: Tensor, chunk: Chunk) -> None: ...

    def batch(self, batch: Batch) -> None: ...

    def contribute(self, parts: dict) -> None: ...

    def metrics(self) -> Iterator[tuple[str, StreamingMetric]]:
        """Every streaming metric this observer holds, with a path naming it."""
        for name, value in vars(self).items():
            if isinstance(value, StreamingMetric):
                yield name, value
            elif isinstance(value, (list, tuple)):
                yield from ((f"{name}[{i}]", v) for i, v in enumerate(value)
                            if isinstance(v, StreamingMetric))
            elif isinstance(value, dict):
                yield from ((f"{name}[{k!r}]", v) for k, v in value.items()
                            if isinstance(v, StreamingMetric))

    def merge(self, other: "Observer") -> None:
        """Fold in the same observer of another shard of the same audit."""
        mine, theirs = dict(self.metrics()), dict(other.metrics())
        if type(other) is not type(self) or mine.keys() != theirs.keys():
            raise ShiftlabError(f"cannot merge {type(other).__name__} into "
                                f"{type(self).__name__}: the processes audited differently")
        for path, metric in mine.items():
            metric.merge(theirs[path])

    def __getstate__(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- layers
class LayerErrors(Observer):
    """The law per probed layer and grid shift (:class:`~shiftlab.metrics.EquivarianceError`),
    compared in the forward hook against the batch's reference maps."""

    maps = True

    def setup(self, plan: AuditPlan) -> None:
        super().setup(plan)
        k = len(plan.grid)
        self.errors = [None if l.comparison == "skipped" else EquivarianceError(k) for l in plan.layers]

    def reference(self, batch: Batch) -> None:
        k, n = len(self.plan.grid), batch.n
        self._batch, self._fast, self._rows = batch, {}, {}
        for layer in self.plan.layers:
            if layer.comparison != "skipped":
                self._rows[layer.name] = (layer, torch.zeros(2, k, n, dtype=_F64),
                                          torch.zeros(k, dtype=torch.int64),
                                          torch.zeros(k, dtype=torch.bool))
            if layer.comparison == "equivariance":
                self._fast[layer.name] = ReferenceMaps(batch.ref[layer.name])
        if self.plan.zero is not None:               # the identity: compared with itself
            for name in self._rows:
                self.on_map(name, batch.ref[name], Chunk(0, n, [(0, n, self.plan.zero, 0)]))

    def on_map(self, name: str, out: Tensor, chunk: Chunk) -> None:
        entry = self._rows.get(name)
        if entry is None:
            return
        layer, sums, positions, seen = entry
        ref, fast = self._batch.ref[name], self._fast.get(name)
        for a, b, k, i in chunk.runs:
            images = slice(i, i + b - a)
            c = compare(self.plan.action, layer.geometry, out[a:b], ref[images],
                        tuple(self.plan.shifts[k].tolist()), cands=layer.aligned[k],
                        norms=None if fast is None else (lambda o, al: fast.norms(o, al, images)))
            sums[0, k, images], sums[1, k, images] = c.diff_sq, c.ref_sq
            positions[k], seen[k] = c.positions, True

    def batch(self, batch: Batch) -> None:
        for (layer, sums, positions, seen), metric in zip(self._rows.values(),
                                                          (e for e in self.errors if e is not None)):
            ks = seen.nonzero().flatten()
            index = ks.repeat_interleave(batch.n)
            metric.update(index, sums[0, ks].flatten(), sums[1, ks].flatten(), positions[index])
        self._batch = self._fast = self._rows = None

    def contribute(self, parts: dict) -> None:
        parts["layers"] = [self._result(layer, metric) for layer, metric in
                           zip(self.plan.layers, self.errors)]

    def _result(self, layer, metric) -> LayerResult:
        info, shifts, action = layer.info, self.plan.shifts, self.plan.action
        if metric is None:
            return LayerResult(info.name, info.kind, list(info.shape), info.stride, "skipped",
                               [], [], [], None, None)
        nonzero = (shifts != 0).any(dim=1)
        _, exact = action.feature_shifts(shifts, info.stride)
        alignment = (["invariance"] * len(shifts) if layer.comparison == "invariance" else
                     ["exact" if e else action.inexact for e in exact.tolist()])
        computed, compared = metric.compute(), metric.positions > 0
        comparison, geometry = layer.comparison, layer.geometry
        note = geometry.note                            # what the law leaves out, in words
        if comparison == "equivariance" and bool(nonzero.any()) and not bool((compared & nonzero).any()):
            comparison = "not comparable"
            note = geometry.not_comparable_note
        return LayerResult(
            info.name, info.kind, list(info.shape), info.stride, comparison, alignment,
            computed["error"], computed["max_error"],
            EquivarianceError.pooled(metric.diff_sq, metric.ref_sq, exact & nonzero & compared),
            EquivarianceError.pooled(metric.diff_sq, metric.ref_sq, ~exact & nonzero & compared),
            note)


class Sensitivity(Observer):
    """The translation-sensitivity map of one layer (Kauderer-Abrams 2017): the unaligned
    normalised distance ``‖r(T_δ x) − r(x)‖ / ‖r(x)‖`` per grid shift."""

    maps = True

    def setup(self, plan: AuditPlan) -> None:
        super().setup(plan)
        self.layer = plan.config.sensitivity_layer
        self.map = SensitivityMap(plan.shifts)

    def reference(self, batch: Batch) -> None:
        self._ref = batch.ref[self.layer]
        if self.plan.zero is not None:
            self.on_map(self.layer, self._ref, Chunk(0, batch.n, [(0, batch.n, self.plan.zero, 0)]))

    def on_map(self, name: str, out: Tensor, chunk: Chunk) -> None:
        if name != self.layer:
            return
        for a, b, k, i in chunk.runs:
            d2, r2 = masked_sq_norms(out[a:b].flatten(1), self._ref[i:i + b - a].flatten(1))
            self.map.update(torch.full((b - a,), k, dtype=torch.int64), d2, r2)

    def batch(self, batch: Batch) -> None:
        self._ref = None

    def contribute(self, parts: dict) -> None:
        sens, inv = self.map.compute(), parts["invariance"]
        inv.sensitivity_layer = self.layer
        inv.sensitivity, inv.sensitivity_radius, inv.sensitivity_radial = \
            sens["map"], sens["radius"], sens["radial"]


# ----------------------------------------------------------------------------- classifiers
class GridInvariance(Observer):
    """A classifier over the grid and the random pairs: accuracy and true-class probability
    per shift, flip rate and MAC (:class:`~shiftlab.metrics.GridStability`), consistency
    (:class:`~shiftlab.metrics.Consistency`) and clean accuracy."""

    def setup(self, plan: AuditPlan) -> None:
        super().setup(plan)
        self.stability = GridStability(len(plan.grid), plan.grid.neighbours())
        self.consistency = Consistency()
        self.clean = Counts("hits", "labelled")

    def batch(self, batch: Batch) -> None:
        self.stability.update(batch.grid_logits.softmax(-1), batch.y)
        if batch.pair_pred is not None and batch.pair_pred.numel():
            pred = batch.pair_pred.reshape(-1, batch.n)           # (2·pairs, N)
            self.consistency.update(pred[0::2], pred[1::2])
        if batch.y is not None:
            self.clean.add(hits=int((batch.clean_pred == batch.y.cpu()).sum()), labelled=batch.n)

    def contribute(self, parts: dict) -> None:
        inv, s, c = parts["invariance"], self.stability.compute(), self.consistency.compute()
        inv.flip_rate, inv.mean_abs_change, inv.steps = s["flip_rate"], s["mean_abs_change"], s["steps"]
        inv.step_size = self.plan.grid.step
        inv.accuracy, inv.true_class_prob = s.get("accuracy"), s.get("true_class_prob")
        inv.worst_case_accuracy = s.get("worst_case_accuracy")
        inv.consistency, inv.pairs = c["consistency"], c["pairs"]
        if self.clean["labelled"]:
            inv.clean_accuracy = self.clean["hits"] / self.clean["labelled"]


class _Gap(Observer):
    """Worst case over a set of shifts and the gap to clean accuracy (Michaeli, Michaeli &
    Soudry, CVPR 2023): ``gap = clean accuracy − worst-case accuracy``, on the same
    labelled images. Subclasses fold in hits and name the set."""

    prefix = ""                      # "integer" | "half_pixel": the result's field names

    def setup(self, plan: AuditPlan) -> None:
        super().setup(plan)
        self.worst, self.clean = WorstCase(), Counts("hits", "labelled")

    def fold(self, clean_hit: Tensor, hits: list[Tensor]) -> None:
        self.clean.add(hits=int(clean_hit.sum()), labelled=len(clean_hit))
        self.worst.update(torch.cat([clean_hit[None]] + hits))

    def contribute(self, parts: dict) -> None:
        w, inv = self.worst.compute(), parts["invariance"]
        if w["labelled"]:
            gap = "gap_integer" if self.prefix == "integer" else "gap_half_pixel"
            setattr(inv, f"{self.prefix}_worst_case_accuracy", w["worst_case_accuracy"])
            setattr(inv, gap, (self.clean["hits"] - w["robust"]) / self.clean["labelled"])
            setattr(inv, f"{gap}_shifts", self.words)


class IntegerGap(_Gap):
    """The worst case over the unshifted input and the grid's non-zero integer shifts."""

    prefix = "integer"

    def setup(self, plan: AuditPlan) -> None:
        super().setup(plan)
        on_integers = (plan.shifts == plan.shifts.round()).all(dim=1)
        if plan.zero is not None:
            on_integers[plan.zero] = False              # the unshifted input is counted once
        self.points = torch.nonzero(on_integers).flatten()
        self.words = (f"right unshifted and at all {len(self.points)} non-zero integer shifts "
                      f"of the {plan.action.name} grid" if len(self.points) else
                      "right unshifted (the grid has no non-zero integer shift)")

    def batch(self, batch: Batch) -> None:
        if batch.y is not None:
            y = batch.y.cpu()
            self.fold(batch.clean_pred == y, [batch.grid_logits[self.points].argmax(-1).cpu() == y])


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


class HalfPixel(_Gap):
    """Half-pixel shifts (band-limited Fourier circular shifts), output only: the worst case
    over the half-pixel lattice around the grid, and half-pixel consistency
    ``P[ŷ(x) = ŷ(T_{s+½} x)]`` over ``pairs`` random ``s`` per image."""

    prefix = "half_pixel"

    def setup(self, plan: AuditPlan) -> None:
        super().setup(plan)
        if not plan.classifier:
            shape = plan.layers[-1].info.shape
            raise ShiftlabError(f"half-pixel worst case and consistency compare class predictions; "
                                f"this model's output per input is {'x'.join(map(str, shape))}, "
                                "not a vector of class scores: drop --half-pixel")
        self.action = FractionalShift()
        lattice = half_pixel_lattice(plan.shifts)
        rule = plan.pair_rule
        self.low = [math.floor(v) + 0.5 for v in rule.low]
        self.high = [math.ceil(v) - 0.5 for v in rule.high]
        for what, shifts in (("half-pixel lattice", lattice),
                             ("half-pixel pairs", torch.tensor([self.low, self.high], dtype=_F64))):
            try:
                self.action.check_shifts(plan.size, shifts)
            except ShiftlabError as err:
                raise ShiftlabError(f"{what}: {err}") from None
        grid_index = {tuple(v): k for k, v in enumerate(plan.shifts.tolist())}
        points = lattice.tolist()
        self.on_grid = torch.tensor([grid_index[tuple(v)] for v in points
                                     if tuple(v) in grid_index and any(v)], dtype=torch.int64)
        self.extra = lattice[[tuple(v) not in grid_index and any(v) for v in points]]
        self.seed = stream_seed(plan.config.seed, HALF_PIXEL_STREAM)
        self.consistency = Consistency()
        self.words = (f"right at all {len(lattice)} shifts of the half-pixel lattice "
                      f"{_lattice_words(lattice)} (integer ones and the unshifted input "
                      "included; band-limited Fourier circular shifts)")
        lo, hi = rule.low, rule.high
        r = (f"[{lo[0]:g}, {hi[0]:g})" if len(set(lo)) == 1 and len(set(hi)) == 1 else
             " x ".join(f"[{a:g}, {b:g})" for a, b in zip(lo, hi)))
        self.rule = ("P[ŷ(x) = ŷ(T_δ x)]: the unshifted input against δ = s + ½ per axis, s an "
                     f"integer uniform in {r} per axis, {plan.config.pairs} draws per input "
                     "(each input its own), a band-limited Fourier circular shift; not as "
                     "Michaeli et al. 2023's shift_eval.py draws them (s in [1, max_shift) per "
                     "axis, one draw per batch, shifted by -(s + ½))")

    def batch(self, batch: Batch) -> None:
        cfg, n, rank = self.plan.config, batch.n, self.plan.shifts.shape[1]
        rows = [self.extra.repeat_interleave(n, 0)] if batch.y is not None else []
        n_lattice = len(rows[0]) if rows else 0
        if cfg.pairs:
            s = pair_shifts(self.seed, batch.start, n, cfg.pairs, self.plan.pair_rule.low,
                            self.plan.pair_rule.high, integer=True, rank=rank)[:cfg.pairs]
            rows.append((s + 0.5).reshape(-1, rank))              # pair-major: (pairs·N, rank)
        shifts = torch.cat(rows) if rows else torch.zeros(0, rank, dtype=_F64)
        image = torch.arange(n).repeat(len(shifts) // n)
        pred = torch.empty(len(shifts), dtype=torch.int64)
        x = batch.x
        for lo in range(0, len(shifts), cfg.batch_size):
            hi = min(lo + cfg.batch_size, len(shifts))
            pred[lo:hi] = batch.predict(self.action(x[image[lo:hi].to(x.device)],
                                                    shifts[lo:hi].to(x.device)))
        clean = batch.clean_pred
        if batch.y is not None:
            y = batch.y.cpu()
            grid = batch.grid_logits[self.on_grid].argmax(-1).cpu()
            self.fold(clean == y, [grid == y, pred[:n_lattice].reshape(-1, n) == y])
        if cfg.pairs:
            self.consistency.update(clean.expand(cfg.pairs, n), pred[n_lattice:].reshape(cfg.pairs, n))

    def contribute(self, parts: dict) -> None:
        super().contribute(parts)
        c, inv = self.consistency.compute(), parts["invariance"]
        inv.half_pixel_consistency, inv.half_pixel_pairs = c["consistency"], c["pairs"]
        inv.half_pixel_consistency_rule = self.rule if c["pairs"] else None


def observers_for(plan: AuditPlan, extra=()) -> list[Observer]:
    """The observers an audit with this plan runs, set up: the built-in ones it needs, then
    ``extra`` (observer classes, or callables returning an observer)."""
    kinds = [LayerErrors, Sensitivity]
    if plan.classifier:
        kinds += [GridInvariance, IntegerGap]
    if plan.config.half_pixel:
        kinds.append(HalfPixel)
    kinds += list(extra)
    observers = [kind() for kind in kinds]
    for obs in observers:
        obs.setup(plan)
    return observers
