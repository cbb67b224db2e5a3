"""Experiment ``time-vs-frequency``: speech is shift-invariant along time, not along frequency.

Four measurements on spoken digits (:mod:`shiftlab.data.speech`: espeak-ng, or its
synthetic fallback) and their spectrograms (:mod:`shiftlab.spectrogram`):

(a) **Time.** Delaying a waveform by ``j·H`` samples (``H`` the hop) moves every frame that
    does not touch the signal's end by exactly ``j`` frames, on every frequency axis; other
    delays change the frames themselves. Measured by the one law (:mod:`shiftlab.law`): the
    spectrogram is a map of stride ``H`` of the waveform, under the canvas protocol.
(b) **Pitch.** Resampling a recording by ``1/r`` multiplies every frequency by ``r``: on a
    log-frequency axis with ``b`` bins per octave that is a translation by ``b·log2 r`` bins,
    on the linear axis a scaling that no translation matches. The best-shift correlation
    (Pearson, over the rows both spectra cover) measures how close each is to a
    translation. espeak's own pitch (``-p``) changes only ``f0``: the formant envelope
    stays, so the harmonic comb (the spectrum divided by its envelope) is what translates.
(c) **Harmonics.** A tone with partials ``f, 2f, 3f`` translated along a linear frequency
    axis by ``Δ`` has partials ``f + Δ, 2f + Δ, 3f + Δ``, whose ratios are no longer
    ``2, 3``; translated along the log axis, the ratios stay (peaks measured by parabolic
    interpolation).
(d) **A CNN** (``audio-cnn``: convolutions, a max over time per frequency band, a linear
    head) trained on log-mel spectrograms of spoken digits, audited with
    :func:`shiftlab.audit` under canvas shifts along time (``x``) and along frequency
    (``y``): per-layer equivariance error along each axis, and accuracy against time shift
    (frames, and waveform delays in ms), mel-bin shift and pitch shift (resampling, in
    semitones). Training holds out whole voices; test clips get 240 ms of extra silence on
    each side, so a shifted word stays on the canvas (what a microphone that keeps recording
    gives) and the time pooling sees all of it.

``compute`` returns plain data; ``draw`` makes the figures from it; ``summarise`` states
the claims; ``run`` does the three and saves the data.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..actions import CanvasShift
from ..data.audio import fit_length, pitch_shift
from ..errors import ShiftlabError
from ..law import LayerGeometry, compare, relative_error
from ..spectrogram import (KINDS, frequency_axis, log_filterbank, spectrogram, stft_magnitude)
from .base import ExperimentResult, save_data

__all__ = ["delay", "time_shift_errors", "best_shift_correlation", "translate_rows",
           "harmonic_tone", "spectral_peaks", "harmonic_fine_structure", "pitch_translation",
           "train_classifier", "compute", "draw", "claims_and_rows", "claims", "summarise", "run"]

RATE = 8000
ANALYSIS = dict(n_fft=1024, hop=80)                 # (b): 128 ms windows resolve harmonics
LOG_AXIS = dict(f_min=60.0, bins_per_octave=24)     # (b), (c): 24 bins per octave from 60 Hz
BAND = (60.0, 3800.0)                                # (b): the band both axes cover
SILENCE_HOPS = 24                                    # (d): silence added around test clips


# ----------------------------------------------------------------------------- (a) time
def delay(x: Tensor, samples: int) -> Tensor:
    """Delay ``(N, L)`` waveforms by ``samples`` (zeros in front, the end dropped)."""
    if samples < 0 or samples >= x.shape[-1]:
        raise ShiftlabError(f"a delay must be in [0, {x.shape[-1]}) samples, got {samples}")
    return torch.nn.functional.pad(x, (samples, 0))[..., :x.shape[-1]]


def time_shift_errors(x: Tensor, rate: float, delays: list[int], *, kinds=KINDS, n_fft: int = 256,
                      hop: int = 80, **axis) -> dict[str, list[float]]:
    """(a) through the law (:mod:`shiftlab.law`): for each kind and delay ``d``, the relative
    error ``‖S(delay(x, d)) − T'_{d/hop} S(x)‖ / ‖T'_{d/hop} S(x)‖`` of the spectrogram ``S``
    (magnitude scale, frequency bins as channels, stride ``hop``) under the canvas protocol
    (a delay: zeros in front, the end dropped), on the frames both cover at least
    ``⌈n_fft / 2 hop⌉`` frames from either end (frames whose window reaches past the
    signal). Zero up to float rounding when ``hop`` divides ``d``; otherwise the law's
    nearest alignment."""
    action, waves = CanvasShift(), x[:, None]                           # (N, 1, L)
    margin = math.ceil(n_fft / (2 * hop))
    out = {}
    for kind in kinds:
        extra = axis if kind != "linear" else {}

        def spec(w: Tensor) -> Tensor:                                  # (N, F, frames)
            return spectrogram(w, rate, kind=kind, n_fft=n_fft, hop=hop, scale="magnitude", **extra)[:, 0]

        ref = spec(waves)
        geometry = LayerGeometry.of(action, hop, ref.shape[2:], waves.shape[2:], margin)
        out[kind] = [float(relative_error(compare(action, geometry, spec(action(waves, (d,))), ref, (d,))))
                     for d in delays]
    return out


# ----------------------------------------------------------------------------- (b) pitch
def best_shift_correlation(a: Tensor, b: Tensor, max_shift: int) -> tuple[float, int, list[float]]:
    """How well ``b`` is ``a`` moved along its first axis (rows = frequency).

    For each ``k`` in ``[-max_shift, max_shift]`` the Pearson correlation of ``a[f]`` with
    ``b[f + k]`` over the rows both cover; returns ``(best correlation, its k, all of them)``.
    ``k > 0``: ``b`` is ``a`` moved up.

    >>> a = torch.tensor([0., 1, 3, 1, 0, 0, 0, 0, 0])
    >>> best_shift_correlation(a, torch.roll(a, 2), 3)[:2]
    (1.0, 2)
    """
    rows = a.shape[0]
    if a.shape != b.shape or not 0 <= max_shift < rows // 2:
        raise ShiftlabError(f"need two spectra of one shape and max_shift < rows/2, got "
                            f"{tuple(a.shape)}, {tuple(b.shape)}, {max_shift}")
    curve = []
    for k in range(-max_shift, max_shift + 1):
        u = a[max(0, -k):rows - max(0, k)].flatten().double()
        v = b[max(0, k):rows - max(0, -k)].flatten().double()
        u, v = u - u.mean(), v - v.mean()
        den = float(u.norm() * v.norm())
        curve.append(float((u * v).sum()) / den if den > 0 else 0.0)
    best = int(np.argmax(curve))
    return curve[best], best - max_shift, curve


def _band_rows(kind: str, n_fft: int, band=BAND) -> slice:
    """Rows of a linear spectrogram inside ``band``."""
    freqs = frequency_axis(kind, rate=RATE, n_fft=n_fft)
    inside = torch.nonzero((freqs >= band[0]) & (freqs <= band[1])).flatten()
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _axes(x: Tensor, n_fft: int, hop: int) -> dict[str, Tensor]:
    """``x`` on the linear axis (rows inside BAND) and on the log axis, log scale: (N, F, T)."""
    lin = spectrogram(x, RATE, kind="linear", n_fft=n_fft, hop=hop)[:, 0, _band_rows("linear", n_fft)]
    log = spectrogram(x, RATE, kind="log", n_fft=n_fft, hop=hop, f_max=BAND[1], **LOG_AXIS)[:, 0]
    return {"linear": lin, "log": log}


def pitch_translation(x: Tensor, semitones: list[float], *, n_fft: int = ANALYSIS["n_fft"],
                      hop: int = ANALYSIS["hop"]) -> dict:
    """(b) by resampling: for each clip and pitch change ``s``, the best-shift correlation
    of the time-averaged spectra (original vs resampled by ``2^(-s/12)``) on both axes.

    Returns ``{"linear"|"log": {"correlation": [[per clip] per s], "shift": …}, "expected_log_shift": …}``.
    """
    ref = _axes(x, n_fft, hop)
    max_shift = {"linear": min(160, ref["linear"].shape[1] // 2 - 1),
                 "log": min(30, ref["log"].shape[1] // 2 - 1)}
    out = {kind: {"correlation": [], "shift": []} for kind in ref}
    for s in semitones:
        moved = torch.stack([torch.from_numpy(fit_length(m.numpy(), x.shape[-1], 1e-4)[0])
                             for m in pitch_shift(x, s)])
        axes = _axes(moved, n_fft, hop)
        for kind in ref:
            pairs = [best_shift_correlation(ref[kind][i].mean(-1), axes[kind][i].mean(-1), max_shift[kind])
                     for i in range(len(x))]
            out[kind]["correlation"].append([p[0] for p in pairs])
            out[kind]["shift"].append([p[1] for p in pairs])
    out["expected_log_shift"] = [s * LOG_AXIS["bins_per_octave"] / 12 for s in semitones]
    return out


def harmonic_fine_structure(mag: Tensor, half_width: int) -> Tensor:
    """The spectrum divided by its envelope: ``exp(log|X| − mean of log|X| over ±half_width
    bins)`` along frequency (``mag``: (F, T) linear STFT magnitude). What is left is the
    comb of harmonics at ``k·f0``, which a change of ``f0`` moves."""
    logm = torch.log(mag + 1e-4 * float(mag.max()))
    kernel = torch.ones(1, 1, 2 * half_width + 1, dtype=logm.dtype) / (2 * half_width + 1)
    padded = torch.nn.functional.pad(logm.T[:, None], (half_width, half_width), mode="replicate")
    envelope = torch.nn.functional.conv1d(padded, kernel)[:, 0].T
    return torch.exp(logm - envelope)


def espeak_pitch_pairs(low: Tensor, high: Tensor, *, n_fft: int = ANALYSIS["n_fft"],
                       hop: int = ANALYSIS["hop"], band=(80.0, 1000.0)) -> dict:
    """(b) with a real pitch change (espeak ``-p``: f0 only). Per pair of clips (the same
    word, voice and speed at two pitches), over the frames voiced in both: the best-shift
    correlation of the whole log spectrogram on each axis, and of its harmonic fine
    structure (:func:`harmonic_fine_structure`, envelope over ±125 Hz) in ``band``."""
    bank = log_filterbank(int(LOG_AXIS["bins_per_octave"] * math.log2(band[1] / band[0])), n_fft, RATE,
                          band[0], LOG_AXIS["bins_per_octave"]).float()
    rows = _band_rows("linear", n_fft, band)
    whole = _axes(torch.cat([low, high]), n_fft, hop)
    result = {f"{what}_{kind}": {"correlation": [], "shift": []}
              for what in ("whole", "harmonics") for kind in ("linear", "log")}
    half = round(125 / (RATE / n_fft))
    for i in range(len(low)):
        mags = [stft_magnitude(w[None], n_fft, hop)[0] for w in (low[i], high[i])]
        energy = [m.square().sum(0) for m in mags]
        voiced = (energy[0] > 0.1 * energy[0].max()) & (energy[1] > 0.1 * energy[1].max())
        fine = [harmonic_fine_structure(m, half)[:, voiced] for m in mags]
        views = {
            "whole_linear": [whole["linear"][i][:, voiced], whole["linear"][len(low) + i][:, voiced]],
            "whole_log": [whole["log"][i][:, voiced], whole["log"][len(low) + i][:, voiced]],
            "harmonics_linear": [torch.log(f[rows]) for f in fine],
            "harmonics_log": [0.5 * torch.log(bank @ f.square()) for f in fine],
        }
        for key, (a, b) in views.items():
            c, k, _ = best_shift_correlation(a, b, min(40, a.shape[0] // 2 - 1))
            result[key]["correlation"].append(c)
            result[key]["shift"].append(k)
    return result


def spectrogram_example(x: Tensor, semitones: float, n_fft: int = ANALYSIS["n_fft"], hop: int = 80) -> dict:
    """One clip and its pitch-shifted version on the three axes (log scale), as nested lists."""
    moved = torch.from_numpy(fit_length(pitch_shift(x, semitones)[0].numpy(), x.shape[-1], 1e-4)[0])[None]
    kw = {"linear": {}, "mel": {}, "log": dict(f_max=BAND[1], **LOG_AXIS)}
    views = {name: {kind: spectrogram(w, RATE, kind=kind, n_fft=n_fft, hop=hop, **kw[kind])[0, 0].tolist()
                    for kind in KINDS} for name, w in (("original", x), ("pitched", moved))}
    units = {"linear": f"bin ({RATE / n_fft:g} Hz)", "mel": "mel bin",
             "log": f"bin (1/{LOG_AXIS['bins_per_octave']} octave from {LOG_AXIS['f_min']:g} Hz)"}
    return {**views, "semitones": semitones, "hop_ms": 1000 * hop / RATE, "units": units}


# ----------------------------------------------------------------------------- (c) harmonics
def harmonic_tone(f0: float, partials: int, seconds: float, rate: float = RATE) -> Tensor:
    """``Σ_{k=1..partials} sin(2π k f0 t)`` / partials, as a ``(1, T)`` waveform."""
    t = torch.arange(int(round(seconds * rate)), dtype=torch.float64) / rate
    k = torch.arange(1, partials + 1, dtype=torch.float64)[:, None]
    return (torch.sin(2 * math.pi * k * f0 * t).sum(0) / partials)[None].float()


def translate_rows(spec: Tensor, k: int) -> Tensor:
    """Move a spectrum ``(F, …)`` up by ``k`` rows, zeros entering (``k < 0``: down)."""
    out = torch.zeros_like(spec)
    rows = spec.shape[0]
    if k >= 0:
        out[k:] = spec[:rows - k]
    else:
        out[:rows + k] = spec[-k:]
    return out


def spectral_peaks(column: Tensor, freqs: Tensor, count: int) -> list[float]:
    """The ``count`` strongest local maxima of a magnitude spectrum, in Hz, lowest first,
    each refined by a parabola through log-magnitudes at its bin and neighbours; between
    rows the frequency is interpolated geometrically on a log axis, linearly otherwise."""
    c = torch.log(column.double().clamp_min(1e-12))
    interior = torch.arange(1, len(c) - 1)
    peaks = interior[(c[1:-1] > c[:-2]) & (c[1:-1] >= c[2:])]
    top = peaks[torch.argsort(c[peaks], descending=True)[:count]].sort().values
    out = []
    geometric = bool(freqs[2] / freqs[1] - freqs[1] / freqs[0] < 1e-9) and float(freqs[0]) > 0
    for p in top.tolist():
        a, b, d = float(c[p - 1]), float(c[p]), float(c[p + 1])
        offset = 0.5 * (a - d) / (a - 2 * b + d) if a - 2 * b + d != 0 else 0.0
        lo, hi = float(freqs[p]), float(freqs[p + 1] if offset >= 0 else freqs[p - 1])
        frac = abs(offset)
        out.append(lo * (hi / lo) ** frac if geometric else lo + (hi - lo) * frac)
    return out


def harmonic_translation(f0: float = 250.0, shift_hz: float = 125.0, ratio: float = 1.5,
                         n_fft: int = 2048, hop: int = 80) -> dict:
    """(c): partials of ``f0, 2f0, 3f0`` measured on the linear axis before and after a
    translation by ``shift_hz``, on the log axis after a translation by ``b·log2(ratio)``
    bins (rounded), and after a real pitch change by ``ratio`` (resampling)."""
    x = harmonic_tone(f0, 3, 0.5)
    lin_f = frequency_axis("linear", rate=RATE, n_fft=n_fft)
    log_kw = dict(n_bins=120, **LOG_AXIS)
    log_f = frequency_axis("log", rate=RATE, n_fft=n_fft, **log_kw)
    lin = spectrogram(x, RATE, kind="linear", n_fft=n_fft, hop=hop, scale="magnitude")[0, 0].mean(-1)
    log = spectrogram(x, RATE, kind="log", n_fft=n_fft, hop=hop, scale="magnitude", **log_kw)[0, 0].mean(-1)
    k_lin = round(shift_hz / (RATE / n_fft))
    k_log = round(LOG_AXIS["bins_per_octave"] * math.log2(ratio))
    pitched = fit_length(pitch_shift(x.double(), 12 * math.log2(ratio))[0].numpy(), x.shape[-1], 1e-6)[0]
    real = spectrogram(torch.from_numpy(pitched)[None].float(), RATE, kind="linear", n_fft=n_fft, hop=hop,
                       scale="magnitude")[0, 0]
    real = real[:, 4:-4].mean(-1)                        # frames away from the cut ends
    peaks = {
        "original": spectral_peaks(lin, lin_f, 3),
        "linear translation": spectral_peaks(translate_rows(lin, k_lin), lin_f, 3),
        "log translation": spectral_peaks(translate_rows(log, k_log), log_f, 3),
        "real pitch change": spectral_peaks(real, lin_f, 3),
    }
    return {"f0": f0, "shift_hz": k_lin * RATE / n_fft, "log_shift_bins": k_log,
            "log_ratio": 2 ** (k_log / LOG_AXIS["bins_per_octave"]), "peaks_hz": peaks,
            "ratios": {name: [p / v[0] for p in v[1:]] for name, v in peaks.items()}}


# ----------------------------------------------------------------------------- (d) the CNN
def train_classifier(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, seed: int,
                     batch_size: int = 32, lr: float = 3e-3, log=print) -> nn.Module:
    """Adam on cross-entropy, seeded shuffles; returns the model in ``eval()``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f}")
    return model.eval()


@torch.inference_mode()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).double().mean())


def _layer_rows(result) -> list[dict]:
    return [{"layer": l.name, "kind": l.kind, "stride": l.stride, "comparison": l.comparison,
             "error_exact": l.error_exact, "error_other": l.error_other,
             "error": l.error} for l in result.layers]


def cnn_under_shifts(data, *, seed: int, epochs: int, reach: int, delays_ms: list[float],
                     semitones: list[float], log=print) -> dict:
    """(d): train ``audio-cnn`` on the training voices, then measure it on the held-out ones."""
    from ..audit import audit
    from ..data.speech import FRONT_END
    from ..models import create_model

    train, test = data.split(test_voices=max(1, len(set(data.voices)) // 4), seed=seed)
    front = lambda w: spectrogram(w, data.rate, **FRONT_END)        # noqa: E731
    hop = FRONT_END["hop"]
    # test clips get SILENCE_HOPS hops of silence on each side: shifted words stay on the canvas
    test_waves = torch.nn.functional.pad(test.waveforms, (SILENCE_HOPS * hop, SILENCE_HOPS * hop))
    x, xt = front(train.waveforms), front(test_waves)
    torch.manual_seed(seed)
    model = create_model("audio-cnn")
    log(f"training audio-cnn on {len(x)} log-mel spectrograms {tuple(x.shape[1:])} "
        f"({epochs} epochs); testing on {len(xt)} clips of {len(set(test.voices))} unseen voices")
    train_classifier(model, x, train.labels, epochs=epochs, seed=seed, log=log)
    clean = _accuracy(model, xt, test.labels)
    audits = {}
    for axis, spec in (("time", f"x=-{reach}:{reach}"), ("frequency", f"y=-{reach}:{reach}")):
        res = audit(model, (xt, test.labels), protocol="canvas", shifts=spec, pairs=0, seed=seed,
                    name=f"audio-cnn along {axis}")
        audits[axis] = {"shifts": list(range(-reach, reach + 1)), "accuracy": res.invariance.accuracy,
                        "clean_accuracy": res.invariance.clean_accuracy, "layers": _layer_rows(res)}
    delay_acc = []
    for ms in delays_ms:
        d = int(round(ms * data.rate / 1000))
        moved = delay(test_waves, d) if d >= 0 else torch.nn.functional.pad(test_waves[:, -d:], (0, -d))
        delay_acc.append(_accuracy(model, front(moved), test.labels))
    pitch_acc = []
    for s in semitones:
        moved = torch.stack([torch.from_numpy(fit_length(m.numpy(), test_waves.shape[-1], 1e-4)[0])
                             for m in pitch_shift(test.waveforms, s)]) if s else test_waves
        pitch_acc.append(_accuracy(model, front(moved), test.labels))
    return {"clean_accuracy": clean, "train_clips": len(x), "test_clips": len(xt),
            "test_voices": sorted(set(test.voices)), "input_shape": list(x.shape[1:]),
            "audits": audits, "delays_ms": delays_ms, "delay_accuracy": delay_acc,
            "hop_ms": 1000 * hop / data.rate, "semitones": semitones, "pitch_accuracy": pitch_acc}


# ----------------------------------------------------------------------------- compute
def _settings(seed: int, quick: bool) -> dict:
    return dict(seed=seed, quick=quick, rate=RATE,
                data=dict(voices=8, takes=3) if quick else dict(voices=16, takes=8),
                epochs=10 if quick else 5, reach=8,
                delays=list(range(0, 3 * 80 + 1, 20 if quick else 10)),
                semitones_b=[-4, -2, 2, 4],
                pitch_pairs=4 if quick else 20,
                delays_ms=list(range(-80, 81, 20)) if quick else list(range(-80, 81, 5)),
                semitones_d=[-4, -2, 0, 2, 4] if quick else list(range(-6, 7)))


def compute(*, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Every number of the experiment, as plain data (lists, floats, strings)."""
    from ..data.speech import VOICES, espeak_path, render_clips, spoken_digits
    import time
    s = _settings(seed, quick)
    timings, clock = {}, time.perf_counter()

    def lap(part: str) -> None:
        nonlocal clock
        timings[part] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    voices = list(VOICES[:s["data"]["voices"]])
    data = spoken_digits(seed=seed, voices=voices, takes=s["data"]["takes"], log=log)
    engine = data.meta["engine"]
    log(f"data: {len(data)} clips, {data.meta['source']}")
    lap("data")

    log("(a) time shifts by multiples of the hop and in between")
    clips = 4 if quick else 8
    sample = data.waveforms[:: max(1, len(data) // clips)][:clips]
    a = time_shift_errors(sample, RATE, s["delays"], n_fft=256, hop=80)
    lap("a")

    log("(b) pitch: resampling, and espeak's -p, on the linear and the log-frequency axis")
    b_resample = pitch_translation(sample, s["semitones_b"])
    rng = np.random.default_rng(seed)
    pairs = [(int(rng.integers(10)), voices[int(rng.integers(len(voices)))]) for _ in range(s["pitch_pairs"])]
    low, _ = render_clips([(d, v, 160, 30) for d, v in pairs], engine=engine, voices=voices, seed=seed)
    high, _ = render_clips([(d, v, 160, 70) for d, v in pairs], engine=engine, voices=voices, seed=seed)
    b_espeak = espeak_pitch_pairs(torch.from_numpy(low).float(), torch.from_numpy(high).float())

    example = spectrogram_example(sample[:1], 4.0)
    lap("b")

    log("(c) a harmonic tone translated along linear and log frequency")
    c = harmonic_translation()
    lap("c")

    log("(d) a CNN on log-mel spectrograms under time, frequency and pitch shifts")
    d = cnn_under_shifts(data, seed=seed, epochs=s["epochs"], reach=s["reach"], delays_ms=s["delays_ms"],
                         semitones=s["semitones_d"], log=log)
    lap("d")
    return {"settings": s, "data": {"clips": len(data), "source": data.meta["source"], "engine": engine,
                                    "espeak_installed": espeak_path() is not None},
            "a": {"delays": s["delays"], "hop": 80, "n_fft": 256, "errors": a},
            "b": {"semitones": s["semitones_b"], "resample": b_resample,
                  "espeak_pitch": {"pitches": [30, 70], "pairs": [[digit, v] for digit, v in pairs], **b_espeak}},
            "c": c, "d": d, "example": example, "seconds_per_part": timings}


# ----------------------------------------------------------------------------- draw
def draw(data: dict, out: str | Path) -> list[Path]:
    """The experiment's figures (PNG + SVG) from :func:`compute`'s data; returns the PNGs."""
    from ..viz import new_figure, save_figure
    out = Path(out)
    pngs = []

    example = data.get("example")
    if example is not None:
        fig, axes = new_figure(3, 2, size=(3.4, 2.4))
        for row, (version, title) in enumerate((("original", "as spoken"),
                                                ("pitched", f"+{example['semitones']:g} semitones"))):
            for col, kind in enumerate(KINDS):
                image = np.array(example[version][kind])
                axes[row, col].imshow(image, origin="lower", aspect="auto", cmap="magma",
                                      extent=(0, image.shape[1] * example["hop_ms"], 0, image.shape[0]))
                axes[row, col].set_title(f"{kind} axis, {title}", fontsize=9)
                axes[row, col].set_ylabel(example["units"][kind], fontsize=8)
                axes[row, col].grid(False)
                if row == 1:
                    axes[row, col].set_xlabel("time (ms)")
        pngs += [p for p in save_figure(fig, out, "time-vs-frequency-spectrograms") if p.suffix == ".png"]

    a, c = data["a"], data["c"]
    fig, axes = new_figure(2, 1, size=(4.6, 3.3))
    hop = a["hop"]
    for kind, errors in a["errors"].items():
        axes[0].semilogy(a["delays"], [max(e, 1e-9) for e in errors], "o-", ms=3, label=kind)
    for j in range(0, max(a["delays"]) // hop + 1):
        axes[0].axvline(j * hop, color="k", lw=0.6, ls=":")
    axes[0].set_xlabel(f"waveform delay (samples; hop = {hop})")
    axes[0].set_ylabel("‖S(delayed) − S shifted‖ / ‖S‖ (the law)")
    axes[0].set_title("(a) time: exact at multiples of the hop", fontsize=10)
    axes[0].legend(fontsize=8)
    for name, marker in (("original", "o"), ("linear translation", "s"), ("log translation", "^"),
                         ("real pitch change", "x")):
        peaks = c["peaks_hz"][name]
        axes[1].plot(peaks, [name] * len(peaks), marker, ms=7, ls="-",
                     label=f"{name}: ratios {', '.join(f'{r:.2f}' for r in c['ratios'][name])}")
    axes[1].set_xlabel("partial frequency (Hz)")
    axes[1].set_title(f"(c) partials of f0 = {c['f0']:g} Hz after a shift", fontsize=10)
    axes[1].legend(fontsize=7, loc="lower right")
    pngs += [p for p in save_figure(fig, out, "time-vs-frequency-axes") if p.suffix == ".png"]

    b = data["b"]
    fig, axes = new_figure(2, 1, size=(4.6, 3.3))
    res = b["resample"]
    for kind, color in (("linear", "C0"), ("log", "C1")):
        corr = np.array(res[kind]["correlation"])
        axes[0].errorbar(b["semitones"], corr.mean(1), yerr=corr.std(1), fmt="o-", color=color, ms=4,
                         capsize=3, label=f"{kind} axis")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_xlabel("pitch change by resampling (semitones)")
    axes[0].set_ylabel("best-shift correlation")
    axes[0].set_title("(b) a pitch change is a translation only on a log axis", fontsize=10)
    axes[0].legend(fontsize=8)
    ep = b["espeak_pitch"]
    labels = ["whole\nlinear", "whole\nlog", "harmonics\nlinear", "harmonics\nlog"]
    keys = ["whole_linear", "whole_log", "harmonics_linear", "harmonics_log"]
    values = [ep[k]["correlation"] for k in keys]
    axes[1].boxplot(values, tick_labels=labels)
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("best-shift correlation")
    axes[1].set_title(f"(b) espeak -p {ep['pitches'][0]} vs {ep['pitches'][1]} (f0 only)", fontsize=10)
    pngs += [p for p in save_figure(fig, out, "time-vs-frequency-pitch") if p.suffix == ".png"]

    d = data["d"]
    fig, axes = new_figure(2, 2, size=(4.6, 3.2))
    axes = axes.flatten()
    layers = [l["layer"] for l in d["audits"]["time"]["layers"]]
    pos = np.arange(len(layers))
    floor = 1e-9                                         # exact zeros drawn at the floor
    bars = (("time", "error_exact", -0.27, "C0", "", "time, multiples of the stride"),
            ("time", "error_other", 0.0, "C0", "//", "time, other shifts (nearest alignment)"),
            ("frequency", "error_exact", 0.27, "C3", "", "frequency, multiples of the stride"))
    for axis, key, offset, color, hatch, label in bars:
        errs = [l[key] if l[key] is not None else 0.0 for l in d["audits"][axis]["layers"]]
        axes[0].bar(pos + offset, np.maximum(errs, floor), width=0.27, color=color, hatch=hatch,
                    alpha=0.5 if hatch else 1.0, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylim(floor / 2, 1e4)                     # room for the legend above the bars
    axes[0].set_xticks(pos, layers, rotation=60, fontsize=7)
    axes[0].set_ylabel("relative error (1e-9 = exactly 0)")
    axes[0].set_title("(d) per-layer error of audio-cnn", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper left")
    t, f = d["audits"]["time"], d["audits"]["frequency"]
    axes[1].plot([k * d["hop_ms"] for k in t["shifts"]], t["accuracy"], "o-", ms=3,
                 label=f"spectrogram frames (× {d['hop_ms']:g} ms)")
    axes[1].plot(d["delays_ms"], d["delay_accuracy"], "x", ms=4, label="waveform delay")
    axes[1].set_xlabel("time shift (ms)")
    axes[1].set_title("(d) accuracy under time shifts", fontsize=10)
    axes[2].plot(f["shifts"], f["accuracy"], "s-", ms=3, color="C3")
    axes[2].set_xlabel("frequency shift (mel bins)")
    axes[2].set_title("(d) accuracy under mel-bin shifts", fontsize=10)
    axes[3].plot(d["semitones"], d["pitch_accuracy"], "^-", ms=3, color="C2")
    axes[3].set_xlabel("pitch shift by resampling (semitones)")
    axes[3].set_title("(d) accuracy under pitch shifts", fontsize=10)
    for ax in axes[1:]:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy, unseen voices")
    axes[1].legend(fontsize=7, loc="lower center")
    pngs += [p for p in save_figure(fig, out, "time-vs-frequency-cnn") if p.suffix == ".png"]
    return pngs


# ----------------------------------------------------------------------------- claims, run
def _mean(values) -> float:
    return float(np.mean(values))


def claims_and_rows(n: dict) -> tuple[dict, list[str], list[list], dict]:
    """The claims checked, the table and the headline numbers, from :func:`compute`'s data."""
    a, b, c, d = n["a"], n["b"], n["c"], n["d"]
    hop = a["hop"]
    exact = [e for kind in a["errors"].values() for dl, e in zip(a["delays"], kind) if dl % hop == 0]
    other = [e for kind in a["errors"].values() for dl, e in zip(a["delays"], kind) if dl % hop]
    res = b["resample"]
    corr = {k: _mean(res[k]["correlation"]) for k in ("linear", "log")}
    log_shift_right = _mean([[s == e for s in row] for row, e in zip(res["log"]["shift"], res["expected_log_shift"])])
    ep = b["espeak_pitch"]
    ep_mean = {k: _mean(ep[k]["correlation"]) for k in ("whole_linear", "whole_log", "harmonics_linear", "harmonics_log")}
    harmonics_better = _mean([l > q for l, q in zip(ep["harmonics_log"]["correlation"],
                                                    ep["harmonics_linear"]["correlation"])])
    ratios = c["ratios"]
    t, f = d["audits"]["time"], d["audits"]["frequency"]
    reach = max(t["shifts"])
    clean = t["clean_accuracy"]
    worst_time = min(t["accuracy"])
    far_freq = [acc for k, acc in zip(f["shifts"], f["accuracy"]) if abs(k) == reach]
    worst_delay = min(d["delay_accuracy"])
    pitch_far = [acc for s, acc in zip(d["semitones"], d["pitch_accuracy"]) if abs(s) == 4]
    freq_far = _mean(far_freq)
    layer_time = {l["layer"]: l for l in t["layers"]}
    layer_freq = {l["layer"]: l for l in f["layers"]}
    convs = [name for name, l in layer_time.items() if l["kind"] == "Conv2d"]
    stride = layer_time["output"]["stride"]              # the largest stride before the pooling
    out_time, out_freq = layer_time["output"]["error_exact"], layer_freq["output"]["error_exact"]
    claims = {
        "(a) a delay by a multiple of the hop moves linear, mel and log spectrograms exactly along "
        "time (the law's relative error < 1e-5 on the interior frames)": max(exact) < 1e-5,
        "(a) other delays are not translations of the frames (relative error > 1e-2)": min(other) > 1e-2,
        "(b) a pitch change by resampling (±2, ±4 semitones) is close to a translation on the "
        "log-frequency axis (mean best-shift correlation r > 0.9) and not on the linear axis "
        "(misfit 1 - r at least 5 times larger)":
            corr["log"] > 0.9 and 1 - corr["linear"] >= 5 * (1 - corr["log"]),
        "(b) on the log axis the best shift is the predicted b·s/12 bins for at least 90 % of "
        "the clips": log_shift_right >= 0.9,
        "(b) a change of the voice's pitch alone (espeak -p: f0 moves, formants stay): its harmonic "
        "comb correlates better after a shift on the log axis than on the linear one, for at least "
        "75 % of the pairs": harmonics_better >= 0.75,
        "(c) translating a linear spectrum moves partials f, 2f, 3f to f+Δ, 2f+Δ, 3f+Δ: ratios "
        "no longer 2 and 3 (off by > 0.1), while a log-axis translation keeps them (within 0.02)":
            all(abs(r - k) > 0.1 for r, k in zip(ratios["linear translation"], (2, 3)))
            and all(abs(r - k) < 0.02 for r, k in zip(ratios["log translation"], (2, 3))),
        f"(d) time shifts by multiples of the CNN's total stride ({stride} frames) change no "
        f"prediction, and over all time shifts within ±{reach} frames the mean accuracy stays "
        "within 3 points of clean": all(acc == clean for k, acc in zip(t["shifts"], t["accuracy"])
                                        if k % stride == 0) and clean - _mean(t["accuracy"]) <= 0.03,
        "(d) over waveform delays of any number of samples up to ±80 ms the mean accuracy stays "
        "within 3 points of clean": clean - _mean(d["delay_accuracy"]) <= 0.03,
        f"(d) mel-bin shifts of ±{reach} bins cost more than 20 points of accuracy (mean of both signs)":
            clean - freq_far > 0.20,
        "(d) pitch shifts of ±4 semitones cost more than 10 points of accuracy (mean of both signs)":
            clean - _mean(pitch_far) > 0.10,
        "(d) every conv layer is equivariant along time at multiples of its stride (error < 1e-5), "
        "and the output is invariant along time but not along frequency (error at least 100x larger)":
            all(layer_time[name]["error_exact"] < 1e-5 for name in convs)
            and out_freq > 100 * max(out_time, 1e-12),
    }
    columns = ["measurement", "time axis", "linear frequency", "log frequency / mel"]
    rows = [
        ["(a) max rel. error, delay = multiple of hop", max(exact), "", ""],
        ["(a) min rel. error, other delays", min(other), "", ""],
        ["(b) resampling: best-shift correlation", "", corr["linear"], corr["log"]],
        ["(b) espeak -p: correlation, whole spectrogram", "", ep_mean["whole_linear"], ep_mean["whole_log"]],
        ["(b) espeak -p: correlation, harmonic comb", "", ep_mean["harmonics_linear"], ep_mean["harmonics_log"]],
        ["(c) partial ratios after a shift (ideal 2, 3)", "",
         ", ".join(f"{r:.3f}" for r in ratios["linear translation"]),
         ", ".join(f"{r:.3f}" for r in ratios["log translation"])],
        ["(d) clean accuracy (unseen voices)", clean, "", ""],
        [f"(d) worst accuracy, shifts within ±{reach}", worst_time, "", min(f["accuracy"])],
        [f"(d) accuracy at ±{reach} (mel) bins", "", "", _mean(far_freq)],
        ["(d) mean accuracy over time shifts within ±8", _mean(t["accuracy"]), "", _mean(f["accuracy"])],
        ["(d) worst accuracy, waveform delays ±80 ms", worst_delay, "", ""],
        ["(d) mean accuracy, waveform delays ±80 ms", _mean(d["delay_accuracy"]), "", ""],
        ["(d) accuracy at ±4 semitones (resampling)", "", "", _mean(pitch_far)],
        ["(d) output error (exact shifts)", out_time, "", out_freq],
    ]
    headline = {"a_max_error_hop_multiple": max(exact), "a_min_error_other": min(other),
                "b_resample_correlation": corr, "b_log_shift_as_predicted": log_shift_right,
                "b_espeak_pitch_correlation": ep_mean, "b_espeak_harmonics_log_better": harmonics_better,
                "c_ratios": ratios, "d_clean_accuracy": clean, "d_worst_time_accuracy": worst_time,
                "d_frequency_accuracy_at_reach": _mean(far_freq), "d_worst_delay_accuracy": worst_delay,
                "d_mean_time_accuracy": _mean(t["accuracy"]), "d_mean_frequency_accuracy": _mean(f["accuracy"]),
                "d_mean_delay_accuracy": _mean(d["delay_accuracy"]),
                "d_pitch_accuracy_at_4_semitones": _mean(pitch_far),
                "d_output_error": {"time": out_time, "frequency": out_freq},
                "d_conv_frequency_error": [layer_freq[name]["error_exact"] for name in convs],
                "d_conv_time_error": [layer_time[name]["error_exact"] for name in convs]}
    return claims, columns, rows, headline


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    return claims_and_rows(data)[0]


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    claimed, columns, rows, headline = claims_and_rows(data)
    h = headline
    espeak = data["data"]["engine"] == "espeak-ng"
    source = "espeak-ng" if espeak else "SYNTHETIC formant vowels (espeak-ng missing)"
    synth = "espeak" if espeak else "the synthesizer"
    summary = (f"Spoken digits ({source}). Delaying a waveform by a multiple of the hop moves its spectrogram "
               f"exactly along time (error {h['a_max_error_hop_multiple']:.0e}); a pitch change by resampling "
               f"is a translation on a log-frequency axis (best-shift correlation "
               f"{h['b_resample_correlation']['log']:.2f}) but not on the linear axis "
               f"({h['b_resample_correlation']['linear']:.2f}); {synth}'s own pitch control moves only f0, "
               f"so only the harmonic comb translates on the log axis (correlation "
               f"{h['b_espeak_pitch_correlation']['harmonics_log']:.2f} vs "
               f"{h['b_espeak_pitch_correlation']['harmonics_linear']:.2f} linear), not the formants. "
               f"Translating a linear spectrum "
               f"breaks the partials' ratios 2 and 3 "
               f"({', '.join(f'{r:.2f}' for r in h['c_ratios']['linear translation'])}). "
               f"A CNN that pools over time keeps at least {h['d_worst_time_accuracy']:.0%} accuracy (clean "
               f"{h['d_clean_accuracy']:.0%}) under time shifts, but drops to "
               f"{h['d_frequency_accuracy_at_reach']:.0%} under mel-bin shifts of 8 and "
               f"{h['d_pitch_accuracy_at_4_semitones']:.0%} under pitch shifts of 4 semitones: speech is "
               "shift-invariant along time, not along frequency. Its convolutions are equivariant along "
               "both axes, exactly so along time (error 0 at multiples of the stride, since words sit in "
               "silence); along frequency the audit sees the band's edges, where a shifted spectrum loses "
               f"rows (error {h['d_conv_frequency_error'][0]:.2f} at the first conv, "
               f"{h['d_conv_frequency_error'][-1]:.2f} at the last), and the head, which reads which band "
               f"a feature is in, takes the output to {h['d_output_error']['frequency']:.2f}.")
    return ExperimentResult(
        name="time-vs-frequency",
        title="Speech: shift-invariant along time, not along frequency",
        summary=summary, columns=columns, rows=rows, claims=claimed,
        figures=[p.name for p in figures],
        numbers={**headline, "details": {k: v for k, v in data.items() if k != "example"}},
        settings=data["settings"])


def run(out: Path, *, seed: int = 0, quick: bool = False, log=print) -> ExperimentResult:
    """Compute, save the data, draw, and state the claims."""
    data = compute(seed=seed, quick=quick, log=log)
    save_data(data, out, "time-vs-frequency")
    return summarise(data, draw(data, out))
