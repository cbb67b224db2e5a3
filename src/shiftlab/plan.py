"""What an audit learns from its first batch, checked once: the plan every batch follows.

:meth:`AuditPlan.build` parses the shift grid for the data's rank, checks the grid, the
margin and the consistency pairs against the input size, runs one sample through the
model to learn its layers (measured strides, :func:`shiftlab.probe.infer_layers`) and how
the protocol acts on each (:func:`shiftlab.law.layer_geometries`), and keeps every layer's
alignments per grid shift, the same for every batch. :meth:`AuditPlan.rows` lays out a
batch's shifted inputs.

Row order: the grid rows shift by shift (the last axis slowest), every image of the batch
at each, so each layer is compared in long runs of rows (few, large operations); then the
random consistency pairs. (Blocks of images sized to keep their reference maps in cache
across shifts were measured: no faster on ``lenet-wolf``, and slower on ``resnet18``, whose
maps fit no cache, because the runs get short.)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .actions import ShiftAction, spatial_rank
from .batches import pair_shifts
from .errors import ShiftlabError
from .law import Alignment, LayerGeometry, alignments, layer_geometries
from .probe import LayerInfo, infer_layers
from .shapes import check_model_fits
from .shifts import ShiftSet

__all__ = ["AuditPlan", "PlannedLayer", "Rows", "Chunk"]


@dataclass
class PlannedLayer:
    """A probed layer: what the probe learned, how the law compares it, its alignments."""

    info: LayerInfo
    comparison: str                   # "equivariance" | "invariance" | "skipped"
    geometry: LayerGeometry | None
    aligned: list[list[Alignment]] = field(default_factory=list)   # per grid shift

    @property
    def name(self) -> str:
        return self.info.name


@dataclass
class Chunk:
    """Rows ``lo:hi`` of a batch, forwarded together. ``runs``: ``(a, b, k, i)`` = rows
    ``a:b`` of the chunk are samples ``i … i+b−a−1`` at grid shift ``k``; rows past the
    runs are consistency pairs."""

    lo: int
    hi: int
    runs: list[tuple[int, int, int, int]]


@dataclass
class Rows:
    """A batch's shifted inputs: ``shift (R, rank)`` applied to sample ``image (R,)``; the
    first ``n_grid`` are grid rows in ``runs`` (whole-batch row ranges), the rest pairs."""

    shift: Tensor
    image: Tensor
    n_grid: int
    runs: list[tuple[int, int, int, int]]

    def chunks(self, size: int):
        """The rows in chunks of at most ``size``, each with its runs, chunk-relative."""
        r = 0
        for lo in range(0, len(self.shift), size):
            hi = min(lo + size, len(self.shift))
            runs = []
            while r < len(self.runs) and self.runs[r][0] < hi:
                a, b, k, i = self.runs[r]
                a2, b2 = max(a, lo), min(b, hi)
                runs.append((a2 - lo, b2 - lo, k, i + a2 - a))
                if b > hi:
                    break
                r += 1
            yield Chunk(lo, hi, runs)


@dataclass
class AuditPlan:
    """The shifts, the layers and their geometry for one audit (see the module doc)."""

    config: object                    # the checked AuditConfig
    action: ShiftAction
    grid: ShiftSet
    shifts: Tensor                    # (K, rank) float64
    size: tuple[int, ...]             # the input's spatial size
    input_shape: list[int]            # one sample as the model sees it
    sample_shape: tuple[int, ...]     # one sample as the data give it
    pair_rule: object                 # actions.PairRange
    layers: list[PlannedLayer]
    classifier: bool                  # the output is N x classes
    classes: int | None

    @property
    def zero(self) -> int | None:
        return self.grid.zero_index

    @property
    def order(self) -> list[int]:
        """The non-zero grid shifts in row order: the last axis slowest."""
        return sorted((k for k in range(len(self.grid)) if k != self.zero),
                      key=lambda k: tuple(reversed(self.shifts[k].tolist())))

    @property
    def overwritten(self) -> list[str]:
        return [l.name for l in self.layers if l.info.overwritten]

    @classmethod
    def build(cls, model: nn.Module, config, x: Tensor, names: list[str]) -> "AuditPlan":
        """Check ``config`` against the first batch ``x`` and learn ``model``'s layers."""
        rank, action = spatial_rank(x), config.action
        check_model_fits(model, x)
        grid = ShiftSet.parse(config.shifts if config.shifts is not None else action.default_shifts,
                              rank=rank)
        shifts = grid.tensor()
        size = tuple(x.shape[2:])
        seen = action.output_size(size)
        if 2 * config.margin >= min(seen):
            raise ShiftlabError(f"a margin of {config.margin} leaves no position of the "
                                f"{'x'.join(map(str, seen))} input to compare; use a margin "
                                f"below {min(seen) // 2}")
        action.check_shifts(size, shifts)
        pair_rule = action.pair_range(size, grid.max_abs(), config.pair_range)
        if config.pairs:
            _check_pairs(action, size, pair_rule)
        reference = action.reference(x[:1])
        infos = infer_layers(model, reference, names)
        geometries = layer_geometries(model, reference, action, infos, shifts, config.margin)
        layers, period = [], 1          # the largest stride so far: what pooling can forgive
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
            aligned = [] if comparison == "skipped" else \
                [alignments(action, geometry, tuple(s)) for s in shifts.tolist()]
            layers.append(PlannedLayer(info, comparison, geometry, aligned))
        if not any(l.name == config.sensitivity_layer for l in layers):
            raise ShiftlabError(f"sensitivity layer {config.sensitivity_layer!r} produced no "
                                "tensor output")
        classifier = len(infos[-1].shape) == 1
        return cls(config, action, grid, shifts, size, list(reference.shape[1:]),
                   tuple(x.shape[1:]), pair_rule, layers, classifier,
                   infos[-1].shape[0] if classifier else None)

    def rows(self, n: int, start: int) -> Rows:
        """Batch of ``n`` samples whose first has index ``start`` in the whole data."""
        order = torch.tensor(self.order, dtype=torch.int64)
        shift_rows = [self.shifts[order].repeat_interleave(n, 0)]
        image_rows = [torch.arange(n).repeat(len(order))]
        runs = [(j * n, (j + 1) * n, k, 0) for j, k in enumerate(order.tolist())]
        rank = self.shifts.shape[1]
        if self.config.pairs and self.classifier:
            ps = pair_shifts(self.config.seed, start, n, self.config.pairs, self.pair_rule.low,
                             self.pair_rule.high, integer=self.action.integer, rank=rank)
            shift_rows.append(ps.reshape(-1, rank))
            image_rows.append(torch.arange(n).repeat(2 * self.config.pairs))
        shift, image = torch.cat(shift_rows), torch.cat(image_rows)
        return Rows(shift.to(torch.int64) if self.action.integer else shift, image, len(order) * n, runs)


def _check_pairs(action: ShiftAction, size: tuple[int, ...], rule) -> None:
    """One-line errors when the consistency pairs have no room on inputs of ``size``."""
    lo, hi = rule.low, rule.high
    if any(h - l < (1 if action.integer else 1e-9) for l, h in zip(lo, hi)):
        raise ShiftlabError(f"no room for random consistency shifts on "
                            f"{'x'.join(map(str, size))} inputs ({rule.words}); "
                            "use --pairs 0 or larger inputs")
    last = [h - 1 if action.integer else h for h in hi]
    try:
        action.check_shifts(size, torch.tensor([lo, last], dtype=torch.float64))
    except ShiftlabError as err:
        raise ShiftlabError(f"consistency pairs ({rule.words}): {err}") from None
