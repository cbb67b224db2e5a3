"""What every experiment returns: plain data a terminal, a JSON file and the report all read.

An experiment writes ``experiment-NAME.json`` (this dataclass) and its figures (PNG + SVG)
into one folder; the HTML report renders one section per such file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ShiftlabError
from ..fmt import text_table
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
        """The rows as an aligned text table (cells formatted by :func:`shiftlab.fmt.cell`)."""
        return text_table(self.rows, self.columns)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / f"experiment-{self.name}.json"
        return write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentResult":
        """Read ``experiment-NAME.json`` back, checking every field's type."""
        try:
            data = json.loads(Path(path).read_text())
            result = cls(**data)
        except (OSError, ValueError, TypeError) as err:
            raise ShiftlabError(f"{path} is not an experiment result ({type(err).__name__}); "
                                "re-run the experiment") from None
        problem = _type_problem(result)
        if problem:
            raise ShiftlabError(f"{path} is not a valid experiment result: {problem}; re-run the experiment")
        return result


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _type_problem(result: ExperimentResult) -> str | None:
    """What is wrong with the field types of a loaded result, or None."""
    for name in ("name", "title", "summary"):
        if not isinstance(getattr(result, name), str):
            return f"{name} must be a string"
    if not _is_str_list(result.columns):
        return "columns must be a list of strings"
    if not isinstance(result.rows, list) or not all(isinstance(r, list) for r in result.rows):
        return "rows must be a list of lists"
    if not isinstance(result.claims, dict) or not all(isinstance(v, bool) for v in result.claims.values()):
        return "claims must map each claim to true or false"
    if not _is_str_list(result.figures):
        return "figures must be a list of file names"
    if not isinstance(result.numbers, dict) or not isinstance(result.settings, dict):
        return "numbers and settings must be objects"
    if result.seconds is not None and (isinstance(result.seconds, bool)
                                       or not isinstance(result.seconds, (int, float))):
        return "seconds must be a number or null"
    return None
