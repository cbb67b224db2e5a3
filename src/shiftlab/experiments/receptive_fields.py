"""Receptive fields (Hubel & Wiesel for a CNN): bar sweeps and dot maps on a trained lenet-wolf.

A trained ``lenet-wolf`` (the demo's shipped weights ``lenet-wolf``; trained again with
``retrain=True``; trained briefly on 1,000 digits in ``quick``) is shown stimuli on a black 28×28 input and the centre
unit of conv 1 and conv 2 is recorded (its conv output minus its output for a blank input,
the *drive*):

* **dot maps**: one bright pixel at every position → the unit's receptive-field map. For the
  first conv (linear) the map *is* the kernel; for every unit it is exactly zero outside the
  receptive field computed from the layers' geometry (valid convs: ``1 + Σ (k − 1)`` pixels).
* **bar sweeps**: a bright bar (2 px wide, anti-aliased, crossing the image) at 12
  orientations, moved across the unit's field one pixel at a time, in both directions.
  Position tuning = drive against bar offset; orientation tuning ``R(θ)`` = the largest
  positive drive over offsets; orientation selectivity ``OSI = (R_pref − R_orth) /
  (R_pref + R_orth)``, counted as selective above 0.5 for channels whose peak drive is at
  least a tenth of the layer's largest. Direction index ``|R_fwd − R_bwd| / (R_fwd + R_bwd)``
  compares the sweep moving one way with the sweep moving back: a feed-forward net sees each
  frame alone, so it has no direction selectivity, unlike direction-selective cells in V1.
  Since the backward sweep is the forward sweep in reverse order, any deterministic
  feed-forward model gives exactly 0; that is a check of the stimulus (reported in
  ``numbers``), not a finding about the trained net.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..models import chain_geometry
from ..probe import Probe
from .base import ExperimentResult, save_data, work_folder

__all__ = ["LAYERS", "ORIENTATIONS", "bar", "unit_window", "drives", "compute", "draw", "claims",
           "summarise", "run"]

SIZE = 28
LAYERS = {"conv 1": "features.0", "conv 2": "features.2"}
ORIENTATIONS = [15 * i for i in range(12)]          # degrees, counter-clockwise from horizontal
BAR_WIDTH = 2.0
RESPONSIVE = 0.1                                    # counted if its peak drive >= 10 % of the layer's top
CHOSEN = 4                                          # channels per layer in the table and figure


def bar(theta_deg: float, offset: float, centre: tuple[float, float], sign: float = 1.0,
        size: int = SIZE, width: float = BAR_WIDTH) -> Tensor:
    """A bright bar of orientation ``theta_deg`` whose middle line passes ``offset`` pixels
    from ``centre`` (row, col) along the normal ``sign · n``; anti-aliased, values in [0, 1].

    ``sign = −1`` with offset ``t`` draws exactly the image of ``sign = +1`` with offset ``−t``
    (the signed distance only changes sign), so a sweep along ``−n`` is bit for bit the sweep
    along ``n`` in reverse order.
    """
    a = math.radians(theta_deg)
    ny, nx = sign * math.cos(a), sign * math.sin(a)   # normal; the line runs along (−sin, cos)
    rows = torch.arange(size, dtype=torch.float64)[:, None] - centre[0]
    cols = torch.arange(size, dtype=torch.float64)[None, :] - centre[1]
    distance = rows * ny + cols * nx - offset
    return (width / 2 + 0.5 - distance.abs()).clamp(0, 1)


def unit_window(model, layer: str, size: int = SIZE) -> tuple[int, int, int]:
    """The centre unit's position ``u`` in the map of ``layer``, and its receptive field in
    the input: rows/cols ``[start, start + field)``."""
    path = list(model.features)
    index = [n for n, _ in model.features.named_children()].index(layer.split(".")[-1])
    chain = path[:index + 1]
    field = chain_geometry(chain).receptive_field
    offset, jump, out = 0, 1, size
    for m in chain:
        if isinstance(m, torch.nn.Conv2d):
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            offset -= p * jump
            jump *= s
            out = (out + 2 * p - k) // s + 1
    u = (out - 1) // 2
    return u, offset + u * jump, field


@torch.no_grad()
def drives(model, images: Tensor, layer: str, u: int) -> Tensor:
    """``(N, C)``: the unit ``(u, u)`` of ``layer`` for each image, minus its blank response."""
    with Probe(model, [layer]) as probe:
        out = probe(images.float())[layer][:, :, u, u]
        blank = probe(torch.zeros_like(images[:1]).float())[layer][:, :, u, u]
    return (out - blank).double()


def _train_quick(out: Path, seed: int, images: int, log) -> tuple[torch.nn.Module, dict]:
    from ..data import load_data
    from ..loading import load_trained
    from ..train import TrainConfig, train
    x, y = load_data("mnist", split="train", seed=seed)
    xt, yt = load_data("mnist", split="test", seed=seed)
    folder = out / "receptive-fields-model"
    log(f"training lenet-wolf on {images} MNIST digits (1 epoch)")
    config = TrainConfig(model="lenet-wolf", data="mnist", epochs=1, batch_size=64, seed=seed)
    record = train(config, folder, data=((x[:images], y[:images]), (xt[:1000], yt[:1000])),
                   progress=False, log=log)
    info = {"source": "trained here (quick)", "config": record.config,
            "test_accuracy": record.test_accuracy, "test_images": record.test_images}
    return load_trained("lenet-wolf", folder, SIZE), info


def _measure(model, label: str, layer: str, log) -> dict:
    """Dot map and bar sweeps of the centre unit of ``layer``, as plain data."""
    u, start, field = unit_window(model, layer)
    log(f"{label}: unit ({u}, {u}), receptive field rows/cols {start}..{start + field - 1}")
    centre = (start + (field - 1) / 2, start + (field - 1) / 2)
    # dot maps: one bright pixel per position
    dots = torch.eye(SIZE * SIZE, dtype=torch.float64).reshape(-1, 1, SIZE, SIZE)
    dot_maps = drives(model, dots, layer, u).T.reshape(-1, SIZE, SIZE)     # (C, H, W)
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[start:start + field, start:start + field] = True
    # bar sweeps, both directions
    reach = field / 2 + BAR_WIDTH + 3
    offsets = torch.arange(-math.ceil(reach), math.ceil(reach) + 1, dtype=torch.float64)
    forward = torch.stack([torch.stack([bar(t, float(o), centre) for o in offsets]) for t in ORIENTATIONS])
    backward = torch.stack([torch.stack([bar(t, float(o), centre, sign=-1.0) for o in offsets])
                            for t in ORIENTATIONS])
    n_o, n_t = forward.shape[:2]
    fwd = drives(model, forward.reshape(-1, 1, SIZE, SIZE), layer, u).reshape(n_o, n_t, -1)
    bwd = drives(model, backward.reshape(-1, 1, SIZE, SIZE), layer, u).reshape(n_o, n_t, -1)
    misses = ~(forward[..., inside] > 0).any(-1)                           # bars that miss the field
    tuning = fwd.clamp(min=0).amax(1)                                      # (orientations, C)
    pref = tuning.argmax(0)
    orth = (pref + len(ORIENTATIONS) // 2) % len(ORIENTATIONS)
    r_pref, r_orth = tuning.gather(0, pref[None])[0], tuning.gather(0, orth[None])[0]
    osi = (r_pref - r_orth) / (r_pref + r_orth).clamp(min=1e-12)
    responsive = r_pref >= RESPONSIVE * r_pref.max()                       # ignore near-silent channels
    peak_f, peak_b = fwd.clamp(min=0).amax((0, 1)), bwd.clamp(min=0).amax((0, 1))
    direction = (peak_f - peak_b).abs() / (peak_f + peak_b).clamp(min=1e-12)
    kernel = None
    if layer == "features.0":
        w = model.features[0].weight.detach().double()[:, 0]              # (C, k, k)
        kernel = float((dot_maps[:, start:start + field, start:start + field] - w).abs().max())
    chosen = []
    for c in torch.where(responsive, osi, -1.0).argsort(descending=True)[:CHOSEN].tolist():
        p = int(pref[c])
        curve = fwd[p, :, c]
        chosen.append({"channel": c, "preferred": ORIENTATIONS[p], "osi": float(osi[c]),
                       "position_width": int((curve > curve.max() / 2).sum()) if curve.max() > 0 else 0,
                       "dot_pixels": int((dot_maps[c] != 0).sum()), "direction": float(direction[c]),
                       # for the figure
                       "dot_map": dot_maps[c].tolist(), "tuning": tuning[:, c].tolist(),
                       "forward": curve.tolist(), "backward_reversed": bwd[p, :, c].flip(0).tolist()})
    return {"layer": layer, "unit": u, "start": start, "field": field, "offsets": offsets.tolist(),
            "osi": osi.tolist(), "preferred": [ORIENTATIONS[int(p)] for p in pref],
            "selective": int((responsive & (osi > 0.5)).sum()), "max_direction": float(direction.max()),
            "kernel_error": kernel, "outside_max": float(dot_maps[:, ~inside].abs().max()),
            "fill": float((dot_maps[:, inside] != 0).double().mean()),
            "miss_max": float(fwd[misses].abs().max()) if misses.any() else 0.0,
            "reversed_equal": bool(torch.equal(fwd, bwd.flip(1))), "chosen": chosen}


def compute(*, seed: int = 0, quick: bool = False, retrain: bool = False, log=print,
            out: Path | None = None) -> dict:
    """Dot maps and bar sweeps of the centre units of conv 1 and conv 2 of a trained
    lenet-wolf. ``out``: where quick runs train and ``retrain`` trains again (a temporary
    folder when None)."""
    with work_folder(out) as folder:
        if quick:
            model, weights = _train_quick(folder, seed, 1000, log)
            trained = "trained briefly on 1,000 MNIST digits"
        else:
            from .trained import describe, experiment_model
            model, weights = experiment_model("lenet-wolf", folder, retrain=retrain, log=log)
            trained = describe(weights)
    layers = {label: _measure(model, label, layer, log) for label, layer in LAYERS.items()}
    return {"settings": {"seed": seed, "quick": quick, "weights": weights, "size": SIZE,
                         "orientations": ORIENTATIONS, "bar_width": BAR_WIDTH, "layers": LAYERS,
                         "response": "conv output minus blank-input output at the centre unit"},
            "trained": trained, "test_accuracy": weights["test_accuracy"], "layers": layers}


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    conv1, conv2 = data["layers"]["conv 1"], data["layers"]["conv 2"]
    return {
        "dot responses are exactly zero outside each unit's computed receptive field "
        f"({conv1['field']}x{conv1['field']} for conv 1, {conv2['field']}x{conv2['field']} for conv 2)":
            conv1["outside_max"] == 0.0 and conv2["outside_max"] == 0.0,
        "bars that miss the receptive field leave every unit's response exactly unchanged":
            conv1["miss_max"] == 0.0 and conv2["miss_max"] == 0.0,
        "conv 1's dot map equals its kernel (a linear unit's impulse response; error < 1e-6)":
            conv1["kernel_error"] < 1e-6,
        "conv 1 and conv 2 each have at least 4 orientation-selective channels (OSI > 0.5, i.e. "
        "R_pref > 3 R_orth, and a peak drive at least a tenth of the layer's largest)":
            all(r["selective"] >= 4 for r in data["layers"].values()),
    }


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    layers = data["layers"]
    conv1, conv2 = layers["conv 1"], layers["conv 2"]
    rows = [[label, c["channel"], c["preferred"], c["osi"], c["position_width"], f"{r['field']}x{r['field']}",
             c["dot_pixels"], c["direction"]] for label, r in layers.items() for c in r["chosen"]]
    selective = {k: r["selective"] for k, r in layers.items()}
    numbers = {
        "test_accuracy": data["test_accuracy"],
        "receptive_field": {k: r["field"] for k, r in layers.items()},
        "osi": {k: [round(v, 4) for v in r["osi"]] for k, r in layers.items()},
        "orientation_selective_channels": selective,
        "preferred_orientation": {k: r["preferred"] for k, r in layers.items()},
        "dot_map_fill": {k: r["fill"] for k, r in layers.items()},
        "conv1_kernel_error": conv1["kernel_error"],
        "max_direction_index": {k: r["max_direction"] for k, r in layers.items()},
        # a check of the stimulus, true for any deterministic feed-forward model, so not a claim
        "backward_sweep_is_forward_reversed": {k: r["reversed_equal"] for k, r in layers.items()},
    }
    summary = (f"Bars swept across a trained lenet-wolf ({data['trained']}) find oriented "
               f"detectors: {selective['conv 1']} of {len(conv1['osi'])} conv-1 channels and "
               f"{selective['conv 2']} of {len(conv2['osi'])} conv-2 channels have an orientation "
               "selectivity index above 0.5. Each unit responds only inside its receptive field "
               f"({conv1['field']}x{conv1['field']} and {conv2['field']}x{conv2['field']} pixels, exactly as "
               "the layer geometry says). Unlike cells in visual cortex, a feed-forward net has no "
               "direction selectivity; as a check of the stimulus, the sweep moving back gives the "
               "same responses in reverse (which holds for any deterministic feed-forward model).")
    return ExperimentResult(
        name="receptive-fields", title="Receptive fields: bar sweeps and dot maps of a trained lenet-wolf",
        summary=summary,
        columns=["layer", "channel", "preferred °", "OSI", "position width (px)", "computed field",
                 "dot-map pixels ≠ 0", "direction index"],
        rows=rows, claims=claims(data), figures=[p.name for p in figures], numbers=numbers,
        settings=data["settings"])


def run(out: Path, *, seed: int = 0, quick: bool = False, retrain: bool = False,
        log=print) -> ExperimentResult:
    """Compute (training in ``out`` when quick or ``retrain``), save the data, draw, and
    state the claims."""
    data = compute(seed=seed, quick=quick, retrain=retrain, log=log, out=Path(out))
    save_data(data, out, "receptive-fields")
    return summarise(data, draw(data, out))


def draw(data: dict, out: str | Path) -> list[Path]:
    """Dot map, orientation tuning and position tuning of conv 2's chosen channels."""
    from matplotlib.patches import Rectangle

    from ..viz import new_figure, save_figure
    r = data["layers"]["conv 2"]
    chosen = r["chosen"]
    fig, axes = new_figure(len(chosen), 3, size=(2.9, 2.5))
    for col, c in enumerate(chosen):
        ax = axes[0, col]
        m = np.array(c["dot_map"])
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.add_patch(Rectangle((r["start"] - 0.5, r["start"] - 0.5), r["field"], r["field"],
                               fill=False, ec="k", lw=0.8, ls="--"))
        ax.set(title=f"conv 2 ch {c['channel']}: dot map", xticks=[], yticks=[])
        ax.grid(False)
        ax = axes[1, col]
        ax.plot(data["settings"]["orientations"], c["tuning"], "o-", ms=3)
        ax.set(title=f"orientation tuning, OSI {c['osi']:.2f}", xlabel="bar orientation (°)",
               xticks=range(0, 180, 45))
        ax = axes[2, col]
        ax.plot(r["offsets"], c["forward"], "-", label="sweep →")
        ax.plot(r["offsets"], c["backward_reversed"], "--", label="sweep ← (reversed)")
        ax.set(title=f"position tuning at {c['preferred']}°", xlabel="bar offset (px)")
        if col == 0:
            axes[1, 0].set_ylabel("peak drive")
            ax.set_ylabel("drive")
            ax.legend(fontsize=7)
    return [p for p in save_figure(fig, Path(out), "receptive-fields") if p.suffix == ".png"]
