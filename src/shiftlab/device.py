"""Where a model runs and in what precision: ``--device`` and ``--amp``, checked in one place.

* :func:`resolve_device` turns ``auto | cpu | cuda | cuda:N | mps`` into a ``torch.device``
  (``auto``: CUDA if a GPU is visible, else MPS, else the CPU); a device this machine lacks
  is a one-line :class:`~shiftlab.errors.ShiftlabError`.
* :func:`check_amp` turns ``bf16 | fp16`` into the autocast dtype after checking that
  ``torch.autocast`` supports it on the device and that the model computes in float32
  (autocast lowers float32 layers only; a float64 model would silently stay float64).
* :func:`autocast` runs a block in that dtype; :func:`ieee_float32` keeps float32 in
  float32 on CUDA (no TF32 convolutions or matmuls) while an audit measures errors of
  order 1e-7.

Convention: autocast runs convolutions and matmuls in the 16-bit dtype and keeps
reductions such as softmax in float32 (PyTorch's autocast op lists); in torch 2.13 both
bf16 and fp16 autocast run on the CPU.

>>> resolve_device("cpu")
device(type='cpu')
>>> check_amp("bf16", torch.device("cpu"), torch.float32)
torch.bfloat16
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch

from .errors import ShiftlabError

__all__ = ["DEVICES", "AMP", "resolve_device", "check_amp", "autocast", "ieee_float32",
           "device_name", "training_device", "default_training_device"]

#: what ``--device`` accepts (``cuda:N`` with N a GPU index)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: ``--amp`` names and their autocast dtypes
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}

_SPEC = re.compile(r"(auto|cpu|mps|cuda)(?::(\d{1,4}))?", re.ASCII)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: "str | torch.device | None" = "auto", *,
                   local_rank: int | None = None) -> torch.device:
    """The device ``spec`` names, checked to exist here.

    ``auto`` is ``cuda`` if a CUDA GPU is visible, else ``mps``, else ``cpu``. Under
    ``torchrun`` (``local_rank`` given), ``cuda`` and ``auto`` mean the GPU of this
    process's local rank, ``cuda:LOCAL_RANK``.
    """
    if spec is None:
        spec = "auto"
    text = str(spec).strip().lower()
    match = _SPEC.fullmatch(text)
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise ShiftlabError(f"unknown device {str(spec)!r}; use one of {', '.join(DEVICES)}")
    kind, index = match[1], match[2]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise ShiftlabError("device 'mps' is not available: it needs an Apple-silicon Mac "
                                "(macOS 12.3 or later) and a torch built with MPS; use "
                                "--device cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is built without CUDA; install a CUDA build "
               "of torch" if torch.version.cuda is None else
               "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise ShiftlabError(f"device {text!r} is not available: {why}, or use --device cpu")
    count = torch.cuda.device_count()
    if index is not None and local_rank is not None and int(index) != local_rank:
        raise ShiftlabError(f"device {text!r} under torchrun: each process takes the GPU of "
                            "its LOCAL_RANK; write --device cuda")
    gpu = int(index) if index is not None else (local_rank or 0)
    if gpu >= count:
        where = f"LOCAL_RANK {local_rank} needs GPU {gpu}" if index is None and local_rank \
            else f"device {text!r}"
        raise ShiftlabError(f"{where}, but this machine has {count} CUDA GPU"
                            f"{'s' if count != 1 else ''} (0 to {count - 1}); "
                            + ("start at most that many processes per node"
                               if index is None and local_rank else "choose one of those"))
    return torch.device("cuda", gpu)


_TRAINING: ContextVar[torch.device | None] = ContextVar("shiftlab_training_device", default=None)


@contextmanager
def training_device(spec: "str | torch.device | None"):
    """Within the block, :func:`shiftlab.train.train` called without ``device=`` trains on
    ``spec`` (checked now): how ``shiftlab experiment --device`` reaches the training runs
    inside experiments. Models that an experiment builds itself stay where it puts them."""
    token = _TRAINING.set(resolve_device(spec))
    try:
        yield _TRAINING.get()
    finally:
        _TRAINING.reset(token)


def default_training_device() -> torch.device:
    """The device of :func:`training_device`'s block, else the CPU."""
    return _TRAINING.get() or torch.device("cpu")


def device_name(device: torch.device) -> str:
    """``cpu``, ``mps``, ``cuda:0``: the device as the JSON records it."""
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def _autocast_refusal(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``torch.autocast`` cannot run ``dtype`` on ``device`` (None: it can). Asks torch
    itself: an unsupported pair either raises or warns and disables autocast."""
    if not torch.amp.is_autocast_available(device.type):
        return f"torch has no autocast for {device.type}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            context = torch.autocast(device.type, dtype=dtype)
        except RuntimeError as err:
            return str(err).strip().splitlines()[0] if str(err).strip() else "refused"
    if not getattr(context, "_enabled", True) or caught:
        return str(caught[0].message).strip().splitlines()[0] if caught else "refused"
    return None


def check_amp(amp: str | None, device: torch.device, model_dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None: no autocast), checked for ``device`` and a
    model whose weights are ``model_dtype``."""
    if amp is None:
        return None
    if amp not in AMP:
        raise ShiftlabError(f"unknown amp {amp!r}; use one of {', '.join(AMP)} (or none)")
    dtype = AMP[amp]
    if model_dtype != torch.float32:
        raise ShiftlabError(f"--amp {amp} lowers float32 layers to {_word(dtype)}; this model is "
                            f"{_word(model_dtype)}, which autocast leaves as it is; use float32 "
                            "weights (--dtype float32) or drop --amp")
    refusal = _autocast_refusal(device, dtype)
    if refusal is not None:
        raise ShiftlabError(f"--amp {amp} is not supported on {device_name(device)} ({refusal}); "
                            + ("use --amp fp16 or " if amp == "bf16" else "")
                            + "drop --amp")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``'s kind, or nothing when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextmanager
def ieee_float32(device: torch.device):
    """Keep float32 convolutions and matmuls in IEEE float32 on CUDA for the block (torch
    defaults cuDNN convolutions to TF32, a 10-bit mantissa: errors of 1e-3 where the audit
    measures 1e-7); the previous settings come back afterwards. Nothing changes elsewhere."""
    if device.type != "cuda":
        yield
        return
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
    before = [k.fp32_precision for k in knobs]
    try:
        for k in knobs:
            k.fp32_precision = "ieee"
        yield
    finally:
        for k, value in zip(knobs, before):
            k.fp32_precision = value


def _word(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
