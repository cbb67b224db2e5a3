"""Waveform helpers in plain numpy/torch: read a WAV file, resample, trim and centre.

Resampling is band-limited interpolation (Smith & Gossett 1984): output sample ``m`` sits
at source time ``t_m = m·src/dst`` and is

.. math::  y[m] = \\sum_n x[n]\\, c\\,\\mathrm{sinc}(c\\,(t_m - n))\\, w\\big((t_m - n)/L\\big),

with ``c = rolloff·min(1, dst/src)`` the cut-off (as a fraction of the source's Nyquist
frequency, so downsampling does not alias), ``w`` a Kaiser window (β = 8.6) and ``L`` the
half-length in source samples (``zeros`` zero crossings of the sinc). Samples outside
``x`` are 0. Resampling a recording by ``1/r`` and playing it at the old rate multiplies
every frequency by ``r``: :func:`pitch_shift` does that in semitones.

>>> import torch
>>> x = torch.sin(2 * torch.pi * 440 * torch.arange(8000) / 8000)[None]
>>> y = resample(x, 8000, 16000)
>>> y.shape, bool((y[0, ::2] - x[0]).abs()[200:-200].max() < 1e-3)
(torch.Size([1, 16000]), True)
"""
from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError

__all__ = ["read_wav", "resample", "pitch_shift", "fit_length"]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file → (float32 samples in [-1, 1), one channel; sample rate)."""
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (OSError, EOFError, wave.Error) as err:
        raise ShiftlabError(f"{path}: not a readable WAV file ({type(err).__name__}: {err})") from None
    if width != 2:
        raise ShiftlabError(f"{path}: {8 * width}-bit samples; only 16-bit PCM WAV is read")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(1)
    return samples, rate


def _kaiser(u: Tensor, beta: float = 8.6) -> Tensor:
    """Kaiser window on ``u ∈ [-1, 1]`` (0 outside): ``I0(β√(1 − u²)) / I0(β)``."""
    inside = u.abs() <= 1
    arg = beta * torch.sqrt((1 - u.square()).clamp_min(0))
    return torch.where(inside, torch.special.i0(arg) / torch.special.i0(torch.tensor(beta, dtype=u.dtype)),
                       torch.zeros_like(u))


def resample(x: Tensor, src_rate: float, dst_rate: float, *, zeros: int = 16,
             rolloff: float = 0.945) -> Tensor:
    """Band-limited resampling of ``(N, T)`` waveforms from ``src_rate`` to ``dst_rate``:
    ``(N, T)`` → ``(N, ceil(T·dst/src))`` (see the module doc)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ShiftlabError(f"resample takes (N, T) floating-point waveforms, got "
                            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ShiftlabError("the audio holds NaN or infinite samples; clean or drop those recordings")
    if not (src_rate > 0 and dst_rate > 0 and math.isfinite(src_rate) and math.isfinite(dst_rate)):
        raise ShiftlabError(f"sample rates must be positive and finite, got {src_rate!r} -> {dst_rate!r}")
    ratio = dst_rate / src_rate
    n, length = x.shape
    m = math.ceil(length * ratio - 1e-9)
    if length == 0 or m == 0:
        raise ShiftlabError(f"cannot resample {length} samples by {ratio:g}: nothing is left")
    cutoff = rolloff * min(1.0, ratio)
    half = math.ceil(zeros / cutoff)
    t = torch.arange(m, dtype=torch.float64) / ratio                     # source positions
    idx = torch.floor(t).long()[:, None] + torch.arange(-half + 1, half + 1)[None]   # (M, 2L)
    u = t[:, None] - idx                                                  # distances, |u| ≤ L
    weights = cutoff * torch.sinc(cutoff * u) * _kaiser(u / half)         # (M, 2L) float64
    padded = torch.nn.functional.pad(x.to(torch.float64), (half, half + 1))
    idx = (idx + half).clamp(0, padded.shape[1] - 1)
    out = torch.empty(n, m, dtype=torch.float64)
    chunk = max(1, 20_000_000 // idx.numel())
    for start in range(0, n, chunk):
        part = padded[start:start + chunk]
        out[start:start + chunk] = (part[:, idx] * weights).sum(-1)
    return out.to(x.dtype)


def pitch_shift(x: Tensor, semitones: float, **kwargs) -> Tensor:
    """Raise every frequency by ``2^(semitones/12)`` by resampling (duration shrinks by the
    same factor): ``(N, T)`` → ``(N, ceil(T / 2^(s/12)))``."""
    return resample(x, 2.0 ** (semitones / 12.0), 1.0, **kwargs)


def fit_length(x: np.ndarray, length: int, threshold: float = 1e-3) -> tuple[np.ndarray, int]:
    """Trim leading and trailing samples with ``|x| <= threshold`` and centre what is left in
    ``length`` zeros (cutting its ends evenly when it is longer).

    Returns ``(samples (length,), samples cut)``.

    >>> fit_length(np.array([0, 0, 1, 2, 0], np.float32), 6)[0].tolist()
    [0.0, 0.0, 1.0, 2.0, 0.0, 0.0]
    """
    loud = np.flatnonzero(np.abs(x) > threshold)
    if len(loud) == 0:
        raise ShiftlabError("the recording is silent (no sample above the threshold)")
    x = x[loud[0]:loud[-1] + 1]
    cut = max(0, len(x) - length)
    x = x[cut // 2: cut // 2 + length]
    out = np.zeros(length, dtype=x.dtype)
    start = (length - len(x)) // 2
    out[start:start + len(x)] = x
    return out, cut
