"""What an audit produces: plain dataclasses that round-trip through JSON.

The same file feeds the CLI's table, a notebook and the report; renderers only read it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ShiftlabError
from .fmt import points
from .io import write_text_atomic

SCHEMA = "shiftlab.audit/1"


@dataclass
class Provenance:
    """Everything needed to say how a result was produced, and to produce it again."""

    model: str
    protocol: str
    shifts: str                      # the shift spec, e.g. "-4:4"
    n_images: int
    seed: int
    input_shape: list[int]           # one sample as the model saw it: C, H, W
    dtype: str                       # the model's weights
    tolerance: float                 # errors below this count as exact for compute_dtype
    margin: int = 0                  # feature-map positions ignored near borders
    fill: float | None = None        # canvas background
    crop: list[int] | None = None    # crop window h, w
    pairs_per_image: int = 0
    pair_range: list[float] | None = None    # consistency shifts: [low, high) per axis
    pair_offsets: str | None = None  # how the random pairs were drawn, in words (crop: Zhang's
                                     # [0, D) window offsets or the inclusive [0, D])
    batch_size: int = 0
    device: str = "cpu"              # where the model ran: cpu, cuda:0, mps (rank 0's)
    amp: str | None = None           # autocast: bf16 | fp16; None: off
    compute_dtype: str | None = None # what the layers computed in (amp's dtype, else dtype)
    processes: int = 1               # torch.distributed ranks that shared the data
    versions: dict[str, str] = field(default_factory=dict)
    normalize: dict[str, Any] | None = None  # mean, std per channel: (x - mean) / std after the shift
    data: dict[str, Any] | None = None       # where the inputs came from and how they were
                                             # prepared (an image folder's files, preprocessing,
                                             # skipped and ignored files)


@dataclass
class LayerResult:
    """Equivariance (or, for non-spatial layers, invariance) of one layer, per shift.

    ``alignment[k]`` says how shift k was compared: ``exact`` (the stride divides the
    shift), ``nearest`` (best integer alignment: an approximation), ``fourier`` (a
    band-limited sub-pixel shift of the map) or ``invariance`` (no spatial axes: compared
    unshifted). ``error[k]`` is None where shift k left no position to compare (JSON
    ``null``); ``comparison == "not comparable"`` when no non-zero shift had any, and
    ``note`` then says why in words (it also says when only part of the map was compared).
    """

    name: str
    kind: str
    shape: list[int]
    stride: int | None               # cumulative stride; for an invariance layer, the
                                     # largest stride before it (exact shifts: its multiples)
    comparison: str                  # "equivariance" | "invariance" | "skipped" | "not comparable"
    alignment: list[str]
    error: list[float | None]        # None: nothing to compare at that shift
    max_error: list[float | None]
    error_exact: float | None        # pooled over the non-zero exactly-aligned shifts
    error_other: float | None        # pooled over the other non-zero shifts
    note: str | None = None          # how the layer was compared, in words, when it matters

    def verdict(self, tol: float) -> str:
        if self.comparison == "skipped":
            return "skipped (stride unknown)"
        if self.comparison == "not comparable":
            return "not comparable"
        word = "invariant" if self.comparison == "invariance" else "equivariant"
        if self.error_exact is None and self.error_other is None:
            return "untested (no non-zero shift)"
        exact_ok = self.error_exact is None or self.error_exact < tol
        other_ok = self.error_other is None or self.error_other < tol
        if exact_ok and other_ok:
            return word
        if self.error_exact is None:
            return f"not {word} (no shift was a multiple of {self.stride})"
        if exact_ok:
            return f"{word} at multiples of {self.stride}"
        return f"not {word}"


#: how layers are grouped when asking "nonlinearities or strides?" (Gruver et al., Fig. 4)
GROUPS = ("nonlinearity", "downsampling", "other")


@dataclass
class LayerLie:
    """One layer's contribution to the model's Lie derivative, per axis."""
    name: str
    type: str
    group: str                                 # "nonlinearity", "downsampling" or "other"
    contribution: dict[str, float]             # axis -> mean over images of |J L f_i|²
    share: dict[str, float | None]             # axis -> contribution / Σ contributions


@dataclass
class LieResult:
    """The model's local equivariance error and its split over layers (:mod:`shiftlab.lie`).
    ``unattributed`` is what no listed module carries: functional operations, and reading
    positions out (a ``flatten`` before a linear head); 0 for a model that pools globally."""
    axes: list[str]
    lee: dict[str, float]                      # axis -> LEE, reduced as ``reduction`` says
    total: dict[str, float]                    # axis -> mean over images of |L p|²
    unattributed: dict[str, float]             # axis -> mean over images of |L p − Σ_i J L f_i|²
    layers: list[LayerLie] = field(default_factory=list)
    images: int = 0
    generator: str = "fourier"
    convention: str = ""
    reduction: str = "mean_abs"                # mean_abs: mean of |L p_c| over images and classes
                                               # (Gruver et al.'s code); rms: root mean square

    def shares_by_group(self) -> dict[str, float | None]:
        """Each group's share of the attributed error, summed over axes."""
        sums = {g: sum(sum(l.contribution.values()) for l in self.layers if l.group == g)
                for g in GROUPS}
        whole = sum(sums.values())
        return {g: (v / whole if whole > 0 else None) for g, v in sums.items()}


@dataclass
class AllShifts:
    """Exact statistics over every circular shift of every input (:mod:`shiftlab.periodic`)."""
    stride: int                       # the total stride S, per axis
    size: list[int]                   # the input's spatial size N per axis
    shifts: int                       # ∏ N_a: circular shifts per input
    passes: int                       # S^d: forward passes per input
    images: int
    consistency: float
    clean_accuracy: float | None      # None for unlabelled data
    mean_accuracy: float | None
    worst_case_accuracy: float | None
    periodic_error: float             # the largest |f(T_{δ+S} x) − f(T_δ x)| measured

    @property
    def speedup(self) -> float:
        return self.shifts / self.passes

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


@dataclass
class InvarianceResult:
    """Output-level stability. Fields are None where the data could not support them
    (no labels, no grid neighbours, no classifier output)."""

    consistency: float | None = None
    pairs: int = 0
    flip_rate: float | None = None
    mean_abs_change: float | None = None
    steps: int = 0
    step_size: float | None = None
    accuracy: list[float] | None = None           # per shift
    true_class_prob: list[float] | None = None    # per shift
    worst_case_accuracy: float | None = None
    clean_accuracy: float | None = None           # at the unshifted reference
    sensitivity_layer: str | None = None
    sensitivity: list[float] | None = None        # per shift
    sensitivity_radius: list[float] | None = None
    sensitivity_radial: list[float] | None = None
    # the worst-case shift gap (Michaeli, Michaeli & Soudry, CVPR 2023): clean accuracy minus
    # the worst-case accuracy over a set of shifts, each set said in words (*_shifts); None
    # when unlabelled, not a classifier, or (half-pixel) not asked for (audit half_pixel)
    gap_integer: float | None = None
    integer_worst_case_accuracy: float | None = None   # right unshifted and at every integer grid shift
    gap_integer_shifts: str | None = None
    gap_half_pixel: float | None = None
    half_pixel_worst_case_accuracy: float | None = None  # right at every half-pixel lattice shift
    gap_half_pixel_shifts: str | None = None
    half_pixel_consistency: float | None = None       # P[ŷ(x) = ŷ(T_δ x)], δ = s + ½ per axis
    half_pixel_pairs: int = 0
    half_pixel_consistency_rule: str | None = None


@dataclass
class AuditResult:
    provenance: Provenance
    shifts: list[list[float]]
    grid_shape: list[int] | None
    layers: list[LayerResult]
    invariance: InvarianceResult
    seconds: float = 0.0
    forwards: int = 0                # images passed through the model
    lie: LieResult | None = None     # --lie: the Lie derivative per layer (shiftlab.lie)
    all_shifts: AllShifts | None = None   # --all-shifts: every circular shift (shiftlab.periodic)
    extra: dict[str, Any] | None = None   # what observers added with audit(observers=...) wrote

    # --- access -----------------------------------------------------------------------
    def layer(self, name: str) -> LayerResult:
        for item in self.layers:
            if item.name == name:
                return item
        raise ShiftlabError(f"no layer {name!r} in this result; it has "
                            f"{', '.join(l.name for l in self.layers)}")

    # --- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def to_json(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically (temp file + rename). Non-finite numbers
        (undefined values) are written as ``null``: the file is strict JSON."""
        text = json.dumps(_finite(self.to_dict()), indent=1, allow_nan=False)
        return write_text_atomic(path, text + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditResult":
        """An AuditResult from its JSON form (:meth:`to_dict`), every field checked.

        Types follow the dataclass annotations (:func:`shiftlab.typed_json.build`); per-shift
        lists must have one value per shift, fractions lie in [0, 1], errors are >= 0. A problem
        raises :class:`ShiftlabError` naming the field, e.g. ``layers[2].error has 80 values,
        expected one per shift (81)``.
        """
        from .typed_json import build
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ShiftlabError(f"not a shiftlab audit result (expected schema {SCHEMA!r})")
        try:
            result = build(cls, {k: v for k, v in data.items() if k != "schema"})
            result._check_consistent()
        except ShiftlabError as err:
            raise ShiftlabError(f"audit result is malformed: {err}; re-run the audit") from None
        return result

    @classmethod
    def from_json(cls, path: str | Path) -> "AuditResult":
        """Read ``audit-NAME.json`` (:meth:`to_json`); errors name the file and the field."""
        from .typed_json import read_json
        data = read_json(path, "audit result")
        try:
            return cls.from_dict(data)
        except ShiftlabError as err:
            raise ShiftlabError(f"{path}: {err}") from None

    COMPARISONS = ("equivariance", "invariance", "skipped", "not comparable")
    FRACTIONS = ("consistency", "flip_rate", "mean_abs_change", "worst_case_accuracy", "clean_accuracy",
                 "gap_integer", "integer_worst_case_accuracy", "gap_half_pixel",
                 "half_pixel_worst_case_accuracy", "half_pixel_consistency")

    def _check_consistent(self) -> None:
        """Raise :class:`ShiftlabError` naming the first field that disagrees with the others."""
        import math
        n = len(self.shifts)
        if n == 0 or len({len(s) for s in self.shifts}) != 1 or not 1 <= len(self.shifts[0]) <= 3:
            raise ShiftlabError("shifts must be a non-empty list of shifts with 1 to 3 axes each")
        if self.grid_shape is not None and (any(g < 1 for g in self.grid_shape)
                                            or math.prod(self.grid_shape) != n):
            raise ShiftlabError(f"grid_shape {self.grid_shape} does not hold the {n} shifts")
        if self.provenance.tolerance < 0:
            raise ShiftlabError("provenance.tolerance must be >= 0")

        def per_shift(values, where, *, empty_ok=False, low=None, high=None):
            if values is None or (empty_ok and not values):
                return
            if len(values) != n:
                raise ShiftlabError(f"{where} has {len(values)} values, expected one per shift ({n})")
            bad = next((k for k, v in enumerate(values) if v is not None and
                        ((low is not None and v < low) or (high is not None and v > high))), None)
            if bad is not None:
                bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ShiftlabError(f"{where}[{bad}] = {values[bad]:g} must be {bounds}")

        for k, item in enumerate(self.layers):
            where = f"layers[{k}]"
            if item.comparison not in self.COMPARISONS:
                raise ShiftlabError(f"{where}.comparison must be one of {', '.join(self.COMPARISONS)}; "
                                    f"got {item.comparison!r}")
            skipped = item.comparison == "skipped"
            per_shift(item.alignment, f"{where}.alignment", empty_ok=skipped)
            per_shift(item.error, f"{where}.error", empty_ok=skipped, low=0)
            per_shift(item.max_error, f"{where}.max_error", empty_ok=skipped, low=0)
            for name in ("error_exact", "error_other"):
                if (getattr(item, name) or 0) < 0:
                    raise ShiftlabError(f"{where}.{name} must be >= 0")
        inv = self.invariance
        per_shift(inv.accuracy, "invariance.accuracy", low=0, high=1)
        per_shift(inv.true_class_prob, "invariance.true_class_prob", low=0, high=1)
        per_shift(inv.sensitivity, "invariance.sensitivity", low=0)
        for name in self.FRACTIONS:
            value = getattr(inv, name)
            if value is not None and not 0 <= value <= 1:
                raise ShiftlabError(f"invariance.{name} = {value:g} must be in [0, 1]")
        radius, radial = inv.sensitivity_radius, inv.sensitivity_radial
        if (radius is None) != (radial is None) or (radius is not None and len(radius) != len(radial)):
            raise ShiftlabError("invariance.sensitivity_radius and sensitivity_radial must have "
                                "the same length")

    # --- text -------------------------------------------------------------------------
    def table(self) -> str:
        """A compact, aligned text table of the per-layer errors and the output metrics."""
        p, inv = self.provenance, self.invariance
        dtype = p.dtype if p.amp is None else f"{p.dtype} (autocast {p.compute_dtype})"
        head = (f"{p.model} · {p.protocol} shifts {p.shifts} ({len(self.shifts)}) · "
                f"{p.n_images} images · {dtype} · seed {p.seed}")
        rows = [("layer", "type", "stride", "shape", "err exact", "err other", "verdict")]
        for item in self.layers:
            spatial = item.comparison == "equivariance"
            marked = item.note is not None and item.comparison != "not comparable"
            rows.append((item.name, item.kind, str(item.stride) if spatial else "-",
                         "x".join(map(str, item.shape)), _fmt(item.error_exact),
                         _fmt(item.error_other), item.verdict(p.tolerance) + " *" * marked))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head, ""]
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += ["", "relative L2 error. err exact: shifts the layer's stride divides (for "
                      "non-spatial layers: the model's stride so far); err other: the rest, "
                      "against the best integer alignment"]
        marked = [l.name for l in self.layers if l.note and l.comparison != "not comparable"]
        if marked:
            lines.append(f"* {_names(marked)}: these layers change the map size, so a circular "
                         "shift is not a roll of their maps; compared only at positions whose "
                         "receptive field did not wrap")
        for item in self.layers:
            if item.comparison == "not comparable":
                lines.append(f"{item.name}: {item.note}")
        out = []
        if inv.consistency is not None:
            rule = p.pair_offsets or f"shifts in [{p.pair_range[0]:g}, {p.pair_range[1]:g})"
            out.append(f"consistency {inv.consistency:.2%} ({inv.pairs} pairs; {rule})")
        if inv.flip_rate is not None:
            out.append(f"flip rate {inv.flip_rate:.2%}, MAC {inv.mean_abs_change:.4f} "
                       f"({inv.steps} steps of {inv.step_size:g} px)")
        if inv.worst_case_accuracy is not None:
            acc = inv.accuracy or [0.0]
            out.append(f"accuracy clean {inv.clean_accuracy:.2%}, mean over shifts "
                       f"{sum(acc) / len(acc):.2%}, worst-case {inv.worst_case_accuracy:.2%}")
        gaps = [f"{points(gap)} over {what}" for gap, what in (
            (inv.gap_integer, "integer shifts"), (inv.gap_half_pixel, "the half-pixel lattice"))
            if gap is not None]
        if gaps:
            out.append(f"worst-case gap (clean - worst-case accuracy): {', '.join(gaps)}")
        if inv.half_pixel_consistency is not None:
            out.append(f"half-pixel consistency {inv.half_pixel_consistency:.2%} "
                       f"({inv.half_pixel_pairs} pairs: unshifted vs shifted by s + 1/2 px)")
        if self.all_shifts is not None:
            a = self.all_shifts
            acc = ("" if a.worst_case_accuracy is None else
                   f", accuracy clean {a.clean_accuracy:.2%}, worst-case {a.worst_case_accuracy:.2%}")
            out.append(f"every circular shift ({a.shifts} per input from {a.passes} passes, stride "
                       f"{a.stride}): consistency {a.consistency:.2%}{acc}")
        if self.lie is not None:
            groups = self.lie.shares_by_group()
            lee = ", ".join(f"{axis} {v:.3g}" for axis, v in self.lie.lee.items())
            split = ", ".join(f"{g} {v:.0%}" for g, v in groups.items() if v is not None)
            out.append(f"Lie derivative (LEE, {self.lie.images} images, {self.lie.generator} "
                       f"shifts, {self.lie.reduction}): {lee}; error by layer kind: {split or 'none'}")
        if out:
            lines += [""] + out
        return "\n".join(lines)


def _names(names: list[str], most: int = 4) -> str:
    """``a, b, c … z (N layers)`` for long lists."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most - 1])} … {names[-1]} ({len(names)} layers)"


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"
