"""The one error type users see: a one-line message saying what is wrong and what to do."""
from __future__ import annotations

import re
import unicodedata

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")     # terminal control sequences (colour, bold)


#: Every generator shiftlab seeds (torch, numpy, k-means, the audit's pairs) takes 0 … 2**32 − 1.
MAX_SEED = 2 ** 32 - 1


def check_seed(seed) -> int:
    """``seed`` if it is a whole number in ``[0, MAX_SEED]``, else a one-line error.

    >>> check_seed(7)
    7
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ShiftlabError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return seed


class ShiftlabError(ValueError):
    """Bad input to shiftlab (a shape, a name, a file, a shift). The CLI prints it on one
    line and exits with status 2; library callers can catch it as a ``ValueError``."""


class UsageError(ShiftlabError):
    """A command line that does not parse (an unknown option, a missing or malformed value).
    ``prog`` names the (sub)command, e.g. ``shiftlab audit``."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{message} (see {prog} --help)")
        self.prog, self.message = prog, message


def printable(text: str) -> str:
    """``text`` safe to print as one line: terminal escape sequences dropped; newlines,
    other control characters and line separators written as escapes; bytes of a non-UTF-8
    file name (surrogate escapes) written as ``\\xNN``.

    >>> printable("bad\\nname\\x1b[1m!\\udcff")
    'bad\\\\nname!\\\\xff'
    """
    out = []
    for ch in _ANSI.sub("", text):
        kind = unicodedata.category(ch)
        if kind == "Cs":                                  # os.fsdecode's escape of a raw byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else "\\ufffd")
        elif kind in ("Cc", "Zl", "Zp") and ch != "\t":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(" " if ch == "\t" else ch)
    return "".join(out)


def one_line(err: BaseException, limit: int = 200) -> str:
    """``err`` as one line for a :class:`ShiftlabError` message: its first line (at most
    ``limit`` characters, terminal escapes dropped), prefixed by its type unless it is a
    ``ShiftlabError`` already.

    >>> one_line(RuntimeError("shapes do not match\\nlong torch trace"))
    'RuntimeError: shapes do not match'
    >>> one_line(ShiftlabError("bad shift")), one_line(KeyError())
    ('bad shift', 'KeyError')
    """
    first = first_line(str(err), limit)
    if not first:
        return type(err).__name__
    return first if isinstance(err, ShiftlabError) else f"{type(err).__name__}: {first}"


def first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, :func:`printable`, at most ``limit`` characters."""
    lines = _ANSI.sub("", text).strip().splitlines()
    return printable(lines[0].strip())[:limit] if lines else ""


def run_model(model, x, who: str = "the model"):
    """``model(x)``; any error other than a :class:`ShiftlabError` becomes one line saying
    that ``who`` cannot run on inputs of ``x``'s shape, and why."""
    try:
        return model(x)
    except ShiftlabError:
        raise
    except Exception as err:
        raise ShiftlabError(f"{who} cannot run on inputs of shape {tuple(x.shape)}: "
                            f"{one_line(err)}") from None
