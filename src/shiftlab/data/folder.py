"""An image folder: one sub-folder per class, read with Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def load_image_folder(directory: str | Path) -> tuple[Tensor, Tensor, list[str]]:
    """Images ``(N, C, H, W)`` in [0, 1], labels, and class names (sorted sub-folder names).

    Grey images give C = 1; if any image has colour, all are read as RGB. All images must
    share one size.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(directory)
    if not root.is_dir():
        raise ShiftlabError(f"image folder {str(root)!r} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ShiftlabError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ShiftlabError(f"{root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise ShiftlabError(f"cannot read image {f}: {type(err).__name__}") from None
    colour = any(im.mode not in ("1", "L", "I", "I;16", "F") for im in images)
    mode = "RGB" if colour else "L"
    arrays = [np.asarray(im.convert(mode)) for im in images]
    size = arrays[0].shape[:2]
    for (f, _), a in zip(files, arrays):
        if a.shape[:2] != size:
            raise ShiftlabError(f"images must share one size: {files[0][0].name} is "
                                f"{size[0]}x{size[1]}, {f.name} is {a.shape[0]}x{a.shape[1]}")
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.tensor([k for _, k in files]), classes
