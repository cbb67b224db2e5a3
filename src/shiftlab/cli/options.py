"""The options several commands share: how they are declared, read and checked, and the
model that ``--model``, ``--weights``, ``--pretrained`` and ``--dtype`` name."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import int_in, sizes
from ..errors import MAX_SEED, ShiftlabError
from ..io import check_writable

__all__ = ["sizes", "int_in", "positive", "index", "seed", "add_model", "add_device",
           "output_file", "layer_names", "check_input", "torch_dtype", "load_model"]

positive, index = int_in(1), int_in(0)
seed = int_in(0, MAX_SEED)             # what every generator we seed takes (torch, numpy, k-means)

MODEL_HELP = ("a zoo name (see `shiftlab models`), path.py:factory, torchvision:NAME or "
              "timm:NAME (if installed)")
PRETRAINED_HELP = ("load pretrained weights: torchvision:/timm: models get their library's "
                   "(downloaded by it), zoo models shiftlab's shipped ones (weights/NAME)")


def add_model(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--pretrained`` and ``--dtype`` (see :func:`load_model`)."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", help="checkpoint to load (.pt state dict or .safetensors)")
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=f"auto, cpu, cuda, cuda:N or mps (default {default}; auto: CUDA if "
                        "available, else MPS, else the CPU; under torchrun, cuda is the "
                        "GPU of the process's LOCAL_RANK)")


def output_file(value: str) -> Path:
    """``--out`` of a command that writes one file: a writable name, not a folder (neither an
    existing one nor a name ending in '/')."""
    if value.endswith("/"):
        raise ShiftlabError(f"--out {value!r} names a folder; give a file name inside it")
    return check_writable(value)


def layer_names(value: str | None) -> str | None:
    """``--layers`` as given, if it names at least one layer."""
    if value is not None and not [n for n in value.split(",") if n.strip()]:
        raise ShiftlabError(f"--layers {value!r} names no layer; give comma-separated names "
                            "(see `shiftlab layers`), or leave it out for the default set")
    return value


def check_input(value: tuple[int, ...]) -> None:
    """``--input``: one input's ``CxHxW`` (images) or ``CxT`` (signals)."""
    if len(value) not in (2, 3):
        raise ShiftlabError(f"--input needs CxHxW (images) or CxT (signals), got "
                            f"{'x'.join(map(str, value))}")


def torch_dtype(name: str):
    import torch
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _shipped_weights(name: str, input_size: int | None) -> Path:
    """``--pretrained`` for a zoo model: its shipped weights file, or one line saying why not."""
    from ..models import builder_accepts, create_model, list_models
    from ..weights import PRETRAINED, WEIGHTS_FILE, pretrained_folder
    if name.replace("_", "-") not in list_models():
        create_model(name)                            # the registry's "unknown model" line
    shipped = [n for n, p in PRETRAINED.items() if p.model == n]
    entry = PRETRAINED.get(name.replace("_", "-"))
    if entry is None or entry.model != entry.name:
        hint = (f"a state dict saved from torchvision.models.{name}() loads with --weights FILE, "
                f"or use --model torchvision:{name} --pretrained where torchvision is installed"
                if name in ("resnet18", "resnet50") else "give --weights FILE (e.g. from shiftlab train)")
        raise ShiftlabError(f"{name} has no shipped weights (shiftlab ships MNIST weights for "
                            f"{', '.join(shipped)}); {hint}")
    if input_size is not None and input_size != entry.input_size and builder_accepts(name, "input_size"):
        raise ShiftlabError(f"the shipped {name} weights fit {entry.input_size}x{entry.input_size} "
                            f"inputs, not {input_size}x{input_size} (its head is sized from the input)")
    return pretrained_folder(entry.name) / WEIGHTS_FILE


def load_model(args, input_size: int | None = None, in_channels: int | None = None):
    """``--model`` with ``--weights`` or ``--pretrained``, in ``--dtype`` (commands without it
    keep the weights' dtype); zoo models sized for ``input_size`` and ``in_channels``."""
    from ..loading import library_spec, load_model as load, load_weights
    pretrained, weights = getattr(args, "pretrained", False), args.weights
    if pretrained and weights:
        raise ShiftlabError("give --pretrained or --weights, not both")
    if pretrained and library_spec(args.model) is None:
        if ":" in args.model or args.model.endswith(".py"):
            raise ShiftlabError(f"--pretrained takes a zoo name, torchvision:NAME or timm:NAME; "
                                f"load weights into {args.model} with --weights FILE")
        weights = _shipped_weights(args.model, input_size)
    model = load(args.model, input_size, pretrained=pretrained and not weights,
                 in_channels=in_channels)
    if weights:
        load_weights(model, weights)
    return model.to(torch_dtype(args.dtype)) if getattr(args, "dtype", None) else model
