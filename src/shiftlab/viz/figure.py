"""One look for every figure, and two ways out: files (PNG + SVG, atomically) or PNG bytes."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")                                   # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 110, "font.size": 10, "axes.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "legend.frameon": False, "svg.hashsalt": "shiftlab",
}


def new_figure(ncols: int = 1, nrows: int = 1, size=(5.0, 3.4), **kwargs):
    """A figure and its axes in the shiftlab style; ``size`` is per panel (inches)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                                 layout="constrained", **kwargs)
    return fig, axes


def save_figure(fig, folder: str | Path, stem: str, formats=("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``folder/stem.png`` and ``.svg`` (atomic); close it; return the paths."""
    paths = []
    try:
        with plt.rc_context(STYLE):
            for fmt in formats:
                path = Path(folder) / f"{stem}.{fmt}"
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
                paths.append(path)
    finally:
        plt.close(fig)
    return paths


def figure_png(fig) -> bytes:
    """``fig`` as PNG bytes, written nowhere (the report embeds them); closes the figure."""
    buffer = io.BytesIO()
    try:
        with plt.rc_context(STYLE):
            fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()
