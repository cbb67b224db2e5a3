"""Experiment ``convolution-theorem``: a linear map that commutes with shifts is a convolution.

For a map ``f`` on ``C×H×W`` images the theorem says: if ``f`` is linear and commutes with
every circular shift ``T_δ`` (``f(T_δ x) = T_δ f(x)``), then

.. math::  f(x)[o] = \\sum_c x[c] \\circledast K[o, c],  \\qquad  K[:, c] = f(e_c),

where ``e_c`` is a unit impulse at pixel ``(0, 0)`` of channel ``c`` and ``⊛`` is circular
convolution, ``(x ⊛ k)[i, j] = Σ_{a,b} x[a, b] · k[(i − a) mod H, (j − b) mod W]``.
So one impulse response describes the whole map. :func:`check_convolution_theorem` tests
the three parts on any black box (a function or an ``nn.Module``): linearity, shift
equivariance, and the reconstruction ``f(x) ≈ K ⊛ x``. A dense layer or a
position-dependent filter is linear but not equivariant, and its reconstruction fails.

>>> import torch
>>> blur = lambda x: (x + torch.roll(x, 1, -1)) / 2
>>> report = check_convolution_theorem(blur, (1, 8, 8))
>>> report.is_convolution, report.reconstruction_error < 1e-12
(True, True)
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..law import TOLERANCE
from ..errors import ShiftlabError, one_line
from ..actions import CircularShift
from ..law import map_errors
from .base import ExperimentResult, save_data
from .weight_sharing import dense_layer

__all__ = ["check_convolution_theorem", "impulse_response", "circular_convolve",
           "relative_error", "linearity_error", "equivariance_error", "TheoremReport",
           "position_dependent_filter", "dense_image_map", "compute", "draw", "claims", "summarise", "run"]

# ----------------------------------------------------------------------------- pieces
def relative_error(a: Tensor, b: Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (``‖a − b‖`` if ``b`` is zero)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    scale = float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    return diff / scale if scale > 0 else diff


def _apply(linear_map: Callable[[Tensor], Tensor], x: Tensor, shape) -> Tensor:
    """``linear_map(x)`` without gradients, checked to give an ``N×C'×H×W`` tensor."""
    with torch.no_grad():
        try:
            y = linear_map(x)
        except ShiftlabError:
            raise
        except Exception as err:
            raise ShiftlabError(f"the map raised an error on a {tuple(x.shape)} input ({one_line(err)}); "
                                "it must take N x C x H x W images") from None
    if not isinstance(y, Tensor) or y.ndim != 4 or len(y) != len(x):
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ShiftlabError(f"the map must return an N x C' x H x W tensor, got {got}")
    if tuple(y.shape[-2:]) != tuple(shape[-2:]):
        raise ShiftlabError(f"the map changes the image size {shape[-2]}x{shape[-1]} to "
                            f"{y.shape[-2]}x{y.shape[-1]}; the theorem concerns maps from "
                            "H x W images to H x W images (use 'same' circular padding)")
    return y


def _check_args(linear_map, shape, dtype) -> tuple[int, int, int]:
    if not callable(linear_map):
        raise ShiftlabError(f"linear_map must be a function or an nn.Module, got {type(linear_map).__name__}")
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ShiftlabError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    if dtype not in (torch.float32, torch.float64):
        raise ShiftlabError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if isinstance(linear_map, nn.Module):
        for p in linear_map.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                raise ShiftlabError(f"the module's parameters are {p.dtype} but dtype {dtype} was "
                                    "asked; convert the module (module.to(dtype)) or pass its dtype")
    return tuple(int(s) for s in shape)


def impulse_response(linear_map: Callable[[Tensor], Tensor], shape, dtype=torch.float64) -> Tensor:
    """The responses ``K[o, c] = f(e_c)[o]`` to a unit impulse at pixel ``(0, 0)`` of each
    input channel ``c``.

    Shape: input images ``(C, H, W)`` → ``K`` of shape ``(C_out, C, H, W)``. For a circular
    convolution with a kernel centred at the origin, ``K`` holds the kernel wrapped around
    the corners (``torch.fft.fftshift`` centres it for display).
    """
    c, h, w = _check_args(linear_map, shape, dtype)
    impulses = torch.zeros(c, c, h, w, dtype=dtype)
    impulses[torch.arange(c), torch.arange(c), 0, 0] = 1.0
    return _apply(linear_map, impulses, shape).transpose(0, 1).contiguous()   # (C_out, C, H, W)


def circular_convolve(x: Tensor, kernel: Tensor) -> Tensor:
    """``y[n, o] = Σ_c x[n, c] ⊛ kernel[o, c]`` (circular convolution, by FFT).

    Shape: ``x (N, C, H, W)``, ``kernel (C_out, C, H, W)`` → ``(N, C_out, H, W)``.
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[1] != kernel.shape[1] or x.shape[-2:] != kernel.shape[-2:]:
        raise ShiftlabError(f"circular_convolve needs x (N, C, H, W) and kernel (C_out, C, H, W) "
                            f"with the same C, H, W; got {tuple(x.shape)} and {tuple(kernel.shape)}")
    fx = torch.fft.fft2(x)[:, None]                     # (N, 1, C, H, W)
    fk = torch.fft.fft2(kernel)[None]                   # (1, C_out, C, H, W)
    return torch.fft.ifft2((fx * fk).sum(2)).real.to(x.dtype)


def linearity_error(linear_map, x: Tensor, y: Tensor, a: float = 0.7, b: float = -1.3) -> float:
    """``‖f(a·x + b·y) − (a·f(x) + b·f(y))‖ / ‖a·f(x) + b·f(y)‖``."""
    shape = x.shape[1:]
    combined = a * _apply(linear_map, x, shape) + b * _apply(linear_map, y, shape)
    return relative_error(_apply(linear_map, a * x + b * y, shape), combined)


def equivariance_error(linear_map, x: Tensor, shifts) -> float:
    """Worst relative error of the law ``f(T_δ x) = T_δ f(x)`` over circular shifts ``δ`` in
    ``shifts`` (``(dy, dx)`` pairs), as :func:`shiftlab.law.map_errors` measures it, for a
    map from ``H×W`` to ``H×W`` images."""
    _apply(linear_map, x, x.shape[1:])                  # one-line errors for maps that do not fit
    return max(map_errors(linear_map, x, [tuple(d) for d in shifts], CircularShift()))


@dataclass
class TheoremReport:
    """What :func:`check_convolution_theorem` found. Errors are relative L2 errors."""

    shape: tuple[int, int, int]
    dtype: str
    tolerance: float
    linearity_error: float
    equivariance_error: float
    reconstruction_error: float        # ‖f(x) − K ⊛ x‖ / ‖f(x)‖ on random images
    kernel: Tensor                     # the impulse response K, (C_out, C, H, W)

    @property
    def is_linear(self) -> bool:
        return self.linearity_error < self.tolerance

    @property
    def is_equivariant(self) -> bool:
        return self.equivariance_error < self.tolerance

    @property
    def is_convolution(self) -> bool:
        return self.reconstruction_error < self.tolerance

    def verdict(self) -> str:
        if self.is_convolution:
            return "a circular convolution"
        if not self.is_linear:
            return "not linear"
        if self.is_equivariant:                   # the theorem holds; only rounding is large
            return "linear and shift-equivariant, but K ⊛ x misses f(x) by more than the tolerance"
        return "linear, not shift-equivariant: not a convolution"


def check_convolution_theorem(linear_map: Callable[[Tensor], Tensor], shape, dtype=torch.float64,
                              *, seed: int = 0, trials: int = 3) -> TheoremReport:
    """Check linearity, circular shift-equivariance and ``f(x) = K ⊛ x`` for a black box.

    Args:
        linear_map: a function or ``nn.Module`` from ``N×C×H×W`` to ``N×C'×H×W`` tensors
            (an ``nn.Module`` is used as it is: put it in ``eval()`` and in ``dtype``).
        shape: one input image ``(C, H, W)``. dtype: float64 (tolerance 1e-10) or float32 (1e-5).
        seed: seeds the random test images and shifts. trials: random images (and shifts).

    Returns:
        a :class:`TheoremReport`; ``report.is_convolution`` is the theorem's conclusion.
    """
    shape = _check_args(linear_map, shape, dtype)
    if trials < 1:
        raise ShiftlabError(f"trials must be at least 1, got {trials}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(trials, *shape, generator=g).to(dtype)
    y = torch.randn(trials, *shape, generator=g).to(dtype)
    h, w = shape[1:]
    shifts = [(int(torch.randint(-h + 1, h, (1,), generator=g)), int(torch.randint(-w + 1, w, (1,), generator=g)))
              for _ in range(trials)] + [(1, 0), (0, 1)]
    kernel = impulse_response(linear_map, shape, dtype)
    return TheoremReport(
        shape=shape, dtype=str(dtype).replace("torch.", ""), tolerance=TOLERANCE[dtype],
        linearity_error=linearity_error(linear_map, x, y),
        equivariance_error=equivariance_error(linear_map, x, shifts),
        reconstruction_error=relative_error(circular_convolve(x, kernel), _apply(linear_map, x, shape)),
        kernel=kernel)


# ----------------------------------------------------------------------------- example maps
def position_dependent_filter(x: Tensor) -> Tensor:
    """A linear filter whose weights depend on the position: a 3-tap horizontal blur
    multiplied by a gain that grows from left to right (a 'vignette'). Linear, not
    shift-equivariant."""
    blurred = (torch.roll(x, 1, -1) + x + torch.roll(x, -1, -1)) / 3
    gain = torch.linspace(0.2, 1.0, x.shape[-1], dtype=x.dtype)
    return blurred * gain


def dense_image_map(shape, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """A dense (fully connected) linear layer from ``C×H×W`` images to ``C×H×W`` images,
    without bias, with seeded random weights."""
    c, h, w = shape
    torch.manual_seed(seed)
    return dense_layer(shape, c * h * w, unflatten=(c, h, w), bias=False).to(dtype).eval()


def _example_maps(shape, seed: int, dtype) -> dict[str, Callable[[Tensor], Tensor]]:
    c = shape[0]
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, 2, 5, padding=2, padding_mode="circular", bias=False).to(dtype).eval()
    zero_pad = nn.Conv2d(c, 2, 5, padding=2, bias=False).to(dtype).eval()
    zero_pad.weight.data.copy_(conv.weight.data)
    return {
        "circular conv 5x5 (nn.Conv2d)": conv,
        "Fourier shift by (0.5, 1.5) px": lambda x: _fourier_shift(x, (0.5, 1.5)),
        "same conv, zero padding": zero_pad,
        "position-dependent filter": position_dependent_filter,
        "dense layer": dense_image_map(shape, seed, dtype),
        "conv + ReLU (not linear)": lambda x: torch.relu(conv(x)),
    }


def _fourier_shift(x: Tensor, shift) -> Tensor:
    from ..actions import fractional_shift
    return fractional_shift(x, shift)


# ----------------------------------------------------------------------------- experiment
CONV, FOURIER, DENSE, POSITION = ("circular conv 5x5 (nn.Conv2d)", "Fourier shift by (0.5, 1.5) px",
                                  "dense layer", "position-dependent filter")
SHOWN = (CONV, POSITION, DENSE)             # the maps the first figure shows


def compute(*, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Check the theorem on six maps (two convolutions, a sub-pixel Fourier shift, a
    zero-padded conv, a position-dependent filter, a dense layer and a non-linear one),
    and keep one image's output, impulse response and rebuild for three of them."""
    from ..data import synthetic_images

    size = 12 if quick else 24
    shape, dtype = (1, size, size), torch.float64
    maps = _example_maps(shape, seed, dtype)
    reports = {}
    for name, fn in maps.items():
        reports[name] = r = check_convolution_theorem(fn, shape, dtype, seed=seed)
        log(f"{name}: linearity {r.linearity_error:.1e}, equivariance {r.equivariance_error:.1e}, "
            f"reconstruction {r.reconstruction_error:.1e} -> {r.verdict()}")
    x = synthetic_images(1, shape, seed=seed).to(dtype)       # a smooth image reads better than noise
    example = {"input": x[0, 0].tolist()}
    for name in SHOWN:
        output = _apply(maps[name], x, shape)[0, 0]
        rebuilt = circular_convolve(x, reports[name].kernel)[0, 0]
        example[name] = {"output": output.tolist(), "rebuilt": rebuilt.tolist(),
                         "error": (output - rebuilt).abs().tolist(),
                         "kernel": torch.fft.fftshift(reports[name].kernel[0, 0]).tolist()}
    return {"settings": {"seed": seed, "quick": quick, "shape": list(shape), "dtype": "float64",
                         "tolerance": TOLERANCE[dtype], "trials": 3},
            "maps": {name: {"linearity_error": r.linearity_error, "equivariance_error": r.equivariance_error,
                            "reconstruction_error": r.reconstruction_error, "is_linear": r.is_linear,
                            "is_equivariant": r.is_equivariant, "is_convolution": r.is_convolution,
                            "verdict": r.verdict()} for name, r in reports.items()},
            "example": example}


def draw(data: dict, out: str | Path) -> list[Path]:
    """Output, impulse response and rebuild of three maps; the three errors of every map."""
    from ..viz import new_figure, save_figure
    maps, example = data["maps"], data["example"]
    shown = [name for name in SHOWN if name in example]
    top = max(float(np.max(example[n]["error"])) for n in shown)     # one error scale
    fig, axes = new_figure(5, len(shown), size=(2.2, 2.2))
    for row, name in zip(axes, shown):
        e = example[name]
        panels = [(example["input"], "input x", {}), (e["output"], f"f(x): {name}", {}),
                  (e["kernel"], "impulse response K (centred)", {}), (e["rebuilt"], "K ⊛ x", {}),
                  (e["error"], f"|f(x) − K ⊛ x|, rel. {maps[name]['reconstruction_error']:.0e}",
                   {"cmap": "magma", "vmin": 0.0, "vmax": top})]
        for ax, (img, title, style) in zip(row, panels):
            ax.imshow(np.array(img), **({"cmap": "gray"} | style))
            ax.set_title(title, fontsize=7)
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    paths = save_figure(fig, Path(out), "convolution-theorem-maps")

    fig, ax = new_figure(1, 1, size=(7.5, 3.4))
    floor = 1e-17
    labels = list(maps)
    for k, (key, label) in enumerate([("linearity_error", "linearity"), ("equivariance_error", "shift equivariance"),
                                      ("reconstruction_error", "f(x) vs K ⊛ x")]):
        values = [max(maps[n][key], floor) for n in labels]
        ax.bar([i + (k - 1) * 0.27 for i in range(len(labels))], values, width=0.27, label=label)
    ax.set_yscale("log")
    ax.axhline(data["settings"]["tolerance"], color="k", ls="--", lw=0.8, label="tolerance (float64)")
    ax.set_xticks(range(len(labels)), [textwrap.fill(n, 16) for n in labels], fontsize=7)
    ax.set_ylabel("relative L2 error (0 drawn at 1e-17)")
    ax.legend(fontsize=7, ncol=4, loc="lower left", bbox_to_anchor=(0.0, 1.0))
    paths += save_figure(fig, Path(out), "convolution-theorem-errors")
    return [p for p in paths if p.suffix == ".png"]


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    m = data["maps"]
    conv, dense, pos = m[CONV], m[DENSE], m[POSITION]
    return {
        "a circular conv (nn.Conv2d) equals circular convolution with its impulse response "
        "(error < 1e-10 in float64)": conv["reconstruction_error"] < 1e-10,
        "a sub-pixel Fourier shift is linear and equivariant, hence also a convolution":
            m[FOURIER]["is_convolution"],
        "a dense layer is linear but not shift-equivariant, and no impulse response reproduces it "
        "(error > 0.1)": dense["is_linear"] and not dense["is_equivariant"] and dense["reconstruction_error"] > 0.1,
        "a position-dependent filter is linear but fails the same way (error > 0.1)":
            pos["is_linear"] and not pos["is_equivariant"] and pos["reconstruction_error"] > 0.1,
    }


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    errors = ("linearity_error", "equivariance_error", "reconstruction_error")
    return ExperimentResult(
        name="convolution-theorem",
        title="A linear map that commutes with shifts is a convolution",
        summary=("Each map is treated as a black box: we test linearity and circular shift-equivariance, "
                 "record its response to a single impulse, and rebuild its output as the circular "
                 "convolution of the input with that impulse response. For linear, shift-equivariant maps "
                 "the rebuild is exact to float64 rounding, so one small kernel describes the whole map; "
                 "a dense layer, a position-dependent filter or a zero-padded conv (at its borders) are "
                 "linear but not equivariant, and no kernel reproduces them."),
        columns=["map", "linearity err", "equivariance err", "reconstruction err", "verdict"],
        rows=[[name, *(m[k] for k in errors), m["verdict"]] for name, m in data["maps"].items()],
        claims=claims(data), figures=[p.name for p in figures],
        numbers={name: {k: m[k] for k in errors} for name, m in data["maps"].items()},
        settings=data["settings"])


def run(out: Path, *, seed: int = 0, quick: bool = False, log=print) -> ExperimentResult:
    """Compute, save the data, draw, and state the claims."""
    data = compute(seed=seed, quick=quick, log=log)
    save_data(data, out, "convolution-theorem")
    return summarise(data, draw(data, out))
