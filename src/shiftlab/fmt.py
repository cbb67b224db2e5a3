"""How numbers look in text: one place for percentages, table cells and aligned text tables.

The terminal (``ExperimentResult.table``) and the HTML report format values the same way.
A missing value (``None``) is shown as an en dash.

>>> pct(0.1234), pct(None), number(2 / 3), cell(True), points(0.0713)
('12.3 %', '–', '0.6667', 'yes', '7.1 pt')
>>> print(text_table([["a", 1.5], ["bb", None]], ["name", "value"]))
name  value
----  -----
a     1.5
bb    –
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MISSING", "pct", "points", "number", "cell", "text_table"]

MISSING = "–"


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal: ``0.1234 -> "12.3 %"``."""
    return MISSING if value is None else f"{100 * value:.1f} %"


def points(value: float | None) -> str:
    """A difference of two fractions in percentage points: ``0.0713 -> "7.1 pt"``."""
    return MISSING if value is None else f"{100 * value:.1f} pt"


def number(value: float | None) -> str:
    """A number with 4 significant digits: ``2/3 -> "0.6667"``, ``1234567 -> "1.235e+06"``."""
    return MISSING if value is None else f"{value:.4g}"


def cell(value) -> str:
    """One table cell: booleans as yes/no, floats as :func:`number`, the rest as ``str``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    return str(value)


def text_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """``rows`` under ``header`` as left-aligned columns, a dashed rule under the header."""
    cells = [[str(h) for h in header]] + [[cell(v) for v in row] for row in rows]
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(width)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
