"""Loaders on small generated files; corrupt files; canvas placement; one real-MNIST smoke test."""
import gzip
import struct

import numpy as np
import pytest
import torch

from shiftlab import ShiftlabError
from shiftlab.data import (load_data, load_idx_dir, load_image_folder, place_on_canvas,
                           random_positions, read_idx)
from shiftlab.data import mnist as mnist_mod


def _idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_idx_dir(root, n=7, gz=True, prefix="t10k"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    for kind, arr, d in (("images", images, 3), ("labels", labels, 1)):
        raw = _idx_bytes(arr)
        name = root / f"{prefix}-{kind}-idx{d}-ubyte{'.gz' if gz else ''}"
        name.write_bytes(gzip.compress(raw) if gz else raw)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images, labels = _write_idx_dir(tmp_path, gz=gz)
    x, y = load_idx_dir(tmp_path, "test")
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    t, ty = load_data(f"idx:{tmp_path}:test")
    assert t.shape == (7, 1, 5, 6) and torch.equal(ty, torch.from_numpy(labels).long())
    assert torch.allclose(t[:, 0] * 255, torch.from_numpy(images).float())


def test_idx_big_endian_ints(tmp_path):
    arr = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)


@pytest.mark.parametrize("corrupt,match", [
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: b"\x01\x02" + raw[2:], "not an IDX"),
    (lambda raw: raw[:3], "not an IDX"),
    (lambda raw: raw[:6], "header"),
    (lambda raw: gzip.compress(raw)[:-10], "corrupt gzip"),
])
def test_corrupt_idx_files(tmp_path, corrupt, match):
    raw = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "x.idx").write_bytes(corrupt(raw))
    with pytest.raises(ShiftlabError, match=match):
        read_idx(tmp_path / "x.idx")


def test_idx_dir_errors(tmp_path):
    with pytest.raises(ShiftlabError, match="does not exist"):
        load_idx_dir(tmp_path / "missing")
    with pytest.raises(ShiftlabError, match="no t10k-images"):
        load_idx_dir(tmp_path)
    _write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(ShiftlabError, match="7 images but 3 labels"):
        load_idx_dir(tmp_path)


def test_mnist_pickle_with_the_wrong_hash_is_never_unpickled():
    with pytest.raises(ShiftlabError, match="refusing to unpickle"):
        mnist_mod.convert_pickle(gzip.compress(b"cos\nsystem\n(S'echo pwned'\ntR."))


def test_mnist_npz_checks(tmp_path):
    bad = tmp_path / "mnist.npz"
    np.savez(bad, test_x=np.zeros((5, 28, 28), np.uint8), test_y=np.zeros(5, np.uint8))
    with pytest.raises(ShiftlabError, match="not MNIST's"):
        mnist_mod.load_mnist("test", bad)
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ShiftlabError, match="corrupt"):
        mnist_mod.load_mnist("test", bad)
    with pytest.raises(ShiftlabError, match="splits"):
        mnist_mod.load_mnist("holdout", bad)


def test_real_mnist_smoke():
    """The one test on the real MNIST that `make data` set up: shapes, labels, pixel grid."""
    for split, n in (("train", 50_000), ("val", 10_000), ("test", 10_000)):
        x, y = load_data(f"mnist:{split}")
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert torch.bincount(y, minlength=10).tolist() == mnist_mod.LABEL_COUNTS[split]
    assert 0.0 <= float(x.min()) and float(x.max()) < 1.0          # the pickle's [0, 1)
    assert torch.equal(x * 256, (x * 256).round())


def _png(path, array):
    from PIL import Image
    Image.fromarray(array).save(path)


def test_image_folder(tmp_path):
    for k, cls in enumerate(["cat", "dog"]):
        (tmp_path / cls).mkdir()
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", np.full((6, 5), 40 * (k + i), np.uint8))
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1]
    assert x.shape == (4, 1, 6, 5) and float(x[3, 0, 0, 0]) == pytest.approx(80 / 255)
    _png(tmp_path / "dog" / "rgb.png", np.zeros((6, 5, 3), np.uint8))
    with pytest.warns(UserWarning, match="4 grey of 5 read as RGB"):
        assert load_image_folder(tmp_path)[0].shape == (5, 3, 6, 5)   # any colour -> RGB


def test_a_flat_image_folder_has_no_labels(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", np.full((4, 6), 60 * i, np.uint8))
    x, y, classes = load_image_folder(tmp_path)
    assert x.shape == (3, 1, 4, 6) and y is None and classes is None
    assert x[:, 0, 0, 0].tolist() == pytest.approx([0, 60 / 255, 120 / 255])
    images, labels = load_data(f"folder:{tmp_path}")
    assert torch.equal(images, x) and labels is None


@pytest.mark.parametrize("setup,match", [
    (lambda root: None, "hold no images"),
    (lambda root: (root / "a").mkdir(), "and its class folders hold no images"),
    (lambda root: ((root / "a").mkdir(), (root / "a" / "x.png").write_bytes(b"not a png")), "cannot read image"),
    (lambda root: ((root / "a").mkdir(), _png(root / "a" / "1.png", np.zeros((4, 4), np.uint8)),
                   _png(root / "a" / "2.png", np.zeros((5, 4), np.uint8))), "differ in size"),
])
def test_image_folder_errors(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(ShiftlabError, match=match):
        load_image_folder(tmp_path)


def test_canvas_placement_is_exact_and_bounded():
    x = torch.rand(3, 2, 4, 5)
    pos = torch.tensor([[0, 0], [3, 1], [6, 5]])
    out = place_on_canvas(x, (10, 10), pos, fill=-1.0)
    for i, (py, px) in enumerate(pos.tolist()):
        assert torch.equal(out[i, :, py:py + 4, px:px + 5], x[i])
        rest = out[i].clone()
        rest[:, py:py + 4, px:px + 5] = -1.0
        assert bool((rest == -1.0).all())
    centred = place_on_canvas(torch.ones(1, 1, 28, 28), (38, 38))
    assert torch.equal(centred[0, 0, 5:33, 5:33], torch.ones(28, 28)) and centred.sum() == 784
    with pytest.raises(ShiftlabError, match="inside"):
        place_on_canvas(x, (10, 10), (7, 0))
    with pytest.raises(ShiftlabError, match="do not fit"):
        place_on_canvas(x, (3, 10))


def test_random_positions_stay_inside_and_in_region():
    g = torch.Generator().manual_seed(1)
    pos = random_positions(2000, (28, 28), (38, 38), g)
    assert pos.min() == 0 and pos.max() == 10
    near = random_positions(2000, (28, 28), (38, 38), g, region=2)
    assert near.min() == 3 and near.max() == 7


def test_data_specs(tmp_path):
    x, y = load_data("digits:train")
    assert x.shape == (1500, 1, 8, 8) and float(x.max()) == 1.0 and len(y) == 1500
    assert load_data("synthetic:4:3x9x9")[0].shape == (4, 3, 9, 9)
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 8, 8), np.float32), y=np.zeros(2))
    with pytest.raises(ShiftlabError, match="3 images but 2 labels"):
        load_data(str(tmp_path / "d.npz"))
    with pytest.raises(ShiftlabError, match="neither"):
        load_data("no-such-source")
    with pytest.raises(ShiftlabError, match="folder:"):
        load_data(str(tmp_path))


def test_array_files_accept_every_real_dtype(tmp_path):
    """bool images read as 0/1, uint8 as k/255, other integers over their maximum; float
    labels that are whole numbers become class indices."""
    cases = {"b": (np.eye(4, dtype=bool)[None], 1.0), "u": (np.full((1, 4, 4), 51, np.uint8), 0.2),
             "i": (np.arange(16, dtype=np.int16).reshape(1, 4, 4), 1.0)}
    for name, (array, top) in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=array, y=np.array([3.0]))
        x, y = load_data(str(tmp_path / f"{name}.npz"))
        assert x.dtype == torch.float32 and x.shape == (1, 1, 4, 4)
        assert float(x.max()) == pytest.approx(top) and y.tolist() == [3] and y.dtype == torch.int64


def test_idx_with_more_data_than_its_header_is_corrupt(tmp_path):
    raw = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "x.idx").write_bytes(raw + b"\x00")
    with pytest.raises(ShiftlabError, match="found more"):
        read_idx(tmp_path / "x.idx")


def test_shift_sets_are_capped_in_total_and_per_axis():
    from shiftlab.shifts import MAX_SHIFTS, ShiftSet
    assert len(ShiftSet.parse("-99:99")) == 199 ** 2 <= MAX_SHIFTS
    with pytest.raises(ShiftlabError, match="40,401 shifts, more than the cap of 40,000"):
        ShiftSet.parse("-100:100")
    with pytest.raises(ShiftlabError, match="per axis"):
        ShiftSet.parse("x=0:20000")
    with pytest.raises(ShiftlabError, match="cap"):
        ShiftSet.from_pairs([(0, k) for k in range(MAX_SHIFTS + 1)])
