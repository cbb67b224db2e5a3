"""Devices and mixed precision: ``--device`` and ``--amp`` checked in one place
(:mod:`shiftlab.device`), the audit under bf16/fp16 autocast on the CPU with the tolerance
of its compute dtype recorded, and every bad device or amp as one line, exit 2, nothing
written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shiftlab import ShiftlabError, audit
from shiftlab.audit import TOLERANCE
from shiftlab.cli import main
from shiftlab.device import (_autocast_refusal, check_amp, default_training_device, ieee_float32,
                             resolve_device, training_device)
from shiftlab.models import create_model

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()
FAST = ["--pairs", "1", "--quiet", "--shifts=-1:1", "--data", "synthetic:4"]


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_is_always_there(spec):
    assert resolve_device(spec) == torch.device("cpu")


def test_auto_is_cuda_then_mps_then_cpu():
    expected = "cuda" if not NO_CUDA else "mps" if not NO_MPS else "cpu"
    assert resolve_device("auto").type == expected == resolve_device(None).type


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", "mps:1", "cuda:0:1", "", "tpu"])
def test_a_name_that_is_no_device_is_refused_with_the_choices(spec):
    with pytest.raises(ShiftlabError, match=r"unknown device .*; use one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device(spec)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_says_why_and_what_to_do(spec):
    with pytest.raises(ShiftlabError) as err:
        resolve_device(spec)
    message = str(err.value)
    assert message.startswith(f"device '{spec}' is not available: ")
    assert message.endswith("or use --device cpu") and "\n" not in message
    assert ("built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible") in message


@pytest.mark.skipif(not NO_MPS, reason="this machine has MPS")
def test_mps_without_mps_says_what_it_needs():
    with pytest.raises(ShiftlabError, match="device 'mps' is not available: it needs an Apple-silicon Mac"):
        resolve_device("mps")


def test_float32_stays_ieee_on_cuda_and_nothing_changes_elsewhere():
    knobs = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with ieee_float32(torch.device("cpu")):
        assert (torch.backends.cuda.matmul.fp32_precision,
                torch.backends.cudnn.conv.fp32_precision) == knobs
    with ieee_float32(torch.device("cuda")):        # only flips settings: runs without a GPU
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == knobs


def test_training_device_reaches_train_without_a_device_and_is_checked():
    assert default_training_device() == torch.device("cpu")
    with training_device("cpu") as device:
        assert default_training_device() == device == torch.device("cpu")
    if NO_CUDA:
        with pytest.raises(ShiftlabError, match="device 'cuda' is not available"):
            with training_device("cuda"):
                pass
    assert default_training_device() == torch.device("cpu")


# ----------------------------------------------------------------------------- amp
@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), (None, None)])
def test_both_16_bit_autocasts_run_on_the_cpu_in_torch_2_13(amp, dtype):
    assert check_amp(amp, torch.device("cpu"), torch.float32) == dtype


def test_autocast_that_torch_refuses_is_caught_from_torch_itself():
    """CPU autocast refuses float64 (torch warns and disables itself): that is the check."""
    assert _autocast_refusal(torch.device("cpu"), torch.bfloat16) is None
    assert "target dtype is not supported" in _autocast_refusal(torch.device("cpu"), torch.float64)


@pytest.mark.parametrize("amp,model_dtype,words", [
    ("fp16", torch.float64, "this model is float64, which autocast leaves as it is"),
    ("bf16", torch.float16, "this model is float16"),
    ("int8", torch.float32, "unknown amp 'int8'"),
])
def test_amp_that_cannot_work_is_one_line(amp, model_dtype, words):
    with pytest.raises(ShiftlabError, match=words):
        check_amp(amp, torch.device("cpu"), model_dtype)


def test_the_16_bit_tolerances_are_ten_units_of_rounding():
    assert TOLERANCE[torch.bfloat16] == 10 * 2.0 ** -7 and TOLERANCE[torch.float16] == 10 * 2.0 ** -10
    assert TOLERANCE[torch.float32] == 1e-5 and TOLERANCE[torch.float64] == 1e-10


@pytest.mark.parametrize("amp,compute", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_an_audit_under_autocast_keeps_exact_layers_exact_and_records_its_precision(amp, compute):
    torch.manual_seed(0)
    model = create_model("conv-maxpool")                         # total stride 4
    x = torch.rand(4, 1, 16, 16)
    full = audit(model, x, shifts="-4:4", pairs=2)
    low = audit(model, x, shifts="-4:4", pairs=2, amp=amp)
    p = low.provenance
    assert (p.amp, p.dtype, p.compute_dtype, p.device) == (amp, "float32", compute, "cpu")
    assert p.tolerance == TOLERANCE[getattr(torch, compute)]
    assert full.provenance.compute_dtype == "float32" and full.provenance.amp is None
    for a, b in zip(full.layers, low.layers):
        if a.comparison == "equivariance":
            assert b.error_exact == 0.0                          # position-independent rounding
            assert b.verdict(p.tolerance) == a.verdict(full.provenance.tolerance)
    # the forward passes really ran in 16 bits: the errors of other shifts moved a little
    other = [(a.error_other, b.error_other) for a, b in zip(full.layers, low.layers) if a.error_other]
    assert other and all(abs(f - h) <= 0.1 * f for f, h in other)
    assert any(f != h for f, h in other)
    assert f"float32 (autocast {compute})" in low.table().splitlines()[0]


def test_amp_is_refused_for_a_float64_model_before_any_forward():
    model = create_model("conv-circular").double()
    with pytest.raises(ShiftlabError, match="this model is float64"):
        audit(model, torch.rand(2, 1, 8, 8, dtype=torch.float64), amp="bf16")
    with pytest.raises(ShiftlabError, match="unknown amp 'bf32'"):
        audit(model, torch.rand(2, 1, 8, 8, dtype=torch.float64), amp="bf32")


# ----------------------------------------------------------------------------- the command line
def test_audit_records_device_and_amp_in_the_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["audit", "--model", "conv-circular", *FAST, "--device", "cpu", "--amp", "bf16",
                 "--out", str(out)]) == 0
    p = json.loads(out.read_text())["provenance"]
    assert (p["device"], p["amp"], p["compute_dtype"], p["processes"]) == ("cpu", "bf16", "bfloat16", 1)
    assert p["tolerance"] == TOLERANCE[torch.bfloat16]
    assert "autocast bfloat16" in capsys.readouterr().out
    from shiftlab import AuditResult
    assert AuditResult.from_json(out).provenance.compute_dtype == "bfloat16"
    older = json.loads(out.read_text())                          # written before these fields
    for name in ("device", "amp", "compute_dtype", "processes"):
        del older["provenance"][name]
    assert AuditResult.from_dict(older).provenance.device == "cpu"


def test_train_records_its_device(tmp_path):
    from shiftlab.train import TrainConfig, train
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    record = train(TrainConfig(model="lenet-wolf", epochs=1, batch_size=8), tmp_path / "run",
                   data=((x, y), (x[:4], y[:4])), progress=False, log=lambda *_: None)
    assert record.device == "cpu"
    assert json.loads((tmp_path / "run" / "train.json").read_text())["device"] == "cpu"


BAD = {
    "audit-cuda": (["audit", "--model", "conv-circular", *FAST, "--device", "cuda"],
                   "device 'cuda' is not available", NO_CUDA),
    "audit-cuda-index": (["audit", "--model", "conv-circular", *FAST, "--device", "cuda:7"],
                         "device 'cuda:7' is not available" if NO_CUDA else "choose one of those", True),
    "audit-mps": (["audit", "--model", "conv-circular", *FAST, "--device", "mps"],
                  "device 'mps' is not available", NO_MPS),
    "audit-unknown": (["audit", "--model", "conv-circular", *FAST, "--device", "tpu"],
                      "unknown device 'tpu'", True),
    "audit-amp-float64": (["audit", "--model", "conv-circular", *FAST, "--amp", "fp16", "--dtype", "float64"],
                          "--amp fp16 lowers float32 layers to float16; this model is float64", True),
    "audit-amp-choice": (["audit", "--model", "conv-circular", *FAST, "--amp", "int8"],
                         "argument --amp: invalid choice: 'int8'", True),
    "train-cuda": (["train", "--model", "lenet-wolf", "--data", "synthetic:8:1x28x28", "--device", "cuda"],
                   "device 'cuda' is not available", NO_CUDA),
    "animate-mps": (["animate", "--model", "lenet-wolf", "--data", "digits", "--device", "mps"],
                    "device 'mps' is not available", NO_MPS),
    "experiment-cuda": (["experiment", "weight-sharing", "--quick", "--device", "cuda"],
                        "device 'cuda' is not available", NO_CUDA),
}
OUT = {"audit": "new/r.json", "train": "new/run", "animate": "new/a.gif", "experiment": "new/exp"}


@pytest.mark.parametrize("case", BAD)
def test_a_device_or_amp_this_machine_lacks_is_one_line_and_nothing_written(case, tmp_path, capsys):
    argv, words, applies = BAD[case]
    if not applies:
        pytest.skip("this machine has that device")
    argv = [*argv, "--out", str(tmp_path / OUT[argv[0]])]
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shiftlab {argv[0]}: error: "), lines
    assert words in lines[0]
    assert list(Path(tmp_path).iterdir()) == []
