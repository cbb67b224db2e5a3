"""Images from array files: ``.npz`` (``x``/``images`` and ``y``/``labels``), ``.npy``, ``.pt``.

Images must hold real numbers (integer, boolean or floating point; integer images are
scaled to [0, 1]); signals (``rank=1``) may also be signed integers, PCM audio, scaled by
their type's full scale (int16 / 32768, to [-1, 1); the record says so); labels must be one
integer per image. Sizes declared by a file's headers are checked against
:data:`~shiftlab.data.limits.MAX_VALUES` before anything is allocated.
``.pt`` files are read with ``weights_only=True`` (tensors and plain containers, never
arbitrary pickled objects). Every problem is a one-line :class:`ShiftlabError`.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError, one_line
from .limits import MAX_VALUES, check_values, values
from .loaded import Loaded


def _check_dtype(dtype, source: str, what: str) -> None:
    """Refuse dtypes that are not real numbers (complex, strings, objects, records, dates)."""
    if isinstance(dtype, torch.dtype):
        kind = "complex" if dtype.is_complex else None
    else:
        kind = None if np.dtype(dtype).kind in "biuf" else \
            "complex" if np.dtype(dtype).kind == "c" else "non-numeric"
    if kind:
        raise ShiftlabError(f"{source}: {what} must be real numbers, got {kind} dtype {dtype}; "
                            "store real-valued (e.g. float32 or uint8) arrays")


def _as_tensor(array, source: str, what: str) -> Tensor:
    if isinstance(array, Tensor):
        _check_dtype(array.dtype, source, what)
        return array
    array = np.asarray(array)
    _check_dtype(array.dtype, source, what)
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_images(array, source: str, rank: int = 2, notes: list | None = None) -> Tensor:
    """Images ``N×C×H×W`` (``N×H×W`` gets one channel), or for ``rank=1`` signals
    ``N×C×T`` (``N×T`` gets one channel), as float. How integer signals were scaled is
    added to ``notes``."""
    what = "images" if rank == 2 else "signals"
    x = _as_tensor(array, source, what)
    given = tuple(x.shape)
    if x.ndim == rank + 1:
        x = x[:, None]
    if x.ndim != rank + 2:
        layout = "N x C x H x W (or N x H x W)" if rank == 2 else "N x C x T (or N x T)"
        raise ShiftlabError(f"{source}: {what} must be {layout}, got shape {given}")
    if len(x) and 0 in x.shape[1:]:                  # no sample at all: load_data's "holds no images"
        each = x.shape[2:]
        detail = ("0 channels" if x.shape[1] == 0 else "0 samples each" if rank == 1
                  else f"{'x'.join(map(str, each))} pixels each")
        unit = ("channel" if x.shape[1] == 0 else "sample per signal" if rank == 1
                else "pixel per image")
        raise ShiftlabError(f"{source}: the {what} are empty (shape {given}: {detail}); give at "
                            f"least one {unit}")
    check_values(x.numel(), source)
    if x.dtype == torch.bool:
        return x.float()
    if not x.is_floating_point() and rank == 1 and x.dtype.is_signed:   # PCM audio
        scale = torch.iinfo(x.dtype).max + 1
        if notes is not None:
            kind = str(x.dtype).removeprefix("torch.")
            notes.append(f"{kind} samples / {scale} (PCM full scale to 1)")
        return x.float() / scale
    if not x.is_floating_point():
        if x.numel() and int(x.min()) < 0:
            raise ShiftlabError(f"{source}: integer images must be non-negative (0..255 for "
                                f"uint8), got values down to {int(x.min())}")
        return x.float() / (255.0 if x.dtype == torch.uint8 else float(max(1, int(x.max()))))
    return x.float()


def _as_labels(array, source: str) -> Tensor:
    y = _as_tensor(array, source, "labels")
    if y.ndim != 1:
        raise ShiftlabError(f"{source}: labels must be one integer per image (shape N), got "
                            f"shape {tuple(y.shape)}")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not torch.equal(y, y.round()):
            raise ShiftlabError(f"{source}: labels must be whole numbers (class indices), got "
                                f"{y.dtype} values with fractions, NaN or inf")
    return y.long()


def _pick(mapping, keys):
    for k in keys:
        if k in mapping:
            return mapping[k]
    return None


def _from_mapping(mapping, source: str, rank: int = 2,
                  notes: list | None = None) -> tuple[Tensor, Tensor | None]:
    x = _pick(mapping, ("x", "images", "signals", "data"))
    if x is None:
        raise ShiftlabError(f"{source} has no 'x' or 'images' entry (found: "
                            f"{', '.join(map(str, mapping.keys()))})")
    y = _pick(mapping, ("y", "labels", "targets"))
    return _as_images(x, source, rank, notes), (None if y is None else _as_labels(y, source))


def _npy_header(f, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, without reading the data."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
        np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    check_values(values(shape), f"{source} (shape {'x'.join(map(str, shape)) or 'scalar'} by its "
                 "header)", "give a smaller file")
    return shape, dtype


def _check_zip(path: Path, source: str) -> None:
    """An ``.npz`` or ``.pt`` file (a zip) must not unpack to more than the cap allows, by its
    declared entry sizes and ``.npy`` headers (zipfile never reads past a declared size)."""
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > 8 * MAX_VALUES:                  # 8 bytes per value: float64 or int64
            check_values(unpacked // 8, f"{source} ({unpacked:,} bytes unpacked)",
                         "give a smaller file")
        for info in archive.infolist():
            if path.suffix == ".npz" and info.filename.endswith(".npy"):
                with archive.open(info) as member:
                    _npy_header(member, f"{source}:{info.filename[:-4]}")


def _read(path: Path, spec: str, rank: int = 2,
          notes: list | None = None) -> tuple[Tensor, Tensor | None]:
    if path.suffix == ".npz":
        _check_zip(path, spec)
        with np.load(path, allow_pickle=False) as f:     # reads only the entries picked
            return _from_mapping(f, spec, rank, notes)
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            _npy_header(f, spec)
        return _as_images(np.load(path, allow_pickle=False), spec, rank, notes), None
    if path.suffix in (".pt", ".pth"):
        if zipfile.is_zipfile(path):
            _check_zip(path, spec)
        with warnings.catch_warnings():              # torch's notes on pickle protocols
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            return _from_mapping(obj, spec, rank, notes)
        if isinstance(obj, (tuple, list)) and len(obj) == 2:
            return _as_images(obj[0], spec, rank, notes), _as_labels(obj[1], spec)
        return _as_images(obj, spec, rank, notes), None
    raise ShiftlabError(f"unknown data format {path.suffix!r} for {spec}; use .npz, .npy or .pt")


def load_array_file(spec: str, rank: int = 2, source: str | None = None) -> Loaded:
    """Read images (and labels, if present) from an ``.npz``, ``.npy`` or ``.pt`` file;
    ``rank=1`` reads signals ``N×C×T`` (or ``N×T``) instead. The record (``source``, the
    data spec, names them) says how signed integer signals were scaled, if they were."""
    path = Path(spec)
    if not path.exists():
        raise ShiftlabError(f"data {spec!r} is neither a known source (see --help) nor an "
                            "existing file")
    if path.is_dir():
        raise ShiftlabError(f"{spec} is a directory; for image folders write folder:{spec}, "
                            f"for IDX files idx:{spec}")
    if not path.is_file():
        raise ShiftlabError(f"{spec} is not a regular file (a FIFO or a device); give an .npz, "
                            ".npy or .pt file")
    if path.stat().st_size == 0:
        raise ShiftlabError(f"{spec} is empty")
    notes: list[str] = []
    try:
        x, y = _read(path, spec, rank, notes)
        return Loaded(x, y, {"source": source or spec, "scaled": notes[0]} if notes else None)
    except ShiftlabError:
        raise
    except Exception as err:                     # numpy/zip/pickle errors of a corrupt file
        if "weights only load failed" in str(err).lower():
            raise ShiftlabError(f"{spec} cannot be read safely: torch's weights-only loader refused "
                                "it (Python objects other than tensors, or an unsupported pickle "
                                "protocol); save a dict of tensors with torch.save") from None
        raise ShiftlabError(f"cannot read {spec}: {one_line(err, 160)}") from None
