"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or raw.

Header: two zero bytes, a type code, the number of dimensions, then each dimension as a
big-endian uint32; the data follows, big-endian.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import ShiftlabError

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array; corrupt files raise ShiftlabError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise ShiftlabError(f"no such IDX file: {path}") from None
    except (OSError, EOFError) as err:
        raise ShiftlabError(f"{path} is a corrupt gzip file ({err}); download it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _TYPES:
        raise ShiftlabError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ShiftlabError(f"{path} has a truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPES[raw[2]]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ShiftlabError(f"{path} is truncated or padded: header says {expected} data bytes "
                            f"for shape {dims}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


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
    return images, labels
