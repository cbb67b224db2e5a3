"""Every circular shift of every input: ``S^d`` forward passes (shiftlab.periodic) against
brute force over all ``N^d`` shifts, for a circular net of total stride ``S``.

Prints the passes saved (``N^d / S^d``), the measured time ratio (both sides interleaved,
best of ``--repeats``) and checks that both give the same statistics.

    python benchmarks/all_shifts.py --model lenet-wolf-maxpool-aps --images 64
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from shiftlab.actions import circular_shift
from shiftlab.data import load_data
from shiftlab.loading import load_trained
from shiftlab.periodic import all_shifts


def brute_force(model, x, y) -> dict:
    """Worst-case accuracy and consistency from the predictions at all N^d shifts."""
    with torch.no_grad():
        preds = torch.stack([model(circular_shift(x, d)).argmax(1)
                             for d in itertools.product(*(range(n) for n in x.shape[2:]))], 1)
    counts = torch.zeros(len(x), int(preds.max()) + 1, dtype=torch.float64)
    counts.scatter_add_(1, preds, torch.ones_like(preds, dtype=torch.float64))
    return {"consistency": float(((counts / preds.shape[1]) ** 2).sum(1).mean()),
            "worst_case_accuracy": float((preds == y[:, None]).all(1).double().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet-wolf-maxpool-aps")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_trained(args.model, f"weights/{args.model}")      # the shipped weights
    x, y = load_data("mnist")
    x, y = x[:args.images], y[:args.images]
    fast_t, slow_t = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fast = all_shifts(model, (x, y))
        fast_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        slow = brute_force(model, x, y)
        slow_t.append(time.perf_counter() - start)
    same = (abs(fast.consistency - slow["consistency"]) < 1e-12
            and abs(fast.worst_case_accuracy - slow["worst_case_accuracy"]) < 1e-12)
    print(json.dumps({"model": args.model, "images": args.images, "stride": fast.stride,
                      "passes_per_image": fast.passes, "brute_force_passes": fast.shifts,
                      "passes_saved": fast.speedup,
                      "time_ratio": round(min(slow_t) / min(fast_t), 1),
                      "consistency": fast.consistency,
                      "worst_case_accuracy": fast.worst_case_accuracy,
                      "same_as_brute_force": same}, indent=1))
    if not same:
        raise SystemExit("all_shifts disagrees with brute force")


if __name__ == "__main__":
    main()
