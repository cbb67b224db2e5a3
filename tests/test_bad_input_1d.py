"""1-D signals through the command line: the happy path, and each bad input of issue 11
as one line, exit 2, nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shiftlab.cli import main


def test_signals_audit_convert_and_layers_from_the_shell(tmp_path, capsys):
    out = tmp_path / "a.json"
    assert main(["audit", "--model", "conv1d-maxpool", "--data", "synthetic:8:1x64",
                 "--shifts=-4:4", "--pairs", "2", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features.2  MaxPool1d" in text and "equivariant at multiples of 2" in text
    result = json.loads(out.read_text())
    assert result["provenance"]["input_shape"] == [1, 64] and result["shifts"][0] == [-4.0]
    assert main(["layers", "--model", "conv1d-maxpool", "--input", "1x64"]) == 0
    assert "16x32   2 (measured)" in capsys.readouterr().out
    fixed = tmp_path / "fixed.safetensors"
    assert main(["convert", "--model", "conv1d-maxpool", "--method", "aps", "--input", "1x64",
                 "--out", str(fixed)]) == 0 and fixed.is_file()


def test_signals_from_an_array_file(tmp_path, capsys):
    path = tmp_path / "sig.npz"
    np.savez(path, x=np.random.rand(6, 50).astype(np.float32), y=np.arange(6) % 3)
    out = tmp_path / "a.json"
    assert main(["audit", "--model", "conv1d-circular", "--data", f"signals:{path}",
                 "--shifts=x=-3:3", "--pairs", "1", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"]["input_shape"] == [1, 50]


def _fails(tmp_path, capsys, argv, match):
    out = tmp_path / "res" / "r.json"
    rc = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert match in err[0], err[0]
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize("argv,match", [
    # a 1-D signal given to a 2-D-only model, and the reverse
    (["audit", "--model", "conv-circular", "--data", "synthetic:4:1x40"],
     "starts with a Conv2d (2-D inputs) but the data are 1-D signals"),
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x16x16"],
     "starts with a Conv1d (1-D inputs) but the data are 2-D images"),
    # a 2-D shift grid for 1-D data
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x40", "--shifts=y=-2:2"],
     "a 2-D shift grid 'y=-2:2' for 1-D data"),
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x40", "--shifts=0,0;1,2"],
     "for 1-D data"),
    # a signal shorter than the shift, or than the filter
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x6", "--shifts=-6:6"],
     "not smaller than the 6 input"),
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x1", "--shifts=0:0"],
     "no room for random consistency shifts on 1 inputs"),
    # crops and canvases that do not fit signals
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x40", "--protocol", "crop",
      "--crop", "32x32"], "does not fit signals"),
    (["audit", "--model", "conv1d-circular", "--data", "synthetic:4:1x40", "--canvas", "60"],
     "the data are 1-D signals"),
])
def test_bad_signal_inputs(tmp_path, capsys, argv, match):
    _fails(tmp_path, capsys, [*argv, "--quiet"] if argv[0] == "audit" else argv, match)


@pytest.mark.parametrize("values,match", [
    (np.full((3, 40), np.nan, dtype=np.float32), "NaN or infinite"),
    (np.full((3, 40), np.inf, dtype=np.float32), "NaN or infinite"),
])
def test_non_finite_audio_is_refused(tmp_path, capsys, values, match):
    path = tmp_path / "bad.npy"
    np.save(path, values)
    _fails(tmp_path, capsys, ["audit", "--model", "conv1d-circular", "--data", f"signals:{path}",
                              "--quiet"], match)


def test_a_signal_shorter_than_the_filter(tmp_path, capsys):
    model = tmp_path / "net.py"
    model.write_text("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Conv1d(1, 2, 9))\n")
    _fails(tmp_path, capsys, ["audit", "--model", f"{model}:build", "--data", "synthetic:4:1x5",
                              "--shifts=-1:1", "--pairs", "0", "--quiet"],
           "cannot run on inputs of shape (1, 1, 5)")
