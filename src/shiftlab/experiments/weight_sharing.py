"""Experiment ``weight-sharing``: a conv layer has far fewer parameters than a dense one, and is equivariant.

The classroom example: a ``400×400×3`` image into a fully connected layer of 500 units needs
``400·400·3·500 = 240,000,000`` weights plus 500 biases; a conv layer with one ``5×5×3``
kernel needs 75 weights plus one bias, at every image size, because the same kernel is
shared by every position. Sharing is also what makes the layer shift-equivariant: a dense
layer is equivariant only when its weight matrix has exactly the tied, circulant structure
of a convolution (:func:`conv_as_dense` builds that matrix).

>>> count_parameters(dense_layer((3, 400, 400), 500, device="meta"))
240000500
>>> count_parameters(torch.nn.Conv2d(3, 1, 5))
76
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..actions import CircularShift
from ..errors import ShiftlabError
from ..law import map_errors
from .base import ExperimentResult, save_data

__all__ = ["count_parameters", "dense_layer", "conv_as_dense", "compute", "draw", "claims", "summarise",
           "run"]


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (weights and biases) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def dense_layer(shape, out_features: int, *, unflatten=None, bias: bool = True, device=None,
                dtype=None) -> nn.Sequential:
    """A fully connected layer on ``C×H×W`` images: flatten, then ``nn.Linear`` (with ``bias``).

    ``unflatten=(C', H, W)`` reshapes the output into an image (``out_features`` must be
    ``C'·H·W``); ``device="meta"`` counts parameters without allocating them.
    """
    c, h, w = (int(s) for s in shape)
    if unflatten is not None and out_features != int(torch.tensor(unflatten).prod()):
        raise ShiftlabError(f"out_features {out_features} does not fill an image of shape {tuple(unflatten)}")
    layers = [nn.Flatten(), nn.Linear(c * h * w, out_features, bias=bias, device=device, dtype=dtype)]
    if unflatten is not None:
        layers.append(nn.Unflatten(1, tuple(unflatten)))
    return nn.Sequential(*layers)


def conv_as_dense(conv: nn.Conv2d, shape) -> nn.Sequential:
    """The dense layer that computes exactly what ``conv`` computes on ``C×H×W`` images.

    Column ``j`` of the weight matrix is the conv's response to the ``j``-th unit image, so
    the matrix is block-circulant (for circular padding): ``C'·H·W × C·H·W`` entries built
    from ``C'·C·k²`` distinct weights.
    """
    c, h, w = (int(s) for s in shape)
    dtype = conv.weight.dtype
    with torch.no_grad():
        basis = torch.eye(c * h * w, dtype=dtype).reshape(-1, c, h, w)
        no_bias = conv(basis) - (conv.bias.reshape(1, -1, 1, 1) if conv.bias is not None else 0)
        out_shape = tuple(no_bias.shape[1:])
        dense = dense_layer(shape, no_bias[0].numel(), unflatten=out_shape, dtype=dtype)
        dense[1].weight.copy_(no_bias.flatten(1).T)
        bias = conv.bias if conv.bias is not None else torch.zeros(out_shape[0], dtype=dtype)
        dense[1].bias.copy_(bias[:, None].expand(out_shape[0], out_shape[1] * out_shape[2]).flatten())
    return dense.eval()


def compute(*, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Count parameters for the 400x400x3 example; measure equivariance on a smaller image."""
    from ..data import synthetic_images

    big = (3, 400, 400)
    counts = {"dense 400x400x3 -> 500": count_parameters(dense_layer(big, 500, device="meta")),   # never allocated
              "conv, one 5x5x3 filter": count_parameters(nn.Conv2d(3, 1, 5, device="meta")),
              "conv, 500 filters 5x5x3": count_parameters(nn.Conv2d(3, 500, 5, device="meta"))}
    for name, n in counts.items():
        log(f"{name}: {n:,} parameters ({4 * n / 1e6:,.3f} MB in float32)")

    # equivariance, measured where the dense layer fits in memory
    side = 16 if quick else 32
    small, dtype = (3, side, side), torch.float64
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 1, 5, padding=2, padding_mode="circular", dtype=dtype).eval()
    dense = dense_layer(small, side * side, unflatten=(1, side, side), dtype=dtype).eval()
    tied = conv_as_dense(conv, small)
    layers = {"dense layer (random weights)": dense, "dense layer holding the conv's weights": tied,
              "conv 5x5x3, circular padding": conv}
    x = synthetic_images(4, small, seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed)
    shifts = [tuple(int(v) for v in torch.randint(-side // 2, side // 2, (2,), generator=g)) for _ in range(6)]
    shifts += [(1, 0), (0, 1)]
    errors = {name: max(map_errors(layer, x, shifts, CircularShift())) for name, layer in layers.items()}
    matrix = tied[1].weight.detach()
    distinct = int(torch.unique(matrix[matrix != 0]).numel())     # the shared kernel's 75 weights
    for name, err in errors.items():
        log(f"{name} on {side}x{side}x3: {count_parameters(layers[name]):,} parameters, "
            f"equivariance error {err:.1e}")
    block = min(side * side, 256)
    return {"settings": {"seed": seed, "quick": quick, "count_shape": list(big), "dense_units": 500,
                         "measure_shape": list(small), "dtype": "float64",
                         "shifts": [list(s) for s in shifts]},
            "parameters": counts, "equivariance_error": errors,
            "measured_parameters": {name: count_parameters(layer) for name, layer in layers.items()},
            "tied_distinct_values": distinct, "tied_entries": matrix.numel(),
            "tied_nonzero": (matrix[:block, :block] != 0).int().tolist()}   # the corner the figure shows


def draw(data: dict, out: str | Path) -> list[Path]:
    """Parameter counts, equivariance errors, and the tied weight matrix."""
    from ..viz import new_figure, save_figure
    counts, errors = data["parameters"], data["equivariance_error"]
    side = data["settings"]["measure_shape"][-1]
    fig, axes = new_figure(3, 1, size=(3.8, 3.4))
    axes[0].bar(range(3), list(counts.values()), color=["tab:red", "tab:blue", "tab:cyan"])
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(3), ["dense\n400x400x3→500", "conv\n1 filter", "conv\n500 filters"], fontsize=7)
    axes[0].set_title("parameters (weights + biases)", fontsize=9)
    for i, n in enumerate(counts.values()):
        axes[0].text(i, n, f"{n:,}", ha="center", va="bottom", fontsize=7)
    floor = 1e-17
    axes[1].bar(range(3), [max(e, floor) for e in errors.values()], color=["tab:red", "tab:purple", "tab:blue"])
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(3), ["dense\nrandom", "dense\nconv weights", "conv"], fontsize=7)
    axes[1].set_title(f"shift-equivariance error ({side}x{side}x3, float64)", fontsize=9)
    nonzero = np.array(data["tied_nonzero"], dtype=bool)
    block = len(nonzero)
    axes[2].imshow(nonzero, cmap="gray_r", interpolation="nearest")
    axes[2].set_title(f"dense matrix of the conv (first {block}x{block}):\n"
                      f"{data['tied_entries']:,} entries, {data['tied_distinct_values']} distinct non-zero",
                      fontsize=8)
    axes[2].set_xticks([]), axes[2].set_yticks([]), axes[2].grid(False)
    return [p for p in save_figure(fig, Path(out), "weight-sharing") if p.suffix == ".png"]


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    counts, errors = data["parameters"], data["equivariance_error"]
    return {
        "a dense layer from 400x400x3 to 500 units has 240,000,500 parameters":
            counts["dense 400x400x3 -> 500"] == 240_000_500,
        "a conv layer with one 5x5x3 kernel has 76 (75 weights + 1 bias), at any image size":
            counts["conv, one 5x5x3 filter"] == 76,
        "the conv layer is shift-equivariant (error < 1e-10 in float64)":
            errors["conv 5x5x3, circular padding"] < 1e-10,
        "the dense layer is not (error > 0.1)": errors["dense layer (random weights)"] > 0.1,
        "a dense layer becomes equivariant when its weights are tied like the conv's":
            errors["dense layer holding the conv's weights"] < 1e-10,
    }


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    counts, errors, measured = data["parameters"], data["equivariance_error"], data["measured_parameters"]
    side = data["settings"]["measure_shape"][-1]
    rows = [[name, n, f"{4 * n / 1e6:,.3f}", "-"] for name, n in counts.items()]
    rows += [[f"{name} ({side}x{side}x3 -> {side}x{side})", measured[name], f"{4 * measured[name] / 1e6:,.3f}", err]
             for name, err in errors.items()]
    return ExperimentResult(
        name="weight-sharing",
        title="Weight sharing: fewer parameters, and equivariance",
        summary=("A fully connected layer from a 400x400 colour image to 500 units needs 240 million "
                 "weights (about 1 GB in float32); a conv layer reuses one 5x5x3 kernel at every position, "
                 f"so it needs 76 numbers at any image size. On {side}x{side} images (where a dense layer "
                 "fits in memory) the conv output moves exactly with the input while the dense one does "
                 "not, unless its weights are tied exactly as the conv ties them."),
        columns=["layer", "parameters", "MB (float32)", "equivariance error"], rows=rows, claims=claims(data),
        figures=[p.name for p in figures],
        numbers={"parameters": counts, "equivariance_error": errors,
                 "tied_distinct_values": data["tied_distinct_values"],
                 "measured_on": data["settings"]["measure_shape"]},
        settings=data["settings"])


def run(out: Path, *, seed: int = 0, quick: bool = False, log=print) -> ExperimentResult:
    """Compute, save the data, draw, and state the claims."""
    data = compute(seed=seed, quick=quick, log=log)
    save_data(data, out, "weight-sharing")
    return summarise(data, draw(data, out))
