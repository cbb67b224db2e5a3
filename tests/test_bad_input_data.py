"""Bad data found by trying the command line as a new user would (issue 16, item 6): each
is ONE line on stderr (``shiftlab COMMAND: error: ...``), exit status 2 and nothing written,
or a choice that is named where it is made and recorded in the result.

Classes: unreadable folders, animated and palette images, non-finite pixels, many
unreadable files, normalisation that float32 cannot hold, empty inputs, signed integer
audio, synthetic speech, spectrograms of nothing, and warnings that must not leak.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from shiftlab import ShiftlabError
from shiftlab.cli import main
from shiftlab.data import scan_image_folder

FAST = ["--shifts=0:1", "--pairs", "1", "--quiet"]
NOBODY = 65534                       # the unprivileged user and group of Debian and most Linux


def _grey_folder(root: Path, n: int = 4, size=(24, 24), classes=("a", "b")) -> Path:
    """``n`` grey PNGs of seeded noise in ``root/<class>/`` (``root/`` when ``classes`` is
    empty), named so that sorted paths keep the order."""
    from PIL import Image
    for k in range(n):
        folder = root / classes[k * len(classes) // n] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, size, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return root


def _audit(argv: list[str], out: Path, model: str = "conv-maxpool") -> int:
    """``shiftlab audit ... --out OUT`` in this process; its exit status (the caller's
    capsys holds what it printed)."""
    return main(["audit", "--model", model, *FAST, "--out", str(out), *argv])


def _one_line(rc: int, capsys, out: Path, *needles: str, prog: str = "shiftlab audit") -> str:
    """Assert exit 2, exactly one stderr line ``prog: error: ...`` holding every needle,
    and no ``out`` nor its folder; return the line."""
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not out.parent.exists()
    return lines[0]


# ============================================================================ unreadable folders
@contextlib.contextmanager
def _unprivileged():
    """Run the body as a user that file modes apply to. As root (whom mode 000 does not
    stop: CAP_DAC_OVERRIDE), the effective user and group become ``nobody`` for the body
    and root again after it (the body's lazy imports must have run before: the Python of
    root's home is not nobody's to read); any other user is already bound by the modes."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    except PermissionError:                          # a container without CAP_SETUID
        os.setegid(0)
        pytest.skip("root here cannot become another user, and file modes do not bind root")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_tmp():
    """A folder every user may enter and write in (pytest's own is root's alone, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="shiftlab-unreadable-"))
    path.chmod(0o777)
    yield path
    for folder, dirs, _ in os.walk(path):                    # top-down: each made readable
        for d in dirs:                                      # before it is entered
            (Path(folder) / d).chmod(0o755)
    shutil.rmtree(path)


def unreadable_class_folder(root):
    return root / "b", 0o000, [f"cannot read folder {root / 'b'} in image folder {root}"]


def unreadable_sub_folder(root):
    deeper = _grey_folder(root / "a" / "deeper", 2, classes=())
    return deeper, 0o000, [f"cannot read folder {deeper} in image folder {root}"]


def unreadable_root_folder(root):
    return root, 0o000, [f"cannot read folder {root} in image folder {root}"]


def unsearchable_class_folder(root):      # listed (r) but not entered (no x): its images fail
    return root / "b", 0o444, [f"cannot read image {root / 'b'}/", "Permission denied"]


class TestUnreadableFolders:
    """A class folder or sub-folder that cannot be listed was skipped silently (exit 0,
    fewer images): now one line naming it. Run as an unprivileged user (see
    :func:`_unprivileged`); the same command runs first as it is, readable, so the
    difference is the mode alone."""

    CASES = [unreadable_class_folder, unreadable_sub_folder, unreadable_root_folder,
             unsearchable_class_folder]

    @pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
    def test_one_line_naming_the_folder(self, case, shared_tmp, capsys):
        root = _grey_folder(shared_tmp / "imgs")
        folder, mode, needles = case(root)
        out = shared_tmp / "new" / "r.json"
        assert _audit(["--data", f"folder:{root}"], out) == 0          # readable: it runs
        capsys.readouterr()
        out.unlink()
        out.parent.rmdir()
        folder.chmod(mode)
        with _unprivileged():
            rc = _audit(["--data", f"folder:{root}"], out)
        _one_line(rc, capsys, out, *needles, "Permission denied")

    @pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
    def test_the_scan_refuses_it_too(self, case, shared_tmp):
        root = _grey_folder(shared_tmp / "imgs")
        folder, mode, needles = case(root)
        assert len(scan_image_folder(root).files) == (6 if folder.name == "deeper" else 4)
        folder.chmod(mode)
        with _unprivileged(), pytest.raises(ShiftlabError) as caught:
            scan_image_folder(root)
        assert all(n in str(caught.value) for n in needles), caught.value


# ============================================================================ animated and palette images
def _frames(values=(0, 128, 255), size=(24, 24)):
    from PIL import Image
    return [Image.fromarray(np.full(size, v, np.uint8)) for v in values]


def animated_gif(root):
    frames = _frames()
    frames[0].save(root / "a" / "anim.gif", save_all=True, append_images=frames[1:])
    return "anim.gif has 3 frames (animated or multi-page)"


def animated_png(root):
    frames = _frames()
    frames[0].save(root / "a" / "anim.png", save_all=True, append_images=frames[1:])
    return "anim.png has 3 frames (animated or multi-page)"


def multi_page_tiff(root):
    frames = _frames((10, 20))
    frames[0].save(root / "b" / "pages.tif", save_all=True, append_images=frames[1:])
    return "pages.tif has 2 frames (animated or multi-page)"


class TestAnimatedAndPaletteImages:
    """An animated GIF (Pillow opens it as a palette image) turned a grey folder into RGB:
    animated and multi-page images are now refused in one line naming the file (skipped
    and counted with --skip-bad); a still image whose palette is all grey reads as grey."""

    CASES = [animated_gif, animated_png, multi_page_tiff]

    @pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
    def test_animated_is_one_line(self, case, tmp_path, capsys):
        root = _grey_folder(tmp_path / "imgs")
        needle = case(root)
        out = tmp_path / "new" / "r.json"
        _one_line(_audit(["--data", f"folder:{root}"], out), capsys, out, needle,
                  "shiftlab reads still images", "--skip-bad")

    @pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
    def test_animated_is_skipped_and_counted_with_skip_bad(self, case, tmp_path, capsys):
        root = _grey_folder(tmp_path / "imgs")
        needle = case(root)
        out = tmp_path / "new" / "r.json"
        assert _audit(["--data", f"folder:{root}", "--skip-bad"], out) == 0
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and "skipped 1 unreadable image (--skip-bad)" in lines[0], lines
        p = json.loads(out.read_text())["provenance"]
        assert p["input_shape"] == [1, 24, 24] and p["data"]["channels"] == 1
        assert needle in p["data"]["skipped"][0]["reason"]

    @pytest.mark.parametrize("suffix", [".gif", ".png"])
    def test_a_still_grey_palette_image_is_grey(self, suffix, tmp_path, capsys):
        from PIL import Image

        from shiftlab.data import load_image_folder
        root = _grey_folder(tmp_path / "imgs")
        ramp = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (24, 1))
        Image.fromarray(ramp).convert("P").save(root / "a" / f"ramp{suffix}")
        assert Image.open(root / "a" / f"ramp{suffix}").mode == "P"
        out = tmp_path / "new" / "r.json"
        assert _audit(["--data", f"folder:{root}"], out) == 0
        assert capsys.readouterr().err == ""                            # no "read as RGB"
        assert json.loads(out.read_text())["provenance"]["input_shape"] == [1, 24, 24]
        x, _, _ = load_image_folder(root)
        assert x.shape == (5, 1, 24, 24)
        np.testing.assert_array_equal(x[2, 0].numpy(), ramp / np.float32(255))  # sorted 2nd in a/

    def test_a_colour_palette_image_still_makes_the_folder_rgb(self, tmp_path, capsys):
        from PIL import Image
        root = _grey_folder(tmp_path / "imgs")
        red = np.zeros((24, 24, 3), np.uint8) + np.array([200, 10, 10], np.uint8)
        Image.fromarray(red).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "a" / "red.gif")
        with pytest.warns(UserWarning, match="mixes grey and colour images: 4 grey of 5"):
            assert scan_image_folder(root).channels == 3


# ============================================================================ non-finite pixels
def _float_tiff(path: Path, bad=None, size=(24, 24), seed: int = 0) -> Path:
    """A 32-bit float grey TIFF (mode ``F``) of seeded values in [0, 1], with ``bad`` (NaN
    or an infinity) at one pixel if given."""
    from PIL import Image
    pixels = np.random.default_rng(seed).random(size).astype(np.float32)
    if bad is not None:
        pixels[3, 5] = bad
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="F").save(path)
    return path


def _tiff_folder(root: Path, n: int = 4) -> Path:
    for k in range(n):
        _float_tiff(root / "ab"[k * 2 // n] / f"{k:03d}.tif", seed=k)
    return root


class TestNonFinitePixels:
    """A float TIFF with a NaN (or infinite) pixel was audited: it is now refused in one
    line naming the file, when it is decoded (the header scan cannot see pixels), or
    skipped and counted with --skip-bad."""

    @pytest.mark.parametrize("workers", ["0", "2"])
    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
    def test_one_line_naming_the_file(self, bad, workers, tmp_path, capsys):
        root = _tiff_folder(tmp_path / "imgs")
        _float_tiff(root / "b" / "zz-bad.tif", bad)                     # sorted last: mid-stream
        out = tmp_path / "new" / "r.json"
        rc = _audit(["--data", f"folder:{root}", "--batch-size", "2", "--workers", workers], out)
        _one_line(rc, capsys, out, f"image {root / 'b' / 'zz-bad.tif'} holds NaN or infinite "
                  "pixels", "--skip-bad")

    def test_skipped_and_counted_with_skip_bad(self, tmp_path, capsys):
        root = _tiff_folder(tmp_path / "imgs")
        _float_tiff(root / "a" / "nan.tif", np.nan)
        out = tmp_path / "new" / "r.json"
        assert _audit(["--data", f"folder:{root}", "--skip-bad"], out) == 0
        lines = capsys.readouterr().err.splitlines()
        assert lines == ["shiftlab audit: warning: UserWarning: skipped 1 unreadable image "
                         "(--skip-bad): nan.tif"], lines
        data = json.loads(out.read_text())["provenance"]["data"]
        assert data["images"] == 5 and data["skipped_files"] == 1
        assert "holds NaN or infinite pixels" in data["skipped"][0]["reason"]

    def test_a_folder_loaded_whole_refuses_it_too(self, tmp_path):
        from shiftlab.data import load_data
        root = _tiff_folder(tmp_path / "imgs")
        _float_tiff(root / "a" / "nan.tif", np.nan)
        with pytest.raises(ShiftlabError, match="nan.tif holds NaN or infinite pixels"):
            load_data(f"folder:{root}")


# ============================================================================ normalisation float32 cannot hold
class TestNormalisationFloat32CannotHold:
    """``--normalize 0.5;1e-50`` was accepted: the std is 0 in float32, the inputs' precision,
    and every normalised input infinite. Each mean and std must be a float32 number, each
    std a normal one (a subnormal's reciprocal overflows)."""

    CASES = {
        "std-underflows-to-zero": ("0.5;1e-50", "std 1e-50 is 0 in float32"),
        "std-subnormal": ("0.5;1e-40", "std 1e-40 is subnormal in float32"),
        "std-overflows": ("0.5;1e39", "std 1e+39 is infinite in float32"),
        "mean-overflows": ("-1e39;0.5", "mean -1e+39 is infinite in float32"),
        "one-channel-of-three": ("0.5,0.5,0.5;0.2,1e-50,0.2", "std 1e-50 is 0 in float32"),
    }

    @pytest.mark.parametrize("case", list(CASES))
    def test_one_line(self, case, tmp_path, capsys):
        spec, needle = self.CASES[case]
        data = "synthetic:4:3x16x16" if spec.count(",") else "synthetic:4:1x16x16"
        model = _rgb_model_file(tmp_path) if spec.count(",") else "conv-maxpool"
        out = tmp_path / "new" / "r.json"
        rc = main(["audit", "--model", model, "--data", data, *FAST, f"--normalize={spec}",
                   "--out", str(out)])
        _one_line(rc, capsys, out, needle, "give means and stds float32 holds")

    @pytest.mark.parametrize("case", list(CASES))
    def test_the_library_refuses_it_too(self, case):
        from shiftlab.data import normalization
        spec, needle = self.CASES[case]
        with pytest.raises(ShiftlabError, match=needle.replace("+", r"\+")):
            normalization(spec)

    @pytest.mark.parametrize("spec", ["0.5;1.2e-38", "0;3e38", "-3e38,0,1;1,1,1"])
    def test_the_extremes_float32_holds_are_kept(self, spec):
        from shiftlab.data import normalization
        assert normalization(spec) is not None


def _rgb_model_file(tmp: Path) -> str:
    path = tmp / "rgb_model.py"
    path.write_text("from shiftlab.models import create_model\n\n\ndef build():\n"
                    "    return create_model('conv-maxpool', in_channels=3)\n")
    return f"{path}:build"


# ============================================================================ many unreadable files
def _empty_files(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + n):
        (folder / f"{k:05d}.png").write_bytes(b"")


class TestManyUnreadableFiles:
    """100,000 empty ``.png`` files reported only the first, the scan stopping there: it
    now reads every header and says how many failed (and how many are empty), naming the
    first. Here with 2,000."""

    def test_thousands_of_empty_files_are_counted(self, tmp_path, capsys):
        root = tmp_path / "imgs"
        _empty_files(root, 2000)
        out = tmp_path / "new" / "r.json"
        _one_line(_audit(["--data", f"folder:{root}"], out), capsys, out,
                  f"2000 images in {root} are empty or unreadable (2000 empty); the first: image "
                  f"{root / '00000.png'} is empty (0 bytes)", "--skip-bad")

    def test_empty_and_corrupt_files_among_good_ones(self, tmp_path, capsys):
        root = _grey_folder(tmp_path / "imgs")
        _empty_files(root / "a", 3)
        (root / "b" / "x-corrupt.png").write_bytes(b"\x89PNG not really")
        (root / "b" / "y-corrupt.png").write_bytes(b"GIF89a")
        out = tmp_path / "new" / "r.json"
        _one_line(_audit(["--data", f"folder:{root}"], out), capsys, out,
                  f"5 images in {root} are empty or unreadable (3 empty); the first: image "
                  f"{root / 'a' / '00000.png'} is empty")

    @pytest.mark.parametrize("content,needle", [(b"", "is empty (0 bytes)"),
                                                (b"not an image", "cannot identify image file")])
    def test_one_bad_file_is_named_alone(self, content, needle, tmp_path, capsys):
        root = _grey_folder(tmp_path / "imgs")
        (root / "b" / "bad.png").write_bytes(content)
        out = tmp_path / "new" / "r.json"
        line = _one_line(_audit(["--data", f"folder:{root}"], out), capsys, out,
                         f"{root / 'b' / 'bad.png'}", needle, "--skip-bad")
        assert "images in" not in line

    def test_skip_bad_skips_and_counts_them_all(self, tmp_path, capsys):
        root = _grey_folder(tmp_path / "imgs", classes=())
        _empty_files(root, 2000, start=10)
        out = tmp_path / "new" / "r.json"
        assert _audit(["--data", f"folder:{root}", "--skip-bad"], out) == 0
        assert capsys.readouterr().err.splitlines() == [
            "shiftlab audit: warning: UserWarning: skipped 2000 unreadable images (--skip-bad): "
            "00010.png, 00011.png, 00012.png …"]
        data = json.loads(out.read_text())["provenance"]["data"]
        assert data["files"] == 2004 and data["images"] == 4 and data["skipped_files"] == 2000
        assert data["skipped"][0]["reason"] == f"image {root / '00010.png'} is empty (0 bytes)"


# ============================================================================ empty inputs
def _save(path: Path, array: np.ndarray) -> Path:
    """``array`` as ``.npy``, ``.npz`` (key ``x``) or ``.pt`` by ``path``'s suffix."""
    if path.suffix == ".npz":
        np.savez(path, x=array)
    elif path.suffix == ".pt":
        import torch
        torch.save({"x": torch.from_numpy(array)}, path)
    else:
        np.save(path, array)
    return path


class TestEmptyInputs:
    """A 0-length signal or a 0-height image was reported as a margin problem ("a margin of
    0 leaves no position of the 0 input to compare"): now one line saying the input is
    empty, from the file reader, before any model is built."""

    CASES = {
        "signals-0-samples": ("signals:", (4, 1, 0), "conv1d-maxpool", "0 samples each"),
        "signals-NxT-0-samples": ("signals:", (4, 0), "conv1d-maxpool", "0 samples each"),
        "signals-0-channels": ("signals:", (4, 0, 64), "conv1d-maxpool", "0 channels"),
        "images-0-height": ("", (4, 1, 0, 28), "conv-maxpool", "0x28 pixels each"),
        "images-0-width": ("", (4, 1, 28, 0), "conv-maxpool", "28x0 pixels each"),
        "images-NxHxW-0-height": ("", (4, 0, 28), "conv-maxpool", "0x28 pixels each"),
        "images-0-channels": ("", (4, 0, 28, 28), "conv-maxpool", "0 channels"),
    }

    @pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
    @pytest.mark.parametrize("case", list(CASES))
    def test_one_line_saying_it_is_empty(self, case, suffix, tmp_path, capsys):
        prefix, shape, model, detail = self.CASES[case]
        path = _save(tmp_path / f"empty{suffix}", np.zeros(shape, np.float32))
        what = "signals" if prefix else "images"
        out = tmp_path / "new" / "r.json"
        line = _one_line(_audit(["--data", f"{prefix}{path}"], out, model=model), capsys, out,
                         f"{path}: the {what} are empty (shape {shape}: {detail})")
        assert "margin" not in line

    def test_a_signal_of_one_sample_is_not_empty(self, tmp_path):
        from shiftlab.data import load_array_file
        x, _ = load_array_file(str(_save(tmp_path / "one.npy", np.ones((2, 1), np.float32))), rank=1)
        assert x.shape == (2, 1, 1)


# ============================================================================ spectrograms of nothing
class TestSpectrogramsOfNothing:
    """``spectrogram`` of 0 waveforms raised MKL's "Inconsistent configuration parameters"
    traceback: now one line saying there is nothing to transform."""

    @pytest.mark.parametrize("shape", [(0, 1000), (0, 1, 1000)])
    @pytest.mark.parametrize("kind", ["linear", "mel", "log"])
    def test_no_waveforms(self, kind, shape):
        import torch

        from shiftlab.spectrogram import spectrogram
        with pytest.raises(ShiftlabError) as caught:
            spectrogram(torch.zeros(shape), 8000, kind=kind)
        message = str(caught.value)
        assert message.startswith(f"no waveforms to transform (shape {shape})") and "\n" not in message

    @pytest.mark.parametrize("call", ["module", "stft_magnitude"])
    def test_every_entry_point(self, call):
        import torch

        from shiftlab.spectrogram import Spectrogram, stft_magnitude
        run = {"module": lambda x: Spectrogram(8000)(x),
               "stft_magnitude": lambda x: stft_magnitude(x, 256, 64)}[call]
        with pytest.raises(ShiftlabError, match=r"no waveforms to transform \(shape \(0, 1, 512\)\)"):
            run(torch.zeros(0, 1, 512))

    def test_empty_waveforms_are_shorter_than_the_window(self):
        import torch

        from shiftlab.spectrogram import spectrogram
        with pytest.raises(ShiftlabError, match="a signal of 0 samples is shorter than the 256-sample"):
            spectrogram(torch.zeros(3, 0), 8000)


# ============================================================================ signed integer audio
class TestSignedIntegerAudio:
    """int16 audio with negative samples was refused as "integer images must be
    non-negative": signed integer signals are valid audio, scaled by their type's range
    (int16 / 32768: [-1, 1)), which the result records. Images stay non-negative."""

    RANGES = {"int8": 2 ** 7, "int16": 2 ** 15, "int32": 2 ** 31}

    def _signals(self, tmp: Path, dtype: str, suffix: str = ".npy") -> tuple[Path, np.ndarray]:
        info = np.iinfo(dtype)
        x = np.random.default_rng(0).integers(info.min, info.max, (4, 1, 64), dtype=dtype, endpoint=True)
        x[0, 0, :2] = info.min, info.max                                    # both extremes
        return _save(tmp / f"audio-{dtype}{suffix}", x), x

    @pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
    @pytest.mark.parametrize("dtype", list(RANGES))
    def test_scaled_by_the_type_range(self, dtype, suffix, tmp_path):
        from shiftlab.data import load_data
        path, x = self._signals(tmp_path, dtype, suffix)
        loaded = load_data(f"signals:{path}")
        signals, labels = loaded
        assert signals.dtype.is_floating_point and labels is None
        expected = (x.astype(np.float64) / self.RANGES[dtype]).astype(np.float32)
        np.testing.assert_array_equal(signals.numpy(), expected)
        assert float(signals.min()) == -1.0                            # the most negative sample
        assert float(signals.max()) < 1.0 or dtype == "int32"          # float32 rounds 2**31 - 1 up
        assert loaded.record() == {"source": f"signals:{path}",
                                   "scaled": f"{dtype} samples / {self.RANGES[dtype]} (PCM full scale to 1)"}

    def test_audited_and_recorded_from_the_command_line(self, tmp_path, capsys):
        path, _ = self._signals(tmp_path, "int16")
        out = tmp_path / "new" / "r.json"
        assert _audit(["--data", f"signals:{path}"], out, model="conv1d-maxpool") == 0
        assert capsys.readouterr().err == ""
        data = json.loads(out.read_text())["provenance"]["data"]
        assert data == {"source": f"signals:{path}", "scaled": "int16 samples / 32768 (PCM full scale to 1)"}

    def test_negative_integer_images_are_still_refused(self, tmp_path, capsys):
        path = _save(tmp_path / "neg.npy", np.full((2, 1, 28, 28), -3, np.int16))
        out = tmp_path / "new" / "r.json"
        _one_line(_audit(["--data", str(path)], out), capsys, out,
                  "integer images must be non-negative")

    def test_float_signals_record_nothing_more(self, tmp_path):
        from shiftlab.data import load_data
        path = _save(tmp_path / "f.npy", np.zeros((2, 1, 8), np.float32))
        assert load_data(f"signals:{path}").record() is None


# ============================================================================ synthetic speech
@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    """One folder for the synthetic spoken digits, made once for the module (6 s)."""
    return tmp_path_factory.mktemp("speech")


class TestSyntheticSpeechIsRecorded:
    """``spoken-digits`` without espeak-ng silently audited synthetic formant vowels: the
    result now records where the data came from and whether they are speech. "Without
    espeak-ng" is real: PATH holds no espeak-ng program."""

    @pytest.fixture
    def no_espeak(self, speech_dir, tmp_path, monkeypatch):
        monkeypatch.setenv("PATH", str(tmp_path))                      # an empty folder
        monkeypatch.setenv("SHIFTLAB_DATA", str(speech_dir))
        monkeypatch.chdir(tmp_path)
        from shiftlab.data.speech import espeak_path
        assert espeak_path() is None

    @pytest.mark.parametrize("spec,model,shape", [
        ("spoken-digits", "audio-cnn", [1, 40, 81]),
        ("spoken-digits-wave", "conv1d-maxpool", [1, 6400]),
    ])
    def test_the_result_says_the_data_are_synthetic(self, spec, model, shape, no_espeak, tmp_path):
        out = tmp_path / "new" / "r.json"
        assert _audit(["--data", spec, "--limit", "8"], out, model=model) == 0
        p = json.loads(out.read_text())["provenance"]
        assert p["input_shape"] == shape
        data = p["data"]
        assert data["source"] == f"{spec}:test" and data["synthetic"] is True
        assert data["made_by"] == "synthetic formant vowels (espeak-ng not installed), not speech"
        assert data["engine"] == "synthetic" and data["rate"] == 8000

    def test_speech_says_it_is_speech(self):
        """The other way round: spoken digits made by espeak-ng (as ``make data`` leaves
        them) are recorded as speech."""
        from shiftlab.data import load_data
        from shiftlab.data.mnist import data_dirs
        from shiftlab.data.speech import espeak_path
        if espeak_path() is None or not any((d / "spoken-digits.npz").is_file() for d in data_dirs()):
            pytest.skip("needs espeak-ng and data/spoken-digits.npz (make data)")
        record = load_data("spoken-digits").record()
        assert record["synthetic"] is False and record["made_by"].startswith("eSpeak NG")

    def test_load_data_carries_the_record(self, no_espeak):
        from shiftlab.data import load_data
        loaded = load_data("spoken-digits:train")
        assert loaded.record()["synthetic"] is True and loaded.record()["split"] == "train"
        assert loaded.record()["front_end"]["kind"] == "mel"


# ============================================================================ warnings that leaked
SRC = Path(__file__).resolve().parents[1] / "src"


def _shiftlab(argv: list[str], cwd: Path, **popen) -> tuple[int, str]:
    """``python -m shiftlab ARGV`` as a new process (torch warns some things once per
    process): ``(exit status, stderr)``."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "shiftlab", *argv], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600, **popen)
    return done.returncode, done.stderr


def _one_cpu():
    """Bind the process to one CPU (run in the child before it starts)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


class TestNoLeakedWarnings:
    """Warnings of the libraries underneath reached the user as a ``warning:`` line: a float
    TIFF's read (PyTorch on a read-only array), ``--workers`` above the CPUs (the DataLoader)
    and a report of 1-D audits (matplotlib's constrained layout). Each runs in a new
    process, as a user runs it."""

    def test_reading_float_tiffs_warns_nothing(self, tmp_path):
        root = _tiff_folder(tmp_path / "imgs")
        rc, err = _shiftlab(["audit", "--model", "conv-maxpool", "--data", f"folder:{root}",
                             *FAST, "--out", "r.json"], tmp_path)
        assert rc == 0 and err == "", err
        assert json.loads((tmp_path / "r.json").read_text())["provenance"]["input_shape"] == [1, 24, 24]

    @pytest.mark.parametrize("workers", ["2", "64"])
    def test_more_workers_than_cpus_are_clamped_and_recorded(self, workers, tmp_path):
        """Bound to one CPU (a real affinity, as ``taskset`` sets it), ``--workers N`` reads
        with one worker, says so in one line of its own and records both numbers."""
        root = _grey_folder(tmp_path / "imgs")
        rc, err = _shiftlab(["audit", "--model", "conv-maxpool", "--data", f"folder:{root}",
                             "--workers", workers, *FAST, "--out", "r.json"], tmp_path,
                            preexec_fn=_one_cpu)
        assert rc == 0, err
        assert err.splitlines() == [f"shiftlab audit: warning: UserWarning: --workers {workers} is "
                                    "more than the 1 CPU this process may use; reading with 1 worker"]
        loader = json.loads((tmp_path / "r.json").read_text())["provenance"]["data"]["loader"]
        assert loader["workers"] == 1 and loader["workers_asked"] == int(workers)
        assert "CPUs this process may use" in loader["workers_clamped"]

    def test_as_many_workers_as_cpus_are_kept(self, tmp_path):
        root = _grey_folder(tmp_path / "imgs")
        rc, err = _shiftlab(["audit", "--model", "conv-maxpool", "--data", f"folder:{root}",
                             "--workers", "1", *FAST, "--out", "r.json"], tmp_path,
                            preexec_fn=_one_cpu)
        assert rc == 0 and err == "", err
        loader = json.loads((tmp_path / "r.json").read_text())["provenance"]["data"]["loader"]
        assert loader == {"batch_size": 256, "workers": 1}

    def test_a_report_of_1d_audits_warns_nothing(self, tmp_path):
        for protocol in ("circular", "canvas"):
            _layer_audit(1, protocol, "-3:3").to_json(tmp_path / "res" / f"audit-{protocol}.json")
        rc, err = _shiftlab(["report", "res", "-o", "report.html"], tmp_path)
        assert rc == 0 and err == "", err
        assert (tmp_path / "report.html").stat().st_size > 0

    @pytest.mark.parametrize("panels", [1, 2, 3])
    @pytest.mark.parametrize("shifts", ["0:1", "-3:3"])
    @pytest.mark.parametrize("dims", [1, 2])
    def test_layer_error_heatmaps_fit_whatever_their_width(self, dims, shifts, panels):
        """Few shift columns (1-D, a short range) made panels narrower than their titles,
        labels and the legend: the constrained layout collapsed and warned."""
        import warnings

        from shiftlab.viz.figure import figure_png
        from shiftlab.viz.plots import draw_layer_errors
        named = {f"{p}-{k}": _layer_audit(dims, p, shifts)
                 for k, p in enumerate(("circular", "canvas", "circular")[:panels])}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert figure_png(draw_layer_errors(named)).startswith(b"\x89PNG")


def _layer_audit(dims: int, protocol: str, shifts: str):
    """A small audit of a zoo model on seeded noise, 1-D signals or 2-D images (cached)."""
    return _LAYER_AUDITS.get((dims, protocol, shifts)) or _LAYER_AUDITS.setdefault(
        (dims, protocol, shifts), _run_layer_audit(dims, protocol, shifts))


def _run_layer_audit(dims: int, protocol: str, shifts: str):
    import torch

    from shiftlab import audit
    from shiftlab.models import create_model
    torch.manual_seed(0)
    model = create_model("conv1d-maxpool" if dims == 1 else "conv-maxpool").eval()
    x = torch.rand(4, 1, 64) if dims == 1 else torch.rand(4, 1, 28, 28)
    return audit(model, x, protocol=protocol, shifts=shifts, pairs=0)


_LAYER_AUDITS: dict = {}
