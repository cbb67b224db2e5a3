"""An image folder: one sub-folder per class, read with Pillow.

Each image's size is read from its header and checked against
:data:`~shiftlab.data.limits.MAX_IMAGE_PIXELS` before it is decoded (Pillow's own
decompression-bomb warning and error become the same one-line error), and the whole folder
against :data:`~shiftlab.data.limits.MAX_VALUES`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError, one_line
from .limits import MAX_IMAGE_PIXELS, check_values

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
GREY_MODES = ("1", "L", "I", "I;16", "F")


def _read_image(path: Path):
    """One image, decoded, once its header says it has at most ``MAX_IMAGE_PIXELS`` pixels."""
    from PIL import Image

    def too_large(size: str) -> ShiftlabError:
        return ShiftlabError(f"image {path} has {size}, more than the cap of {MAX_IMAGE_PIXELS:,} "
                             "pixels (4096x4096) per image; a decompression bomb? resize or "
                             "remove it")

    if not path.is_file():
        raise ShiftlabError(f"{path} is not a regular file (a FIFO, a device or a broken link); "
                            "remove it from the image folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:              # reads the header only
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise too_large(f"{width}x{height} = {width * height:,} pixels")
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise too_large("more pixels than Pillow's decompression-bomb limit") from None
    except ShiftlabError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as err:   # unidentified, truncated, corrupt
        raise ShiftlabError(f"cannot read image {path}: {one_line(err)}") from None


def load_image_folder(directory: str | Path) -> tuple[Tensor, Tensor, list[str]]:
    """Images ``(N, C, H, W)`` in [0, 1], labels, and class names (sorted sub-folder names).

    Grey images give C = 1; if any image has colour, all are read as RGB. All images must
    share one size.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ShiftlabError(f"image folder {str(root)!r} does not exist")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    except OSError as err:                                 # an unreadable folder
        raise ShiftlabError(f"cannot list image folder {root}: {one_line(err)}") from None
    if not classes:
        raise ShiftlabError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    if not files:
        raise ShiftlabError(f"{root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images, total = [], 0
    for f, _ in files:
        image = _read_image(f)
        total += image.width * image.height * (1 if image.mode in GREY_MODES else 3)
        check_values(total, f"image folder {root} (after {f.name})", "use fewer or smaller images")
        images.append(image)
    colour = any(im.mode not in GREY_MODES for im in images)
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
