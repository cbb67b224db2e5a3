"""ONNX export (issue 13, part 5): every fix exports with dynamic batch and spatial size, and
a real onnxruntime session agrees with PyTorch to 1e-5 on odd sizes and on maps smaller than
the filter; APS's data-dependent choice survives export; bad input is one line, exit 2, no file."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from shiftlab.actions import circular_shift
from shiftlab.cli import main
from shiftlab.convert import convert
from shiftlab.errors import ShiftlabError
from shiftlab.export import export_onnx
from shiftlab.layers import APS, BlurPool
from shiftlab.models import create_model

AGREE = 1e-5            # float32: ONNX Runtime vs PyTorch, relative to the output's magnitude


class Block(nn.Module):
    """A strided residual block (conv + 1x1 shortcut), so APS ties the shortcut's phase."""

    def __init__(self, c_in=4, c_out=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 2, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, 2)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))


def _small(dims: int = 2) -> nn.Module:
    """conv → ReLU → max-pool 2 → strided residual block → global average → linear; for
    signals an average pool and a strided conv (torch.export fixes the length of a 1-D
    max-pool: see test_an_axis_torch_export_fixes_is_reported)."""
    torch.manual_seed(0)
    if dims == 1:
        return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool1d(2),
                             nn.Conv1d(4, 6, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                             nn.Flatten(), nn.Linear(6, 3)).eval()
    conv, pool, gap = nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), pool(2), Block(), gap(1),
                         nn.Flatten(), nn.Linear(6, 3)).eval()


def _fixed(method: str, dims: int = 2) -> nn.Module:
    net = _small(dims)
    if method == "blurpool":                        # BlurConv, MaxBlurPool; a 5-tap filter
        return convert(net, "blurpool", filter_size=5)[0]
    if method == "aps":                             # circular first: exactly invariant
        return convert(convert(net, "circular")[0], "aps", filter_size=3)[0]
    if method == "plain":
        return net
    return convert(net, method)[0]


MODELS = {                       # name → (model, one input's shape)
    "plain": lambda: (_fixed("plain"), (1, 16, 16)),
    "blurpool": lambda: (_fixed("blurpool"), (1, 16, 16)),
    "aps": lambda: (_fixed("aps"), (1, 16, 16)),
    "circular": lambda: (_fixed("circular"), (1, 16, 16)),
    "alias-free": lambda: (_fixed("alias-free"), (1, 16, 16)),
    "alias-free-1d": lambda: (_fixed("alias-free", dims=1), (1, 32)),
    "aps-1d": lambda: (_fixed("aps", dims=1), (1, 32)),
    "blurpool-1d": lambda: (_fixed("blurpool", dims=1), (1, 32)),
}
# sizes to run: odd sides, and maps smaller than the 5-tap filter after the strides (3x2 → 1x1)
SIZES = {2: [(2, 1, 16, 16), (1, 1, 17, 23), (3, 1, 9, 7), (1, 1, 6, 5), (2, 1, 40, 33)],
         1: [(2, 1, 32), (1, 1, 33), (3, 1, 7), (1, 1, 5), (2, 1, 101)]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each model exported once: ``name → (model, ExportResult, onnxruntime session)``."""
    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(name):
        if name not in cache:
            model, shape = MODELS[name]()
            result = export_onnx(model, folder / f"{name}.onnx", shape)
            session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
            cache[name] = (model, result, session)
        return cache[name]
    return get


def _run(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _assert_agrees(model, session, x):
    with torch.no_grad():
        expected = model(x)
    got = _run(session, x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= AGREE * max(1.0, float(expected.abs().max())), x.shape


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_agrees_with_pytorch_on_many_sizes(name, exported):
    model, result, session = exported(name)
    rank = len(MODELS[name]()[1]) - 1
    assert set(result.dynamic) == ({"batch", "height", "width"} if rank == 2 else {"batch", "time"})
    assert result.static == {} and result.max_difference <= AGREE
    inputs = [d.dim_param or d.dim_value for d in onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(inputs[0], str) and inputs[1] == 1 and all(isinstance(v, str) for v in inputs[2:])
    generator = torch.Generator().manual_seed(1)
    smallest = [s for s in SIZES[rank] if all(n >= result.dynamic[a] for n, a in
                                              zip(s[2:], ("height", "width") if rank == 2 else ("time",)))]
    assert len(smallest) >= 4                       # the small sizes are inside the exported range
    for shape in smallest:
        _assert_agrees(model, session, torch.randn(*shape, generator=generator))


def test_a_blur_on_a_map_smaller_than_its_filter_blurs_it(tmp_path):
    """The anchor libraries' bug: a blur that returns its input when the map is smaller than
    the filter. Here a 7-tap reflect blur of a 2x3 map is the blur, in PyTorch and in ONNX."""
    blur = BlurPool(None, 7, 1, "reflect").eval()
    session = onnxruntime.InferenceSession(str(export_onnx(blur, tmp_path / "b.onnx", (2, 12, 12)).path))
    for shape in [(1, 2, 2, 3), (2, 2, 1, 4), (1, 2, 3, 3)]:
        x = torch.randn(*shape)
        out = _run(session, x)
        assert not torch.allclose(out, x, atol=1e-3)
        _assert_agrees(blur, session, x)


def test_blurpool_channel_count_is_a_constant_of_the_graph(exported):
    """No MaxBlurPool / BlurConv reads its channel count at run time: every Conv weight in the
    graph is an initializer, and an input with other channels is refused, not blurred."""
    _, result, session = exported("blurpool")
    graph = onnx.load(str(result.path)).graph
    initializers = {i.name for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) >= 6 and all(n.input[1] in initializers for n in convs)
    with pytest.raises(Exception, match="(?i)channel|dimension|shape"):
        _run(session, torch.randn(1, 2, 16, 16))


def test_aps_data_dependent_phase_is_exported(exported):
    """The phase (argmax of the component norms) differs per sample and the exported gather
    follows it; the exported net keeps APS's exact invariance to circular shifts."""
    model, _, session = exported("aps")
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    aps = [m for m in model.modules() if isinstance(m, APS)]
    with torch.no_grad():
        model(x)
        phases = aps[0].last_phase.clone()
    assert len(set(phases.tolist())) >= 3
    _assert_agrees(model, session, x)
    reference = _run(session, x)
    for shift in [(1, 0), (0, 3), (5, -7)]:
        assert torch.allclose(_run(session, circular_shift(x, shift)), reference, atol=1e-5)


def test_a_linear_head_keeps_spatial_size_static_and_says_why(tmp_path):
    model = create_model("lenet-wolf-maxpool-blur").eval()
    result = export_onnx(model, tmp_path / "l.onnx", (1, 28, 28))
    assert result.dynamic == {"batch": 1} and result.static == {"height": 28, "width": 28}
    assert "does not run at 56x56" in result.why_static and "fixed: height = 28" in result.summary()
    session = onnxruntime.InferenceSession(str(result.path))
    _assert_agrees(model, session, torch.randn(3, 1, 28, 28))


def test_an_axis_torch_export_fixes_is_reported(tmp_path):
    """torch 2.13's export narrows the length of a 1-D max-pool's input to the example's: the
    result says the axis is fixed, and why, instead of claiming it dynamic."""
    net = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.MaxPool1d(2), nn.AdaptiveAvgPool1d(1)).eval()
    result = export_onnx(net, tmp_path / "m.onnx", (1, 24))
    assert result.static == {"time": 24} and set(result.dynamic) == {"batch"}
    assert "torch.export fixed them" in result.summary()
    _assert_agrees(net, onnxruntime.InferenceSession(str(result.path)), torch.randn(3, 1, 24))


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("lenet-wolf-maxpool-aps", (1, 28, 28)),
                                         ("lenet-wolf-maxpool-alias-free", (1, 28, 28)),
                                         ("resnet-small-aps", (1, 32, 32))])
def test_zoo_fixed_models_round_trip(name, shape, tmp_path):
    model = create_model(name).eval()
    result = export_onnx(model, tmp_path / "m.onnx", shape)
    session = onnxruntime.InferenceSession(str(result.path))
    for size in [(2, *shape), (1, 1, 31, 29), (3, 1, 12, 12)]:
        _assert_agrees(model, session, torch.randn(*size))


# ----------------------------------------------------------------------------- the CLI
def _lines(capsys):
    captured = capsys.readouterr()
    return captured.out, captured.err.strip().splitlines()


def test_cli_convert_to_onnx(tmp_path, capsys):
    onnx_path = tmp_path / "deep" / "blur.onnx"
    assert main(["convert", "--model", "conv-maxpool", "--method", "blurpool", "--input", "1x16x16",
                 "--onnx", str(onnx_path)]) == 0
    out, err = _lines(capsys)
    assert f"wrote {onnx_path}" in out and "dynamic axes: batch (from 1), height" in out and not err
    assert "ONNX Runtime agrees with PyTorch" in out
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta == {"shiftlab.model": "conv-maxpool", "shiftlab.method": "blurpool"}
    session = onnxruntime.InferenceSession(str(onnx_path))
    assert session.run(None, {"input": np.zeros((2, 1, 20, 12), np.float32)})[0].shape == (2, 10)
    weights = tmp_path / "plain.safetensors"
    assert main(["convert", "--model", "conv-maxpool", "--method", "none", "--input", "1x16x16",
                 "--onnx", str(tmp_path / "plain.onnx"), "--out", str(weights)]) == 0
    assert (tmp_path / "plain.onnx").is_file() and weights.is_file()


def _leftovers(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _unexportable(tmp_path: Path) -> str:
    """A net with data-dependent control flow, which torch.export cannot trace."""
    path = tmp_path / "branchy.py"
    path.write_text("import torch\nfrom torch import nn\n\n"
                    "class Net(nn.Module):\n"
                    "    def __init__(self):\n"
                    "        super().__init__()\n"
                    "        self.conv = nn.Conv2d(1, 2, 3, padding=1)\n"
                    "    def forward(self, x):\n"
                    "        y = self.conv(x)\n"
                    "        return y if y.sum() > 0 else -y\n\n"
                    "def build():\n    return Net()\n")
    return f"{path}:build"


def _softmax_net(tmp_path: Path) -> str:
    path = tmp_path / "soft.py"
    path.write_text("from torch import nn\n\ndef build():\n"
                    "    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Softmax2d())\n")
    return f"{path}:build"


@pytest.mark.parametrize("case", ["unexportable", "suffix", "folder", "none-given",
                                  "activation-elsewhere", "unknown-activation", "blur-options",
                                  "unknown-layer"])
def test_cli_onnx_bad_input_is_one_line_exit_2_and_no_file(case, tmp_path, capsys):
    target = tmp_path / "new" / "m.onnx"
    folder = tmp_path / "d.onnx"
    folder.mkdir()
    args, match = {
        "unexportable": (["--model", _unexportable(tmp_path), "--method", "none", "--input", "1x8x8",
                          "--onnx", str(target)], "torch cannot export the model to ONNX: "),
        "suffix": (["--model", "conv-maxpool", "--method", "none", "--onnx", str(tmp_path / "new" / "m.pb")],
                   "must end in .onnx, got"),
        "folder": (["--model", "conv-maxpool", "--method", "none", "--onnx", str(folder)], "is a directory"),
        "none-given": (["--model", "conv-maxpool", "--method", "aps"], "give --out"),
        "activation-elsewhere": (["--model", "conv-maxpool", "--method", "aps", "--activation", "keep",
                                  "--onnx", str(target)], "--activation chooses the nonlinearities"),
        "unknown-activation": (["--model", "conv-maxpool", "--method", "alias-free", "--activation",
                                "cubic", "--onnx", str(target)], "unknown --activation 'cubic'"),
        "blur-options": (["--model", "conv-maxpool", "--method", "alias-free", "--filter-size", "3",
                          "--onnx", str(target)], "--method alias-free has no blur"),
        "unknown-layer": (["--model", _softmax_net(tmp_path), "--method", "alias-free", "--input", "1x8x8",
                           "--onnx", str(target)], "cannot make 1 (Softmax2d) alias-free: shiftlab "
                                                   "does not know this layer"),
    }[case]
    before = _leftovers(tmp_path)
    assert main(["convert", *args]) == 2
    out, err = _lines(capsys)
    assert len(err) == 1 and err[0].startswith("shiftlab convert: error: ") and match in err[0], err
    assert _leftovers(tmp_path) == before


def test_the_exporters_reason_is_its_innermost_line(tmp_path):
    from shiftlab.loading import load_model
    model = load_model(_unexportable(tmp_path))
    with pytest.raises(ShiftlabError) as err:
        export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))
    message = str(err.value)
    assert "\n" not in message and "data-dependent" in message.lower() and "step 1/3" not in message
    assert not (tmp_path / "m.onnx").exists()


def test_a_disagreement_with_pytorch_writes_nothing(tmp_path, monkeypatch):
    import shiftlab.export as export
    monkeypatch.setattr(export, "TOLERANCE", -1.0)             # any difference is too large
    with pytest.raises(ShiftlabError, match="ONNX Runtime disagrees with PyTorch.*not written"):
        export_onnx(create_model("conv-circular"), tmp_path / "sub" / "m.onnx", (1, 8, 8))
    assert _leftovers(tmp_path) == []


def test_without_onnx_installed_the_error_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)              # import onnx → ImportError
    with pytest.raises(ShiftlabError, match=r"needs onnx, which is not installed; pip install 'shiftlab\[onnx\]'"):
        export_onnx(create_model("conv-circular"), tmp_path / "m.onnx", (1, 8, 8))
    assert main(["convert", "--model", "conv-circular", "--method", "none",
                 "--onnx", str(tmp_path / "m.onnx")]) == 2
    _, err = _lines(capsys)
    assert len(err) == 1 and "pip install 'shiftlab[onnx]'" in err[0]
    assert _leftovers(tmp_path) == []


def test_the_export_module_imports_onnx_only_when_asked():
    code = "import sys, shiftlab.export, shiftlab.cli; print('onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.fixture
def small_disk(tmp_path):
    """``mount(bytes)``: a real tmpfs of that size, unmounted after the test."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"needs a real small file system; mounting a tmpfs failed: {done.stderr.strip()}")
        mounted.append(where)
        return where
    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_leaves_no_onnx_file(small_disk, capsys):
    disk = small_disk(64 << 10)                                # lenet-wolf's graph is ~270 kB
    assert main(["convert", "--model", "lenet-wolf", "--method", "none",
                 "--onnx", str(disk / "models" / "r.onnx")]) == 2
    _, err = _lines(capsys)
    assert len(err) == 1 and "r.onnx': no space left on the device" in err[0]
    assert _leftovers(disk) == []


def test_weights_and_onnx_are_written_both_or_neither(tmp_path, capsys, monkeypatch):
    import shiftlab.io as io
    write = io.write_bytes_atomic

    def onnx_fails(path, data):
        if str(path).endswith(".onnx"):
            raise ShiftlabError(f"cannot write {str(path)!r}: no space left on the device; free some space")
        return write(path, data)
    monkeypatch.setattr(io, "write_bytes_atomic", onnx_fails)
    assert main(["convert", "--model", "lenet-wolf", "--method", "circular", "--out",
                 str(tmp_path / "w.safetensors"), "--onnx", str(tmp_path / "w.onnx")]) == 2
    _, err = _lines(capsys)
    assert len(err) == 1 and "no space left" in err[0] and _leftovers(tmp_path) == []
