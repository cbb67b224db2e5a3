"""File output that never leaves a mess: atomic writes (a reader never sees a half-written
file, a failed write leaves neither a temporary file nor a folder it created), an exclusive
lock on an output folder, and a SHA-256 digest of tensors that catches silent corruption.

Every failure is a one-line :class:`ShiftlabError` that says why (a full disk, a read-only
file system, no permission) and what to do.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ShiftlabError

LOCK = ".lock"               # the lock file of a folder being written by one process
FULL_BELOW = 1 << 20         # a device with less free space than this (bytes) counts as full


def _reason(err: OSError) -> str:
    """Why a write failed and what to do, from the errno."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device; free some space or write elsewhere"
    if err.errno == errno.EROFS:
        return "the file system is read-only; write elsewhere"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; write elsewhere"
    return f"{err.strerror or err}"


def _disk_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < FULL_BELOW


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a one-line error, if ``path`` cannot become a file."""
    path = Path(path)
    if path.is_dir():
        raise ShiftlabError(f"output {str(path)!r} is a directory; give a file name")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ShiftlabError(f"cannot create {str(path)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK):
        read_only = os.statvfs(parent).f_flag & os.ST_RDONLY
        raise ShiftlabError(f"cannot write to {str(parent)!r}: "
                            + ("the file system is read-only" if read_only else "permission denied")
                            + "; write elsewhere")
    return path


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; return the folders it created, outermost first, so that
    :func:`remove_empty_folders` can undo it."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_empty_folders(missing[::-1])
        raise ShiftlabError(f"cannot create {str(folder)!r}: {_reason(err)}") from None
    return missing[::-1]


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders of :func:`make_folders`, innermost first, while they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:                     # not empty (or gone): keep it and its parents
            return


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    The temporary file is flushed to disk (``fsync``) before the rename. On failure it is
    removed, and so are the folders created for ``path``; an ``OSError`` (or any error
    while the disk is full: torch and safetensors do not raise ``OSError`` there) becomes
    a one-line :class:`ShiftlabError`.

    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "r.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = check_writable(path)
    created = make_folders(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        remove_empty_folders(created)
        raise ShiftlabError(f"cannot write {str(path)!r}: {_reason(err)}") from None
    os.close(fd)
    tmp = Path(tmp)
    done = False
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                   # mkstemp makes 0600 files
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)                                # a late ENOSPC surfaces here, not later
        finally:
            os.close(fd)
        os.replace(tmp, path)
        done = True
    except OSError as err:
        raise ShiftlabError(f"cannot write {str(path)!r}: {_reason(err)}") from None
    except Exception as err:
        if isinstance(err, ShiftlabError) or not _disk_full(path.parent):
            raise
        raise ShiftlabError(f"cannot write {str(path)!r}: no space left on the device; "
                            "free some space or write elsewhere") from None
    finally:
        tmp.unlink(missing_ok=True)
        if not done:
            remove_empty_folders(created)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _take_lock(lock: Path, who: str) -> int:
    """Hold an exclusive ``flock`` on ``lock``, which holds our pid; return its descriptor.

    ``flock`` dies with its process, so a lock left by a killed run blocks nothing. A
    lock file can be unlinked between our ``open`` and ``flock`` (its holder finished):
    then we hold a lock on a file nobody else sees, so we check and try again."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ShiftlabError(f"cannot write to {str(lock.parent)!r}: {_reason(err)}") from None
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ShiftlabError(f"another {who} is writing to {lock.parent} (pid {holder}); wait for "
                                "it to finish or write elsewhere") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:                                 # a full disk: the lock still holds
                pass
            return fd
        os.close(fd)


@contextmanager
def locked_folder(folder: str | os.PathLike, who: str = "process"):
    """Create ``folder`` if needed and hold it exclusively while the block runs.

    A second process (or a second call in this one) that asks for the same folder fails
    at once with a one-line error naming the holder's pid. When the block fails and the
    folder is empty, the folders created here are removed again."""
    folder = Path(folder)
    check_writable(folder / LOCK)
    created = make_folders(folder)
    lock = folder / LOCK
    try:
        fd = _take_lock(lock, who)
    except BaseException:
        remove_empty_folders(created)
        raise
    ok = False
    try:
        yield folder
        ok = True
    finally:
        lock.unlink(missing_ok=True)                     # while we still hold it
        os.close(fd)
        if not ok:
            remove_empty_folders(created)


def _feed(h, obj) -> None:
    import torch
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        text = repr(obj)
        h.update(f"V{len(text)}:{text}".encode())
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def digest(obj) -> str:
    """SHA-256 (hex) of a nested structure of dicts, lists, tensors and plain values.

    Dict keys are taken in sorted order and each tensor contributes its dtype, shape and
    bytes in C order, so the digest depends on the values only, not on memory layout or
    insertion order. A flipped bit anywhere changes it.

    >>> import torch
    >>> a = digest({"w": torch.zeros(2), "epoch": 1})
    >>> a == digest({"epoch": 1, "w": torch.zeros(2)}), a == digest({"w": torch.ones(2), "epoch": 1})
    (True, False)
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()
