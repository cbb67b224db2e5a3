"""The assertion helpers: pass on exact laws, fail with a message naming shift and error."""
import pytest
import torch
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.models import create_model
from shiftlab.testing import assert_shift_equivariant, assert_shift_invariant, shift_errors


def _circular_conv(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").to(dtype)


def test_equivariant_conv_passes_in_both_dtypes():
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 2, 10, 12, dtype=dtype)
        assert_shift_equivariant(_circular_conv(dtype), x, [(1, 0), (-3, 5), (9, 11)])


def test_stride_is_measured_and_shifts_must_be_multiples():
    net = create_model("conv-maxpool").features.eval()             # total stride 4
    x = torch.randn(2, 1, 16, 16)
    assert_shift_equivariant(net, x, [(4, 0), (-8, 12)])
    with pytest.raises(ShiftlabError, match="not a multiple of the stride 4"):
        assert_shift_equivariant(net, x, [(2, 0)])
    with pytest.raises(AssertionError, match=r"circular shift \(2, 0\) \(feature shift \(1, 0\)\)"):
        assert_shift_equivariant(net, x, [(2, 0)], stride=2)      # max-pool aliasing at stride 2


def test_failure_message_names_shift_element_error_and_layer():
    model = create_model("conv-maxpool").eval()
    x = torch.randn(2, 1, 16, 16)
    assert_shift_invariant(model, x, [(4, 8), (-4, 0)])
    with pytest.raises(AssertionError) as err:
        assert_shift_invariant(model, x, [(4, 0), (1, 0)])
    text = str(err.value)
    assert "not shift-invariant under the circular shift (1, 0)" in text
    assert "greatest difference" in text and "at index (" in text and "allowed" in text
    assert "1 of 2 shifts fail" in text
    assert "first broken layer: features.2, MaxPool2d" in text and "\n" not in text


def test_tolerances_follow_the_dtype():
    """A perturbation of 1e-7 relative passes float32's 1e-5 and fails float64's 1e-10."""
    class Wobble(nn.Module):
        def forward(self, x):
            return x.sum(dim=(-2, -1)) * (1 + 1e-7 * (x[..., 0, 0] > 0.5))

    x64 = torch.rand(3, 1, 6, 6, dtype=torch.float64) + 0.01
    x64[:, :, 0, 0] = 0.9
    x64[:, :, 5, 5] = 0.1                                     # rolled by (1, 1) to [0, 0]: not > 0.5
    assert_shift_invariant(Wobble(), x64.float(), [(1, 1)])
    with pytest.raises(AssertionError, match=r"shift \(1, 1\)"):
        assert_shift_invariant(Wobble(), x64, [(1, 1)])
    assert_shift_invariant(Wobble(), x64, [(1, 1)], rtol=1e-6)


def test_canvas_protocol_compares_the_overlap_only():
    net = create_model("lenet-wolf").features.double().eval()      # valid convs: exact on the overlap
    x = torch.zeros(2, 1, 38, 38, dtype=torch.float64)
    x[:, :, 5:33, 5:33] = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    assert_shift_equivariant(net, x, [(1, 0), (3, -2)], protocol="canvas")
    # circular: the valid convs change the map size (38 -> 34 -> ...), so a roll of the input
    # is not a roll of their maps; the law compares where no wrapped pixel reaches: exact
    assert_shift_equivariant(net, x, [(1, 0), (-3, 2)], protocol="circular")
    (r,) = shift_errors(net, x, [(2, 0)], protocol="circular")
    rows, cols = net(x).shape[-2:]
    assert r.ok and r.total == 2 * 5 * (rows - 2) * cols                # 2 rows wrapped


def test_nothing_to_compare_is_an_error_not_a_pass():
    net = nn.Sequential(nn.Conv2d(1, 1, 8))                   # 8x8 -> 1x1: every pixel is read
    with pytest.raises(ShiftlabError, match="nothing to compare at the shift \\(1, 0\\)"):
        assert_shift_equivariant(net, torch.rand(1, 1, 8, 8), [(1, 0)], stride=1)


def test_shift_errors_returns_data():
    results = shift_errors(_circular_conv(), torch.randn(1, 2, 8, 8, dtype=torch.float64), [(1, 2), (0, 0)])
    assert [r.shift for r in results] == [(1, 2), (0, 0)]
    assert all(r.ok and r.max_error < 1e-12 and r.total == 3 * 64 for r in results)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shifts=[(0.5, 0)]), "integer"),
    (dict(shifts=[1, 2, 3]), "one \\(dy, dx\\) shift"),
    (dict(shifts=[(9, 0)]), "not smaller"),
    (dict(shifts=[(1, 0)], protocol="crop"), "protocol"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ShiftlabError, match=match):
        assert_shift_equivariant(_circular_conv(), torch.randn(1, 2, 8, 8, dtype=torch.float64), **kwargs)


def test_bad_inputs():
    with pytest.raises(ShiftlabError, match="for 1-D inputs"):
        assert_shift_invariant(_circular_conv(), torch.randn(2, 8, 8), [(1, 0)])
    with pytest.raises(ShiftlabError, match="N×C×T signal"):
        assert_shift_invariant(_circular_conv(), torch.randn(2, 1, 1, 8, 8), [(1, 0)])
    with pytest.raises(ShiftlabError, match="cannot run"):
        assert_shift_invariant(_circular_conv(), torch.randn(1, 5, 8, 8, dtype=torch.float64), [(1, 0)])
    with pytest.raises(ShiftlabError, match="not a spatial map with a measurable stride"):
        assert_shift_equivariant(nn.Sequential(_circular_conv(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                                 torch.randn(1, 2, 8, 8, dtype=torch.float64), [(1, 0)])


def test_first_broken_layer_uses_the_callers_tolerances():
    """Conv 0 (zero padding, a 1e-4 side tap) breaks circular equivariance by <= 1e-4 at the
    border: broken under the default float64 tolerance, fine under atol=1e-2. The max-pool
    (stride 2, shift 1) is the real break, so with atol=1e-2 the diagnosis must name it."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1], conv.weight[0, 0, 0, 1] = 1.0, 1e-4
    model = nn.Sequential(conv, nn.MaxPool2d(2), nn.Flatten())
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match=r"first broken layer: 0, Conv2d, stride 1\)"):
        assert_shift_invariant(model, x, [(1, 0)])
    with pytest.raises(AssertionError, match=r"first broken layer: 1, MaxPool2d, stride 2 does not divide"):
        assert_shift_invariant(model, x, [(1, 0)], atol=1e-2)


def test_signals_take_the_same_assertions():
    conv = nn.Conv1d(2, 3, 5, padding=2, padding_mode="circular").double()
    x = torch.randn(2, 2, 24, dtype=torch.float64)
    assert_shift_equivariant(conv, x, [(3,), (-7,)])
    pooled = nn.Sequential(conv, nn.MaxPool1d(2))
    assert_shift_equivariant(pooled, x, [(4,)])
    with pytest.raises(AssertionError, match=r"circular shift \(2,\)"):
        assert_shift_equivariant(pooled, x, [(2,)], stride=1)
    assert_shift_invariant(nn.Sequential(conv, nn.AdaptiveMaxPool1d(1)), x, [(5,)])
