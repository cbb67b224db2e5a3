"""Which shifts to try: an ordered set of ``(dy, dx)`` pairs, optionally a grid.

A grid knows its neighbours (consecutive steps along x and along y), which is what the
flip rate and the stability curves walk along.

Spec strings (the CLI's ``--shifts``):

=================  =========================================================
``-4:4``           the square grid dy, dx ∈ {-4, …, 4} (81 shifts)
``-2:2:0.5``       the same with step 0.5 (for the fractional protocol)
``x=-8:8``         a horizontal line: dx ∈ {-8, …, 8}, dy = 0
``y=-8:8``         a vertical line
``0,0;1,2;-3,4``   an explicit list of ``dy,dx`` pairs
=================  =========================================================

Caps: at most ``MAX_AXIS`` = 10,000 values per axis and ``MAX_SHIFTS`` = 40,000 shifts in
all (a ``-99:99`` grid is 199 x 199 = 39,601): every shift costs a forward pass per image,
and a grid past the cap would not fit in memory long before it finished.

>>> s = ShiftSet.parse("-1:1")
>>> len(s), s.shape, s.zero_index
(9, (3, 3), 4)
>>> ShiftSet.parse("x=0:2").shifts
((0.0, 0.0), (0.0, 1.0), (0.0, 2.0))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .errors import ShiftlabError

MAX_AXIS = 10_000          # values along one axis of a grid
MAX_SHIFTS = 40_000        # shifts in a set (a grid's rows x columns, or a list of pairs)


def _check_count(count: int, spec: str) -> None:
    if count > MAX_SHIFTS:
        raise ShiftlabError(f"shifts {spec!r} are {count:,} shifts, more than the cap of "
                            f"{MAX_SHIFTS:,} (e.g. -99:99 is 39,601); use a smaller range or a "
                            "larger step")


def _range(spec: str) -> tuple[float, ...]:
    parts = spec.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise ShiftlabError(f"bad shift range {spec!r}; write START:STOP or START:STOP:STEP") from None
    if len(nums) not in (2, 3):
        raise ShiftlabError(f"bad shift range {spec!r}; write START:STOP or START:STOP:STEP")
    if not all(math.isfinite(v) for v in nums):
        raise ShiftlabError(f"bad shift range {spec!r}: numbers must be finite")
    start, stop = nums[0], nums[1]
    step = nums[2] if len(nums) == 3 else 1.0
    if step <= 0 or stop < start:
        raise ShiftlabError(f"bad shift range {spec!r}: need STOP >= START and STEP > 0")
    steps = (stop - start) / step                      # may overflow to inf: compare as float
    if not steps + 1 <= MAX_AXIS:
        raise ShiftlabError(f"shift range {spec!r} has {steps + 1:.3g} values, more than the cap "
                            f"of {MAX_AXIS:,} per axis; use a smaller range or a larger step")
    count = int(round(steps)) + 1
    return tuple(round(start + i * step, 9) for i in range(count))


@dataclass(frozen=True)
class ShiftSet:
    """Ordered ``(dy, dx)`` shifts; ``ys``/``xs`` are set when they form a full grid."""

    shifts: tuple[tuple[float, float], ...]
    ys: tuple[float, ...] | None = None
    xs: tuple[float, ...] | None = None
    spec: str = ""

    # --- construction ---------------------------------------------------------------
    @classmethod
    def grid(cls, ys: Sequence[float], xs: Sequence[float], spec: str = "") -> "ShiftSet":
        ys, xs = tuple(float(v) for v in ys), tuple(float(v) for v in xs)
        _check_count(len(ys) * len(xs), spec or f"grid {len(ys)}x{len(xs)}")
        shifts = tuple((y, x) for y in ys for x in xs)
        return cls(shifts, ys, xs, spec or f"grid {len(ys)}x{len(xs)}")

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[float]], spec: str = "") -> "ShiftSet":
        pairs = list(pairs)
        _check_count(len(pairs), spec or "the list of pairs")
        shifts = tuple((float(p[0]), float(p[1])) for p in pairs)
        if not all(math.isfinite(v) for pair in shifts for v in pair):
            raise ShiftlabError("shifts must be finite numbers")
        if not shifts:
            raise ShiftlabError("no shifts given; give at least one (dy, dx) pair")
        return cls(shifts, spec=spec or ";".join(f"{y:g},{x:g}" for y, x in shifts))

    @classmethod
    def parse(cls, spec: "str | ShiftSet | Sequence") -> "ShiftSet":
        """Build from a spec string (see the module doc), a list of pairs, or a ShiftSet."""
        if isinstance(spec, ShiftSet):
            return spec
        if not isinstance(spec, str):
            return cls.from_pairs(spec)
        text = spec.strip().replace(" ", "")
        if text.startswith(("x=", "y=")):
            values = _range(text[2:])
            ys, xs = ((0.0,), values) if text[0] == "x" else (values, (0.0,))
            return cls.grid(ys, xs, spec=text)
        if ":" in text and "," not in text:
            values = _range(text)
            return cls.grid(values, values, spec=text)
        try:
            pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item]
        except ValueError:
            pairs = [()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ShiftlabError(f"cannot read shifts {spec!r}; write e.g. '-4:4', 'x=-8:8' "
                                "or '0,0;1,2'")
        return cls.from_pairs(pairs, spec=text)

    # --- views ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shifts)

    @property
    def shape(self) -> tuple[int, int] | None:
        """``(len(ys), len(xs))`` for a grid, else ``None``."""
        return (len(self.ys), len(self.xs)) if self.ys is not None else None

    @property
    def integer(self) -> bool:
        return all(float(v).is_integer() for pair in self.shifts for v in pair)

    @property
    def zero_index(self) -> int | None:
        """Position of the identity ``(0, 0)``, if present."""
        try:
            return self.shifts.index((0.0, 0.0))
        except ValueError:
            return None

    def tensor(self) -> torch.Tensor:
        """``(K, 2)`` float64 tensor of the shifts."""
        return torch.tensor(self.shifts, dtype=torch.float64).reshape(-1, 2)

    def neighbours(self) -> torch.Tensor:
        """``(E, 2)`` index pairs of consecutive grid steps (along x, then along y)."""
        if self.shape is None:
            return torch.zeros(0, 2, dtype=torch.int64)
        ny, nx = self.shape
        idx = torch.arange(ny * nx).reshape(ny, nx)
        along_x = torch.stack([idx[:, :-1].flatten(), idx[:, 1:].flatten()], 1)
        along_y = torch.stack([idx[:-1, :].flatten(), idx[1:, :].flatten()], 1)
        return torch.cat([along_x, along_y])

    @property
    def step(self) -> float | None:
        """The grid step in pixels (``None`` when the set is not a regular grid)."""
        steps = {round(b - a, 9) for axis in (self.ys or (), self.xs or ())
                 for a, b in zip(axis, axis[1:])}
        return steps.pop() if len(steps) == 1 else None

    def max_abs(self) -> float:
        return max(abs(v) for pair in self.shifts for v in pair)
