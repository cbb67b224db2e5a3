"""Wolf's sliding-digit animation: watch feature maps move with the input.

A digit slides over a blank canvas along a path. For each chosen layer the animation
shows two views of its feature map ``φ(x_t)``:

* **raw**: every position coloured by the k-means cluster of its channel vector
  (direction ``φ/‖φ‖``), brightness by the activation norm ``‖φ‖``. The clusters are fit
  ONCE over all frames, so a colour means the same pattern in every frame.
* **stabilised**: the raw view moved back the way the law (:mod:`shiftlab.law`, canvas
  protocol) lines ``φ(x_t)`` up with frame 0's map: by ``δ_t / s`` (``s`` the layer's
  stride) where ``s`` divides the shift, by the better of the floor/ceil alignments
  (``nearest``) where it does not, shown on the window every frame covers
  (:func:`law_alignments`, :func:`stabilise`). Where the layer is equivariant
  (``φ(T_δ x) = T_{δ/s} φ(x)``) this view stands perfectly still; where it is not
  (a stride or pool seeing a shift that ``s`` does not divide) it flickers. Under it, the
  law's relative error of the frame (``nearest`` when the alignment is not exact).

Beside them: the class probabilities of each frame. Frames are composed with numpy and
Pillow (no matplotlib per frame) and written as a looping GIF.

The pieces are public because the report's explorer (:mod:`shiftlab.viz.explorer`)
reuses them: :func:`check_image`, :func:`model_dtype`, :func:`canvas_frames`,
:func:`choose_layers`, :func:`probe_maps`, :func:`colour_maps`, :func:`grey_maps`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from ..actions import CanvasShift
from ..data.canvas import centred_position, place_on_canvas
from ..errors import ShiftlabError
from ..io import atomic_path
from ..law import LayerGeometry, alignments, compare, relative_error
from ..probe import OUTPUT, Probe, default_layers, infer_layers

PATHS = ("left-right", "diagonal", "loop")

#: cluster colours (Paul Tol's bright + muted schemes: distinct, colour-blind aware)
PALETTE = np.array([
    (68, 119, 170), (238, 102, 119), (34, 136, 51), (204, 187, 68), (102, 204, 238),
    (170, 51, 119), (238, 119, 51), (0, 153, 136), (187, 187, 187), (153, 153, 51),
    (136, 34, 85), (221, 204, 119)], dtype=np.float64)
MAX_CLUSTERS = len(PALETTE)
KMEANS_SAMPLE = 4_000           # positions the clusters are fit on (a seeded subsample)


# ----------------------------------------------------------------------------- data
def slide_path(path: str, image_size: tuple[int, int], canvas: int) -> np.ndarray:
    """Top-left positions ``(T, 2)`` (row, col) of an ``h×w`` image on a ``canvas`` square.

    ``left-right``: along the middle row to the right edge and back; ``diagonal``: from the
    top-left corner to the bottom-right one and back; ``loop``: once around the border of
    the free area, clockwise. Each step moves one pixel, and the GIF loops seamlessly.

    >>> slide_path("left-right", (28, 28), 31)[:, 1].tolist()
    [0, 1, 2, 3, 2, 1]
    """
    h, w = image_size
    free_y, free_x = canvas - h, canvas - w
    if free_y < 1 or free_x < 1:
        raise ShiftlabError(f"a {h}x{w} image cannot slide on a {canvas}x{canvas} canvas; "
                            f"use --canvas {max(h, w) + 2} or more")
    cy, cx = centred_position((h, w), (canvas, canvas))
    ramp_x, ramp_y = np.arange(free_x + 1), np.arange(free_y + 1)
    if path == "left-right":
        xs = np.concatenate([ramp_x, ramp_x[-2:0:-1]])
        return np.stack([np.full_like(xs, cy), xs], 1)
    if path == "diagonal":
        n = min(free_x, free_y) + 1
        steps = np.concatenate([np.arange(n), np.arange(n)[-2:0:-1]])
        return np.stack([steps, steps], 1)
    if path == "loop":
        top = [(0, x) for x in ramp_x]
        right = [(y, free_x) for y in ramp_y[1:]]
        bottom = [(free_y, x) for x in ramp_x[-2::-1]]
        left = [(y, 0) for y in ramp_y[-2:0:-1]]
        return np.array(top + right + bottom + left)
    raise ShiftlabError(f"unknown path {path!r}; choose from {', '.join(PATHS)}")


def _spatial_infos(model: nn.Module, example: torch.Tensor, names: list[str] | None):
    infos = infer_layers(model, example, names if names is not None else default_layers(model))
    return [i for i in infos if i.name != OUTPUT and len(i.shape) == 3 and i.stride is not None]


def choose_layers(model: nn.Module, example: torch.Tensor, layers=None, count: int = 3):
    """The probed layers as ``LayerInfo`` (with measured strides).

    ``layers=None`` picks ``count`` feature-map layers evenly spaced from the first to the
    deepest, preferring activations and pools (what the next layer sees). Named layers
    must have spatial axes.
    """
    if layers is not None:
        names = [s for s in layers.split(",") if s] if isinstance(layers, str) else list(layers)
        infos = _spatial_infos(model, example, names)
        found = {i.name for i in infos}
        flat = [n for n in names if n not in found]
        if flat:
            raise ShiftlabError(f"layer {flat[0]!r} has no spatial feature map to show; "
                                "pick conv/activation/pool layers (see `shiftlab layers`)")
        return infos
    infos = _spatial_infos(model, example, None)
    if not infos:
        raise ShiftlabError("the model has no feature-map layers to show")
    preferred = [i for i in infos if not i.kind.startswith("Conv")] or infos
    picks = np.unique(np.linspace(0, len(preferred) - 1, min(count, len(preferred))).round().astype(int))
    return [preferred[k] for k in picks]


@torch.inference_mode()
def probe_maps(model: nn.Module, inputs: torch.Tensor, infos) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feature maps ``{name: (T, C, h, w)}`` of the layers in ``infos`` and the softmax
    probabilities ``(T, K)`` of the model for a batch of frames."""
    model.eval()
    names = [i.name for i in infos]
    with Probe(model, names, clone={i.name for i in infos if i.overwritten}) as probe:
        record = probe(inputs)
    logits = record[OUTPUT].reshape(len(inputs), -1).double()
    probs = torch.softmax(logits, dim=1).cpu().numpy()
    return {n: record[n].double().cpu().numpy() for n in names}, probs


def colour_maps(maps: np.ndarray, clusters: int = 6, seed: int = 0) -> np.ndarray:
    """Colour ``(T, C, h, w)`` feature maps as ``(T, h, w, 3)`` uint8 RGB.

    Hue: the k-means cluster (fit once over all frames, ``random_state=seed``) of the
    channel direction ``φ/‖φ‖``; brightness: ``‖φ‖`` over its 99th percentile across all
    frames (clipped to 1). Equal channel vectors always get equal colours.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if not 1 <= clusters <= MAX_CLUSTERS:
        raise ShiftlabError(f"clusters must be between 1 and {MAX_CLUSTERS}, got {clusters}")
    t, c, h, w = maps.shape
    vectors = maps.transpose(0, 2, 3, 1).reshape(-1, c)
    norms = np.linalg.norm(vectors, axis=1)
    scale = np.percentile(norms, 99) or norms.max() or 1.0
    lit = norms > 0.05 * scale
    directions = vectors / np.maximum(norms, 1e-12)[:, None]
    labels = np.zeros(len(vectors), dtype=np.int64)
    if lit.any():
        rng = np.random.default_rng(seed)
        sample = directions[lit]
        if len(sample) > KMEANS_SAMPLE:
            sample = sample[rng.choice(len(sample), KMEANS_SAMPLE, replace=False)]
        k = min(clusters, len(np.unique(sample.round(6), axis=0)))
        # one thread: small fits gain nothing from OpenMP, and spinning threads hurt a shared CPU
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(sample)
        centres = kmeans.cluster_centers_
        # nearest centre by ‖d − m‖² = ‖m‖² − 2 d·m (+ const): one matrix product per pixel
        labels = np.argmin((centres ** 2).sum(1)[None] - 2.0 * directions @ centres.T, axis=1)
    brightness = np.clip(norms / scale, 0.0, 1.0) ** 0.7
    rgb = PALETTE[labels % MAX_CLUSTERS] * brightness[:, None]
    return rgb.round().astype(np.uint8).reshape(t, h, w, 3)


def grey_maps(images: np.ndarray) -> np.ndarray:
    """``(T, C, H, W)`` images in [0, 1] as ``(T, H, W, 3)`` uint8 (channel mean)."""
    grey = np.clip(images.mean(axis=1), 0.0, 1.0) * 255.0
    return np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=-1)


def law_alignments(maps: np.ndarray, shifts: np.ndarray, stride: int) -> tuple[list, np.ndarray]:
    """Per frame, how the law (:mod:`shiftlab.law`, canvas protocol) lines frame ``t``'s map
    ``φ(x_t)`` up with frame 0's, ``x_t = T_{δ_t} x_0``, and its relative error there.

    ``maps``: ``(T, C, h, w)``; ``shifts``: ``(T, 2)`` input shifts ``δ_t`` relative to frame 0.
    Where the stride ``s`` divides ``δ_t`` the alignment is exact (``δ_t / s``); otherwise
    the law's floor/ceil candidates are scored like :func:`shiftlab.law.compare` scores
    them and the one with the smaller error is kept (``nearest``). None (error NaN): nothing
    comparable. Returns ``(alignments, errors)``: what :func:`stabilise` draws, and the
    numbers under it.

    >>> maps = np.zeros((2, 1, 4, 6)); maps[0, 0, 1, 1] = maps[1, 0, 1, 3] = 1.0
    >>> aligned, errors = law_alignments(maps, np.array([[0, 0], [0, 2]]), 1)
    >>> [a.feature_shift for a in aligned], errors.tolist()
    ([(0, 0), (0, 2)], [0.0, 0.0])
    """
    action = CanvasShift()
    ref = torch.from_numpy(maps[:1])
    geometry = LayerGeometry.same_size(action, stride, maps.shape[2:])
    chosen, errors = [], np.full(len(maps), np.nan)
    for t, shift in enumerate(np.asarray(shifts).tolist()):
        shift = tuple(float(d) for d in shift)
        best = None
        for cand in alignments(action, geometry, shift):
            c = compare(action, geometry, torch.from_numpy(maps[t:t + 1]), ref, shift, cands=[cand])
            error = float(relative_error(c))
            if c.positions and (best is None or error < best[1]):
                best = (cand, error)
        chosen.append(None if best is None else best[0])
        if best is not None:
            errors[t] = best[1]
    return chosen, errors


def stabilise(views: np.ndarray, aligned: list) -> np.ndarray:
    """Each frame's view moved back by its law alignment, on the window every frame covers.

    ``views``: ``(T, h, w, ...)`` pictures of the maps ``φ(x_t)``; ``aligned``: per frame the
    :class:`~shiftlab.law.Alignment` of :func:`law_alignments` (one box ``(out, src)``: the
    law compares ``φ(x_t)[out]`` with ``φ(x_0)[src]``). The window ``W`` is the intersection
    of the ``src`` boxes, and ``out[t] = views[t][W + k_t]`` with ``k_t`` frame ``t``'s
    feature shift: where the layer is equivariant every frame shows ``views[0][W]``.

    >>> maps = np.arange(5)[None, None, :].repeat(2, 0)          # (T=2, 1, 5)
    >>> maps[1] = np.roll(maps[1], 2)                             # frame 1 moved by 2
    >>> geometry = LayerGeometry.same_size(CanvasShift(), 1, (1, 5))
    >>> aligned = [alignments(CanvasShift(), geometry, d)[0] for d in [(0, 0), (0, 2)]]
    >>> stabilise(maps, aligned)[:, 0].tolist()
    [[0, 1, 2], [0, 1, 2]]
    """
    lost = ShiftlabError("the shifts leave no window common to all frames; use a shorter path "
                         "or a layer with a larger map")
    if any(a is None or a.blocks is None or len(a.blocks) != 1 for a in aligned):
        raise lost                                        # a frame shares nothing with frame 0
    sources = [a.blocks[0][1] for a in aligned]
    window = [(max(src[axis].start for src in sources), min(src[axis].stop for src in sources))
              for axis in range(2)]
    if any(hi <= lo for lo, hi in window):
        raise lost
    (lo_y, hi_y), (lo_x, hi_x) = window
    frames = []
    for view, a in zip(views, aligned):
        (out, src), = a.blocks
        ky, kx = (out[axis].start - src[axis].start for axis in range(2))
        frames.append(view[lo_y + ky:hi_y + ky, lo_x + kx:hi_x + kx])
    return np.stack(frames)


@dataclass
class LayerFrames:
    """One layer's coloured views over all frames."""

    name: str
    kind: str
    stride: int
    raw: np.ndarray                  # (T, h, w, 3) uint8
    stable: np.ndarray | None        # (T, h', w', 3) uint8; None: no window common to all frames
    error: np.ndarray | None = None  # (T,) the law's relative error against frame 0 (NaN: not
                                     # comparable)
    aligned: list | None = None      # (T,) the law's Alignment per frame (exact or nearest)


@dataclass
class AnimationFrames:
    """Everything one animation shows, frame by frame (what :func:`animate` computed)."""

    positions: np.ndarray            # (T, 2) top-left corner of the image on the canvas
    shifts: np.ndarray               # (T, 2) input shift (dy, dx) relative to frame 0
    layers: list[LayerFrames]        # the input first (stride 1), then the probed layers
    probs: np.ndarray                # (T, K) class probabilities
    label: int | None = None
    title: str = ""
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)


def check_image(image: torch.Tensor) -> torch.Tensor:
    """``image`` as ``C×h×w`` (an ``h×w`` one gets a channel axis); rejects other shapes and NaN/inf."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (2, 3) or min(image.shape[-2:]) < 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShiftlabError(f"expected one image C×h×w (or h×w), got {shape}")
    if not torch.isfinite(image).all():
        raise ShiftlabError("the image contains NaN or infinite values")
    return image[None] if image.ndim == 2 else image


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def canvas_frames(image: torch.Tensor, positions: np.ndarray, canvas: int, dtype) -> torch.Tensor:
    """``(T, C, canvas, canvas)``: the image placed at each top-left position (exact copies)."""
    batch = image[None].expand(len(positions), *image.shape).to(dtype)
    return place_on_canvas(batch, (canvas, canvas), torch.as_tensor(positions, dtype=torch.int64))


def compute_frames(model: nn.Module, image: torch.Tensor, *, canvas: int = 38,
                   path: str = "left-right", layers=None, clusters: int = 6, seed: int = 0,
                   label: int | None = None, title: str = "") -> AnimationFrames:
    """Slide ``image`` along ``path`` on the canvas and colour the chosen layers' maps."""
    image = check_image(image)
    positions = slide_path(path, tuple(image.shape[-2:]), canvas)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = canvas_frames(image, positions, canvas, model_dtype(model)).to(device)  # model's device
    infos = choose_layers(model, inputs[:1], layers)
    maps, probs = probe_maps(model, inputs, infos)
    shifts = positions - positions[0]
    views = [LayerFrames("input", "canvas", 1, grey_maps(inputs.double().cpu().numpy()), None)]
    views += [LayerFrames(i.name, i.kind, i.stride, colour_maps(maps[i.name], clusters, seed), None)
              for i in infos]
    laws = [law_alignments(inputs.double().numpy(), shifts, 1)]
    laws += [law_alignments(maps[i.name], shifts, i.stride) for i in infos]
    for k, (view, (aligned, errors)) in enumerate(zip(views, laws)):
        view.aligned = aligned
        view.error = errors if k else None       # the input's numbers are not shown
        try:
            view.stable = stabilise(view.raw, aligned)
        except ShiftlabError:                 # map too small for this path: raw view only
            view.stable = None
    return AnimationFrames(positions, shifts, views, probs, label, title,
                           [str(k) for k in range(probs.shape[1])])


# ----------------------------------------------------------------------------- drawing
CELL = 132                       # pixels per map panel: the largest map (the canvas) must fit
PALETTE_FRAMES = 16              # frames the shared GIF palette is fit on (evenly spaced)
BACKGROUND, INK, MUTED = (250, 250, 248), (30, 30, 30), (120, 120, 120)
ACCENT, TRUE = (238, 119, 51), (34, 136, 51)


def check_canvas(canvas: int) -> int:
    """The canvas side, if its panel fits the frame layout (``CELL`` pixels)."""
    if not 1 <= canvas <= CELL:
        raise ShiftlabError(f"the animation canvas must be between 1 and {CELL} pixels "
                            f"(one panel), got {canvas}")
    return canvas


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):                     # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _paste_scaled(frame: Image.Image, view: np.ndarray, box: tuple[int, int], scale: int) -> None:
    tile = Image.fromarray(np.ascontiguousarray(view)).resize(
        (view.shape[1] * scale, view.shape[0] * scale), Image.NEAREST)
    x, y = box
    frame.paste(tile, (x + (CELL - tile.width) // 2, y + (CELL - tile.height) // 2))


def render_frame(frames: AnimationFrames, t: int) -> Image.Image:
    """Frame ``t`` as an RGB image: raw row, stabilised row, probability bars."""
    font, small = _font(13), _font(11)
    left, top, gap, bars_w = 86, 68, 8, 190
    ncol = len(frames.layers)
    width = left + ncol * (CELL + gap) + bars_w
    height = top + 2 * (CELL + gap) + 40
    frame = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(frame)
    dy, dx = (int(v) for v in frames.shifts[t])
    draw.text((10, 8), f"{frames.title}  frame {t + 1}/{len(frames)}  shift dy={dy:+d} dx={dx:+d}",
              fill=INK, font=font)
    for row, text in enumerate(("raw", "stabilised")):
        draw.text((10, top + row * (CELL + gap) + CELL // 2 - 7), text, fill=INK, font=font)
    for k, view in enumerate(frames.layers):
        x = left + k * (CELL + gap)
        name = view.name if len(view.name) <= 18 else "…" + view.name[-17:]
        draw.text((x, top - 34), name, fill=INK, font=font)
        draw.text((x, top - 18), f"{view.kind}, stride {view.stride}", fill=MUTED, font=small)
        side = max(view.raw.shape[1:3])
        if side > CELL:
            raise ShiftlabError(f"layer {view.name!r} has a {side}-pixel map, larger than a "
                                f"{CELL}-pixel panel; pick smaller layers or a smaller canvas")
        scale = CELL // side
        _paste_scaled(frame, view.raw[t], (x, top), scale)
        if view.stable is not None:
            _paste_scaled(frame, view.stable[t], (x, top + CELL + gap), scale)
            if view.error is not None:
                err, aligned = view.error[t], view.aligned[t] if view.aligned else None
                text = ("law: -" if np.isnan(err) else f"law error {err:.1e}" if aligned.kind == "exact"
                        else f"nearest {err:.1e}")
                draw.text((x, top + 2 * CELL + gap + 2), text, fill=MUTED, font=small)
        else:
            draw.text((x + 6, top + CELL + gap + CELL // 2 - 14), "map too small\nfor this path",
                      fill=MUTED, font=small)
    _draw_bars(draw, frames, t, (left + ncol * (CELL + gap) + 6, top), bars_w - 16, small)
    draw.text((10, height - 20), "colour: k-means cluster of channel vectors (same in every frame); "
              "brightness: activation norm; green digit: true class", fill=MUTED, font=small)
    return frame


def _draw_bars(draw, frames: AnimationFrames, t: int, origin, width: int, font) -> None:
    x0, y0 = origin
    probs = frames.probs[t]
    best = int(np.argmax(probs))
    draw.text((x0, y0 - 18), "class probability", fill=INK, font=font)
    row = max(10, (2 * CELL) // max(1, len(probs)))
    for k, p in enumerate(probs):
        y = y0 + k * row
        colour = ACCENT if k == best else (160, 160, 160)
        draw.text((x0, y), frames.classes[k][:3], fill=TRUE if k == frames.label else INK, font=font)
        bar_x = x0 + 26
        draw.rectangle((bar_x, y + 2, bar_x + max(1, int(p * (width - 70))), y + row - 4), fill=colour)
        draw.text((bar_x + int(p * (width - 70)) + 4, y), f"{p:.2f}", fill=MUTED, font=font)


def _quantised_frames(frames: AnimationFrames) -> list[Image.Image]:
    """Render every frame and quantise it with ONE palette, so an unchanged pixel keeps its
    exact colour from frame to frame (per-frame palettes would make still regions shimmer).

    The palette is fit on at most ``PALETTE_FRAMES`` evenly spaced frames (all frames share
    the same colours: cluster hues times brightness, greys, the bars), and each frame is
    quantised as soon as it is drawn, so memory stays at one byte per pixel per frame.
    """
    count = len(frames)
    sample = np.unique(np.linspace(0, count - 1, min(count, PALETTE_FRAMES)).round().astype(int))
    drawn = {int(t): render_frame(frames, int(t)) for t in sample}
    width, height = drawn[int(sample[0])].size
    montage = Image.new("RGB", (width, height * len(drawn)))
    for k, image in enumerate(drawn.values()):
        montage.paste(image, (0, k * height))
    palette = montage.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    quantised = []
    for t in range(count):
        image = drawn.pop(t) if t in drawn else render_frame(frames, t)
        quantised.append(image.quantize(palette=palette, dither=Image.Dither.NONE))
    return quantised


def animate(model: nn.Module, image: torch.Tensor, out_path: str | Path, *, canvas: int = 38,
            path: str = "left-right", layers=None, clusters: int = 6, seed: int = 0,
            fps: int = 8, label: int | None = None, title: str = "") -> tuple[Path, AnimationFrames]:
    """Write Wolf's sliding-digit animation of ``model`` as a looping GIF.

    Args:
        model: any classifier ``nn.Module`` taking ``N×C×canvas×canvas`` images.
        image: one ``C×h×w`` image in [0, 1] (e.g. a 28×28 digit), smaller than the canvas.
        out_path: the ``.gif`` to write (atomically).
        canvas: side of the blank square the image slides on (at most ``CELL`` = 132 pixels).
        path: ``left-right``, ``diagonal`` or ``loop`` (see :func:`slide_path`).
        layers: layer names (default: 3 feature-map layers, see :func:`choose_layers`).
        clusters: k-means colours; seed: the k-means seed; fps: frames per second.
        label: the true class, marked green in the bars. title: text on each frame.

    Returns:
        ``(path, frames)``: the GIF's path and the :class:`AnimationFrames` it shows.
    """
    if not 1 <= fps <= 50:
        raise ShiftlabError(f"fps must be between 1 and 50, got {fps}")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".gif":
        raise ShiftlabError(f"the animation is written as a GIF; name it *.gif, not {out_path.name}")
    check_canvas(canvas)
    frames = compute_frames(model, image, canvas=canvas, path=path, layers=layers,
                            clusters=clusters, seed=seed, label=label, title=title)
    images = _quantised_frames(frames)
    with atomic_path(out_path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0, disposal=1)
    return out_path, frames
