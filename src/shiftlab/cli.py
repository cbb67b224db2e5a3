"""The ``shiftlab`` command line.

Bad input, from a mistyped option to a hostile file, exits with status 2 and ONE line on
stderr, ``shiftlab COMMAND: error: what is wrong, and what to do``; nothing half-written and
no new empty folder is left behind. Ctrl-C, however early, prints ``interrupted`` and exits
with status 130. Warnings of a successful command are one line each,
``shiftlab COMMAND: warning: ...``; a failed command prints only its error.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from .errors import MAX_SEED, ShiftlabError, UsageError, first_line, one_line, printable
from .io import check_writable

#: the most values one ``--input`` (or ``--crop``) may have: 2048x2048 grey, 3x1024x1024 colour
MAX_INPUT_VALUES = 2 ** 22

EXAMPLES = {
    "audit": """examples:
  shiftlab audit --model conv-maxpool --data synthetic:256 --protocol circular --out out/maxpool.json
  shiftlab audit --model my_net.py:build --weights net.pt --data digits.npz --protocol canvas --margin 2
  shiftlab audit --model lenet-wolf --data synthetic:64 --protocol fractional --shifts=-1:1:0.25
  shiftlab audit --model my_resnet.py:build --data folder:val --resize 256 --center-crop 256x256 \
                 --protocol crop --crop 224x224 --shifts=0:0 --normalize imagenet --workers 4
  shiftlab audit --model lenet-wolf --data mnist --device cuda --amp bf16 --out out/gpu.json
  torchrun --standalone --nproc-per-node 2 -m shiftlab audit --model lenet-wolf --data mnist --out out/2proc.json""",
    "train": """examples:
  shiftlab train --model lenet-wolf --data mnist --epochs 3 --out out/lenet-wolf
  shiftlab train --model lenet-wolf --data mnist --canvas 38 --augment shift:5 --out out/aug
  shiftlab train --model lenet-wolf --data mnist --epochs 3 --out out/lenet-wolf --resume""",
    "layers": """example:
  shiftlab layers --model conv-maxpool --input 1x28x28""",
    "demo": """example:
  shiftlab demo --out out""",
    "animate": """examples:
  shiftlab animate --model lenet-wolf --weights out/models/lenet-wolf/model.safetensors --out out/animation-lenet-wolf.gif
  shiftlab animate --model lenet-wolf-maxpool --data mnist --index 7 --path loop --clusters 8 --out loop.gif""",
    "report": """example:
  shiftlab report out -o out/report.html""",
    "convert": """examples:
  shiftlab convert --model lenet-wolf-maxpool --weights out/maxpool/model.safetensors --method blurpool --out out/blur.safetensors
  shiftlab convert --model resnet-small --method aps --input 1x32x32 --out out/resnet-aps.safetensors
  shiftlab convert --model conv-maxpool --method alias-free --onnx out/alias-free.onnx
  shiftlab convert --model lenet-wolf-maxpool-aps --method none --onnx out/aps.onnx""",
}


PRETRAINED_HELP = ("load pretrained weights: torchvision:/timm: models get their library's "
                   "(downloaded by it), zoo models shiftlab's shipped ones (weights/NAME)")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one-line :class:`UsageError` s naming the
    (sub)command, instead of a usage banner and ``sys.exit(2)``."""

    def error(self, message: str):
        if message == "the following arguments are required: COMMAND":
            message = "no command given; choose one of " + ", ".join(COMMANDS)
        raise UsageError(self.prog, message)


def _size(text: str) -> tuple[int, ...]:
    """``CxHxW`` (or ``HxW``) of positive sizes, with at most ``MAX_INPUT_VALUES`` values."""
    try:
        sizes = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 28x28, got {text!r}")
    count = math.prod(sizes)
    if count > MAX_INPUT_VALUES:
        raise argparse.ArgumentTypeError(f"{text} is {count:,} values, more than the cap of "
                                         f"{MAX_INPUT_VALUES:,} (e.g. 1x2048x2048 or 3x1024x1024)")
    return sizes


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]`` (no upper bound if ``high`` is None)."""
    bounds = f"at least {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


_positive, _index = _int_in(1), _int_in(0)
_seed = _int_in(0, MAX_SEED)           # what every generator we seed takes (torch, numpy, k-means)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shiftlab", description="Measure, see and fix shift-equivariance of CNNs.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"shiftlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=EXAMPLES.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
        p.add_argument("--device", default=default, metavar="DEVICE",
                       help=f"auto, cpu, cuda, cuda:N or mps (default {default}; auto: CUDA if "
                            "available, else MPS, else the CPU; under torchrun, cuda is the "
                            "GPU of the process's LOCAL_RANK)")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="a zoo name (see `shiftlab models`), path.py:factory, "
                                                       "torchvision:NAME or timm:NAME (if installed)")
        p.add_argument("--weights", help="checkpoint to load (.pt state dict or .safetensors)")
        p.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
        p.add_argument("--dtype", choices=["float32", "float64"], default="float32")

    p = command("audit", "Audit a model's per-layer shift-equivariance and output stability.")
    model_args(p)
    p.add_argument("--data", default="synthetic:256",
                   help="mnist[:split], fashion-mnist, digits, idx:DIR, folder:DIR, "
                        "synthetic[:N[:CxHxW or CxT]], spoken-digits[-wave], an .npz/.npy/.pt file, "
                        "or signals:FILE for N x C x T arrays (default synthetic:256)")
    p.add_argument("--canvas", type=_positive, help="place each image centred on an NxN canvas first")
    p.add_argument("--protocol", default="circular", choices=["circular", "canvas", "crop", "fractional"])
    p.add_argument("--shifts", help="shift grid: -4:4, x=-8:8, -1:1:0.25 or 0,0;1,2 "
                                    "(default -4:4; fractional -2:2:0.5; at most 40,000 "
                                    "shifts). Write --shifts=-4:4")
    p.add_argument("--layers", help="comma-separated layer names (default: convs, pools, "
                                    "activations, blocks); see `shiftlab layers`")
    p.add_argument("--pairs", type=int, default=5, help="random shift pairs per image for consistency")
    p.add_argument("--pair-range", type=float, help="consistency shifts in [-R, R)")
    p.add_argument("--half-pixel", action="store_true",
                   help="circular/fractional classifiers: also the worst-case gap over the "
                        "half-pixel lattice around the grid and half-pixel consistency "
                        "(output only; about 2-3x the audit's time)")
    p.add_argument("--margin", type=int, default=0, help="ignore feature positions this close to a border")
    p.add_argument("--fill", type=float, default=0.0, help="canvas background value")
    p.add_argument("--crop", type=_size, help="crop window HxW for --protocol crop")
    p.add_argument("--crop-offsets", choices=["zhang", "inclusive"], default="zhang",
                   help="crop consistency windows: offsets in [0, D) as Zhang 2019 "
                        "(default) or [0, D]")
    p.add_argument("--sensitivity-layer", default="output", help="layer for the sensitivity map")
    p.add_argument("--lie", type=int, nargs="?", const=64, default=None, metavar="N",
                   help="also take the Lie derivative (Gruver et al. 2023) on the first N inputs "
                        "(default 64): local equivariance error, split over layers")
    p.add_argument("--all-shifts", action="store_true",
                   help="circular protocol: also every circular shift of every input, from "
                        "S^2 passes for a net of total stride S (verified periodic)")
    p.add_argument("--resize", type=_positive, metavar="S",
                   help="folder images: resize the shorter side to S (antialiased; Pillow, as "
                        "torchvision's Resize)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="the --resize filter (default bilinear, torchvision's; timm uses bicubic)")
    p.add_argument("--center-crop", type=_size, metavar="HxW",
                   help="folder images: the centred HxW window (after --resize), e.g. 256x256")
    p.add_argument("--normalize", metavar="NAME|MEAN,..;STD,..",
                   help="(x - mean) / std per channel after each shift, before the forward: "
                        "imagenet or e.g. '0.5,0.5,0.5;0.25,0.25,0.25'")
    p.add_argument("--workers", type=_int_in(0), default=0,
                   help="processes decoding folder images (default 0: this one)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable folder images and count them in the JSON (default: stop)")
    p.add_argument("--limit", type=_positive, help="audit only the first N images")
    p.add_argument("--batch-size", type=int, default=256, help="most images in one forward pass")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="out/audit.json", help="where to write the JSON result")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_arg(p)
    p.add_argument("--amp", choices=["bf16", "fp16"],
                   help="run the forward passes under autocast in bfloat16 or float16 (the "
                        "'exact' tolerance follows: 10 eps of that dtype)")

    command("models", "List the models of the zoo.")

    p = command("layers", "Show the layers shiftlab probes, with their measured strides.")
    model_args(p)
    p.add_argument("--input", type=_size, default=(1, 28, 28),
                   help="one input's CxHxW, or CxT for signals (default 1x28x28; at most 4,194,304 values)")
    p.add_argument("--all", action="store_true", help="every submodule, not just the default set")

    p = command("train", "Train a zoo model (Adam, seeded, resumable checkpoints every epoch).")
    p.add_argument("--model", required=True, help="a zoo name (see `shiftlab models`) or path.py:factory")
    p.add_argument("--data", default="mnist", help="labelled data with train/test splits (default mnist)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"),
                   help="cosine: 3%% warm-up then cosine decay to 0 (default)")
    p.add_argument("--augment", help="shift:K = random shifts in [-K, K] px per image and epoch")
    p.add_argument("--canvas", type=int, help="place images centred on an NxN canvas (e.g. 38)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--init", help="start from these weights (tensors matching by name and shape), "
                                  "e.g. a baseline's model.safetensors before fine-tuning a converted net")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True, help="folder for checkpoint.pt, model.safetensors, train.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory layout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_arg(p, "cpu")              # seeded training stays bitwise reproducible by default

    p = command("fetch-mnist", "Set up real MNIST once (download, verify, store); offline after.")
    p.add_argument("--dest", default="data", help="folder for mnist.npz (default ./data)")

    p = command("experiment", "Run one of the seeds' claims as an experiment (see --list).")
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments, one line each")
    p.add_argument("--out", default="out", help="folder for the JSON and figures (default out)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds; for tests)")
    device_arg(p, "cpu")

    p = command("convert", "Make a model anti-aliased (blurpool), APS-sampled, circular or "
                           "alias-free; write its weights and/or an ONNX file.")
    p.add_argument("--model", required=True, help="a zoo name (see `shiftlab models`), path.py:factory, "
                                                   "torchvision:NAME or timm:NAME (if installed)")
    p.add_argument("--weights", help="checkpoint of the unconverted model (.pt state dict or .safetensors)")
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED_HELP)
    p.add_argument("--method", required=True, help="blurpool, aps, circular, alias-free, or none "
                                                   "(export the model as it is)")
    p.add_argument("--activation", help="alias-free: polynomial (exact, default) or keep "
                                        "(the model's own nonlinearities, approximate)")
    p.add_argument("--filter-size", type=int, help="binomial filter size 1..7 (default 3 for blurpool, "
                                                   "no pre-blur for aps)")
    p.add_argument("--padding", help="blur padding: reflect, replicate, zeros or circular")
    p.add_argument("--input", type=_size, default=(1, 28, 28),
                   help="one input's CxHxW, or CxT for signals, to check sizes (default 1x28x28)")
    p.add_argument("--out", help="where to write the converted weights (.safetensors or .pt)")
    p.add_argument("--onnx", help="also (or only) export the converted model to this .onnx file: "
                                  "dynamic batch and spatial size, checked in ONNX Runtime")

    p = command("animate", "Animate feature maps of a digit sliding over a canvas (Wolf's GIF).")
    model_args(p)
    p.add_argument("--data", default="mnist", help="where the image comes from (test split; default mnist)")
    p.add_argument("--index", type=_index, default=0, help="which image of the data (default 0)")
    p.add_argument("--canvas", type=_positive, default=38,
                   help="side of the canvas the image slides on (default 38, at most 132)")
    p.add_argument("--path", default="left-right", choices=["left-right", "diagonal", "loop"])
    p.add_argument("--layers", help="comma-separated feature-map layers (default: 3, first to deepest)")
    p.add_argument("--clusters", type=_positive, default=6, help="k-means colours (default 6, at most 12)")
    p.add_argument("--fps", type=_positive, default=8, help="frames per second (default 8, at most 50)")
    p.add_argument("--seed", type=_seed, default=0, help="k-means seed (default 0)")
    p.add_argument("--out", required=True, help="the GIF to write")
    device_arg(p)

    p = command("report", "Write the self-contained HTML report of a results folder.")
    p.add_argument("results", help="results folder (audit-*.json, models/*/train.json, animation-*.gif, "
                                   "explorer-*.json, experiment-*.json)")
    p.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--title", default="shiftlab report")

    p = command("demo", "The main job: train the zoo on MNIST, audit, animate, write out/report.html.")
    p.add_argument("--out", default="out", help="folder for the results")
    p.add_argument("--retrain", action="store_true", help="train again even where a model is saved")
    return parser


def _output_file(value: str) -> Path:
    """``--out`` of a command that writes one file: a writable name, not a folder (neither an
    existing one nor a name ending in '/')."""
    if value.endswith("/"):
        raise ShiftlabError(f"--out {value!r} names a folder; give a file name inside it")
    return check_writable(value)


def _layer_names(value: str | None) -> str | None:
    """``--layers`` as given, if it names at least one layer."""
    if value is not None and not [n for n in value.split(",") if n.strip()]:
        raise ShiftlabError(f"--layers {value!r} names no layer; give comma-separated names "
                            "(see `shiftlab layers`), or leave it out for the default set")
    return value


def _dtype(name: str):
    import torch
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _shipped_weights(name: str, input_size: int | None) -> Path:
    """``--pretrained`` for a zoo model: its shipped weights file, or one line saying why not."""
    from .models import builder_accepts, create_model, list_models
    from .weights import PRETRAINED, WEIGHTS_FILE, pretrained_folder
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


def _load_model(args, input_size: int | None = None, in_channels: int | None = None):
    """``--model`` with ``--weights`` or ``--pretrained``, in ``--dtype`` (commands without it
    keep the weights' dtype); zoo models sized for ``input_size`` and ``in_channels``."""
    from .loading import library_spec, load_model, load_weights
    pretrained, weights = getattr(args, "pretrained", False), args.weights
    if pretrained and weights:
        raise ShiftlabError("give --pretrained or --weights, not both")
    if pretrained and library_spec(args.model) is None:
        if ":" in args.model or args.model.endswith(".py"):
            raise ShiftlabError(f"--pretrained takes a zoo name, torchvision:NAME or timm:NAME; "
                                f"load weights into {args.model} with --weights FILE")
        weights = _shipped_weights(args.model, input_size)
    model = load_model(args.model, input_size, pretrained=pretrained and not weights,
                       in_channels=in_channels)
    if weights:
        load_weights(model, weights)
    return model.to(_dtype(args.dtype)) if getattr(args, "dtype", None) else model


def cmd_audit(args) -> None:
    _output_file(args.out)                            # fail before the work, not after
    if args.crop is not None and len(args.crop) not in (1, 2):
        raise ShiftlabError(f"--crop needs HxW (images) or T (signals), got "
                            f"{'x'.join(map(str, args.crop))}")
    _layer_names(args.layers)
    if args.lie is not None and args.lie < 1:
        raise ShiftlabError(f"--lie takes how many inputs to differentiate at, at least 1; got {args.lie}")
    if args.all_shifts and args.protocol != "circular":
        raise ShiftlabError(f"--all-shifts counts circular shifts; use it with --protocol circular "
                            f"(not {args.protocol})")
    if (args.lie is not None or args.all_shifts) and os.environ.get("WORLD_SIZE", "1") != "1":
        raise ShiftlabError("--lie and --all-shifts run in one process; leave them out under "
                            "torchrun, or run them without it")
    from .audit import AuditConfig
    config = AuditConfig(
        protocol=args.protocol, shifts=args.shifts, layers=args.layers, pairs=args.pairs,
        pair_range=args.pair_range, margin=args.margin, fill=args.fill, crop=args.crop,
        crop_offsets=args.crop_offsets, batch_size=args.batch_size, seed=args.seed,
        sensitivity_layer=args.sensitivity_layer, name=args.model, normalize=args.normalize,
        amp=args.amp, half_pixel=args.half_pixel,
        progress=not args.quiet and sys.stderr.isatty()).check()     # before any work
    from . import distributed
    from .device import check_amp
    # under torchrun: join the group; rank 0 alone prints and writes (see shiftlab.distributed)
    with distributed.from_env(args.device) as (group, device), warnings.catch_warnings():
        if group is not None and group.rank != 0:
            warnings.simplefilter("ignore")
        check_amp(args.amp, device, _dtype(args.dtype))
        with distributed.stage(group):            # a failure here is told to the other ranks
            result = _audit_here(args, config, device)
        with distributed.stage(group):
            if group is None or group.rank == 0:
                print(result.table())
                path = result.to_json(args.out)
                print(f"\nwrote {path}  ({result.forwards} forwards in {result.seconds:.1f} s)")
            if group is not None:
                group.exchange()                  # every rank learns whether rank 0 wrote it


def _audit_here(args, config, device):
    """Load ``--data`` and ``--model`` (on ``device``) and audit them (this rank's shard)."""
    import torch
    from .audit import audit
    from .data.preprocess import check_channels
    data, shape = (_folder_stream(args) if args.data.startswith("folder:")
                   else _data_in_memory(args))
    if args.crop is not None and len(args.crop) != len(shape) - 1:
        raise ShiftlabError(f"--crop {'x'.join(map(str, args.crop))} does not fit "
                            + ("images: give HxW" if len(shape) == 3 else "signals: give one length T"))
    check_channels(config.normalize, shape[0], f"--data {args.data} has")
    torch.manual_seed(args.seed)                  # the same initial weights on every rank
    model = _load_model(args, input_size=args.crop[0] if args.crop else shape[-1],
                        in_channels=shape[0]).to(device)
    result = audit(model, data, config)
    if args.all_shifts:
        from .periodic import all_shifts
        result.all_shifts = all_shifts(model, _inputs(data, config), batch_size=config.batch_size)
    if args.lie is not None:
        from .lie import lie_derivative
        result.lie = lie_derivative(model, _inputs(data, config, args.lie), batch_size=config.batch_size)
    return result


def _inputs(data, config, limit: int | None = None):
    """``data``'s batches as the model sees them (normalised), at most ``limit`` inputs.
    Normalising first is exact for the circular and Fourier shifts of --all-shifts and
    --lie: a per-channel affine map commutes with them."""
    from .audit import iter_batches
    from .data.preprocess import normalize
    left = limit
    for x, y in iter_batches(data, config.batch_size):
        if left is not None:
            x, y, left = x[:left], (None if y is None else y[:left]), left - len(x[:left])
        if len(x):
            yield (x if config.normalize is None else normalize(x, config.normalize)), y
        if left is not None and left <= 0:
            return


def _folder_stream(args):
    """``--data folder:DIR`` as a lazy stream with the preprocessing options, checked before
    any image is decoded; returns ``(stream, (C, H, W))``."""
    from .data import Preprocess, stream_image_folder
    center = args.center_crop
    if center is not None and len(center) not in (1, 2):
        raise ShiftlabError(f"--center-crop needs HxW (or one size S for SxS), got "
                            f"{'x'.join(map(str, center))}")
    if args.resize is not None and args.crop is not None and args.protocol == "crop" \
            and max(args.crop) > args.resize:
        raise ShiftlabError(f"--resize {args.resize} is smaller than the --crop "
                            f"{'x'.join(map(str, args.crop))} window; resize to at least "
                            f"{max(args.crop)}")
    if args.interpolation != "bilinear" and args.resize is None:
        raise ShiftlabError(f"--interpolation {args.interpolation} is the filter of --resize; "
                            "give --resize S too, or leave it out")
    preprocess = Preprocess(resize=args.resize, interpolation=args.interpolation,
                            center_crop=None if center is None else (center[0], center[-1]),
                            canvas=args.canvas)
    stream = stream_image_folder(args.data.removeprefix("folder:"), preprocess,
                                 batch_size=args.batch_size, workers=args.workers,
                                 skip_bad=args.skip_bad, limit=args.limit)
    return stream, stream.sample_shape


def _data_in_memory(args):
    """Every other ``--data``, loaded whole (capped); returns ``((inputs, labels), shape)``."""
    folder_only = [f"--{name.replace('_', '-')}" for name in ("resize", "center_crop", "skip_bad")
                   if getattr(args, name)] + (["--workers"] if args.workers else []) \
        + (["--interpolation"] if args.interpolation != "bilinear" else [])
    if folder_only:
        raise ShiftlabError(f"{', '.join(folder_only)} read{'s' if len(folder_only) == 1 else ''} "
                            f"image folders (--data folder:DIR); {args.data} is loaded whole")
    from .data import load_data
    x, y = load_data(args.data, split="test", seed=args.seed)
    if args.limit:
        x, y = x[:args.limit], (None if y is None else y[:args.limit])
    if args.canvas is not None and x.ndim == 3:
        raise ShiftlabError("--canvas places images on a larger canvas; the data are 1-D signals "
                            "(pad them in the data instead)")
    if args.canvas is not None:
        from .data import place_on_canvas
        h, w = x.shape[-2:]
        if args.canvas < max(h, w):
            raise ShiftlabError(f"--canvas {args.canvas} is smaller than the {h}x{w} images; "
                                f"use --canvas {max(h, w)} or more")
        x = place_on_canvas(x, (args.canvas, args.canvas))
    return (x, y), tuple(x.shape[1:])


def cmd_models(args) -> None:
    from .models import create_model, list_models, model_doc
    rows = [("model", "stride", "RF", "params", "description")]
    for name in list_models():
        model = create_model(name)
        geometry = getattr(model, "geometry", None)
        rows.append((name, str(geometry.total_stride) if geometry else "-",
                     str(geometry.receptive_field) if geometry else "-",
                     f"{sum(p.numel() for p in model.parameters()):,}", model_doc(name)))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print("\nstride: total stride of the spatial path; RF: its receptive field in input pixels "
          "(both computed from the layers, and checked against the probes in the tests)")


def cmd_layers(args) -> None:
    import torch
    from .probe import infer_layers, resolve_layers
    from .shapes import check_model_fits
    if len(args.input) not in (2, 3):
        raise ShiftlabError(f"--input needs CxHxW (images) or CxT (signals), got "
                            f"{'x'.join(map(str, args.input))}")
    model = _load_model(args, input_size=args.input[-1]).eval()
    names = resolve_layers(model, "all" if args.all else None)
    example = torch.zeros(1, *args.input, dtype=_dtype(args.dtype))
    check_model_fits(model, example)
    infos = infer_layers(model, example, names)
    rows = [("layer", "type", "output", "stride")] + [
        (i.name, i.kind, "x".join(map(str, i.shape)),
         "-" if i.stride is None else f"{i.stride} ({i.stride_source})") for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_train(args) -> None:
    from .train import TrainConfig, train
    config = TrainConfig(model=args.model, data=args.data, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, augment=args.augment,
                         canvas=args.canvas, seed=args.seed, limit=args.limit,
                         channels_last=not args.no_channels_last, init=args.init)
    # train() checks everything before any work, creates --out only then and locks it
    train(config, args.out, resume=args.resume, progress=not args.quiet and sys.stderr.isatty(),
          device=args.device)


def cmd_fetch_mnist(args) -> None:
    from .data.mnist import FILENAME, fetch_mnist, load_mnist
    target = check_writable(Path(args.dest) / FILENAME)      # before downloading anything
    if target.is_file():
        load_mnist("test", target)                       # verifies shapes and label counts
        print(f"MNIST already set up: {target}")
    else:
        print(f"MNIST set up and verified: {fetch_mnist(args.dest)}")


def cmd_experiment(args) -> None:
    from .experiments import EXPERIMENTS, run_experiment
    if args.list or not args.name:
        width = max(map(len, EXPERIMENTS))
        for name, (_, line) in EXPERIMENTS.items():
            print(f"{name.ljust(width)}  {line}")
        if not args.list:
            raise ShiftlabError("give an experiment name (listed above)")
        return
    if args.name not in EXPERIMENTS:
        raise ShiftlabError(f"unknown experiment {args.name!r}; see `shiftlab experiment --list`")
    check_writable(Path(args.out) / f"experiment-{args.name}.json")   # before the work
    from .device import training_device
    with training_device(args.device):            # the experiment's training runs go there
        result = run_experiment(args.name, args.out, seed=args.seed, quick=args.quick)
    print(f"\n{result.title}\n\n{result.table()}\n")
    for claim, holds in result.claims.items():
        print(f"  [{'holds' if holds else 'FAILS'}] {claim}")
    print(f"\nwrote {Path(args.out) / f'experiment-{result.name}.json'}"
          + "".join(f", {Path(args.out) / f}" for f in result.figures))


def cmd_convert(args) -> None:
    from io import BytesIO

    from .convert import ACTIVATIONS, METHODS, check_input_shape, convert
    from .io import write_bytes_atomic
    from .layers.blurpool import check_filter_size
    from .layers.padding import check_padding_mode
    from .train import verify_weights, weights_bytes
    if args.out is None and args.onnx is None:
        raise ShiftlabError("give --out (the converted weights), --onnx (an ONNX file) or both")
    out = check_writable(args.out) if args.out is not None else None
    if out is not None and out.suffix not in (".safetensors", ".pt"):
        raise ShiftlabError(f"--out must end in .safetensors or .pt, got {str(out)!r}")
    if args.onnx is not None:
        from .export import check_onnx_path, require_onnx
        onnx_out = check_onnx_path(args.onnx)
        require_onnx()                                # before any work: say how to install it
    else:
        onnx_out = None
    if args.method not in METHODS + ("none",):
        raise ShiftlabError(f"unknown --method {args.method!r}; choose one of {', '.join(METHODS)} or none")
    if args.activation is not None and args.method != "alias-free":
        raise ShiftlabError("--activation chooses the nonlinearities of alias-free; leave it out "
                            f"for --method {args.method}")
    if args.activation is not None and args.activation not in ACTIVATIONS:
        raise ShiftlabError(f"unknown --activation {args.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if len(args.input) not in (2, 3):
        raise ShiftlabError(f"--input needs CxHxW (images) or CxT (signals), got "
                            f"{'x'.join(map(str, args.input))}")
    check_input_shape(args.input)
    if args.method in ("circular", "alias-free", "none") and (args.filter_size is not None or
                                                               args.padding is not None):
        raise ShiftlabError("--filter-size and --padding set the blur of blurpool and aps; "
                            f"--method {args.method} has no blur, so leave them out")
    if args.filter_size is not None:
        check_filter_size(args.filter_size)
    if args.padding is not None:
        check_padding_mode(args.padding)
    if args.weights:
        verify_weights(args.weights)                  # a stored SHA-256 that no longer matches
    model = _load_model(args, args.input[-1])
    before = dict(model.named_modules())
    if args.method == "none":
        converted, replaced = model, []
    else:
        options = {"activation": args.activation} if args.activation else {}
        converted, replaced = convert(model, args.method, filter_size=args.filter_size,
                                      padding=args.padding, input_shape=args.input, **options)
    after = dict(converted.named_modules())
    for name in replaced:
        old, new = type(before[name]).__name__, type(after[name]).__name__
        print(f"{name or '(model)'}: " + (f"{old} -> {new}" if old != new else f"{old} made circular"))
    if not replaced and args.method != "none":
        print(f"nothing to convert: {args.model} has no layer that {args.method} changes")
    exported = None
    if onnx_out is not None:                          # before any file: a failed export writes none
        from .export import onnx_bytes
        exported = onnx_bytes(converted, args.input,
                              metadata={"shiftlab.model": args.model, "shiftlab.method": args.method})
    if out is None:
        write_bytes_atomic(onnx_out, exported.data)
        print(f"wrote {onnx_out} (ONNX opset {exported.opset}; {exported.summary()})")
        return
    # serialised in memory first: a full disk is then an OSError that atomic writing reports
    state = converted.state_dict()
    try:
        if out.suffix == ".pt":
            import torch
            buffer = BytesIO()
            # own contiguous copies, as weights_bytes makes for safetensors
            torch.save({k: v.detach().clone().contiguous() for k, v in state.items()}, buffer)
            data = buffer.getvalue()
        else:
            data = weights_bytes(state, {"model": args.model, "method": args.method,
                                         "filter_size": str(args.filter_size), "padding": str(args.padding)})
    except RuntimeError as err:
        raise ShiftlabError(f"cannot save the converted weights to {str(out)!r}: "
                            f"{one_line(err)}") from None
    existed = out.exists()
    write_bytes_atomic(out, data)
    if exported is not None:
        try:
            write_bytes_atomic(onnx_out, exported.data)
        except ShiftlabError:
            if not existed:                           # both outputs or neither
                out.unlink(missing_ok=True)
            raise
    print(f"wrote {out} ({len(replaced)} layers converted by {args.method}; rebuild the model "
          "with shiftlab.convert before loading it)")
    if exported is not None:
        print(f"wrote {onnx_out} (ONNX opset {exported.opset}; {exported.summary()})")


def cmd_animate(args) -> None:
    from .data import load_data
    from .viz.animate import MAX_CLUSTERS, animate, check_canvas
    _output_file(args.out)
    check_canvas(args.canvas)                         # before a model sized for it is built
    _layer_names(args.layers)
    if args.clusters > MAX_CLUSTERS or args.fps > 50:
        raise ShiftlabError(f"--clusters must be at most {MAX_CLUSTERS} and --fps at most 50, got "
                            f"{args.clusters} and {args.fps}")
    from .device import resolve_device
    device = resolve_device(args.device)
    x, y = load_data(args.data, split="test", seed=0)
    if not 0 <= args.index < len(x):
        raise ShiftlabError(f"--index must be in [0, {len(x) - 1}] for {args.data}, got {args.index}")
    model = _load_model(args, input_size=args.canvas).to(device)
    label = None if y is None else int(y[args.index])
    path, frames = animate(model, x[args.index], args.out, canvas=args.canvas, path=args.path,
                           layers=args.layers, clusters=args.clusters, seed=args.seed, fps=args.fps,
                           label=label, title=args.model)
    shown = ", ".join(f"{v.name} (stride {v.stride})" for v in frames.layers[1:])
    print(f"wrote {path}: {len(frames)} frames of {args.model} on a {args.canvas}x{args.canvas} canvas; "
          f"layers {shown}")


def cmd_report(args) -> None:
    from .report import build_report
    _output_file(args.out)                            # before figures are drawn into the folder
    path = build_report(args.results, args.out, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")


def cmd_demo(args) -> None:
    from .demo import run_demo
    check_writable(Path(args.out) / "report.html")
    run_demo(Path(args.out), retrain=args.retrain)


#: commands that never import torch (they start faster without it)
TORCH_FREE = {"report"}


@contextmanager
def _ctrl_c_held():
    """Hold Ctrl-C until the block ends, then raise it. For torch's import: libtorch calls
    back into Python through pybind11 while it loads, and a KeyboardInterrupt raised inside
    such a callback aborts the process (``terminate called ... error_already_set``, status
    134) instead of unwinding. Only the main thread, and only with Python's own handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda *_: held.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def _import_torch() -> None:
    """Import torch once, with Ctrl-C held until it is loaded (see :func:`_ctrl_c_held`)."""
    if "torch" not in sys.modules:
        with _ctrl_c_held():
            import torch  # noqa: F401


COMMANDS = {"audit": cmd_audit, "train": cmd_train, "models": cmd_models, "layers": cmd_layers,
            "fetch-mnist": cmd_fetch_mnist, "experiment": cmd_experiment, "demo": cmd_demo,
            "convert": cmd_convert, "animate": cmd_animate, "report": cmd_report}


def _interrupted(err: BaseException) -> bool:
    """Whether ``err`` is Ctrl-C, or an error it caused (an extension module's import that
    a KeyboardInterrupt cut short can surface as ``SystemError`` or ``ImportError``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def _no_new_empty_folders(args):
    """On failure, remove the folders this command created on the way to ``--out`` /
    ``--dest`` (and empty folders inside a new one) that it left empty; never a folder that
    existed before, never one holding a file."""
    new = []
    for value in (getattr(args, "out", None), getattr(args, "dest", None), getattr(args, "onnx", None)):
        if value:
            path = Path(value)
            new += [p for p in (path, *path.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for folder in sorted(set(new), key=lambda p: len(p.parts), reverse=True):
            inside = [Path(d) for d, _, _ in os.walk(folder, topdown=False)] if folder.is_dir() else []
            for empty in (*inside, folder):
                try:
                    empty.rmdir()                     # only succeeds on an empty folder
                except OSError:
                    pass
        raise


@contextmanager
def _warnings_as_lines(prog: str):
    """Collect the warnings a command raises; print each once, as one line, if it succeeds."""
    seen: dict[str, None] = {}

    def keep(message, category, *_args, **_kwargs):
        seen.setdefault(f"{category.__name__}: {first_line(str(message))}", None)

    with warnings.catch_warnings():
        warnings.showwarning = keep
        yield
    for text in seen:
        print(f"{prog}: warning: {text}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; a :class:`UsageError` (one line) if it does not parse. An
    unknown option is reported by the subcommand it was given to."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = build_parser().parse_known_args(argv)
    except UsageError as err:                         # `--shifts -4:4` reads -4:4 as an option
        option = err.message.partition(":")[0].removeprefix("argument ").split("/")[-1]
        dashed = [argv[k + 1] for k, a in enumerate(argv[:-1])
                  if a == option and argv[k + 1].startswith("-")]
        if err.message.endswith("expected one argument") and dashed:
            raise UsageError(err.prog, f"{err.message}; write a value that starts with '-' as "
                                       f"{option}={dashed[0]}") from None
        raise
    if extra:
        raise UsageError(f"shiftlab {args.command}", f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status: 0, 2 on bad input, 130 on Ctrl-C. The one
    error path: every failure ends here as one line on stderr."""
    prog = "shiftlab"
    try:
        try:
            args = parse_args(argv)
        except SystemExit as done:                    # --help and --version
            return done.code if isinstance(done.code, int) else 0
        prog = f"shiftlab {args.command}"
        with _no_new_empty_folders(args), _warnings_as_lines(prog):
            if args.command not in TORCH_FREE:
                _import_torch()
            COMMANDS[args.command](args)
    except ShiftlabError as err:
        if not getattr(err, "quiet", False):          # quiet: another rank of torchrun says it
            print(f"{getattr(err, 'prog', prog)}: error: {printable(str(err))}", file=sys.stderr)
        return 2
    except BaseException as err:
        if not _interrupted(err):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
