"""Images from array files: ``.npz`` (``x``/``images`` and ``y``/``labels``), ``.npy``, ``.pt``.

Integer images are scaled to [0, 1]. Every problem is a one-line :class:`ShiftlabError`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError



def _as_images(array, source: str) -> Tensor:
    x = torch.as_tensor(np.asarray(array)) if not isinstance(array, Tensor) else array
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ShiftlabError(f"{source}: images must be N x C x H x W (or N x H x W), "
                            f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float() / (255.0 if x.dtype == torch.uint8 else float(x.max().clamp_min(1)))
    return x.float()


def _pick(mapping, keys, source):
    for k in keys:
        if k in mapping:
            return mapping[k]
    return None


def _from_mapping(mapping, source: str) -> tuple[Tensor, Tensor | None]:
    x = _pick(mapping, ("x", "images", "data"), source)
    if x is None:
        raise ShiftlabError(f"{source} has no 'x' or 'images' entry (found: "
                            f"{', '.join(map(str, mapping.keys()))})")
    y = _pick(mapping, ("y", "labels", "targets"), source)
    return _as_images(x, source), (None if y is None else torch.as_tensor(np.asarray(y)).long())


def load_array_file(spec: str) -> tuple[Tensor, Tensor | None]:
    """Read images (and labels, if present) from an ``.npz``, ``.npy`` or ``.pt`` file."""
    path = Path(spec)
    if not path.exists():
        raise ShiftlabError(f"data {spec!r} is neither a known source (see --help) nor an "
                            "existing file")
    if path.is_dir():
        raise ShiftlabError(f"{spec} is a directory; for image folders write folder:{spec}, "
                            f"for IDX files idx:{spec}")
    if path.stat().st_size == 0:
        raise ShiftlabError(f"{spec} is empty")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                x, y = _from_mapping({k: f[k] for k in f.files}, spec)
        elif path.suffix == ".npy":
            x, y = _as_images(np.load(path, allow_pickle=False), spec), None
        elif path.suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                x, y = _from_mapping(obj, spec)
            elif isinstance(obj, (tuple, list)) and len(obj) == 2:
                x, y = _as_images(obj[0], spec), torch.as_tensor(obj[1]).long()
            else:
                x, y = _as_images(obj, spec), None
        else:
            raise ShiftlabError(f"unknown data format {path.suffix!r} for {spec}; use .npz, "
                                ".npy or .pt")
    except ShiftlabError:
        raise
    except Exception as err:                     # numpy/zip/pickle errors of a corrupt file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ShiftlabError(f"cannot read {spec}: {first}") from None
    return x, y
