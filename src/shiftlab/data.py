"""Image sources for the CLI's ``--data``: a spec string → ``(images, labels or None)``.

===========================  ===================================================
``synthetic[:N[:CxHxW]]``    N seeded random smooth images (default 256, 1x28x28)
``path.npz``                 arrays ``x``/``images`` (N,C,H,W or N,H,W) and ``y``/``labels``
``path.npy``                 an image array
``path.pt``                  a tensor, an ``(images, labels)`` pair or a dict as for npz
===========================  ===================================================

Integer images are scaled to [0, 1]. Every problem is a one-line :class:`ShiftlabError`.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ShiftlabError

__all__ = ["load_data", "synthetic_images"]


def synthetic_images(n: int = 256, shape=(1, 28, 28), seed: int = 0) -> Tensor:
    """``n`` smooth random images in [0, 1): white noise blurred by a 5x5 box, rescaled."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, *shape, generator=g)
    kernel = torch.ones(shape[0], 1, 5, 5) / 25
    smooth = torch.nn.functional.conv2d(noise, kernel, padding=2, groups=shape[0])
    lo = smooth.amin(dim=(1, 2, 3), keepdim=True)
    hi = smooth.amax(dim=(1, 2, 3), keepdim=True)
    return ((smooth - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1 - 1e-6)


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


def load_data(spec: str, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """Turn a ``--data`` spec into ``(images, labels or None)``."""
    if spec.startswith("synthetic"):
        parts = spec.split(":")
        try:
            n = int(parts[1]) if len(parts) > 1 and parts[1] else 256
            shape = tuple(int(v) for v in parts[2].split("x")) if len(parts) > 2 else (1, 28, 28)
        except ValueError:
            raise ShiftlabError(f"bad data spec {spec!r}; write synthetic:N or synthetic:N:CxHxW") from None
        if n < 1 or len(shape) != 3 or min(shape) < 1:
            raise ShiftlabError(f"bad data spec {spec!r}; need N >= 1 and a CxHxW shape")
        return synthetic_images(n, shape, seed), None
    path = Path(spec)
    if not path.exists():
        raise ShiftlabError(f"data {spec!r} is neither a known source (synthetic[:N]) nor an "
                            "existing file")
    if path.is_dir():
        raise ShiftlabError(f"{spec} is a directory; give an .npz, .npy or .pt file")
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
            raise ShiftlabError(f"unknown data format {path.suffix!r} for {spec}; use .npz, .npy or .pt")
    except ShiftlabError:
        raise
    except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, Exception) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ShiftlabError(f"cannot read {spec}: {first}") from None
    if len(x) == 0:
        raise ShiftlabError(f"{spec} holds no images")
    if y is not None and len(y) != len(x):
        raise ShiftlabError(f"{spec}: {len(x)} images but {len(y)} labels")
    return x, y
