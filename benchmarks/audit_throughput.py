"""Throughput of ``shiftlab.audit`` relative to a bare forward loop.

What is measured: forwarded images per second of ``shiftlab.audit`` (circular or crop
protocol, hooks and per-layer metrics included), divided by the images per second of a
bare ``torch.inference_mode()`` loop that forwards exactly the same shifted inputs through
the same model, without hooks or metrics, in the same chunks: per image batch the
reference rows, then the rows of the audit's own plan (``AuditPlan.rows``: every non-zero
grid shift, then the random consistency pairs), built with the same shiftlab action. The
ratio is the fraction of the bare model speed the audit keeps (issue 16's targets: 0.95 for
``lenet-wolf`` and for ``resnet18`` at 224 under the crop protocol, 0.90 for
``conv-maxpool``; the README gives what was measured).

Each side is run once on a few images to warm up, then ``--repeats`` times on all, interleaved (so both share
the machine's noise); the best time of each side is reported. Inputs are synthetic
smooth images (throughput does not depend on the content).

    python benchmarks/audit_throughput.py --model lenet-wolf --images 256 --threads 1
    python benchmarks/audit_throughput.py --preset resnet18-224 --images 32 --threads 2

``--preset resnet18-224``: resnet18 (untrained; weights do not change the cost), the
default layers, 16 images of 3x256x256 (Zhang's resize to 256), ``--protocol crop
--crop 224x224`` (224 windows; consistency pairs at offsets in [0, 32)), shifts -1:1,
5 pairs per image, batch size 32: 304 forwards at 224x224 per side.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import shiftlab
from shiftlab import AuditConfig
from shiftlab.data import synthetic_images
from shiftlab.models import create_model
from shiftlab.plan import AuditPlan
from shiftlab.probe import resolve_layers

PRESETS = {
    "resnet18-224": dict(model="resnet18", images=16, input=(3, 256, 256), protocol="crop",
                         crop=(224, 224), shifts="-1:1", batch_size=32, repeats=2),
}


def _size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def run_audit(model, images, labels, args, layers):
    return shiftlab.audit(model, (images, labels), protocol=args.protocol, crop=args.crop,
                          shifts=args.shifts, layers=layers, batch_size=args.batch_size,
                          seed=args.seed)


def make_plan(model, images, args, layers):
    """The audit's own plan for these inputs (built once, outside the timing): the bare
    loop forwards exactly its rows, in its order and chunks."""
    config = AuditConfig(protocol=args.protocol, crop=args.crop, shifts=args.shifts,
                         layers=layers, batch_size=args.batch_size, seed=args.seed).check()
    with torch.inference_mode():
        return AuditPlan.build(model, config, images[:args.batch_size],
                               resolve_layers(model, layers))


def run_bare(model, images, args, plan):
    """Forward the audit's rows, chunk for chunk, with no hooks or metrics; return the
    number of images forwarded."""
    forwards = 0
    with torch.inference_mode():
        for start in range(0, len(images), args.batch_size):
            x = images[start:start + args.batch_size]
            model(plan.action.reference(x))
            forwards += len(x)
            rows = plan.rows(len(x), start)
            for chunk in rows.chunks(args.batch_size):
                model(plan.action(x[rows.image[chunk.lo:chunk.hi]], rows.shift[chunk.lo:chunk.hi]))
                forwards += chunk.hi - chunk.lo
    return forwards


def timed(fn, *a):
    """``((wall seconds, CPU seconds of this process), fn(*a))``. CPU time counts only
    what this process ran, so it moves less than wall time on a machine shared with other
    work (with one thread it is the cleaner of the two; with more, idle threads spinning
    at OpenMP barriers count too)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*a)
    return (time.perf_counter() - t0, time.process_time() - c0), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named setting (options given beside it win)")
    p.add_argument("--model", default="lenet-wolf")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--input", type=_size, default=(1, 28, 28), help="one image's CxHxW (default 1x28x28)")
    p.add_argument("--protocol", choices=["circular", "crop"], default="circular")
    p.add_argument("--crop", type=_size, help="crop window HxW for --protocol crop")
    p.add_argument("--shifts", default="-4:4")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names; 'none' = output only (default: the "
                        "audit's default set)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", metavar="PATH", help="also save the numbers as JSON")
    args = p.parse_args(argv)
    if args.preset:                        # the preset's values, where no option gave others
        p.set_defaults(**PRESETS[args.preset])
        args = p.parse_args(argv)
    layers = None if args.layers is None else \
        [] if args.layers.lower() == "none" else [s for s in args.layers.split(",") if s]

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    images = synthetic_images(args.images, args.input)
    with torch.no_grad():
        classes = model(images[:1, :, :args.crop[0], :args.crop[1]] if args.crop else images[:1]).shape[-1]
    labels = torch.randint(0, classes, (args.images,))

    # warm-up on a few images; the bare loop forwards the audit plan's rows
    few = min(len(images), 4)
    result = run_audit(model, images[:few], labels[:few], args, layers)
    plan = make_plan(model, images, args, layers)
    bare_forwards = run_bare(model, images[:few], args, plan)
    assert bare_forwards == result.forwards, (bare_forwards, result.forwards)

    best_audit = best_bare = best_audit_cpu = best_bare_cpu = float("inf")
    for r in range(args.repeats):
        sides = ["audit", "bare"] if r % 2 == 0 else ["bare", "audit"]
        for side in sides:
            if side == "audit":
                (t, cpu), result = timed(run_audit, model, images, labels, args, layers)
                best_audit, best_audit_cpu = min(best_audit, t), min(best_audit_cpu, cpu)
            else:
                (t, cpu), bare_forwards = timed(run_bare, model, images, args, plan)
                best_bare, best_bare_cpu = min(best_bare, t), min(best_bare_cpu, cpu)
    assert bare_forwards == result.forwards, (bare_forwards, result.forwards)

    forwards = result.forwards
    bare_ips, audit_ips = forwards / best_bare, forwards / best_audit
    row = {"model": args.model, "protocol": args.protocol,
           "input": "x".join(map(str, args.input)),
           "crop": "x".join(map(str, args.crop)) if args.crop else None,
           "layers": args.layers or "default",
           "probed": len(result.layers), "images": args.images, "forwards": forwards,
           "bare_s": round(best_bare, 4), "audit_s": round(best_audit, 4),
           "bare_img_s": round(bare_ips, 1), "audit_img_s": round(audit_ips, 1),
           "ratio": round(audit_ips / bare_ips, 4),
           "bare_cpu_s": round(best_bare_cpu, 4), "audit_cpu_s": round(best_audit_cpu, 4),
           "ratio_cpu": round(best_bare_cpu / best_audit_cpu, 4), "threads": torch.get_num_threads(),
           "shifts": args.shifts, "batch_size": args.batch_size, "repeats": args.repeats,
           "torch": torch.__version__}

    cols = [("model", "model"), ("protocol", "protocol"), ("layers", "layers"),
            ("probed", "probed"), ("images", "images"),
            ("forwards", "forwards"), ("bare img/s", "bare_img_s"),
            ("audit img/s", "audit_img_s"), ("ratio", "ratio"), ("CPU-time ratio", "ratio_cpu"),
            ("threads", "threads")]
    cells = [str(row[k]) for _, k in cols]
    widths = [max(len(h), len(c)) for (h, _), c in zip(cols, cells)]
    print("  ".join(h.rjust(w) for (h, _), w in zip(cols, widths)))
    print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    print(f"best of {args.repeats}: bare {best_bare:.3f} s, audit {best_audit:.3f} s "
          f"(ratio = audit img/s / bare img/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
