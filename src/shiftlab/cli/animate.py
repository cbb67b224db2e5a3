"""``shiftlab animate``: Wolf's GIF, feature maps of a digit sliding over a canvas."""
from __future__ import annotations

import argparse

from ..errors import ShiftlabError
from .options import add_device, add_model, index, layer_names, load_model, output_file, positive, seed

NAME = "animate"
HELP = "Animate feature maps of a digit sliding over a canvas (Wolf's GIF)."
EXAMPLES = """examples:
  shiftlab animate --model lenet-wolf --weights out/models/lenet-wolf/model.safetensors --out out/animation-lenet-wolf.gif
  shiftlab animate --model lenet-wolf-maxpool --data mnist --index 7 --path loop --clusters 8 --out loop.gif"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--data", default="mnist", help="where the image comes from (test split; default mnist)")
    p.add_argument("--index", type=index, default=0, help="which image of the data (default 0)")
    p.add_argument("--canvas", type=positive, default=38,
                   help="side of the canvas the image slides on (default 38, at most 132)")
    p.add_argument("--path", default="left-right", choices=["left-right", "diagonal", "loop"])
    p.add_argument("--layers", help="comma-separated feature-map layers (default: 3, first to deepest)")
    p.add_argument("--clusters", type=positive, default=6, help="k-means colours (default 6, at most 12)")
    p.add_argument("--fps", type=positive, default=8, help="frames per second (default 8, at most 50)")
    p.add_argument("--seed", type=seed, default=0, help="k-means seed (default 0)")
    p.add_argument("--out", required=True, help="the GIF to write")
    add_device(p)


def run(args) -> None:
    from ..data import load_data
    from ..viz.animate import MAX_CLUSTERS, animate, check_canvas
    output_file(args.out)
    check_canvas(args.canvas)                         # before a model sized for it is built
    layer_names(args.layers)
    if args.clusters > MAX_CLUSTERS or args.fps > 50:
        raise ShiftlabError(f"--clusters must be at most {MAX_CLUSTERS} and --fps at most 50, got "
                            f"{args.clusters} and {args.fps}")
    from ..device import resolve_device
    device = resolve_device(args.device)
    x, y = load_data(args.data, split="test", seed=0)
    if not 0 <= args.index < len(x):
        raise ShiftlabError(f"--index must be in [0, {len(x) - 1}] for {args.data}, got {args.index}")
    model = load_model(args, input_size=args.canvas).to(device)
    label = None if y is None else int(y[args.index])
    path, frames = animate(model, x[args.index], args.out, canvas=args.canvas, path=args.path,
                           layers=args.layers, clusters=args.clusters, seed=args.seed, fps=args.fps,
                           label=label, title=args.model)
    shown = ", ".join(f"{v.name} (stride {v.stride})" for v in frames.layers[1:])
    print(f"wrote {path}: {len(frames)} frames of {args.model} on a {args.canvas}x{args.canvas} canvas; "
          f"layers {shown}")
