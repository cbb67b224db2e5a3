"""Image folders, read lazily through a ``torch.utils.data.DataLoader``.

Layout: ``DIR/<class>/**/<image>`` (one sub-folder per class, labels = the sorted class
names' indices, as torchvision's ``ImageFolder``), or images directly in ``DIR`` (a flat,
unlabelled folder). Folders and files whose names start with ``.`` are not read; files
whose suffix is not an image's (``IMAGE_SUFFIXES``) are ignored and counted, as are loose
files beside class sub-folders. The order is the sorted paths, so results never depend on
the number of worker processes.

Reading happens in two passes:

1. :func:`scan_image_folder` (this process, headers only): every image's size and mode
   from its header, checked against :data:`~shiftlab.data.limits.MAX_IMAGE_PIXELS` before
   anything is decoded; the channel count (1 if every image is grey, else 3: grey images
   are then read as RGB, said once in a warning); every image's size after preprocessing,
   which must be the same for all.
2. :class:`ImageFolderDataset` decodes one image per item (the header checked again before
   decoding) and preprocesses it (:class:`~shiftlab.data.preprocess.Preprocess`);
   :class:`FolderStream` batches items with a DataLoader (``workers`` processes, at most
   the CPUs the process may use: more are clamped, said and recorded) and yields
   ``(images N×C×H×W in [0, 1], labels or None)``. Memory holds a few batches, never the
   folder.

Modes: 1-bit, 8-bit and 16-bit grey (``/ 255``, ``/ 65535``), float grey (as is), palette
images whose palette holds only greys (GIFs open as palette images) as 8-bit grey; RGB,
RGBA (alpha dropped, as torchvision's loader), other palettes, CMYK, … → RGB. A file that
cannot be read (corrupt, truncated, not a regular file, too large, animated or multi-page,
a float image with NaN or infinite pixels) is a one-line error naming it, or, with
``skip_bad``, skipped and counted; a worker never raises, it hands the error back with the
batch. A folder that cannot be listed (its mode) is a one-line error naming it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError, one_line
from .limits import MAX_IMAGE_PIXELS, check_values
from .preprocess import Preprocess

__all__ = ["IMAGE_SUFFIXES", "FolderIndex", "scan_image_folder", "ImageFolderDataset",
           "FolderStream", "stream_image_folder", "load_image_folder", "BadImage", "collate_images"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")
#: Multi-frame formats whose first frame is the image (a camera's JPEG with its previews);
#: other multi-frame images (animated GIF, PNG, WebP; multi-page TIFF) are refused.
STILL_MULTI_FRAME = ("MPO",)
MAX_LISTED = 100             # skipped files named in the result (all are counted)
SKIP_HINT = " (or pass --skip-bad to skip and count such files)"
EMPTY = "empty (0 bytes)"


# ----------------------------------------------------------------------------- one image
def _open_checked(path: Path, decode: bool):
    """The image at ``path`` once its header says it has at most ``MAX_IMAGE_PIXELS``
    pixels: ``(height, width, mode)`` from the header, or with ``decode`` the decoded image."""
    from PIL import Image

    def too_large(size: str) -> ShiftlabError:
        return ShiftlabError(f"image {path} has {size}, more than the cap of {MAX_IMAGE_PIXELS:,} "
                             "pixels (4096x4096) per image; a decompression bomb? resize or "
                             "remove it")

    try:
        regular = path.is_file()
    except OSError as err:                            # its folder cannot be entered (no x)
        raise ShiftlabError(f"cannot read image {path}: {err.strerror or one_line(err)}") from None
    if not regular:
        raise ShiftlabError(f"{path} is not a regular file (a FIFO, a device or a broken link); "
                            "remove it from the image folder")
    if path.stat().st_size == 0:
        raise ShiftlabError(f"image {path} is {EMPTY}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:              # reads the header only
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise too_large(f"{width}x{height} = {width * height:,} pixels")
                if getattr(im, "is_animated", False) and im.format not in STILL_MULTI_FRAME:
                    raise ShiftlabError(f"image {path} has {im.n_frames} frames (animated or "
                                        "multi-page); shiftlab reads still images: save the "
                                        "frame to audit as a PNG, or remove it")
                if not decode:
                    return height, width, _grey_palette_mode(im) or im.mode
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large("more pixels than Pillow's decompression-bomb limit") from None
    except ShiftlabError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as err:   # unidentified, truncated, corrupt
        raise ShiftlabError(f"cannot read image {path}: {one_line(err)}") from None


def _grey_palette_mode(image) -> str | None:
    """``"L"`` (``"LA"``) for a palette image (``P``, ``PA``) whose palette holds only greys,
    from its header (GIFs open as palette images), else None."""
    if image.mode not in ("P", "PA") or image.palette is None:
        return None
    try:
        colours = np.frombuffer(image.palette.tobytes(), np.uint8)
        colours = colours.reshape(-1, len(image.palette.mode))[:, :3]
    except (ValueError, TypeError):                   # a raw palette: read as colour
        return None
    grey = len(colours) and bool((colours == colours[:, :1]).all())
    return ("L" if image.mode == "P" else "LA") if grey else None


def _as_pixels(image):
    """A decoded image as mode ``L``, ``F`` or ``RGB``, and the value of white (the scale)."""
    mode = _grey_palette_mode(image) or image.mode
    if mode in SIXTEEN_BIT:
        return image.convert("F"), 65535.0
    if mode == "F":
        return image, 1.0
    if mode in GREY_MODES:
        return (image if image.mode == "L" else image.convert("L")), 255.0
    if mode in ("P", "PA"):                           # palette transparency: through RGBA
        image = image.convert("RGBA")
    return (image if image.mode == "RGB" else image.convert("RGB")), 255.0


class BadImage(NamedTuple):
    """An image that could not be read: its path and the one-line reason."""

    file: str
    reason: str


# ----------------------------------------------------------------------------- the scan
@dataclass
class FolderIndex:
    """What :func:`scan_image_folder` learned from names and headers (no pixels)."""

    root: Path
    classes: list[str] | None                  # None: a flat, unlabelled folder
    files: list[str]                           # images, sorted by path
    labels: list[int]                          # class index per image (-1 when unlabelled)
    channels: int                              # 1 (all grey) or 3
    size: tuple[int, int]                      # (H, W) of every preprocessed image
    grey_as_rgb: int = 0                       # grey images read as RGB (a mixed folder)
    ignored: list[str] = field(default_factory=list)      # non-image files
    bad: list[BadImage] = field(default_factory=list)     # unreadable headers (skip_bad)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)


def _unreadable_folder(err: OSError, root: Path) -> ShiftlabError:
    """The one line for a folder of ``root`` that cannot be listed (``err`` from listing it)."""
    folder = err.filename if err.filename is not None else root
    why = err.strerror or one_line(err)
    return ShiftlabError(f"cannot read folder {folder} in image folder {root}: {why}; make it "
                         f"readable (chmod a+rx) or move it out of {root}")


def _list(root: Path) -> tuple[list[str] | None, list[tuple[Path, int]], list[str]]:
    """Class names (None: flat), image files with labels, ignored non-image files. A folder
    that cannot be listed (its mode, say) is a one-line error naming it, never skipped."""
    def visible(names):
        return sorted(n for n in names if not n.startswith("."))

    def refuse(err: OSError):
        raise err

    try:
        entries = visible(os.listdir(root))
        classes = [n for n in entries if (root / n).is_dir()]
        loose = [n for n in entries if n not in classes]
        images, ignored = [], []
        if not classes:                                          # a flat folder
            for n in loose:
                (images if Path(n).suffix.lower() in IMAGE_SUFFIXES else ignored).append(n)
            return None, [(root / n, -1) for n in images], ignored
        ignored += loose                                          # files beside class folders
        found = []
        for k, c in enumerate(classes):
            inside = []
            # symlinked sub-folders: not followed; an unreadable one: refused (os.walk
            # would skip it without a word)
            for folder, dirs, names in os.walk(root / c, onerror=refuse):
                dirs[:] = visible(dirs)
                inside += [Path(folder) / n for n in visible(names)]
            for path in sorted(inside, key=str):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((path, k))
                else:
                    ignored.append(str(path.relative_to(root)))
        return classes, found, ignored
    except OSError as err:                                        # an unreadable folder
        raise _unreadable_folder(err, root) from None


def scan_image_folder(directory: str | Path, preprocess: Preprocess | None = None, *,
                      skip_bad: bool = False, hint: str = "") -> FolderIndex:
    """Names and headers of an image folder (no pixels decoded): see the module doc.

    One-line errors: no such folder, no images, unreadable headers (unless ``skip_bad``:
    every header is read, and the error counts them and names the first),
    an image a preprocessing step cannot apply to, images of different sizes after
    preprocessing. Warns once when grey images are read as RGB and when files are ignored.
    ``hint`` is added to the error of an unreadable file (how to skip it).
    """
    preprocess = preprocess or Preprocess()
    root = Path(directory)
    if not root.is_dir():
        raise ShiftlabError(f"image folder {str(root)!r} does not exist")
    classes, found, ignored = _list(root)
    if not found:
        where = f"{root} and its class folders" if classes else str(root)
        extra = f" ({len(ignored)} other files ignored)" if ignored else ""
        raise ShiftlabError(f"{where} hold no images{extra}; expected {root}/<class>/<image> "
                            f"or {root}/<image> with suffix {', '.join(sorted(IMAGE_SUFFIXES))}")
    files, labels, modes, bad = [], [], [], []
    sizes: dict[tuple[int, int], str] = {}
    for path, label in found:
        try:
            h, w, mode = _open_checked(path, decode=False)
        except ShiftlabError as err:                  # counted; refused after the scan
            bad.append(BadImage(str(path), str(err)))
            continue
        sizes.setdefault(preprocess.output_size((h, w), f"image {path}"), str(path))
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            fix = ("give them one size (shiftlab audit: add --center-crop HxW; Zhang 2019: "
                   "--resize 256 --center-crop 256x256)" if preprocess.center_crop is None
                   else "resize them")
            raise ShiftlabError(f"images differ in size after preprocessing: {fa} is "
                                f"{a[0]}x{a[1]}, {fb} is {b[0]}x{b[1]}; {fix}")
        files.append(str(path))
        labels.append(label)
        modes.append(mode)
    if bad and not skip_bad:
        if len(bad) == 1:
            raise ShiftlabError(f"{bad[0].reason}{hint}")
        empty = sum(b.reason.endswith(EMPTY) for b in bad)
        raise ShiftlabError(f"{len(bad)} images in {root} are empty or unreadable ({empty} empty); "
                            f"the first: {bad[0].reason}{hint}")
    if not files:
        raise ShiftlabError(f"no image of {root} could be read ({len(bad)} skipped, the first: "
                            f"{bad[0].reason})")
    grey = sum(m in GREY_MODES for m in modes)
    channels = 1 if grey == len(files) else 3
    index = FolderIndex(root, classes, files, labels, channels, next(iter(sizes)),
                        grey_as_rgb=grey if channels == 3 else 0, ignored=ignored, bad=bad)
    if index.grey_as_rgb:
        warnings.warn(f"{root} mixes grey and colour images: {index.grey_as_rgb} grey of "
                      f"{len(files)} read as RGB (3 equal channels)", stacklevel=2)
    if ignored:
        shown = ", ".join(ignored[:3]) + (" …" if len(ignored) > 3 else "")
        warnings.warn(f"{root}: ignored {len(ignored)} non-image file"
                      f"{'s' if len(ignored) != 1 else ''} ({shown})", stacklevel=2)
    return index


# ----------------------------------------------------------------------------- the dataset
class ImageFolderDataset(torch.utils.data.Dataset):
    """Map-style dataset of a scanned folder: item ``i`` is ``(image C×H×W in [0, 1],
    label)`` (label −1 when unlabelled), or a :class:`BadImage` when it cannot be read."""

    def __init__(self, index: FolderIndex, preprocess: Preprocess | None = None):
        self.index, self.preprocess = index, preprocess or Preprocess()

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, i: int):
        path = self.index.files[i]
        try:
            with warnings.catch_warnings():           # workers' warnings would bypass the CLI
                warnings.simplefilter("ignore")
                image, scale = _as_pixels(_open_checked(Path(path), decode=True))
                array = self.preprocess(image, scale)
        except ShiftlabError as err:
            return BadImage(path, str(err))
        except Exception as err:                      # noqa: BLE001 - a decoder's odd failure
            return BadImage(path, f"cannot read image {path}: {one_line(err)}")
        if not np.isfinite(array).all():              # float images (TIFF mode F) only
            return BadImage(path, f"image {path} holds NaN or infinite pixels; fix or remove it")
        if array.shape[0] == 1 and self.index.channels == 3:
            array = np.repeat(array, 3, axis=0)
        if array.shape != self.index.sample_shape:
            return BadImage(path, f"image {path} changed since the folder was scanned "
                                  f"({'x'.join(map(str, array.shape))}, expected "
                                  f"{'x'.join(map(str, self.index.sample_shape))}); run again")
        return torch.from_numpy(array), self.index.labels[i]


def collate_images(items: list) -> tuple[Tensor | None, Tensor, list[BadImage]]:
    """A DataLoader batch: ``(images or None, labels, bad images)``."""
    good = [item for item in items if not isinstance(item, BadImage)]
    bad = [item for item in items if isinstance(item, BadImage)]
    if not good:
        return None, torch.zeros(0, dtype=torch.int64), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


# ----------------------------------------------------------------------------- the stream
def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as ``taskset`` or a container's
    cpuset sets it; else every CPU): the DataLoader's advice for its worker count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):                # no affinity on macOS and Windows
        return os.cpu_count() or 1


class FolderStream:
    """Batches ``(images N×C×H×W, labels or None)`` of an image folder, decoded lazily by a
    DataLoader with ``workers`` processes, in sorted-path order.

    Iterate it (``audit(model, stream)`` does). A file that cannot be read stops the
    iteration with a one-line :class:`ShiftlabError` naming it, or with ``skip_bad`` is
    skipped and listed in :attr:`skipped`. :meth:`record` says what was read and how, for the
    result's provenance (``audit`` stores it as ``provenance.data``).
    """

    def __init__(self, index: FolderIndex, preprocess: Preprocess | None = None, *,
                 batch_size: int = 256, workers: int = 0, skip_bad: bool = False,
                 indices: range | None = None, scan_bad: bool = True):
        if workers < 0:
            raise ShiftlabError(f"workers must be 0 (read in this process) or more, got {workers}")
        if batch_size < 1:
            raise ShiftlabError(f"batch size must be at least 1, got {batch_size}")
        self.workers_asked, cpus = workers, usable_cpus()
        if workers > cpus:                    # the DataLoader would warn, and gain nothing
            warnings.warn(f"--workers {workers} is more than the {cpus} CPU"
                          f"{'s' if cpus != 1 else ''} this process may use; reading with "
                          f"{cpus} worker{'s' if cpus != 1 else ''}", stacklevel=2)
            workers = cpus
        self.index, self.preprocess = index, preprocess or Preprocess()
        self.batch_size, self.workers, self.skip_bad = batch_size, workers, skip_bad
        self.indices = indices if indices is not None else range(len(index.files))
        check_values(batch_size * int(np.prod(index.sample_shape)),
                     f"a batch of {batch_size} {'x'.join(map(str, index.sample_shape))} images",
                     "give a smaller --batch-size or --resize the images")
        self.dataset = ImageFolderDataset(index, self.preprocess)
        subset = self.dataset if len(self.indices) == len(index.files) else \
            torch.utils.data.Subset(self.dataset, self.indices)
        self.loader = torch.utils.data.DataLoader(
            subset, batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=collate_images)
        self.scan_bad = scan_bad            # list the files the header scan refused (one shard does)
        self.skipped: list[BadImage] = list(index.bad) if scan_bad else []

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return self.index.sample_shape

    @property
    def n_images(self) -> int:
        """Images this stream reads (before any is skipped)."""
        return len(self.indices)

    @property
    def classes(self) -> list[str] | None:
        return self.index.classes

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        for _, x, y in self.indexed():
            yield x, y

    def indexed(self) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        """``(position of the batch's first image in the whole folder, images, labels)`` per
        batch. Batch ``b`` is keyed ``indices[b·batch_size]`` whether or not files in it were
        skipped, so keys (the audit's random pairs) are the same in one process and in K."""
        self.skipped = list(self.index.bad) if self.scan_bad else []
        labelled = self.index.classes is not None
        batches = iter(self.loader)
        b = -1
        while True:
            b += 1
            try:
                x, y, bad = next(batches)
            except StopIteration:
                break
            except RuntimeError as err:                   # a worker killed (out of memory, …)
                raise ShiftlabError(f"reading {self.index.root} failed: {one_line(err)}; try "
                                    "fewer --workers") from None
            for item in bad:
                if not self.skip_bad:
                    raise ShiftlabError(item.reason + SKIP_HINT)
                self.skipped.append(item)
            if x is not None:
                yield self.indices[b * self.batch_size], x, (y if labelled else None)
        if self.skipped:
            names = ", ".join(Path(b.file).name for b in self.skipped[:3])
            warnings.warn(f"skipped {len(self.skipped)} unreadable image"
                          f"{'s' if len(self.skipped) != 1 else ''} (--skip-bad): {names}"
                          f"{' …' if len(self.skipped) > 3 else ''}", stacklevel=2)

    def shard(self, rank: int, world: int) -> "FolderStream":
        """Rank ``rank``'s contiguous run of whole batches (:func:`shiftlab.distributed.block`
        over the batches): exact shards, no padding, no duplicates; in rank order they are the
        stream, batch for batch, so K processes compute exactly what one does."""
        from ..distributed import block
        if not 0 <= rank < world:
            raise ShiftlabError(f"rank must be in [0, {world - 1}], got {rank}")
        n, size = len(self.indices), self.batch_size
        run = block(-(-n // size), rank, world)
        block = self.indices[run.start * size:min(run.stop * size, n)]
        shard = FolderStream(self.index, self.preprocess, batch_size=self.batch_size,
                             workers=self.workers, skip_bad=self.skip_bad, indices=block,
                             scan_bad=self.scan_bad and rank == 0)
        shard.workers_asked = self.workers_asked
        return shard

    def record(self) -> dict:
        """Where the images came from and how they were prepared, as data."""
        from PIL import __version__ as pillow
        index = self.index
        return {
            "source": f"folder:{index.root}",
            "layout": "one sub-folder per class" if index.classes is not None else "flat (unlabelled)",
            "classes": index.classes,
            "files": len(index.files) + len(index.bad),
            "images": len(self.indices),
            "first_index": self.indices.start if len(self.indices) else 0,
            "channels": index.channels,
            "grey_read_as_rgb": index.grey_as_rgb,
            "ignored_files": len(index.ignored),
            "skipped_files": len(self.skipped),
            "skipped": [{"file": b.file, "reason": b.reason} for b in self.skipped[:MAX_LISTED]],
            "order": "sorted by path (the same for any number of workers)",
            "reader": f"Pillow {pillow}",
            "preprocess": self.preprocess.record(),
            "loader": self._loader_record(),
        }

    def _loader_record(self) -> dict:
        loader = {"batch_size": self.batch_size, "workers": self.workers}
        if self.workers_asked != self.workers:
            loader.update(workers_asked=self.workers_asked,
                          workers_clamped="at most the CPUs this process may use "
                                          "(os.sched_getaffinity), as the DataLoader advises")
        return loader


def merge_records(records: list[dict]) -> dict | None:
    """One :meth:`FolderStream.record` for shards read by several processes, in rank order:
    image and skipped counts add, the skipped lists join. Other records (data in memory,
    :class:`~shiftlab.data.loaded.Loaded`) are the same on every rank: rank 0's is kept."""
    records = [r for r in records if r]
    if not records:
        return None
    merged = dict(records[0])
    if len(records) > 1 and "skipped_files" in merged:
        merged["images"] = sum(r["images"] for r in records)
        merged["first_index"] = records[0]["first_index"]
        merged["skipped_files"] = sum(r["skipped_files"] for r in records)
        merged["skipped"] = [s for r in records for s in r["skipped"]][:MAX_LISTED]
        merged["processes"] = len(records)
    return merged


def stream_image_folder(directory: str | Path, preprocess: Preprocess | None = None, *,
                        batch_size: int = 256, workers: int = 0, skip_bad: bool = False,
                        limit: int | None = None) -> FolderStream:
    """Scan ``directory`` (headers only) and return a :class:`FolderStream` over its first
    ``limit`` images (all by default), ``batch_size`` per batch, ``workers`` processes.

    >>> # stream = stream_image_folder("val/", Preprocess(resize=256, center_crop=(256, 256)),
    >>> #                              batch_size=64, workers=4)
    >>> # audit(model, stream, protocol="crop", crop=(224, 224), normalize="imagenet")
    """
    index = scan_image_folder(directory, preprocess, skip_bad=skip_bad, hint=SKIP_HINT)
    n = len(index.files) if limit is None else min(int(limit), len(index.files))
    return FolderStream(index, preprocess, batch_size=batch_size, workers=workers,
                        skip_bad=skip_bad, indices=range(n))


def load_image_folder(directory: str | Path, preprocess: Preprocess | None = None
                      ) -> tuple[Tensor, Tensor | None, list[str] | None]:
    """The whole folder in memory: images ``(N, C, H, W)`` in [0, 1], labels (None for a
    flat folder) and class names; at most ``MAX_VALUES`` values, checked before decoding.

    Grey images give C = 1; if any image has colour, all are read as RGB. All images must
    share one size after ``preprocess``.
    """
    index = scan_image_folder(directory, preprocess)
    check_values(len(index.files) * int(np.prod(index.sample_shape)),
                 f"image folder {index.root} ({len(index.files)} images of "
                 f"{'x'.join(map(str, index.sample_shape))})",
                 "use fewer or smaller images, or stream it (shiftlab audit reads folders lazily)")
    dataset = ImageFolderDataset(index, preprocess)
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, BadImage):
            raise ShiftlabError(item.reason)
        images.append(item[0])
        labels.append(item[1])
    y = torch.tensor(labels) if index.classes is not None else None
    return torch.stack(images), y, index.classes
