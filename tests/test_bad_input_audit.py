"""Bad audit options and labels, through the real command line: one line on stderr naming
the problem, exit status 2, nothing written. Grouped by class."""
from __future__ import annotations

import numpy as np
import pytest

from shiftlab.cli import main

FAST = ["--model", "conv-circular", "--shifts=-1:1", "--pairs", "1", "--quiet"]


def _fails(capsys, tmp_path, argv, match):
    out = tmp_path / "results" / "r.json"
    rc = main(["audit", *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("shiftlab audit: error:"), err
    assert match in err[0], err[0]
    assert not out.exists() and not out.parent.exists()
    return err[0]


# --- out-of-range values: accepted silently before, with garbage out ------------------
@pytest.mark.parametrize("extra,match", [
    (["--fill", "nan", "--protocol", "canvas"], "fill must be a finite number"),
    (["--fill", "inf", "--protocol", "canvas"], "fill must be a finite number"),
    (["--margin", "1000", "--protocol", "canvas"], "margin of 1000 leaves no position"),
    (["--margin", "-1", "--protocol", "canvas"], "margin must be 0 or more"),
    (["--pair-range", "-3"], "pair range must be a positive"),
    (["--pair-range", "0"], "pair range must be a positive"),
    (["--pair-range", "nan"], "pair range must be a positive"),
    (["--seed", str(10 ** 30)], "argument --seed: must be in [0, 4294967295]"),
    (["--seed", "-1"], "argument --seed: must be in [0, 4294967295]"),
    (["--batch-size", "0"], "batch size must be in"),
])
def test_out_of_range_options(capsys, tmp_path, extra, match):
    _fails(capsys, tmp_path, [*FAST, "--data", "synthetic:4:1x12x12", *extra], match)


# --- unbounded sizes --------------------------------------------------------------------
@pytest.mark.parametrize("extra,match", [
    (["--pairs", str(10 ** 9)], "pairs per image must be in [0, 10000]"),
    (["--batch-size", str(10 ** 12)], "batch size must be in"),
])
def test_unbounded_sizes(capsys, tmp_path, extra, match):
    argv = [a for a in FAST if a not in ("--pairs", "1")]
    _fails(capsys, tmp_path, [*argv, "--data", "synthetic:4:1x12x12", *extra], match)


# --- labels that are not class indices of the model -------------------------------------
@pytest.mark.parametrize("labels,match", [
    ([0, 1, 10, 2], "labels must be class indices in [0, 9]"),
    ([0, -1, 3, 2], "labels must be class indices in [0, 9]"),
    ([0.5, 1, 2, 3], "labels must be whole numbers"),
    ([0, 1, np.nan, 3], "labels must be whole numbers"),
])
def test_labels_out_of_range(capsys, tmp_path, labels, match):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.rand(4, 1, 12, 12).astype(np.float32), y=np.array(labels))
    _fails(capsys, tmp_path, [*FAST, "--data", str(path)], match)


# --- the crop protocol's window offsets -----------------------------------------------------
def test_crop_offsets_need_room(capsys, tmp_path):
    _fails(capsys, tmp_path, ["--model", "lenet-wolf", "--data", "synthetic:2:1x28x28",
                              "--protocol", "crop", "--crop", "28x28", "--shifts=0:0", "--quiet"],
           "no window offsets in [0, D)")


def test_crop_offsets_are_recorded(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert main(["audit", "--model", "lenet-wolf", "--data", "synthetic:2:1x32x32",
                 "--protocol", "crop", "--crop", "28x28", "--shifts=0:0", "--quiet",
                 "--crop-offsets", "inclusive", "--out", str(out)]) == 0
    assert "[0, D] (every window position)" in capsys.readouterr().out
    assert '"pair_offsets": "crop window offsets uniform in [0, D]' in out.read_text()


# --- empty inputs through the Python API ------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 0, 28), (2, 1, 28, 0), (2, 0, 28, 28), (3, 1, 0), (3, 0, 40)])
def test_empty_inputs_are_named_as_empty_not_as_a_margin(shape):
    """A 0-height image or a 0-length signal was reported as a margin problem."""
    import torch
    from shiftlab import ShiftlabError, audit
    from shiftlab.models import create_model
    model = create_model("conv-circular" if len(shape) == 4 else "conv1d-circular")
    with pytest.raises(ShiftlabError, match=r"the inputs are empty \(shape"):
        audit(model, torch.zeros(shape))
