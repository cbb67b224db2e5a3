"""The fixes side by side on MNIST (issue 13, part 3): the max-pooled baseline, BlurPool with
filters 3 and 5, APS and alias-free, each as shipped in weights/.

For each net: test accuracy (all 10,000 digits, from its train.json), and on the first
``--images`` test digits under circular shifts of the grid ``--shifts``: integer consistency
(Zhang's random pairs), half-pixel consistency (unshifted vs shifted by s + 1/2 px, as the
alias-free paper's code), the worst-case gap over integer shifts and over the half-pixel
lattice (clean minus worst-case accuracy, in points); then the cost of a training step
(forward + backward, batch 128) and of inference (batch 256) relative to the baseline,
measured interleaved in this run (best of ``--repeats``).

    python benchmarks/mnist_side_by_side.py --images 500
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from shiftlab import audit
from shiftlab.data import load_data
from shiftlab.weights import PRETRAINED, load_pretrained, pretrained_folder

NETS = {"max-pool (baseline)": "lenet-wolf-maxpool", "BlurPool 3": "lenet-wolf-maxpool-blur",
        "BlurPool 5": "lenet-wolf-maxpool-blur5", "APS": "lenet-wolf-maxpool-aps",
        "alias-free": "lenet-wolf-maxpool-alias-free"}


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool) -> float:
    """One training step (forward, loss, backward) or one inference forward, timed."""
    start = time.perf_counter()
    if train:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode():
            model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--shifts", default="-2:2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also save the rows as JSON")
    args = parser.parse_args()
    x, y = load_data("mnist")
    models = {label: load_pretrained(name) for label, name in NETS.items()}

    # cost: interleaved, best of repeats, relative to the baseline
    torch.manual_seed(0)
    batch_train, batch_infer = (x[:128], y[:128]), x[:256]
    best = {label: {"train": float("inf"), "infer": float("inf")} for label in models}
    for _ in range(args.repeats):
        for label, model in models.items():
            best[label]["train"] = min(best[label]["train"], step_seconds(model, *batch_train, True))
            best[label]["infer"] = min(best[label]["infer"], step_seconds(model, batch_infer, None, False))
    base = best["max-pool (baseline)"]

    rows = []
    for label, model in models.items():
        name = NETS[label]
        record = json.loads((pretrained_folder(name) / "train.json").read_text())
        result = audit(model.eval(), (x[:args.images], y[:args.images]), protocol="circular",
                       shifts=args.shifts, layers=[], pairs=5, half_pixel=True, seed=0)
        inv = result.invariance
        rows.append({"net": label, "model": name, "test_accuracy": record["test_accuracy"],
                     "consistency": inv.consistency, "half_pixel_consistency": inv.half_pixel_consistency,
                     "gap_integer": inv.gap_integer, "gap_half_pixel": inv.gap_half_pixel,
                     "train_cost": best[label]["train"] / base["train"],
                     "inference_cost": best[label]["infer"] / base["infer"],
                     "epochs": PRETRAINED[name].epochs})
    print(f"MNIST, circular shifts {args.shifts} on {args.images} test digits; cost relative to "
          f"the baseline (best of {args.repeats}, {torch.get_num_threads()} threads)\n")
    print("| net | test acc. | consistency | half-pixel consistency | gap integer | gap half-pixel "
          "| train cost | inference cost |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} (`{r['model']}`) | {r['test_accuracy']:.2%} | {r['consistency']:.1%} | "
              f"{r['half_pixel_consistency']:.1%} | {100 * r['gap_integer']:.1f} pt | "
              f"{100 * r['gap_half_pixel']:.1f} pt | {r['train_cost']:.1f}× | {r['inference_cost']:.1f}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
