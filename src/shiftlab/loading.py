"""Models and weights from the command line: a registered name, ``path.py:factory``, or
``torchvision:NAME`` / ``timm:NAME`` (those libraries are imported only then)."""
from __future__ import annotations

import importlib
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


#: ``--model LIBRARY:NAME``: the libraries shiftlab builds models from when they are
#: installed, and how to install each (torchvision's wheel must match the installed torch).
LIBRARIES = {
    "torchvision": "pip install torchvision (the build matching your torch {torch}; for a "
                   "CPU-only torch: pip install torchvision --index-url "
                   "https://download.pytorch.org/whl/cpu)",
    "timm": "pip install timm (it also needs torchvision, the build matching your torch {torch})",
}


def library_spec(spec: str) -> tuple[str, str] | None:
    """``("torchvision", "resnet50")`` for ``"torchvision:resnet50"`` (also ``timm:``),
    ``None`` for a zoo name or a model file."""
    library, colon, name = spec.partition(":")
    return (library, name) if colon and library in LIBRARIES else None


def _import_library(library: str, spec: str):
    """``torchvision.models`` or ``timm``, or a one-line error saying how to install it."""
    install = LIBRARIES[library].format(torch=torch.__version__)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("torchvision.models" if library == "torchvision" else library)
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] == library:
            raise ShiftlabError(f"--model {spec} needs {library}, which is not installed: "
                                f"{install}") from None
        raise ShiftlabError(f"{library} is installed but cannot be imported ({one_line(err)}): "
                            f"{install}") from None
    except Exception as err:              # e.g. a torchvision built for another torch
        raise ShiftlabError(f"{library} is installed but cannot be imported ({one_line(err)}); "
                            f"reinstall it: {install}") from None


def library_model(library: str, name: str, pretrained: bool = False) -> nn.Module:
    """A model built by an installed library: ``torchvision.models.get_model(name,
    weights="DEFAULT" or None)`` or ``timm.create_model(name, pretrained=...)``.
    Pretrained weights are fetched (and cached) by the library itself."""
    spec = f"{library}:{name}"
    if library not in LIBRARIES:
        raise ShiftlabError(f"unknown model library {library!r}; choose one of {', '.join(LIBRARIES)}")
    if not name.strip():
        raise ShiftlabError(f"--model {spec} names no model; give {library}:NAME, e.g. "
                            f"{library}:resnet50")
    module = _import_library(library, spec)
    if library == "torchvision":
        build = getattr(module, "get_model", None)
        if not callable(build):
            raise ShiftlabError("this torchvision has no models.get_model (added in torchvision "
                                "0.14); upgrade it: pip install -U torchvision")
        weights = "DEFAULT" if pretrained else None
        model = _call(f"torchvision.models.get_model({name!r}, weights={weights!r})",
                      lambda: build(name, weights=weights))
    else:
        build = getattr(module, "create_model", None)
        if not callable(build):
            raise ShiftlabError("this timm has no create_model; upgrade it: pip install -U timm")
        model = _call(f"timm.create_model({name!r}, pretrained={pretrained})",
                      lambda: build(name, pretrained=pretrained))
    if not isinstance(model, nn.Module):
        raise ShiftlabError(f"{spec} gave {type(model).__name__}, not an nn.Module")
    return model


def load_model(spec: str, input_size: int | None = None, *, pretrained: bool = False,
               in_channels: int | None = None) -> nn.Module:
    """Build a model from a registry name, from ``file.py:factory`` (called with no
    arguments, it must return an ``nn.Module``), or from ``torchvision:NAME`` /
    ``timm:NAME`` (:func:`library_model`; ``pretrained`` asks for the library's weights).
    Zoo models whose head depends on the image size get ``input_size``, and those that take
    a channel count get ``in_channels`` (the data's: an RGB folder for ``lenet-wolf``).

    Whatever the file does while it is imported or while the factory runs (raise, call
    ``sys.exit``) is a one-line :class:`ShiftlabError`; only Ctrl-C passes through. The
    zoo's shipped weights are loaded by :func:`shiftlab.weights.load_pretrained`
    (the CLI's ``--pretrained``), not here.
    """
    library = library_spec(spec)
    if library is not None:
        return library_model(*library, pretrained=pretrained)
    if pretrained:
        raise ShiftlabError(f"pretrained=True takes torchvision:NAME or timm:NAME, not {spec!r}; "
                            "load a checkpoint with load_weights (the zoo's shipped weights: "
                            "shiftlab.weights.load_pretrained)")
    if ":" not in spec and not spec.endswith(".py"):
        kwargs = {}
        if input_size is not None and builder_accepts(spec, "input_size"):
            kwargs["input_size"] = input_size
        if in_channels is not None and builder_accepts(spec, "in_channels"):
            kwargs["in_channels"] = in_channels
        return create_model(spec, **kwargs)
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


def _optional_keys(model: nn.Module) -> set[str]:
    """BatchNorm's ``num_batches_tracked`` counters: older checkpoints (torchvision's
    original ImageNet files among them) lack them, and torch fills them in."""
    return {f"{name}.num_batches_tracked" if name else "num_batches_tracked"
            for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model``; a mismatch names the first offending keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    optional = _optional_keys(model)
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ShiftlabError(f"weights in {path} do not match the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=not any(k not in state for k in own))
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
