"""Peak memory of an audit as the data grow: it must not grow with the number of images.

Each audit runs in a fresh process (so the peak is its own) on N synthetic images, with
every default layer probed, and reports that process's peak resident set size (max RSS)
and the peak minus the same process's RSS after building the model and the data
(the audit's own share). The data are built up front, so they are part of the baseline;
what the audit adds must stay flat from N = B (one batch) to N = 4B.

    python benchmarks/audit_memory.py                                   # lenet-wolf, 256 ... 1024
    python benchmarks/audit_memory.py --model resnet18 --input 3x256x256 --crop 224x224 \
        --protocol crop --shifts=-1:1 --batch-size 32 --images 32,64,128
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _child(args) -> None:
    import torch
    torch.set_num_threads(1)
    import shiftlab
    from shiftlab.data import synthetic_images
    from shiftlab.models import create_model
    size = tuple(int(v) for v in args.input.split("x"))
    crop = tuple(int(v) for v in args.crop.split("x")) if args.crop else None
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    images = synthetic_images(args.n, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = shiftlab.audit(model, images, protocol=args.protocol, crop=crop, shifts=args.shifts,
                            batch_size=args.batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": args.n, "forwards": result.forwards,
                      "peak_mb": round(peak / 1024, 1), "audit_mb": round((peak - base) / 1024, 1)}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet-wolf")
    p.add_argument("--input", default="1x28x28")
    p.add_argument("--protocol", default="circular")
    p.add_argument("--crop", default=None)
    p.add_argument("--shifts", default="-4:4")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", default="256,512,1024")
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)          # the child's own run
    args = p.parse_args(argv)
    if args.n is not None:
        return _child(args)
    rows = []
    for n in (int(v) for v in args.images.split(",")):
        cmd = [sys.executable, __file__, "--n", str(n)] + [
            a for k, v in (("--model", args.model), ("--input", args.input),
                           ("--protocol", args.protocol), ("--crop", args.crop),
                           ("--shifts", args.shifts), ("--batch-size", str(args.batch_size)))
            if v is not None for a in (f"{k}={v}",)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.model}, {args.protocol} {args.shifts}, batch {args.batch_size}, every default layer:")
    print(f"{'images':>7} {'forwards':>9} {'peak MB':>8} {'audit MB':>9}")
    for r in rows:
        print(f"{r['images']:>7} {r['forwards']:>9} {r['peak_mb']:>8} {r['audit_mb']:>9}")
    print(f"audit's share, largest / smallest data: {rows[-1]['audit_mb'] / max(rows[0]['audit_mb'], 0.1):.3f}")


if __name__ == "__main__":
    main()
