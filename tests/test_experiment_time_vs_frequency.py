"""Experiment time-vs-frequency: its pieces against closed forms, the audio CNN's exact time
invariance, and every claim of the quick run as measured."""
import json

import pytest
import torch

from shiftlab.errors import ShiftlabError
from shiftlab.experiments import EXPERIMENTS, ExperimentResult
from shiftlab.experiments import time_vs_frequency as tvf
from shiftlab.experiments.time_vs_frequency import (RATE, best_shift_correlation, delay,
                                                    harmonic_fine_structure, harmonic_tone,
                                                    harmonic_translation, spectral_peaks,
                                                    time_shift_errors, translate_rows)
from shiftlab.models import create_model
from shiftlab.spectrogram import frequency_axis, spectrogram
from shiftlab.actions import canvas_shift


# ----------------------------------------------------------------------------- pieces
def test_best_shift_correlation_finds_a_roll_and_its_sign():
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(60, 5)
    a[20:40] = torch.rand(20, 5, generator=g)
    for k in (-7, 0, 3):
        corr, shift, curve = best_shift_correlation(a, torch.roll(a, k, 0), 10)
        assert shift == k and corr == pytest.approx(1.0) and len(curve) == 21
    with pytest.raises(ShiftlabError, match="max_shift < rows/2"):
        best_shift_correlation(a, a, 30)


def test_translate_rows_moves_with_zeros_entering():
    x = torch.arange(1.0, 6.0)
    assert translate_rows(x, 2).tolist() == [0, 0, 1, 2, 3]
    assert translate_rows(x, -1).tolist() == [2, 3, 4, 5, 0]


def test_delay_and_its_bounds():
    x = torch.arange(1.0, 6.0)[None]
    assert delay(x, 2).tolist() == [[0, 0, 1, 2, 3]]
    with pytest.raises(ShiftlabError, match="delay must be in"):
        delay(x, 5)


def test_time_shift_errors_vanish_exactly_at_hop_multiples():
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(1))
    errors = time_shift_errors(x, RATE, [0, 40, 80, 160, 200], n_fft=256, hop=80)
    for kind, e in errors.items():
        assert max(e[0], e[2], e[3]) < 1e-6, kind
        assert min(e[1], e[4]) > 1e-2, kind


def test_time_shift_errors_are_the_law_on_the_interior_frames():
    """The law's number, computed by hand: frames ``t`` of the delayed spectrogram against
    frames ``t − k`` of the original over the frames at least ``m = ⌈n_fft / 2 hop⌉`` from
    either end, ``k = d / hop`` when the hop divides ``d``, else each clip's better of
    ``⌊d / hop⌋`` and ``⌈d / hop⌉``; and the margin matters (the last frames differ)."""
    x = torch.randn(3, 2000, generator=torch.Generator().manual_seed(2))
    n_fft, hop, m = 256, 80, 2
    ref = spectrogram(x, RATE, kind="linear", n_fft=n_fft, hop=hop, scale="magnitude")[:, 0].double()
    frames = ref.shape[-1]

    def by_hand(d: int, ks: list[int]) -> float:
        moved = spectrogram(delay(x, d), RATE, kind="linear", n_fft=n_fft, hop=hop, scale="magnitude")[:, 0]
        pairs = [((moved.double()[..., k + m:frames - m] - ref[..., m:frames - m - k]).square().sum((1, 2)),
                  ref[..., m:frames - m - k].square().sum((1, 2))) for k in ks]
        best = [min(((d2[n], r2[n]) for d2, r2 in pairs), key=lambda p: p[0] / p[1]) for n in range(len(x))]
        return float((sum(p[0] for p in best) / sum(p[1] for p in best)).sqrt())

    law = time_shift_errors(x, RATE, [160, 200], kinds=("linear",), n_fft=n_fft, hop=hop)["linear"]
    assert law[0] == pytest.approx(by_hand(160, [2]), abs=1e-9) and law[0] < 1e-6
    assert law[1] == pytest.approx(by_hand(200, [2, 3]), rel=1e-6) and law[1] > 0.1
    moved = spectrogram(delay(x, 160), RATE, kind="linear", n_fft=n_fft, hop=hop, scale="magnitude")[:, 0]
    tail = moved[..., frames - m:] - ref[..., frames - m - 2:frames - 2]
    assert float(tail.abs().max()) > 1e-2 * float(ref.abs().max())


def test_spectral_peaks_find_the_partials():
    x = harmonic_tone(250.0, 3, 0.5)
    lin = spectrogram(x, RATE, kind="linear", n_fft=2048, hop=80, scale="magnitude")[0, 0].mean(-1)
    peaks = spectral_peaks(lin, frequency_axis("linear", rate=RATE, n_fft=2048), 3)
    assert peaks == pytest.approx([250.0, 500.0, 750.0], abs=0.05)


def test_harmonic_translation_breaks_ratios_only_on_the_linear_axis():
    c = harmonic_translation()
    assert c["peaks_hz"]["linear translation"] == pytest.approx([375.0, 625.0, 875.0], abs=0.5)
    assert c["ratios"]["linear translation"] == pytest.approx([625 / 375, 875 / 375], abs=0.01)
    assert c["ratios"]["log translation"] == pytest.approx([2.0, 3.0], abs=0.02)
    assert c["ratios"]["real pitch change"] == pytest.approx([2.0, 3.0], abs=0.02)
    assert c["peaks_hz"]["real pitch change"][0] == pytest.approx(375.0, abs=1.0)
    # the log translation multiplies every partial by 2^(14/24)
    assert c["peaks_hz"]["log translation"][0] == pytest.approx(250 * 2 ** (14 / 24), rel=0.01)


def test_fine_structure_does_not_see_a_smooth_envelope():
    """Multiplying a spectrum by an envelope that is exponential in frequency (linear in log)
    leaves its fine structure unchanged away from the edges: the moving mean of log|X|
    absorbs a linear trend exactly."""
    g = torch.Generator().manual_seed(0)
    mag = 1 + torch.rand(200, 6, generator=g, dtype=torch.float64)
    tilt = torch.exp(-0.01 * torch.arange(200, dtype=torch.float64))[:, None]
    a, b = harmonic_fine_structure(mag, 8), harmonic_fine_structure(mag * tilt, 8)
    assert float((a - b)[8:-8].abs().max()) < 2e-3          # the 1e-4 floor of the log
    assert float((mag - mag * tilt)[8:-8].abs().max()) > 0.5


# ----------------------------------------------------------------------------- the audio CNN
def test_audio_cnn_is_exactly_time_invariant_at_multiples_of_its_stride_over_silence():
    """Bias-free convs keep silence at 0, so on a silent canvas a time shift by a multiple of
    the total stride (4) leaves the logits unchanged; a frequency shift does not."""
    torch.manual_seed(0)
    net = create_model("audio-cnn").double().eval()
    x = torch.zeros(3, 1, 40, 90, dtype=torch.float64)
    x[..., 30:60] = torch.rand(3, 1, 40, 30, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        for dx in (-8, -4, 4, 12):
            assert float((net(canvas_shift(x, (0, dx))) - ref).abs().max()) < 1e-12
        assert float((net(canvas_shift(x, (4, 0))) - ref).abs().max()) > 1e-3
    gap = create_model("audio-cnn-gap").double().eval()
    with torch.no_grad():
        y = torch.zeros(3, 1, 64, 90, dtype=torch.float64)
        y[..., 16:48, 30:60] = x[..., 4:36, 30:60]
        assert float((gap(canvas_shift(y, (4, 0))) - gap(y)).abs().max()) < 1e-12


# ----------------------------------------------------------------------------- the experiment
def test_registered():
    assert "time-vs-frequency" in EXPERIMENTS


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["espeak-ng", "synthetic"])
def test_quick_run_holds_every_claim(engine, tmp_path, monkeypatch):
    """With espeak-ng's speech (when installed) and with the synthetic fallback alike: every
    claim holds on ``compute``'s data, and the four figures are drawn from that data alone."""
    import shiftlab.data.speech as speech
    if engine == "espeak-ng" and speech.espeak_path() is None:
        pytest.skip("espeak-ng is not installed")
    if engine == "synthetic":
        monkeypatch.setattr(speech, "espeak_path", lambda: None)
    monkeypatch.setenv("SHIFTLAB_DATA", str(tmp_path / "data"))
    data = tvf.compute(quick=True, log=lambda s: None)
    claims = tvf.claims(data)
    failed = [claim for claim, ok in claims.items() if not ok]
    assert not failed, failed
    assert len(claims) == 11
    again = json.loads(json.dumps(data))                       # what run() saves
    assert again == data
    figures = tvf.draw(again, tmp_path / "out")
    assert len(figures) == 4
    for path in figures:
        assert path.stat().st_size > 1000 and path.with_suffix(".svg").is_file()
    result = tvf.summarise(data, figures)
    assert result.claims == claims and result.figures == [p.name for p in figures]
    n = result.numbers
    assert n["a_max_error_hop_multiple"] < 1e-5
    assert n["b_resample_correlation"]["log"] > 0.9 and n["b_log_shift_as_predicted"] >= 0.9
    details = n["details"]
    assert details["data"]["engine"] == engine and "example" not in details
    assert ("SYNTHETIC" in result.summary) == (engine == "synthetic")
    assert details["settings"]["quick"] is True
    result.save(tmp_path)                                      # plain JSON, loads back the same
    loaded = ExperimentResult.load(tmp_path / "experiment-time-vs-frequency.json")
    assert loaded.claims == result.claims and loaded.rows == json.loads(json.dumps(result.rows))
