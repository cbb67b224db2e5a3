"""convert() on signal models (Conv1d, MaxPool1d, AvgPool1d): each layer becomes the fix of
its own rank, weights are kept, and the fixed nets pass the law's 1-D tests."""
import pytest
import torch
from torch import nn

from shiftlab import audit, convert
from shiftlab.errors import ShiftlabError
from shiftlab.layers import APS, BlurConv, Downsampled, MaxBlurPool, Pad


def _signal_net(padding_mode="zeros"):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2, padding_mode=padding_mode), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(4, 4, 3, stride=2, padding=1, padding_mode=padding_mode), nn.ReLU(),
        nn.AvgPool1d(2), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()


def test_blurpool_conversion_of_a_signal_net():
    fixed, replaced = convert(_signal_net(), "blurpool", input_shape=(1, 32))
    assert replaced == ["2", "3", "5"]
    assert isinstance(fixed[2], MaxBlurPool) and fixed[2].down.dims == 1
    assert isinstance(fixed[3], BlurConv) and isinstance(fixed[5], Downsampled)
    assert torch.equal(fixed[3][0].weight, _signal_net()[3].weight)        # weights kept
    x = torch.randn(2, 1, 32, dtype=torch.float64)
    assert fixed(x).shape == (2, 3)


def test_filter_size_one_blurpool_computes_the_strided_conv_exactly():
    net = nn.Sequential(nn.Conv1d(1, 2, 3, stride=2, padding=1)).double()
    fixed, _ = convert(net, "blurpool", filter_size=1)
    x = torch.randn(3, 1, 20, dtype=torch.float64)
    assert torch.allclose(fixed(x), net(x), atol=1e-12)


def test_aps_plus_circular_makes_a_signal_net_exactly_invariant():
    circular, _ = convert(_signal_net(), "circular")
    assert circular[0].padding_mode == "circular"
    fixed, replaced = convert(circular, "aps", input_shape=(1, 32))
    assert isinstance(fixed[2], Downsampled) and isinstance(fixed[2].down, APS)
    assert isinstance(fixed[2].pad, Pad) and fixed[2].pad.dims == 1
    r = audit(fixed, torch.randn(6, 1, 32, dtype=torch.float64), shifts="-16:15", pairs=10)
    assert r.invariance.consistency == 1.0 and max(r.layer("output").error) < 1e-9
    base = audit(circular, torch.randn(6, 1, 32, dtype=torch.float64), shifts="-16:15", pairs=0)
    assert base.layer("output").error_other > 1e-4               # before: not invariant


def test_signal_models_refuse_what_they_cannot_convert():
    with pytest.raises(ShiftlabError, match="LPPool1d"):
        convert(nn.Sequential(nn.LPPool1d(2, 2)), "blurpool")
    with pytest.raises(ShiftlabError, match="input_shape must be"):
        convert(_signal_net(), "blurpool", input_shape=(1,))
