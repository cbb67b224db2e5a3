"""Which shifts to try: an ordered set of shifts, one entry per spatial axis (``(dy, dx)``
for images, ``(dt,)`` for 1-D signals), optionally a grid.

A grid knows its neighbours (consecutive steps along each axis: x, then y), which is what
the flip rate and the stability curves walk along.

Spec strings (the CLI's ``--shifts``), for images (``rank=2``) and for signals (``rank=1``):

=================  ===================================================  ======================
spec               images                                               signals
=================  ===================================================  ======================
``-4:4``           the square grid dy, dx ∈ {-4, …, 4} (81 shifts)      dt ∈ {-4, …, 4} (9)
``-2:2:0.5``       the same with step 0.5 (fractional protocol)         the same
``x=-8:8``         a horizontal line: dx ∈ {-8, …, 8}, dy = 0           the same as ``-8:8``
``y=-8:8``         a vertical line                                      refused (no y axis)
``0,0;1,2;-3,4``   an explicit list of ``dy,dx`` pairs                  ``0;1;-3``
=================  ===================================================  ======================

Caps: at most ``MAX_AXIS`` = 10,000 values per axis and ``MAX_SHIFTS`` = 40,000 shifts in
all (a ``-99:99`` grid is 199 x 199 = 39,601): every shift costs a forward pass per image,
and a grid past the cap would not fit in memory long before it finished.

>>> s = ShiftSet.parse("-1:1")
>>> len(s), s.shape, s.zero_index
(9, (3, 3), 4)
>>> ShiftSet.parse("x=0:2").shifts
((0.0, 0.0), (0.0, 1.0), (0.0, 2.0))
>>> ShiftSet.parse("-1:1", rank=1).shifts
((-1.0,), (0.0,), (1.0,))
"""
from __future__ import annotations

import itertools
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
    """Ordered shifts of one rank; ``axes`` holds each axis's values when they form a
    full grid (the last axis varies fastest)."""

    shifts: tuple[tuple[float, ...], ...]
    axes: tuple[tuple[float, ...], ...] | None = None
    spec: str = ""

    # --- construction ---------------------------------------------------------------
    @classmethod
    def grid(cls, *axes: Sequence[float], spec: str = "") -> "ShiftSet":
        """Every combination of the values per axis: ``grid(ys, xs)`` or ``grid(ts)``."""
        axes = tuple(tuple(float(v) for v in a) for a in axes)
        _check_count(math.prod(len(a) for a in axes),
                     spec or f"grid {'x'.join(str(len(a)) for a in axes)}")
        shifts = tuple(itertools.product(*axes))
        return cls(shifts, axes, spec or f"grid {'x'.join(str(len(a)) for a in axes)}")

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[float]], spec: str = "", rank: int = 2) -> "ShiftSet":
        """An explicit list of shifts, each with ``rank`` entries."""
        pairs = list(pairs)
        _check_count(len(pairs), spec or "the list of shifts")
        shifts = tuple(tuple(float(v) for v in (p if isinstance(p, (tuple, list, torch.Tensor))
                                                 else (p,))) for p in pairs)
        if not shifts:
            raise ShiftlabError("no shifts given; give at least one shift")
        if any(len(p) != rank for p in shifts):
            bad = next(p for p in shifts if len(p) != rank)
            raise ShiftlabError(f"a {len(bad)}-D shift {bad} for {rank}-D data; give "
                                + ("one number per shift" if rank == 1 else f"{rank} numbers per shift"))
        if not all(math.isfinite(v) for pair in shifts for v in pair):
            raise ShiftlabError("shifts must be finite numbers")
        return cls(shifts, spec=spec or ";".join(",".join(f"{v:g}" for v in p) for p in shifts))

    @classmethod
    def parse(cls, spec: "str | ShiftSet | Sequence", rank: int = 2) -> "ShiftSet":
        """Build from a spec string (see the module doc), a list of shifts, or a ShiftSet,
        for data with ``rank`` spatial axes."""
        if isinstance(spec, ShiftSet):
            if spec.rank != rank:
                raise ShiftlabError(f"{spec.rank}-D shifts ({spec.spec}) for {rank}-D data")
            return spec
        if not isinstance(spec, str):
            return cls.from_pairs(spec, rank=rank)
        text = spec.strip().replace(" ", "")
        if text.startswith(("x=", "y=", "t=")):
            if rank == 1 and text[0] == "y":
                raise ShiftlabError(f"a 2-D shift grid {spec!r} for 1-D data: signals have one "
                                    "axis; write e.g. -8:8 or x=-8:8")
            if rank == 2 and text[0] == "t":
                raise ShiftlabError(f"{spec!r} names the time axis of 1-D signals; for images "
                                    "write x=… (horizontal) or y=… (vertical)")
            values = _range(text[2:])
            if rank == 1:
                return cls.grid(values, spec=text)
            return cls.grid(*(((0.0,), values) if text[0] == "x" else (values, (0.0,))), spec=text)
        if ":" in text and "," not in text and ";" not in text:
            values = _range(text)
            return cls.grid(*([values] * rank), spec=text)
        try:
            pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item]
        except ValueError:
            pairs = [()]
        if not pairs or any(len(p) not in (1, 2) for p in pairs):
            raise ShiftlabError(f"cannot read shifts {spec!r}; write e.g. '-4:4', 'x=-8:8' "
                                + ("or '0;1;-2'" if rank == 1 else "or '0,0;1,2'"))
        return cls.from_pairs(pairs, spec=text, rank=rank)

    # --- views ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shifts)

    @property
    def rank(self) -> int:
        return len(self.shifts[0])

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The number of values per axis for a grid, else ``None``."""
        return tuple(len(a) for a in self.axes) if self.axes is not None else None

    @property
    def integer(self) -> bool:
        return all(float(v).is_integer() for pair in self.shifts for v in pair)

    @property
    def zero_index(self) -> int | None:
        """Position of the identity ``(0, …)``, if present."""
        try:
            return self.shifts.index((0.0,) * self.rank)
        except ValueError:
            return None

    def tensor(self) -> torch.Tensor:
        """``(K, rank)`` float64 tensor of the shifts."""
        return torch.tensor(self.shifts, dtype=torch.float64).reshape(-1, self.rank)

    def neighbours(self) -> torch.Tensor:
        """``(E, 2)`` index pairs (earlier, later) of consecutive grid steps along each
        axis: x (the last axis) first, then y."""
        if self.shape is None:
            return torch.zeros(0, 2, dtype=torch.int64)
        idx = torch.arange(len(self.shifts)).reshape(self.shape)
        steps = []
        for axis in reversed(range(len(self.shape))):
            a = idx.narrow(axis, 0, self.shape[axis] - 1).flatten()
            b = idx.narrow(axis, 1, self.shape[axis] - 1).flatten()
            steps.append(torch.stack([a, b], 1))
        return torch.cat(steps)

    @property
    def step(self) -> float | None:
        """The grid step in pixels (``None`` when the set is not a regular grid)."""
        steps = {round(b - a, 9) for axis in (self.axes or ()) for a, b in zip(axis, axis[1:])}
        return steps.pop() if len(steps) == 1 else None

    def max_abs(self) -> float:
        return max(abs(v) for pair in self.shifts for v in pair)
