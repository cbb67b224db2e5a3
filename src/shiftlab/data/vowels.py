"""Synthetic "spoken digits" for machines without espeak-ng: harmonic vowels with formants.

Source–filter synthesis (Fant 1960): a glottal-pulse-like harmonic source at pitch
``f0(t)`` (harmonic ``k`` with amplitude ``1/k``, the −6 dB/octave of a glottal pulse with
lip radiation) shaped by a vocal tract of three resonances,

.. math::  x(t) = e(t) \\sum_k \\frac{1}{k}\\, |H(k f_0(t), t)| \\sin(k\\,\\phi(t)),\\quad
           \\phi(t) = 2\\pi\\int_0^t f_0, \\quad
           |H(f)| = \\prod_{i=1}^{3} \\frac{F_i^2}{\\sqrt{(F_i^2 - f^2)^2 + (B_i f)^2}},

with ``e`` a raised-cosine onset and offset. Each "digit" glides between two vowels
(formants of Peterson & Barney 1952, men's averages), scaled by the voice's vocal-tract
factor; ``f0`` falls by 20 % over the word (declination) with a seeded vibrato. These are
not words: they are a labelled, seeded stand-in with the same structure (harmonics at
``k·f0`` under a formant envelope), clearly marked as synthetic wherever they are stored.
"""
from __future__ import annotations

import numpy as np

__all__ = ["VOWEL_FORMANTS", "DIGIT_GLIDES", "BANDWIDTHS", "synthetic_voice", "synthetic_word"]

#: (F1, F2, F3) in Hz, Peterson & Barney (1952), adult men
VOWEL_FORMANTS = {
    "i": (270, 2290, 3010), "ɪ": (390, 1990, 2550), "ɛ": (530, 1840, 2480), "æ": (660, 1720, 2410),
    "ɑ": (730, 1090, 2440), "ɔ": (570, 840, 2410), "ʊ": (440, 1020, 2240), "u": (300, 870, 2240),
    "ʌ": (520, 1190, 2390), "ɝ": (490, 1350, 1690),
}
#: digit -> (start vowel, end vowel), loosely after the word's vowels; all ten differ
DIGIT_GLIDES = [("ɪ", "ʊ"), ("u", "ʌ"), ("u", "u"), ("ɝ", "i"), ("ɔ", "ɝ"),
                ("ɑ", "ɪ"), ("ɪ", "ɪ"), ("ɛ", "ʌ"), ("ɛ", "ɪ"), ("æ", "ɪ")]
BANDWIDTHS = (60.0, 90.0, 120.0)            # Hz, one per formant


def synthetic_voice(index: int, count: int) -> tuple[float, float]:
    """Voice ``index`` of ``count``: (vocal-tract factor in [0.85, 1.2], base f0 in Hz in
    [95, 230]), spread so that long tracts go with low voices, as in people."""
    u = index / max(count - 1, 1)
    wobble = 0.5 * ((index * 7) % count) / max(count, 1) - 0.25      # decorrelate a little
    tract = 0.85 + 0.35 * u
    f0 = 95.0 * (230.0 / 95.0) ** float(np.clip(u + wobble, 0.0, 1.0))
    return tract, f0


def synthetic_word(digit: int, *, tract: float, f0: float, seconds: float, rate: int,
                   rng: np.random.Generator) -> np.ndarray:
    """One synthetic "digit" (float64 samples, peak 1) of ``seconds`` at ``rate`` Hz."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    progress = t / seconds
    glide = progress * progress * (3 - 2 * progress)                   # smoothstep 0 → 1
    start, end = (np.array(VOWEL_FORMANTS[v], dtype=np.float64) * tract for v in DIGIT_GLIDES[digit])
    formants = start[:, None] + (end - start)[:, None] * glide[None]    # (3, n)
    vibrato_rate, vibrato_depth = rng.uniform(4.0, 6.0), rng.uniform(0.005, 0.02)
    pitch = f0 * (1.1 - 0.2 * progress) * (1 + vibrato_depth * np.sin(2 * np.pi * vibrato_rate * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    k = np.arange(1, int(0.45 * rate / pitch.max()) + 1)[:, None]      # harmonics below 0.45·rate
    f = k * pitch[None]                                                 # (K, n)
    gain = np.ones_like(f)
    for i, bandwidth in enumerate(BANDWIDTHS):
        fi = formants[i][None]
        gain *= fi ** 2 / np.sqrt((fi ** 2 - f ** 2) ** 2 + (bandwidth * f) ** 2)
    x = (gain / k * np.sin(k * phase[None])).sum(0)
    ramp = min(n // 2, int(0.03 * rate))
    envelope = np.ones(n)
    envelope[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    envelope[n - ramp:] = envelope[:ramp][::-1]
    x *= envelope
    return x / np.abs(x).max()
