"""Spoken digits made here: "zero" … "nine" spoken by espeak-ng, stored once like MNIST.

:func:`spoken_digits` renders every (word, voice, speed, pitch) of a seeded list with
espeak-ng (Debian package ``espeak-ng``; set up with ``apt-get install -y espeak-ng``),
reads each WAV with Python's :mod:`wave`, trims its silence, centres it in ``seconds``,
resamples it to ``rate`` (:func:`~shiftlab.data.audio.resample`), scales its peak to 0.5
and stores the exact int16 samples, labels and generation parameters in an ``.npz``
(written atomically, with fixed zip timestamps: the same settings give the same bytes).
Later calls read that file. Without espeak-ng it says so once and renders the same list
as synthetic formant vowels (:mod:`shiftlab.data.vowels`); the file's ``meta`` says which,
and so does an audit's ``provenance.data`` (:func:`data_record`: ``synthetic``, ``made_by``).

The list: for each voice and word, ``takes`` draws of speed (words per minute, espeak
``-s``) and pitch (espeak ``-p``, 0–99, 50 normal) from a generator seeded by ``seed``.
Voices are espeak-ng's English voices with its built-in variants (``+m1`` … ``+f4``).

Files: ``$SHIFTLAB_DATA`` or ``./data``; the default settings are stored as
``spoken-digits.npz``, other settings as ``spoken-digits-HASH.npz`` (so a small test set
never replaces the full one); an existing file in any of shiftlab's data folders is used.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError
from ..io import atomic_path, check_writable
from .audio import fit_length, read_wav, resample
from .loaded import Loaded
from .mnist import data_dirs
from .vowels import synthetic_voice, synthetic_word

__all__ = ["WORDS", "VOICES", "ESPEAK_INSTALL", "SpokenDigits", "spoken_digits", "espeak_path",
           "render_espeak", "render_clips", "clip_list", "write_npz_exact", "FRONT_END",
           "load_spoken_digits", "data_record"]

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en-us+m1", "en-us+m3", "en-us+m5", "en-us+m7", "en-us+f1", "en-us+f3",
          "en-gb+m2", "en-gb+m4", "en-gb+m6", "en-gb+f2", "en-gb+f4", "en-gb-scotland+m3",
          "en-gb-x-rp+m5", "en-029+m2", "en-gb-x-gbclan+f1", "en-gb-x-gbcwmd+m4")
SPEEDS = (120, 200)          # espeak -s range (words per minute), inclusive
PITCHES = (20, 80)           # espeak -p range, inclusive
ESPEAK_INSTALL = "apt-get install -y espeak-ng"
FILENAME = "spoken-digits"
FORMAT = 1                   # bump when the stored content changes
DEFAULTS = dict(seed=0, rate=8000, seconds=0.8, voices=list(VOICES), takes=8)
#: the spectrogram front end the zoo's audio models and the CLI's data spec use
FRONT_END = dict(kind="mel", n_fft=256, hop=80, n_bins=40, scale="log", ref=0.01)

_warned_missing = False


@dataclass
class SpokenDigits:
    """Waveforms ``(N, L)`` float32 in [-1, 1], labels ``(N,)`` int64 (the digit), and for
    each clip its voice, speed and pitch; ``meta`` holds the generation settings and
    ``meta["source"]`` says whether espeak-ng or the synthetic fallback made them."""
    waveforms: Tensor
    labels: Tensor
    voices: list[str]
    speeds: np.ndarray
    pitches: np.ndarray
    rate: int
    meta: dict = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.meta.get("engine") == "synthetic"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "SpokenDigits":
        index = np.asarray(index, dtype=np.int64)
        return SpokenDigits(self.waveforms[index], self.labels[index], [self.voices[i] for i in index],
                            self.speeds[index], self.pitches[index], self.rate, dict(self.meta))

    def split(self, test_voices: int = 4, seed: int = 0) -> tuple["SpokenDigits", "SpokenDigits"]:
        """(train, test): ``test_voices`` whole voices, drawn by ``seed``, are held out."""
        names = sorted(set(self.voices))
        if not 1 <= test_voices < len(names):
            raise ShiftlabError(f"test_voices must be between 1 and {len(names) - 1} for "
                                f"{len(names)} voices, got {test_voices}")
        order = np.random.default_rng(seed).permutation(len(names))
        held = {names[i] for i in order[:test_voices]}
        is_test = np.array([v in held for v in self.voices])
        return self.subset(np.flatnonzero(~is_test)), self.subset(np.flatnonzero(is_test))


# ----------------------------------------------------------------------------- the list
def clip_list(seed: int, voices, takes: int) -> list[tuple[int, str, int, int]]:
    """The seeded list of ``(digit, voice, speed, pitch)``: voices in order, words in order,
    ``takes`` draws of speed and pitch each."""
    rng = np.random.default_rng(seed)
    clips = []
    for voice in voices:
        for digit in range(len(WORDS)):
            speeds = rng.integers(SPEEDS[0], SPEEDS[1] + 1, size=takes)
            pitches = rng.integers(PITCHES[0], PITCHES[1] + 1, size=takes)
            clips += [(digit, voice, int(s), int(p)) for s, p in zip(speeds, pitches)]
    return clips


# ----------------------------------------------------------------------------- espeak-ng
def espeak_path() -> str | None:
    """The ``espeak-ng`` program on ``PATH``, or None."""
    return shutil.which("espeak-ng")


def espeak_version(program: str) -> str:
    try:
        done = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "espeak-ng"
    return (done.stdout.strip().splitlines() or ["espeak-ng"])[0].split(" Data at")[0].strip()


def render_espeak(word: str, voice: str, speed: int, pitch: int, *, program: str | None = None,
                  folder: str | Path | None = None, timeout: float = 20.0) -> tuple[np.ndarray, int]:
    """Speak ``word`` with espeak-ng into a temporary WAV file and read it back:
    ``(float32 samples, sample rate)``. Every failure is a one-line :class:`ShiftlabError`."""
    program = program or espeak_path()
    if program is None:
        raise ShiftlabError(f"espeak-ng is not installed; {ESPEAK_INSTALL}")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        wav = Path(tmp) / "word.wav"
        cmd = [program, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", str(wav), word]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ShiftlabError(f"espeak-ng took over {timeout:g} s on {word!r} (voice {voice}); "
                                "is the machine overloaded?") from None
        except OSError as err:
            raise ShiftlabError(f"cannot run {program}: {err.strerror or err}") from None
        if done.returncode != 0 or not wav.is_file():
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ShiftlabError(f"espeak-ng failed on {word!r} with voice {voice}: {why}")
        samples, rate = read_wav(wav)
    if len(samples) == 0 or not np.abs(samples).max() > 0:
        raise ShiftlabError(f"espeak-ng produced silence for {word!r} with voice {voice}; "
                            "is the voice installed (espeak-ng --voices=en)?")
    return samples, rate


def _render_all_espeak(clips, program: str, rate: int, seconds: float) -> tuple[np.ndarray, int]:
    """Every clip spoken (4 espeak processes at a time), centred at espeak's rate, then
    resampled together to ``rate``: ``(N, seconds·rate + margin)`` float64 and the samples cut."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=4) as pool:
        spoken = list(pool.map(lambda c: render_espeak(WORDS[c[0]], c[1], c[2], c[3], program=program,
                                                       folder=tmp), clips))
    source_rate = spoken[0][1]
    if any(r != source_rate for _, r in spoken):
        raise ShiftlabError("espeak-ng wrote WAV files at different sample rates")
    long = int(round(seconds * source_rate)) + 64
    centred = [fit_length(x, long) for x, _ in spoken]
    x = torch.from_numpy(np.stack([c[0] for c in centred]).astype(np.float64))
    return resample(x, source_rate, rate).numpy(), sum(c[1] for c in centred)


def _synthetic_clip(clip, voices, rate: int, seed: int) -> np.ndarray:
    """One clip as a synthetic formant vowel (its own seeded generator: order-independent)."""
    digit, voice, speed, pitch = clip
    index = list(voices).index(voice)
    tract, f0 = synthetic_voice(index, len(voices))
    rng = np.random.default_rng([seed, digit, index, speed, pitch])
    return synthetic_word(digit, tract=tract, f0=f0 * 2.0 ** ((pitch - 50) / 50),
                          seconds=0.45 * 160.0 / speed, rate=rate, rng=rng)   # slower: longer


def render_clips(clips, *, rate: int = 8000, seconds: float = 0.8, engine: str = "espeak-ng",
                 voices=VOICES, seed: int = 0) -> tuple[np.ndarray, int]:
    """``(digit, voice, speed, pitch)`` clips → ``(N, seconds·rate)`` float64 waveforms (silence
    trimmed, centred, peak 0.5) and the number of samples cut from clips that were too long.
    ``engine``: ``"espeak-ng"`` or ``"synthetic"`` (``voices`` and ``seed`` shape those)."""
    clips = [(int(d), str(v), int(s), int(p)) for d, v, s, p in clips]
    length = int(round(seconds * rate))
    if engine == "espeak-ng":
        program = espeak_path()
        if program is None:
            raise ShiftlabError(f"espeak-ng is not installed; {ESPEAK_INSTALL}")
        audio, cut = _render_all_espeak(clips, program, rate, seconds)
    elif engine == "synthetic":
        audio, cut = [_synthetic_clip(c, voices, rate, seed) for c in clips], 0
    else:
        raise ShiftlabError(f"engine must be espeak-ng or synthetic, got {engine!r}")
    fitted = [fit_length(np.asarray(x, dtype=np.float64), length, threshold=1e-4) for x in audio]
    audio = np.stack([f[0] for f in fitted])
    return 0.5 * audio / np.abs(audio).max(axis=1, keepdims=True), cut + sum(f[1] for f in fitted)


# ----------------------------------------------------------------------------- files
def _settings(seed, rate, seconds, voices, takes, engine) -> dict:
    return dict(seed=int(seed), rate=int(rate), seconds=float(seconds), voices=list(voices),
                takes=int(takes), engine=engine, format=FORMAT)


def _file_name(settings: dict) -> str:
    if {k: settings[k] for k in DEFAULTS} == DEFAULTS and settings["engine"] == "espeak-ng":
        return f"{FILENAME}.npz"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{FILENAME}-{digest}.npz"


def write_npz_exact(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """An ``.npz`` whose bytes depend only on ``arrays`` (fixed zip timestamps), written atomically."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for key, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, buf.getvalue())
    return Path(path)


def _read(path: Path, settings: dict) -> SpokenDigits:
    try:
        with np.load(path, allow_pickle=False) as f:
            wave16, labels = f["waveforms"], f["labels"]
            voices, speeds, pitches = f["voices"], f["speeds"], f["pitches"]
            meta = json.loads(str(f["meta"].reshape(-1)[0]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ShiftlabError(f"{path} is corrupt ({type(err).__name__}); delete it and it will be "
                            "made again") from None
    n = len(labels)
    length = int(round(settings["seconds"] * settings["rate"]))
    if (wave16.dtype != np.int16 or wave16.shape != (n, length) or len(voices) != n
            or len(speeds) != n or len(pitches) != n or labels.max(initial=0) >= len(WORDS)):
        raise ShiftlabError(f"{path} does not hold {length}-sample spoken digits; delete it and it "
                            "will be made again")
    return SpokenDigits(torch.from_numpy(wave16.astype(np.float32) / 32768.0),
                        torch.from_numpy(labels.astype(np.int64)), [str(v) for v in voices],
                        speeds.astype(np.int64), pitches.astype(np.int64), int(meta["rate"]), meta)


def spoken_digits(path: str | Path | None = None, *, seed: int = 0, rate: int = 8000,
                  seconds: float = 0.8, voices=VOICES, takes: int = 8, engine: str = "auto",
                  refresh: bool = False, log=print) -> SpokenDigits:
    """The spoken-digit set: read from ``path`` (default: see the module doc) or made once.

    Args:
        seed: seeds the list of speeds and pitches (and the synthetic voices' vibrato).
        rate, seconds: sample rate (Hz) and length of every clip.
        voices, takes: espeak-ng voice names, and clips per (voice, word).
        engine: ``"auto"`` (espeak-ng if installed, else synthetic), ``"espeak-ng"`` or
            ``"synthetic"``.
        refresh: make the file again even if it exists.
        log: where the one-line notes go (making, the fallback).
    """
    global _warned_missing
    voices = list(voices)
    if engine not in ("auto", "espeak-ng", "synthetic"):
        raise ShiftlabError(f"engine must be auto, espeak-ng or synthetic, got {engine!r}")
    if not (isinstance(rate, int) and 1000 <= rate <= 48000):
        raise ShiftlabError(f"rate must be an integer number of Hz in [1000, 48000], got {rate!r}")
    if not (0.1 <= seconds <= 5.0) or not isinstance(takes, int) or takes < 1 or not voices:
        raise ShiftlabError(f"need 0.1 <= seconds <= 5, takes >= 1 and at least one voice, got "
                            f"{seconds!r}, {takes!r}, {len(voices)} voices")
    program = espeak_path() if engine != "synthetic" else None
    if program is None and engine == "espeak-ng":
        raise ShiftlabError(f"espeak-ng is not installed; {ESPEAK_INSTALL}, or use engine='synthetic'")
    used = "espeak-ng" if program else "synthetic"
    settings = _settings(seed, rate, seconds, voices, takes, used)
    name = _file_name(settings)
    if path is None:
        found = [d / name for d in data_dirs() if (d / name).is_file()]
        target = Path(os.environ.get("SHIFTLAB_DATA") or Path.cwd() / "data") / name
        path = found[0] if found and not refresh else target
    path = Path(path)
    if path.is_file() and not refresh:
        data = _read(path, settings)
        if {k: data.meta.get(k) for k in settings} == settings:
            return data
        log(f"{path} was made with other settings; making it again")
    if used == "synthetic" and engine == "auto" and not _warned_missing:
        log(f"espeak-ng not found ({ESPEAK_INSTALL}); using synthetic formant vowels instead of speech")
        _warned_missing = True
    check_writable(path)                                  # fail before the minute of rendering
    clips = clip_list(seed, voices, takes)
    log(f"making {len(clips)} spoken digits with {used} into {path} …")
    audio, cut = render_clips(clips, rate=rate, seconds=seconds, engine=used, voices=voices, seed=seed)
    source = espeak_version(program) if used == "espeak-ng" else \
        "synthetic formant vowels (espeak-ng not installed), not speech"
    wave16 = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
    meta = dict(settings, source=source, words=list(WORDS), length=int(round(seconds * rate)),
                samples_cut=int(cut), speed_unit="words per minute (espeak -s)",
                pitch_unit="espeak -p (0-99, 50 normal)")
    if used == "synthetic":
        meta.update(speed_unit="word lasts 0.45 s x 160 / speed",
                    pitch_unit="f0 = the voice's f0 x 2^((pitch - 50) / 50)")
    arrays = dict(waveforms=wave16, labels=np.array([c[0] for c in clips], dtype=np.uint8),
                  voices=np.array([c[1] for c in clips]), speeds=np.array([c[2] for c in clips], np.int16),
                  pitches=np.array([c[3] for c in clips], np.int16), meta=np.array(json.dumps(meta, sort_keys=True)))
    write_npz_exact(path, arrays)
    return _read(path, settings)


def load_spoken_digits(split: str = "test", seed: int = 0, log=print, **settings) -> Loaded:
    """The set as ``(N×1×F×T log-mel spectrograms, labels)`` (:data:`FRONT_END`), for a
    ``spoken-digits[:train|test]`` data spec: ``test`` holds a quarter of the voices (at least
    one), drawn by ``seed``, ``train`` the rest. ``settings`` go to :func:`spoken_digits`.
    The record (:func:`data_record`) says whether the clips are speech."""
    from ..spectrogram import spectrogram
    if split not in ("train", "test"):
        raise ShiftlabError(f"spoken-digits has splits train and test, not {split!r}")
    data = spoken_digits(seed=seed, log=log, **settings)
    part = data.split(max(1, len(set(data.voices)) // 4), seed)[0 if split == "train" else 1]
    return Loaded(spectrogram(part.waveforms, part.rate, **FRONT_END), part.labels,
                  data_record(part, f"spoken-digits:{split}", split, front_end=dict(FRONT_END)))


def data_record(data: SpokenDigits, source: str, split: str, **extra) -> dict:
    """What a result records of spoken digits read by the data spec ``source``: above all
    whether they are speech (espeak-ng) or synthetic formant vowels (espeak-ng missing)."""
    return {"source": source, "synthetic": data.synthetic, "made_by": data.meta.get("source"),
            "engine": data.meta.get("engine"), "rate": data.rate, "split": split,
            "voices": sorted(set(data.voices)), **extra}


def main(argv=None) -> int:
    """``python -m shiftlab.data.speech [--dest DIR]``: make the default set once (set-up)."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="python -m shiftlab.data.speech",
                                     description="Make data/spoken-digits.npz (espeak-ng, or the "
                                                 "synthetic fallback when it is missing).")
    parser.add_argument("--dest", default="data", help="folder for spoken-digits.npz (default: data)")
    parser.add_argument("--refresh", action="store_true", help="make it again even if it exists")
    args = parser.parse_args(argv)
    engine = "espeak-ng" if espeak_path() else "synthetic"
    settings = _settings(**DEFAULTS, engine=engine)
    try:
        data = spoken_digits(Path(args.dest) / _file_name(settings), refresh=args.refresh)
    except ShiftlabError as err:
        print(f"shiftlab spoken-digits: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(data)} spoken digits ({data.meta['source']}) in {Path(args.dest) / _file_name(settings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
