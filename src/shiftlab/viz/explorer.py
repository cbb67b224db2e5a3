"""Precomputed frames for the report's shift explorer (a dx/dy slider, no server).

For every shift ``(dy, dx)`` of a grid, the image is placed on the canvas at the centred
position plus the shift; the explorer stores the shifted input, the k-means coloured
feature maps of a few layers (colours fit once over all frames, as in the animation) and
the class probabilities. Images are tiny PNGs at their native resolution as data URIs
(the page scales them up with ``image-rendering: pixelated``), so a 11×11 grid of a
38×38 canvas with three layers is a few hundred kB.

The JSON (``explorer-NAME.json``, schema ``shiftlab.explorer/1``)::

    {"schema", "title", "model", "canvas", "label", "classes": [...],
     "dys": [...], "dxs": [...],                       # the slider values
     "layers": [{"name", "kind", "stride", "shape"}],  # the input is not listed
     "frames": [{"dy", "dx", "input": "data:image/png;base64,...",
                 "maps": ["data:...", ...], "probs": [...]}]}   # row-major over (dy, dx)
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.canvas import centred_position
from ..errors import ShiftlabError
from ..io import write_text_atomic
from .animate import canvas_frames, check_image, choose_layers, colour_maps, grey_maps, model_dtype, probe_maps

SCHEMA = "shiftlab.explorer/1"
PNG_URI = "data:image/png;base64,"          # every image of an explorer file starts so (no network)

__all__ = ["explorer_frames", "save_explorer", "load_explorer", "data_uri", "png_data_uri"]


def data_uri(payload: bytes, mime: str) -> str:
    """``payload`` as a ``data:MIME;base64,`` URI, to embed a file in a page."""
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def png_data_uri(rgb: np.ndarray) -> str:
    """An ``(h, w, 3)`` uint8 array as a ``data:image/png;base64,`` URI (deterministic bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue(), "image/png")


def explorer_frames(model: nn.Module, image: torch.Tensor, *, canvas: int = 38, radius: int | None = None,
                    layers=None, clusters: int = 6, seed: int = 0, label: int | None = None,
                    title: str = "") -> dict:
    """Frames for every shift ``dy, dx ∈ [-radius, radius]`` of ``image`` on the canvas.

    ``radius`` defaults to the largest shift that keeps the image inside the canvas in
    every direction (5 for a 28×28 digit on 38×38). Returns the JSON-serialisable dict
    described in the module doc.
    """
    image = check_image(image)
    h, w = image.shape[-2:]
    cy, cx = centred_position((h, w), (canvas, canvas))
    room = min(cy, cx, canvas - h - cy, canvas - w - cx)
    if room < 1:
        raise ShiftlabError(f"a {h}x{w} image has no room to move on a {canvas}x{canvas} canvas; "
                            f"use a canvas of at least {max(h, w) + 2}")
    radius = room if radius is None else radius
    if not 1 <= radius <= room:
        raise ShiftlabError(f"radius must be between 1 and {room} for a {h}x{w} image on a "
                            f"{canvas}x{canvas} canvas, got {radius}")
    offsets = list(range(-radius, radius + 1))
    shifts = np.array([(dy, dx) for dy in offsets for dx in offsets])
    inputs = canvas_frames(image, shifts + np.array([cy, cx]), canvas, model_dtype(model))
    infos = choose_layers(model, inputs[:1], layers)
    maps, probs = probe_maps(model, inputs, infos)
    grey = grey_maps(inputs.double().numpy())
    coloured = [colour_maps(maps[i.name], clusters, seed) for i in infos]
    frames = [{"dy": int(dy), "dx": int(dx), "input": png_data_uri(grey[k]),
               "maps": [png_data_uri(c[k]) for c in coloured],
               "probs": [round(float(p), 4) for p in probs[k]]}
              for k, (dy, dx) in enumerate(shifts)]
    return {"schema": SCHEMA, "title": title, "model": title or type(model).__name__,
            "canvas": canvas, "label": label, "classes": [str(k) for k in range(probs.shape[1])],
            "dys": offsets, "dxs": offsets,
            "layers": [{"name": i.name, "kind": i.kind, "stride": i.stride, "shape": list(i.shape)}
                       for i in infos],
            "frames": frames}


def save_explorer(data: dict, folder: str | Path, name: str) -> Path:
    """Write ``folder/explorer-NAME.json`` atomically; return its path."""
    return write_text_atomic(Path(folder) / f"explorer-{name}.json", json.dumps(data) + "\n")


def load_explorer(path: str | Path) -> dict:
    """Read an explorer JSON back, checking every key the report uses and its type.

    Every image must be an embedded PNG (``data:image/png;base64,...``), so a page built
    from the file never reaches the network.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ShiftlabError(f"{path} is not a readable explorer file ({type(err).__name__})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ShiftlabError(f"{path} is not a shiftlab explorer file (expected schema {SCHEMA!r})")
    problem = _explorer_problem(data)
    if problem:
        raise ShiftlabError(f"{path} is incomplete: {problem}; re-create it with save_explorer")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_png(value) -> bool:
    return isinstance(value, str) and value.startswith(PNG_URI)


def _explorer_problem(data: dict) -> str | None:
    """What is missing or mistyped in explorer data (layout: see the module doc), or None."""
    if not _is_int(data.get("canvas")) or data["canvas"] < 1:
        return "canvas must be a positive integer"
    classes, label = data.get("classes"), data.get("label")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes must be a non-empty list of strings"
    if label is not None and not (_is_int(label) and 0 <= label < len(classes)):
        return f"label must be null or a class index below {len(classes)}"
    layers = data.get("layers")
    if not isinstance(layers, list) or not all(
            isinstance(l, dict) and isinstance(l.get("name"), str) and isinstance(l.get("kind"), str)
            and _is_int(l.get("stride")) for l in layers):
        return "layers must be a list of {name, kind, stride}"
    dys, dxs, frames = data.get("dys"), data.get("dxs"), data.get("frames")
    for key, values in (("dys", dys), ("dxs", dxs)):
        if not isinstance(values, list) or not values or not all(_is_int(v) for v in values):
            return f"{key} must be a non-empty list of integer shifts"
    if not isinstance(frames, list) or len(frames) != len(dys) * len(dxs):
        return f"expected {len(dys) * len(dxs)} frames, one per (dy, dx)"
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict) or not _is_int(frame.get("dy")) or not _is_int(frame.get("dx")):
            return f"frame {k} lacks its integer dy, dx"
        if not _is_png(frame.get("input")):
            return f"frame {k}'s input is not an embedded PNG ({PNG_URI}...)"
        maps = frame.get("maps")
        if not isinstance(maps, list) or len(maps) != len(layers) or not all(_is_png(m) for m in maps):
            return f"frame {k} needs one embedded PNG map ({PNG_URI}...) per layer"
        probs = frame.get("probs")
        if not isinstance(probs, list) or len(probs) != len(classes) or not all(_is_number(p) for p in probs):
            return f"frame {k} needs one probability per class"
    return None
