"""Which layers carry the equivariance error: the Lie derivative (shiftlab.lie) of the shipped
MNIST nets, split into nonlinearities, downsampling and the rest (Gruver et al. 2023, Fig. 4).

    python benchmarks/lie_layers.py --images 256
"""
from __future__ import annotations

import argparse
import json

from shiftlab.data import load_data
from shiftlab.lie import lie_derivative
from shiftlab.loading import load_trained
from shiftlab.weights import PRETRAINED

MODELS = ["lenet-wolf", "lenet-wolf-shift3", "lenet-wolf-maxpool", "lenet-wolf-maxpool-blur",
          "lenet-wolf-maxpool-aps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--json", help="also save the rows as JSON")
    args = parser.parse_args()
    x, _ = load_data("mnist")
    x = x[:args.images]
    rows = []
    print(f"{'model':26s} {'shifts':8s} {'LEE x':>9s} {'LEE y':>9s} {'nonlin.':>8s} {'downs.':>8s} "
          f"{'other':>8s}  largest layer")
    for name in MODELS:
        entry = PRETRAINED[name]                                        # the shipped weights
        result = lie_derivative(load_trained(entry.model, f"weights/{name}"), x)
        shares = result.shares_by_group()
        top = max(result.layers, key=lambda l: sum(l.contribution.values()))
        row = {"model": name, "generator": result.generator, "lee": result.lee, "shares": shares,
               "largest": f"{top.name} ({top.type})"}
        rows.append(row)
        print(f"{name:26s} {result.generator:8s} {result.lee['x']:9.2e} {result.lee['y']:9.2e} "
              + " ".join(f"{shares[g]:8.0%}" for g in ("nonlinearity", "downsampling", "other"))
              + f"  {row['largest']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
