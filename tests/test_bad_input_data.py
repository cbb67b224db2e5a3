"""Bad data found by trying the command line as a new user would (issue 16, item 6): each
is ONE line on stderr (``shiftlab COMMAND: error: ...``), exit status 2 and nothing written,
or a choice that is named where it is made and recorded in the result.

Classes: unreadable folders, animated and palette images, non-finite pixels, many
unreadable files, normalisation that float32 cannot hold, empty inputs, signed integer
audio, synthetic speech, spectrograms of nothing, and warnings that must not leak.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from shiftlab import ShiftlabError
from shiftlab.cli import main
from shiftlab.data import scan_image_folder

FAST = ["--shifts=0:1", "--pairs", "1", "--quiet"]
NOBODY = 65534                       # the unprivileged user and group of Debian and most Linux


def _grey_folder(root: Path, n: int = 4, size=(24, 24), classes=("a", "b")) -> Path:
    """``n`` grey PNGs of seeded noise in ``root/<class>/`` (``root/`` when ``classes`` is
    empty), named so that sorted paths keep the order."""
    from PIL import Image
    for k in range(n):
        folder = root / classes[k * len(classes) // n] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, size, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:03d}.png")
    return root


def _audit(argv: list[str], out: Path, model: str = "conv-maxpool") -> list:
    """``shiftlab audit`` in this process: ``[exit status, stderr lines]`` (the caller's
    capsys holds them; see :func:`_lines`)."""
    return main(["audit", "--model", model, *FAST, "--out", str(out), *argv])


def _one_line(rc: int, capsys, out: Path, *needles: str, prog: str = "shiftlab audit") -> str:
    """Assert exit 2, exactly one stderr line ``prog: error: ...`` holding every needle,
    and no ``out`` nor its folder; return the line."""
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not out.parent.exists()
    return lines[0]


# ============================================================================ unreadable folders
@contextlib.contextmanager
def _unprivileged():
    """Run the body as a user that file modes apply to. As root (whom mode 000 does not
    stop: CAP_DAC_OVERRIDE), the effective user and group become ``nobody`` for the body
    and root again after it; any other user is already bound by the modes."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_tmp():
    """A folder every user may enter and write in (pytest's own is root's alone, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="shiftlab-unreadable-"))
    path.chmod(0o777)
    yield path
    for folder, dirs, _ in os.walk(path):
        for d in dirs:
            (Path(folder) / d).chmod(0o755)
    import shutil
    shutil.rmtree(path)


def unreadable_class_folder(root):
    return root / "b", 0o000, [f"cannot read folder {root / 'b'} in image folder {root}"]


def unreadable_sub_folder(root):
    deeper = _grey_folder(root / "a" / "deeper", 2, classes=())
    return deeper, 0o000, [f"cannot read folder {deeper} in image folder {root}"]


def unreadable_root_folder(root):
    return root, 0o000, [f"cannot read folder {root} in image folder {root}"]


def unsearchable_class_folder(root):      # listed (r) but not entered (no x): its images fail
    return root / "b", 0o444, [f"cannot read image {root / 'b'}/", "Permission denied"]


class TestUnreadableFolders:
    """A class folder or sub-folder that cannot be listed was skipped silently (exit 0,
    fewer images): now one line naming it. Run as an unprivileged user (see
    :func:`_unprivileged`); the same command runs first as it is, readable, so the
    difference is the mode alone."""

    CASES = [unreadable_class_folder, unreadable_sub_folder, unreadable_root_folder,
             unsearchable_class_folder]

    @pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
    def test_one_line_naming_the_folder(self, case, shared_tmp, capsys):
        root = _grey_folder(shared_tmp / "imgs")
        folder, mode, needles = case(root)
        out = shared_tmp / "new" / "r.json"
        assert _audit(["--data", f"folder:{root}"], out) == 0          # readable: it runs
        capsys.readouterr()
        out.unlink()
        out.parent.rmdir()
        folder.chmod(mode)
        with _unprivileged():
            rc = _audit(["--data", f"folder:{root}"], out)
        _one_line(rc, capsys, out, *needles, "Permission denied")

    @pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
    def test_the_scan_refuses_it_too(self, case, shared_tmp):
        root = _grey_folder(shared_tmp / "imgs")
        folder, mode, needles = case(root)
        folder.chmod(mode)
        with _unprivileged(), pytest.raises(ShiftlabError) as caught:
            scan_image_folder(root)
        assert all(n in str(caught.value) for n in needles), caught.value
