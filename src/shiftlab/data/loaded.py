"""Data held in memory, with what a result should record about it.

:func:`~shiftlab.data.load_data` returns a :class:`Loaded`: the pair ``(inputs, labels or
None)`` (it unpacks, indexes and audits as that tuple) whose :meth:`Loaded.record` says
what the spec alone does not: that spoken digits are synthetic formant vowels rather than
speech, or that integer audio was scaled by its type's range. ``audit`` stores the record
as the result's ``provenance.data``, as it stores an image folder's.

>>> import torch
>>> data = Loaded(torch.zeros(2, 1, 8), None, {"source": "signals:a.npy"})
>>> x, y = data
>>> x.shape, y, data.record()
(torch.Size([2, 1, 8]), None, {'source': 'signals:a.npy'})
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["Loaded"]


class Loaded(tuple):
    """``(inputs, labels or None)`` and a record of where they came from (or None: the
    spec says it all)."""

    def __new__(cls, x: Tensor, y: Tensor | None, record: dict | None = None):
        self = super().__new__(cls, (x, y))
        self._record = None if record is None else dict(record)
        return self

    def __reduce__(self):                               # tuple's own would drop the record
        return Loaded, (self[0], self[1], self._record)

    def record(self) -> dict | None:
        """What the result's ``provenance.data`` holds for these data (a copy), or None."""
        return None if self._record is None else dict(self._record)

    def with_data(self, x: Tensor, y: Tensor | None) -> "Loaded":
        """Other inputs and labels cut from these (a limit, a canvas), with the same record."""
        return Loaded(x, y, self._record)
