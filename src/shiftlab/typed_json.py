"""Saved results read back safely: a JSON file → checked plain data → dataclasses.

:func:`read_json` refuses what is not a small regular file of valid JSON (a folder, a
device, a file over ``max_bytes``, JSON nested too deeply to parse) with one line naming
the file. :func:`build` turns a JSON object into a dataclass, checking each value against
the field's annotation (``int``, ``float``, ``str``, ``X | None``, ``list[X]``,
``dict[str, X]``, nested dataclasses), so a wrong type is refused with the field's path:

>>> from dataclasses import dataclass
>>> @dataclass
... class Point:
...     name: str
...     xy: list[float]
>>> build(Point, {"name": "a", "xy": [1, 2.5]})
Point(name='a', xy=[1.0, 2.5])
>>> build(Point, {"name": "a", "xy": [1, "2"]})
Traceback (most recent call last):
...
shiftlab.errors.ShiftlabError: xy[1] must be a finite number, got '2'

Numbers must be finite (JSON has no NaN; Python writes it anyway); booleans are not numbers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ShiftlabError

__all__ = ["read_json", "build", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 100_000_000          # a saved result is a few MB at most


def read_json(path: str | Path, what: str, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed JSON of the regular file ``path`` (``what`` names it in errors, e.g.
    ``"audit result"``); one-line :class:`ShiftlabError` for anything else."""
    path = Path(path)
    if not path.exists():
        raise ShiftlabError(f"no such {what} file: {path}")
    if path.is_dir():
        raise ShiftlabError(f"{path} is a folder, not {_a(what)} file; remove or rename it")
    if not path.is_file():
        raise ShiftlabError(f"{path} is not a regular file; {_a(what)} must be a JSON file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ShiftlabError(f"{path} is {size / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB "
                            f"limit for {what} files; re-create it")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ShiftlabError(f"{path} is JSON nested too deeply to read; re-create the {what}") from None
    except (UnicodeDecodeError, ValueError) as err:     # JSONDecodeError is a ValueError
        raise ShiftlabError(f"{path} is not valid JSON ({str(err).splitlines()[0][:120]}); "
                            f"re-create the {what}") from None
    except OSError as err:
        raise ShiftlabError(f"cannot read {path}: {err.strerror or err}") from None


def build(cls, data: Any, where: str = ""):
    """An instance of dataclass ``cls`` from the JSON object ``data``, every field checked
    against its annotation; ``where`` prefixes field paths in errors (``"layers[2]"``)."""
    if not isinstance(data, dict):
        raise ShiftlabError(f"{where or 'the file'} must be an object, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in known]
    if unknown:
        raise ShiftlabError(f"{_join(where, str(unknown[0]))} is not a field of {cls.__name__}")
    for f in known.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data:
            raise ShiftlabError(f"{_join(where, f.name)} is missing")
    return cls(**{key: check(value, hints[key], _join(where, key)) for key, value in data.items()})


def check(value: Any, hint, where: str):
    """``value`` if it matches the annotation ``hint`` (floats given as ints become floats;
    dataclasses are built); else a :class:`ShiftlabError` naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return check(value, options[0], where)
            except ShiftlabError as err:
                if f"{where} must be " in str(err) and type(None) in args:
                    raise ShiftlabError(f"{where} must be {_describe(hint)}, got {_shown(value)}") from None
                raise
        for option in options:                         # a general union: the first that fits
            try:
                return check(value, option, where)
            except ShiftlabError:
                pass
        raise ShiftlabError(f"{where} must be {_describe(hint)}, got {_shown(value)}")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ShiftlabError(f"{where} must be {_describe(hint)}, got {_shown(value)}")
        return [check(v, args[0], f"{where}[{k}]") for k, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ShiftlabError(f"{where} must be {_describe(hint)}, got {_shown(value)}")
        return {k: check(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ShiftlabError(f"{where} must be {_describe(hint)}, got {_shown(value)}")


def _describe(hint) -> str:
    """Words for an annotation: ``list[float | None]`` → "a list of numbers or nulls"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"an object of {_plural(args[1])}"
    if dataclasses.is_dataclass(hint):
        return "an object"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(
        hint, f"a {getattr(hint, '__name__', hint)}")


def _plural(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_plural(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or nulls" if type(None) in args else "")
    if origin is list:
        return f"lists of {_plural(args[0])}"
    if dataclasses.is_dataclass(hint):
        return "objects"
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(hint, "values")


def _shown(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
