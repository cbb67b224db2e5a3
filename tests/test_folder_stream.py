"""Image folders streamed through a DataLoader, with evaluation preprocessing: real photos
(scikit-learn's china.jpg and flower.jpg, 427x640) cut into small files of many sizes,
modes and formats, so every test is fast.

Oracles: the same pixels held in memory (numpy, written independently of shiftlab's
reader), Pillow's own resize, torch's antialiased interpolation, torchvision's crop
rule spelled out, and the normalisation written by hand.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab import AuditConfig, ShiftlabError, audit
from shiftlab.result import AuditResult
from shiftlab.cli import main
from shiftlab.data import (IMAGENET, FolderStream, Preprocess, load_data, load_image_folder,
                           normalization, scan_image_folder, stream_image_folder)
from shiftlab.data.preprocess import normalize
from shiftlab.models import create_model

FAST = dict(shifts="-1:1", pairs=2)


# ----------------------------------------------------------------------------- real photos
@functools.lru_cache(maxsize=None)
def photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's two sample photos, 427x640 RGB uint8."""
    from sklearn.datasets import load_sample_images
    return tuple(load_sample_images().images)


def cut(k: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A ``size`` (h, w) window of photo ``k % 2`` at a seeded random place."""
    photo = photos()[k % 2]
    rng = np.random.default_rng(seed * 1000 + k)
    h, w = size
    y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
    return np.ascontiguousarray(photo[y:y + h, x:x + w])


def write_photos(root: Path, n: int, *, size=(24, 24), classes=("china", "flower"),
                 suffix=".png", sizes=None, seed: int = 0, grey: bool = False) -> list[np.ndarray]:
    """``n`` photo cuts in ``root/<class>/`` (or ``root/`` when ``classes`` is empty), named
    so that sorted paths keep the order; returns the arrays written, in that order."""
    from PIL import Image
    arrays = []
    for k in range(n):
        s = sizes[k] if sizes is not None else size
        a = cut(k, s, seed)
        image = Image.fromarray(a).convert("L") if grey else Image.fromarray(a)
        folder = root / classes[k * len(classes) // n] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{k:03d}{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
        arrays.append(np.asarray(image))
    return arrays


def rgb_model_file(tmp: Path, name: str = "conv-maxpool") -> str:
    """A user model file building a zoo model for 3-channel inputs."""
    path = tmp / "rgb_model.py"
    path.write_text("from shiftlab.models import create_model\n\n\ndef build():\n"
                    f"    return create_model({name!r}, in_channels=3)\n")
    return f"{path}:build"


def _rgb_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("conv-maxpool", in_channels=3).eval()


def _same(a, b) -> None:
    """Two audit results agree in every number (time and the data record aside)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("seconds")
        d["provenance"].pop("data")
    assert da == db


# ----------------------------------------------------------------------------- streaming
def test_streaming_equals_the_same_pixels_in_memory(tmp_path):
    arrays = write_photos(tmp_path / "photos", 11)                  # lossless PNG, 24x24
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([k * 2 // 11 for k in range(11)])                # china 0-5, flower 6-10
    stream = stream_image_folder(tmp_path / "photos", batch_size=4)
    assert stream.sample_shape == (3, 24, 24) and stream.classes == ["china", "flower"]
    batches = list(stream)
    assert [len(b[0]) for b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    model = _rgb_model()
    streamed = audit(model, stream, batch_size=4, **FAST)
    held = audit(model, (x, y), batch_size=4, **FAST)
    _same(streamed, held)
    assert streamed.provenance.data["images"] == 11 and held.provenance.data is None
    assert streamed.invariance.clean_accuracy is not None


def test_a_folder_in_memory_is_the_stream_stacked(tmp_path):
    write_photos(tmp_path / "p", 6, sizes=[(30, 40), (50, 20), (24, 24), (60, 61), (33, 90), (41, 41)],
                 suffix=".jpg")
    pre = Preprocess(resize=20, center_crop=(16, 16))
    x, y, classes = load_image_folder(tmp_path / "p", pre)
    streamed = list(stream_image_folder(tmp_path / "p", pre, batch_size=4))
    assert torch.equal(torch.cat([b[0] for b in streamed]), x) and x.shape == (6, 3, 16, 16)
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and classes == ["china", "flower"]
    with pytest.raises(ShiftlabError, match="images differ in size after preprocessing"):
        load_data(f"folder:{tmp_path / 'p'}")


def test_workers_do_not_change_the_batches_or_the_results(tmp_path):
    sizes = [(20 + 7 * k, 60 - 3 * k) for k in range(9)]
    write_photos(tmp_path / "p", 9, sizes=sizes, suffix=".jpg")
    pre = Preprocess(resize=18, center_crop=(16, 16))
    results, batches = [], []
    for workers in (0, 2):
        stream = stream_image_folder(tmp_path / "p", pre, batch_size=4, workers=workers)
        batches.append([b for b in stream])
        results.append(audit(_rgb_model(), stream, batch_size=4, **FAST))
    assert len(batches[0]) == len(batches[1]) == 3
    for (x0, y0), (x1, y1) in zip(*batches):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    _same(*results)
    assert [r.provenance.data["loader"]["workers"] for r in results] == [0, 2]


def test_a_flat_folder_is_unlabelled(tmp_path):
    write_photos(tmp_path / "flat", 5, classes=())
    stream = stream_image_folder(tmp_path / "flat", batch_size=2)
    assert stream.classes is None and all(y is None for _, y in stream)
    result = audit(_rgb_model(), stream, **FAST)
    assert result.invariance.clean_accuracy is None and result.invariance.consistency is not None
    assert result.provenance.data["layout"] == "flat (unlabelled)"


def test_shards_are_exact_contiguous_blocks(tmp_path):
    write_photos(tmp_path / "p", 10)
    stream = stream_image_folder(tmp_path / "p", batch_size=3)
    whole = torch.cat([x for x, _ in stream])
    shards = [stream.shard(r, 3) for r in range(3)]
    # 4 batches (3, 3, 3, 1) in contiguous runs of whole batches: the batches one process reads
    assert [s.n_images for s in shards] == [6, 3, 1]
    assert torch.equal(torch.cat([x for s in shards for x, _ in s]), whole)
    assert [s.record()["first_index"] for s in shards] == [0, 6, 9]
    assert [first for s in shards for first, _, _ in s.indexed()] == [0, 3, 6, 9]


def test_limit_takes_the_first_images_in_sorted_order(tmp_path):
    arrays = write_photos(tmp_path / "p", 6, classes=())
    x = torch.cat([b for b, _ in stream_image_folder(tmp_path / "p", limit=4)])
    assert torch.equal(x, torch.from_numpy(np.stack(arrays[:4])).permute(0, 3, 1, 2).float() / 255)


# ----------------------------------------------------------------------------- modes and formats
def _write(path: Path, image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def test_mixed_sizes_modes_and_formats_load(tmp_path):
    from PIL import Image
    root = tmp_path / "mixed"
    rgb = Image.fromarray(cut(0, (40, 52)))
    _write(root / "a-grey.jpg", Image.fromarray(cut(1, (30, 45))).convert("L"), quality=95)
    _write(root / "b-rgb.png", rgb)
    _write(root / "c-rgba.png", rgb.convert("RGBA"))                      # alpha dropped
    _write(root / "d-palette.gif", Image.fromarray(cut(2, (33, 20))).convert("P"))
    _write(root / "e-sixteen.png", Image.fromarray(np.full((20, 28), 32768, np.uint16)))
    _write(root / "f-grey.bmp", Image.fromarray(cut(3, (25, 25))).convert("L"))
    _write(root / "g-lossless.webp", Image.fromarray(cut(4, (26, 30))), lossless=True)
    _write(root / "h-rgb.tif", Image.fromarray(cut(5, (50, 18))))
    _write(root / "i-bits.png", Image.fromarray(cut(6, (21, 21))).convert("1"))
    with pytest.warns(UserWarning, match="mixes grey and colour images: 4 grey of 9 read as RGB") as seen:
        stream = stream_image_folder(root, Preprocess(resize=16, center_crop=(16, 16)), batch_size=9)
    assert len([w for w in seen if "mixes grey" in str(w.message)]) == 1          # said once
    (x, y), = list(stream)
    assert x.shape == (9, 3, 16, 16) and y is None
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x[1], x[2])                                   # RGBA = its RGB
    for grey in (0, 4, 5, 8):                                         # grey: three equal channels
        assert torch.equal(x[grey, 0], x[grey, 1]) and torch.equal(x[grey, 1], x[grey, 2])
    assert torch.allclose(x[4], torch.full((3, 16, 16), 32768 / 65535))   # 16 bits / 65535


def test_an_all_grey_folder_has_one_channel(tmp_path):
    from PIL import Image
    root = tmp_path / "grey"
    _write(root / "a.png", Image.fromarray(np.full((12, 12), 65535, np.uint16)))
    _write(root / "b.jpg", Image.fromarray(cut(0, (12, 12))).convert("L"), quality=95)
    _write(root / "c.png", Image.fromarray(cut(1, (12, 12))).convert("1"))
    (x, _), = list(stream_image_folder(root))
    assert x.shape == (3, 1, 12, 12) and float(x[0].min()) == 1.0         # 65535 / 65535
    assert sorted(x[2].unique().tolist()) == [0.0, 1.0]                   # 1 bit: black, white


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("interpolation,resample", [("bilinear", "BILINEAR"), ("bicubic", "BICUBIC")])
def test_resize_is_pillows_on_the_shorter_side(interpolation, resample):
    from PIL import Image
    photo = Image.fromarray(photos()[0])                              # 427 x 640
    pre = Preprocess(resize=100, interpolation=interpolation)
    assert pre.output_size((427, 640)) == (100, 149)                  # int(100 * 640 / 427) = 149
    assert pre.output_size((640, 427)) == (149, 100)
    assert pre.output_size((100, 300)) == (100, 300)                  # already there: untouched
    ours = pre(photo, 255.0)
    pillow = np.asarray(photo.resize((149, 100), getattr(Image.Resampling, resample)), np.float32)
    assert ours.shape == (3, 100, 149)
    assert np.array_equal(ours, pillow.transpose(2, 0, 1) / np.float32(255))


def test_resize_is_antialiased():
    """Reducing 4x: Pillow's filter widens with the factor, like torch's antialias=True (an
    unfiltered bilinear reduction would alias fine stripes into a false pattern)."""
    from PIL import Image
    photo = photos()[1]
    ours = torch.from_numpy(Preprocess(resize=107)(Image.fromarray(photo), 255.0))
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    size = tuple(ours.shape[1:])
    smooth = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)[0]
    aliased = nn.functional.interpolate(x, size=size, mode="bilinear", antialias=False)[0]
    assert float((ours - smooth).abs().mean()) < 0.004                  # 8-bit rounding apart
    assert float((ours - aliased).abs().mean()) > 2 * float((ours - smooth).abs().mean())
    stripes = Image.fromarray(np.tile(np.array([0, 255], np.uint8), (64, 32)))    # 1-px stripes
    grey = Preprocess(resize=16)(stripes, 255.0)
    inside = grey[:, :, 1:-1]                                          # the borders see one side
    assert np.ptp(inside) == 0 and abs(float(inside.mean()) - 0.5) < 1 / 255


def test_center_crop_is_torchvisions():
    """top = round((h - H) / 2), left = round((w - W) / 2), Python's round (half to even)."""
    from PIL import Image
    a = cut(0, (9, 12))
    for (ch, cw), (top, left) in {(4, 5): (2, 4), (6, 9): (2, 2), (9, 12): (0, 0), (8, 7): (0, 2)}.items():
        assert (int(round((9 - ch) / 2.0)), int(round((12 - cw) / 2.0))) == (top, left)
        out = Preprocess(center_crop=(ch, cw))(Image.fromarray(a), 255.0)
        assert np.array_equal(out, a[top:top + ch, left:left + cw].transpose(2, 0, 1) / np.float32(255))


def test_canvas_step_centres_the_image_on_black():
    from PIL import Image
    out = Preprocess(canvas=10)(Image.fromarray(np.full((4, 5), 255, np.uint8)), 255.0)
    assert out.shape == (1, 10, 10) and out.sum() == 20
    assert np.array_equal(np.argwhere(out[0] == 1)[[0, -1]], [[3, 2], [6, 6]])


def test_the_crop_protocol_runs_on_streamed_resized_images(tmp_path):
    """Zhang 2019's protocol, scaled down: resize 40, centre 40x40, 32x32 windows at offsets
    in [0, 8); the same as the preprocessed images held in memory."""
    write_photos(tmp_path / "p", 6, sizes=[(50 + 9 * k, 80 - 5 * k) for k in range(6)], suffix=".jpg")
    pre = Preprocess(resize=40, center_crop=(40, 40))
    x, y, _ = load_image_folder(tmp_path / "p", pre)
    config = AuditConfig(protocol="crop", crop=(32, 32), shifts="-1:1", pairs=3, batch_size=4)
    streamed = audit(_rgb_model(), stream_image_folder(tmp_path / "p", pre, batch_size=4), config)
    _same(streamed, audit(_rgb_model(), (x, y), config))
    p = streamed.provenance
    assert p.input_shape == [3, 32, 32] and p.crop == [32, 32]
    assert "D = 8" in p.pair_offsets and p.data["preprocess"]["center_crop"] == [40, 40]


# ----------------------------------------------------------------------------- normalisation
class _Recorder(nn.Module):
    """A tiny RGB classifier that keeps every input it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.head(self.conv(x).mean((2, 3)))


def test_normalize_is_applied_after_the_shift(tmp_path):
    """Canvas protocol: the background shifted in is black in pixel space, so the model
    sees (0 - mean) / std there, and (x - mean) / std inside."""
    write_photos(tmp_path / "p", 2, classes=())
    model = _Recorder()
    stream = stream_image_folder(tmp_path / "p")
    audit(model, stream, protocol="canvas", shifts="0,0;0,3", pairs=0, normalize="imagenet")
    (x, _), = list(stream)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET)
    shifted = [s for s in model.seen if s.shape[0] == 2][-1]           # the (0, 3) rows
    assert torch.allclose(shifted[:, :, :, :3], (-mean / std).expand(2, 3, 24, 3))
    assert torch.allclose(shifted[:, :, :, 3:], (x[:, :, :, :-3] - mean) / std, atol=1e-6)
    result = audit(model, stream, protocol="canvas", shifts="0,0;0,3", pairs=0, normalize="imagenet")
    assert result.provenance.normalize["mean"] == list(IMAGENET[0])
    assert result.provenance.fill == 0.0


def test_normalize_commutes_with_circular_shifts(tmp_path):
    """Under circular shifts, normalising after the shift equals normalising the data."""
    arrays = write_photos(tmp_path / "p", 4)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).double() / 255
    norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    model = _rgb_model().double()
    after = audit(model, x, normalize=norm, **FAST)
    before = audit(model, normalize(x, norm), **FAST)
    assert after.provenance.normalize is not None and before.provenance.normalize is None
    for a, b in zip(after.layers, before.layers):
        assert a.error == pytest.approx(b.error, rel=1e-9, abs=1e-12)
    assert after.invariance.sensitivity == pytest.approx(before.invariance.sensitivity, rel=1e-9)


def test_normalization_specs():
    assert normalization("imagenet") == IMAGENET == normalization("ImageNet")
    assert normalization("0.1,0.2;0.3,0.4") == ((0.1, 0.2), (0.3, 0.4))
    assert normalization([[0.5], [2]]) == ((0.5,), (2.0,)) and normalization(None) is None
    for bad, match in [("imagenett", "unknown normalisation 'imagenett'"),
                       ("0.1,0.2;0.3", "2 means and 1 stds"), ("0.1;0", "stds positive"),
                       ("a;b", "with numbers"), (";", "with numbers"), (3, "a name")]:
        with pytest.raises(ShiftlabError, match=match):
            normalization(bad)
    with pytest.raises(ShiftlabError, match="3 means and stds but the inputs have 1 channel"):
        audit(create_model("conv-maxpool"), torch.rand(2, 1, 16, 16), normalize="imagenet", **FAST)


# ----------------------------------------------------------------------------- the command line
def test_the_cli_streams_a_folder_and_records_the_pipeline(tmp_path, capsys):
    write_photos(tmp_path / "p", 6, sizes=[(30 + 4 * k, 50 - 2 * k) for k in range(6)], suffix=".jpg")
    (tmp_path / "p" / "china" / "README.txt").write_text("not an image")
    out = tmp_path / "r.json"
    rc = main(["audit", "--model", rgb_model_file(tmp_path), "--data", f"folder:{tmp_path / 'p'}",
               "--resize", "24", "--center-crop", "20", "--protocol", "crop", "--crop", "16x16",
               "--shifts=0:1", "--pairs", "2", "--normalize", "imagenet", "--workers", "2",
               "--batch-size", "4", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.splitlines() == [f"shiftlab audit: warning: UserWarning: {tmp_path / 'p'}: ignored 1 "
                                "non-image file (china/README.txt)"]
    p = json.loads(out.read_text())["provenance"]
    assert p["input_shape"] == [3, 16, 16] and p["n_images"] == 6
    assert p["data"]["preprocess"]["resize"] == 24 and p["data"]["preprocess"]["center_crop"] == [20, 20]
    assert p["data"]["ignored_files"] == 1 and p["data"]["loader"]["workers"] == 2
    assert p["normalize"]["std"] == list(IMAGENET[1]) and "D = 4" in p["pair_offsets"]
    back = AuditResult.from_json(out)                                  # the fields read back
    assert back.provenance.data == p["data"] and back.provenance.normalize == p["normalize"]


def test_scan_reads_headers_only(tmp_path, monkeypatch):
    """The scan decides channels and sizes without decoding a single image."""
    from PIL import ImageFile
    write_photos(tmp_path / "p", 4, suffix=".jpg")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    index = scan_image_folder(tmp_path / "p")
    assert index.sample_shape == (3, 24, 24) and len(index.files) == 4
    assert isinstance(FolderStream(index), FolderStream)


def test_a_zoo_model_takes_the_folders_channel_count(tmp_path, capsys):
    """No model file needed for colour photos: the zoo builds lenet-wolf-gap with 3 inputs."""
    write_photos(tmp_path / "p", 4, sizes=[(28, 28)] * 4, suffix=".png")
    out = tmp_path / "r.json"
    rc = main(["audit", "--model", "lenet-wolf-gap", "--data", f"folder:{tmp_path / 'p'}",
               "--shifts=0:1", "--pairs", "1", "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["provenance"]["input_shape"] == [3, 28, 28]
