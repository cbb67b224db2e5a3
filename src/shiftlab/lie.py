"""The Lie derivative of a model under translation: local equivariance error, end to end and
layer by layer.

Gruver, Finzi, Goldblum & Wilson, "The Lie Derivative for Measuring Learned Equivariance",
ICLR 2023 (code: github.com/ngruver/lie-deriv, ``lee/lie_derivs.py``, ``lee/e2e_lee.py``,
``lee/layerwise_lee.py``). For the translation ``T_t`` along one spatial axis,

    L f(x) = d/dt  T_t⁻¹ f(T_t x)  at t = 0,

with ``T_t⁻¹`` dropped when ``f``'s output has no spatial axes (then ``L f`` measures
invariance). It is zero for every x exactly when ``f`` commutes with all small shifts.

Shifts. Two generators ``G x = d/dt T_t x`` (see :func:`shift_generator`): the band-limited
circular (Fourier) shift of :func:`shiftlab.actions.fractional_shift`, exact on circular nets,
and the derivative of cubic interpolation, local, for nets with zero padding or valid
convolutions (the spectral derivative of a map that is not periodic rings over all of it).
``"auto"`` picks Fourier when every convolution pads circularly. Gruver et al. use bilinear
``grid_sample``, whose derivative at integer positions is one-sided.

Units (Gruver et al.'s): ``t`` is in normalised coordinates, the input spans 2 units, so an
input of ``N`` pixels moves by ``t·N/2`` and a map of cumulative stride ``s`` (measured as
:mod:`shiftlab.probe` does) by ``t·N/(2s)``. (Their ``[-1, 1]`` grid with
``align_corners=True`` has ``(N−1)/2`` pixels per unit; a circular grid has ``N/2``.)

Exactness. The derivatives are forward-mode (``torch.func.jvp``), not finite differences: one
Jacobian-vector product per layer and axis, on CPU as on GPU.

- End to end, for the softmax probabilities ``p``, one of two reductions (``reduction``):
  ``"mean_abs"`` (default), ``LEE_axis = mean over images of mean_c |L p_c(x)|``, what
  Gruver et al.'s code computes (``trans_x_deriv``); or ``"rms"``, ``LEE_axis = sqrt(mean
  over images and classes of (L p_c(x))²)``, the square their paper's text writes, as a
  root mean square so that it keeps the units of ``L p``. For one image whose ``|L p_c|``
  are ``a_c``, ``mean_abs = mean(a)`` and ``rms = sqrt(mean(a²)) ≥ mean_abs``, equal only
  when all ``a_c`` are equal.
- Per layer: for ``f = f_n ∘ … ∘ f_1`` the chain rule splits the Lie derivative into
  ``L f(x) = Σ_i J_{f_n∘…∘f_(i+1)} · L f_i(h_(i−1))``. Layer ``i``'s contribution is
  ``‖J_{>i} · L f_i‖²`` on the softmax output, averaged over images: Gruver et al.'s layerwise
  estimator ``E_z[(zᵀ J L f_i)²]``, ``z ~ N(0, I)``, computed here exactly instead of with
  random probes. Work done outside modules (``F.relu`` inside a ``forward``) belongs to no
  layer: it is reported as ``unattributed = ‖L f − Σ_i J L f_i‖²``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from .batches import iter_batches
from .errors import ShiftlabError, one_line
from .result import LayerLie, LieResult

#: how the end-to-end LEE reduces ``L p`` over classes and images, in words
REDUCTIONS = {
    "mean_abs": "mean over images and classes of |L p_c| (Gruver et al.'s code)",
    "rms": "root mean square over images and classes of L p_c (Gruver et al.'s paper squares it)",
}


def convention(reduction: str = "mean_abs") -> str:
    """The convention, in words, recorded with every result."""
    return ("Lie derivative d/dt T_t^-1 f(T_t x) at t = 0 (Gruver et al. 2023) by "
            "forward-mode autodiff, T_t a shift by t*N/(2s) pixels on a map of stride s of an "
            "N-pixel input (normalised coordinates: the input spans 2 units); generator "
            "'fourier' (band-limited circular shift) or 'central' (Catmull-Rom cubic); "
            f"LEE = {REDUCTIONS[reduction]} for softmax outputs p; a layer's contribution "
            "= |J_after L f_layer|^2 on the softmax output, averaged over images")


#: the default convention (``reduction="mean_abs"``)
CONVENTION = convention()

_NONLINEAR = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
              nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh, nn.Sigmoid,
              nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink,
              nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)

#: modules with no effect at evaluation, never attributed
_SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def shift_generator(x: Tensor, dim: int, pixels: float, kind: str = "fourier") -> Tensor:
    """``G x = d/dt T_t x`` at ``t = 0`` for a shift along ``dim`` by ``t·pixels`` pixels
    (content moving towards larger indices), i.e. ``−pixels · ∂x/∂n``, with ``∂/∂n``:

    - ``"fourier"``: the spectral derivative of the band-limited circular shift of
      :func:`shiftlab.actions.fractional_shift` (an even size's Nyquist bin, whose shift keeps
      ``cos(π t)``, gives 0). Exact for circular nets; on a map that is not periodic it rings
      over the whole map.
    - ``"central"``: ``(x[n+1] − x[n−1]) / 2`` with zeros beyond the edges, the derivative at
      the samples of Catmull-Rom (Keys a = −½) cubic interpolation. Local: a layer that is
      equivariant away from the borders (a valid or zero-padded convolution) shows error only
      at the borders.
    """
    if kind == "fourier":
        n = x.shape[dim]
        k = torch.fft.fftfreq(n, device=x.device, dtype=x.dtype)     # cycles per pixel
        if n % 2 == 0:
            k[n // 2] = 0
        view = [1] * x.ndim
        view[dim] = n
        ramp = (-2j * math.pi * pixels) * k.reshape(view)
        return torch.fft.ifft(torch.fft.fft(x, dim=dim) * ramp, dim=dim).real.to(x.dtype)
    if kind == "central":
        padded = torch.nn.functional.pad(x.movedim(dim, -1), (1, 1)).movedim(-1, dim)
        n = x.shape[dim]
        ahead, behind = padded.narrow(dim, 2, n), padded.narrow(dim, 0, n)
        return (-pixels / 2) * (ahead - behind)
    raise ShiftlabError(f"unknown shift generator {kind!r}; use 'fourier' or 'central'")


def default_generator(model: nn.Module) -> str:
    """``"fourier"`` when every convolution of ``model`` pads circularly (its maps are
    periodic, and the band-limited shift is exact there), else ``"central"``."""
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return "fourier" if all(m.padding_mode == "circular" for m in convs) else "central"


def _is_map(x, rank: int) -> bool:
    """Whether ``x`` is a map with the model input's spatial rank (N×C×T or N×C×H×W)."""
    return isinstance(x, Tensor) and x.is_floating_point() and x.ndim == 2 + rank


@dataclass
class _Call:
    """One call of one unit (a module, or a padding module and the module it feeds), with the
    pixels per unit of ``t`` on its input and output map along each axis (None: not a map tied
    to the input's positions)."""
    name: str
    first: nn.Module                           # receives the input
    module: nn.Module                          # gives the output (the same as first, but after a pad)
    call: int
    pixels_in: tuple[float | None, ...] | None
    pixels_out: tuple[float | None, ...] | None

    @property
    def group(self) -> str:
        """A layer that samples coarser (its output moves fewer pixels per unit than its
        input, or pools a map away); a nonlinearity (pointwise, or a dense max at stride 1);
        or anything else (convolutions, normalisation, padding)."""
        if self.pixels_in is not None and (self.pixels_out is None or any(
                o is None or o < i - 1e-9 for i, o in zip(self.pixels_in, self.pixels_out))):
            return "downsampling"
        if isinstance(self.module, _NONLINEAR):
            return "nonlinearity"
        return "other"


def _measure_calls(model: nn.Module, x: Tensor, units: list[_Unit]) -> list[_Call]:
    """Every call of the attributed units, with its maps' scales. A map of cumulative stride
    ``s`` moves by ``t·N/(2s)`` pixels when the input (``N`` pixels) moves by ``t·N/2``; ``s``
    is the probe's measurement (:func:`shiftlab.probe.measure_strides`), from one image and
    :func:`~shiftlab.probe.stride_probe_input`'s larger one."""
    from .probe import measure_strides, stride_probe_input

    rank = x.ndim - 2
    example = x[:1]
    sizes: dict[tuple[int, str], list] = {}

    def record(i, end):
        def hook(_module, args, out):
            t = (args[0] if args else None) if end == "in" else out
            sizes.setdefault((i, end), []).append(tuple(t.shape[2:]) if _is_map(t, rank) else None)
        return hook

    def forward(inputs) -> dict:
        sizes.clear()
        handles = [h for i, u in enumerate(units) for h in (
            u.first.register_forward_hook(record(i, "in")), u.last.register_forward_hook(record(i, "out")))]
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for h in handles:
                h.remove()
        return {k: list(v) for k, v in sizes.items()}

    base = forward(example)
    try:
        big = forward(stride_probe_input(example))
    except Exception:                          # a head sized for one input size
        big = {k: list(v) for k, v in sizes.items()}
    n0 = example.shape[2:]

    def pixels(small, large):
        if small is None:
            return None
        strides = measure_strides(tuple(n0), small, large)
        if any(s is None or s == math.inf for s in strides):
            return None                        # does not grow (global pooling) or shrinks: not a map of positions
        return tuple(n / 2 / s for n, s in zip(n0, strides))

    def at(table, key, c):
        values = table.get(key, [])
        return values[c] if c < len(values) else None

    calls = []
    for i, unit in enumerate(units):
        for c in range(len(base.get((i, "out"), []))):
            calls.append(_Call(unit.name if c == 0 else f"{unit.name}#{c + 1}", unit.first, unit.last,
                               c + 1, pixels(at(base, (i, "in"), c), at(big, (i, "in"), c)),
                               pixels(at(base, (i, "out"), c), at(big, (i, "out"), c))))
    return calls


class _Shifted:
    """Hooks that make one call of one module compute ``T_t⁻¹ f(T_t h)`` along one axis, with
    the linearised shift ``T_t h = h + t·G h`` (exact to first order, hence exact for d/dt at
    0; the primal values stay those of the unshifted model)."""

    def __init__(self, call: _Call, axis: int, rank: int, kind: str):
        self.target, self.axis, self.rank, self.kind = call, axis, rank, kind
        self.t: Tensor | None = None
        self.calls_in = self.calls_out = 0

    def _pre(self, _module, args):
        self.calls_in += 1
        pixels = self.target.pixels_in
        if self.calls_in != self.target.call or pixels is None or pixels[self.axis] is None:
            return None
        h = args[0]
        return (h + self.t * shift_generator(h, self.axis - self.rank, pixels[self.axis], self.kind), *args[1:])

    def _post(self, _module, args, out):
        self.calls_out += 1
        pixels_in, pixels_out = self.target.pixels_in, self.target.pixels_out
        if (self.calls_out != self.target.call or pixels_in is None or pixels_out is None
                or pixels_out[self.axis] is None or not _is_map(out, self.rank)):
            return None
        return out - self.t * shift_generator(out, self.axis - self.rank, pixels_out[self.axis], self.kind)

    @contextmanager
    def installed(self, t: Tensor):
        self.t, self.calls_in, self.calls_out = t, 0, 0
        handles = [self.target.first.register_forward_pre_hook(self._pre),
                   self.target.module.register_forward_hook(self._post)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@dataclass
class _Unit:
    """What one contribution is attributed to: a module, or a padding module fused with the
    module after it (a pad changes the map's size, so alone it has no equivariance to speak
    of; with the pooling or convolution it feeds it does)."""
    name: str
    first: nn.Module
    last: nn.Module


_PADDING = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d,
            nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d,
            nn.CircularPad2d)


def _is_padding(module: nn.Module) -> bool:
    from .layers import Pad
    return isinstance(module, (*_PADDING, Pad))


def _attributed_layers(model: nn.Module, layers: Iterable[str] | str | None) -> list[_Unit]:
    """The leaf modules (no children) in definition order, a padding module fused with the
    leaf after it; or the named modules."""
    named = dict(model.named_modules())
    if layers is None:
        units, pad = [], None
        for n, m in model.named_modules():
            if not n or any(True for _ in m.children()) or isinstance(m, _SKIPPED):
                continue
            if _is_padding(m) and pad is None:
                pad = m
                continue
            units.append(_Unit(n, pad or m, m))
            pad = None
        return units
    chosen = []
    for name in ([s for s in layers.split(",") if s] if isinstance(layers, str) else layers):
        if not name or name not in named:
            raise ShiftlabError(f"unknown layer {name!r} for the Lie derivative; see "
                                "`shiftlab layers` for the model's layer names")
        chosen.append(_Unit(name, named[name], named[name]))
    return chosen


def _tangent(fn, dtype: torch.dtype) -> Tensor:
    """``d/dt fn(t)`` at ``t = 0`` by forward-mode autodiff, detached, in float64."""
    t = torch.zeros((), dtype=dtype)
    try:
        _, tangent = torch.func.jvp(fn, (t,), (torch.ones_like(t),))
    except ShiftlabError:
        raise
    except Exception as err:
        raise ShiftlabError(f"cannot take the Lie derivative of this model: forward-mode "
                            f"autodiff failed ({one_line(err)}); in-place operations and "
                            "non-differentiable steps are the usual causes") from None
    return tangent.detach().double()


def _check_logits(out) -> None:
    if not isinstance(out, Tensor) or not out.is_floating_point() or out.ndim != 2:
        what = (f"{tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__)
        raise ShiftlabError(f"the Lie derivative needs N x classes floating-point logits; the "
                            f"model returns {what}")


def lie_derivative(model: nn.Module, images, layers: Iterable[str] | str | None = None,
                   batch_size: int = 64, generator: str = "auto",
                   reduction: str = "mean_abs") -> LieResult:
    """The local equivariance error of ``model`` under translation along each spatial axis,
    end to end and per layer (see the module doc for the definitions and units).

    Args:
        model: an ``nn.Module`` mapping ``N×C×T`` signals or ``N×C×H×W`` images to logits.
        images: a tensor, an ``(inputs, labels)`` pair or an iterable of batches.
        layers: module names to attribute the error to; default every leaf module.
        batch_size: images per Jacobian-vector product.
        generator: ``"fourier"`` (the band-limited shift; exact for circular nets),
            ``"central"`` (local; for nets with zero padding or valid convolutions, whose maps
            are not periodic), or ``"auto"``: fourier when every convolution pads circularly,
            else central. See :func:`shift_generator`; the choice is recorded.
        reduction: how ``lee`` reduces ``L p`` over classes and images: ``"mean_abs"``
            (Gruver et al.'s code, the default) or ``"rms"`` (their paper's square, as a root
            mean square); recorded.
    """
    from .errors import run_model

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ShiftlabError(f"batch_size must be a positive integer, got {batch_size!r}")
    if reduction not in REDUCTIONS:
        raise ShiftlabError(f"unknown LEE reduction {reduction!r}; use "
                            f"{' or '.join(repr(r) for r in REDUCTIONS)}")
    if generator == "auto":
        generator = default_generator(model)
    shift_generator(torch.zeros(1, 1, 2), -1, 1.0, generator)          # a known generator?
    named = _attributed_layers(model, layers)
    was_training = model.training
    model.eval()
    calls: list[_Call] | None = None
    lee = total = rest = None
    parts: dict[str, list[float]] = {}
    seen = 0
    try:
        for x, _ in iter_batches(images, batch_size):
            x = x.detach()
            rank = x.ndim - 2
            axes = ["t"] if rank == 1 else ["y", "x"]
            if calls is None:
                with torch.no_grad():
                    _check_logits(run_model(model, x[:1]))
                calls = _measure_calls(model, x, named)
                lee, total, rest = ([0.0] * rank for _ in range(3))
                parts = {c.name: [0.0] * rank for c in calls}
            for a in range(rank):
                input_pixels = x.shape[2 + a] / 2

                def shifted_input(t, a=a, pixels=input_pixels):
                    return torch.softmax(model(x + t * shift_generator(x, a - rank, pixels, generator)), dim=1)

                whole = _tangent(shifted_input, x.dtype)                   # N × classes
                classes = whole.shape[1]
                summed = torch.zeros_like(whole)
                for call in calls:
                    hooks = _Shifted(call, a, rank, generator)

                    def shifted_layer(t, hooks=hooks):
                        with hooks.installed(t):
                            return torch.softmax(model(x), dim=1)

                    part = _tangent(shifted_layer, x.dtype)
                    summed += part
                    parts[call.name][a] += float((part ** 2).sum())
                lee[a] += float(whole.abs().mean(dim=1).sum())
                total[a] += float((whole ** 2).sum())
                rest[a] += float(((whole - summed) ** 2).sum())
            seen += len(x)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ShiftlabError("no images to take the Lie derivative on; pass at least one")
    per = lambda v: dict(zip(axes, (s / seen for s in v)))      # noqa: E731
    if reduction == "rms":                  # total: Σ over images and classes of (L p_c)²
        lee = [math.sqrt(t / (seen * classes)) for t in total]
    else:
        lee = [v / seen for v in lee]
    result = LieResult(axes=axes, lee=dict(zip(axes, lee)), total=per(total), unattributed=per(rest),
                       images=seen, generator=generator, convention=convention(reduction),
                       reduction=reduction)
    sums = [sum(p[a] for p in parts.values()) for a in range(rank)]
    for call in calls:
        c = parts[call.name]
        result.layers.append(LayerLie(
            name=call.name, type=(f"{type(call.first).__name__}+" if call.first is not call.module
                                  else "") + type(call.module).__name__, group=call.group, contribution=per(c),
            share=dict(zip(axes, (c[a] / sums[a] if sums[a] > 0 else None for a in range(rank))))))
    return result
