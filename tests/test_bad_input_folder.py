"""Bad image folders and preprocessing options, through the command line: each is ONE line on
stderr (``shiftlab audit: error: ...``), exit status 2, no output file and no new folder,
even when the bad file is met mid-stream, after batches were audited. Then the cases that
are not errors but must be said and counted: skipped unreadable files (``--skip-bad``),
ignored non-image files, grey images read as RGB.

Real photos (scikit-learn's china.jpg and flower.jpg) cut into small files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shiftlab import ShiftlabError
from shiftlab.cli import main
from shiftlab.data import Preprocess, stream_image_folder
from test_folder_stream import cut, rgb_model_file, write_photos

FAST = ["--shifts=0:1", "--pairs", "1", "--quiet"]


def _jpeg_bytes(k: int = 0, size=(120, 160), grey: bool = False) -> bytes:
    from io import BytesIO

    from PIL import Image
    buffer = BytesIO()
    image = Image.fromarray(cut(k, size))
    (image.convert("L") if grey else image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _folder(tmp: Path, n: int = 4, grey: bool = True, **options) -> Path:
    write_photos(tmp / "imgs", n, grey=grey, **options)
    return tmp / "imgs"


def _run(tmp: Path, argv: list[str], capsys, rgb: bool = False) -> tuple[int, list[str]]:
    model = rgb_model_file(tmp) if rgb else "conv-maxpool"
    rc = main(["audit", "--model", model, *FAST, "--out", str(tmp / "new" / "r.json"), *argv])
    return rc, capsys.readouterr().err.splitlines()


# ============================================================================ errors
def corrupt_jpeg_header(tmp):
    root = _folder(tmp, grey=False)
    raw = _jpeg_bytes()
    (root / "flower" / "bad.jpg").write_bytes(raw[:20] + bytes(200) + raw[220:])
    return ["--data", f"folder:{root}"], "cannot read image", "bad.jpg"


def truncated_jpeg_mid_stream(tmp):
    root = _folder(tmp, 8, suffix=".jpg")
    raw = _jpeg_bytes(grey=True)
    (root / "flower" / "zz-truncated.jpg").write_bytes(raw[:len(raw) // 2])   # sorted last;
    # the header is whole, so the scan passes it: it fails when decoded, mid-stream
    return ["--data", f"folder:{root}", "--batch-size", "2", "--center-crop", "24x24"], \
        "image file is truncated", "zz-truncated.jpg"


def truncated_jpeg_mid_stream_with_workers(tmp):
    argv, match, name = truncated_jpeg_mid_stream(tmp)
    return argv + ["--workers", "2"], match, name


def empty_folder(tmp):
    (tmp / "empty").mkdir()
    return ["--data", f"folder:{tmp / 'empty'}"], "hold no images", "empty"


def only_non_image_files(tmp):
    (tmp / "docs").mkdir()
    (tmp / "docs" / "a.txt").write_text("text")
    (tmp / "docs" / "b.csv").write_text("1,2")
    return ["--data", f"folder:{tmp / 'docs'}"], "hold no images (2 other files ignored)", "docs"


def class_folders_without_images(tmp):
    (tmp / "imgs" / "cat").mkdir(parents=True)
    (tmp / "imgs" / "dog").mkdir()
    return ["--data", f"folder:{tmp / 'imgs'}"], "and its class folders hold no images", "imgs"


def missing_folder(tmp):
    return ["--data", f"folder:{tmp / 'nowhere'}"], "does not exist", "nowhere"


def every_image_unreadable_with_skip_bad(tmp):
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "a.jpg").write_bytes(b"not a jpeg")
    return ["--data", f"folder:{tmp / 'imgs'}", "--skip-bad"], "could be read (1 skipped", "a.jpg"


def resize_smaller_than_center_crop(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--resize", "16", "--center-crop", "20x20"], \
        "--resize 16 is smaller than the --center-crop 20x20", "resize to at least 20"


def resize_smaller_than_crop_window(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--resize", "16", "--protocol", "crop",
            "--crop", "20x20"], "--resize 16 is smaller than the --crop 20x20 window", "at least 20"


def image_smaller_than_center_crop(tmp):
    root = _folder(tmp, sizes=[(24, 24), (24, 24), (10, 30), (24, 24)])
    return ["--data", f"folder:{root}", "--center-crop", "16x16"], \
        "is 10x30, smaller than the --center-crop 16x16", "add --resize 16"


def mixed_sizes_without_center_crop(tmp):
    root = _folder(tmp, sizes=[(24, 24), (24, 24), (20, 30), (24, 24)])
    return ["--data", f"folder:{root}", "--resize", "20"], \
        "images differ in size after preprocessing", "add --center-crop HxW"


def center_crop_of_three_sizes(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--center-crop", "1x8x8"], \
        "--center-crop needs HxW", "1x8x8"


def canvas_smaller_than_the_images(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--canvas", "20"], \
        "--canvas 20 is smaller than image", "use --canvas 24"


def batch_larger_than_the_cap(tmp):
    from PIL import Image
    (tmp / "big").mkdir()
    Image.fromarray(np.zeros((1000, 1000, 3), np.uint8)).save(tmp / "big" / "black.png")
    return ["--data", f"folder:{tmp / 'big'}", "--batch-size", "100"], \
        "a batch of 100 3x1000x1000 images has 300,000,000 values", "--batch-size"


def unknown_normalize_name(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--normalize", "imagenett"], \
        "unknown normalisation 'imagenett'", "give one of imagenet"


def normalize_means_and_stds_differ(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--normalize", "0.5,0.5,0.5;0.2,0.2"], \
        "got 3 means and 2 stds", "one mean and one std per channel"


def normalize_wrong_length_for_the_channels(tmp):
    root = _folder(tmp)                                                       # grey photos
    return ["--data", f"folder:{root}", "--normalize", "imagenet"], \
        f"3 means and stds but --data folder:{root} has 1 channel (grey)", "give 1 value each"


def normalize_wrong_length_for_data_in_memory(tmp):
    return ["--data", "synthetic:4:1x16x16", "--normalize", "0.5,0.5;1,1"], \
        "2 means and stds but --data synthetic:4:1x16x16 has 1 channel", "give 1 value"


def normalize_std_zero(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--normalize", "0.5;0"], "stds positive", "std [0.0]"


def normalize_not_numbers(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--normalize", "a,b;c,d"], \
        "is not MEAN,...;STD,... with numbers", "a,b;c,d"


def workers_negative(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--workers", "-1"], \
        "argument --workers: must be at least 0, got -1", "--workers"


def resize_zero(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--resize", "0"], \
        "argument --resize: must be at least 1, got 0", "--resize"


def resize_beyond_the_cap(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--resize", "5000"], \
        "resize must be a whole number of pixels in [1, 4096]", "5000"


def interpolation_without_resize(tmp):
    return ["--data", f"folder:{_folder(tmp)}", "--interpolation", "bicubic"], \
        "--interpolation bicubic is the filter of --resize", "give --resize S too"


def folder_options_on_data_in_memory(tmp):
    return ["--data", "synthetic:4", "--resize", "32", "--workers", "2"], \
        "--resize, --workers read image folders (--data folder:DIR)", "synthetic:4 is loaded whole"


ERRORS = [corrupt_jpeg_header, truncated_jpeg_mid_stream, truncated_jpeg_mid_stream_with_workers,
          empty_folder, only_non_image_files, class_folders_without_images, missing_folder,
          every_image_unreadable_with_skip_bad, resize_smaller_than_center_crop,
          resize_smaller_than_crop_window, image_smaller_than_center_crop,
          mixed_sizes_without_center_crop, center_crop_of_three_sizes,
          canvas_smaller_than_the_images, batch_larger_than_the_cap, unknown_normalize_name,
          normalize_means_and_stds_differ, normalize_wrong_length_for_the_channels,
          normalize_wrong_length_for_data_in_memory, normalize_std_zero, normalize_not_numbers,
          workers_negative, resize_zero, resize_beyond_the_cap, interpolation_without_resize,
          folder_options_on_data_in_memory]


@pytest.mark.parametrize("case", ERRORS, ids=[c.__name__ for c in ERRORS])
def test_bad_folder_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    argv, match, also = case(tmp_path)
    rc, lines = _run(tmp_path, argv, capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("shiftlab audit: error: ") and "Traceback" not in lines[0]
    assert match in lines[0] and also in lines[0], lines[0]
    assert not (tmp_path / "new").exists()                          # no file, no empty folder


def test_a_bad_file_mid_stream_comes_after_audited_batches(tmp_path):
    """The truncated JPEG passes the header scan and fails when decoded, after three
    batches were read: the error stops the stream there."""
    argv, _, name = truncated_jpeg_mid_stream(tmp_path)
    stream = stream_image_folder(argv[1].removeprefix("folder:"), Preprocess(center_crop=(24, 24)),
                                 batch_size=2)
    seen = []
    with pytest.raises(ShiftlabError, match=f"{name}: OSError: image file is truncated.*--skip-bad"):
        for x, _ in stream:
            seen.append(len(x))
    assert seen == [2, 2, 2, 2]


def test_a_worker_that_dies_is_one_line(tmp_path, monkeypatch):
    """A DataLoader worker killed (as the kernel's OOM killer would) stops the stream with
    a one-line error, not torch's traceback."""
    import os
    import signal

    from shiftlab.data import ImageFolderDataset
    root = _folder(tmp_path)
    monkeypatch.setattr(ImageFolderDataset, "__getitem__",
                        lambda self, i: os.kill(os.getpid(), signal.SIGKILL))
    stream = stream_image_folder(root, workers=1)
    with pytest.raises(ShiftlabError, match=r"reading .*imgs failed: RuntimeError: DataLoader "
                                            r"worker .* exited unexpectedly; try fewer --workers"):
        list(stream)


# ============================================================================ said and counted
def test_skip_bad_skips_and_counts_unreadable_files(tmp_path, capsys):
    root = _folder(tmp_path, 6, grey=False, suffix=".jpg")
    raw = _jpeg_bytes()
    (root / "china" / "bad-header.jpg").write_bytes(raw[:20] + bytes(200) + raw[220:])
    (root / "flower" / "truncated.jpg").write_bytes(raw[:len(raw) // 2])
    rc, lines = _run(tmp_path, ["--data", f"folder:{root}", "--skip-bad", "--batch-size", "3",
                                "--workers", "2", "--center-crop", "24x24"], capsys, rgb=True)
    assert rc == 0, lines
    assert lines == ["shiftlab audit: warning: UserWarning: skipped 2 unreadable images "
                     "(--skip-bad): bad-header.jpg, truncated.jpg"]
    p = json.loads((tmp_path / "new" / "r.json").read_text())["provenance"]
    assert p["n_images"] == 6 and p["data"]["skipped_files"] == 2 and p["data"]["files"] == 8
    reasons = {Path(s["file"]).name: s["reason"] for s in p["data"]["skipped"]}
    assert "cannot identify image file" in reasons["bad-header.jpg"]
    assert "image file is truncated" in reasons["truncated.jpg"]


def test_non_image_files_are_ignored_and_counted(tmp_path, capsys):
    root = _folder(tmp_path)
    (root / "china" / "notes.txt").write_text("a note")
    (root / "flower" / "labels.csv").write_text("1,2")
    (root / "README").write_text("loose beside the class folders")
    rc, lines = _run(tmp_path, ["--data", f"folder:{root}"], capsys)
    assert rc == 0, lines
    assert lines == [f"shiftlab audit: warning: UserWarning: {root}: ignored 3 non-image files "
                     "(README, china/notes.txt, flower/labels.csv)"]
    data = json.loads((tmp_path / "new" / "r.json").read_text())["provenance"]["data"]
    assert data["ignored_files"] == 3 and data["images"] == 4


def test_mixed_channel_counts_are_read_as_rgb_and_said_once(tmp_path, capsys):
    root = _folder(tmp_path, 3, grey=True)
    write_photos(root, 3, grey=False, seed=1, suffix=".jpg")                   # 3 colour JPEGs
    rc, lines = _run(tmp_path, ["--data", f"folder:{root}", "--workers", "2"], capsys, rgb=True)
    assert rc == 0, lines
    assert lines == [f"shiftlab audit: warning: UserWarning: {root} mixes grey and colour images: "
                     "3 grey of 6 read as RGB (3 equal channels)"]
    p = json.loads((tmp_path / "new" / "r.json").read_text())["provenance"]
    assert p["input_shape"] == [3, 24, 24] and p["data"]["grey_read_as_rgb"] == 3
