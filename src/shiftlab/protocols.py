"""What each shift protocol is called and what it can do, declared without torch.

A protocol's behaviour (how it moves inputs, its induced action on a stride-``s`` map, its
valid region, its consistency pairs) is its class in :mod:`shiftlab.actions`. Those
classes take their name and capability flags from the declarations here, by inheritance,
so the command line and the report, which start without importing torch, ask a protocol
what it can do instead of comparing its name:

>>> protocol_names()
['circular', 'canvas', 'crop', 'fractional']
>>> capabilities("canvas").circular, names_with("has_half_pixel")
(False, ['circular', 'fractional'])
>>> capabilities("rot90") is None
True
"""
from __future__ import annotations

from typing import ClassVar

__all__ = ["Protocol", "Circular", "Canvas", "Crop", "Fractional", "protocol_names",
           "capabilities", "names_with", "CROP_OFFSETS"]


class Protocol:
    """A shift protocol's name and capabilities (class attributes, read from the class)."""

    name: ClassVar[str] = "shift"
    circular: ClassVar[bool] = True        # feature positions wrap around; nothing is lost
    fills: ClassVar[bool] = False          # content that leaves the frame gives way to a fill:
                                           # the law compares only positions whose receptive
                                           # field met neither the band that left nor the one
                                           # that entered (measured, shiftlab.law)
    integer: ClassVar[bool] = True         # shifts are whole pixels
    inexact: ClassVar[str] = "nearest"     # the alignment used where the stride does not
                                           # divide the shift ("nearest" or "fourier")
    default_shifts: ClassVar[str] = "-4:4"  # the grid when none is given
    has_half_pixel: ClassVar[bool] = False  # band-limited shifts by any real amount exist:
                                            # the half-pixel gap and consistency (--half-pixel)
    has_all_shifts: ClassVar[bool] = False  # the shifts of an input are a finite group of
                                            # integer rolls, so every one of them can be
                                            # counted (periodic.all_shifts, --all-shifts)
    needs_crop: ClassVar[bool] = False      # moves a window (--crop) over a larger input


class Circular(Protocol):
    name = "circular"
    has_half_pixel = True
    has_all_shifts = True


class Canvas(Protocol):
    name = "canvas"
    circular = False
    fills = True


class Crop(Protocol):
    name = "crop"
    circular = False
    needs_crop = True


class Fractional(Protocol):
    name = "fractional"
    integer = False
    inexact = "fourier"
    default_shifts = "-2:2:0.5"
    has_half_pixel = True


#: How the crop protocol draws window offsets for consistency pairs (``crop_offsets``).
CROP_OFFSETS = {
    "zhang": "[0, D) (Zhang 2019 and antialiased-cnns: randint(D))",
    "inclusive": "[0, D] (every window position)",
}

_DECLARED: dict[str, type[Protocol]] = {p.name: p for p in (Circular, Canvas, Crop, Fractional)}


def protocol_names() -> list[str]:
    """The protocols' names, in the order the command line offers them."""
    return list(_DECLARED)


def capabilities(name: str) -> type[Protocol] | None:
    """The declaration of the protocol called ``name`` (its flags), None if there is none."""
    return _DECLARED.get(name)


def names_with(flag: str) -> list[str]:
    """The names of the protocols that have the capability ``flag`` (e.g. ``"needs_crop"``)."""
    return [name for name, p in _DECLARED.items() if getattr(p, flag)]
