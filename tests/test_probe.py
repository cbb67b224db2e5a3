"""Probes on three kinds of network: Sequential, residual, functional forward."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftlab import Probe, ShiftlabError, default_layers, infer_layers
from shiftlab.models import create_model, example_shape, list_models


class Block(nn.Module):
    """A residual block; stride 2 puts a 1x1 strided conv on the shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.relu = nn.ReLU()
        self.short = nn.Conv2d(c_in, c_out, 1, stride) if stride > 1 else nn.Identity()

    def forward(self, x):
        out = self.relu(self.conv1(x))
        return self.relu(self.conv2(out) + self.short(x))     # self.relu called twice


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.layer3 = Block(16, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)                 # valid: 28 -> 24
        self.conv2 = nn.Conv2d(4, 4, 3, stride=3)       # after a functional pool: stride 6

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.relu(self.conv2(x)).flatten(1).sum(1, keepdim=True)


def _strides(model, size=28):
    return {i.name: i.stride for i in infer_layers(model, torch.zeros(1, 1, size, size))}


def test_sequential_strides_and_default_set():
    strides = _strides(create_model("conv-maxpool"))
    assert strides == {"features.0": 1, "features.1": 1, "features.2": 2, "features.3": 2,
                       "features.4": 2, "features.5": 4, "features.6": 4, "features.7": 4,
                       "pool": None, "head": None, "output": None}


def test_residual_net_blocks_shared_relu_and_strides():
    model = ResNetTiny()
    assert "layer2" in default_layers(model) and "layer2.short" in default_layers(model)
    strides = _strides(model, 32)
    assert strides["stem"] == 1 and strides["layer1"] == 1
    assert strides["layer2.conv1"] == 2 and strides["layer2.short"] == 2 and strides["layer2"] == 2
    assert strides["layer3"] == 4 and strides["layer3.conv2"] == 4
    assert strides["layer1.relu"] == 1 and strides["layer1.relu#2"] == 1   # called twice
    assert strides["fc"] is None


def test_functional_forward_strides_are_measured_not_guessed():
    # shape ratios would say 28/24 -> 1 and 28/4 -> 7; the measured strides are 1 and 6
    strides = _strides(Functional())
    assert strides["conv1"] == 1 and strides["conv2"] == 6


def test_valid_convs_keep_stride_one_on_a_canvas():
    strides = _strides(create_model("lenet-wolf", input_size=38), 38)
    assert [strides[f"features.{i}"] for i in range(8)] == [1] * 8
    assert strides["pool"] == 2


def test_probe_returns_the_real_outputs():
    model = ResNetTiny().eval()
    x = torch.randn(2, 1, 16, 16)
    with Probe(model, ["stem", "layer2.conv1"]) as probe, torch.no_grad():
        rec = probe(x)
    assert list(rec) == ["stem", "layer2.conv1", "output"]
    assert torch.equal(rec["stem"], model.stem(x))
    assert torch.equal(rec["output"], model(x))
    with torch.no_grad():                                        # hooks were removed
        model(x)
    assert not model.stem._forward_hooks


def test_outputs_overwritten_by_inplace_relu_are_copied():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True)).eval()
    x = torch.randn(2, 1, 8, 8)
    infos = {i.name: i for i in infer_layers(model, x)}
    assert infos["0"].overwritten and not infos["1"].overwritten
    with Probe(model, ["0"], clone=["0"]) as probe, torch.no_grad():
        rec = probe(x)
    assert (rec["0"] < 0).any()                                  # the conv output, not the ReLU's
    assert torch.equal(rec["0"], model[0](x))


def test_unknown_layer_name_is_a_clear_error():
    with pytest.raises(ShiftlabError, match="unknown layer 'nope'"):
        Probe(create_model("conv-maxpool"), ["nope"])


def test_model_that_cannot_run_is_a_clear_error():
    with pytest.raises(ShiftlabError, match="cannot run"):
        infer_layers(create_model("lenet-wolf"), torch.zeros(1, 3, 28, 28))


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_runs_and_reports_strides(name):
    model = create_model(name).eval()
    declared = example_shape(name)                    # the 3-channel ImageNet ResNets
    example = torch.zeros(1, *declared) if declared else \
        torch.zeros(1, 1, 64) if name.startswith("conv1d") else torch.zeros(1, 1, 28, 28)
    infos = infer_layers(model, example)
    assert infos[-1].name == "output" and infos[-1].shape == ((1000,) if declared else (10,))
    assert all(i.stride_source != "unknown" for i in infos)


def test_wrap_reach_follows_the_receptive_field():
    """NaN in the wrapped band reaches exactly the positions whose window covers it:
    a valid 5×5 conv (28 → 24) and a 2×2 max-pool after it (24 → 12)."""
    from shiftlab.probe import wrap_reach
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 5), torch.nn.MaxPool2d(2))
    reach = wrap_reach(net, torch.rand(1, 1, 28, 28), ["0", "1"], [(0, 2), (0, -3), (1, 1)])
    rows = lambda name, key: reach[name][key].nonzero().flatten().tolist()
    assert rows("0", (0, 2)) == [0, 1]                    # windows [p, p+4] ∋ row 0 or 1
    assert rows("0", (0, -3)) == [21, 22, 23]              # windows ∋ rows 25 … 27
    assert rows("0", (1, 1)) == [0]
    assert rows("1", (0, 2)) == [0] and rows("1", (0, -3)) == [10, 11]
    assert rows("output", (0, 2)) == [0]


def test_wrap_reach_names_a_model_that_cannot_take_nan():
    from shiftlab.probe import wrap_reach

    class Strict(torch.nn.Module):
        def forward(self, x):
            if torch.isnan(x).any():
                raise ValueError("NaN input")
            return x
    with pytest.raises(ShiftlabError, match="NaN"):
        wrap_reach(Strict(), torch.rand(1, 1, 8, 8), [], [(0, 1)])
