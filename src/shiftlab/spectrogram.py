"""Spectrograms in plain torch: a linear, a mel and a log-frequency axis.

Every kind starts from one short-time Fourier transform (``torch.stft``, a periodic Hann
window of ``n_fft`` samples, hop ``H``, frames centred on ``t·H`` with zero padding at the
ends), so frame ``t`` covers samples ``[t·H − n_fft/2, t·H + n_fft/2)``:

- ``"linear"``: ``|X[f, t]|`` on the FFT's own axis, bins ``k·rate/n_fft``, ``k = 0 … n_fft/2``.
- ``"mel"``: triangular filters on the power ``|X|²`` with centres equally spaced on the
  HTK mel scale ``m(f) = 2595·log10(1 + f/700)`` (Young et al., *The HTK Book*; O'Shaughnessy
  1987), then the square root.
- ``"log"``: the same triangles with centres spaced geometrically, ``f_k = f_min·2^(k/b)``
  (``b`` bins per octave, as in a constant-Q transform, Brown 1991). Multiplying every
  frequency by ``2^(j/b)`` (a change of pitch, or of playback speed) moves such a
  spectrum by exactly ``j`` bins: on this axis a pitch change is a translation. On the
  linear axis it is a *scaling* ``f → r·f``, which no translation reproduces.

Convention: a triangle's sides reach its neighbours' centres, except that a side narrower
than one FFT bin (``rate/n_fft`` Hz) is widened to one bin, so low, narrow filters become
linear interpolation of the FFT power and no filter is empty.

Time: a delay of the waveform by ``j·H`` samples moves every frame that does not touch the
signal's end by exactly ``j`` frames, whatever the kind (a test checks it); other delays
are not translations of the frames.

Amplitude (``scale``): ``"magnitude"`` or ``"log"``, ``log(1 + A/ref)``, which keeps digital
silence at exactly 0 (what a canvas shift fills in).

Shape: ``(N, T)`` or ``(N, 1, T)`` waveforms → ``(N, 1, F, frames)`` with
``frames = 1 + T // H``.

>>> import torch
>>> rate, n_fft = 8000, 512
>>> t = torch.arange(4096) / rate
>>> tone = lambda f: torch.sin(2 * torch.pi * f * t)[None]
>>> axis = log_frequencies(110.0, 12, 36)
>>> low = spectrogram(tone(float(axis[20])), rate, kind="log", n_fft=n_fft, f_min=110.0, n_bins=36)
>>> high = spectrogram(tone(float(axis[27])), rate, kind="log", n_fft=n_fft, f_min=110.0, n_bins=36)
>>> int(low[0, 0, :, 4].argmax()), int(high[0, 0, :, 4].argmax())
(20, 27)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import ShiftlabError

__all__ = ["KINDS", "SCALES", "hz_to_mel", "mel_to_hz", "mel_frequencies", "log_frequencies",
           "triangular_filterbank", "mel_filterbank", "log_filterbank", "stft_magnitude",
           "spectrogram", "Spectrogram", "frequency_axis", "check_waveforms"]

KINDS = ("linear", "mel", "log")
SCALES = ("magnitude", "log")


# ----------------------------------------------------------------------------- frequency axes
def hz_to_mel(f):
    """HTK mel scale: ``m = 2595·log10(1 + f/700)`` (1000 Hz ↦ ≈ 1000 mel).

    >>> round(float(hz_to_mel(1000.0)), 2)
    999.99
    """
    f = torch.as_tensor(f, dtype=torch.float64)
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m):
    """Inverse of :func:`hz_to_mel`: ``f = 700·(10^(m/2595) − 1)``."""
    m = torch.as_tensor(m, dtype=torch.float64)
    return 700.0 * (torch.pow(10.0, m / 2595.0) - 1.0)


def mel_frequencies(n_mels: int, f_min: float, f_max: float) -> Tensor:
    """``n_mels + 2`` frequencies (Hz) equally spaced in mel from ``f_min`` to ``f_max``:
    the edges, and the ``n_mels`` filter centres between them."""
    return mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                    dtype=torch.float64))


def log_frequencies(f_min: float, bins_per_octave: int, n_bins: int) -> Tensor:
    """The ``n_bins`` centres ``f_min·2^(k/b)``, ``k = 0 … n_bins − 1`` (float64, Hz)."""
    k = torch.arange(n_bins, dtype=torch.float64)
    return f_min * torch.pow(2.0, k / bins_per_octave)


def triangular_filterbank(points: Tensor, n_fft: int, rate: float) -> Tensor:
    """Triangles on the FFT bins: filter ``k`` is 1 at ``points[k + 1]`` and falls linearly
    to 0 at ``points[k]`` and ``points[k + 2]`` (each side at least one FFT bin wide).

    Returns ``(len(points) − 2, n_fft // 2 + 1)`` float64 weights. Where every side is
    wider than one bin, the columns between the first and last centres sum to 1.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * rate / n_fft     # (n_freq,)
    bin_width = rate / n_fft
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rise = (freqs - (centre - (centre - lower).clamp_min(bin_width))) / (centre - lower).clamp_min(bin_width)
    fall = ((centre + (upper - centre).clamp_min(bin_width)) - freqs) / (upper - centre).clamp_min(bin_width)
    return torch.minimum(rise, fall).clamp(0.0, 1.0)                              # (F, n_freq)


def _check_band(f_min: float, f_max: float, rate: float) -> None:
    if not (0 <= f_min < f_max <= rate / 2):
        raise ShiftlabError(f"need 0 <= f_min < f_max <= rate/2 = {rate / 2:g} Hz, got "
                            f"f_min {f_min:g}, f_max {f_max:g}")


def mel_filterbank(n_mels: int, n_fft: int, rate: float, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """``(n_mels, n_fft//2 + 1)`` triangular mel filters (HTK mel scale, peak 1)."""
    f_max = rate / 2 if f_max is None else f_max
    _check_band(f_min, f_max, rate)
    if n_mels < 1:
        raise ShiftlabError(f"n_bins (mel filters) must be at least 1, got {n_mels}")
    return triangular_filterbank(mel_frequencies(n_mels, f_min, f_max), n_fft, rate)


def log_filterbank(n_bins: int, n_fft: int, rate: float, f_min: float,
                   bins_per_octave: int) -> Tensor:
    """``(n_bins, n_fft//2 + 1)`` triangles centred on ``f_min·2^(k/b)`` (peak 1)."""
    if n_bins < 1 or bins_per_octave < 1:
        raise ShiftlabError(f"n_bins and bins_per_octave must be at least 1, got {n_bins} "
                            f"and {bins_per_octave}")
    if f_min <= 0:
        raise ShiftlabError(f"a log-frequency axis needs f_min > 0 Hz, got {f_min:g}")
    points = log_frequencies(f_min, bins_per_octave, n_bins + 2) / 2.0 ** (1 / bins_per_octave)
    if float(points[-2]) > rate / 2:
        raise ShiftlabError(f"{n_bins} bins of {bins_per_octave} per octave from {f_min:g} Hz reach "
                            f"{float(points[-2]):.0f} Hz, above rate/2 = {rate / 2:g} Hz; "
                            "use fewer bins or a higher f_min")
    return triangular_filterbank(points, n_fft, rate)


def frequency_axis(kind: str, *, rate: float, n_fft: int, n_bins: int | None = None,
                   f_min: float | None = None, f_max: float | None = None,
                   bins_per_octave: int = 12) -> Tensor:
    """The centre frequency (Hz) of each output row of :func:`spectrogram` with these settings."""
    kind = _check_kind(kind)
    if kind == "linear":
        return torch.arange(n_fft // 2 + 1, dtype=torch.float64) * rate / n_fft
    f_min, n_bins, f_max = _defaults(kind, rate, n_bins, f_min, f_max, bins_per_octave)
    if kind == "mel":
        return mel_frequencies(n_bins, f_min, f_max)[1:-1]
    return log_frequencies(f_min, bins_per_octave, n_bins)


# ----------------------------------------------------------------------------- STFT
def check_waveforms(x: Tensor, n_fft: int | None = None) -> Tensor:
    """``x`` as ``(N, T)`` floating point, checked: at least one waveform, finite, and at
    least ``n_fft`` samples."""
    if not isinstance(x, Tensor):
        raise ShiftlabError(f"waveforms must be a torch tensor, got {type(x).__name__}")
    given = tuple(x.shape)
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2:
        raise ShiftlabError(f"waveforms must be (N, T) or (N, 1, T), got shape {given}")
    if len(x) == 0:                                  # torch.stft's FFT fails on no signal
        raise ShiftlabError(f"no waveforms to transform (shape {given}); give at least one")
    if not x.is_floating_point():
        raise ShiftlabError(f"waveforms must be floating point, got {x.dtype}; divide int16 by 32768")
    if not bool(torch.isfinite(x).all()):
        raise ShiftlabError("the audio holds NaN or infinite samples; clean or drop those recordings")
    if n_fft is not None and x.shape[-1] < n_fft:
        raise ShiftlabError(f"a signal of {x.shape[-1]} samples is shorter than the {n_fft}-sample "
                            "STFT window; give longer signals or a smaller n_fft")
    return x


def _check_fft(n_fft: int, hop: int) -> None:
    if not (isinstance(n_fft, int) and n_fft >= 2 and isinstance(hop, int) and 1 <= hop <= n_fft):
        raise ShiftlabError(f"need an integer n_fft >= 2 and a hop in [1, n_fft], got n_fft {n_fft!r}, "
                            f"hop {hop!r}")


def stft_magnitude(x: Tensor, n_fft: int, hop: int) -> Tensor:
    """``|STFT|``: ``(N, T)`` → ``(N, n_fft//2 + 1, 1 + T//hop)`` (periodic Hann window,
    centred frames, zero padding at both ends)."""
    _check_fft(n_fft, hop)
    x = check_waveforms(x, n_fft)
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=hop, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    return spec.abs()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ShiftlabError(f"unknown spectrogram kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def _defaults(kind, rate, n_bins, f_min, f_max, bins_per_octave):
    """Fill in the axis settings a kind leaves open: mel 0 Hz … rate/2 in 40 bins; log from
    55 Hz up to ``f_max`` (default rate/2) in whole bins."""
    if kind == "mel":
        return (0.0 if f_min is None else f_min), (40 if n_bins is None else n_bins), \
            (rate / 2 if f_max is None else f_max)
    f_min = 55.0 if f_min is None else f_min
    if n_bins is None:
        top = rate / 2 if f_max is None else f_max
        if f_min <= 0 or top <= f_min:
            raise ShiftlabError(f"a log-frequency axis needs 0 < f_min < f_max, got {f_min:g}, {top:g}")
        n_bins = int(math.floor(bins_per_octave * math.log2(top / f_min) + 1e-9))  # top bin's side fits
    return f_min, n_bins, None


def spectrogram(x: Tensor, rate: float, *, kind: str = "mel", n_fft: int = 256, hop: int = 64,
                n_bins: int | None = None, f_min: float | None = None, f_max: float | None = None,
                bins_per_octave: int = 12, scale: str = "log", ref: float = 0.01) -> Tensor:
    """Spectrogram of a batch of waveforms: ``(N, T)`` or ``(N, 1, T)`` → ``(N, 1, F, frames)``.

    Args:
        rate: sample rate in Hz.
        kind: ``"linear"`` (F = n_fft/2 + 1), ``"mel"`` (F = ``n_bins``, default 40, from
            ``f_min`` 0 to ``f_max`` rate/2) or ``"log"`` (``bins_per_octave`` per octave
            from ``f_min``, default 55 Hz; ``n_bins`` default: as many as fit below ``f_max``).
        n_fft, hop: window length and hop, in samples.
        scale: ``"magnitude"`` or ``"log"`` = ``log(1 + A/ref)``.
    """
    kind = _check_kind(kind)
    if scale not in SCALES:
        raise ShiftlabError(f"unknown spectrogram scale {scale!r}; choose one of {', '.join(SCALES)}")
    if not (isinstance(rate, (int, float)) and rate > 0 and math.isfinite(rate)):
        raise ShiftlabError(f"the sample rate must be a positive number of Hz, got {rate!r}")
    if scale == "log" and not ref > 0:
        raise ShiftlabError(f"ref must be positive for a log scale, got {ref!r}")
    mag = stft_magnitude(x, n_fft, hop)                                  # (N, n_freq, frames)
    if kind != "linear":
        f_min, n_bins, f_max = _defaults(kind, rate, n_bins, f_min, f_max, bins_per_octave)
        bank = (mel_filterbank(n_bins, n_fft, rate, f_min, f_max) if kind == "mel"
                else log_filterbank(n_bins, n_fft, rate, f_min, bins_per_octave))
        power = torch.matmul(bank.to(mag.dtype).to(mag.device), mag.square())  # (N, F, frames)
        mag = power.clamp_min(0).sqrt()
    if scale == "log":
        mag = torch.log1p(mag / ref)
    return mag[:, None]


class Spectrogram(nn.Module):
    """:func:`spectrogram` as a module: stores the settings, maps ``(N, 1, T)`` → ``(N, 1, F, frames)``."""

    def __init__(self, rate: float, kind: str = "mel", n_fft: int = 256, hop: int = 64,
                 n_bins: int | None = None, f_min: float | None = None, f_max: float | None = None,
                 bins_per_octave: int = 12, scale: str = "log", ref: float = 0.01):
        super().__init__()
        _check_kind(kind)
        _check_fft(n_fft, hop)
        self.settings = dict(rate=rate, kind=kind, n_fft=n_fft, hop=hop, n_bins=n_bins, f_min=f_min,
                             f_max=f_max, bins_per_octave=bins_per_octave, scale=scale, ref=ref)

    def forward(self, x: Tensor) -> Tensor:
        s = dict(self.settings)
        return spectrogram(x, s.pop("rate"), **s)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if v is not None)
