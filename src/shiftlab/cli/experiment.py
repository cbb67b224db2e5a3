"""``shiftlab experiment``: run one of the seeds' claims and say whether it holds."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ShiftlabError
from ..io import check_writable
from .options import add_device, seed

NAME = "experiment"
HELP = "Run one of the seeds' claims as an experiment (see --list)."
EXAMPLES = """examples:
  shiftlab experiment --list
  shiftlab experiment pooling --quick --out out"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments, one line each")
    p.add_argument("--out", default="out", help="folder for the JSON and figures (default out)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds; for tests)")
    add_device(p, "cpu")


def run(args) -> None:
    from ..experiments import EXPERIMENTS, run_experiment
    if args.list or not args.name:
        width = max(map(len, EXPERIMENTS))
        for name, (_, line) in EXPERIMENTS.items():
            print(f"{name.ljust(width)}  {line}")
        if not args.list:
            raise ShiftlabError("give an experiment name (listed above)")
        return
    if args.name not in EXPERIMENTS:
        raise ShiftlabError(f"unknown experiment {args.name!r}; see `shiftlab experiment --list`")
    check_writable(Path(args.out) / f"experiment-{args.name}.json")   # before the work
    from ..device import training_device
    with training_device(args.device):            # the experiment's training runs go there
        result = run_experiment(args.name, args.out, seed=args.seed, quick=args.quick)
    print(f"\n{result.title}\n\n{result.table()}\n")
    for claim, holds in result.claims.items():
        print(f"  [{'holds' if holds else 'FAILS'}] {claim}")
    print(f"\nwrote {Path(args.out) / f'experiment-{result.name}.json'}"
          + "".join(f", {Path(args.out) / f}" for f in result.figures))
