"""Batches in, random shifts out: how the engine and its helpers read data and draw pairs.

* :func:`iter_batches` yields ``(inputs, labels or None)`` of at most ``size`` samples from a
  tensor, an ``(inputs, labels)`` pair or any iterable of either (a DataLoader);
  :func:`shard_batches` gives one rank's exact shard of them (no padding, no duplicates).
* :func:`pair_shifts` draws the random consistency shifts as a pure function of
  ``(seed, sample index)``, so batching and sharding never change them.

This module sits below the engine: :mod:`shiftlab.testing`, :mod:`shiftlab.lie` and
:mod:`shiftlab.periodic` read batches through it without importing the engine.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from . import distributed
from .errors import ShiftlabError

__all__ = ["iter_batches", "shard_batches", "pair_shifts", "stream_seed", "check_batch"]


def check_batch(x, y) -> tuple[Tensor, Tensor | None]:
    """``(inputs, labels)`` checked: N×C×T or N×C×H×W finite floats, whole class indices."""
    if not isinstance(x, Tensor) or x.ndim not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShiftlabError(f"inputs must be N x C x T signals or N x C x H x W images, got "
                            f"{shape}; add a channel axis for grey images (x[:, None])")
    if len(x) and 0 in x.shape[1:]:
        raise ShiftlabError(f"the inputs are empty (shape {tuple(x.shape)}); give each input at "
                            "least one channel and one sample or pixel per axis")
    if not x.is_floating_point():
        raise ShiftlabError(f"inputs must be floating point, got {x.dtype}; scale them, "
                            "e.g. x.float() / 255")
    if not bool(torch.isfinite(x).all()):
        raise ShiftlabError("inputs contain NaN or infinite values; clean the data first")
    if y is not None:
        y = torch.as_tensor(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ShiftlabError(f"labels must be a vector of {len(x)} class indices, "
                                f"got shape {tuple(y.shape)}")
        if y.is_complex() or y.dtype == torch.bool or (y.is_floating_point() and not (
                bool(torch.isfinite(y).all()) and torch.equal(y, y.round()))):
            raise ShiftlabError(f"labels must be whole class indices, got {y.dtype} values "
                                f"such as {y[:4].tolist()}")
        y = y.to(torch.int64)
    return x, y


def iter_batches(data, size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield ``(inputs, labels or None)`` of at most ``size`` samples from a tensor, an
    ``(inputs, labels)`` pair, or an iterable of either (a DataLoader)."""
    if isinstance(data, Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = check_batch(*data)
        for i in range(0, len(x), size):
            yield x[i:i + size], (None if y is None else y[i:i + size])
        return
    if not isinstance(data, Iterable):
        raise ShiftlabError(f"cannot read inputs from a {type(data).__name__}; pass a tensor, "
                            "an (inputs, labels) pair or a DataLoader")
    for item in data:
        yield from iter_batches(_pair(item), size)


def _pair(item) -> tuple:
    """One item of an iterable of batches as ``(inputs, labels or None)``."""
    return (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)


def shard_batches(data, size: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """Rank ``rank`` of ``world``'s batches of :func:`iter_batches`, each as ``(index of its
    first sample in the whole data, inputs, labels or None)``: an exact shard, no padding,
    no duplicates (the rules are in :mod:`shiftlab.distributed`). One process gets every
    batch."""
    if isinstance(data, Tensor):
        data = (data, None)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = check_batch(*data)                               # the whole data, as one process
        run = distributed.block(-(-len(x) // size), rank, world)
        lo, hi = run.start * size, min(run.stop * size, len(x))
        for i in range(lo, hi, size):
            yield i, x[i:i + size], (None if y is None else y[i:i + size])
        return
    shard = distributed.loader_shard(data, rank, world)
    if shard is not None:                                        # a DataLoader read in order
        loader, first, per = shard
        for b, item in enumerate(loader):
            start = first + b * per
            for x, y in iter_batches(_pair(item), size):
                yield start, x, y
                start += len(x)
        return
    if not isinstance(data, Iterable):
        raise ShiftlabError(f"cannot read inputs from a {type(data).__name__}; pass a tensor, "
                            "an (inputs, labels) pair or a DataLoader")
    start = 0
    for b, item in enumerate(data):                              # any iterable: strided
        x, y = _pair(item)
        if b % world == rank:
            for xb, yb in iter_batches((x, y), size):
                yield start, xb, yb
                start += len(xb)
        else:
            start += len(x) if isinstance(x, Tensor) and x.ndim else 0


# ----------------------------------------------------------------------------- pairs
def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pair_shifts(seed: int, start: int, n: int, pairs: int, low, high,
                integer: bool = True, rank: int = 2) -> Tensor:
    """Random shifts ``(2·pairs, n, rank)`` for samples ``start … start+n−1``, uniform in
    ``[low, high)`` per axis (numbers, or one per axis); a pure function of (seed, sample
    index), so batching does not change them."""
    with np.errstate(over="ignore"):
        img = np.arange(start, start + n, dtype=np.uint64)[None, :, None]
        slot = np.arange(2 * pairs, dtype=np.uint64)[:, None, None]
        axis = np.arange(rank, dtype=np.uint64)[None, None, :]
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(img * np.uint64(4096) + slot * np.uint64(2) + axis))
        u = (key >> np.uint64(11)).astype(np.float64) * 2.0 ** -53       # uniform [0, 1)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    values = low + u * (high - low)
    if integer:
        values = np.floor(values)
    return torch.from_numpy(values)


#: The random stream of the half-pixel pairs (ASCII "HALF"), apart from the integer pairs'.
HALF_PIXEL_STREAM = 0x48414C46


def stream_seed(seed: int, stream: int) -> int:
    """A seed for another independent stream of :func:`pair_shifts` draws from ``seed``."""
    with np.errstate(over="ignore"):
        return int(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(stream)))


