"""Atomic file output: a reader never sees a half-written file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ShiftlabError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a one-line error, if ``path`` cannot become a file."""
    path = Path(path)
    if path.is_dir():
        raise ShiftlabError(f"output {str(path)!r} is a directory; give a file name")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ShiftlabError(f"cannot create {str(path)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK):
        raise ShiftlabError(f"cannot write to {str(parent)!r}: permission denied")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "r.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise ShiftlabError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                   # mkstemp makes 0600 files
        os.replace(tmp, path)
    except OSError as err:
        raise ShiftlabError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
