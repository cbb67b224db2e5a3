"""The ImageNet ResNets of the zoo (``resnet18``, ``resnet50`` and their ``-blur`` /
``-aps`` fixes) and ``--model torchvision:NAME`` / ``timm:NAME`` / ``--pretrained``.

torchvision cannot be installed beside the CPU torch here, so its layout is written out
in this file from the architecture as torchvision documents it (He et al. 2016, v1.5),
by an enumeration that shares no code with :mod:`shiftlab.models.resnet_imagenet`, and a
functional forward pass (``F.conv2d`` ...) built from that layout is the oracle for the
model's function."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from shiftlab import audit
from shiftlab.cli import main
from shiftlab.convert import convert
from shiftlab.errors import ShiftlabError
from shiftlab.loading import load_model, load_weights, read_state_dict
from shiftlab.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = Path(__file__).resolve().parents[1]
DEPTHS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
COUNTS = {"resnet18": 11_689_512, "resnet50": 25_557_032}          # torchvision's, documented


# ------------------------------------------------------------------ the documented layout
def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def torchvision_layout(arch: str, classes: int = 1000) -> "OrderedDict[str, tuple[int, ...]]":
    """torchvision's ``resnetNN().state_dict()`` keys and shapes, in order: stem conv 7x7
    (64) and BN; stages of widths 64, 128, 256, 512; a stage's first block carries a
    ``downsample`` (1x1 conv + BN) when it strides or changes width; ``fc``."""
    block, depths = DEPTHS[arch]
    expansion = 1 if block == "basic" else 4
    keys = [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
    c_in = 64
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths), 1):
        for b in range(depth):
            p, c_out = f"layer{stage}.{b}", width * expansion
            if block == "basic":
                keys += [(f"{p}.conv1.weight", (width, c_in, 3, 3))] + _bn(f"{p}.bn1", width)
                keys += [(f"{p}.conv2.weight", (width, width, 3, 3))] + _bn(f"{p}.bn2", width)
            else:
                keys += [(f"{p}.conv1.weight", (width, c_in, 1, 1))] + _bn(f"{p}.bn1", width)
                keys += [(f"{p}.conv2.weight", (width, width, 3, 3))] + _bn(f"{p}.bn2", width)
                keys += [(f"{p}.conv3.weight", (c_out, width, 1, 1))] + _bn(f"{p}.bn3", c_out)
            if b == 0 and (stage > 1 or c_in != c_out):
                keys += [(f"{p}.downsample.0.weight", (c_out, c_in, 1, 1))] + _bn(f"{p}.downsample.1", c_out)
            c_in = c_out
    keys += [("fc.weight", (classes, c_in)), ("fc.bias", (classes,))]
    return OrderedDict(keys)


def _random_checkpoint(arch: str, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A checkpoint in torchvision's layout with random values (BN variances positive),
    as ``torch.save(torchvision.models.resnetNN().state_dict())`` would write one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in torchvision_layout(arch).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = (0.5 + torch.rand(shape, generator=g)).to(dtype)
        elif name.endswith("running_mean") or name.endswith(".bias"):
            state[name] = (0.1 * torch.randn(shape, generator=g)).to(dtype)
        elif ".bn" in name or name.startswith("bn1") or "downsample.1" in name:
            state[name] = (1 + 0.1 * torch.randn(shape, generator=g)).to(dtype)
        else:                                                     # conv and fc weights
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            state[name] = (torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5).to(dtype)
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, arch: str) -> torch.Tensor:
    """torchvision's ResNet forward written with functional ops from the checkpoint:
    ``conv(7, /2, pad 3) → BN → ReLU → maxpool(3, /2, pad 1)``, blocks (BasicBlock: 3x3
    convs, the first strided; Bottleneck v1.5: 1x1, 3x3 strided, 1x1), GAP, ``fc``."""
    block, depths = DEPTHS[arch]

    def bn(t, p):
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"],
                            state[f"{p}.weight"], state[f"{p}.bias"], False, 0.0, 1e-5)

    def conv(t, p, stride=1):
        w = state[f"{p}.weight"]
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for stage, depth in enumerate(depths, 1):
        for b in range(depth):
            p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            if block == "basic":
                out = F.relu(bn(conv(x, f"{p}.conv1", stride), f"{p}.bn1"))
                out = bn(conv(out, f"{p}.conv2"), f"{p}.bn2")
            else:
                out = F.relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
                out = F.relu(bn(conv(out, f"{p}.conv2", stride), f"{p}.bn2"))
                out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            short = x if f"{p}.downsample.0.weight" not in state else \
                bn(conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1")
            x = F.relu(out + short)
    return F.linear(x.mean((2, 3)), state["fc.weight"], state["fc.bias"])


# ------------------------------------------------------------------ layout and counts
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_state_dict_has_torchvisions_names_shapes_and_order(arch):
    want = torchvision_layout(arch)
    got = OrderedDict((k, tuple(v.shape)) for k, v in create_model(arch).state_dict().items())
    assert list(got) == list(want)
    assert got == want


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_counts_are_torchvisions(arch):
    model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == COUNTS[arch]
    # the independent layout agrees (parameters: all but the BN running stats and counters)
    layout = torchvision_layout(arch)
    params = [s for k, s in layout.items() if not k.rsplit(".", 1)[1].startswith(("running", "num_"))]
    assert sum(int(torch.tensor(s).prod()) for s in params) == COUNTS[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_forward_equals_the_functional_oracle_on_torchvision_weights(arch, tmp_path):
    state = _random_checkpoint(arch, dtype=torch.float64)
    path = tmp_path / "tv.pt"
    torch.save(state, path)
    model = load_weights(create_model(arch).double().eval(), path)
    x = torch.rand(2, 3, 64, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), reference_forward(state, x, arch), rtol=1e-10, atol=1e-10)


def test_imagenet_size_forward_shapes():
    for arch in ("resnet18", "resnet50"):
        with torch.no_grad():
            assert create_model(arch).eval()(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    assert create_model("resnet18", num_classes=10)(torch.rand(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_torchvision_checkpoint_loads_with_weights_and_round_trips(suffix, tmp_path, capsys):
    state = _random_checkpoint("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = load_weights(create_model("resnet18"), path)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    again = tmp_path / f"again{suffix}"                              # save ours, read it back
    if suffix == ".pt":
        torch.save(model.state_dict(), again)
    else:
        save_file(model.state_dict(), str(again))
    assert all(torch.equal(v, state[k]) for k, v in read_state_dict(again).items())
    assert main(["layers", "--model", "resnet18", "--weights", str(path), "--input", "3x64x64"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["layer4.1.relu#2", "ReLU", "512x2x2", "32", "(measured)"] in rows


def test_a_checkpoint_without_batchnorm_counters_loads(tmp_path):
    """torchvision's original ImageNet files have no ``num_batches_tracked``."""
    state = {k: v for k, v in _random_checkpoint("resnet18").items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pt")
    model = load_weights(create_model("resnet18"), tmp_path / "old.pt")
    assert torch.equal(model.fc.weight, state["fc.weight"])
    del state["fc.bias"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ShiftlabError, match="missing fc.bias"):
        load_weights(create_model("resnet18"), tmp_path / "broken.pt")


def test_models_lists_the_resnets_with_their_counts(capsys):
    assert main(["models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name in ("resnet18", "resnet18-blur", "resnet18-aps", "resnet50", "resnet50-blur", "resnet50-aps"):
        assert rows[name][1] == "32" and rows[name][3] == f"{COUNTS[name[:8]]:,}", rows[name]
    assert rows["resnet18"][2] == "435" and rows["resnet50"][2] == "427"   # receptive fields


# ------------------------------------------------------------------ the -blur / -aps fixes
STRIDED = {"resnet18": ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1",
                        "layer3.0.downsample.0", "layer4.0.conv1", "layer4.0.downsample.0"],
           "resnet50": ["conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer3.0.conv2",
                        "layer3.0.downsample.0", "layer4.0.conv2", "layer4.0.downsample.0"]}


@pytest.mark.parametrize("name", ["resnet18-blur", "resnet18-aps", "resnet50-blur", "resnet50-aps"])
def test_fixes_keep_torchvisions_names_except_the_strided_convs(name):
    """Unchanged layers keep their torchvision names; a strided conv ``P`` becomes ``P.op``."""
    arch = name.rsplit("-", 1)[0]
    renamed = {f"{p}.weight": f"{p}.op.weight" for p in STRIDED[arch]}
    want = [(renamed.get(k, k), s) for k, s in torchvision_layout(arch).items()]
    model = create_model(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == want
    assert sum(p.numel() for p in model.parameters()) == COUNTS[arch]


def test_blur_with_filter_one_computes_the_baseline_and_convert_writes_its_keys(tmp_path, capsys):
    """Converting a torchvision checkpoint (``shiftlab convert``) gives ``resnet18-blur``'s keys;
    with the 1-tap filter the anti-aliased net is the baseline's function exactly."""
    state = _random_checkpoint("resnet18")
    torch.save(state, tmp_path / "tv.pt")
    out = tmp_path / "blur.safetensors"
    assert main(["convert", "--model", "resnet18", "--weights", str(tmp_path / "tv.pt"), "--method",
                 "blurpool", "--input", "3x64x64", "--out", str(out)]) == 0
    assert "maxpool: MaxPool2d -> MaxBlurPool" in capsys.readouterr().out
    blurred = load_weights(create_model("resnet18-blur").eval(), out)
    base = load_weights(create_model("resnet18").eval(), tmp_path / "tv.pt")
    one_tap = load_weights(create_model("resnet18-blur", filter_size=1).eval(), out)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(one_tap(x), base(x), atol=1e-5)
        assert not torch.allclose(blurred(x), base(x), atol=1e-3)        # the blur does act


def test_resnet18_aps_follows_the_law_exactly_at_multiples_of_its_stride():
    """Known answer: resnet18-aps (circular convs, APS) on 64x64 inputs. Circular shifts by
    multiples of 32 (every layer's stride divides them) move every probed map exactly as
    the law says; the output is invariant to every integer circular shift. The zero-padded
    baseline is neither; made circular it is exact at multiples of 32 only."""
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    shifts = "0,0;32,0;0,32;-32,32"
    aps = create_model("resnet18-aps").double().eval()
    result = audit(aps, x, protocol="circular", shifts=shifts, pairs=0)
    compared = [l for l in result.layers if l.comparison == "equivariance"]
    assert len(compared) > 40 and all(e < 1e-12 for l in compared for e in l.error if e is not None)
    with torch.no_grad():
        ref = aps(x)
        for d in [(1, 0), (3, -5), (17, 9), (31, 31)]:
            assert torch.allclose(aps(torch.roll(x, d, (2, 3))), ref, rtol=1e-9, atol=1e-12), d

    base = create_model("resnet18").double().eval()
    circular = convert(base, "circular")[0]
    with torch.no_grad():
        def change(net, d):
            return ((net(torch.roll(x, d, (2, 3))) - net(x)).norm() / net(x).norm()).item()
        assert change(base, (32, 0)) > 1e-3                    # zero padding: not exact
        assert change(circular, (32, 0)) < 1e-12 and change(circular, (0, -32)) < 1e-12
        assert change(circular, (1, 0)) > 1e-3                  # not a multiple of 32


# ------------------------------------------------------------------ torchvision: / timm:
FAKES = {
    "torchvision": {"__init__.py": "", "models.py": '''
"""Stand-in for the absent torchvision (tests only): get_model and nothing else."""
import torch

calls = []


def get_model(name, *, weights=None):
    calls.append((name, weights))
    if name != "resnet18":
        raise ValueError(f"Unknown model {name}")
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
'''},
    "timm": {"__init__.py": '''
"""Stand-in for the absent timm (tests only): create_model and nothing else."""
import torch

calls = []


def create_model(name, pretrained=False):
    calls.append((name, pretrained))
    if name != "resnet18":
        raise RuntimeError(f"Unknown model ({name})")
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
'''},
}


def _forget(library: str) -> None:
    for key in [k for k in sys.modules if k == library or k.startswith(library + ".")]:
        del sys.modules[key]


@pytest.fixture
def fake_library(tmp_path, monkeypatch):
    """Write a minimal stand-in for an absent third-party library into a folder on
    ``sys.path`` (what a user's installed package would be); forget it afterwards."""
    made = []

    def make(library: str, files: dict[str, str] | None = None):
        folder = tmp_path / "site" / library
        folder.mkdir(parents=True)
        for file, text in (files or FAKES[library]).items():
            (folder / file).write_text(text)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        _forget(library)
        made.append(library)
        return tmp_path / "site"
    yield make
    for library in made:
        _forget(library)


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_missing_library_is_one_line_naming_how_to_install(library, capsys, tmp_path):
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed here")
    with pytest.raises(ShiftlabError, match=rf"^--model {library}:resnet18 needs {library}, which is "
                                            rf"not installed: pip install {library} \("):
        load_model(f"{library}:resnet18")
    out = tmp_path / "r.json"
    assert main(["audit", "--model", f"{library}:resnet18", "--pretrained", "--data", "synthetic:2:3x32x32",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("shiftlab audit: error: --model ") and f"pip install {library}" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("pretrained", [False, True])
def test_torchvision_adapter_calls_get_model(fake_library, pretrained):
    fake_library("torchvision")
    model = load_model("torchvision:resnet18", input_size=64, pretrained=pretrained)
    assert isinstance(model, torch.nn.Module)
    assert sys.modules["torchvision.models"].calls == [("resnet18", "DEFAULT" if pretrained else None)]
    with pytest.raises(ShiftlabError, match=r"^torchvision.models.get_model\('nope', weights=None\) "
                                            r"raised ValueError: Unknown model nope$"):
        load_model("torchvision:nope")


@pytest.mark.parametrize("pretrained", [False, True])
def test_timm_adapter_calls_create_model(fake_library, pretrained):
    fake_library("timm")
    load_model("timm:resnet18", pretrained=pretrained)
    assert sys.modules["timm"].calls == [("resnet18", pretrained)]
    with pytest.raises(ShiftlabError, match=r"^timm.create_model\('nope', pretrained=False\) raised "
                                            r"RuntimeError: Unknown model \(nope\)$"):
        load_model("timm:nope")


def test_cli_runs_a_library_model_with_pretrained(fake_library, capsys, tmp_path):
    fake_library("torchvision")
    out = tmp_path / "r.json"
    assert main(["audit", "--model", "torchvision:resnet18", "--pretrained", "--data", "synthetic:2:3x16x16",
                 "--shifts=-1:1", "--pairs", "1", "--quiet", "--out", str(out)]) == 0
    assert sys.modules["torchvision.models"].calls == [("resnet18", "DEFAULT")]
    assert json.loads(out.read_text())["provenance"]["model"] == "torchvision:resnet18"


@pytest.mark.parametrize("library, files, message", [
    ("torchvision", {"__init__.py": "raise RuntimeError('operator torchvision::nms does not exist')"},
     r"^torchvision is installed but cannot be imported \(RuntimeError: operator torchvision::nms does not "
     r"exist\); reinstall it: pip install torchvision"),
    ("timm", {"__init__.py": "import torchvision_absent_here"},
     r"^timm is installed but cannot be imported \(ModuleNotFoundError: No module named "
     r"'torchvision_absent_here'\): pip install timm"),
    ("torchvision", {"__init__.py": "", "models.py": "def resnet18():\n    pass\n"},
     r"^this torchvision has no models.get_model \(added in torchvision 0.14\)"),
    ("timm", {"__init__.py": "def create_model(name, pretrained=False):\n    return 'a string'\n"},
     r"^timm:resnet18 gave str, not an nn.Module$"),
])
def test_broken_or_old_library_installs_are_one_line(fake_library, library, files, message):
    fake_library(library, files)
    with pytest.raises(ShiftlabError, match=message):
        load_model(f"{library}:resnet18")


def test_the_libraries_are_imported_only_when_asked(fake_library):
    """With (stand-ins for) both libraries importable, zoo models and the CLI never import them."""
    site = fake_library("torchvision")
    fake_library("timm")
    code = ("import sys; from shiftlab.cli import main; "
            "rc = main(['layers', '--model', 'resnet18', '--input', '3x32x32']); "
            "from shiftlab.loading import load_model; load_model('resnet50-aps'); "
            "assert rc == 0 and not {'torchvision', 'timm'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": f"{SRC}:{site}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-c", "import sys; from shiftlab.loading import load_model; "
                           "load_model('timm:resnet18'); assert 'timm' in sys.modules"],
                          capture_output=True, text=True, env={"PYTHONPATH": f"{SRC}:{site}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ --pretrained for the zoo
def test_pretrained_zoo_model_loads_its_shipped_weights(tmp_path):
    common = ["--data", "synthetic:4", "--shifts=-1:1", "--pairs", "1", "--quiet"]
    assert main(["audit", "--model", "lenet-wolf", "--pretrained", *common, "--out", str(tmp_path / "a.json")]) == 0
    assert main(["audit", "--model", "lenet-wolf", "--weights", str(ROOT / "weights/lenet-wolf/model.safetensors"),
                 *common, "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["invariance"] == b["invariance"] and a["layers"] == b["layers"]
    assert main(["audit", "--model", "lenet-wolf", *common, "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["layers"] != a["layers"]     # untrained differs


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet18", "--pretrained", "--input", "3x32x32"],
     "resnet18 has no shipped weights (shiftlab ships MNIST weights for lenet-wolf, "),
    (["--model", "resnet50-aps", "--pretrained", "--input", "3x32x32"],
     "resnet50-aps has no shipped weights"),
    (["--model", "lenet-wolf", "--pretrained", "--weights", "x.pt"], "give --pretrained or --weights, not both"),
    (["--model", "net.py:build", "--pretrained"], "--pretrained takes a zoo name, torchvision:NAME or timm:NAME"),
    (["--model", "lenet-wolf", "--pretrained", "--input", "1x38x38"],
     "the shipped lenet-wolf weights fit 28x28 inputs, not 38x38"),
    (["--model", "torchvision:", "--input", "3x32x32"], "--model torchvision: names no model"),
    (["--model", "resnet-nope", "--pretrained"], "unknown model 'resnet-nope'; choose one of "),
])
def test_bad_pretrained_or_library_input_is_one_line(argv, message, capsys):
    assert main(["layers", *argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("shiftlab layers: error: " + message), err
