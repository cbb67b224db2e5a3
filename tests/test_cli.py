"""End-to-end tests of the ``shiftlab`` command line, run in-process through ``main``.

Every failing audit must exit with status 2, print exactly one line on stderr that names
the problem, and leave nothing at (or beside) the ``--out`` path.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from shiftlab.cli import main
from shiftlab.models import create_model
from shiftlab.result import AuditResult

FAST = ["--shifts=-1:1", "--pairs", "1", "--quiet"]


def _out_dir(tmp_path):
    return tmp_path / "results"


def _error_line(capsys) -> str:
    """The single stderr line of a failed command (asserts there is exactly one)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{captured.err}"
    assert lines[0].strip(), "the error line is empty"
    return lines[0]


def _assert_no_output(out_dir, out):
    assert not out.exists(), f"{out} was written by a failed audit"
    if out_dir.exists():
        leftovers = sorted(p.name for p in out_dir.iterdir())
        assert leftovers == [], f"stray files beside --out: {leftovers}"


# ----------------------------------------------------------------------------- happy path
def test_audit_happy_path(tmp_path, capsys):
    out = _out_dir(tmp_path) / "r.json"
    rc = main(["audit", "--model", "conv-circular", "--data", "synthetic:8", *FAST,
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "equivariant" in captured.out
    assert "features.0" in captured.out
    assert f"wrote {out}" in captured.out
    assert out.is_file()
    json.loads(out.read_text())                               # valid JSON
    result = AuditResult.from_json(out)
    assert result.provenance.n_images == 8
    assert result.provenance.model == "conv-circular"
    assert result.provenance.protocol == "circular"
    assert len(result.shifts) == 9
    assert result.layer("features.0").verdict(result.provenance.tolerance) == "equivariant"
    # the atomic write left no temp file behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json"]


def test_audit_overwrites_existing_output_on_success(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("old")
    assert main(["audit", "--model", "conv-circular", "--data", "synthetic:8", *FAST,
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert AuditResult.from_json(out).provenance.n_images == 8


def test_audit_with_matching_weights(tmp_path, capsys):
    weights = tmp_path / "maxpool.pt"
    torch.save(create_model("conv-maxpool").state_dict(), weights)
    out = tmp_path / "r.json"
    rc = main(["audit", "--model", "conv-maxpool", "--weights", str(weights),
               "--data", "synthetic:4", *FAST, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert AuditResult.from_json(out).provenance.n_images == 4


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    for name in ("conv-circular", "conv-maxpool", "lenet-wolf"):
        assert name in names


def test_layers_shows_measured_strides(capsys):
    assert main(["layers", "--model", "conv-maxpool"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip()}
    assert "features.5" in rows
    name, kind, shape, stride = rows["features.5"][:4]
    assert kind == "MaxPool2d"
    assert stride == "4"
    assert rows["features.0"][3] == "1"
    assert rows["features.2"][3] == "2"


# ----------------------------------------------------------------------------- bad input
def _npz(path, x):
    np.savez(path, x=x)
    return str(path)


def _py(path, text):
    path.write_text(text)
    return path


def case_channels(tmp):
    """(Zoo models take the data's channel count; a model file's first conv does not.)"""
    model = _py(tmp / "grey.py", "from torch import nn\n\ndef build():\n    return nn.Sequential("
                "nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n")
    return ["--model", f"{model}:build", "--data", "synthetic:4:3x28x28"], "channel"


def case_image_smaller_than_shift(tmp):
    return ["--model", "conv-circular", "--data", "synthetic:4:1x8x8", "--shifts=-9:9"], \
        "not smaller than"


def case_empty_data(tmp):
    data = _npz(tmp / "empty.npz", np.zeros((0, 1, 28, 28), np.float32))
    return ["--model", "conv-circular", "--data", data], "no images"


def case_nan_inputs(tmp):
    x = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    x[1, 0, 3, 5] = np.nan
    return ["--model", "conv-circular", "--data", _npz(tmp / "nan.npz", x)], "NaN"


def case_unknown_layer(tmp):
    return ["--model", "conv-circular", "--data", "synthetic:4", "--layers", "nope"], "nope"


def case_missing_model_file(tmp):
    return ["--model", f"{tmp / 'absent.py'}:build", "--data", "synthetic:4"], "does not exist"


def case_model_import_raises(tmp):
    path = _py(tmp / "broken_import.py", "raise RuntimeError('kaboom at import')\n")
    return ["--model", f"{path}:build", "--data", "synthetic:4"], "kaboom at import"


def case_factory_raises(tmp):
    path = _py(tmp / "bad_factory.py",
               "def build():\n    raise ValueError('factory exploded')\n")
    return ["--model", f"{path}:build", "--data", "synthetic:4"], "factory exploded"


def case_factory_returns_non_module(tmp):
    path = _py(tmp / "not_module.py", "def build():\n    return 42\n")
    return ["--model", f"{path}:build", "--data", "synthetic:4"], "nn.Module"


def case_weights_random_bytes(tmp):
    weights = tmp / "junk.pt"
    weights.write_bytes(np.random.default_rng(1).bytes(512))
    return ["--model", "conv-maxpool", "--weights", str(weights), "--data", "synthetic:4"], \
        "junk.pt"


def case_weights_other_architecture(tmp):
    weights = tmp / "maxpool.pt"
    torch.save(create_model("conv-maxpool").state_dict(), weights)
    return ["--model", "lenet-wolf", "--weights", str(weights), "--data", "synthetic:4"], \
        "do not match"


def case_unknown_model_name(tmp):
    return ["--model", "no-such-net", "--data", "synthetic:4"], "no-such-net"


def case_corrupt_npz(tmp):
    good = tmp / "good.npz"
    np.savez(good, x=np.random.default_rng(2).random((4, 1, 28, 28)).astype(np.float32))
    data = tmp / "corrupt.npz"
    raw = good.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    return ["--model", "conv-circular", "--data", str(data)], "corrupt.npz"


def case_crop_without_window(tmp):
    return ["--model", "conv-circular", "--data", "synthetic:4", "--protocol", "crop"], "crop"


def case_fractional_shifts_circular(tmp):
    return ["--model", "conv-circular", "--data", "synthetic:4", "--shifts=-1:1:0.5"], \
        "integer"


def case_bad_shift_spec(tmp):
    return ["--model", "conv-circular", "--data", "synthetic:4", "--shifts=abc"], "abc"


BAD_INPUTS = [case_channels, case_image_smaller_than_shift, case_empty_data, case_nan_inputs,
              case_unknown_layer, case_missing_model_file, case_model_import_raises,
              case_factory_raises, case_factory_returns_non_module, case_weights_random_bytes,
              case_weights_other_architecture, case_unknown_model_name, case_corrupt_npz,
              case_crop_without_window, case_fractional_shifts_circular, case_bad_shift_spec]


def _fast_defaults(args: list[str]) -> list[str]:
    """Add the fast options each case does not set itself."""
    extra = [] if any(a.startswith("--shifts") for a in args) else ["--shifts=-1:1"]
    return args + extra + ["--pairs", "1", "--quiet"]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda f: f.__name__[len("case_"):])
def test_bad_input_is_one_line_exit_2_no_output(case, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, needle = case(inputs)
    out_dir = _out_dir(tmp_path)
    out = out_dir / "r.json"
    rc = main(["audit", *_fast_defaults(args), "--out", str(out)])
    line = _error_line(capsys)
    assert rc == 2
    assert line.startswith("shiftlab audit: error: "), line
    assert needle.lower() in line.lower(), line
    _assert_no_output(out_dir, out)


def test_unknown_protocol_rejected_by_argparse(tmp_path, capsys):
    out_dir = _out_dir(tmp_path)
    out = out_dir / "r.json"
    assert main(["audit", "--model", "conv-circular", "--data", "synthetic:4", *FAST,
                 "--protocol", "sideways", "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert line.startswith("shiftlab audit: error: argument --protocol: invalid choice: 'sideways'")
    _assert_no_output(out_dir, out)


@pytest.mark.parametrize("case", [case_channels, case_nan_inputs, case_unknown_layer,
                                  case_weights_other_architecture, case_bad_shift_spec],
                         ids=lambda f: f.__name__[len("case_"):])
def test_failed_audit_does_not_clobber_existing_output(case, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, _ = case(inputs)
    out_dir = _out_dir(tmp_path)
    out_dir.mkdir()
    out = out_dir / "r.json"
    out.write_text("old")
    assert main(["audit", *_fast_defaults(args), "--out", str(out)]) == 2
    _error_line(capsys)
    assert out.read_text() == "old"
    assert sorted(p.name for p in out_dir.iterdir()) == ["r.json"]


# ----------------------------------------------------------------------------- output paths and edge cases
def _run_expecting_one_line_error(argv, capsys) -> str:
    rc = main(argv)
    line = _error_line(capsys)
    assert rc == 2
    assert line.startswith("shiftlab audit: error: "), line
    return line


def test_out_is_an_existing_directory(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    _run_expecting_one_line_error(["audit", "--model", "conv-circular", "--data", "synthetic:4",
                                   *FAST, "--out", str(out)], capsys)
    assert out.is_dir() and list(out.iterdir()) == []


def test_out_parent_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    _run_expecting_one_line_error(["audit", "--model", "conv-circular", "--data", "synthetic:4",
                                   *FAST, "--out", str(blocker / "r.json")], capsys)


def test_crop_with_one_number(tmp_path, capsys):
    _run_expecting_one_line_error(["audit", "--model", "conv-circular", "--data", "synthetic:4",
                                   "--protocol", "crop", "--crop", "40", "--shifts=-1:1",
                                   "--pairs", "1", "--quiet",
                                   "--out", str(tmp_path / "r.json")], capsys)


def test_nan_shift_range(tmp_path, capsys):
    _run_expecting_one_line_error(["audit", "--model", "conv-circular", "--data", "synthetic:4",
                                   "--shifts=nan:1", "--pairs", "1", "--quiet",
                                   "--out", str(tmp_path / "r.json")], capsys)


def test_result_file_mode_follows_umask(tmp_path, capsys):
    import os
    import stat
    umask = os.umask(0o022)
    try:
        out = tmp_path / "r.json"
        assert main(["audit", "--model", "conv-circular", "--data", "synthetic:4", *FAST,
                     "--out", str(out)]) == 0
    finally:
        os.umask(umask)
    capsys.readouterr()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.parametrize("argv", [
    ["animate", "--model", "lenet-wolf", "--data", "digits", "--canvas", "10"],
    ["convert", "--model", "lenet-wolf", "--method", "blurpool", "--input", "1x8x8"],
])
def test_a_net_too_small_for_the_input_is_a_one_line_error(argv, tmp_path, capsys):
    out = tmp_path / ("a.gif" if argv[0] == "animate" else "c.safetensors")
    assert main([*argv, "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"shiftlab {argv[0]}: error: lenet-wolf: input_size ")
    assert "images need at least 18x18 pixels" in line and not out.exists()
