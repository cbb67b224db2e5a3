"""What every experiment returns: plain data a terminal, a JSON file and the report all read.

An experiment writes ``experiment-NAME.json`` (this dataclass) and its figures (PNG + SVG)
into one folder; the HTML report renders one section per such file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ShiftlabError
from ..io import write_text_atomic


@dataclass
class ExperimentResult:
    """One experiment's outcome.

    Attributes:
        name: registry name, e.g. ``"pooling"``.
        title: a heading for the report.
        summary: two or three plain sentences: what is shown and why it matters.
        columns, rows: the numbers table (rows of plain str/int/float).
        claims: the key claim(s) checked, ``{"claim text": True/False}``.
        figures: figure file names (PNG), relative to the result's folder.
        numbers: any further named numbers a test or a reader wants.
        settings: the settings that produced it (seed, sizes, epochs...).
    """
    name: str
    title: str
    summary: str
    columns: list[str]
    rows: list[list]
    claims: dict[str, bool] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    seconds: float | None = None

    def table(self) -> str:
        """The rows as an aligned text table."""
        cells = [self.columns] + [[_fmt(v) for v in r] for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / f"experiment-{self.name}.json"
        return write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentResult":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ShiftlabError(f"{path} is not an experiment result ({type(err).__name__})") from None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
