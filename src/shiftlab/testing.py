"""Assertions for your own tests: is a module shift-equivariant, or shift-invariant?

For a module ``f`` of cumulative stride ``s`` and every shift ``δ`` (a multiple of ``s``):

.. math::  f(T_δ x) = T_{δ/s} f(x)   \\quad\\text{(equivariant)},\\qquad  f(T_δ x) = f(x)
           \\quad\\text{(invariant)},

checked elementwise as ``|actual − expected| ≤ atol + rtol·|expected|`` (the rule of
``torch.testing.assert_close``), on the region the law of :mod:`shiftlab.law` defines:
``T`` is a shift protocol of :mod:`shiftlab.actions` (``circular``: ``torch.roll``, and on
a map whose size the module changed, such as a valid convolution's, only where no wrapped
pixel reaches; ``canvas``: where both maps are defined). Signals (N×C×T) take ``(dt,)``
shifts, images ``(dy, dx)``.
Defaults per dtype: ``rtol`` 1e-5 (float32) / 1e-10 (float64) / 1e-2 (half), and ``atol``
``= rtol × max|expected|``, i.e. errors are judged against the scale of the output.

A failure raises ``AssertionError`` naming the shift, the worst element, its error and the
allowed error, and (for models) the first probed layer that breaks. Bad arguments raise
:class:`~shiftlab.errors.ShiftlabError`. :func:`shift_errors` returns the same facts as data.

>>> conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
>>> assert_shift_equivariant(conv, torch.randn(2, 1, 8, 8), [(1, 2), (-3, 0)])
>>> assert_shift_invariant(torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1)),
...                        torch.randn(2, 1, 8, 8), (2, 5))
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .actions import ShiftAction, make_action, spatial_rank
from .law import TOLERANCE
from .errors import ShiftlabError, run_model
from .law import LayerGeometry, alignments, layer_geometries
from .law import expected as law_expected
from .probe import OUTPUT, Probe, default_layers, infer_layers


@dataclass(frozen=True)
class ShiftError:
    """How far ``f(T_δ x)`` is from what the law predicts, for one shift ``δ``."""

    shift: tuple[int, ...]
    feature_shift: tuple[int, ...] | None    # δ/s for equivariance, None for invariance
    max_error: float                          # greatest |actual − expected|
    index: tuple[int, ...]                    # where it is (in the output)
    excess: float                             # greatest error minus allowed error (≤ 0: ok)
    allowed: float                            # the allowed error at that element
    failed: int                               # elements over their allowed error
    total: int                                # elements compared

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _as_shifts(shifts, rank: int) -> list[tuple[int, ...]]:
    t = torch.as_tensor(shifts)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ShiftlabError(f"integer shifts expected, got {t.flatten().tolist()[:6]}")
    t = t.to(torch.int64)
    if t.ndim <= 1 and t.numel() == rank:
        t = t.reshape(1, rank)
    if t.ndim != 2 or t.shape[1] != rank or t.shape[0] == 0:
        one = "(dt,)" if rank == 1 else "(dy, dx)"
        raise ShiftlabError(f"shifts must be one {one} shift or a list of them for {rank}-D "
                            f"inputs, got shape {tuple(t.shape)}")
    return [tuple(int(v) for v in row) for row in t]


def _action(protocol: str, fill: float) -> ShiftAction:
    action = make_action(protocol, fill=fill)
    if not action.integer:
        raise ShiftlabError(f"the assertions take integer shifts; protocol {protocol!r} is for "
                            "sub-pixel shifts (use shiftlab.audit)")
    return action


def _tolerances(dtype: torch.dtype, atol: float | None, rtol: float | None,
                expected: Tensor) -> tuple[float, float]:
    rtol = TOLERANCE.get(dtype, TOLERANCE[torch.float16]) if rtol is None else float(rtol)
    if atol is None:
        atol = rtol * float(expected.abs().max()) if expected.numel() else 0.0
    return float(atol), rtol


def _compare(actual: Tensor, expected: Tensor, atol: float, rtol: float, mask: Tensor | None,
             shift, feature_shift) -> ShiftError:
    if actual.shape != expected.shape:
        raise ShiftlabError(f"the output shape changed under the shift {shift}: "
                            f"{tuple(expected.shape)} → {tuple(actual.shape)}")
    error = (actual - expected).abs().double()
    allowed = atol + rtol * expected.abs().double()
    excess = error - allowed
    if mask is not None:
        excess = excess.masked_fill(~mask, -torch.inf)
        error = error.masked_fill(~mask, 0.0)
    total = int(mask.sum()) if mask is not None else error.numel()
    if total == 0:
        return ShiftError(shift, feature_shift, 0.0, (), -torch.inf, atol, 0, 0)
    worst = int(excess.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), error.shape))
    return ShiftError(shift, feature_shift, float(error.max()), index, float(excess.flatten()[worst]),
                      float(allowed.flatten()[worst]), int((excess > 0).sum()), total)


def _check_law(actual: Tensor, reference: Tensor, action: ShiftAction, geometry: LayerGeometry,
               shift, atol, rtol) -> ShiftError:
    """The law at one shift, element by element, on the region it defines."""
    (alignment,) = alignments(action, geometry, shift) or [None]
    if alignment is None:                                 # nothing is comparable
        return ShiftError(shift, None, 0.0, (), -torch.inf, 0.0, 0, 0)
    expected, mask = law_expected(action, reference, alignment)
    a, r = _tolerances(reference.dtype, atol, rtol, expected if mask is None else expected[
        mask[:, None].expand_as(expected)])
    feature = alignment.feature_shift or None
    return _compare(actual, expected, a, r, None if mask is None else mask[:, None].expand_as(actual),
                    shift, feature)


def _run(module: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = run_model(module, x, "the module")
    if not isinstance(out, Tensor):
        raise ShiftlabError(f"the module returned {type(out).__name__}; a tensor is needed")
    return out


def shift_errors(module: nn.Module, x: Tensor, shifts, *, invariant: bool = False,
                 stride: int | None = None, atol: float | None = None, rtol: float | None = None,
                 protocol: str = "circular", fill: float = 0.0) -> list[ShiftError]:
    """One :class:`ShiftError` per shift: the data behind the two assertions."""
    rank = spatial_rank(x)
    action, pairs = _action(protocol, fill), _as_shifts(shifts, rank)
    action.check_shifts(tuple(x.shape[2:]), torch.tensor(pairs))
    reference_input = action.reference(x)
    reference = _run(module, reference_input)
    if invariant:
        geometry = LayerGeometry(None)
    else:
        info = infer_layers(module, reference_input[:1], layers=[])[-1]
        stride = info.stride if stride is None else int(stride)
        if stride is None or reference.ndim != x.ndim or not info.spatial:
            raise ShiftlabError("the module's output is not a spatial map with a measurable "
                                "stride; pass stride=, or use assert_shift_invariant")
        if stride < 1:
            raise ShiftlabError(f"stride must be at least 1, got {stride}")
        bad = [d for d in pairs if any(v % stride for v in d)]
        if bad:
            raise ShiftlabError(f"shift {bad[0]} is not a multiple of the stride {stride}; "
                                "equivariance is defined only there (use multiples)")
        geometry = layer_geometries(module, reference_input[:1], action, [info],
                                    torch.tensor(pairs, dtype=torch.float64))[info.name]
        geometry = dataclasses.replace(geometry, stride=stride)       # a stride the caller chose
    results = [_check_law(_run(module, action(x, d)), reference, action, geometry, d, atol, rtol)
               for d in pairs]
    empty = [r.shift for r in results if r.total == 0 and any(r.shift)]
    if empty:
        raise ShiftlabError(f"nothing to compare at the shift {empty[0]}: no output position is "
                            "defined in both maps (every receptive field wraps, or the shift "
                            "moves everything out); use smaller shifts or a larger input")
    return results


def _first_broken_layer(module: nn.Module, x: Tensor, result: ShiftError, action: ShiftAction,
                        atol: float | None = None, rtol: float | None = None) -> str:
    """`` (first broken layer: NAME, TYPE, stride s)`` for models with probed layers, else ``""``;
    each layer is judged by the law with the caller's ``atol``/``rtol`` (scaled to that
    layer's output)."""
    names = default_layers(module)
    if not names:
        return ""
    try:
        example = action.reference(x[:1])
        infos = infer_layers(module, example, names)
        geometries = layer_geometries(module, example, action, infos,
                                      torch.tensor([result.shift], dtype=torch.float64))
        with Probe(module, names) as probe, torch.no_grad():
            ref, moved = probe(action.reference(x)), probe(action(x, result.shift))
    except Exception:                                     # diagnosis is best effort
        return ""
    infos = {i.name: i for i in infos}
    for name in (n for n in ref if n != OUTPUT and n in infos):
        info, a, b = infos[name], ref[name], moved.get(name)
        if b is None or a.shape != b.shape:
            continue
        geometry = geometries[name]
        if geometry.stride is not None and any(v % geometry.stride for v in result.shift):
            return f" (first broken layer: {name}, {info.kind}, stride {info.stride} does not divide the shift)"
        if not _check_law(b, a, action, geometry, result.shift, atol, rtol).ok:
            stride = "-" if info.stride is None else info.stride
            return f" (first broken layer: {name}, {info.kind}, stride {stride})"
    return ""


def _fail(module, x, results: list[ShiftError], protocol: str, fill: float, law: str,
          atol: float | None, rtol: float | None) -> None:
    bad = [r for r in results if not r.ok]
    if not bad:
        return
    r = bad[0]
    where = "" if r.feature_shift is None else f" (feature shift {r.feature_shift})"
    layer = _first_broken_layer(module, x, r, _action(protocol, fill), atol, rtol)
    raise AssertionError(
        f"not shift-{law} under the {protocol} shift {r.shift}{where}: {r.failed} of {r.total} "
        f"elements differ; greatest difference {r.max_error:.3g} at index {r.index} "
        f"(allowed {r.allowed:.3g}); {len(bad)} of {len(results)} shifts fail{layer}")


def assert_shift_equivariant(module: nn.Module, x: Tensor, shifts, *, stride: int | None = None,
                             atol: float | None = None, rtol: float | None = None,
                             protocol: str = "circular", fill: float = 0.0) -> None:
    """Assert ``module(T_δ x) == T_{δ/s} module(x)`` for every ``δ`` in ``shifts``.

    ``stride`` (the module's cumulative stride ``s``) is measured when not given; every
    shift must be a multiple of it.
    """
    results = shift_errors(module, x, shifts, stride=stride, atol=atol, rtol=rtol,
                           protocol=protocol, fill=fill)
    _fail(module, x, results, protocol, fill, "equivariant", atol, rtol)


def assert_shift_invariant(module: nn.Module, x: Tensor, shifts, *, atol: float | None = None,
                           rtol: float | None = None, protocol: str = "circular",
                           fill: float = 0.0) -> None:
    """Assert ``module(T_δ x) == module(x)`` for every ``δ`` in ``shifts`` (any output shape)."""
    results = shift_errors(module, x, shifts, invariant=True, atol=atol, rtol=rtol,
                           protocol=protocol, fill=fill)
    _fail(module, x, results, protocol, fill, "invariant", atol, rtol)
