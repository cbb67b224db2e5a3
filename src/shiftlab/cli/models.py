"""``shiftlab models``: the zoo, one line per model, with its stride and receptive field."""
from __future__ import annotations

import argparse

NAME = "models"
HELP = "List the models of the zoo."
EXAMPLES = """example:
  shiftlab models"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args) -> None:
    from ..models import create_model, list_models, model_doc
    rows = [("model", "stride", "RF", "params", "description")]
    for name in list_models():
        model = create_model(name)
        geometry = getattr(model, "geometry", None)
        rows.append((name, str(geometry.total_stride) if geometry else "-",
                     str(geometry.receptive_field) if geometry else "-",
                     f"{sum(p.numel() for p in model.parameters()):,}", model_doc(name)))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print("\nstride: total stride of the spatial path; RF: its receptive field in input pixels "
          "(both computed from the layers, and checked against the probes in the tests)")
