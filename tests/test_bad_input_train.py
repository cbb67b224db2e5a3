"""Bad input to ``shiftlab train`` and ``shiftlab convert``, by class (issue 10, part 2).

Every case: one line on stderr (``shiftlab train: error: ...``), exit status 2, no
half-written file, no temporary file and no empty folder left behind. Real files, real
processes and a real full file system (a small tmpfs; the cases skip, saying why, where
mounting one is impossible).
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shiftlab.cli import main
from shiftlab.io import LOCK
from shiftlab.train import CHECKPOINT, RECORD, WEIGHTS, TrainConfig, train

# lenet-wolf on scikit-learn's 8x8 digits, centred on a 28x28 canvas: a few seconds per run
FAST = ["--model", "lenet-wolf", "--data", "digits", "--canvas", "28", "--limit", "64",
        "--batch-size", "32", "--epochs", "1", "--quiet"]


def run(capsys, command, *args):
    """``shiftlab COMMAND ARGS`` in this process: (status, stdout, stderr)."""
    status = main([command, *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def refused(capsys, command, *args, match):
    """Assert the one-line refusal; return its message."""
    status, _, err = run(capsys, command, *args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"shiftlab {command}: error: "), err
    assert match in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (temporary files included)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts)


def model_file(tmp_path: Path, body: str) -> str:
    """A ``path.py:build`` model spec whose ``build()`` returns ``body``'s ``Net()``."""
    path = tmp_path / "net.py"
    path.write_text("import torch\nfrom torch import nn\n\n" + body + "\n\ndef build():\n    return Net()\n")
    return f"{path}:build"


def arrays(tmp_path: Path, name: str, x: np.ndarray, y: np.ndarray) -> str:
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return str(path)


def digits_like(n=40, size=8, channels=1):
    rng = np.random.default_rng(0)
    return rng.random((n, channels, size, size), dtype=np.float32), np.arange(n) % 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished fast run: checkpoint.pt, model.safetensors, train.json."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    return out


def copy_run(trained: Path, to: Path) -> Path:
    shutil.copytree(trained, to)
    return to


@pytest.fixture
def small_disk(tmp_path):
    """``mount(bytes, ro=False)``: a real tmpfs of that size; unmounted after the test."""
    mounted = []

    def mount(size: int, ro: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip("these cases need a real small file system, and mounting a tmpfs "
                        f"failed here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:                 # lazily if a file is still open (a failed test)
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], check=True)


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- settings
class TestSettingsBeforeAnyWork:
    """Refused before the data are read: the data spec points at no file at all, and the
    settings error is what the user sees."""

    @pytest.mark.parametrize("args,match", [
        (["--lr", "inf"], "lr must be a positive finite number"),
        (["--lr", "nan"], "lr must be a positive finite number"),
        (["--lr", "0"], "lr must be a positive finite number"),
        (["--lr", "-0.001"], "lr must be a positive finite number"),
        (["--epochs", "0"], "epochs must be a whole number of at least 1"),
        (["--epochs", "-3"], "epochs must be a whole number of at least 1"),
        (["--batch-size", "0"], "batch_size must be a whole number of at least 1"),
        (["--limit", "0"], "limit must be a whole number of at least 1"),
        (["--canvas", "0"], "canvas must be a whole number of at least 1"),
        (["--canvas", "-28"], "canvas must be a whole number of at least 1"),
        (["--seed", str(10**30)], "argument --seed: must be in [0, 4294967295]"),
        (["--seed", "-1"], "argument --seed: must be in [0, 4294967295]"),
        (["--augment", "shift"], "unknown augmentation 'shift'; write shift:K"),
        (["--augment", "shift:"], "unknown augmentation"),
        (["--augment", "shift:-1"], "unknown augmentation"),
        (["--augment", "shift:2.5"], "unknown augmentation"),
        (["--augment", "shift:\u00b2"], "unknown augmentation"),       # isdigit(), but not int()
        (["--augment", "rotate:3"], "unknown augmentation"),
        (["--augment", "shift:" + "9" * 400], "unknown augmentation"),
    ])
    def test_refused_before_reading_data(self, tmp_path, capsys, args, match):
        out = tmp_path / "a" / "run"
        refused(capsys, "train", "--model", "lenet-wolf", "--data", str(tmp_path / "missing.npz"),
                *args, "--out", out, match=match)
        assert leftovers(tmp_path) == []


class TestSettingsAgainstTheData:
    @pytest.mark.parametrize("args,match", [
        (["--augment", "shift:1000"], "augment shift:1000 moves 8x8 images out of the frame"),
        (["--augment", "shift:8"], "at most 7"),
        (["--canvas", "4"], "8x8 images do not fit on a 4x4 canvas"),
        (["--canvas", str(10**8)], "more than half this machine's memory"),
    ])
    def test_refused(self, tmp_path, capsys, args, match):
        out = tmp_path / "a" / "run"
        refused(capsys, "train", "--model", "lenet-wolf-gap", "--data", "digits", *args,
                "--out", out, match=match)
        assert leftovers(tmp_path) == []

    def test_a_shift_smaller_than_the_image_trains(self, tmp_path, capsys):
        status, out, err = run(capsys, "train", *FAST, "--augment", "shift:27", "--out", tmp_path / "r")
        assert status == 0, err
        assert json.loads((tmp_path / "r" / RECORD).read_text())["config"]["augment"] == "shift:27"

    def test_a_diverging_run_stops_with_one_line(self, tmp_path, capsys):
        """A finite but absurd learning rate: the loss turns NaN, the run says so."""
        refused(capsys, "train", *FAST, "--lr", "1e30", "--out", tmp_path / "a" / "r",
                match="the loss became nan in epoch 1")
        assert leftovers(tmp_path) == []                  # it failed before its first checkpoint


# ----------------------------------------------------------------------------- data
class TestData:
    @pytest.mark.parametrize("label,match", [
        (10, "training label 10 is out of range: the model has 10 outputs, so labels must be in [0, 9]"),
        (-1, "training label -1 is out of range"),
        (2**40, "out of range"),
    ])
    def test_labels_out_of_range(self, tmp_path, capsys, label, match):
        x, y = digits_like()
        y[3] = label
        data = arrays(tmp_path, "d.npz", x, y)
        refused(capsys, "train", *FAST, "--data", data, "--out", tmp_path / "a" / "r", match=match)
        assert leftovers(tmp_path) == ["d.npz"]

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    def test_non_finite_images(self, tmp_path, capsys, value):
        x, y = digits_like()
        x[5, 0, 2, 2] = value
        data = arrays(tmp_path, "d.npz", x, y)
        refused(capsys, "train", *FAST, "--data", data, "--out", tmp_path / "r",
                match="1 training image contains NaN or infinite values")
        assert leftovers(tmp_path) == ["d.npz"]

    def test_unlabelled_data(self, tmp_path, capsys):
        refused(capsys, "train", "--model", "lenet-wolf", "--data", "synthetic:16",
                "--out", tmp_path / "r", match="has no labels")
        assert leftovers(tmp_path) == []

    @pytest.mark.parametrize("split,labels,match", [
        ("test", torch.full((8,), 12), "test label 12 is out of range"),
        ("test", torch.full((8,), -4), "test label -4 is out of range"),
        ("train", torch.zeros(8), "training labels must be integer class indices, got torch.float32"),
        ("train", torch.zeros(8, 2, dtype=torch.long), "training labels must be a vector of 8"),
        ("test", torch.zeros(5, dtype=torch.long), "test labels must be a vector of 8"),
    ])
    def test_library_labels(self, tmp_path, split, labels, match):
        good = (torch.rand(8, 1, 8, 8), torch.arange(8))
        bad = (good[0], labels)
        data = (bad, good) if split == "train" else (good, bad)
        with pytest.raises(ValueError, match=match.replace("[", r"\[")):
            train(TrainConfig(model="lenet-wolf", canvas=28, epochs=1), tmp_path / "r", data=data,
                  progress=False, log=lambda *_: None)
        assert leftovers(tmp_path) == []

    @pytest.mark.parametrize("images,match", [
        (torch.zeros(0, 1, 28, 28), "training images must be a non-empty N x C x H x W tensor"),
        (torch.zeros(8, 28, 28), "training images must be a non-empty N x C x H x W tensor"),
        (torch.zeros(8, 1, 28, 28, dtype=torch.uint8), "must be real floating point"),
        (torch.zeros(8, 1, 28, 28, dtype=torch.complex64), "must be real floating point"),
        (torch.zeros(8, 1, 30, 30), "training images are 1x30x30 but test images 1x28x28"),
    ])
    def test_library_images(self, tmp_path, images, match):
        good = (torch.rand(8, 1, 28, 28), torch.arange(8))
        with pytest.raises(ValueError, match=match):
            train(TrainConfig(epochs=1), tmp_path / "r", data=((images, torch.arange(len(images))), good),
                  progress=False, log=lambda *_: None)
        assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- models
class TestModelDoesNotFit:
    """Like audit: the model runs once on two images before any work; whatever it raises
    becomes one line (errors.run_model)."""

    NETS = {
        "three-channel": "class Net(nn.Sequential):\n    def __init__(self):\n        super().__init__("
                         "nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))",
        "forward-raises": "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                          "        self.w = nn.Linear(64, 10)\n    def forward(self, x):\n"
                          "        raise ValueError('this net is broken')",
        "maps-not-scores": "class Net(nn.Sequential):\n    def __init__(self):\n        super().__init__("
                           "nn.Conv2d(1, 10, 3))",
        "returns-a-tuple": "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                           "        self.w = nn.Linear(64, 10)\n    def forward(self, x):\n"
                           "        return self.w(x.flatten(1)), None",
        "no-parameters": "class Net(nn.Sequential):\n    def __init__(self):\n        super().__init__("
                         "nn.Flatten(), nn.AdaptiveAvgPool1d(10))",
    }

    @pytest.mark.parametrize("net,match", [
        ("three-channel", "cannot run on inputs of shape (2, 1, 8, 8): RuntimeError"),
        ("forward-raises", "cannot run on inputs of shape (2, 1, 8, 8): ValueError: this net is broken"),
        ("maps-not-scores", "gives (2, 10, 6, 6) on 1x8x8 images; training needs one row of class scores"),
        ("returns-a-tuple", "gives tuple on 1x8x8 images"),
        ("no-parameters", "has no trainable parameters"),
    ])
    def test_model_files(self, tmp_path, capsys, net, match):
        spec = model_file(tmp_path, self.NETS[net])
        refused(capsys, "train", "--model", spec, "--data", "digits", "--epochs", "1", "--quiet",
                "--out", tmp_path / "a" / "r", match=match)
        assert leftovers(tmp_path) == ["net.py"]

    def test_zoo_model_on_too_small_images(self, tmp_path, capsys):
        refused(capsys, "train", "--model", "lenet-wolf-gap", "--data", "digits", "--out", tmp_path / "r",
                match="model 'lenet-wolf-gap' cannot run on inputs of shape (2, 1, 8, 8)")
        assert leftovers(tmp_path) == []

    def test_a_model_that_fails_only_while_training(self, tmp_path, capsys):
        """It passes the eval-mode check, then raises in the first training step: one line,
        and the folder made for it is gone again (nothing was written)."""
        spec = model_file(tmp_path, "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                    "        self.w = nn.Linear(64, 10)\n    def forward(self, x):\n"
                                    "        if self.training:\n            raise RuntimeError('no training')\n"
                                    "        return self.w(x.flatten(1))")
        refused(capsys, "train", "--model", spec, "--data", "digits", "--epochs", "1", "--quiet",
                "--out", tmp_path / "a" / "b" / "r", match="cannot run on inputs of shape (128, 1, 8, 8)")
        assert leftovers(tmp_path) == ["net.py"]

    def test_batch_norm_with_a_last_batch_of_one(self, tmp_path, capsys):
        spec = model_file(tmp_path, "class Net(nn.Sequential):\n    def __init__(self):\n        super().__init__("
                                    "nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), "
                                    "nn.Flatten(), nn.Linear(4, 10))")
        refused(capsys, "train", "--model", spec, "--data", "digits", "--limit", "65", "--batch-size", "32",
                "--quiet", "--out", tmp_path / "r", match="the last batch of 65 images in batches of 32")
        assert leftovers(tmp_path) == ["net.py"]


# ----------------------------------------------------------------------------- checkpoints
class Evil:
    """Unpickling this runs a shell command: weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class TestCheckpoints:
    def test_a_flipped_byte_in_a_checkpoint_tensor_is_caught_on_resume(self, tmp_path, capsys, trained):
        run_dir = copy_run(trained, tmp_path / "r")
        for name in (WEIGHTS, RECORD):
            (run_dir / name).unlink()
        ckpt = run_dir / CHECKPOINT
        bias = torch.load(ckpt, weights_only=True)["model"]["features.0.bias"]
        at = ckpt.read_bytes().find(bias.numpy().tobytes())
        assert at > 0                                      # the tensor's raw bytes, inside the zip
        flip(ckpt, at + 5)
        assert torch.load(ckpt, weights_only=True)["epoch"] == 1     # torch itself reads it happily
        before = ckpt.read_bytes()
        refused(capsys, "train", *FAST, "--epochs", "2", "--resume", "--out", run_dir,
                match=f"{ckpt} is corrupt: its tensors do not match the SHA-256")
        assert ckpt.read_bytes() == before and leftovers(run_dir) == [CHECKPOINT]

    def test_an_intact_checkpoint_resumes(self, tmp_path, capsys, trained):
        run_dir = copy_run(trained, tmp_path / "r")
        status, out, err = run(capsys, "train", *FAST, "--epochs", "2", "--resume", "--out", run_dir)
        assert status == 0 and "resuming lenet-wolf after epoch 1" in out, err
        assert len(json.loads((run_dir / RECORD).read_text())["epochs"]) == 2

    def test_a_checkpoint_without_a_digest_still_resumes(self, tmp_path, capsys, trained):
        """Checkpoints of earlier versions hold no SHA-256: they are read as before."""
        run_dir = copy_run(trained, tmp_path / "r")
        state = torch.load(run_dir / CHECKPOINT, weights_only=True)
        del state["sha256"]
        torch.save(state, run_dir / CHECKPOINT)
        status, out, err = run(capsys, "train", *FAST, "--epochs", "2", "--resume", "--out", run_dir)
        assert status == 0 and "resuming" in out, err

    def test_a_flipped_byte_in_init_weights_is_caught(self, tmp_path, capsys, trained):
        weights = copy_run(trained, tmp_path / "base") / WEIGHTS
        header = int.from_bytes(weights.read_bytes()[:8], "little")
        flip(weights, 8 + header + 100)                    # inside the first tensor's data
        load_file(str(weights))                            # safetensors itself reads it happily
        refused(capsys, "train", *FAST, "--init", weights, "--out", tmp_path / "r",
                match=f"{weights} is corrupt")
        assert not (tmp_path / "r").exists()
        refused(capsys, "convert", "--model", "lenet-wolf", "--weights", weights, "--method", "blurpool",
                "--out", tmp_path / "c" / "blur.safetensors", match=f"{weights} is corrupt")
        assert not (tmp_path / "c").exists()

    def test_a_flipped_byte_in_an_init_checkpoint_is_caught(self, tmp_path, capsys, trained):
        ckpt = copy_run(trained, tmp_path / "base") / CHECKPOINT
        bias = torch.load(ckpt, weights_only=True)["model"]["features.2.bias"]
        flip(ckpt, ckpt.read_bytes().find(bias.numpy().tobytes()) + 2)
        refused(capsys, "train", *FAST, "--init", ckpt, "--out", tmp_path / "r", match="is corrupt")
        assert not (tmp_path / "r").exists()

    def test_intact_weights_initialise(self, tmp_path, capsys, trained):
        status, out, err = run(capsys, "train", *FAST, "--init", trained / WEIGHTS, "--out", tmp_path / "r")
        assert status == 0 and "initialised 10 tensors" in out, err

    @pytest.mark.parametrize("damage,match", [
        ("truncated", "is not a readable checkpoint"),
        ("empty", "is not a readable checkpoint"),
        ("pickle-runs-code", "refused for safety"),
        ("not-a-dict", "is not a shiftlab training checkpoint"),
        ("epoch-is-text", "a field has the wrong type"),
        ("epoch-negative", "a field has the wrong type"),
        ("history-not-json", "a field has the wrong type"),
        ("config-not-a-dict", "a field has the wrong type"),
        ("beyond-the-epochs", "is after epoch 5, beyond the 1 asked for; ask for at least 5"),
        ("other-settings", "was written with other settings (lr)"),
    ])
    def test_damaged_or_hostile_checkpoints_on_resume(self, tmp_path, capsys, trained, damage, match):
        run_dir = copy_run(trained, tmp_path / "r")
        ckpt, marker = run_dir / CHECKPOINT, tmp_path / "pwned"
        state = torch.load(ckpt, weights_only=True)
        del state["sha256"]                                # hand-made files: checked field by field
        if damage == "truncated":
            ckpt.write_bytes(ckpt.read_bytes()[:5000])
        elif damage == "empty":
            ckpt.write_bytes(b"")
        elif damage == "pickle-runs-code":
            torch.save({"model": Evil(marker), "optimizer": {}, "epoch": 1, "config": {}}, ckpt)
        elif damage == "not-a-dict":
            torch.save([1, 2, 3], ckpt)
        else:
            change = {"epoch-is-text": ("epoch", "1"), "epoch-negative": ("epoch", -1),
                      "history-not-json": ("history", "{not json"), "config-not-a-dict": ("config", [1]),
                      "beyond-the-epochs": ("epoch", 5)}
            if damage == "other-settings":
                state["config"]["lr"] = 0.5
            else:
                key, value = change[damage]
                state[key] = value
            torch.save(state, ckpt)
        before = ckpt.read_bytes()
        refused(capsys, "train", *FAST, "--resume", "--out", run_dir, match=match)
        assert not marker.exists()                         # the pickle's command never ran
        assert ckpt.read_bytes() == before

    @pytest.mark.parametrize("damage,match", [
        ("pickle-runs-code", "cannot be unpickled"),
        ("truncated", "is not a readable PyTorch checkpoint"),
        ("empty", "is empty"),
        ("missing", "does not exist"),
        ("not-tensors", "does not hold a state dict of tensors"),
    ])
    def test_bad_init_files(self, tmp_path, capsys, trained, damage, match):
        marker, init = tmp_path / "pwned", tmp_path / "init.pt"
        if damage == "pickle-runs-code":
            torch.save({"model": Evil(marker)}, init)
        elif damage == "truncated":
            init = tmp_path / "init.safetensors"
            init.write_bytes((trained / WEIGHTS).read_bytes()[:2000])
        elif damage == "empty":
            init.write_bytes(b"")
        elif damage == "not-tensors":
            torch.save({"features.0.weight": [1, 2]}, init)
        refused(capsys, "train", *FAST, "--init", init, "--out", tmp_path / "r", match=match)
        assert not marker.exists() and not (tmp_path / "r").exists()

    def test_resume_without_a_checkpoint(self, tmp_path, capsys, trained):
        """A folder with finished weights but no checkpoint (shipped weights): --resume
        must not retrain over them."""
        refused(capsys, "train", *FAST, "--resume", "--out", tmp_path / "new",
                match="nothing to resume: ")
        assert not (tmp_path / "new").exists()
        shipped = copy_run(trained, tmp_path / "shipped")
        (shipped / CHECKPOINT).unlink()
        before = (shipped / WEIGHTS).read_bytes()
        refused(capsys, "train", *FAST, "--resume", "--out", shipped, match="holds no checkpoint.pt")
        assert (shipped / WEIGHTS).read_bytes() == before


# ----------------------------------------------------------------------------- output
class TestOutputFolder:
    def test_out_is_a_file(self, tmp_path, capsys):
        (tmp_path / "f").write_text("x")
        refused(capsys, "train", *FAST, "--out", tmp_path / "f", match="is a file")
        refused(capsys, "train", *FAST, "--out", tmp_path / "f" / "r", match="is a file")
        assert leftovers(tmp_path) == ["f"]

    def test_read_only_file_system(self, tmp_path, capsys, small_disk):
        disk = small_disk(1 << 20, ro=True)
        refused(capsys, "train", *FAST, "--out", disk / "r", match="the file system is read-only")
        refused(capsys, "convert", "--model", "lenet-wolf", "--method", "blurpool",
                "--out", disk / "c" / "w.safetensors", match="the file system is read-only")
        assert leftovers(disk) == []

    def test_a_refused_run_leaves_no_folder_and_a_good_one_no_lock(self, tmp_path, capsys):
        x, y = digits_like()
        y[0] = 11
        data = arrays(tmp_path, "d.npz", x, y)
        refused(capsys, "train", *FAST, "--data", data, "--out", tmp_path / "a" / "b" / "c", match="out of range")
        assert leftovers(tmp_path) == ["d.npz"]
        status, _, err = run(capsys, "train", *FAST, "--out", tmp_path / "a" / "b" / "c")
        assert status == 0, err
        assert sorted(p.name for p in (tmp_path / "a" / "b" / "c").iterdir()) == [CHECKPOINT, WEIGHTS, RECORD]


class TestFullDisk:
    """A real tmpfs too small for what is written: ENOSPC reaches torch and safetensors,
    which raise RuntimeError / SafetensorError; shiftlab says the disk is full, in one line."""

    def test_train_first_checkpoint_does_not_fit(self, tmp_path, capsys, small_disk):
        disk = small_disk(256 << 10)
        refused(capsys, "train", *FAST, "--out", disk / "runs" / "r",
                match="checkpoint.pt': no space left on the device; free some space or write elsewhere")
        assert leftovers(disk) == []                       # no temporary file, no empty folder

    def test_train_final_weights_do_not_fit_then_resume(self, tmp_path, capsys, small_disk, trained):
        checkpoint = (trained / CHECKPOINT).stat().st_size
        disk = small_disk(-(-checkpoint // 4096) * 4096 + (64 << 10))   # the checkpoint and 64 KiB
        out = disk / "r"
        refused(capsys, "train", *FAST, "--out", out,
                match="model.safetensors': no space left on the device; free some space or write "
                      "elsewhere; checkpoint.pt is kept, so once that is fixed --resume finishes the run")
        assert leftovers(disk) == ["r", f"r/{CHECKPOINT}"]  # no weights without their record
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        status, out_text, err = run(capsys, "train", *FAST, "--resume", "--out", out)
        assert status == 0 and "resuming" in out_text, err
        a, b = load_file(str(out / WEIGHTS)), load_file(str(trained / WEIGHTS))
        assert all(torch.equal(a[k], b[k]) for k in a)    # the same run as one that never failed

    @pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
    def test_convert_does_not_fit(self, tmp_path, capsys, small_disk, suffix):
        disk = small_disk(64 << 10)
        refused(capsys, "convert", "--model", "lenet-wolf", "--method", "blurpool",
                "--out", disk / "models" / f"blur{suffix}", match="no space left on the device")
        assert leftovers(disk) == []


# ----------------------------------------------------------------------------- two runs
class TestTwoRunsIntoOneFolder:
    def test_second_run_is_refused_and_a_killed_runs_lock_blocks_nothing(self, tmp_path):
        out = tmp_path / "r"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cli = [sys.executable, "-m", "shiftlab", "train", *FAST[:-3]]
        first = subprocess.Popen(cli + ["--epochs", "100000", "--quiet", "--out", str(out)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and first.poll() is None and \
                    not ((out / LOCK).is_file() and (out / LOCK).read_text().strip()):
                time.sleep(0.05)
            assert first.poll() is None, first.stderr.read()
            assert (out / LOCK).read_text().strip() == str(first.pid)
            second = subprocess.run(cli + ["--epochs", "1", "--quiet", "--out", str(out)], env=env,
                                    capture_output=True, text=True)
            assert second.returncode == 2
            assert second.stderr.strip().splitlines() == [
                f"shiftlab train: error: another training run is writing to {out} (pid {first.pid}); "
                "wait for it to finish or write elsewhere"]
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert (out / LOCK).read_text().strip() == str(first.pid)   # stale: its process is gone
        third = subprocess.run(cli + ["--epochs", "1", "--quiet", "--out", str(out)], env=env,
                               capture_output=True, text=True)
        assert third.returncode == 0, third.stderr
        assert not (out / LOCK).exists() and (out / WEIGHTS).is_file()

    def test_in_one_process_too(self, tmp_path):
        from shiftlab.io import locked_folder
        with locked_folder(tmp_path / "r", who="training run"):
            with pytest.raises(ValueError, match=f"another training run is writing to {tmp_path / 'r'} "
                                                 f"\\(pid {os.getpid()}\\)"):
                with locked_folder(tmp_path / "r", who="training run"):
                    pass
        assert leftovers(tmp_path) == ["r"]                 # the lock file is gone, the folder stays


# ----------------------------------------------------------------------------- convert
class TestConvert:
    @pytest.mark.parametrize("args,match", [
        (["--method", "antialias"], "unknown --method 'antialias'; choose one of blurpool, aps, circular"),
        (["--method", "blurpool", "--filter-size", "0"], "filter_size must be an integer from 1 to"),
        (["--method", "blurpool", "--filter-size", str(10**30)], "filter_size must be an integer from 1 to"),
        (["--method", "blurpool", "--padding", "mirror"], "unknown padding 'mirror'"),
        (["--method", "aps", "--input", "1x100000x100000"], "1x100000x100000 is 10,000,000,000 values, more than the cap"),
        (["--method", "blurpool", "--input", "28"], "--input needs CxHxW (images) or CxT (signals)"),
    ])
    def test_refused_before_the_model_is_built(self, tmp_path, capsys, args, match):
        marker = tmp_path / "built"
        spec = model_file(tmp_path, f"open({str(marker)!r}, 'w').close()\nNet = lambda: nn.Conv2d(1, 1, 3)")
        refused(capsys, "convert", "--model", spec, *args, "--out", tmp_path / "c" / "w.safetensors",
                match=match)
        assert not marker.exists() and not (tmp_path / "c").exists()

    @pytest.mark.parametrize("out,match", [
        ("dir", "is a directory"),
        ("file/w.safetensors", "is a file"),
        ("w.txt", "--out must end in .safetensors or .pt"),
    ])
    def test_bad_out(self, tmp_path, capsys, out, match):
        (tmp_path / "dir").mkdir()
        (tmp_path / "file").write_text("x")
        refused(capsys, "convert", "--model", "lenet-wolf", "--method", "aps", "--out", tmp_path / out,
                match=match)
        assert leftovers(tmp_path) == ["dir", "file"]

    @pytest.mark.parametrize("damage,match", [
        ("truncated-safetensors", "is not a readable PyTorch checkpoint"),
        ("pickle-runs-code", "cannot be unpickled"),
    ])
    def test_bad_weights(self, tmp_path, capsys, trained, damage, match):
        marker = tmp_path / "pwned"
        if damage == "pickle-runs-code":
            weights = tmp_path / "w.pt"
            torch.save({"model": Evil(marker)}, weights)
        else:
            weights = tmp_path / "w.safetensors"
            weights.write_bytes((trained / WEIGHTS).read_bytes()[:3000])
        refused(capsys, "convert", "--model", "lenet-wolf", "--weights", weights, "--method", "aps",
                "--out", tmp_path / "c" / "w.safetensors", match=match)
        assert not marker.exists() and not (tmp_path / "c").exists()

    def test_written_weights_carry_their_digest(self, tmp_path, capsys, trained):
        status, _, err = run(capsys, "convert", "--model", "lenet-wolf", "--weights", trained / WEIGHTS,
                             "--method", "blurpool", "--out", tmp_path / "c" / "w.safetensors")
        assert status == 0, err
        from safetensors import safe_open

        from shiftlab.io import digest
        with safe_open(str(tmp_path / "c" / "w.safetensors"), "pt") as f:
            stored = f.metadata()["sha256"]
            assert stored == digest({k: f.get_tensor(k) for k in f.keys()})


def test_the_hostile_pickle_really_runs_code():
    """Guard for the Evil fixture: unpickled without weights_only it really runs code."""
    assert pickle.loads(pickle.dumps(Evil("/dev/null"))) == 0
