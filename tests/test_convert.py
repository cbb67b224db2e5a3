"""convert(): what it replaces, what it preserves, exact APS invariance, refusals, the CLI."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from shiftlab import audit
from shiftlab.cli import main
from shiftlab.convert import convert
from shiftlab.errors import ShiftlabError
from shiftlab.layers import APS, APSShortcut, BlurConv, Downsampled, MaxBlurPool
from shiftlab.models import create_model
from shiftlab.probe import infer_layers
from shiftlab.testing import assert_shift_invariant

FIXED = ["lenet-wolf-blur", "lenet-wolf-maxpool-blur", "lenet-wolf-maxpool-blur2",
         "lenet-wolf-maxpool-blur5", "lenet-wolf-stride-blur", "lenet-wolf-maxpool-aps",
         "resnet-small-blur", "resnet-small-aps", "lenet-wolf-maxpool-alias-free"]


def _x(name, n=3, dtype=torch.float64):
    size = 32 if name.startswith("resnet") else 28
    return torch.randn(n, 1, size, size, dtype=dtype)


def test_blurpool_replaces_pools_and_strided_convs():
    net, replaced = convert(create_model("lenet-wolf-stride"), "blurpool")
    assert replaced == ["features.2", "features.4", "pool"]
    assert isinstance(net.features[2], BlurConv) and isinstance(net.pool, MaxBlurPool)
    net, replaced = convert(create_model("resnet-small"), "blurpool", filter_size=5)
    assert replaced == ["stages.1.conv1", "stages.1.shortcut.0", "stages.2.conv1", "stages.2.shortcut.0"]
    assert net.stages[1].conv1.down.filter_size == 5


@pytest.mark.parametrize("name", ["lenet-wolf", "lenet-wolf-maxpool", "lenet-wolf-stride", "resnet-small"])
def test_filter_size_one_keeps_the_function_and_the_weights(name):
    """A stride-1 twin sampled at the kept positions equals the strided original."""
    model = create_model(name).double().eval()
    x = _x(name)
    net, replaced = convert(model, "blurpool", filter_size=1)
    assert replaced
    assert torch.allclose(net.eval()(x), model(x), rtol=0, atol=1e-12)
    twins = {k.replace(".op.", "."): v for k, v in net.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(twins[key], value)


def test_the_original_is_untouched_unless_inplace():
    model = create_model("lenet-wolf-maxpool")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert(model, "aps")
    assert isinstance(model.features[2], nn.MaxPool2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same, _ = convert(model, "blurpool", inplace=True)
    assert same is model and isinstance(model.features[2], MaxBlurPool)


def test_circular_on_a_circular_net_is_the_identity():
    model = create_model("lenet-wolf-circular").eval()
    net, replaced = convert(model, "circular")
    x = _x("lenet-wolf", dtype=torch.float32)
    assert replaced == []
    assert torch.equal(net(x), model(x))
    assert net.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in net.state_dict().items())


def test_circular_sets_padding_modes():
    net, replaced = convert(create_model("lenet-wolf-maxpool"), "circular")
    assert replaced == ["features.0", "features.3", "features.6", "features.8"]
    assert all(m.padding_mode == "circular" for m in net.modules() if isinstance(m, nn.Conv2d))
    pooled, replaced = convert(nn.Sequential(nn.MaxPool2d(3, 2, 1)), "circular")
    assert replaced == ["0"] and pooled[0].pool.padding == 0 and pooled[0].pad.mode == "circular"
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(pooled(x), nn.functional.max_pool2d(torch.nn.functional.pad(x, (1,) * 4, "circular"), 3, 2))


@pytest.mark.parametrize("name", FIXED)
def test_converted_state_dict_loads_into_a_fresh_conversion(name):
    torch.manual_seed(1)
    trained = create_model(name).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.manual_seed(2)
    fresh = create_model(name).eval()
    fresh.load_state_dict(trained.state_dict())
    x = _x(name, n=2, dtype=torch.float32)
    assert torch.equal(fresh(x), trained(x))


@pytest.mark.parametrize("name", FIXED)
def test_zoo_geometry_matches_the_probes(name):
    model = create_model(name).eval()
    size = 32 if name.startswith("resnet") else 28
    measured = [i.stride for i in infer_layers(model, torch.zeros(1, 1, size, size))
                if i.stride_source == "measured"]
    assert model.geometry.total_stride == max(measured)


@pytest.mark.parametrize("name", ["lenet-wolf-maxpool-aps", "resnet-small-aps"])
def test_aps_zoo_is_exactly_circular_invariant_untrained(name):
    model = create_model(name).double().eval()
    x = _x(name, n=2)
    size = x.shape[-1]
    shifts = [(1, 0), (0, 1), (-3, 5), (size // 2, 7), (size - 1, size - 1), (2, -13)]
    assert_shift_invariant(model, x, shifts, rtol=1e-9)


def test_resnet_aps_shortcut_shares_the_block_phase():
    net = create_model("resnet-small-aps")
    for block in (net.stages[1], net.stages[2]):
        assert isinstance(block.conv1.down, APS) and isinstance(block.shortcut[0].down, APSShortcut)
        assert block.shortcut[0].down.source is block.conv1.down
    copy = convert(net, "circular")[0]                            # deep copies keep the tie
    assert copy.stages[1].shortcut[0].down.source is copy.stages[1].conv1.down


def test_without_the_tie_a_resnet_is_not_invariant():
    """Independent APS in the shortcut picks its own phase: the block breaks."""
    net = create_model("resnet-small-aps").double().eval()
    for block in (net.stages[1], net.stages[2]):
        block.shortcut[0].down = APS(2)
    with pytest.raises(AssertionError, match="not shift-invariant"):
        assert_shift_invariant(net, _x("resnet", n=4), [(1, 1), (3, 2)])


class _Net(nn.Module):
    """circular conv → strided conv → max-pool → conv → GAP → linear (stride s²)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride, 1), nn.ReLU(),
            nn.MaxPool2d(stride), nn.Conv2d(channels, 4, 3, padding=1))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(-2, -1)))


@settings(max_examples=25, deadline=None)
@given(stride=st.integers(2, 3), rows=st.integers(1, 3), cols=st.integers(1, 3),
       channels=st.integers(1, 4), dy=st.integers(-20, 20), dx=st.integers(-20, 20),
       seed=st.integers(0, 2 ** 16))
def test_hypothesis_aps_nets_are_circular_invariant(stride, rows, cols, channels, dy, dx, seed):
    torch.manual_seed(seed)
    net = convert(convert(_Net(channels, stride), "circular")[0], "aps")[0].double().eval()
    h, w = rows * stride ** 2, cols * stride ** 2
    x = torch.randn(3, 1, h, w, dtype=torch.float64)
    base, moved = net(x), net(torch.roll(x, (dy, dx), (-2, -1)))
    assert torch.equal(base.argmax(1), moved.argmax(1))
    assert torch.allclose(base, moved, rtol=1e-9, atol=1e-9)


class _GapNet(nn.Module):
    """Two conv + max-pool stages and a conv giving 10 class maps, averaged (a GAP head)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 10, 3, padding=1))

    def forward(self, x):
        return self.features(x).mean(dim=(-2, -1))


@pytest.mark.slow
def test_trained_aps_net_has_full_circular_consistency():
    """APS after training: sklearn digits on a 16x16 canvas, 2 epochs (seconds on idle cores)."""
    from shiftlab.data import load_data, place_on_canvas
    (x, y), (xt, yt) = load_data("digits", "train"), load_data("digits", "test")
    x, xt = place_on_canvas(x, (16, 16)), place_on_canvas(xt[:100], (16, 16))
    torch.manual_seed(0)
    net = convert(convert(_GapNet(), "circular")[0], "aps")[0]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    result = audit(net, (xt, yt[:100]), protocol="circular", shifts="-2:2", pairs=2, layers=[])
    inv = result.invariance
    assert inv.consistency == 1.0 and inv.flip_rate == 0.0
    assert inv.clean_accuracy > 0.25                            # it learned (chance: 0.1)
    assert inv.worst_case_accuracy == inv.clean_accuracy        # no shift changes a prediction


@pytest.mark.parametrize("module, match", [
    (nn.Conv2d(1, 2, 3, stride=2, dilation=2), "dilation"),
    (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
    (nn.MaxPool2d(3, 2, dilation=2), "dilated"),
    (nn.AvgPool2d(2, (2, 1)), "strides differ"),
    (nn.LPPool2d(2, 2), "LPPool2d"),
])
def test_refusals_name_the_module(module, match):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), module)
    for method in ("blurpool", "aps"):
        with pytest.raises(ShiftlabError, match=match) as err:
            convert(net, method)
        assert "1 (" in str(err.value) and "\n" not in str(err.value)


def test_bad_arguments():
    net = create_model("lenet-wolf")
    with pytest.raises(ShiftlabError, match="unknown conversion method"):
        convert(net, "antialias")
    with pytest.raises(ShiftlabError, match="filter_size"):
        convert(net, "blurpool", filter_size=9)
    with pytest.raises(ShiftlabError, match="padding"):
        convert(net, "blurpool", padding="mirror")
    with pytest.raises(ShiftlabError, match="norm"):
        convert(net, "aps", norm="l3")
    with pytest.raises(ShiftlabError, match="nn.Module"):
        convert("lenet-wolf", "aps")


def test_a_size_change_before_a_linear_head_is_reported():
    with pytest.raises(ShiftlabError, match=r"output of pool \(MaxPool2d\) from 5x3x3 to 5x4x4"):
        convert(create_model("lenet-wolf-maxpool"), "aps", input_shape=(1, 28, 28))
    convert(create_model("lenet-wolf-maxpool"), "blurpool", input_shape=(1, 28, 28))   # sizes kept
    with pytest.raises(ShiftlabError, match="cannot run"):
        convert(create_model("lenet-wolf"), "blurpool", input_shape=(1, 40, 40))


# ----------------------------------------------------------------------------- CLI
def test_cli_convert_writes_loadable_weights(tmp_path, capsys):
    from safetensors import safe_open

    from shiftlab.loading import load_weights
    torch.manual_seed(3)
    original = create_model("lenet-wolf-maxpool").eval()
    torch.save(original.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "c" / "blur.safetensors"
    assert main(["convert", "--model", "lenet-wolf-maxpool", "--weights", str(tmp_path / "w.pt"),
                 "--method", "blurpool", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features.2: MaxPool2d -> MaxBlurPool" in text and f"wrote {out}" in text
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["method"] == "blurpool"
    reloaded = load_weights(create_model("lenet-wolf-maxpool-blur"), out).eval()   # same architecture
    x = _x("lenet-wolf-maxpool", dtype=torch.float32)
    with torch.no_grad():
        blurred = reloaded(x)
        assert torch.equal(blurred, convert(original, "blurpool")[0](x))          # the conversion, kept
        assert not torch.allclose(blurred, original(x), atol=1e-3)                # and it did something
    with pytest.raises(ShiftlabError, match="do not match"):
        load_weights(create_model("lenet-wolf-maxpool-aps"), out)


@pytest.mark.parametrize("args", [
    ["--model", "lenet-wolf-maxpool", "--method", "aps"],                   # head no longer fits
    ["--model", "lenet-wolf", "--method", "antialias"],
    ["--model", "lenet-wolf", "--method", "blurpool", "--filter-size", "8"],
    ["--model", "no-such-net", "--method", "aps"],
    ["--model", "lenet-wolf", "--method", "aps", "--weights", "missing.pt"],
    ["--model", "lenet-wolf", "--method", "aps", "--input", "1x28"],
])
def test_cli_convert_bad_input_exits_2_without_output(tmp_path, capsys, args):
    out = tmp_path / "c" / "x.safetensors"
    assert main(["convert", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shiftlab convert: error:")
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_cli_convert_refuses_weights_of_another_architecture(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(create_model("lenet-wolf-stride").state_dict(), weights)
    out = tmp_path / "x.safetensors"
    assert main(["convert", "--model", "lenet-wolf", "--weights", str(weights), "--method", "blurpool",
                 "--out", str(out)]) == 2
    assert "do not match" in capsys.readouterr().err and not out.exists()


def _factory_file(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text("from torch import nn\n"
                    "def tied():\n"
                    "    conv = nn.Conv2d(1, 1, 3, padding=1)\n"
                    "    return nn.Sequential(conv, nn.MaxPool2d(2), conv)   # one conv used twice\n"
                    "def bare():\n"
                    "    return nn.Conv2d(1, 2, 3, padding=1)\n")
    return path


def test_cli_convert_saves_tied_weights(tmp_path, capsys):
    """Tied weights share storage, which safetensors refuses; convert writes own copies."""
    from safetensors.torch import load_file
    out = tmp_path / "tied.safetensors"
    assert main(["convert", "--model", f"{_factory_file(tmp_path)}:tied", "--method", "blurpool",
                 "--input", "1x8x8", "--out", str(out)]) == 0
    state = load_file(str(out))
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert torch.equal(state["0.weight"], state["2.weight"])


def test_cli_convert_names_the_root_and_refuses_blur_options_for_circular(tmp_path, capsys):
    nets = _factory_file(tmp_path)
    out = tmp_path / "bare.safetensors"
    assert main(["convert", "--model", f"{nets}:bare", "--method", "circular", "--input", "1x8x8",
                 "--out", str(out)]) == 0
    assert "(model): Conv2d made circular" in capsys.readouterr().out
    for option in (["--padding", "zeros"], ["--filter-size", "3"]):
        bad = tmp_path / "bad.safetensors"
        assert main(["convert", "--model", f"{nets}:bare", "--method", "circular", *option,
                     "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--method circular has no blur" in err[0] and not bad.exists()


def test_cli_convert_alias_free_writes_weights_a_conversion_loads(tmp_path, capsys):
    from shiftlab.loading import load_weights
    out = tmp_path / "af.safetensors"
    assert main(["convert", "--model", "lenet-wolf-maxpool", "--method", "alias-free", "--input",
                 "1x32x32", "--activation", "keep", "--out", str(out)]) == 0     # sides ÷ 8: sizes kept
    printed = capsys.readouterr().out
    assert "features.1: ReLU -> AliasFreeActivation" in printed
    assert "features.2: MaxPool2d -> Downsampled" in printed and "features.0: Conv2d made circular" in printed
    rebuilt = convert(create_model("lenet-wolf-maxpool", input_size=32), "alias-free", activation="keep")[0]
    load_weights(rebuilt, str(out))
    polynomial, _ = convert(create_model("lenet-wolf-maxpool"), "alias-free")
    assert sum(k.endswith("nonlinearity.coef") for k in polynomial.state_dict()) == 4     # 4 ReLUs
