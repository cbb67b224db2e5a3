"""Figures from saved audit results (:class:`~shiftlab.result.AuditResult`): PNG + SVG.

Every function takes results (one, or a ``{name: result}`` mapping where models are
compared), a folder and a file stem, draws with :func:`~shiftlab.viz.new_figure` and
returns the paths :func:`~shiftlab.viz.save_figure` wrote (``formats``: PNG and SVG
by default; the PNG comes first). They only read results; they
never run a model.

=========================  ==============================================================
``plot_layer_errors``      per-layer equivariance error against the horizontal shift dx
                           (dy = 0): exact shifts filled, best-alignment ones hollow, so a
                           stride-S layer shows its period-S pattern
``plot_stability``         true-class probability and accuracy against dx, several models
``plot_accuracy_heatmap``  accuracy over the 2-D shift grid, one panel per model
``plot_sensitivity``       translation-sensitivity maps and their radial averages
``plot_model_bars``        consistency, flip rate and clean / mean / worst-case accuracy
=========================  ==============================================================
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import numpy as np

from ..errors import ShiftlabError
from ..result import AuditResult
from .figure import new_figure, save_figure

Results = Union[AuditResult, Mapping[str, AuditResult]]
FORMATS = ("png", "svg")

__all__ = ["plot_layer_errors", "plot_stability", "plot_accuracy_heatmap", "plot_sensitivity",
           "plot_model_bars", "shift_line", "as_named"]


# ----------------------------------------------------------------------------- helpers
def as_named(results: Results) -> dict[str, AuditResult]:
    """``{name: result}`` from one result (named by its provenance) or a mapping."""
    if isinstance(results, AuditResult):
        return {results.provenance.model: results}
    named = dict(results)
    if not named or not all(isinstance(r, AuditResult) for r in named.values()):
        raise ShiftlabError("expected an AuditResult or a non-empty {name: AuditResult} mapping")
    return named


def shift_line(result: AuditResult) -> tuple[str, np.ndarray, np.ndarray]:
    """The 1-D slice of the shift set that the line plots walk along.

    Returns ``(axis, offsets, indices)``: the horizontal line ``dy = 0`` if the set has
    one (``axis="dx"``), else the vertical line ``dx = 0`` (``"dy"``); ``offsets`` are
    sorted and ``indices`` point into ``result.shifts``.
    """
    shifts = np.asarray(result.shifts, dtype=float).reshape(-1, 2)
    for axis, fixed, moving in (("dx", 0, 1), ("dy", 1, 0)):
        idx = np.flatnonzero(shifts[:, fixed] == 0)
        if len(idx) >= 2:
            idx = idx[np.argsort(shifts[idx, moving], kind="stable")]
            return axis, shifts[idx, moving], idx
    raise ShiftlabError("the shift set has no line through dy = 0 or dx = 0 to plot along; "
                        "audit with a grid such as --shifts=-4:4 or x=-8:8")


def _grid(result: AuditResult, values: list[float]) -> tuple[np.ndarray, list[float], list[float]]:
    """Per-shift ``values`` as a ``(ny, nx)`` array with the dy and dx axis values."""
    if result.grid_shape is None:
        raise ShiftlabError(f"{result.provenance.model}: the shifts are not a grid; "
                            "audit with a grid such as --shifts=-4:4 for a 2-D map")
    ny, nx = result.grid_shape
    shifts = np.asarray(result.shifts, dtype=float).reshape(ny, nx, 2)
    return np.asarray(values, dtype=float).reshape(ny, nx), shifts[:, 0, 0].tolist(), shifts[0, :, 1].tolist()


def _require(named: dict[str, AuditResult], field: str, what: str) -> dict[str, AuditResult]:
    keep = {n: r for n, r in named.items() if getattr(r.invariance, field) is not None}
    if not keep:
        raise ShiftlabError(f"no result has {what}; audit labelled data "
                            f"(e.g. --data mnist) to get it")
    return keep


def _imshow_grid(ax, grid: np.ndarray, ys: list[float], xs: list[float], **kwargs):
    step_y = (ys[-1] - ys[0]) / max(1, len(ys) - 1) or 1.0
    step_x = (xs[-1] - xs[0]) / max(1, len(xs) - 1) or 1.0
    extent = (xs[0] - step_x / 2, xs[-1] + step_x / 2, ys[-1] + step_y / 2, ys[0] - step_y / 2)
    image = ax.imshow(grid, extent=extent, interpolation="nearest", **kwargs)
    ax.set_xlabel("dx (px, right)")
    ax.set_ylabel("dy (px, down)")
    ax.grid(False)
    return image


# ----------------------------------------------------------------------------- figures
def plot_layer_errors(result: AuditResult, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """Relative equivariance error of every spatial layer against dx (dy = 0).

    Filled markers: the layer's stride divides the shift, so the comparison is exact;
    hollow markers: the best integer alignment (an approximation). A second panel shows
    the invariance error of the non-spatial layers (head, output) when there are any.
    """
    axis, offsets, idx = shift_line(result)
    spatial = [l for l in result.layers if l.comparison == "equivariance"]
    flat = [l for l in result.layers if l.comparison == "invariance"]
    if not spatial and not flat:
        raise ShiftlabError(f"{result.provenance.model}: no layer was compared; nothing to plot")
    panels = [p for p in (("equivariance error of feature maps", spatial),
                          ("invariance error (no spatial axes)", flat)) if p[1]]
    fig, axes = new_figure(1, len(panels), size=(8.0, 3.0), squeeze=False)
    import matplotlib.pyplot as plt
    for ax, (title, layers) in zip(axes[:, 0], panels):
        colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(layers)))
        for colour, layer in zip(colours, layers):
            error = np.asarray(layer.error, dtype=float)[idx]
            exact = np.asarray([layer.alignment[k] in ("exact", "invariance") for k in idx])
            label = f"{layer.name} ({layer.kind}, stride {layer.stride})"
            ax.plot(offsets, error, "-", color=colour, lw=1.4, alpha=0.8, label=label)
            ax.plot(offsets[exact], error[exact], "o", color=colour, ms=5)
            ax.plot(offsets[~exact], error[~exact], "o", mfc="white", mec=colour, ms=5)
        ax.set_title(title)
        ax.set_xlabel(f"{axis} (px; {'dy' if axis == 'dx' else 'dx'} = 0)")
        ax.set_ylabel("relative L2 error")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{result.provenance.model}: error vs {result.provenance.protocol} shift "
                 "(filled = exact comparison, hollow = best alignment)", fontsize=10)
    return save_figure(fig, out, stem, formats)


def plot_stability(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """True-class probability (left) and accuracy (right) against dx, one line per model."""
    named = _require(as_named(results), "true_class_prob", "per-shift true-class probabilities")
    fig, (left, right) = new_figure(2, 1, size=(5.0, 3.5))
    for name, result in named.items():
        axis, offsets, idx = shift_line(result)
        inv = result.invariance
        line, = left.plot(offsets, np.asarray(inv.true_class_prob)[idx], "o-", ms=3.5, label=name)
        right.plot(offsets, np.asarray(inv.accuracy)[idx], "o-", ms=3.5, color=line.get_color(), label=name)
    for ax, label in ((left, "mean true-class probability"), (right, "accuracy")):
        ax.set_xlabel(f"{axis} (px)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
    left.set_title("stability: true-class probability vs shift")
    right.set_title("accuracy vs shift")
    left.legend(fontsize=8, loc="lower center")
    return save_figure(fig, out, stem, formats)


def plot_accuracy_heatmap(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """Accuracy at every shift of the 2-D grid, one panel per model, one colour scale."""
    named = _require(as_named(results), "accuracy", "per-shift accuracies")
    fig, axes = new_figure(len(named), 1, size=(3.4, 3.2), squeeze=False)
    image = None
    for ax, (name, result) in zip(axes[0], named.items()):
        grid, ys, xs = _grid(result, result.invariance.accuracy)
        image = _imshow_grid(ax, grid, ys, xs, cmap="magma", vmin=0.0, vmax=1.0)
        worst = result.invariance.worst_case_accuracy
        ax.set_title(f"{name}\nmean {grid.mean():.1%}, worst-case {worst:.1%}", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="accuracy", shrink=0.85)
    return save_figure(fig, out, stem, formats)


def plot_sensitivity(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """Translation-sensitivity maps (Kauderer-Abrams 2017), one per model, and their radial
    averages on one axis: mean ``‖r(T_δ x) − r(x)‖ / ‖r(x)‖`` against ``|δ|``."""
    named = _require(as_named(results), "sensitivity", "a sensitivity map")
    fig, axes = new_figure(len(named) + 1, 1, size=(3.4, 3.2), squeeze=False)
    top = max(max(r.invariance.sensitivity) for r in named.values()) or 1.0
    image = None
    for ax, (name, result) in zip(axes[0], named.items()):
        grid, ys, xs = _grid(result, result.invariance.sensitivity)
        image = _imshow_grid(ax, grid, ys, xs, cmap="viridis", vmin=0.0, vmax=top)
        ax.set_title(f"{name}\n(layer {result.invariance.sensitivity_layer})", fontsize=9)
    fig.colorbar(image, ax=list(axes[0][:-1]), label="normalised distance", shrink=0.85)
    radial = axes[0][-1]
    for name, result in named.items():
        radial.plot(result.invariance.sensitivity_radius, result.invariance.sensitivity_radial,
                    "o-", ms=3.5, label=name)
    radial.set_title("radial average", fontsize=9)
    radial.set_xlabel("|shift| (px)")
    radial.set_ylabel("normalised distance")
    radial.set_ylim(bottom=0)
    radial.legend(fontsize=7)
    return save_figure(fig, out, stem, formats)


def plot_model_bars(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """Consistency, flip rate and accuracy (clean, mean over shifts, worst-case) per model."""
    named = as_named(results)
    names = list(named)
    fig, (cons, flips, accs) = new_figure(3, 1, size=(max(3.2, 0.9 * len(names) + 1.4), 3.4))
    positions = np.arange(len(names))

    def bars(ax, values, title, colour):
        heights = [np.nan if v is None else v for v in values]
        drawn = ax.bar(positions, heights, color=colour, width=0.6)
        ax.bar_label(drawn, labels=["n/a" if v is None else f"{v:.1%}" for v in values], fontsize=7)
        ax.set_title(title)

    bars(cons, [r.invariance.consistency for r in named.values()], "consistency (higher is better)", "#4477aa")
    bars(flips, [r.invariance.flip_rate for r in named.values()], "flip rate (lower is better)", "#cc6677")
    width = 0.26
    kinds = (("clean", "#88ccee", lambda inv: inv.clean_accuracy),
             ("mean over shifts", "#44aa99", lambda inv: None if inv.accuracy is None
              else float(np.mean(inv.accuracy))),
             ("worst-case", "#117733", lambda inv: inv.worst_case_accuracy))
    for k, (label, colour, get) in enumerate(kinds):
        values = [get(r.invariance) for r in named.values()]
        accs.bar(positions + (k - 1) * width, [np.nan if v is None else v for v in values],
                 width=width, color=colour, label=label)
    accs.set_title("accuracy: clean, mean over shifts, worst-case")
    accs.legend(fontsize=7, loc="upper center", ncol=3)
    for ax in (cons, flips, accs):
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="x", visible=False)
        ax.set_ylim(0, {cons: 1.1, accs: 1.25}.get(ax))
    return save_figure(fig, out, stem, formats)
