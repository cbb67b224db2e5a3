"""Figures from saved audit results (:class:`~shiftlab.result.AuditResult`).

Each figure has a ``draw_*`` function that returns the matplotlib figure (the report
embeds it as PNG bytes with :func:`~shiftlab.viz.figure.figure_png`, writing no file) and a
``plot_*`` twin that saves it with :func:`~shiftlab.viz.figure.save_figure` (PNG + SVG by
default; the PNG first) and returns the paths. They only read results; they never run a
model. Results are one :class:`AuditResult` or a ``{name: result}`` mapping; audits are
drawn on one axis only when they used the same shift protocol (one row per protocol).

=========================  ==============================================================
``plot_layer_errors``      layer × shift heatmap of log10 relative error, one panel per
                           audit of one model: exact comparisons dotted, nothing to
                           compare hatched grey, each layer's verdict on the right
``plot_stability``         true-class probability and accuracy against the shift, a row
                           per protocol, a line per model
``plot_accuracy_heatmap``  accuracy over the 2-D shift grid, a row per protocol, a panel
                           per model
``plot_sensitivity``       translation-sensitivity maps and their radial averages
``plot_model_bars``        clean and worst-case accuracy, consistency and flip rate: a
                           bar per model and protocol
=========================  ==============================================================
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from ..errors import ShiftlabError
from ..result import AuditResult
from .figure import new_figure, save_figure

Results = Union[AuditResult, Mapping[str, AuditResult]]
FORMATS = ("png", "svg")
PROTOCOL_COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377")
ERROR_RANGE = (-7.0, 0.0)            # log10 relative error: float32 round-off .. 100 %
NOT_COMPARED = "#d9d9d9"

__all__ = ["draw_layer_errors", "draw_stability", "draw_accuracy_heatmap", "draw_sensitivity",
           "draw_model_bars", "plot_layer_errors", "plot_stability", "plot_accuracy_heatmap",
           "plot_sensitivity", "plot_model_bars", "shift_line", "heatmap_columns", "layer_error_grid", "as_named",
           "by_model", "by_protocol"]


# ----------------------------------------------------------------------------- helpers
def as_named(results: Results) -> dict[str, AuditResult]:
    """``{name: result}`` from one result (named by its provenance) or a mapping."""
    if isinstance(results, AuditResult):
        return {results.provenance.model: results}
    named = dict(results)
    if not named or not all(isinstance(r, AuditResult) for r in named.values()):
        raise ShiftlabError("expected an AuditResult or a non-empty {name: AuditResult} mapping")
    return named


def by_model(results: Results) -> dict[str, dict[str, AuditResult]]:
    """``{model: {protocol: result}}``, models and protocols sorted by name.

    A model is its ``provenance.model``; a second audit of the same model under the same
    protocol gets a row of its own, under its own name (the mapping's key).
    """
    table: dict[str, dict[str, AuditResult]] = {}
    for name, result in as_named(results).items():
        model, protocol = result.provenance.model, result.provenance.protocol
        if protocol in table.get(model, {}):
            model = name
        while protocol in table.get(model, {}):
            model += "*"
        table.setdefault(model, {})[protocol] = result
    return {m: dict(sorted(table[m].items())) for m in sorted(table)}


def by_protocol(results: Results) -> dict[str, dict[str, AuditResult]]:
    """``{protocol: {model: result}}``: the audits that may share an axis, protocols sorted."""
    groups: dict[str, dict[str, AuditResult]] = {}
    for model, protocols in by_model(results).items():
        for protocol, result in protocols.items():
            groups.setdefault(protocol, {})[model] = result
    return dict(sorted(groups.items()))


def shift_line(result: AuditResult) -> tuple[str, np.ndarray, np.ndarray]:
    """The 1-D slice of the shift set that the line plots walk along.

    Returns ``(axis, offsets, indices)``: the horizontal line ``dy = 0`` if the set has
    one (``axis="dx"``), else the vertical line ``dx = 0`` (``"dy"``); ``offsets`` are
    sorted and ``indices`` point into ``result.shifts``. One-axis shifts are the line.
    """
    lines = _lines(result)
    if not lines:
        raise ShiftlabError("the shift set has no line through dy = 0 or dx = 0 to plot along; "
                            "audit with a grid such as --shifts=-4:4 or x=-8:8")
    return lines[0]


def _lines(result: AuditResult) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The shift set's lines through zero with at least two shifts: dx (dy = 0), then dy."""
    shifts = np.asarray(result.shifts, dtype=float)
    if shifts.shape[1] == 1:
        idx = np.argsort(shifts[:, 0], kind="stable")
        return [("shift", shifts[idx, 0], idx)] if len(idx) >= 2 else []
    if shifts.shape[1] != 2:
        return []
    found = []
    for axis, fixed, moving in (("dx", 0, 1), ("dy", 1, 0)):
        idx = np.flatnonzero(shifts[:, fixed] == 0)
        if len(idx) >= 2:
            idx = idx[np.argsort(shifts[idx, moving], kind="stable")]
            found.append((axis, shifts[idx, moving], idx))
    return found


def heatmap_columns(result: AuditResult) -> tuple[list[int], list[str], list[tuple[str, int, int]]]:
    """Which shifts the layer heatmap shows, in order: the dx line (dy = 0), then the dy line
    (dx = 0); without such lines, every shift in its order.

    Returns ``(indices into result.shifts, tick labels, groups)``; a group is
    ``(title, first column, last column)``.
    """
    indices, labels, groups = [], [], []
    for axis, offsets, idx in _lines(result):
        other = {"dx": " (dy = 0)", "dy": " (dx = 0)"}.get(axis, "")
        groups.append((f"{axis}{other}", len(indices), len(indices) + len(idx) - 1))
        indices += idx.tolist()
        labels += [f"{v:g}" for v in offsets]
    if not indices:
        indices = list(range(len(result.shifts)))
        labels = [",".join(f"{v:g}" for v in s) for s in result.shifts]
        groups = [("shift (" + ", ".join(("dy", "dx", "dz")[:len(result.shifts[0])]) + ")", 0, len(indices) - 1)]
    return indices, labels, groups


def _grid(result: AuditResult, values: list[float]) -> tuple[np.ndarray, list[float], list[float]]:
    """Per-shift ``values`` as a ``(ny, nx)`` array with the dy and dx axis values."""
    if result.grid_shape is None or len(result.grid_shape) != 2 or len(result.shifts[0]) != 2:
        raise ShiftlabError(f"{result.provenance.model}: the shifts are not a 2-D grid; "
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
    ax.grid(False)
    return image


def _closes_on_error(draw):
    """``draw``, closing the figure it started if it raises (data a figure cannot show)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib.pyplot as plt
        before = set(plt.get_fignums())
        try:
            return draw(*args, **kwargs)
        except BaseException:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise
    return wrapper


def _colours(names) -> dict[str, str]:
    """One colour per model, the same in every panel."""
    import matplotlib.pyplot as plt
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[k % len(cycle)] for k, name in enumerate(names)}


# ----------------------------------------------------------------------------- per layer
def layer_error_grid(result: AuditResult, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(log10 error, exact)`` as ``(layers, len(indices))`` arrays over the shifts
    ``indices``: NaN where the layer had nothing to compare (error None, or a skipped
    layer), errors below ``10**(ERROR_RANGE[0] - 1)`` (zero too) clipped to it; ``exact``
    where the comparison was exact (the layer's stride divides the shift)."""
    grid = np.full((len(result.layers), len(indices)), np.nan)
    exact = np.zeros(grid.shape, dtype=bool)
    floor = 10.0 ** (ERROR_RANGE[0] - 1)
    for i, layer in enumerate(result.layers):
        for j, s in enumerate(indices):
            if s < len(layer.error) and layer.error[s] is not None:
                grid[i, j] = math.log10(max(layer.error[s], floor))
                exact[i, j] = layer.alignment[s] == "exact"
    return grid, exact


def _short_verdict(verdict: str) -> str:
    """A layer's verdict, short enough for the heatmap's right edge."""
    if "at multiples of" in verdict:
        return "only " + verdict[verdict.index("at multiples of"):]
    return "skipped" if verdict.startswith("skipped") else verdict


def _verdict_colour(verdict: str) -> str:
    if verdict.startswith(("not comparable", "skipped")):
        return "#666666"
    if verdict.startswith("not "):
        return "#bb2233"
    return "#a05a00" if "multiples" in verdict else "#1e7a2e"


@_closes_on_error
def draw_layer_errors(results: Results):
    """Layer × shift heatmap of the relative equivariance (or invariance) error, log10.

    One panel per audit (in the report: one model under each protocol). Rows are the
    probed layers; columns the shifts along dx (dy = 0), then dy (dx = 0). A dot marks an
    exact comparison (the layer's stride divides the shift); hatched grey cells had nothing
    to compare (``error`` is None: e.g. every position's receptive field wrapped). The
    right edge gives each layer's verdict at the audit's tolerance.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    named = as_named(results)
    for name, result in named.items():
        if not result.layers:
            raise ShiftlabError(f"{name}: no layer was compared; nothing to plot")
    columns = {name: heatmap_columns(r) for name, r in named.items()}
    rows = max(len(r.layers) for r in named.values())
    label_names = [[f"{l.name}  {l.kind}" for l in r.layers] for r in named.values()]
    shared = all(names == label_names[0] for names in label_names)
    widths = [0.16 * len(columns[n][0]) + 0.1 for n in named]
    fig, axes = new_figure(len(named), 1, size=(1.0, 0.19 * rows + 1.25), squeeze=False,
                           width_ratios=widths)
    fig.set_figwidth(sum(widths) + 1.1 * len(named) + (1.45 if shared else 1.45 * len(named)) + 0.65)
    cmap = plt.get_cmap("viridis").with_extremes(bad=NOT_COMPARED)
    image, twins = None, []
    for k, (ax, (name, result)) in enumerate(zip(axes[0], named.items())):
        indices, ticks, groups = columns[name]
        layers = result.layers
        grid, exact = layer_error_grid(result, indices)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=ERROR_RANGE[0],
                          vmax=ERROR_RANGE[1], aspect="auto", interpolation="nearest")
        for i, j in zip(*np.nonzero(np.isnan(grid))):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=NOT_COMPARED, edgecolor="#8c8c8c",
                                   hatch="////", lw=0))
        ys, xs = np.nonzero(exact)
        ax.scatter(xs, ys, s=8, c="white", edgecolors="black", linewidths=0.5, zorder=3)
        for _, first, _ in groups[1:]:
            ax.axvline(first - 0.5, color="white", lw=3)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(layers)), [f"{l.name}  {l.kind}" for l in layers], fontsize=7.5)
        if shared and k > 0:
            ax.tick_params(axis="y", labelleft=False)
        ax.grid(False)
        ax.tick_params(length=0, pad=2)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_xlim(-0.5, len(indices) - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        for title, first, last in groups:
            ax.annotate(title, ((first + last) / 2, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, -13), textcoords="offset points", ha="center", va="top", fontsize=7.5)
        p = result.provenance
        ax.set_title(f"{p.model} · {p.protocol} shifts {p.shifts}", fontsize=8.5)
        verdicts = ax.twinx()
        twins.append(verdicts)
        verdicts.set_ylim(ax.get_ylim())
        verdicts.grid(False)
        verdicts.tick_params(length=0, pad=3)
        for side in ("right", "left", "bottom"):
            verdicts.spines[side].set_visible(False)
        words = [_short_verdict(l.verdict(p.tolerance)) for l in layers]
        verdicts.set_yticks(range(len(layers)), words, fontsize=7)
        for label, word in zip(verdicts.get_yticklabels(), words):
            label.set_color(_verdict_colour(word))
    bar = fig.colorbar(image, ax=list(axes[0]), extend="both", shrink=0.9, aspect=22, pad=0.01)
    bar.set_label("relative error", fontsize=7.5, labelpad=2)
    ticks = range(int(ERROR_RANGE[0]), int(ERROR_RANGE[1]) + 1)
    bar.set_ticks(list(ticks), labels=[f"1e{t}" if t else "1" for t in ticks], fontsize=6.5)
    handles = [Line2D([], [], marker="o", ls="", mfc="white", mec="black", ms=4,
                      label="exact comparison (the stride divides the shift); others: best alignment"),
               Patch(facecolor=NOT_COMPARED, edgecolor="#8c8c8c", hatch="////",
                     label="not comparable (nothing left to compare)")]
    legend = fig.legend(handles=handles, loc="outside lower center", ncol=2 if len(named) > 1 else 1,
                        fontsize=7)
    _fit_width(fig, list(axes[0]), twins, widths, legend)
    return fig


def _fit_width(fig, axes, twins, widths: list[float], legend) -> None:
    """Widen ``fig`` so that each panel holds its title, its labels either side and its
    cells (``widths``, inches), and the figure its ``legend``: with few shift columns (a
    1-D audit, a short range) they did not fit, and the constrained layout gave up and
    warned. The panels' width ratios become what each needs."""
    renderer = fig.canvas.get_renderer()

    def inches(artists) -> float:
        extents = [a.get_window_extent(renderer).width for a in artists
                   if a.get_visible() and a.get_text()]
        return max(extents, default=0.0) / fig.dpi

    bodies = [max(w, inches([ax.title])) for ax, w in zip(axes, widths)]
    sides = [inches(ax.get_yticklabels()) + inches(twin.get_yticklabels()) + 0.35
             for ax, twin in zip(axes, twins)]
    need = max(sum(bodies) + sum(sides) + 0.9,                       # + the colour bar
               legend.get_window_extent(renderer).width / fig.dpi + 0.4)
    axes[0].get_gridspec().set_width_ratios(bodies)
    fig.set_figwidth(max(fig.get_figwidth(), need))


# ----------------------------------------------------------------------------- output stability
@_closes_on_error
def draw_stability(results: Results):
    """True-class probability and accuracy against the shift along dx (dy = 0), a pair of
    panels per protocol (two protocols to a row), a line per model."""
    groups = by_protocol(_require(as_named(results), "true_class_prob", "per-shift true-class probabilities"))
    colours = _colours(sorted({m for g in groups.values() for m in g}))
    per_row = min(2, len(groups))
    nrows = -(-len(groups) // per_row)
    fig, axes = new_figure(2 * per_row, nrows, size=(2.5, 2.0), squeeze=False)
    panels = axes.reshape(-1, 2)
    for ax in axes.flat[2 * len(groups):]:
        ax.set_axis_off()
    for pair, (protocol, named) in zip(panels, groups.items()):
        for name, result in named.items():
            axis, offsets, idx = shift_line(result)
            inv = result.invariance
            for ax, values in zip(pair, (inv.true_class_prob, inv.accuracy)):
                ax.plot(offsets, np.asarray(values)[idx], "o-", ms=2.5, lw=1.2, color=colours[name], label=name)
        for ax, what in zip(pair, ("true-class probability", "accuracy")):
            ax.set_title(f"{what} · {protocol}", fontsize=8.5)
            ax.set_xlabel(f"{axis} (px)", fontsize=7.5, labelpad=1)
            ax.set_ylim(-0.03, 1.03)
            ax.tick_params(labelsize=7)
    handles = {}
    for pair in panels[:len(groups)]:
        for handle, label in zip(*pair[0].get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside upper center",
               ncol=min(len(handles), 5), fontsize=7.5)
    return fig


@_closes_on_error
def draw_accuracy_heatmap(results: Results):
    """Accuracy at every shift of the 2-D grid: a row per protocol, a panel per model, one
    colour scale (0 to 100 %)."""
    groups = by_protocol(_require(as_named(results), "accuracy", "per-shift accuracies"))
    return _grid_panels(groups, "accuracy", cmap="magma", top=1.0, label="accuracy",
                        caption=lambda r, grid: f"mean {grid.mean():.0%}, worst {r.invariance.worst_case_accuracy:.0%}")


@_closes_on_error
def draw_sensitivity(results: Results):
    """Translation-sensitivity maps (Kauderer-Abrams 2017): mean ``‖r(T_δ x) − r(x)‖ / ‖r(x)‖``
    at every shift δ of the grid, a row per protocol, a panel per model; the last panel of
    each row is the radial average against ``|δ|``."""
    groups = by_protocol(_require(as_named(results), "sensitivity", "a sensitivity map"))
    top = max(max(r.invariance.sensitivity) for g in groups.values() for r in g.values()) or 1.0
    return _grid_panels(groups, "sensitivity", cmap="viridis", top=top, label="normalised distance",
                        caption=lambda r, grid: f"layer {r.invariance.sensitivity_layer}", radial=True)


def _grid_panels(groups: dict[str, dict[str, AuditResult]], field: str, *, cmap: str, top: float,
                 label: str, caption, radial: bool = False):
    from matplotlib.ticker import MaxNLocator
    models = sorted({m for g in groups.values() for m in g})
    colours = _colours(models)
    ncols = len(models) + radial
    fig, axes = new_figure(ncols, len(groups), size=(1.75, 1.95), squeeze=False)
    image = None
    for row, (protocol, named) in zip(axes, groups.items()):
        for ax, model in zip(row, models):
            ax.grid(False)
            if model not in named:
                ax.set_axis_off()
                continue
            result = named[model]
            grid, ys, xs = _grid(result, getattr(result.invariance, field))
            image = _imshow_grid(ax, grid, ys, xs, cmap=cmap, vmin=0.0, vmax=top)
            ax.set_title(f"{model}\n{caption(result, grid)}", fontsize=7.5)
            ax.tick_params(labelsize=6.5)
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.set_xlabel("dx", fontsize=7, labelpad=1)
        row[0].set_ylabel(f"{protocol} shifts\ndy", fontsize=8)
        if radial:
            ax = row[-1]
            for model, result in named.items():
                ax.plot(result.invariance.sensitivity_radius, result.invariance.sensitivity_radial,
                        "o-", ms=2.5, lw=1.2, color=colours[model], label=model)
            ax.set_title(f"radial average · {protocol}", fontsize=7.5)
            ax.set_xlabel("|shift| (px)", fontsize=7)
            ax.set_ylim(bottom=0)
            ax.tick_params(labelsize=6.5)
    fig.colorbar(image, ax=[a for row in axes for a in row[:len(models)]], label=label, shrink=0.8, aspect=30)
    return fig


# ----------------------------------------------------------------------------- overview
HEADLINE = (("clean accuracy", "clean_accuracy", "↑"), ("worst-case accuracy", "worst_case_accuracy", "↑"),
            ("consistency", "consistency", "↑"), ("flip rate", "flip_rate", "↓"))


@_closes_on_error
def draw_model_bars(results: Results):
    """The headline numbers as horizontal bars: clean and worst-case accuracy, consistency
    and flip rate, a group of bars per model (one bar per protocol), value at each bar."""
    table = by_model(results)
    protocols = sorted({p for row in table.values() for p in row})
    colours = dict(zip(protocols, PROTOCOL_COLOURS * (len(protocols) // len(PROTOCOL_COLOURS) + 1)))
    models = list(table)
    height = 0.8 / len(protocols)
    bars = len(models) * len(protocols)
    fig, axes = new_figure(len(HEADLINE), 1, size=(2.45, 0.13 * bars + 0.12 * len(models) + 0.75), sharey=True)
    for ax, (title, field, better) in zip(axes, HEADLINE):
        for k, protocol in enumerate(protocols):
            ys = np.arange(len(models)) + (k - (len(protocols) - 1) / 2) * height
            values = [getattr(table[m][protocol].invariance, field) if protocol in table[m] else None
                      for m in models]
            ax.barh(ys, [np.nan if v is None else v for v in values], height=height * 0.9,
                    color=colours[protocol], label=f"{protocol} shifts")
            for y, v, m in zip(ys, values, models):
                text = ("n/a" if protocol in table[m] else "") if v is None else f"{v:.1%}"
                ax.text((v or 0) + 0.02, y, text, va="center", fontsize=6.5)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{title} ({better} better)", fontsize=9)
        ax.set_xlim(0, 1.3)
        ax.set_xticks([0, 0.5, 1], ["0", "50%", "100%"], fontsize=7)
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
    axes[0].set_yticks(range(len(models)), models, fontsize=8)
    axes[0].set_ylim(len(models) - 0.5, -0.5)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=len(protocols), fontsize=8)
    return fig


# ----------------------------------------------------------------------------- saving twins
def plot_layer_errors(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """:func:`draw_layer_errors`, saved as ``out/stem.png`` (+ ``.svg``)."""
    return save_figure(draw_layer_errors(results), out, stem, formats)


def plot_stability(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """:func:`draw_stability`, saved as ``out/stem.png`` (+ ``.svg``)."""
    return save_figure(draw_stability(results), out, stem, formats)


def plot_accuracy_heatmap(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """:func:`draw_accuracy_heatmap`, saved as ``out/stem.png`` (+ ``.svg``)."""
    return save_figure(draw_accuracy_heatmap(results), out, stem, formats)


def plot_sensitivity(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """:func:`draw_sensitivity`, saved as ``out/stem.png`` (+ ``.svg``)."""
    return save_figure(draw_sensitivity(results), out, stem, formats)


def plot_model_bars(results: Results, out: str | Path, stem: str, formats=FORMATS) -> list[Path]:
    """:func:`draw_model_bars`, saved as ``out/stem.png`` (+ ``.svg``)."""
    return save_figure(draw_model_bars(results), out, stem, formats)
