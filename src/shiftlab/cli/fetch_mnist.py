"""``shiftlab fetch-mnist``: download real MNIST once, verify it and store it."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..io import check_writable

NAME = "fetch-mnist"
HELP = "Set up real MNIST once (download, verify, store); offline after."
EXAMPLES = """example:
  shiftlab fetch-mnist --dest data"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", default="data", help="folder for mnist.npz (default ./data)")


def run(args) -> None:
    from ..data.mnist import FILENAME, fetch_mnist, load_mnist
    target = check_writable(Path(args.dest) / FILENAME)      # before downloading anything
    if target.is_file():
        load_mnist("test", target)                       # verifies shapes and label counts
        print(f"MNIST already set up: {target}")
    else:
        print(f"MNIST set up and verified: {fetch_mnist(args.dest)}")
