"""Size caps on data read into memory, checked from headers before anything is allocated.

A declared size is what a file's header (IDX dimensions, a ``.npy`` shape, a PNG's width and
height, a zip entry's size) or a spec (``synthetic:N:CxHxW``) promises; a hostile or corrupt
file can promise terabytes in a few bytes (a decompression bomb), so shiftlab compares the
promise with a cap first and then reads at most what was promised.

- ``MAX_VALUES`` = 2**27 (134,217,728) image values in one data set held in memory: 512 MiB
  as float32, three times MNIST's 50,000 training digits (39,200,000 values). A streamed
  image folder (:mod:`shiftlab.data.folder`) is not held: the cap bounds one batch of it.
- ``MAX_IMAGE_PIXELS`` = 4096 x 4096 (16,777,216) pixels in one image of an image folder
  (Pillow's own bomb check starts at 89 megapixels).
"""
from __future__ import annotations

import math

from ..errors import ShiftlabError

MAX_VALUES = 2 ** 27
MAX_IMAGE_PIXELS = 4096 * 4096


def check_values(count: int, what: str, hint: str = "use fewer or smaller images") -> int:
    """``count`` if at most ``MAX_VALUES``, else a one-line error naming ``what``.

    >>> check_values(10 * 28 * 28, "synthetic:10")
    7840
    """
    if count > MAX_VALUES:
        raise ShiftlabError(f"{what} has {count:,} values ({_bytes(4 * count)} as float32), more "
                            f"than the cap of {MAX_VALUES:,} (512 MiB); {hint}")
    return count


def values(shape) -> int:
    """The number of values of ``shape`` (exact integer arithmetic, no overflow)."""
    return math.prod(int(v) for v in shape)


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"                                   # pragma: no cover
