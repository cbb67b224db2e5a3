"""Where images come from: a ``--data`` spec → ``(images N×C×H×W in [0, 1], labels or None)``.

=============================  ==========================================================
``mnist[:train|val|test]``     real MNIST (set up once by ``make data``), 28x28
``fashion-mnist[:train|test]`` Debian's ``dataset-fashion-mnist`` IDX files
``digits[:train|test]``        scikit-learn's 8x8 digits (always present)
``idx:DIR[:train|test]``       MNIST-format IDX files (gzipped or raw) in DIR
``folder:DIR``                 one sub-folder per class (or images directly in DIR: no
                               labels), read with Pillow; ``shiftlab audit`` streams it
                               (:func:`stream_image_folder`), the rest load it in memory
``synthetic[:N[:CxHxW]]``      N seeded random smooth images, no labels (``:N:CxT``: signals)
``FILE.npz|.npy|.pt``          arrays (see :mod:`shiftlab.data.files`)
``signals:FILE``               the same arrays read as 1-D signals ``N×C×T`` (or ``N×T``);
                               signed integers are PCM audio: int16 / 32768 (recorded)
``spoken-digits[:train|test]`` "zero" … "nine" spoken by espeak-ng (:mod:`shiftlab.data.speech`)
                               as ``N×1×40×81`` log-mel spectrograms
``spoken-digits-wave[:split]`` the same words as ``N×1×6400`` waveforms (8 kHz): signals
=============================  ==========================================================

Every problem (a missing, empty, corrupt or mismatched file) is a one-line ShiftlabError.
Sizes are capped (:mod:`shiftlab.data.limits`): at most ``MAX_VALUES`` = 2**27 image values
in memory (e.g. ``synthetic:171196`` at 1x28x28), checked before anything is allocated.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError
from .canvas import centred_position, place_on_canvas, random_positions
from .files import load_array_file
from .folder import (FolderStream, ImageFolderDataset, load_image_folder, scan_image_folder,
                     stream_image_folder)
from .idx import load_idx_dir, read_idx
from .limits import MAX_IMAGE_PIXELS, MAX_VALUES, check_values
from .loaded import Loaded
from .mnist import find_mnist, load_mnist
from .preprocess import IMAGENET, Preprocess, normalization
from .synthetic import synthetic_images

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TRAIN = 1500          # the first 1500 of sklearn's 1797 digits train, the rest test

__all__ = ["load_data", "synthetic_images", "place_on_canvas", "random_positions",
           "centred_position", "read_idx", "load_idx_dir", "load_mnist", "find_mnist",
           "load_image_folder", "load_array_file", "MAX_VALUES", "MAX_IMAGE_PIXELS",
           "stream_image_folder", "scan_image_folder", "FolderStream", "ImageFolderDataset",
           "Preprocess", "IMAGENET", "normalization", "Loaded"]


def _uint8_pair(x: np.ndarray, y: np.ndarray, scale: float = 255.0) -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(x)).float()[:, None] / scale
    return images, torch.from_numpy(np.asarray(y).astype(np.int64))


def _digits(split: str) -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0
    y = torch.from_numpy(d.target).long()
    if split not in ("train", "test"):
        raise ShiftlabError(f"digits has splits train and test, not {split!r}")
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return x[part], y[part]


def _synthetic(spec: str, rest: str, seed: int) -> Tensor:
    parts = rest.split(":") if rest else []
    try:
        n = int(parts[0]) if parts else 256
        shape = tuple(int(v) for v in parts[1].lower().split("x")) if len(parts) > 1 else (1, 28, 28)
    except ValueError:
        n, shape = 0, ()
    if len(parts) > 2 or n < 1 or len(shape) not in (2, 3) or min(shape) < 1:
        raise ShiftlabError(f"bad data spec {spec!r}; write synthetic:N, synthetic:N:CxHxW "
                            "(images) or synthetic:N:CxT (signals) with positive numbers")
    check_values(n * math.prod(shape), spec)
    return synthetic_images(n, shape, seed)


def load_data(spec: str, split: str = "test", seed: int = 0) -> Loaded:
    """Turn a data spec (see the module doc) into ``(images, labels or None)``: a
    :class:`~shiftlab.data.loaded.Loaded` pair, whose ``record()`` says what an audit's
    ``provenance.data`` should (synthetic spoken digits, scaled integer audio) or is None.

    ``split`` is the default split for sources that have them; a spec's own
    ``:split`` suffix wins. Every source must give at least one image.
    """
    if not spec.strip():
        raise ShiftlabError("the data spec is empty; give e.g. mnist, synthetic:256 or a file "
                            "(see --help)")
    loaded = _load(spec, split, seed)
    x, y = loaded
    if len(x) == 0:
        raise ShiftlabError(f"{spec} holds no images")
    if y is not None and len(y) != len(x):
        raise ShiftlabError(f"{spec}: {len(x)} images but {len(y)} labels")
    return loaded if isinstance(loaded, Loaded) else Loaded(x, y)


def _load(spec: str, split: str, seed: int) -> tuple[Tensor, Tensor | None]:
    name, _, rest = spec.partition(":")
    if name == "mnist":
        return _uint8_pair(*load_mnist(rest or split), scale=256.0)   # the pickle's k/256
    if name == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise ShiftlabError("Fashion-MNIST is not installed; apt-get install "
                                "dataset-fashion-mnist, or give idx:DIR")
        return _uint8_pair(*load_idx_dir(FASHION_MNIST_DIR, rest or (split if split != "val" else "test")))
    if name == "digits":
        return _digits(rest or (split if split != "val" else "test"))
    if name == "idx":
        directory, _, part = rest.rpartition(":") if rest.endswith((":train", ":test")) else (rest, "", "")
        images, labels = load_idx_dir(directory, part or (split if split != "val" else "test"))
        if images.dtype != np.uint8:
            raise ShiftlabError(f"{directory}: IDX images must be uint8, got {images.dtype}")
        return _uint8_pair(images, labels)
    if name == "folder":
        x, y, _ = load_image_folder(rest)
        return x, y
    if name == "synthetic":
        return _synthetic(spec, rest, seed), None
    if name in ("spoken-digits", "spoken-digits-wave"):
        return _spoken(name, rest or (split if split != "val" else "test"))
    if name == "signals":
        return load_array_file(rest, rank=1, source=spec)
    return load_array_file(spec)


def _spoken(name: str, split: str) -> Loaded:
    """The spoken digits (made once with espeak-ng, or its synthetic stand-in): log-mel
    spectrograms, or with ``-wave`` the waveforms as one-channel signals; the record says
    which of the two made them."""
    import sys
    from .speech import data_record, load_spoken_digits, spoken_digits
    say = lambda text: print(text, file=sys.stderr)
    if name == "spoken-digits":
        return load_spoken_digits(split, log=say)
    if split not in ("train", "test"):
        raise ShiftlabError(f"spoken-digits-wave has splits train and test, not {split!r}")
    data = spoken_digits(log=say)
    part = data.split(max(1, len(set(data.voices)) // 4), 0)[0 if split == "train" else 1]
    return Loaded(part.waveforms[:, None], part.labels, data_record(part, f"{name}:{split}", split))
