"""How every command runs: Ctrl-C held over torch's import, Ctrl-C told apart from errors,
no empty folder left by a failed command, warnings as one line each."""
from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import first_line


@contextmanager
def ctrl_c_held():
    """Hold Ctrl-C until the block ends, then raise it. For torch's import: libtorch calls
    back into Python through pybind11 while it loads, and a KeyboardInterrupt raised inside
    such a callback aborts the process (``terminate called ... error_already_set``, status
    134) instead of unwinding. Only the main thread, and only with Python's own handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda *_: held.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def import_torch() -> None:
    """Import torch once, with Ctrl-C held until it is loaded (see :func:`ctrl_c_held`)."""
    if "torch" not in sys.modules:
        with ctrl_c_held():
            import torch  # noqa: F401


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is Ctrl-C, or an error it caused (an extension module's import that
    a KeyboardInterrupt cut short can surface as ``SystemError`` or ``ImportError``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def no_new_empty_folders(args):
    """On failure, remove the folders this command created on the way to ``--out`` /
    ``--dest`` (and empty folders inside a new one) that it left empty; never a folder that
    existed before, never one holding a file."""
    new = []
    for value in (getattr(args, "out", None), getattr(args, "dest", None), getattr(args, "onnx", None)):
        if value:
            path = Path(value)
            new += [p for p in (path, *path.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for folder in sorted(set(new), key=lambda p: len(p.parts), reverse=True):
            inside = [Path(d) for d, _, _ in os.walk(folder, topdown=False)] if folder.is_dir() else []
            for empty in (*inside, folder):
                try:
                    empty.rmdir()                     # only succeeds on an empty folder
                except OSError:
                    pass
        raise


@contextmanager
def warnings_as_lines(prog: str):
    """Collect the warnings a command raises; print each once, as one line, if it succeeds."""
    seen: dict[str, None] = {}

    def keep(message, category, *_args, **_kwargs):
        seen.setdefault(f"{category.__name__}: {first_line(str(message))}", None)

    with warnings.catch_warnings():
        warnings.showwarning = keep
        yield
    for text in seen:
        print(f"{prog}: warning: {text}", file=sys.stderr)
