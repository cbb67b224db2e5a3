"""Assertions for your own tests: is a module shift-equivariant, or shift-invariant?

For a module ``f`` of cumulative stride ``s`` and every shift ``δ`` (a multiple of ``s``):

.. math::  f(T_δ x) = T_{δ/s} f(x)   \\quad\\text{(equivariant)},\\qquad  f(T_δ x) = f(x)
           \\quad\\text{(invariant)},

checked elementwise as ``|actual − expected| ≤ atol + rtol·|expected|`` (the rule of
``torch.testing.assert_close``). ``T`` is a shift protocol of :mod:`shiftlab.transforms`
(``circular``: ``torch.roll``; ``canvas``: compared only where both maps are defined).
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

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .audit import TOLERANCE
from .errors import ShiftlabError, run_model
from .probe import OUTPUT, Probe, default_layers, infer_layers
from .transforms import ShiftAction, make_action


@dataclass(frozen=True)
class ShiftError:
    """How far ``f(T_δ x)`` is from what the law predicts, for one shift ``δ``."""

    shift: tuple[int, int]
    feature_shift: tuple[int, int] | None    # δ/s for equivariance, None for invariance
    max_error: float                          # greatest |actual − expected|
    index: tuple[int, ...]                    # where it is (in the output)
    excess: float                             # greatest error minus allowed error (≤ 0: ok)
    allowed: float                            # the allowed error at that element
    failed: int                               # elements over their allowed error
    total: int                                # elements compared

    @property
    def ok(self) -> bool:
        return self.failed == 0


def _as_pairs(shifts) -> list[tuple[int, int]]:
    t = torch.as_tensor(shifts)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ShiftlabError(f"integer shifts expected, got {t.flatten().tolist()[:6]}")
    t = t.to(torch.int64)
    if t.ndim == 1 and t.numel() == 2:
        t = t[None]
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] == 0:
        raise ShiftlabError(f"shifts must be one (dy, dx) pair or a list of them, got shape {tuple(t.shape)}")
    return [(int(a), int(b)) for a, b in t]


def _action(protocol: str, fill: float) -> ShiftAction:
    action = make_action(protocol, fill=fill) if protocol in ("circular", "canvas") else None
    if action is None:
        raise ShiftlabError(f"protocol must be 'circular' or 'canvas' here, got {protocol!r}")
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


def _run(module: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = run_model(module, x, "the module")
    if not isinstance(out, Tensor):
        raise ShiftlabError(f"the module returned {type(out).__name__}; a tensor is needed")
    return out


def _stride_of(module: nn.Module, x: Tensor) -> int:
    info = infer_layers(module, x[:1], layers=[])[-1]
    if info.stride is None:
        raise ShiftlabError("the module's output has no measurable stride (not a spatial map); "
                            "pass stride=, or use assert_shift_invariant")
    return info.stride


def shift_errors(module: nn.Module, x: Tensor, shifts, *, invariant: bool = False,
                 stride: int | None = None, atol: float | None = None, rtol: float | None = None,
                 protocol: str = "circular", fill: float = 0.0) -> list[ShiftError]:
    """One :class:`ShiftError` per shift: the data behind the two assertions."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ShiftlabError(f"x must be an NCHW batch (4-D tensor), got "
                            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    action, pairs = _action(protocol, fill), _as_pairs(shifts)
    action.check_shifts(tuple(x.shape[-2:]), torch.tensor(pairs))
    if not invariant:
        stride = _stride_of(module, x) if stride is None else int(stride)
        if stride < 1:
            raise ShiftlabError(f"stride must be at least 1, got {stride}")
        bad = [d for d in pairs if d[0] % stride or d[1] % stride]
        if bad:
            raise ShiftlabError(f"shift {bad[0]} is not a multiple of the stride {stride}; "
                                "equivariance is defined only there (use multiples)")
    reference = _run(module, action.reference(x))
    results = []
    for d in pairs:
        out = _run(module, action(x, d))
        if invariant:
            expected, mask, feature = reference, None, None
        else:
            if reference.ndim != 4:
                raise ShiftlabError("the module's output is not an NCHW map; use assert_shift_invariant")
            feature = (d[0] // stride, d[1] // stride)
            fs = torch.tensor([feature] * len(x))
            expected = action.on_features(reference, fs)
            mask = None if action.circular else action.valid_mask(tuple(reference.shape[-2:]), fs)[:, None]
        a, r = _tolerances(reference.dtype, atol, rtol, expected)
        results.append(_compare(out, expected, a, r, None if mask is None else mask.expand_as(out),
                                d, feature))
    return results


def _first_broken_layer(module: nn.Module, x: Tensor, result: ShiftError, action: ShiftAction,
                        atol: float | None = None, rtol: float | None = None) -> str:
    """`` (first broken layer: NAME, TYPE, stride s)`` for models with probed layers, else ``""``;
    each layer is judged with the caller's ``atol``/``rtol`` (scaled to that layer's output)."""
    names = default_layers(module)
    if not names:
        return ""
    try:
        infos = {i.name: i for i in infer_layers(module, x[:1], names)}
        with Probe(module, names) as probe, torch.no_grad():
            ref, moved = probe(action.reference(x)), probe(action(x, result.shift))
    except Exception:                                     # diagnosis is best effort
        return ""
    for name in (n for n in ref if n != OUTPUT and n in infos):
        info, a, b = infos[name], ref[name], moved.get(name)
        if b is None or a.shape != b.shape:
            continue
        if info.stride is None:                           # not spatial: must be invariant
            expected = a
        elif info.spatial and not (result.shift[0] % info.stride or result.shift[1] % info.stride):
            fs = torch.tensor([[result.shift[0] // info.stride, result.shift[1] // info.stride]] * len(x))
            if not action.circular:
                continue
            expected = action.on_features(a, fs)
        else:
            return f" (first broken layer: {name}, {info.kind}, stride {info.stride} does not divide the shift)"
        layer_atol, layer_rtol = _tolerances(a.dtype, atol, rtol, expected)
        if not _compare(b, expected, layer_atol, layer_rtol, None, result.shift, None).ok:
            return f" (first broken layer: {name}, {info.kind}, stride {info.stride})"
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
