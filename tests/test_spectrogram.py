"""Spectrograms: exact time shifts at hop multiples, the mel and log filterbanks' shapes and
sums, pitch as a translation on the log axis, and one-line errors for bad input."""
import math

import numpy as np
import pytest
import torch

from shiftlab.errors import ShiftlabError
from shiftlab.spectrogram import (KINDS, Spectrogram, frequency_axis, hz_to_mel, log_filterbank,
                                  log_frequencies, mel_filterbank, mel_frequencies, mel_to_hz,
                                  spectrogram, stft_magnitude)

RATE = 8000


def _noise(n=3, length=4000, dtype=torch.float32, seed=0):
    return torch.randn(n, length, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _delay(x, d):
    return torch.nn.functional.pad(x, (d, 0))[..., :x.shape[-1]]


def _tone(f, length=8192):
    t = torch.arange(length, dtype=torch.float64) / RATE
    return torch.sin(2 * math.pi * f * t)[None]


# ----------------------------------------------------------------------------- shapes, oracle
@pytest.mark.parametrize("kind,rows", [("linear", 129), ("mel", 40), ("log", 24)])
@pytest.mark.parametrize("layout", ["NT", "N1T"])
def test_shape(kind, rows, layout):
    x = _noise(2, 1000)
    x = x if layout == "NT" else x[:, None]
    extra = {"n_bins": 24} if kind == "log" else {}
    assert spectrogram(x, RATE, kind=kind, n_fft=256, hop=64, **extra).shape == (2, 1, rows, 1 + 1000 // 64)
    assert len(frequency_axis(kind, rate=RATE, n_fft=256, **extra)) == rows


def test_linear_magnitude_is_the_dft_of_the_hann_windowed_frame():
    x = _noise(1, 2000, torch.float64)
    n_fft, hop, t = 256, 64, 10                            # frame 10 covers [640 - 128, 640 + 128)
    spec = spectrogram(x, RATE, kind="linear", n_fft=n_fft, hop=hop, scale="magnitude")[0, 0, :, t]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)       # periodic Hann
    frame = x[0, t * hop - n_fft // 2: t * hop + n_fft // 2].numpy() * window
    np.testing.assert_allclose(spec.numpy(), np.abs(np.fft.rfft(frame)), rtol=0, atol=1e-10)


def test_log_scale_keeps_silence_at_zero():
    x = torch.zeros(1, 1024)
    x[0, 400:600] = torch.randn(200, generator=torch.Generator().manual_seed(0))
    s = spectrogram(x, RATE, kind="mel", n_fft=128, hop=32)
    assert float(s[..., 0].abs().max()) == 0.0 and float(s[..., -1].abs().max()) == 0.0
    assert float(s.max()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_module_equals_function(kind):
    x = _noise(2, 1500)
    module = Spectrogram(RATE, kind=kind, n_fft=128, hop=32)
    torch.testing.assert_close(module(x[:, None]), spectrogram(x, RATE, kind=kind, n_fft=128, hop=32),
                               rtol=0, atol=0)
    assert "kind='" + kind in repr(module)


# ----------------------------------------------------------------------------- time shifts
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("kind", KINDS)
def test_delay_by_a_hop_multiple_moves_the_frames_exactly(kind, dtype, tol):
    x, n_fft, hop = _noise(3, 4000, dtype), 256, 80
    ref = spectrogram(x, RATE, kind=kind, n_fft=n_fft, hop=hop, scale="magnitude")
    last = (4000 - n_fft // 2) // hop                      # last frame whose window ends inside
    for j in (1, 2, 5):
        moved = spectrogram(_delay(x, j * hop), RATE, kind=kind, n_fft=n_fft, hop=hop, scale="magnitude")
        err = (moved[..., j:last + 1] - ref[..., :last + 1 - j]).abs().max() / ref.abs().max()
        assert float(err) < tol
    # a delay that is not a multiple of the hop changes the frames: no frame shift matches
    moved = spectrogram(_delay(x, hop // 2), RATE, kind=kind, n_fft=n_fft, hop=hop, scale="magnitude")
    for j in (0, 1):
        err = (moved[..., j + 2:last] - ref[..., 2:last - j]).abs().max() / ref.abs().max()
        assert float(err) > 1e-2


# ----------------------------------------------------------------------------- mel
def test_htk_mel_formula():
    assert float(hz_to_mel(700.0)) == pytest.approx(2595 * math.log10(2))
    f = torch.tensor([0.0, 100.0, 1000.0, 3999.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f, rtol=0, atol=1e-9)
    m = hz_to_mel(mel_frequencies(10, 0.0, 4000.0))
    torch.testing.assert_close(torch.diff(m), torch.full((11,), float(m[-1]) / 11, dtype=torch.float64))


@pytest.mark.parametrize("n_mels,n_fft", [(40, 256), (24, 512), (64, 1024)])
def test_mel_filterbank_shape_support_and_partition_of_unity(n_mels, n_fft):
    bank = mel_filterbank(n_mels, n_fft, RATE)
    assert bank.shape == (n_mels, n_fft // 2 + 1)
    assert float(bank.min()) == 0.0 and float(bank.max()) <= 1.0
    points = mel_frequencies(n_mels, 0.0, RATE / 2)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * RATE / n_fft
    for k in range(n_mels):                                 # zero outside (f_{k-1}, f_{k+1})
        outside = (freqs <= points[k]) | (freqs >= points[k + 2])
        assert float(bank[k][outside].abs().max()) == 0.0
        assert float(bank[k].sum()) > 0                     # no empty filter
    inner = (freqs >= points[1]) & (freqs <= points[-2])    # between the first and last centres
    torch.testing.assert_close(bank[:, inner].sum(0), torch.ones(int(inner.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_mel_row_peaks_at_its_centre():
    bank = mel_filterbank(20, 4096, RATE)                   # fine FFT: a bin near every centre
    centres = mel_frequencies(20, 0.0, RATE / 2)[1:-1]
    peak_hz = bank.argmax(1).double() * RATE / 4096
    assert float((peak_hz - centres).abs().max()) <= RATE / 4096


# ----------------------------------------------------------------------------- log axis
@pytest.mark.parametrize("bins_per_octave", [12, 24])
@pytest.mark.parametrize("k", [1, 5, 12, 19])
def test_a_pitch_change_is_a_translation_on_the_log_axis(bins_per_octave, k):
    """A tone at f_j lands in bin j; the tone at f_j · 2^(k/b) lands k bins higher."""
    n_fft, f_min, n_bins = 1024, 200.0, 3 * bins_per_octave
    axis = log_frequencies(f_min, bins_per_octave, n_bins)
    kw = dict(kind="log", n_fft=n_fft, hop=256, f_min=f_min, n_bins=n_bins,
              bins_per_octave=bins_per_octave, scale="magnitude")
    for j in (2, 7):
        low = spectrogram(_tone(float(axis[j])), RATE, **kw)[0, 0, :, 10]
        high = spectrogram(_tone(float(axis[j]) * 2 ** (k / bins_per_octave)), RATE, **kw)[0, 0, :, 10]
        assert int(low.argmax()) == j and int(high.argmax()) == j + k


def test_on_the_linear_axis_a_pitch_change_is_a_scaling_not_a_translation():
    """Partials f, 2f move by Δ and 2Δ bins when f is multiplied: different distances."""
    n_fft = 1024
    kw = dict(kind="linear", n_fft=n_fft, hop=256, scale="magnitude")
    bin_hz = RATE / n_fft
    low = spectrogram(_tone(32 * bin_hz) + _tone(64 * bin_hz), RATE, **kw)[0, 0, :, 10]
    high = spectrogram(_tone(40 * bin_hz) + _tone(80 * bin_hz), RATE, **kw)[0, 0, :, 10]
    peaks = lambda s: sorted(torch.topk(s, 2).indices.tolist())     # noqa: E731
    assert peaks(low) == [32, 64] and peaks(high) == [40, 80]       # moved by 8 and 16 bins


def test_log_filterbank_rows_sum_to_one_where_wider_than_a_bin():
    n_fft, b = 1024, 12
    bank = log_filterbank(36, n_fft, RATE, 300.0, b)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * RATE / n_fft
    centres = log_frequencies(300.0, b, 36)
    inner = (freqs >= centres[0]) & (freqs <= centres[-1])
    torch.testing.assert_close(bank[:, inner].sum(0), torch.ones(int(inner.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_narrow_log_filters_are_linear_interpolation_never_empty():
    bank = log_filterbank(48, 256, RATE, 30.0, 24)           # spacing ≪ 31.25 Hz bins at the bottom
    assert bool((bank.sum(1) > 0).all())


def test_default_log_axis_fits_below_nyquist():
    axis = frequency_axis("log", rate=RATE, n_fft=256)
    assert float(axis[0]) == 55.0 and float(axis[-1]) * 2 ** (1 / 12) <= RATE / 2
    assert float(axis[-1]) * 2 ** (2 / 12) > RATE / 2                  # no room for one more


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x,kwargs,message", [
    (torch.tensor([[0.0, float("nan")] * 300]), {}, "NaN or infinite"),
    (torch.tensor([[0.0, float("inf")] * 300]), {}, "NaN or infinite"),
    (torch.zeros(1, 100), {}, "shorter than the 256-sample STFT window"),
    (torch.zeros(1, 1000), {"kind": "bark"}, "unknown spectrogram kind 'bark'"),
    (torch.zeros(1, 1000), {"scale": "db"}, "unknown spectrogram scale 'db'"),
    (torch.zeros(1, 1000), {"hop": 0}, "hop in \\[1, n_fft\\]"),
    (torch.zeros(1, 1000), {"hop": 300}, "hop in \\[1, n_fft\\]"),
    (torch.zeros(2, 2, 1000), {}, "must be \\(N, T\\) or \\(N, 1, T\\)"),
    (torch.zeros(1, 1000, dtype=torch.int16), {}, "floating point"),
    (torch.zeros(1, 1000), {"kind": "mel", "f_max": 5000.0}, "f_max <= rate/2"),
    (torch.zeros(1, 1000), {"kind": "log", "n_bins": 100}, "above rate/2"),
    (torch.zeros(1, 1000), {"kind": "log", "f_min": 0.0, "n_bins": 10}, "f_min > 0"),
    (torch.zeros(1, 1000), {"kind": "mel", "n_bins": 0}, "at least 1"),
    ([0.0] * 1000, {}, "must be a torch tensor"),
])
def test_bad_input_is_one_line(x, kwargs, message):
    with pytest.raises(ShiftlabError, match=message) as err:
        spectrogram(x, RATE, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_rate_and_module_kind():
    with pytest.raises(ShiftlabError, match="sample rate"):
        spectrogram(torch.zeros(1, 1000), 0)
    with pytest.raises(ShiftlabError, match="unknown spectrogram kind"):
        Spectrogram(RATE, kind="cqt")
    with pytest.raises(ShiftlabError, match="shorter than"):
        stft_magnitude(torch.zeros(1, 10), 64, 16)
