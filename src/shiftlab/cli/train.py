"""``shiftlab train``: train a zoo model, seeded and resumable (see :mod:`shiftlab.train`)."""
from __future__ import annotations

import argparse
import sys

from .options import add_device, seed

NAME = "train"
HELP = "Train a zoo model (Adam, seeded, resumable checkpoints every epoch)."
EXAMPLES = """examples:
  shiftlab train --model lenet-wolf --data mnist --epochs 3 --out out/lenet-wolf
  shiftlab train --model lenet-wolf --data mnist --canvas 38 --augment shift:5 --out out/aug
  shiftlab train --model lenet-wolf --data mnist --epochs 3 --out out/lenet-wolf --resume"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a zoo name (see `shiftlab models`) or path.py:factory")
    p.add_argument("--data", default="mnist", help="labelled data with train/test splits (default mnist)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"),
                   help="cosine: 3%% warm-up then cosine decay to 0 (default)")
    p.add_argument("--augment", help="shift:K = random shifts in [-K, K] px per image and epoch")
    p.add_argument("--canvas", type=int, help="place images centred on an NxN canvas (e.g. 38)")
    p.add_argument("--limit", type=int, help="train on the first N images only")
    p.add_argument("--init", help="start from these weights (tensors matching by name and shape), "
                                  "e.g. a baseline's model.safetensors before fine-tuning a converted net")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", required=True, help="folder for checkpoint.pt, model.safetensors, train.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory layout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p, "cpu")              # seeded training stays bitwise reproducible by default


def run(args) -> None:
    from ..train import TrainConfig, train
    config = TrainConfig(model=args.model, data=args.data, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, augment=args.augment,
                         canvas=args.canvas, seed=args.seed, limit=args.limit,
                         channels_last=not args.no_channels_last, init=args.init)
    # train() checks everything before any work, creates --out only then and locks it
    train(config, args.out, resume=args.resume, progress=not args.quiet and sys.stderr.isatty(),
          device=args.device)
