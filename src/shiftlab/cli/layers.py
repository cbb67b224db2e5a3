"""``shiftlab layers``: the layers shiftlab probes in a model, with their measured strides."""
from __future__ import annotations

import argparse

from .options import add_model, check_input, load_model, sizes, torch_dtype

NAME = "layers"
HELP = "Show the layers shiftlab probes, with their measured strides."
EXAMPLES = """example:
  shiftlab layers --model conv-maxpool --input 1x28x28"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--input", type=sizes, default=(1, 28, 28),
                   help="one input's CxHxW, or CxT for signals (default 1x28x28; at most 4,194,304 values)")
    p.add_argument("--all", action="store_true", help="every submodule, not just the default set")


def run(args) -> None:
    import torch
    from ..probe import infer_layers, resolve_layers
    from ..shapes import check_model_fits
    check_input(args.input)
    model = load_model(args, input_size=args.input[-1]).eval()
    names = resolve_layers(model, "all" if args.all else None)
    example = torch.zeros(1, *args.input, dtype=torch_dtype(args.dtype))
    check_model_fits(model, example)
    infos = infer_layers(model, example, names)
    rows = [("layer", "type", "output", "stride")] + [
        (i.name, i.kind, "x".join(map(str, i.shape)),
         "-" if i.stride is None else f"{i.stride} ({i.stride_source})") for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
