"""Throughput of ``shiftlab.train`` relative to a bare hand-written PyTorch loop.

What is measured: training images per second of :func:`shiftlab.train.train` (shuffling,
optional shift augmentation, the learning-rate schedule, loss/accuracy bookkeeping, the
atomic checkpoint written after the epoch), divided by the images per second of the
loop a user would write by hand: same model, same data, same batch size, Adam, a random
permutation per epoch, ``zero_grad / forward / loss / backward / step``, nothing else.

The bare loop is timed in both memory layouts (NCHW and ``channels_last``) and the ratio
is taken against the *faster* one, so shiftlab gets no credit for a layout choice a user
could make in one line. Both sides run one warm-up epoch, then ``--repeats`` epochs,
interleaved so that they share the machine's noise; the best epoch of each is reported.
Target: ratio >= 0.95.

    python benchmarks/train_throughput.py --model lenet-wolf --images 8192
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch import nn

from shiftlab.data import load_data
from shiftlab.models import create_model
from shiftlab.train import TrainConfig, train


def bare_epoch(model: nn.Module, x, y, batch_size: int, optimizer, channels_last: bool) -> float:
    """One hand-written training epoch; returns its seconds."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    order = torch.randperm(len(x))
    for lo in range(0, len(x), batch_size):
        idx = order[lo:lo + batch_size]
        xb = x[idx].contiguous(memory_format=memory)
        loss = loss_fn(model(xb), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def shiftlab_epoch(args, x, y, out: str) -> float:
    """One epoch of ``shiftlab.train`` (fresh run, checkpoint and record included)."""
    config = TrainConfig(model=args.model, data="mnist", epochs=1, batch_size=args.batch_size,
                         augment=args.augment, seed=args.seed)
    tiny_test = (x[:1], y[:1])          # the end-of-run test pass is not part of an epoch
    t0 = time.perf_counter()
    train(config, out, data=((x, y), tiny_test), progress=False, log=lambda *_: None)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet-wolf")
    p.add_argument("--images", type=int, default=8192, help="MNIST training images per epoch")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--augment", default=None, help="e.g. shift:4 (shiftlab side only)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    x, y = load_data("mnist", split="train", seed=args.seed)
    x, y = x[:args.images], y[:args.images]
    n = len(x)
    bare_models = {}
    for layout in (False, True):
        torch.manual_seed(args.seed)
        model = create_model(args.model, in_channels=x.shape[1], input_size=x.shape[-1])
        if layout:
            model = model.to(memory_format=torch.channels_last)
        bare_models[layout] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    times = {"bare": [], "bare_channels_last": [], "shiftlab": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats + 1):                       # the first is a warm-up
            for layout, key in ((False, "bare"), (True, "bare_channels_last")):
                model, opt = bare_models[layout]
                seconds = bare_epoch(model, x, y, args.batch_size, opt, layout)
                if rep:
                    times[key].append(seconds)
            seconds = shiftlab_epoch(args, x, y, f"{tmp}/run{rep}")
            if rep:
                times["shiftlab"].append(seconds)
    speed = {k: n / min(v) for k, v in times.items()}
    bare_best = max(speed["bare"], speed["bare_channels_last"])
    report = {"model": args.model, "images": n, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(),
              "img_per_s": {k: round(v, 1) for k, v in speed.items()},
              "ratio": round(speed["shiftlab"] / bare_best, 3)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.model}: {n} images, batch {args.batch_size}, {report['threads']} threads")
        for k, v in report["img_per_s"].items():
            print(f"  {k:<20} {v:8.1f} img/s")
        print(f"  ratio shiftlab / best bare loop: {report['ratio']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
