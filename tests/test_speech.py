"""Spoken digits: the seeded list, the file (exact, deterministic bytes, cached, never
clobbered), espeak-ng when installed, the synthetic fallback when not, the waveform helpers
(WAV reading, resampling, trimming) against closed forms, and one-line errors."""
import hashlib
import math
import wave

import numpy as np
import pytest
import torch

import shiftlab.data.speech as speech
from shiftlab.data.audio import fit_length, pitch_shift, read_wav, resample
from shiftlab.data.speech import VOICES, WORDS, clip_list, render_espeak, spoken_digits
from shiftlab.data.vowels import DIGIT_GLIDES, synthetic_voice, synthetic_word
from shiftlab.errors import ShiftlabError

HAVE_ESPEAK = speech.espeak_path() is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed")


@pytest.fixture(autouse=True)
def _own_data_folder(tmp_path, monkeypatch):
    """Every test reads and writes its own data folder, never the checkout's data/."""
    monkeypatch.setenv("SHIFTLAB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the list
def test_clip_list_is_seeded_and_in_range():
    a, b = clip_list(0, VOICES[:3], 4), clip_list(0, VOICES[:3], 4)
    assert a == b and a != clip_list(1, VOICES[:3], 4)
    assert len(a) == 3 * 10 * 4
    assert [c[0] for c in a[:40:4]] == list(range(10))               # words in order per voice
    assert all(120 <= s <= 200 and 20 <= p <= 80 for _, _, s, p in a)


# ----------------------------------------------------------------------------- synthetic fallback
def test_synthetic_set_is_deterministic_labelled_and_exact(tmp_path):
    kw = dict(engine="synthetic", voices=VOICES[:2], takes=2, log=lambda s: None)
    first = spoken_digits(tmp_path / "a.npz", seed=3, **kw)
    second = spoken_digits(tmp_path / "b.npz", seed=3, **kw)
    other = spoken_digits(tmp_path / "c.npz", seed=4, **kw)
    assert _sha(tmp_path / "a.npz") == _sha(tmp_path / "b.npz") != _sha(tmp_path / "c.npz")
    assert first.synthetic and "synthetic" in first.meta["source"] and "not speech" in first.meta["source"]
    assert first.waveforms.shape == (40, 6400) and first.rate == 8000
    assert first.labels.tolist() == [c[0] for c in clip_list(3, VOICES[:2], 2)]
    assert torch.equal(first.waveforms, second.waveforms) and not torch.equal(first.waveforms, other.waveforms)
    # stored exactly: int16 / 32768, peak 0.5
    assert torch.equal(first.waveforms * 32768, (first.waveforms * 32768).round())
    assert float(first.waveforms.abs().max()) == 0.5


def test_synthetic_word_is_harmonic_under_its_formants():
    rng = np.random.default_rng(0)
    x = synthetic_word(5, tract=1.0, f0=125.0, seconds=0.5, rate=8000, rng=rng)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    peak = freqs[np.argmax(spec)]
    # the strongest partial sits near a multiple of the (gliding, ±10 %) f0
    assert abs(peak / 125.0 - round(peak / 125.0)) < 0.2
    assert len(set(DIGIT_GLIDES)) == 10
    tract, f0 = synthetic_voice(0, 16)
    assert (tract, round(f0, 6)) == (0.85, 95.0)


def test_missing_espeak_falls_back_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setattr(speech, "espeak_path", lambda: None)
    monkeypatch.setattr(speech, "_warned_missing", False)
    lines = []
    data = spoken_digits(voices=VOICES[:1], takes=1, log=lines.append)
    assert data.synthetic
    notes = [line for line in lines if "espeak-ng not found" in line]
    assert len(notes) == 1 and "apt-get install -y espeak-ng" in notes[0] and "\n" not in notes[0]
    spoken_digits(voices=VOICES[:2], takes=1, log=lines.append)        # made again, not said again
    assert len([line for line in lines if "espeak-ng not found" in line]) == 1
    with pytest.raises(ShiftlabError, match="espeak-ng is not installed; apt-get install -y espeak-ng"):
        spoken_digits(voices=VOICES[:1], takes=1, engine="espeak-ng")


def test_the_file_is_made_once_then_read(tmp_path):
    lines = []
    kw = dict(engine="synthetic", voices=VOICES[:1], takes=1, log=lines.append)
    first = spoken_digits(**kw)
    path = next((tmp_path / "data").glob("spoken-digits-*.npz"))       # not the default name
    stamp = path.stat().st_mtime_ns
    again = spoken_digits(**kw)
    assert path.stat().st_mtime_ns == stamp and torch.equal(first.waveforms, again.waveforms)
    assert sum("making" in line for line in lines) == 1
    spoken_digits(**{**kw, "takes": 2})                                  # other settings: another file
    assert len(list((tmp_path / "data").glob("spoken-digits-*.npz"))) == 2
    assert not list(tmp_path.glob("data/.*.tmp"))                       # nothing half-written left


def test_split_holds_out_whole_voices():
    data = spoken_digits(engine="synthetic", voices=VOICES[:4], takes=1, log=lambda s: None)
    train, test = data.split(1, seed=0)
    assert len(train) == 30 and len(test) == 10 and not set(train.voices) & set(test.voices)
    assert data.split(1, seed=0)[1].voices == test.voices
    with pytest.raises(ShiftlabError, match="test_voices must be between 1 and 3"):
        data.split(4)


def test_load_spoken_digits_gives_log_mel_images_per_split():
    from shiftlab.data.speech import load_spoken_digits
    kw = dict(engine="synthetic", voices=VOICES[:4], takes=1, log=lambda s: None)
    x, y = load_spoken_digits("train", **kw)
    xt, yt = load_spoken_digits("test", **kw)
    assert x.shape == (30, 1, 40, 81) and xt.shape == (10, 1, 40, 81)
    assert float(x.min()) == 0.0 and sorted(yt.tolist()) == list(range(10))
    with pytest.raises(ShiftlabError, match="splits train and test, not 'val'"):
        load_spoken_digits("val", **kw)


def test_corrupt_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ShiftlabError, match="corrupt .* delete it"):
        spoken_digits(bad, engine="synthetic", voices=VOICES[:1], takes=1)


def test_unwritable_destination_fails_before_rendering(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(speech, "render_clips", lambda *a, **k: pytest.fail("rendered anyway"))
    with pytest.raises(ShiftlabError, match="is a file"):
        spoken_digits(tmp_path / "file" / "s.npz", engine="synthetic", voices=VOICES[:1], takes=1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(engine="festival"), "engine must be auto, espeak-ng or synthetic"),
    (dict(rate=500), "rate must be an integer number of Hz"),
    (dict(rate=8000.5), "rate must be an integer number of Hz"),
    (dict(takes=0), "takes >= 1"),
    (dict(seconds=0.01), "0.1 <= seconds <= 5"),
    (dict(voices=[]), "at least one voice"),
])
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(ShiftlabError, match=message) as err:
        spoken_digits(**{"engine": "synthetic", **kwargs})
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- espeak-ng
@needs_espeak
def test_espeak_set_is_deterministic_speech(tmp_path):
    kw = dict(voices=VOICES[:2], takes=1, log=lambda s: None)
    first = spoken_digits(tmp_path / "a.npz", **kw)
    spoken_digits(tmp_path / "b.npz", **kw)
    assert _sha(tmp_path / "a.npz") == _sha(tmp_path / "b.npz")
    assert not first.synthetic and first.meta["source"].startswith("eSpeak NG")
    assert first.waveforms.shape == (20, 6400) and sorted(set(first.labels.tolist())) == list(range(10))
    assert float(first.waveforms.abs().max()) == 0.5
    # centred: silence at both ends of every clip
    assert float(first.waveforms[:, :100].abs().max()) == 0 and float(first.waveforms[:, -100:].abs().max()) == 0


@needs_espeak
def test_espeak_pitch_changes_the_pitch():
    """espeak -p 70 speaks higher than -p 30: the spectral centroid of the low band moves up."""
    lo, rate = render_espeak("nine", "en-us+m3", 160, 30)
    hi, _ = render_espeak("nine", "en-us+m3", 160, 70)

    def f0(x):                                   # autocorrelation pitch of the loudest 60 ms
        i = int(np.argmax(np.convolve(x ** 2, np.ones(1000), "same")))
        seg = x[i - 700:i + 700] - x[i - 700:i + 700].mean()
        ac = np.correlate(seg, seg, "full")[len(seg) - 1:]
        lag = rate // 300 + int(np.argmax(ac[rate // 300: rate // 60]))
        return rate / lag
    assert f0(hi) > 1.2 * f0(lo)


@needs_espeak
def test_espeak_errors_are_one_line():
    with pytest.raises(ShiftlabError, match="espeak-ng failed on 'one' with voice nosuchvoice") as err:
        render_espeak("one", "nosuchvoice", 160, 50)
    assert "\n" not in str(err.value)
    with pytest.raises(ShiftlabError, match="cannot run"):
        render_espeak("one", "en", 160, 50, program="/nonexistent/espeak-ng")


# ----------------------------------------------------------------------------- waveform helpers
def test_read_wav_reads_16_bit_pcm_and_refuses_the_rest(tmp_path):
    samples = (np.arange(-5, 5) * 1000).astype("<i2")
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(22050)
        f.writeframes(samples.tobytes())
    x, rate = read_wav(path)
    assert rate == 22050 and np.array_equal(x, samples / 32768.0)
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(1), f.setframerate(8000)
        f.writeframes(bytes(10))
    with pytest.raises(ShiftlabError, match="8-bit samples; only 16-bit"):
        read_wav(tmp_path / "8bit.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF junk")
    with pytest.raises(ShiftlabError, match="not a readable WAV file"):
        read_wav(tmp_path / "junk.wav")


def test_resample_matches_the_band_limited_signal():
    t = torch.arange(22050, dtype=torch.float64) / 22050
    x = torch.sin(2 * math.pi * 440 * t)[None]
    y = resample(x, 22050, 8000)
    assert y.shape == (1, 8000)
    exact = torch.sin(2 * math.pi * 440 * torch.arange(8000, dtype=torch.float64) / 8000)
    assert float((y[0] - exact)[100:-100].abs().max()) < 1e-3


def test_resample_removes_what_the_new_rate_cannot_hold():
    t = torch.arange(22050, dtype=torch.float64) / 22050
    x = torch.sin(2 * math.pi * 5000 * t)[None]                           # above 4 kHz
    assert float(resample(x, 22050, 8000)[0, 200:-200].abs().max()) < 1e-3


def test_pitch_shift_by_an_octave_doubles_the_frequency():
    t = torch.arange(8000, dtype=torch.float64) / 8000
    y = pitch_shift(torch.sin(2 * math.pi * 300 * t)[None], 12.0)
    assert y.shape == (1, 4000)
    spec = np.abs(np.fft.rfft(y[0, 500:3500].numpy() * np.hanning(3000)))
    assert abs(np.fft.rfftfreq(3000, 1 / 8000)[np.argmax(spec)] - 600) < 3


def test_fit_length_trims_and_centres():
    x = np.array([0, 0, 0, 1, 2, 3, 0], np.float32)
    out, cut = fit_length(x, 7)
    assert out.tolist() == [0, 0, 1, 2, 3, 0, 0] and cut == 0
    out, cut = fit_length(x, 2)
    assert cut == 1 and len(out) == 2
    with pytest.raises(ShiftlabError, match="silent"):
        fit_length(np.zeros(5), 5)


@pytest.mark.parametrize("x,message", [
    (torch.tensor([[0.0, float("nan"), 1.0]]), "NaN or infinite"),
    (torch.zeros(3), "\\(N, T\\) floating-point"),
    (torch.zeros(1, 3, dtype=torch.int16), "\\(N, T\\) floating-point"),
])
def test_resample_bad_input(x, message):
    with pytest.raises(ShiftlabError, match=message):
        resample(x, 8000, 16000)
    with pytest.raises(ShiftlabError, match="positive and finite"):
        resample(torch.zeros(1, 10), 0, 8000)


def test_words_are_the_ten_digits():
    assert WORDS == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
