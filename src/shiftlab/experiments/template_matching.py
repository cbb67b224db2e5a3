"""Experiment ``template-matching``: correlation maps move with the object; their max does not.

Cross-correlating an image with a template is a convolution, so the response map is
shift-equivariant: move the scene by ``δ`` and the map moves by ``δ``. Its global maximum
is therefore shift-invariant ("the object is there", wherever it is), and its argmax
recovers where the object is. This module gives the functional and module form of a
full, optionally normalised cross-correlation and checks all three statements on MNIST
digits placed on a canvas.

Convention: the response has size ``(H + h − 1) × (W + w − 1)`` ("full" correlation, zero
padding): entry ``(i, j)`` compares the template with the window whose top-left corner is
``(i − h + 1, j − w + 1)``. With a zero background nothing is cut off, so equivariance is
exact as long as the scene stays inside its frame.

>>> import torch
>>> scene = torch.zeros(1, 1, 6, 6); scene[0, 0, 2:4, 3:5] = torch.tensor([[1., 2.], [3., 4.]])
>>> template = scene[0, :, 2:4, 3:5]
>>> locate(cross_correlate(scene, template), template.shape[-2:]).tolist()
[[2, 3]]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..actions import CanvasShift, canvas_shift
from ..errors import ShiftlabError
from ..law import LayerGeometry, compare, map_errors, relative_error
from .base import ExperimentResult, save_data

__all__ = ["cross_correlate", "locate", "TemplateMatcher", "invariance_errors", "compute", "draw",
           "claims", "summarise", "run"]


def _check(images: Tensor, template: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ShiftlabError("images must be an N x C x H x W tensor; add axes with x[None, None]")
    if not isinstance(template, Tensor) or template.ndim != 3 or template.shape[0] != images.shape[1]:
        raise ShiftlabError(f"the template must be C x h x w with the images' {images.shape[1]} channel(s), "
                            f"got {tuple(template.shape) if isinstance(template, Tensor) else template!r}")
    if template.shape[-2] > images.shape[-2] or template.shape[-1] > images.shape[-1]:
        raise ShiftlabError(f"the {template.shape[-2]}x{template.shape[-1]} template is larger than the "
                            f"{images.shape[-2]}x{images.shape[-1]} images; crop it")
    if not bool(template.abs().sum() > 0):
        raise ShiftlabError("the template is all zeros; nothing can match it")


def cross_correlate(images: Tensor, template: Tensor, normalized: bool = True) -> Tensor:
    """Full cross-correlation of ``images`` with ``template``.

    .. math::  r[i, j] = \\sum_{c,a,b} x[c,\\, i - h + 1 + a,\\, j - w + 1 + b] \\; t[c, a, b]

    (``x`` is zero outside the image). ``normalized=True`` divides by the norms of the
    window and the template (cosine similarity, in [−1, 1]; 1 exactly where the window is a
    positive multiple of the template; 0 for an empty window).

    Shape: ``images (N, C, H, W)``, ``template (C, h, w)`` → ``(N, 1, H + h − 1, W + w − 1)``.
    """
    _check(images, template)
    h, w = template.shape[-2:]
    template = template.to(images.dtype)
    response = _full_correlation(images, template)
    if not normalized:
        return response
    window_sq = _full_correlation(images.square(), torch.ones_like(template)).clamp_min(0.0)
    # FFT rounding leaves ~eps·energy in empty windows: treat those as empty
    energy = images.square().sum(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
    empty = window_sq <= 1e3 * torch.finfo(images.dtype).eps * energy
    denominator = window_sq.sqrt() * torch.linalg.vector_norm(template)
    return torch.where(empty, torch.zeros_like(response), response / torch.where(empty, 1.0, denominator))


def _full_correlation(images: Tensor, template: Tensor) -> Tensor:
    """Summed over channels, by FFT on a frame large enough that nothing wraps around."""
    (height, width), (h, w) = images.shape[-2:], template.shape[-2:]
    size = (height + h - 1, width + w - 1)
    spectrum = torch.fft.rfft2(images, s=size) * torch.fft.rfft2(template, s=size).conj()
    circular = torch.fft.irfft2(spectrum.sum(1, keepdim=True), s=size)
    return torch.roll(circular, (h - 1, w - 1), dims=(-2, -1))     # index i <-> corner i - h + 1


def locate(response: Tensor, template_size) -> Tensor:
    """Top-left corners ``(N, 2)`` (row, column) of the best-matching windows: the argmax of
    a :func:`cross_correlate` map, minus ``(h − 1, w − 1)``."""
    if response.ndim != 4 or response.shape[1] != 1:
        raise ShiftlabError(f"expected an N x 1 x H' x W' response map, got {tuple(response.shape)}")
    h, w = (int(s) for s in template_size)
    flat = response.flatten(1).argmax(1)
    width = response.shape[-1]
    return torch.stack([flat // width - (h - 1), flat % width - (w - 1)], 1)


class TemplateMatcher(nn.Module):
    """Module twin of :func:`cross_correlate`; the template is a non-persistent buffer.

    ``forward`` returns the response map; ``score`` its global max (the invariant "found")."""

    def __init__(self, template: Tensor, normalized: bool = True):
        super().__init__()
        if not isinstance(template, Tensor) or template.ndim != 3:
            raise ShiftlabError("the template must be a C x h x w tensor")
        self.register_buffer("template", template.clone(), persistent=False)
        self.normalized = normalized

    def forward(self, images: Tensor) -> Tensor:
        return cross_correlate(images, self.template, self.normalized)

    def score(self, images: Tensor) -> Tensor:
        return self(images).flatten(1).amax(1)


# ----------------------------------------------------------------------------- experiment
def _pick(y: Tensor, label: int, nth: int = 0) -> int:
    return int(torch.nonzero(y == label)[nth])


def _scene(digits: list[Tensor], positions: list[tuple[int, int]], size: int) -> Tensor:
    """Digits ``(1, 28, 28)`` pasted at top-left ``positions`` on a zero canvas (max where they meet)."""
    from ..data import place_on_canvas
    canvas = torch.zeros(1, 1, size, size, dtype=digits[0].dtype)
    for digit, pos in zip(digits, positions):
        canvas = torch.maximum(canvas, place_on_canvas(digit[None], (size, size), torch.tensor([pos])))
    return canvas


def _free_margin(scene: Tensor) -> int:
    """How far the scene can move in any direction before an inked pixel leaves the frame."""
    rows = torch.nonzero(scene[0].sum(0).sum(1) > 0).flatten()
    cols = torch.nonzero(scene[0].sum(0).sum(0) > 0).flatten()
    size = scene.shape[-1]
    return int(min(rows.min(), cols.min(), size - 1 - rows.max(), size - 1 - cols.max()))


def _image(t: Tensor) -> list:
    """A picture for the figure as nested lists, rounded to 1e-6 (far below what a colour shows)."""
    return np.round(t.detach().double().numpy(), 6).tolist()


def invariance_errors(f, x: Tensor, shifts, action) -> list[float]:
    """The law's invariance branch (:mod:`shiftlab.law`) for a function ``f`` with one number
    per image: ``|f(T_δ x) − f(x)| / |f(x)|`` over the batch, one per shift ``δ``."""
    with torch.no_grad():
        ref = f(x).reshape(len(x), -1)
        return [float(relative_error(compare(action, LayerGeometry(None), f(action(x, d)).reshape(len(x), -1),
                                             ref, d))) for d in shifts]


def compute(*, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Move a scene of three MNIST digits over a grid of shifts; match the target digit."""
    from ..data import load_data

    dtype = torch.float64
    x, y = load_data("mnist", split="test", seed=seed)
    g = torch.Generator().manual_seed(seed)
    target_label, other_labels = 3, (7, 3)                 # a distractor, and another "3"
    nth = int(torch.randint(0, 20, (1,), generator=g))     # the seed picks the exemplars
    target = x[_pick(y, target_label, nth)].to(dtype)
    others = [x[_pick(y, other_labels[0], nth)].to(dtype), x[_pick(y, other_labels[1], nth + 1)].to(dtype)]
    size = 84
    positions = [(28, 28), (4, 52), (52, 4)]
    scene = _scene([target, *others], positions, size)
    template = target                                       # (1, 28, 28): the whole digit image
    matcher = TemplateMatcher(template)

    reach = _free_margin(scene)
    step = 4 if quick else 1
    offsets = [k * step for k in range(-(reach // step), reach // step + 1)]      # symmetric, has 0
    grid = [(dy, dx) for dy in offsets for dx in offsets]
    far = offsets[-1]
    shifts = torch.tensor(grid)
    log(f"scene {size}x{size}, target at {positions[0]}, {len(grid)} shifts in [-{far}, {far}]^2")

    action = CanvasShift()
    moved = canvas_shift(scene.expand(len(grid), -1, -1, -1), shifts)
    responses = matcher(moved)
    eq_errors = map_errors(matcher, scene, grid, action)                    # the one law, per shift
    max_errors = invariance_errors(matcher.score, scene, grid, action)      # … its invariance branch
    found = locate(responses, template.shape[-2:])
    truth = torch.tensor(positions[0]) + shifts
    exact = (found == truth).all(1)

    solo = [float(matcher.score(_scene([d], [positions[0]], size))) for d in (target, *others)]
    plain_found = locate(cross_correlate(moved, template, normalized=False), template.shape[-2:])
    plain_exact = int((plain_found == truth).all(1).sum())

    worst_eq, worst_max = max(eq_errors), max(max_errors)
    log(f"equivariance error <= {worst_eq:.1e}, |max - max at 0| / max at 0 <= {worst_max:.1e}, "
        f"position exact for {int(exact.sum())}/{len(grid)} shifts")
    shown = [grid.index(d) for d in [(0, 0), (far, 0), (0, -far), (-far, far)]]
    return {"settings": {"seed": seed, "quick": quick, "canvas": size, "positions": [list(p) for p in positions],
                         "shift_range": reach, "shift_step": step, "normalized": True, "dtype": "float64",
                         "data": "mnist test"},
            "labels": {"target": target_label, "distractor": other_labels[0], "same_class": other_labels[1]},
            "shifts": len(grid), "equivariance_error_max": worst_eq, "max_change": worst_max,
            "exact_positions": int(exact.sum()), "plain_exact_positions": plain_exact,
            "score_target": solo[0], "score_distractor": solo[1], "score_same_class": solo[2],
            "reference_max": float(matcher.score(scene)),
            "max_per_shift": responses.flatten(1).amax(1).tolist(),
            "template": _image(template[0]),
            "shown": [{"shift": list(grid[k]), "found": found[k].tolist(), "scene": _image(moved[k, 0]),
                       "response": _image(responses[k, 0])} for k in shown]}


def draw(data: dict, out: str | Path) -> list[Path]:
    """Scenes and response maps at four shifts; the template; the max over shifts."""
    from matplotlib.patches import Rectangle

    from ..viz import new_figure, save_figure
    template = np.array(data["template"])
    h, w = template.shape
    fig, axes = new_figure(5, 2, size=(2.3, 2.3))
    axes[0, 0].imshow(template, cmap="gray")
    axes[0, 0].set_title("template", fontsize=8)
    axes[1, 0].plot(range(len(data["max_per_shift"])), data["max_per_shift"], ".", ms=2)
    axes[1, 0].set_ylim(0.0, 1.05)
    axes[1, 0].set_title("global max per shift", fontsize=8)
    axes[1, 0].set_xlabel("shift index", fontsize=7)
    for col, view in enumerate(data["shown"], start=1):
        (dy, dx), (fy, fx) = view["shift"], view["found"]
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(np.array(view["scene"]), cmap="gray")
        top.add_patch(Rectangle((fx - 0.5, fy - 0.5), w, h, fill=False, edgecolor="red", lw=1.2))
        top.set_title(f"scene shifted ({dy}, {dx})", fontsize=8)
        bottom.imshow(np.array(view["response"]), cmap="viridis", vmin=0.0, vmax=1.0)
        bottom.plot(fx + w - 1, fy + h - 1, "r+", ms=10)
        bottom.set_title(f"response, argmax -> ({fy}, {fx})", fontsize=8)
    for ax in axes.flat:
        ax.grid(False)
    for ax in list(axes[0]) + list(axes[1, 1:]):
        ax.set_xticks([]), ax.set_yticks([])
    return [p for p in save_figure(fig, Path(out), "template-matching") if p.suffix == ".png"]


def claims(data: dict) -> dict[str, bool]:
    """The experiment's claims, checked on :func:`compute`'s data."""
    return {
        "the response map moves with the scene (equivariance error < 1e-10, float64)":
            data["equivariance_error_max"] < 1e-10,
        "its global max is the same at every shift (change < 1e-10)": data["max_change"] < 1e-10,
        "the argmax recovers the target's position exactly at every shift":
            data["exact_positions"] == data["shifts"],
    }


#: the numbers kept in the result (the rest of the data is for the figure)
NUMBERS = ("shifts", "equivariance_error_max", "max_change", "exact_positions", "plain_exact_positions",
           "score_target", "score_distractor", "score_same_class", "reference_max")


def summarise(data: dict, figures: list[Path]) -> ExperimentResult:
    """The claims, the table and the summary of :func:`compute`'s data."""
    n, labels = data["shifts"], data["labels"]
    rows = [
        ["shifts tested", n],
        ["worst relative equivariance error of the response map", data["equivariance_error_max"]],
        ["worst relative change of the global max", data["max_change"]],
        ["positions recovered exactly (normalised correlation)", f"{data['exact_positions']}/{n}"],
        ["positions recovered exactly (plain correlation)", f"{data['plain_exact_positions']}/{n}"],
        [f"score of the target {labels['target']} (the template)", data["score_target"]],
        [f"score of a {labels['distractor']} (distractor)", data["score_distractor"]],
        [f"score of another {labels['same_class']}", data["score_same_class"]],
    ]
    return ExperimentResult(
        name="template-matching",
        title="Template matching: the response map moves with the object, its max does not",
        summary=("A scene of three handwritten digits is moved over a grid of shifts and correlated "
                 "with a template (one of the digits). The correlation map moves exactly with the scene, "
                 "so its maximum does not change at all and its peak always sits where the object is: "
                 "convolution gives equivariance, and a global max on top of it gives invariance plus the location."),
        columns=["measure", "value"], rows=rows, claims=claims(data),
        figures=[p.name for p in figures],
        numbers={k: data[k] for k in NUMBERS}, settings=data["settings"])


def run(out: Path, *, seed: int = 0, quick: bool = False, log=print) -> ExperimentResult:
    """Compute, save the data, draw, and state the claims."""
    data = compute(seed=seed, quick=quick, log=log)
    save_data(data, out, "template-matching")
    return summarise(data, draw(data, out))
