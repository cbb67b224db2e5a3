"""What every experiment returns: plain data a terminal, a JSON file and the report all read.

Every experiment module has the same parts:

* ``compute(*, seed, quick, log) -> dict``: every number, as plain data (str, int, float,
  bool, None, lists and str-keyed dicts of them; ``data["settings"]`` says how it was made).
  No matplotlib: the claims can be computed and tested without drawing anything.
* ``draw(data, out) -> list[Path]``: the figures (PNG + SVG) from that data alone; returns
  the PNGs.
* ``claims(data) -> {claim: bool}``: the claims, checked on that data.
* ``summarise(data, figures) -> ExperimentResult``: the claims, the table and the summary.
* ``run(out, ...)``: the three in turn; it also saves the data (:func:`save_data`), so the
  figures can be drawn again from the file (:func:`shiftlab.experiments.redraw`).

An experiment writes ``experiment-NAME.json`` (this dataclass), ``experiment-data/NAME.json``
(its data) and its figures into one folder; the HTML report renders one section per
``experiment-NAME.json``.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ShiftlabError
from ..fmt import text_table
from ..io import write_text_atomic
from ..typed_json import read_json

#: the folder (inside an experiment's output folder) that holds each experiment's data
DATA_FOLDER = "experiment-data"


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


# ----------------------------------------------------------------------------- the data
def data_path(folder: str | Path, name: str) -> Path:
    """Where experiment ``name`` keeps its data in ``folder``."""
    return Path(folder) / DATA_FOLDER / f"{name}.json"


def save_data(data: dict, folder: str | Path, name: str) -> Path:
    """Write an experiment's ``compute`` data as ``folder/experiment-data/NAME.json`` (atomic)."""
    try:
        text = json.dumps(data, separators=(",", ":")) + "\n"
    except (TypeError, ValueError) as err:
        raise ShiftlabError(f"experiment {name!r} computed data that is not plain JSON ({err})") from None
    return write_text_atomic(data_path(folder, name), text)


def load_data(folder: str | Path, name: str) -> dict:
    """Experiment ``name``'s data saved in ``folder`` by its ``run``."""
    path = data_path(folder, name)
    data = read_json(path, "experiment data")
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise ShiftlabError(f"{path} is not an experiment's data (no settings); run the experiment again")
    return data


@contextmanager
def work_folder(out: str | Path | None):
    """Where an experiment's ``compute`` trains nets: ``out``, or a temporary folder
    removed afterwards when None."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="shiftlab-experiment-") as tmp:
        yield Path(tmp)
