"""``shiftlab demo``: the main job, from MNIST to ``out/report.html`` (see :mod:`shiftlab.demo`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import check_writable

NAME = "demo"
HELP = "The main job: train the zoo on MNIST, audit, animate, write out/report.html."
EXAMPLES = """example:
  shiftlab demo --out out"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out", help="folder for the results")
    p.add_argument("--retrain", action="store_true", help="train again even where a model is saved")


def run(args) -> None:
    from ..demo import run_demo
    check_writable(Path(args.out) / "report.html")
    run_demo(Path(args.out), retrain=args.retrain)
