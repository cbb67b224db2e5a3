"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or raw.

Header: two zero bytes, a type code, the number of dimensions, then each dimension as a
big-endian uint32; the data follows, big-endian.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import ShiftlabError, one_line
from .limits import check_values, values

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array; corrupt files raise ShiftlabError.

    The header's declared size is checked against :data:`~shiftlab.data.limits.MAX_VALUES`
    before any data is read, and at most the declared bytes (plus one, to detect a lie) are
    ever decompressed: a gzip bomb costs nothing.
    """
    path = Path(path)
    if not path.exists():
        raise ShiftlabError(f"no such IDX file: {path}")
    if not path.is_file():
        raise ShiftlabError(f"{path} is not a regular file; give IDX files")
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _TYPES:
                raise ShiftlabError(f"{path} is not an IDX file (bad magic number)")
            ndim, dtype = head[3], _TYPES[head[2]]
            raw_dims = f.read(4 * ndim)
            if ndim == 0 or len(raw_dims) < 4 * ndim:
                raise ShiftlabError(f"{path} has a truncated IDX header")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            check_values(values(dims), f"{path} (shape {'x'.join(map(str, dims))} by its header)",
                         "give a smaller file")
            expected = values(dims) * dtype.itemsize
            data = f.read(expected + 1)                   # one byte more: a lying header shows
    except ShiftlabError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        raise ShiftlabError(f"{path} is a corrupt gzip file ({one_line(err)}); download it "
                            "again") from None
    if len(data) != expected:
        found = f"{len(data)}" if len(data) < expected else "more"
        raise ShiftlabError(f"{path} is truncated or padded: header says {expected} data bytes "
                            f"for shape {dims}, found {found}")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(directory: Path, prefix: str, kind: str) -> Path:
    for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte",
                 f"{prefix}-{kind}.idx{3 if kind == 'images' else 1}-ubyte"):
        for suffix in (".gz", ""):
            if (directory / (name + suffix)).is_file():
                return directory / (name + suffix)
    raise ShiftlabError(f"no {prefix}-{kind}-idx*-ubyte[.gz] file in {directory}")


def load_idx_dir(directory: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` and labels ``(N,)`` of ``split`` (train | test) from an
    MNIST-style folder (``train-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte``, …)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ShiftlabError(f"IDX folder {str(directory)!r} does not exist")
    if split not in _PREFIX:
        raise ShiftlabError(f"IDX data has splits train and test, not {split!r}")
    images = read_idx(_find(directory, _PREFIX[split], "images"))
    labels = read_idx(_find(directory, _PREFIX[split], "labels"))
    if images.ndim != 3 or labels.ndim != 1:
        raise ShiftlabError(f"{directory}: expected N x H x W images and N labels, got shapes "
                            f"{images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise ShiftlabError(f"{directory}: {len(images)} images but {len(labels)} labels")
    if min(images.shape) < 1:
        raise ShiftlabError(f"{directory}: the {split} images have shape {images.shape}; "
                            "an IDX file with no pixels holds no images")
    return images, labels
