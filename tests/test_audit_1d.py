"""1-D signals (N×C×T) through the same law as images: the exactness tests of the 2-D
suite, mirrored."""
import sys

import pytest
import torch
from torch import nn

from shiftlab import ShiftlabError, audit
from shiftlab.actions import canvas_shift, circular_shift, crop_shift, fractional_shift
from shiftlab.law import LayerGeometry, ReferenceMaps, alignments, block_norms
from shiftlab.actions import make_action
from shiftlab.shifts import ShiftSet


def _circular_net(stride: int = 1, channels: int = 4) -> nn.Module:
    layers = [nn.Conv1d(1, channels, 5, padding=2, padding_mode="circular"), nn.ReLU()]
    if stride > 1:
        layers += [nn.MaxPool1d(stride)]
    layers += [nn.Conv1d(channels, channels, 3, padding=1, padding_mode="circular"), nn.ReLU(),
               nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, 3)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_stride1_circular_conv1d_net_has_error_zero(dtype, tol):
    model = _circular_net().to(dtype)
    r = audit(model, torch.randn(6, 1, 32, dtype=dtype), shifts="-7:7", pairs=2)
    assert r.provenance.input_shape == [1, 32] and r.shifts[0] == [-7.0]
    for layer in r.layers:
        if layer.comparison == "equivariance":
            assert max(layer.error) < tol, layer.name
            assert layer.verdict(r.provenance.tolerance) == "equivariant"
    assert r.layer("output").error_exact < tol and r.invariance.consistency == 1.0


def test_stride_s_conv1d_net_is_exact_at_multiples_of_s_with_period_s():
    """Exact exactly where s divides the shift: the pattern repeats with period s."""
    s = 3
    model = _circular_net(stride=s).double()
    r = audit(model, torch.randn(5, 1, 36, dtype=torch.float64), shifts="-9:9", pairs=0)
    pooled = r.layer("2")
    assert pooled.stride == s
    shifts = [int(v[0]) for v in r.shifts]
    for k, d in enumerate(shifts):
        if d % s == 0:
            assert pooled.error[k] < 1e-12 and pooled.alignment[k] == "exact"
        else:
            assert pooled.error[k] > 1e-3 and pooled.alignment[k] == "nearest"
    assert r.layer("output").error_exact < 1e-12 and r.layer("output").error_other > 1e-4


def test_valid_conv1d_under_circular_shifts_compares_where_nothing_wrapped():
    conv = nn.Conv1d(1, 2, 5).double()                     # 40 -> 36: a roll is not its action
    x = torch.rand(3, 1, 40, dtype=torch.float64)
    r = audit(conv, x, shifts="-4:4", pairs=0, layers=[])
    assert r.layer("output").error_exact < 1e-12
    assert "receptive field did not wrap" in r.layer("output").note


def test_one_d_actions_match_their_oracles():
    x = torch.randn(4, 2, 11)
    assert torch.equal(circular_shift(x, (3,)), torch.roll(x, 3, dims=-1))
    per = torch.tensor([[0], [2], [-3], [10]])
    out = canvas_shift(x, per, fill=-1.0)
    for i, d in enumerate(per[:, 0].tolist()):
        want = torch.full_like(x[i], -1.0)
        if d >= 0:
            want[:, d:] = x[i, :, :11 - d]
        else:
            want[:, :11 + d] = x[i, :, -d:]
        assert torch.equal(out[i], want)
    assert torch.equal(crop_shift(x, (1,), (7,)), x[..., 1:8])       # anchor 2, shift 1
    assert torch.equal(fractional_shift(x, (2.0,)), torch.roll(x, 2, dims=-1))
    half = fractional_shift(fractional_shift(x.double(), (0.5,)), (-0.5,))
    assert torch.allclose(half, x.double(), atol=1e-12)


@pytest.mark.parametrize("cache", [1 << 19, 40, 1])       # one chunk, chunks of 1 row, tiny
@pytest.mark.parametrize("circular", [True, False])
def test_fast_norms_equal_the_plain_law_in_1d(circular, cache, monkeypatch):
    monkeypatch.setattr(sys.modules["shiftlab.law"], "CACHE_VALUES", cache)
    action = make_action("circular" if circular else "canvas")
    ref = torch.randn(3, 2, 17, dtype=torch.float64)
    out = torch.randn(3, 2, 17, dtype=torch.float64)
    geometry = LayerGeometry.same_size(action, 1, (17,), margin=0 if circular else 1)
    fast = ReferenceMaps(ref)
    for d in (-5, -1, 0, 2, 6):
        (a,) = alignments(action, geometry, (float(d),))
        want = block_norms(out, ref, a)
        got = fast.norms(out, a, slice(0, 3))
        assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
        assert got[2] == want[2]
        some = fast.norms(out[1:], a, slice(1, 3))           # rows of a later block of samples
        assert torch.allclose(some[0], block_norms(out[1:], ref[1:], a)[0])
        assert torch.allclose(some[1], want[1][1:])


@pytest.mark.parametrize("spec,match", [
    ("y=-2:2", "2-D shift grid .* for 1-D data"),
    ("0,0;1,2", "2-D shift .* for 1-D data"),
])
def test_a_2d_shift_grid_for_1d_data_is_a_clear_error(spec, match):
    with pytest.raises(ShiftlabError, match=match):
        audit(_circular_net(), torch.randn(2, 1, 16), shifts=spec)


def test_signals_shorter_than_the_shift_or_the_filter_are_clear_errors():
    with pytest.raises(ShiftlabError, match="not smaller than"):
        audit(_circular_net(), torch.randn(2, 1, 6), shifts="-6:6")
    with pytest.raises(ShiftlabError, match="cannot run"):
        audit(nn.Sequential(nn.Conv1d(1, 2, 9)), torch.randn(2, 1, 5), shifts="-1:1")


def test_a_2d_model_refuses_signals_and_a_1d_model_refuses_images():
    with pytest.raises(ShiftlabError, match="Conv1d .* 2-D images"):
        audit(_circular_net(), torch.randn(2, 1, 8, 8), shifts="-1:1")


def test_one_d_shift_sets():
    s = ShiftSet.parse("-2:2", rank=1)
    assert s.shape == (5,) and s.zero_index == 2
    assert s.neighbours().tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert ShiftSet.parse("x=0:2", rank=1).shifts == ((0.0,), (1.0,), (2.0,))
    assert ShiftSet.parse("0;1;-2", rank=1).shifts == ((0.0,), (1.0,), (-2.0,))


def test_one_d_aps_net_keeps_full_circular_consistency_at_every_shift():
    """Chaman & Dokmanić's APS on signals: circular convs, APS at strides 2 and 3, a global
    pooling head: the same prediction at every circular shift of the 24-sample input."""
    from shiftlab.layers import APS
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv1d(1, 6, 5, padding=2, padding_mode="circular"), nn.ReLU(), APS(2, dims=1),
        nn.Conv1d(6, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(), APS(3, dims=1),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(6, 4)).double().eval()
    x = torch.randn(8, 1, 24, dtype=torch.float64)
    r = audit(model, x, shifts="-12:11", pairs=20)
    assert r.invariance.consistency == 1.0 and r.invariance.flip_rate == 0.0
    assert max(r.layer("output").error) < 1e-9
