"""Streaming shift metrics: ``update()`` folds in a batch, ``compute()`` gives numbers,
``merge()`` combines shards. State is running sums, counts and maxima (float64), so memory
stays flat and one batch, many batches and merged shards give the same answer.

Notation: ``f`` = softmax output, ``ŷ = argmax f``, ``T_δ`` a shift, ``φ_l`` the map at layer l.

* :class:`EquivarianceError` — relative L2 error per shift,
  ``sqrt(Σ_i ‖φ(T_δ x_i) − T'_δ φ(x_i)‖² / Σ_i ‖φ(x_i)‖²)`` over the valid positions.
* :class:`Consistency` — ``P[ŷ(T_δ1 x) = ŷ(T_δ2 x)]`` over random pairs (Zhang 2019).
* :class:`GridStability` — over a shift grid: accuracy and true-class probability per shift,
  worst-case accuracy (correct at every shift; Michaeli et al. 2023), flip rate
  ``P[ŷ(x_j) ≠ ŷ(x_{j−1})]`` and the mean absolute change (MAC)
  ``|f_c(x_j) − f_c(x_{j−1})|`` of the probability of the earlier step's top-1 class
  ``c = ŷ(x_{j−1})`` over consecutive grid steps (Azulay & Weiss 2019).
* :class:`WorstCase` — ``P[ŷ(T_δ x) = y for every δ in a set]``, the worst-case (adversarial
  shift) accuracy of Michaeli, Michaeli & Soudry (CVPR 2023) over any set of shifts.
* :class:`SensitivityMap` — mean normalised distance ``‖r(T_δ x) − r(x)‖ / ‖r(x)‖`` per shift
  and its radial average over ``|δ|`` (Kauderer-Abrams 2017).

>>> m = Consistency()
>>> m.update(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 0]))
>>> round(m.compute()["consistency"], 4)
0.6667
"""
from __future__ import annotations

import torch
from torch import Tensor

from .law import relative

__all__ = ["StreamingMetric", "Counts", "EquivarianceError", "Consistency", "GridStability",
           "SensitivityMap", "WorstCase", "masked_sq_norms", "consistency", "flip_rate"]

_F64 = torch.float64


class StreamingMetric:
    """Base class: subclasses declare their state with :meth:`add_state` and write
    ``update`` and ``compute``; ``merge`` and ``reset`` follow from the declarations."""

    higher_is_better: bool | None = None
    _REDUCE = {"sum": torch.add, "max": torch.maximum, "min": torch.minimum}

    def __init__(self) -> None:
        self._defaults: dict[str, tuple[Tensor, str]] = {}

    def add_state(self, name: str, default: Tensor, reduce: str) -> None:
        if reduce not in self._REDUCE:
            raise ValueError(f"reduce must be one of {list(self._REDUCE)}, got {reduce!r}")
        self._defaults[name] = (default.clone(), reduce)
        setattr(self, name, default.clone())

    def reset(self) -> None:
        for name, (default, _) in self._defaults.items():
            setattr(self, name, default.clone())

    def merge(self, other: "StreamingMetric") -> "StreamingMetric":
        """Fold ``other``'s state into this one (in place) and return ``self``."""
        if type(other) is not type(self) or other._defaults.keys() != self._defaults.keys():
            raise ValueError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name, (_, reduce) in self._defaults.items():
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape:
                raise ValueError(f"cannot merge {type(self).__name__}: state {name!r} has "
                                 f"shape {tuple(b.shape)}, expected {tuple(a.shape)}")
            setattr(self, name, self._REDUCE[reduce](a, b))
        return self

    def state(self) -> dict[str, list]:
        return {name: getattr(self, name).tolist() for name in self._defaults}


class Counts(StreamingMetric):
    """Named whole-number counters that add across shards.

    >>> c = Counts("hits", "labelled"); c.add(hits=3, labelled=4); c.add(hits=1, labelled=4)
    >>> c["hits"], c["labelled"]
    (4, 8)
    """

    def __init__(self, *names: str):
        super().__init__()
        for name in names:
            self.add_state(name, torch.zeros((), dtype=torch.int64), "sum")

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + int(value))

    def __getitem__(self, name: str) -> int:
        return int(getattr(self, name))


def _row_sq_norm(t: Tensor) -> Tensor:
    """Per-sample squared L2 norm in float64 (one fused pass, accumulated in ``t``'s dtype)."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim))).to(_F64).square()


def masked_sq_norms(a: Tensor, b: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sample ``‖a − b‖²`` and ``‖b‖²`` over the positions where ``mask`` is true.

    ``a``, ``b``: ``(N, ...)``; ``mask``: ``(N, H, W)`` for ``(N, C, H, W)`` maps, or None.
    """
    if mask is not None:
        m = mask[:, None].to(a.dtype)
        return _row_sq_norm((a - b) * m), _row_sq_norm(b * m)
    return _row_sq_norm(a - b), _row_sq_norm(b)


class EquivarianceError(StreamingMetric):
    """Relative L2 equivariance error per shift index (one layer).

    .. math:: e_δ = \\sqrt{Σ_i ‖φ(T_δ x_i) − T'_δ φ(x_i)‖^2 / Σ_i ‖φ(x_i)‖^2}
    """

    higher_is_better = False

    def __init__(self, num_shifts: int):
        super().__init__()
        self.num_shifts = num_shifts
        self.add_state("diff_sq", torch.zeros(num_shifts, dtype=_F64), "sum")
        self.add_state("ref_sq", torch.zeros(num_shifts, dtype=_F64), "sum")
        self.add_state("count", torch.zeros(num_shifts, dtype=torch.int64), "sum")
        self.add_state("max_rel", torch.zeros(num_shifts, dtype=_F64), "max")
        self.add_state("positions", torch.zeros(num_shifts, dtype=torch.int64), "sum")

    def update(self, shift_index: Tensor, diff_sq: Tensor, ref_sq: Tensor,
               positions: "int | Tensor" = 1) -> None:
        """Fold in per-sample squared norms; ``positions``: feature positions compared per
        sample (0 where the shift left nothing to compare: that sample is not counted)."""
        idx = shift_index.to(torch.int64).cpu()
        d, r = diff_sq.to(_F64).cpu(), ref_sq.to(_F64).cpu()
        pos = torch.as_tensor(positions, dtype=torch.int64).expand(idx.shape)
        self.diff_sq.index_add_(0, idx, d)
        self.ref_sq.index_add_(0, idx, r)
        self.count.index_add_(0, idx, torch.ones_like(idx))
        self.positions.index_add_(0, idx, pos)
        self.max_rel.scatter_reduce_(0, idx, relative(d, r), reduce="amax")

    def compute(self) -> dict[str, list]:
        """Per shift: ``error``, ``max_error`` (None where nothing was compared), ``count``."""
        defined = (self.positions > 0).tolist()
        error, max_error = relative(self.diff_sq, self.ref_sq).tolist(), self.max_rel.tolist()
        return {"error": [e if ok else None for e, ok in zip(error, defined)],
                "max_error": [e if ok else None for e, ok in zip(max_error, defined)],
                "count": self.count.tolist()}

    @staticmethod
    def pooled(diff_sq: Tensor, ref_sq: Tensor, select: Tensor) -> float | None:
        """The relative error pooled over the shifts in ``select`` (None if empty)."""
        if not bool(select.any()):
            return None
        return float(relative(diff_sq[select].sum(), ref_sq[select].sum()))


def consistency(pred_a: Tensor, pred_b: Tensor) -> float:
    """Fraction of pairs whose top-1 predictions agree."""
    return float((pred_a == pred_b).to(_F64).mean())


class Consistency(StreamingMetric):
    """``P[ŷ(T_δ1 x) = ŷ(T_δ2 x)]`` over the pairs seen (Zhang 2019)."""

    higher_is_better = True

    def __init__(self):
        super().__init__()
        self.add_state("agree", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("pairs", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, pred_a: Tensor, pred_b: Tensor) -> None:
        self.agree += int((pred_a == pred_b).sum())
        self.pairs += pred_a.numel()

    def compute(self) -> dict[str, float | int | None]:
        n = int(self.pairs)
        return {"consistency": int(self.agree) / n if n else None, "pairs": n}


def _step_changes(probs: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    """For ``probs (K, N, C)`` and grid steps ``pairs (E, 2)`` (earlier, later): top-1
    flips and the absolute change of the earlier step's top-1 class probability,
    ``|p_c(x_j) − p_c(x_{j−1})|`` with ``c = ŷ(x_{j−1})``, per step and sample, each ``(E, N)``.

    This is Azulay & Weiss (2019, JMLR, "Why do deep convolutional networks generalize so
    poorly to small image transformations?", and their released code): the probability of
    the class the network chose *before* the step, compared across the step; not the
    difference of the two top probabilities.

    >>> p = torch.tensor([[[0.6, 0.4]], [[0.3, 0.7]]], dtype=torch.float64)
    >>> flips, change = _step_changes(p, torch.tensor([[0, 1]]))
    >>> flips.tolist(), round(change.item(), 6)
    ([[True]], 0.3)
    """
    pred = probs.argmax(dim=-1)                                        # (K, N)
    a, b = pairs[:, 0], pairs[:, 1]
    chosen = pred[a][..., None]                                        # c = ŷ(x_{j−1}): (E, N, 1)
    before = probs[a].gather(-1, chosen)[..., 0]
    after = probs[b].gather(-1, chosen)[..., 0]
    return (pred[a] != pred[b]), (after - before).abs()


def flip_rate(probs: Tensor, pairs: Tensor) -> float:
    """``P[ŷ(x_j) ≠ ŷ(x_{j−1})]`` over the consecutive steps ``pairs`` of ``probs (K, N, C)``."""
    flips, _ = _step_changes(probs, pairs)
    return float(flips.to(_F64).mean())


class GridStability(StreamingMetric):
    """Classification over a shift grid: per-shift accuracy and true-class probability,
    worst-case accuracy, flip rate and mean absolute change (MAC) over grid steps.

    Each grid step goes from an earlier shift ``j−1`` to the next ``j`` (along x, then
    along y). MAC (Azulay & Weiss 2019, their released code) is the mean over steps and
    images of ``|f_c(x_j) − f_c(x_{j−1})|`` with ``c = ŷ(x_{j−1})``, the class chosen at
    the earlier step.

    >>> m = GridStability(2, torch.tensor([[0, 1]]))
    >>> m.update(torch.tensor([[[0.6, 0.4]], [[0.3, 0.7]]]))
    >>> s = m.compute(); s["flip_rate"], round(s["mean_abs_change"], 6)
    (1.0, 0.3)
    """

    higher_is_better = True

    def __init__(self, num_shifts: int, steps: Tensor):
        super().__init__()
        self.steps = steps.to(torch.int64)
        k = num_shifts
        self.add_state("correct", torch.zeros(k, dtype=torch.int64), "sum")
        self.add_state("true_prob", torch.zeros(k, dtype=_F64), "sum")
        self.add_state("labelled", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("correct_everywhere", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("flips", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("abs_change", torch.zeros((), dtype=_F64), "sum")
        self.add_state("step_count", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, probs: Tensor, labels: Tensor | None = None) -> None:
        """``probs``: ``(K, N, C)`` softmax outputs of N images at the K grid shifts."""
        probs = probs.detach().to(_F64).cpu()
        if len(self.steps):
            flips, change = _step_changes(probs, self.steps)
            self.flips += int(flips.sum())
            self.abs_change += change.sum()
            self.step_count += flips.numel()
        if labels is not None:
            labels = labels.to(torch.int64).cpu()
            hit = probs.argmax(-1) == labels[None]                     # (K, N)
            self.correct += hit.sum(1)
            self.true_prob += probs.gather(2, labels[None, :, None].expand(len(probs), -1, 1))[..., 0].sum(1)
            self.labelled += labels.numel()
            self.correct_everywhere += int(hit.all(0).sum())

    def compute(self) -> dict:
        n, e = int(self.labelled), int(self.step_count)
        out = {"flip_rate": int(self.flips) / e if e else None,
               "mean_abs_change": float(self.abs_change) / e if e else None,
               "steps": e, "labelled": n}
        if n:
            out.update(accuracy=(self.correct.to(_F64) / n).tolist(),
                       true_class_prob=(self.true_prob / n).tolist(),
                       worst_case_accuracy=int(self.correct_everywhere) / n)
        return out


class WorstCase(StreamingMetric):
    """Worst-case accuracy over a set of shifts: the fraction of labelled images classified
    correctly at *every* shift of the set (Michaeli, Michaeli & Soudry, CVPR 2023, "Alias-free
    convnets", their ``shift_eval.py``: ``robust_shift &= correct_shift`` over the shifts).

    .. math:: \\mathrm{wc} = \\frac{1}{N} Σ_i \\prod_{δ ∈ S} [ŷ(T_δ x_i) = y_i]

    >>> m = WorstCase()
    >>> m.update(torch.tensor([[True, True, False], [True, False, False]]))
    >>> m.compute()
    {'worst_case_accuracy': 0.3333333333333333, 'robust': 1, 'labelled': 3}
    """

    higher_is_better = True

    def __init__(self):
        super().__init__()
        self.add_state("robust", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("labelled", torch.zeros((), dtype=torch.int64), "sum")

    def update(self, hits: Tensor) -> None:
        """``hits``: ``(K, N)`` bool, image n classified correctly at shift k of the set."""
        self.robust += int(hits.all(0).sum())
        self.labelled += hits.shape[1]

    def compute(self) -> dict:
        n = int(self.labelled)
        return {"worst_case_accuracy": int(self.robust) / n if n else None,
                "robust": int(self.robust), "labelled": n}


class SensitivityMap(StreamingMetric):
    """Mean normalised representation distance per shift, and its radial average."""

    higher_is_better = False

    def __init__(self, shifts: Tensor):
        super().__init__()
        self.shifts = shifts.to(_F64)
        k = len(shifts)
        self.add_state("dist_sum", torch.zeros(k, dtype=_F64), "sum")
        self.add_state("count", torch.zeros(k, dtype=torch.int64), "sum")

    def update(self, shift_index: Tensor, diff_sq: Tensor, ref_sq: Tensor) -> None:
        idx = shift_index.to(torch.int64).cpu()
        self.dist_sum.index_add_(0, idx, relative(diff_sq.to(_F64).cpu(), ref_sq.to(_F64).cpu()))
        self.count.index_add_(0, idx, torch.ones_like(idx))

    def compute(self) -> dict:
        mean = self.dist_sum / self.count.clamp_min(1)
        radius = self.shifts.norm(dim=1)
        bins = torch.round(radius).to(torch.int64)
        radii, radial = [], []
        for r in sorted(set(bins.tolist())):
            sel = (bins == r) & (self.count > 0)
            if sel.any():
                radii.append(float(r))
                radial.append(float(mean[sel].mean()))
        return {"map": mean.tolist(), "radius": radii, "radial": radial}

