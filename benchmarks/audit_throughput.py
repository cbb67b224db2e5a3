"""Throughput of ``shiftlab.audit`` relative to a bare forward loop.

What is measured: forwarded images per second of ``shiftlab.audit`` (circular protocol,
hooks and per-layer metrics included), divided by the images per second of a bare
``torch.inference_mode()`` loop that forwards exactly the same shifted inputs through
the same model, without hooks or metrics, in the same chunk sizes: per image batch the
reference rows, then every non-zero grid shift (shift-major, column by column), then the
random consistency pairs, all built with the same shiftlab action. The ratio is the
fraction of the bare model speed the audit keeps; the target is a ratio >= 0.90.

Each side is run once to warm up, then ``--repeats`` times, interleaved (so both share
the machine's noise); the best time of each side is reported.

    python benchmarks/audit_throughput.py --model lenet-wolf --layers none
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import shiftlab
from shiftlab.audit import iter_batches, pair_shifts
from shiftlab.data import synthetic_images
from shiftlab.models import create_model
from shiftlab.shifts import ShiftSet
from shiftlab.actions import make_action

PROTOCOL = "circular"


def run_audit(model, images, labels, args, layers):
    return shiftlab.audit(model, (images, labels), protocol=PROTOCOL, shifts=args.shifts,
                          layers=layers, batch_size=args.batch_size, seed=args.seed)


def run_bare(model, images, args, pairs, pair_range):
    """Forward the audit's rows, chunk for chunk, with no hooks or metrics; return the
    number of images forwarded."""
    action = make_action(PROTOCOL)
    grid = ShiftSet.parse(args.shifts)
    shifts = grid.tensor()
    order = sorted((k for k in range(len(grid)) if k != grid.zero_index),
                   key=lambda k: (shifts[k, 1].item(), shifts[k, 0].item()))
    forwards, start = 0, 0
    with torch.inference_mode():
        for x, _ in iter_batches(images, args.batch_size):
            n = len(x)
            model(action.reference(x))
            forwards += n
            row_shift = shifts[order].repeat_interleave(n, 0)
            if pairs:
                ps = pair_shifts(args.seed, start, n, pairs, *pair_range)
                row_shift = torch.cat([row_shift, ps.reshape(-1, 2)])
            row_shift = row_shift.to(torch.int64)
            row_img = torch.arange(n).repeat(len(row_shift) // n)
            for lo in range(0, len(row_shift), args.batch_size):
                hi = min(lo + args.batch_size, len(row_shift))
                model(action(x[row_img[lo:hi]], row_shift[lo:hi]))
                forwards += hi - lo
            start += n
    return forwards


def timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet-wolf")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--shifts", default="-4:4")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names; 'none' = output only (default: the "
                        "audit's default set)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="also save the numbers as JSON")
    args = p.parse_args(argv)
    layers = None if args.layers is None else \
        [] if args.layers.lower() == "none" else [s for s in args.layers.split(",") if s]

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    images = synthetic_images(args.images, (1, 28, 28))
    labels = torch.randint(0, 10, (args.images,))

    # warm-up; the audit's own provenance says which pairs the bare loop must forward
    result = run_audit(model, images, labels, args, layers)
    pairs, pair_range = result.provenance.pairs_per_image, result.provenance.pair_range
    bare_forwards = run_bare(model, images, args, pairs, pair_range)
    assert bare_forwards == result.forwards, (bare_forwards, result.forwards)

    best_audit = best_bare = float("inf")
    for r in range(args.repeats):
        sides = ["audit", "bare"] if r % 2 == 0 else ["bare", "audit"]
        for side in sides:
            if side == "audit":
                t, res = timed(run_audit, model, images, labels, args, layers)
                assert res.forwards == result.forwards
                best_audit = min(best_audit, t)
            else:
                t, fw = timed(run_bare, model, images, args, pairs, pair_range)
                assert fw == result.forwards, (fw, result.forwards)
                best_bare = min(best_bare, t)

    forwards = result.forwards
    bare_ips, audit_ips = forwards / best_bare, forwards / best_audit
    row = {"model": args.model, "layers": args.layers or "default",
           "probed": len(result.layers), "images": args.images, "forwards": forwards,
           "bare_s": round(best_bare, 4), "audit_s": round(best_audit, 4),
           "bare_img_s": round(bare_ips, 1), "audit_img_s": round(audit_ips, 1),
           "ratio": round(audit_ips / bare_ips, 4), "threads": torch.get_num_threads(),
           "shifts": args.shifts, "batch_size": args.batch_size, "repeats": args.repeats,
           "torch": torch.__version__}

    cols = [("model", "model"), ("layers", "layers"), ("images", "images"),
            ("forwards", "forwards"), ("bare img/s", "bare_img_s"),
            ("audit img/s", "audit_img_s"), ("ratio", "ratio"), ("threads", "threads")]
    cells = [str(row[k]) for _, k in cols]
    widths = [max(len(h), len(c)) for (h, _), c in zip(cols, cells)]
    print("  ".join(h.rjust(w) for (h, _), w in zip(cols, widths)))
    print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    print(f"best of {args.repeats}: bare {best_bare:.3f} s, audit {best_audit:.3f} s "
          f"(ratio = audit img/s / bare img/s; target >= 0.90)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
