"""Models and weights from the command line: a registered name or ``path.py:factory``."""
from __future__ import annotations

import importlib.util
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import ShiftlabError, one_line
from .models import create_model
from .models.registry import builder_accepts

MAX_CHECKPOINT_BYTES = 2 ** 32      # what a .pt checkpoint may unpack to


#: The weights file of a trained run's folder (``shiftlab train --out DIR`` writes DIR/WEIGHTS).
WEIGHTS = "model.safetensors"

def _call(what: str, fn):
    """``fn()``; whatever it raises or exits with (``sys.exit`` included, Ctrl-C excepted)
    becomes one line naming ``what``."""
    try:
        return fn()
    except ShiftlabError:
        raise
    except KeyboardInterrupt:
        raise
    except SystemExit as err:
        raise ShiftlabError(f"{what} called sys.exit({err.code!r}); a model file must define "
                            "the factory, not run as a script") from None
    except BaseException as err:                  # noqa: B036 - user code may raise anything
        raise ShiftlabError(f"{what} raised {one_line(err)}") from None


def load_model(spec: str, input_size: int | None = None) -> nn.Module:
    """Build a model from a registry name, or from ``file.py:factory`` (called with no
    arguments, it must return an ``nn.Module``). Zoo models whose head depends on the
    image size get ``input_size``.

    Whatever the file does while it is imported or while the factory runs (raise, call
    ``sys.exit``) is a one-line :class:`ShiftlabError`; only Ctrl-C passes through.
    """
    if ":" not in spec and not spec.endswith(".py"):
        sized = input_size is not None and builder_accepts(spec, "input_size")
        return create_model(spec, **({"input_size": input_size} if sized else {}))
    file, _, factory = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not file:
        raise ShiftlabError(f"--model {spec!r} names no file; give a zoo name (see `shiftlab "
                            "models`) or FILE.py:FACTORY")
    if not factory:
        raise ShiftlabError(f"say which factory to call: {spec}:NAME")
    path = Path(file)
    if not path.exists():
        raise ShiftlabError(f"model file {file!r} does not exist")
    if not path.is_file() or path.suffix != ".py":
        raise ShiftlabError(f"model file {file!r} is not a Python file; give FILE.py:{factory}")
    module_name = f"shiftlab_user_{path.stem}"
    spec_obj = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[module_name] = module
    try:
        _call(f"importing {file}", lambda: spec_obj.loader.exec_module(module))
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise ShiftlabError(f"{file} has no callable {factory!r}")
    model = _call(f"{file}:{factory}()", fn)
    if not isinstance(model, nn.Module):
        raise ShiftlabError(f"{file}:{factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def _check_unpacked_size(path: Path) -> None:
    """A zip-format ``.pt`` must not declare more than ``MAX_CHECKPOINT_BYTES`` unpacked."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_CHECKPOINT_BYTES:
            raise ShiftlabError(f"{path} unpacks to {unpacked:,} bytes, more than the cap of "
                                f"{MAX_CHECKPOINT_BYTES:,} (4 GiB) for a checkpoint")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True`` or safetensors): a state dict, or a
    dict holding one under ``model`` / ``state_dict``."""
    path = Path(path)
    if not path.exists():
        raise ShiftlabError(f"weights file {str(path)!r} does not exist")
    if not path.is_file():
        raise ShiftlabError(f"weights {str(path)!r} is not a regular file (a folder, FIFO or "
                            "device); give a .pt or .safetensors file")
    if path.stat().st_size == 0:
        raise ShiftlabError(f"weights file {str(path)!r} is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            _check_unpacked_size(path)
            with warnings.catch_warnings():       # torch's notes on pickle protocols
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except ShiftlabError:
        raise
    except Exception as err:
        reason = "it cannot be unpickled safely: Python objects other than tensors, or an " \
                 "unsupported pickle protocol" if "pickl" in type(err).__name__.lower() or \
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
