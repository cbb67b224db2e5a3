"""Models and weights from the command line: a registered name or ``path.py:factory``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from .errors import ShiftlabError, one_line
from .models import create_model
from .models.registry import builder_accepts
from .train import WEIGHTS


def load_model(spec: str, input_size: int | None = None) -> nn.Module:
    """Build a model from a registry name, or from ``file.py:factory`` (called with no
    arguments, it must return an ``nn.Module``). Zoo models whose head depends on the
    image size get ``input_size``."""
    if ":" not in spec and not spec.endswith(".py"):
        sized = input_size is not None and builder_accepts(spec, "input_size")
        return create_model(spec, **({"input_size": input_size} if sized else {}))
    file, _, factory = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not factory:
        raise ShiftlabError(f"say which factory to call: {spec}:NAME")
    path = Path(file)
    if not path.is_file():
        raise ShiftlabError(f"model file {file!r} does not exist")
    module_name = f"shiftlab_user_{path.stem}"
    try:
        spec_obj = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        spec_obj.loader.exec_module(module)
    except Exception as err:
        raise ShiftlabError(f"importing {file} failed: {one_line(err)}") from None
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise ShiftlabError(f"{file} has no callable {factory!r}")
    try:
        model = fn()
    except Exception as err:
        raise ShiftlabError(f"{file}:{factory}() raised {one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ShiftlabError(f"{file}:{factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True`` or safetensors): a state dict, or a
    dict holding one under ``model`` / ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise ShiftlabError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = "it cannot be unpickled" if "pickl" in type(err).__name__.lower() or \
            "pickl" in str(err).lower()[:200] else one_line(err)
        raise ShiftlabError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ShiftlabError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model``; a mismatch names the first offending keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ShiftlabError(f"weights in {path} do not match the model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return model


def load_trained(model_name: str, folder: str | Path, input_size: int | None = None) -> nn.Module:
    """The model that :func:`shiftlab.train.train` wrote into ``folder``: built by
    :func:`load_model` (sized for ``input_size``), its weights read from ``folder/model.safetensors``,
    in eval mode."""
    return load_weights(load_model(model_name, input_size), Path(folder) / WEIGHTS).eval()


def load_matching_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy into ``model`` every tensor of the checkpoint at ``path`` whose name and shape
    match; leave the rest as initialised. For fine-tuning a related architecture (a head
    sized for another input, a converted pool). Returns ``(loaded, kept)`` key lists."""
    state = read_state_dict(path)
    own = model.state_dict()
    loaded = [k for k in own if k in state and state[k].shape == own[k].shape]
    if not loaded:
        raise ShiftlabError(f"no tensor in {path} matches the model by name and shape; "
                            "is it a checkpoint of a related architecture?")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, [k for k in own if k not in loaded]
