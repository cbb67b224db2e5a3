"""Experiment ``pooling``: max-pooling gives invariance only to small shifts.

Four classifiers share one bank of conv features (stride 1, circular padding, so the
features themselves are exactly shift-equivariant) and differ only in the pooling before
a linear head: none, 2x2 max-pool, 4x4 max-pool, global max-pool. ``shiftlab.audit``
measures, for MNIST digits moved along x by ``|δ|`` pixels, the normalised distance of the
pooled representation from the unshifted one (Kauderer-Abrams 2017), accuracy per shift
and consistency (Zhang 2019). A ``p×p`` max-pool absorbs shifts smaller than its window
only partly, and shifts of ``p`` or more move the pooled map by whole cells; only the
global pool is invariant at every shift.

The head is fitted in closed form (nearest class mean: logits ``μ_c·z − ‖μ_c‖²/2``), so no
training loop is involved and the pooling is the only difference between the models.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ShiftlabError
from .base import ExperimentResult, save_data

__all__ = ["POOLINGS", "pooling_layer", "PooledClassifier", "nearest_mean_head",
           "tolerated_shift", "compute", "draw", "claims", "summarise", "run"]

#: name -> pooling window (0 = global)
POOLINGS = {"no pooling": 1, "max-pool 2": 2, "max-pool 4": 4, "global max-pool": 0}


def pooling_layer(window: int) -> nn.Module:
    """``window`` 1 = no pooling (``nn.Identity``: what a 1x1 max-pool computes, without its
    cost), ``p`` = ``p×p`` max-pool of stride ``p``, 0 = global max."""
    if window < 0:
        raise ShiftlabError(f"pooling window must be 0 (global) or positive, got {window}")
    if window == 1:
        return nn.Identity()
    return nn.AdaptiveMaxPool2d(1) if window == 0 else nn.MaxPool2d(window)


class PooledClassifier(nn.Module):
    """``features → pool → flatten → head``; ``features`` and ``head`` are given modules."""

    def __init__(self, features: nn.Module, window: int, head: nn.Linear | None = None):
        super().__init__()
        self.features = features
        self.pool = pooling_layer(window)
        self.head = head if head is not None else nn.Identity()

    def embed(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def nearest_mean_head(z: Tensor, y: Tensor, classes: int) -> nn.Linear:
    """The linear layer of a nearest-class-mean classifier on embeddings ``z (N, D)``:
    ``argmax_c (μ_c·z − ‖μ_c‖²/2) = argmin_c ‖z − μ_c‖``."""
    if len(z) != len(y) or not bool(torch.isin(torch.arange(classes), y).all()):
        raise ShiftlabError(f"every one of the {classes} classes needs examples to fit the head")
    means = torch.stack([z[y == c].mean(0) for c in range(classes)])      # (classes, D)
    head = nn.Linear(z.shape[1], classes, dtype=z.dtype)
    with torch.no_grad():
        head.weight.copy_(means)
        head.bias.copy_(-0.5 * means.square().sum(1))
    return head


def tolerated_shift(radii: list[float], distance: list[float], threshold: float) -> float:
    """The shift at which the feature distance first reaches ``threshold`` (linear
    interpolation between measured radii; the largest radius if it never does)."""
    for k in range(1, len(radii)):
        if distance[k] >= threshold:
            d0, d1 = distance[k - 1], distance[k]
            return radii[k - 1] + (radii[k] - radii[k - 1]) * (threshold - d0) / max(d1 - d0, 1e-12)
    return float(radii[-1])


def _features(seed: int, channels: int = 32) -> nn.Module:
    """One seeded random bank of 5x5 filters (zero mean, circular padding) and a ReLU."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, channels, 5, padding=2, padding_mode="circular", bias=False)
    with torch.no_grad():
        conv.weight -= conv.weight.mean(dim=(2, 3), keepdim=True)
    return nn.Sequential(conv, nn.ReLU()).eval()


def compute(*, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Fit four pooled classifiers on MNIST and audit them under shifts along x."""
    from ..audit import audit
    from ..data import load_data, place_on_canvas

    n_fit, n_test, reach, canvas = (600, 100, 6, 36) if quick else (3000, 200, 8, 36)
    x_fit, y_fit = load_data("mnist", split="train", seed=seed)
    x_test, y_test = load_data("mnist", split="test", seed=seed)
    x_fit, y_fit = place_on_canvas(x_fit[:n_fit], (canvas, canvas)), y_fit[:n_fit]
    x_test, y_test = place_on_canvas(x_test[:n_test], (canvas, canvas)), y_test[:n_test]
    features = _features(seed)
    with torch.no_grad():
        fit_maps = features(x_fit)                   # shared by the four heads: computed once
    threshold = 0.3

    curves, invariance = {}, {}
    for name, window in POOLINGS.items():
        model = PooledClassifier(features, window).eval()
        with torch.no_grad():
            model.head = nearest_mean_head(model.pool(fit_maps).flatten(1), y_fit, 10)
        res = audit(model, (x_test, y_test), protocol="circular", shifts=f"x=-{reach}:{reach}",
                    layers=["pool"], sensitivity_layer="pool", pairs=5, pair_range=reach, seed=seed,
                    name=name)
        inv = res.invariance
        shifts = [abs(int(dx)) for _, dx in res.shifts]
        accuracy = [sum(a for s, a in zip(shifts, inv.accuracy) if s == r) / shifts.count(r)
                    for r in range(reach + 1)]
        curves[name] = {"radius": list(inv.sensitivity_radius), "distance": list(inv.sensitivity_radial),
                        "accuracy": accuracy}
        invariance[name] = {"clean_accuracy": inv.clean_accuracy, "consistency": inv.consistency,
                            "worst_case_accuracy": inv.worst_case_accuracy}
        log(f"{name}: clean accuracy {inv.clean_accuracy:.1%}, consistency {inv.consistency:.1%}, "
            f"feature distance at 1/2/4 px {', '.join(f'{inv.sensitivity_radial[r]:.3f}' for r in (1, 2, 4))}")

    tolerance = {name: tolerated_shift(c["radius"], c["distance"], threshold) for name, c in curves.items()}
    settings = {"seed": seed, "quick": quick, "fit_images": n_fit, "test_images": n_test,
                "canvas": canvas, "shifts": f"x=-{reach}:{reach}", "protocol": "circular",
                "features": "32 random zero-mean 5x5 filters, circular padding, ReLU",
                "head": "nearest class mean", "data": "mnist", "consistency_pairs": 5,
                "pair_range": reach}
    return {"settings": settings, "reach": reach, "threshold": threshold, "curves": curves,
            "tolerated_shift": tolerance, "invariance": invariance}


def draw(data: dict, out: str | Path) -> list[Path]:
    """Feature distance and accuracy against the shift, one curve per pooling."""
    from ..viz import new_figure, save_figure
    reach, threshold = data["reach"], data["threshold"]
    fig, axes = new_figure(2, 1, size=(4.6, 3.4))
    for name, c in data["curves"].items():
        axes[0].plot(c["radius"], c["distance"], "o-", ms=3, label=name)
        axes[1].plot(range(reach + 1), c["accuracy"], "o-", ms=3, label=name)
    axes[0].axhline(threshold, color="k", ls=":", lw=0.8)
    axes[0].set_xlabel("shift along x (px)")
    axes[0].set_ylabel("‖z(T x) − z(x)‖ / ‖z(x)‖, pooled features z")
    axes[0].set_title("feature distance", fontsize=10)
    axes[1].set_xlabel("shift along x (px)")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("accuracy (nearest-class-mean head)", fontsize=10)
    axes[0].legend(fontsize=8)
    return [p for p in save_figure(fig, Path(out), "pooling") if p.suffix == ".png"]


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    d = {name: c["distance"] for name, c in data["curves"].items()}
    tolerance = data["tolerated_shift"]
    local = ["no pooling", "max-pool 2", "max-pool 4"]
    return {
        "without global pooling the feature distance grows with the shift (from 1 to 4 px)":
            all(d[n][1] < d[n][2] < d[n][4] for n in local),
        "max-pool 4 tolerates larger shifts than max-pool 2, which tolerates larger ones than no pooling":
            tolerance["max-pool 4"] > tolerance["max-pool 2"] > tolerance["no pooling"],
        "at 1 and 2 px, max-pool 4 features change less than max-pool 2, and those less than unpooled":
            all(d["max-pool 4"][r] < d["max-pool 2"][r] < d["no pooling"][r] for r in (1, 2)),
        "global max-pooling is invariant at every shift (distance < 1e-5)": max(d["global max-pool"]) < 1e-5,
    }


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    reach, threshold, curves = data["reach"], data["threshold"], data["curves"]
    tolerance, invariance = data["tolerated_shift"], data["invariance"]
    columns = ["pooling", "clean acc", "consistency", "worst-case acc"] + \
        [f"dist {r}px" for r in (1, 2, 4, reach)] + [f"shift to dist {threshold}"]
    rows = [[name, inv["clean_accuracy"], inv["consistency"], inv["worst_case_accuracy"]]
            + [curves[name]["distance"][k] for k in (1, 2, 4, reach)] + [tolerance[name]]
            for name, inv in invariance.items()]
    return ExperimentResult(
        name="pooling",
        title="Max-pooling gives invariance only to small shifts",
        summary=("Four classifiers share the same shift-equivariant conv features and differ only in the "
                 "pooling before a linear head. A p x p max-pool absorbs part of a shift smaller than its "
                 "window, so the pooled features change less for small shifts the larger the window, but "
                 "their change still grows with the shift; only global pooling is invariant at every shift, and it "
                 "pays by discarding where the features are. Local pooling buys robustness to jitter, not "
                 "invariance to translation."),
        columns=columns, rows=rows, claims=claims(data),
        figures=[p.name for p in figures],
        numbers={"curves": curves, "tolerated_shift": tolerance, "threshold": threshold,
                 "consistency": {n: inv["consistency"] for n, inv in invariance.items()},
                 "clean_accuracy": {n: inv["clean_accuracy"] for n, inv in invariance.items()}},
        settings=data["settings"])


def run(out: Path, *, seed: int = 0, quick: bool = False, log=print) -> ExperimentResult:
    """Compute, save the data, draw, and state the claims."""
    data = compute(seed=seed, quick=quick, log=log)
    save_data(data, out, "pooling")
    return summarise(data, draw(data, out))
