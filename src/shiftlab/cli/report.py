"""``shiftlab report``: the self-contained HTML report of a results folder. Never imports torch."""
from __future__ import annotations

import argparse

from .options import output_file

NAME = "report"
HELP = "Write the self-contained HTML report of a results folder."
EXAMPLES = """example:
  shiftlab report out -o out/report.html"""
TORCH_FREE = True                     # it only reads saved results: it starts faster without torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="results folder (audit-*.json, models/*/train.json, animation-*.gif, "
                                   "explorer-*.json, experiment-*.json)")
    p.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--title", default="shiftlab report")


def run(args) -> None:
    from ..report import build_report
    output_file(args.out)                             # before figures are drawn into the folder
    path = build_report(args.results, args.out, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
