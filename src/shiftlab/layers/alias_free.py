"""Alias-free layers (Michaeli, Michaeli & Soudry, "Alias-Free Convnets: Fractional Shift
Invariance via Polynomial Activations", CVPR 2023; code: github.com/hmichaeli/alias_free_convnets,
``models/ideal_lpf.py`` and ``models/activation.py``), for signals ``N×C×T`` and images
``N×C×H×W`` alike.

A map of ``n`` samples along an axis is read as the samples of its periodic band-limited
interpolant (its DFT ``X[k]``, ``k ∈ (−n/2, n/2]``). Two layers keep every map inside that
picture, so a circular net built from them is equivariant to *every* real (sub-pixel)
circular shift, not only to multiples of its stride:

* **Ideal downsampling** (:func:`ideal_downsample`): an ideal low-pass filter with its
  cut-off at the new Nyquist frequency, then every ``s``-th sample. Bin ``k`` is kept iff
  ``2·s·|k| < n``; for ``s | n`` (``m = n/s`` samples out) that is ``2|k| < m``, so the
  new Nyquist bin ``|k| = m/2`` of an even ``m`` is **zeroed** (the paper's code,
  ``create_lpf_rect``: "if N is divisible by 4, nyquist freq should be 0"):

  .. math::  y[t] = \\frac{1}{n} \\sum_{2 s |k| < n} X[k]\\, e^{2πi k s t / n}, \\quad t < \\lceil n/s \\rceil.

* **Alias-free activation** (:class:`AliasFreeActivation`): upsample ×2 by zero-padding
  the spectrum (:func:`fourier_upsample`), apply the nonlinearity ``σ`` point-wise on the
  fine grid, ideal low-pass to the original band, keep every second sample (the paper's
  ``UpPolyActPerChannel``): ``y = D_2 L σ(U_2 x)``.

**Which nonlinearity.** With ``σ`` a polynomial of degree 2 (:class:`PolyAct`, the paper's
activation, ``c0 + c1·x + c2·x²`` with learnable coefficients, initialised to the code's
``(0.0169394634313126, 0.5, 0.3078363963999393)``) the layer is *exactly* alias-free:
squaring at most doubles the band, which the ×2 grid holds, so the low band is computed
without folding. Any other ``σ`` (ReLU, GELU) has an unbounded spectrum and is only
approximately alias-free on the ×2 grid (the StyleGAN3 recipe the paper improves on) —
though exact for shifts by whole samples of that grid (half pixels), which ``σ`` commutes
with, so half-pixel tests alone cannot tell the two apart; quarter pixels can.
:class:`AliasFreeActivation` takes either, and :func:`shiftlab.convert.convert` uses the
polynomial by default (exact, needs training) or keeps the model's own ``σ`` on request.

**The Nyquist bin** (even ``n``) is where a fractional shift stops being a shift: the
samples of ``cos(π(t − f))`` are ``(−1)^t cos(πf)``, whose interpolant is ``cos(πf)·cos(πt)``
— the sine part is invisible on the grid, so :func:`~shiftlab.actions.fractional_shift`
scales bin ``n/2`` by ``cos(πf)`` instead of rotating it. The paper's upsampling splits that
bin half and half between ``±n/2`` (``create_recon_rect``: 0.5); a nonlinearity then
multiplies the two halves into a DC term ``|X[n/2]|²/2`` that the shift changes to
``cos²(πf)·|X[n/2]|²/2``, so the output is not the shifted output. Here
``nyquist="zero"`` (the default) drops that bin before the nonlinearity, which makes the
layer exactly equivariant to :func:`fractional_shift` for every input;
``nyquist="split"`` is the paper's. They agree whenever the input has no Nyquist content —
always in the paper's nets, where every activation follows an ideal downsampling (which
zeroes it), but not where an activation follows a convolution of the raw image.

**How the DFT is computed.** Each operator is separable and real: along an axis of ``n``
samples, ``y = A x`` with ``A[t, j] = (1/n) Σ_{|k| ≤ K} cos(2πk (p_t − j)/n)`` (output
positions ``p_t``: ``s·t`` to downsample, ``t/2`` to upsample), the periodic Dirichlet
kernel in closed form (:func:`band_operator`), from exact integer phases; one matrix
product per axis. That is the FFT → mask → inverse FFT of the paper (a test checks it
against ``torch.fft``), without complex tensors, so it exports to ONNX with dynamic sizes.

Convention: functions take the rank from the input; modules take ``dims=1 | 2``
(default 2) and refuse the other rank with one line. An input without spatial axes
(``N×C``, after global pooling) passes :class:`AliasFreeActivation` point-wise.
Exact equivariance needs ``s`` to divide every side; otherwise the output has the
``ceil(n/s)`` samples of a strided op and the shift law holds only approximately.

>>> x = torch.tensor([[[1., 0., 0., 0.]]])              # an impulse, n = 4
>>> ideal_downsample(x, 2)                               # keeps k = 0 only: the mean
tensor([[[0.2500, 0.2500]]])
>>> fourier_upsample(torch.tensor([[[0., 1., 0.]]]))[0, 0, ::2].round(decimals=6) + 0
tensor([0., 1., 0.])
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ShiftlabError
from ..shapes import check_dims, check_maps
from .blurpool import check_stride
from .padding import int_mod

NYQUIST_MODES = ("zero", "split")
#: the paper code's initial coefficients of ``c0 + c1·x + c2·x²`` (``PolyActPerChannel``)
PAPER_COEFFICIENTS = (0.0169394634313126, 0.5, 0.3078363963999393)


def check_nyquist(mode: str) -> str:
    if mode not in NYQUIST_MODES:
        raise ShiftlabError(f"unknown nyquist mode {mode!r}; choose one of {', '.join(NYQUIST_MODES)}")
    return mode


def check_up(up) -> int:
    if isinstance(up, bool) or not isinstance(up, int) or up < 2:
        raise ShiftlabError(f"the upsampling factor must be an integer of 2 or more, got {up!r}")
    return up


def band_operator(n, count, num: int, den: int, top, nyquist_weight=None, *, dtype, device) -> Tensor:
    r"""The ``count × n`` real matrix that evaluates the band-limited interpolant of ``n``
    samples at the positions ``p_t = t·num/den``, keeping the bins ``|k| ≤ top``:

    .. math::  A[t, j] = D(p_t − j), \qquad D(τ) = \frac{1}{n} \sum_{|k| ≤ K} e^{2πikτ/n}
               = \frac{\sin((2K+1)πτ/n)}{n \sin(πτ/n)}  \;(D(0) = (2K+1)/n),

    the periodic Dirichlet kernel (``K = top``). ``nyquist_weight`` (a 0-d tensor, 1 for
    even ``n``, 0 for odd) adds the bin ``n/2`` split half and half between ``±n/2``,
    ``cos(πτ)/n``. The phases ``τ·den = t·num − j·den`` are integers, reduced exactly
    (modulo ``n·den``, to ``|πτ/n| ≤ π/2``) before any sine, so no precision is lost on
    large maps.
    """
    period = n * den                                        # D has period n in τ
    r = torch.arange(count, device=device)[:, None] * num - torch.arange(n, device=device)[None, :] * den
    r = int_mod(r, period)
    r = torch.where(2 * r > period, r - period, r)         # centred: πτ/n in (−π/2, π/2]
    width = 2 * top + 1
    near = torch.sin(int_mod(r * width, 2 * period).to(dtype) * math.pi / period)
    far = torch.sin(r.to(dtype) * math.pi / period)
    kernel = torch.where(r == 0, torch.ones((), dtype=dtype, device=device) * width,
                         near / torch.where(r == 0, 1.0, far)) / n
    if nyquist_weight is not None:                          # cos(πτ) = cos(π·(τ·den mod 2den)/den)
        kernel = kernel + nyquist_weight.to(dtype) * torch.cos(int_mod(r, 2 * den).to(dtype) * math.pi / den) / n
    return kernel


def _along_axes(x: Tensor, make) -> Tensor:
    """Apply ``make(n) → (P × n)`` along every spatial axis of ``x``."""
    if x.ndim == 4:                                         # (N, C, H, W): rows, then columns
        return make(x.shape[2]) @ x @ make(x.shape[3]).transpose(0, 1)
    return x @ make(x.shape[2]).transpose(0, 1)             # (N, C, T)


def ideal_downsample(x: Tensor, stride: int = 2) -> Tensor:
    """Ideal low-pass (keep ``2·s·|k| < n``, new Nyquist bin zeroed), then every ``stride``-th sample.

    Shape: ``(N, C, T) → (N, C, ceil(T/s))``; ``(N, C, H, W) → (N, C, ceil(H/s), ceil(W/s))``.
    With ``stride=1`` it only zeroes the Nyquist bin of even sides.
    """
    check_maps(x, who="ideal_downsample")
    check_stride(stride)

    def make(n):
        return band_operator(n, (n + stride - 1) // stride, stride, 1, (n - 1) // (2 * stride),
                             dtype=x.dtype, device=x.device)
    return _along_axes(x, make)


def fourier_upsample(x: Tensor, up: int = 2, nyquist: str = "zero") -> Tensor:
    """Band-limited interpolation at ``up`` times the rate (zero-padding the spectrum).

    Shape: ``(N, C, T) → (N, C, up·T)``; ``(N, C, H, W) → (N, C, up·H, up·W)``. Samples at
    multiples of ``up`` reproduce ``x`` when nothing is dropped (odd sides, or
    ``nyquist="split"``); ``nyquist="zero"`` first removes the Nyquist bin of even sides.
    """
    check_maps(x, who="fourier_upsample")
    check_up(up)
    split = check_nyquist(nyquist) == "split"

    def make(n):
        half = torch.remainder(torch.full((), 1, device=x.device) + n, 2) if split else None
        return band_operator(n, up * n, 1, up, (n - 1) // 2, half, dtype=x.dtype, device=x.device)
    return _along_axes(x, make)


def alias_free_activation(x: Tensor, fn, up: int = 2, nyquist: str = "zero") -> Tensor:
    """``D_up L fn(U_up x)``: upsample, ``fn`` point-wise, ideal low-pass to the input's band
    (its Nyquist bin zeroed), keep every ``up``-th sample. Same shape as ``x``; an ``N×C``
    input (no spatial axes) gets ``fn(x)``."""
    if isinstance(x, Tensor) and x.ndim == 2:
        return fn(x)
    return ideal_downsample(fn(fourier_upsample(x, up, nyquist)), up)


class IdealDownsample(nn.Module):
    """Module twin of :func:`ideal_downsample` (the paper's ideal ``BlurPool`` /
    ``LPF_RFFT`` then ``[::s]``); ``dims`` as in :class:`~shiftlab.layers.BlurPool`."""

    def __init__(self, stride: int = 2, *, dims: int = 2):
        super().__init__()
        self.stride = check_stride(stride)
        self.dims = check_dims(dims)

    def forward(self, x: Tensor) -> Tensor:
        check_maps(x, dims=self.dims, who="IdealDownsample")
        return ideal_downsample(x, self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, dims={self.dims}"


class PolyAct(nn.Module):
    """The paper's polynomial activation ``c0 + c1·x + c2·x²``, coefficients learnable.

    Args:
        channels: ``None`` for one set of coefficients shared by all channels (the code's
            ``PolyAct``), or the channel count for one set per channel (``PolyActPerChannel``,
            the one the alias-free ConvNeXt uses).
        coefficients: ``(c0, c1, c2)``; default :data:`PAPER_COEFFICIENTS`.
    """

    def __init__(self, channels: int | None = None, coefficients=PAPER_COEFFICIENTS, *,
                 device=None, dtype=None):
        super().__init__()
        coefficients = tuple(float(c) for c in coefficients)
        if len(coefficients) != 3 or not all(math.isfinite(c) for c in coefficients):
            raise ShiftlabError(f"PolyAct needs 3 finite coefficients (c0, c1, c2), got {coefficients}")
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)
                                     or channels < 1):
            raise ShiftlabError(f"channels must be a positive integer or None, got {channels!r}")
        self.channels = channels
        coef = torch.tensor(coefficients, device=device, dtype=dtype or torch.get_default_dtype())
        self.coef = nn.Parameter(coef if channels is None else coef.repeat(channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.channels is None:
            c0, c1, c2 = self.coef
        else:
            if x.ndim < 2 or x.shape[1] != self.channels:
                raise ShiftlabError(f"PolyAct was built for {self.channels} channels, got shape "
                                    f"{tuple(x.shape)}")
            view = (self.channels,) + (1,) * (x.ndim - 2)
            c0, c1, c2 = (self.coef[:, i].reshape(view) for i in range(3))
        return torch.addcmul(c0, x, torch.addcmul(c1, c2, x))          # c0 + x·(c1 + c2·x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class AliasFreeActivation(nn.Module):
    """Module twin of :func:`alias_free_activation`: ``σ`` on the ×``up`` grid.

    Args:
        nonlinearity: a point-wise module (:class:`PolyAct` for exact alias-freeness; any
            element-wise activation for the approximate form). Default ``PolyAct()``.
        up: the upsampling factor (2, the paper's; a degree-``d`` polynomial needs ``d``).
        nyquist: ``"zero"`` (exact under :func:`~shiftlab.actions.fractional_shift`) or
            ``"split"`` (the paper's upsampling); see the module doc.
        dims: 2 for ``N×C×H×W`` (default), 1 for ``N×C×T``; ``N×C`` inputs pass point-wise.
    """

    def __init__(self, nonlinearity: nn.Module | None = None, up: int = 2, nyquist: str = "zero",
                 *, dims: int = 2):
        super().__init__()
        self.nonlinearity = PolyAct() if nonlinearity is None else nonlinearity
        self.up = check_up(up)
        self.nyquist = check_nyquist(nyquist)
        self.dims = check_dims(dims)

    def forward(self, x: Tensor) -> Tensor:
        if not (isinstance(x, Tensor) and x.ndim == 2):
            check_maps(x, dims=self.dims, who="AliasFreeActivation")
        return alias_free_activation(x, self.nonlinearity, self.up, self.nyquist)

    def extra_repr(self) -> str:
        return f"up={self.up}, nyquist={self.nyquist!r}, dims={self.dims}"
