"""``shiftlab audit``: load the data and the model, audit them, print the table, write the JSON.

The options of the audit itself are :class:`~shiftlab.config.AuditConfig`'s fields: the
parser takes them from the fields (:func:`add_config_options`) and :func:`config_from`
turns them back into a config by the same loop; the rest say where the data, the model
and the result are.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..config import AuditConfig
from ..errors import ShiftlabError
from ..protocols import capabilities, names_with
from .options import (add_device, add_model, int_in, layer_names, load_model, output_file,
                      positive, sizes, torch_dtype)

NAME = "audit"
HELP = "Audit a model's per-layer shift-equivariance and output stability."
EXAMPLES = """examples:
  shiftlab audit --model conv-maxpool --data synthetic:256 --protocol circular --out out/maxpool.json
  shiftlab audit --model my_net.py:build --weights net.pt --data digits.npz --protocol canvas --margin 2
  shiftlab audit --model lenet-wolf --data synthetic:64 --protocol fractional --shifts=-1:1:0.25
  shiftlab audit --model my_resnet.py:build --data folder:val --resize 256 --center-crop 256x256 \\
                 --protocol crop --crop 224x224 --shifts=0:0 --normalize imagenet --workers 4
  shiftlab audit --model lenet-wolf --data mnist --device cuda --amp bf16 --out out/gpu.json
  torchrun --standalone --nproc-per-node 2 -m shiftlab audit --model lenet-wolf --data mnist --out out/2proc.json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--data", default="synthetic:256",
                   help="mnist[:split], fashion-mnist, digits, idx:DIR, folder:DIR, "
                        "synthetic[:N[:CxHxW or CxT]], spoken-digits[-wave], an .npz/.npy/.pt file, "
                        "or signals:FILE for N x C x T arrays (default synthetic:256)")
    p.add_argument("--canvas", type=positive, help="place each image centred on an NxN canvas first")
    add_config_options(p)
    p.add_argument("--lie", type=int, nargs="?", const=64, default=None, metavar="N",
                   help="also take the Lie derivative (Gruver et al. 2023) on the first N inputs "
                        "(default 64): local equivariance error, split over layers")
    p.add_argument("--lie-reduction", choices=["mean_abs", "rms"], default="mean_abs",
                   help="how --lie reduces L p over classes and images: mean_abs, the mean of "
                        "|L p_c| (Gruver et al.'s code, default), or rms, its root mean square "
                        "(their paper's square)")
    p.add_argument("--all-shifts", action="store_true",
                   help="circular protocol: also every circular shift of every input, from "
                        "S^2 passes for a net of total stride S (verified periodic)")
    p.add_argument("--resize", type=positive, metavar="S",
                   help="folder images: resize the shorter side to S (antialiased; Pillow, as "
                        "torchvision's Resize)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="the --resize filter (default bilinear, torchvision's; timm uses bicubic)")
    p.add_argument("--center-crop", type=sizes, metavar="HxW",
                   help="folder images: the centred HxW window (after --resize), e.g. 256x256")
    p.add_argument("--workers", type=int_in(0), default=0,
                   help="processes decoding folder images (default 0: this one)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable folder images and count them in the JSON (default: stop)")
    p.add_argument("--limit", type=positive, help="audit only the first N images")
    p.add_argument("--out", default="out/audit.json", help="where to write the JSON result")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per field of :class:`AuditConfig` that has one, as the field declares it."""
    for name, default, option in AuditConfig.options():
        flags, keywords = option.arguments(name, default)
        p.add_argument(*flags, **keywords)


def config_from(args: argparse.Namespace) -> AuditConfig:
    """The parsed options as an unchecked :class:`AuditConfig`, field by field."""
    return AuditConfig(**{name: getattr(args, name) for name, _, _ in AuditConfig.options()},
                       name=args.model, progress=not args.quiet and sys.stderr.isatty())


def run(args) -> None:
    output_file(args.out)                             # fail before the work, not after
    if args.crop is not None and len(args.crop) not in (1, 2):
        raise ShiftlabError(f"--crop needs HxW (images) or T (signals), got "
                            f"{'x'.join(map(str, args.crop))}")
    layer_names(args.layers)
    if args.lie is not None and args.lie < 1:
        raise ShiftlabError(f"--lie takes how many inputs to differentiate at, at least 1; got {args.lie}")
    if args.all_shifts and not capabilities(args.protocol).has_all_shifts:
        raise ShiftlabError(f"--all-shifts counts circular shifts; use it with --protocol "
                            f"{' or '.join(names_with('has_all_shifts'))} (not {args.protocol})")
    if (args.lie is not None or args.all_shifts) and os.environ.get("WORLD_SIZE", "1") != "1":
        raise ShiftlabError("--lie and --all-shifts run in one process; leave them out under "
                            "torchrun, or run them without it")
    config = config_from(args).check()                # before any work
    from .. import distributed
    from ..device import check_amp
    # under torchrun: join the group; rank 0 alone prints and writes (see shiftlab.distributed)
    with distributed.from_env(args.device) as (group, device), warnings.catch_warnings():
        if group is not None and group.rank != 0:
            warnings.simplefilter("ignore")
        check_amp(args.amp, device, torch_dtype(args.dtype))
        with distributed.stage(group):            # a failure here is told to the other ranks
            result = _audit_here(args, config, device)
        with distributed.stage(group):
            if group is None or group.rank == 0:
                print(result.table())
                path = result.to_json(args.out)
                print(f"\nwrote {path}  ({result.forwards} forwards in {result.seconds:.1f} s)")
            if group is not None:
                group.exchange()                  # every rank learns whether rank 0 wrote it


def _audit_here(args, config: AuditConfig, device):
    """Load ``--data`` and ``--model`` (on ``device``) and audit them (this rank's shard)."""
    import torch
    from ..audit import audit
    from ..data.preprocess import check_channels
    data, shape = (_folder_stream(args, config) if args.data.startswith("folder:")
                   else _data_in_memory(args))
    if args.crop is not None and len(args.crop) != len(shape) - 1:
        raise ShiftlabError(f"--crop {'x'.join(map(str, args.crop))} does not fit "
                            + ("images: give HxW" if len(shape) == 3 else "signals: give one length T"))
    check_channels(config.normalize, shape[0], f"--data {args.data} has")
    torch.manual_seed(args.seed)                  # the same initial weights on every rank
    model = load_model(args, input_size=args.crop[0] if args.crop else shape[-1],
                       in_channels=shape[0]).to(device)
    result = audit(model, data, config)
    if args.all_shifts:
        from ..periodic import all_shifts
        result.all_shifts = all_shifts(model, _inputs(data, config), batch_size=config.batch_size)
    if args.lie is not None:
        from ..lie import lie_derivative
        result.lie = lie_derivative(model, _inputs(data, config, args.lie), batch_size=config.batch_size,
                                    reduction=args.lie_reduction)
    return result


def _inputs(data, config: AuditConfig, limit: int | None = None):
    """``data``'s batches as the model sees them (normalised), at most ``limit`` inputs.
    Normalising first is exact for the circular and Fourier shifts of --all-shifts and
    --lie: a per-channel affine map commutes with them."""
    from ..batches import iter_batches
    from ..data.preprocess import normalize
    left = limit
    for x, y in iter_batches(data, config.batch_size):
        if left is not None:
            x, y, left = x[:left], (None if y is None else y[:left]), left - len(x[:left])
        if len(x):
            yield (x if config.normalize is None else normalize(x, config.normalize)), y
        if left is not None and left <= 0:
            return


def _folder_stream(args, config: AuditConfig):
    """``--data folder:DIR`` as a lazy stream with the preprocessing options, checked before
    any image is decoded; returns ``(stream, (C, H, W))``."""
    from ..data import Preprocess, stream_image_folder
    center = args.center_crop
    if center is not None and len(center) not in (1, 2):
        raise ShiftlabError(f"--center-crop needs HxW (or one size S for SxS), got "
                            f"{'x'.join(map(str, center))}")
    if args.resize is not None and args.crop is not None and config.action.needs_crop \
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
    from ..data import load_data
    loaded = load_data(args.data, split="test", seed=args.seed)   # keeps its record()
    x, y = loaded
    if args.limit:
        x, y = x[:args.limit], (None if y is None else y[:args.limit])
    if args.canvas is not None and x.ndim == 3:
        raise ShiftlabError("--canvas places images on a larger canvas; the data are 1-D signals "
                            "(pad them in the data instead)")
    if args.canvas is not None:
        from ..data import place_on_canvas
        h, w = x.shape[-2:]
        if args.canvas < max(h, w):
            raise ShiftlabError(f"--canvas {args.canvas} is smaller than the {h}x{w} images; "
                                f"use --canvas {max(h, w)} or more")
        x = place_on_canvas(x, (args.canvas, args.canvas))
    return loaded.with_data(x, y), tuple(x.shape[1:])
