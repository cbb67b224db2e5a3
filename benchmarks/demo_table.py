"""Re-measure the README's demo table on all 10,000 MNIST test digits with the shipped weights.

Per demo model (:data:`shiftlab.demo.RUNS`, weights from ``weights/NAME/``):

* MNIST test accuracy (the canvas audit's clean accuracy: the unshifted digits);
* consistency under circular shifts (random pairs in [−14, 14)², the audit's default for
  28×28 images) and half-pixel consistency (the unshifted digit against a shift by a
  random whole number plus ½ pixel per axis in the same range);
* the worst-case gap (clean minus worst-case accuracy, in points) over the circular grid
  ``-2:2`` (25 integer shifts) and over the half-pixel lattice ``{-2, -1.5, …, 2}²`` around
  it (81 shifts);
* consistency, flip rate, mean / worst-case accuracy and the gap over the canvas grid
  ``-4:4`` (81 shifts; pairs in [−4, 4]²).

Cost: about ``images × (81 + 2·pairs)`` forwards per model on the canvas and
``images × (81 + 3·pairs)`` under circular shifts. Only the output is probed (``layers=[]``):
the table needs no per-layer errors, and probing every layer costs 20–40 % more.
``--estimate`` times each model on a few hundred digits and prints the expected total
without running the rest.

    python benchmarks/demo_table.py                      # all 10,000 digits (make results)
    python benchmarks/demo_table.py --estimate
    python benchmarks/demo_table.py --images 2000 --out out/demo-table-2000.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from shiftlab.audit import audit
from shiftlab.data import load_data
from shiftlab.demo import RUNS
from shiftlab.weights import load_pretrained, provenance

CANVAS_GRID = "-4:4"
CIRCULAR_GRID = "-2:2"
PAIRS = 5


def measure(name: str, x, y, layers, seed: int) -> dict:
    """One model's row of the table, and how long it took."""
    model = load_pretrained(name)
    start = time.perf_counter()
    canvas = audit(model, (x, y), protocol="canvas", shifts=CANVAS_GRID, pairs=PAIRS, layers=layers,
                   seed=seed, name=name)
    circular = audit(model, (x, y), protocol="circular", shifts=CIRCULAR_GRID, pairs=PAIRS,
                     layers=layers, seed=seed, name=name, half_pixel=True)
    inv = canvas.invariance
    return {"model": name, "images": len(x),
            "test_accuracy": inv.clean_accuracy,
            "consistency_circular": circular.invariance.consistency,
            "half_pixel_consistency": circular.invariance.half_pixel_consistency,
            "gap_integer_circular": circular.invariance.gap_integer,
            "gap_half_pixel_circular": circular.invariance.gap_half_pixel,
            "gap_canvas": inv.gap_integer,
            "circular_pair_range": circular.provenance.pair_range,
            "consistency_canvas": inv.consistency,
            "canvas_pair_range": canvas.provenance.pair_range,
            "flip_rate_canvas": inv.flip_rate,
            "mean_accuracy_canvas": sum(inv.accuracy) / len(inv.accuracy),
            "worst_case_accuracy_canvas": inv.worst_case_accuracy,
            "forwards": canvas.forwards + circular.forwards,
            "seconds": round(time.perf_counter() - start, 1),
            "weights": provenance(name)}


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def pt(v: float) -> str:
    return f"{100 * v:.1f} pt"


def markdown(rows: list[dict]) -> str:
    lines = ["| model | MNIST test acc. | consistency circular / half-pixel / canvas "
             "| gap circular integer / half-pixel | flip rate (canvas) "
             "| mean / worst-case acc. over the canvas grid | gap canvas |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['model']}` | {pct(r['test_accuracy'])} | {pct(r['consistency_circular'])} / "
                     f"{pct(r['half_pixel_consistency'])} / {pct(r['consistency_canvas'])} | "
                     f"{pt(r['gap_integer_circular'])} / {pt(r['gap_half_pixel_circular'])} | "
                     f"{pct(r['flip_rate_canvas'])} | "
                     f"{pct(r['mean_accuracy_canvas'])} / {pct(r['worst_case_accuracy_canvas'])} | "
                     f"{pt(r['gap_canvas'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="MNIST test digits (default all 10,000)")
    parser.add_argument("--all-layers", action="store_true",
                        help="probe every default layer too (slower; the table does not need it)")
    parser.add_argument("--estimate", action="store_true",
                        help="time each model on --sample digits and print the expected total")
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/demo-table.json")
    args = parser.parse_args()
    x, y = load_data("mnist", split="test", seed=args.seed)
    x, y = x[:args.images], y[:args.images]
    layers = None if args.all_layers else []
    names = [run.name for run in RUNS]
    print(f"torch threads: {torch.get_num_threads()}; layers probed: "
          f"{'default set' if layers is None else 'output only'}", flush=True)
    if args.estimate:
        total = 0.0
        for name in names:
            row = measure(name, x[:args.sample], y[:args.sample], layers, args.seed)
            expected = row["seconds"] * len(x) / args.sample
            total += expected
            print(f"{name}: {row['seconds']:.1f} s for {args.sample} digits "
                  f"-> about {expected / 60:.1f} min for {len(x):,}", flush=True)
        print(f"expected total: about {total / 60:.0f} min")
        return
    rows = []
    for name in names:
        rows.append(measure(name, x, y, layers, args.seed))
        r = rows[-1]
        print(f"{name}: {r['seconds']:.0f} s, {r['forwards']:,} forwards", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": len(x), "canvas_grid": CANVAS_GRID,
                               "circular_grid": CIRCULAR_GRID, "pairs_per_image": PAIRS,
                               "layers": "default" if layers is None else "output only",
                               "torch_threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    print(f"\n{markdown(rows)}\n\nwrote {out}")


if __name__ == "__main__":
    main()
