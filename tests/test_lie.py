"""The Lie derivative (Gruver et al. 2023): generators against finite differences of the exact
shifts, zero where theory says so, the chain-rule split over layers, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shiftlab.actions import fractional_shift
from shiftlab.errors import ShiftlabError
from shiftlab.lie import default_generator, lie_derivative, shift_generator


def _shifted(x: torch.Tensor, pixels: float, axis: int) -> torch.Tensor:
    """``fractional_shift`` by ``pixels`` along spatial axis ``axis`` (0 = first)."""
    rank = x.ndim - 2
    shifts = torch.zeros(len(x), rank, dtype=torch.float64)
    shifts[:, axis] = pixels
    return fractional_shift(x, shifts)


@pytest.mark.parametrize("shape", [(2, 3, 9), (2, 3, 10), (2, 1, 7, 8), (2, 2, 6, 5)])
def test_fourier_generator_is_the_derivative_of_the_fractional_shift(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    rank = len(shape) - 2
    for axis in range(rank):
        size = shape[2 + axis]
        pixels = size / 2                           # one unit of t moves half the map
        h = 1e-5
        fd = (_shifted(x, h * pixels, axis) - _shifted(x, -h * pixels, axis)) / (2 * h)
        g = shift_generator(x, axis - rank, pixels, "fourier")
        assert torch.allclose(g, fd, rtol=0, atol=1e-7 * float(g.abs().max()))


def test_central_generator_is_a_local_difference_with_zeros_outside():
    x = torch.tensor([[[1.0, 4.0, 9.0, 16.0, 25.0]]], dtype=torch.float64)
    g = shift_generator(x, -1, 2.0, "central")
    # -pixels * (x[n+1] - x[n-1]) / 2, with x[-1] = x[5] = 0
    assert g.tolist() == [[[-4.0, -8.0, -12.0, -16.0, 16.0]]]


def _circular_net(nonlinear: bool) -> nn.Module:
    act = nn.ReLU() if nonlinear else nn.Identity()
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), act,
                         nn.Conv2d(4, 5, 3, padding=1, padding_mode="circular"),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()


def test_a_linear_circular_net_has_zero_lie_derivative():
    torch.manual_seed(1)
    result = lie_derivative(_circular_net(nonlinear=False), torch.rand(6, 1, 8, 8, dtype=torch.float64))
    assert result.generator == "fourier"
    assert max(result.lee.values()) < 1e-12
    assert all(max(l.contribution.values()) < 1e-20 for l in result.layers)


def test_relu_carries_the_error_of_a_circular_net_and_the_layers_sum_to_the_whole():
    torch.manual_seed(2)
    net = _circular_net(nonlinear=True)
    result = lie_derivative(net, torch.rand(6, 1, 8, 8, dtype=torch.float64))
    by_name = {l.name: l for l in result.layers}
    assert by_name["1"].group == "nonlinearity" and min(by_name["1"].contribution.values()) > 1e-8
    for conv in ("0", "2"):
        assert max(by_name[conv].contribution.values()) < 1e-20
    # every operation is a module and the head pools globally: the chain rule's sum is whole
    for axis in result.axes:
        assert result.unattributed[axis] <= 1e-20 + 1e-12 * result.total[axis]
        assert result.total[axis] > 1e-10
    assert result.shares_by_group()["nonlinearity"] == pytest.approx(1.0)


def test_lee_agrees_with_a_finite_difference_of_small_fractional_shifts():
    torch.manual_seed(3)
    net = _circular_net(nonlinear=True).eval()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    result = lie_derivative(net, x, generator="fourier")
    h = 1e-6
    for axis, name in enumerate(result.axes):
        pixels = x.shape[2 + axis] / 2
        with torch.no_grad():
            p_plus = torch.softmax(net(_shifted(x, h * pixels, axis)), 1)
            p_minus = torch.softmax(net(_shifted(x, -h * pixels, axis)), 1)
        fd = ((p_plus - p_minus) / (2 * h)).abs().mean(1).mean()
        assert result.lee[name] == pytest.approx(float(fd), rel=1e-5)


def test_signals_have_one_time_axis():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv1d(2, 3, 5, padding=2, padding_mode="circular"), nn.Tanh(),
                        nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(3, 4))
    result = lie_derivative(net, torch.randn(3, 2, 32))
    assert result.axes == ["t"] and result.images == 3
    assert result.lee["t"] > 0
    assert [l.group for l in result.layers][:3] == ["other", "nonlinearity", "downsampling"]


def test_a_flatten_head_is_reported_as_unattributed_readout_and_valid_convs_are_local():
    from shiftlab.models import create_model
    torch.manual_seed(5)
    net = create_model("lenet-wolf").double()
    x = torch.zeros(2, 1, 28, 28, dtype=torch.float64)
    x[:, :, 8:20, 10:18] = torch.rand(2, 1, 12, 8, dtype=torch.float64)
    result = lie_derivative(net, x)
    assert result.generator == default_generator(net) == "central"
    assert result.unattributed["x"] > 0                  # the linear head reads positions
    first = next(l for l in result.layers if l.name == "features.0")
    assert max(first.contribution.values()) < 1e-20      # a valid conv on a zero border


def test_a_module_called_twice_is_attributed_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
            self.act = nn.Softplus()

        def forward(self, x):
            return self.act(self.conv(self.act(x))).mean((2, 3))

    result = lie_derivative(Twice(), torch.rand(2, 1, 6, 6))
    assert [l.name for l in result.layers] == ["conv", "act", "act#2"]


def test_batches_stream_to_the_same_answer():
    torch.manual_seed(6)
    net = _circular_net(nonlinear=True)
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    one = lie_derivative(net, x, batch_size=7)
    many = lie_derivative(net, x, batch_size=2)
    assert many.images == 7
    for axis in one.axes:
        assert many.lee[axis] == pytest.approx(one.lee[axis], rel=1e-12)
        assert many.layers[1].contribution[axis] == pytest.approx(one.layers[1].contribution[axis], rel=1e-12)


class _NoForwardMode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


@pytest.mark.parametrize("model, kwargs, words", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(1), nn.Softmax(1)), {"generator": "sinc"},
     "unknown shift generator"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), {"layers": "nope"},
     "unknown layer 'nope'"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), {"batch_size": 0},
     "batch_size must be a positive integer"),
    (nn.Sequential(nn.Conv2d(1, 2, 3)), {}, "needs N x classes floating-point logits"),
])
def test_bad_arguments_are_one_line_errors(model, kwargs, words):
    with pytest.raises(ShiftlabError, match=words) as err:
        lie_derivative(model, torch.rand(2, 1, 8, 8), **kwargs)
    assert "\n" not in str(err.value)


def test_integer_outputs_and_steps_without_forward_mode_are_one_line_errors():
    class Argmax(nn.Module):
        def forward(self, x):
            return x.flatten(1).argmax(1, keepdim=True)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return _NoForwardMode.apply(self.conv(x)).mean((2, 3))

    with pytest.raises(ShiftlabError, match="floating-point logits; the model returns"):
        lie_derivative(Argmax(), torch.rand(2, 1, 8, 8))
    with pytest.raises(ShiftlabError, match="forward-mode autodiff failed") as err:
        lie_derivative(Custom(), torch.rand(2, 1, 8, 8))
    assert "\n" not in str(err.value)


def test_a_pad_is_fused_with_the_module_it_feeds():
    """APS's circular pad + dense max-pool is one unit (alone, a pad changes the size)."""
    from shiftlab.models import create_model
    net = create_model("lenet-wolf-maxpool-aps")
    result = lie_derivative(net, torch.rand(2, 1, 16, 16))
    kinds = {l.name: (l.type, l.group) for l in result.layers}
    assert kinds["features.2.op"] == ("Pad+MaxPool2d", "nonlinearity")
    assert kinds["features.2.down"] == ("APS", "downsampling")
    assert "features.2.pad" not in kinds
    assert max(result.unattributed.values()) <= 1e-12 * max(result.total.values())


def test_the_cli_writes_the_lie_derivative_and_reads_it_back(tmp_path, capsys):
    from shiftlab.cli import main
    from shiftlab.result import AuditResult
    out = tmp_path / "r.json"
    assert main(["audit", "--model", "conv-maxpool", "--data", "synthetic:6", "--shifts=-1:1",
                 "--lie", "4", "--quiet", "--out", str(out)]) == 0
    assert "Lie derivative (LEE, 4 images" in capsys.readouterr().out
    back = AuditResult.from_json(out)
    from shiftlab.models import create_model
    assert back.lie.images == 4 and back.lie.axes == ["y", "x"]
    assert back.lie.generator == default_generator(create_model("conv-maxpool"))
    assert abs(sum(back.lie.shares_by_group().values()) - 1) < 1e-9


@pytest.mark.parametrize("argv, words", [
    (["--lie", "0"], "--lie takes how many inputs"),
    (["--lie", "-3"], "--lie takes how many inputs"),
])
def test_bad_lie_options_are_one_line(argv, words, tmp_path, capsys):
    from shiftlab.cli import main
    rc = main(["audit", "--model", "conv-maxpool", "--data", "synthetic:2", "--shifts=0:1",
               *argv, "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0]
    assert not (tmp_path / "r.json").exists()
