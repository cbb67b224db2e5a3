"""Evaluation preprocessing of decoded images, as the reference evaluations do it, and the
per-channel normalisation the audit applies after each shift.

Per image, in this order (torchvision's ImageNet evaluation transforms on PIL images, which
Zhang 2019's and the timm evaluations use):

1. **resize** ``S``: the shorter side to ``S``, the longer to ``int(S · long / short)``
   (``torchvision.transforms.Resize(S)``), resampled by Pillow's ``Image.resize`` with the
   ``BILINEAR`` filter (torchvision's default; ``BICUBIC`` is timm's). Pillow's filters are
   antialiased: when reducing, the filter's support widens by the reduction factor.
   8-bit images are resampled in 8 bits (as torchvision does on PIL images), 16-bit and
   float images in 32-bit float.
2. **center crop** ``H×W``: the window at top ``round((h − H) / 2)``, left
   ``round((w − W) / 2)`` (``torchvision.transforms.CenterCrop``; Python's ``round``).
3. **canvas** ``N``: the image centred on an ``N×N`` black canvas (top-left corner
   ``((N − h) // 2, (N − w) // 2)``, as :func:`~shiftlab.data.canvas.place_on_canvas`).
4. **to [0, 1]**: 8-bit values ``/ 255`` (``ToTensor``), 16-bit ``/ 65535``, float as is.

Normalisation is not a step here: ``(x − mean) / std`` per channel is applied by the audit
engine to every input right *after* the shift and before the forward
(:attr:`shiftlab.config.AuditConfig.normalize`), so a canvas background is black in pixel
space, as the unnormalised image's black.

>>> Preprocess(resize=256, center_crop=(224, 224)).output_size((427, 640))
(224, 224)
>>> Preprocess(resize=256).output_size((427, 640))      # torchvision: int(256 * 640 / 427)
(256, 383)
>>> normalization("0.5;0.25")
((0.5,), (0.25,))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftlabError
from .limits import MAX_IMAGE_PIXELS

__all__ = ["Preprocess", "INTERPOLATIONS", "IMAGENET", "NORMALIZATIONS", "normalization",
           "check_channels", "normalize", "normalization_record"]

#: Pillow resampling filters by name (both antialiased when reducing).
INTERPOLATIONS = ("bilinear", "bicubic")

#: torchvision's ImageNet statistics (mean, std per RGB channel), used by its and timm's
#: pretrained ResNets.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZATIONS = {"imagenet": IMAGENET}

#: The largest ``--resize`` side (an image's longer side then grows with its aspect ratio;
#: every resized image is also held to ``MAX_IMAGE_PIXELS``).
MAX_RESIZE = 4096


def _text(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


@dataclass(frozen=True)
class Preprocess:
    """The evaluation pipeline of an image folder (see the module doc), checked at construction.

    ``resize``: shorter side in pixels (None: keep); ``center_crop``: ``(H, W)`` (None: keep);
    ``canvas``: side of a black square canvas the image is centred on (None: none);
    ``interpolation``: ``"bilinear"`` (default) or ``"bicubic"``.
    """

    resize: int | None = None
    center_crop: tuple[int, int] | None = None
    canvas: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.resize is not None and not (isinstance(self.resize, int) and 1 <= self.resize <= MAX_RESIZE):
            raise ShiftlabError(f"resize must be a whole number of pixels in [1, {MAX_RESIZE}], "
                                f"got {self.resize!r}")
        if self.center_crop is not None:
            crop = tuple(self.center_crop)
            if len(crop) != 2 or not all(isinstance(v, int) and v >= 1 for v in crop):
                raise ShiftlabError(f"center crop must be two positive sizes (H, W), got {self.center_crop!r}")
            object.__setattr__(self, "center_crop", crop)
        if self.canvas is not None and not (isinstance(self.canvas, int) and self.canvas >= 1):
            raise ShiftlabError(f"canvas must be a positive size, got {self.canvas!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ShiftlabError(f"unknown interpolation {self.interpolation!r}; choose one of "
                                f"{', '.join(INTERPOLATIONS)}")
        if self.resize is not None and self.center_crop is not None and max(self.center_crop) > self.resize:
            raise ShiftlabError(f"--resize {self.resize} is smaller than the --center-crop "
                                f"{_text(self.center_crop)}: the shorter side after resizing must "
                                f"hold the crop; resize to at least {max(self.center_crop)}")
        if self.canvas is not None and self.center_crop is not None and max(self.center_crop) > self.canvas:
            raise ShiftlabError(f"--canvas {self.canvas} is smaller than the --center-crop "
                                f"{_text(self.center_crop)}; use --canvas {max(self.center_crop)} or more")

    # --- sizes, from an image's header -------------------------------------------------
    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` after the resize step (torchvision's rule: the longer side truncated)."""
        h, w = size
        if self.resize is None:
            return h, w
        if w <= h:
            return int(self.resize * h / w), self.resize
        return self.resize, int(self.resize * w / h)

    def output_size(self, size: tuple[int, int], name: str = "an image") -> tuple[int, int]:
        """``(h, w)`` of the preprocessed image of a ``size = (h, w)`` image, or a one-line
        error naming ``name`` when a step cannot apply to it."""
        h, w = self.resized_size(size)
        if h * w > MAX_IMAGE_PIXELS:
            raise ShiftlabError(f"{name} ({_text(size)}) resized to {h}x{w} has more than "
                                f"{MAX_IMAGE_PIXELS:,} pixels (4096x4096); give a smaller --resize")
        if self.center_crop is not None:
            ch, cw = self.center_crop
            if ch > h or cw > w:
                how = f"resized to {h}x{w}" if self.resize is not None else f"{h}x{w}"
                raise ShiftlabError(f"{name} is {how}, smaller than the --center-crop "
                                    f"{ch}x{cw}; add --resize {max(ch, cw)} (or larger) or give a "
                                    "smaller crop")
            h, w = ch, cw
        if self.canvas is not None:
            if self.canvas < max(h, w):
                raise ShiftlabError(f"--canvas {self.canvas} is smaller than {name} ({h}x{w} after "
                                    f"preprocessing); use --canvas {max(h, w)} or more")
            h, w = self.canvas, self.canvas
        return h, w

    # --- the pixels -------------------------------------------------------------------
    def __call__(self, image, scale: float) -> np.ndarray:
        """A decoded Pillow image (mode ``L``, ``F`` or ``RGB``) → ``float32`` array
        ``(C, H, W)``, its values divided by ``scale`` (255 for 8 bits, 65535 for 16)."""
        from PIL import Image
        if self.resize is not None:
            h, w = self.resized_size((image.height, image.width))
            if (h, w) != (image.height, image.width):
                filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
                image = image.resize((w, h), filters[self.interpolation])
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)     # (C, h, w)
        if self.center_crop is not None:
            ch, cw = self.center_crop
            top = int(round((array.shape[1] - ch) / 2.0))
            left = int(round((array.shape[2] - cw) / 2.0))
            array = array[:, top:top + ch, left:left + cw]
        if self.canvas is not None:
            c, h, w = array.shape
            canvas = np.zeros((c, self.canvas, self.canvas), np.float32)
            top, left = (self.canvas - h) // 2, (self.canvas - w) // 2
            canvas[:, top:top + h, left:left + w] = array
            array = canvas
        if scale != 1:
            array = array / np.float32(scale)
        array = np.ascontiguousarray(array, dtype=np.float32)
        # a float image (mode F) not resized, cropped nor scaled is still Pillow's read-only
        # buffer, which torch.from_numpy warns about
        return array if array.flags.writeable else array.copy()

    def record(self) -> dict:
        """The pipeline as data, for the result's provenance."""
        from PIL import __version__ as pillow
        steps = []
        if self.resize is not None:
            steps.append(f"resize the shorter side to {self.resize} (longer: int({self.resize} * "
                         f"long / short)), Pillow {pillow} {self.interpolation.upper()}, "
                         "antialiased (torchvision's Resize on PIL images)")
        if self.center_crop is not None:
            steps.append(f"center crop {_text(self.center_crop)} (torchvision's CenterCrop)")
        if self.canvas is not None:
            steps.append(f"centre on a black {self.canvas}x{self.canvas} canvas")
        steps.append("to [0, 1]: 8-bit / 255, 16-bit / 65535")
        return {"resize": self.resize, "interpolation": self.interpolation if self.resize else None,
                "resampler": f"Pillow {pillow} Image.resize" if self.resize else None,
                "center_crop": list(self.center_crop) if self.center_crop else None,
                "canvas": self.canvas, "steps": steps}


# ----------------------------------------------------------------------------- normalisation
def normalization(spec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` per channel from ``None``, a name (``"imagenet"``), the text
    ``"MEAN,...;STD,..."`` or a ``(mean, std)`` pair of sequences; a one-line error
    otherwise (unknown name, lengths that differ, a std that is not positive)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in NORMALIZATIONS:
            return NORMALIZATIONS[text.lower()]
        if ";" not in text:
            raise ShiftlabError(f"unknown normalisation {spec!r}; give one of "
                                f"{', '.join(NORMALIZATIONS)} or MEAN,...;STD,... (e.g. "
                                "0.485,0.456,0.406;0.229,0.224,0.225)")
        mean_text, _, std_text = text.partition(";")
        try:
            spec = ([float(v) for v in mean_text.split(",")], [float(v) for v in std_text.split(",")])
        except ValueError:
            raise ShiftlabError(f"normalisation {spec!r} is not MEAN,...;STD,... with numbers "
                                "(e.g. 0.485,0.456,0.406;0.229,0.224,0.225)") from None
    try:
        mean, std = (tuple(float(v) for v in part) for part in spec)
    except (TypeError, ValueError):
        raise ShiftlabError(f"normalisation must be a name, MEAN,...;STD,... or a (mean, std) "
                            f"pair of number sequences, got {spec!r}") from None
    if not mean or len(mean) != len(std):
        raise ShiftlabError(f"normalisation needs one mean and one std per channel: got "
                            f"{len(mean)} means and {len(std)} stds")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise ShiftlabError(f"normalisation means must be finite and stds positive, got mean "
                            f"{list(mean)}, std {list(std)}")
    _check_float32(mean, std)
    return mean, std


def _check_float32(mean, std) -> None:
    """A one-line error when float32 (the inputs' precision) cannot hold a mean, or a std
    as a normal number: a std that underflows to 0 or is subnormal makes ``1 / std``
    infinite, one that overflows makes every input 0."""
    f32 = np.finfo(np.float32)
    for kind, values in (("mean", mean), ("std", std)):
        for v in values:
            with np.errstate(over="ignore"):
                held = np.float32(v)
            what = ("infinite" if not np.isfinite(held) else
                    "0" if held == 0 and v != 0 else
                    "subnormal" if kind == "std" and held < f32.tiny else None)
            if what:
                raise ShiftlabError(f"normalisation {kind} {v:g} is {what} in float32, the "
                                    f"inputs' precision; give means and stds float32 holds (stds "
                                    f"from {float(f32.tiny):.3g} to {float(f32.max):.3g})")


def check_channels(norm, channels: int, what: str = "the inputs have") -> None:
    """A one-line error when ``norm = (mean, std)`` does not have one value per channel."""
    if norm is not None and len(norm[0]) != channels:
        kind = {1: " (grey)", 3: " (RGB)"}.get(channels, "")
        plural = "s" if channels != 1 else ""
        raise ShiftlabError(f"the normalisation has {len(norm[0])} means and stds but {what} "
                            f"{channels} channel{plural}{kind}; give {channels} value{plural} "
                            "each (MEAN,...;STD,...)")


def normalize(x: Tensor, norm) -> Tensor:
    """``(x − mean) / std`` per channel (axis 1) of ``N×C×…`` inputs; ``norm = (mean, std)``."""
    mean, std = norm
    check_channels(norm, x.shape[1])
    view = (1, -1) + (1,) * (x.ndim - 2)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(view)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(view)
    return (x - m) / s


def normalization_record(norm) -> dict | None:
    """``norm`` as data for the result's provenance."""
    if norm is None:
        return None
    return {"mean": list(norm[0]), "std": list(norm[1]),
            "applied": "(x - mean) / std per channel, to every input after the shift, right "
                       "before the forward (a canvas background is black in pixel space)"}
