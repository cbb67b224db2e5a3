"""p4 group convolutions: exact rot90 equivariance where theory says so, and not elsewhere."""
import pytest
import torch

from shiftlab.errors import ShiftlabError
from shiftlab.models import create_model
from shiftlab.models.p4 import (P4GroupConv, P4Lifting, P4Pool, p4_group_conv, p4_lifting,
                                p4_pool, rotate_p4)
from shiftlab.actions import central_mask, rescale, rot90, rotate


def _rel(a, b):
    return float(((a - b).abs().max() / b.abs().max()).detach())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("size, stride", [(9, 1), (10, 1), (9, 2), (29, 2), (29, 4), (13, 3)])
def test_lifting_and_group_conv_are_exactly_rot90_equivariant_when_stride_divides_h_minus_1(
        size, stride, dtype, tol):
    lift = P4Lifting(2, 3, 5, stride=stride).to(dtype)
    gconv = P4GroupConv(3, 2, 3, stride=1).to(dtype)
    x = torch.randn(2, 2, size, size, dtype=dtype)
    f = lift(x)
    for k in (1, 2, 3):
        fk = lift(rot90(x, k))
        assert _rel(fk, rotate_p4(f, k)) < tol
        assert _rel(gconv(fk), rotate_p4(gconv(f), k)) < tol


@pytest.mark.parametrize("size, stride", [(28, 2), (11, 3), (30, 4)])
def test_equivariance_breaks_when_stride_does_not_divide_h_minus_1(size, stride):
    lift = P4Lifting(1, 4, 3, stride=stride).double()
    gconv = P4GroupConv(4, 4, 3, stride=stride).double()
    x = torch.randn(2, 1, size, size, dtype=torch.float64)
    assert _rel(lift(rot90(x, 1)), rotate_p4(lift(x), 1)) > 1e-3
    f = torch.randn(2, 4, 4, size, size, dtype=torch.float64)
    assert _rel(gconv(rotate_p4(f, 1)), rotate_p4(gconv(f), 1)) > 1e-3


def test_group_conv_equals_a_naive_loop_over_rotations():
    """Oracle: out[o, r] = Σ_{i, s} corr(f[i, s], rot90^r(w[o, i, (s − r) mod 4]))."""
    f = torch.randn(1, 2, 4, 7, 7, dtype=torch.float64)
    w = torch.randn(3, 2, 4, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    out = p4_group_conv(f, w, b)
    for o in range(3):
        for r in range(4):
            want = b[o].expand(7, 7).clone()
            for i in range(2):
                for s in range(4):
                    kernel = torch.rot90(w[o, i, (s - r) % 4], r, dims=(-2, -1))
                    want += torch.nn.functional.conv2d(f[:, i:i + 1, s], kernel[None, None], padding=1)[0, 0]
            assert torch.allclose(out[0, o, r], want, atol=1e-12)


def test_lifting_equals_convolution_with_turned_filters():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    out = p4_lifting(x, w, None, 1, 1)
    for r in range(4):
        want = torch.nn.functional.conv2d(x, torch.rot90(w, r, dims=(-2, -1)), padding=1)
        assert torch.allclose(out[:, :, r], want, atol=1e-12)


def test_modules_equal_their_functions_and_gradcheck():
    lift, gconv = P4Lifting(1, 2, 3).double(), P4GroupConv(2, 1, 3, stride=2).double()
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.equal(lift(x), p4_lifting(x, lift.weight, lift.bias, 1, 1))
    f = lift(x)
    assert torch.equal(gconv(f), p4_group_conv(f, gconv.weight, gconv.bias, 2, 1))
    assert torch.equal(gconv(f), p4_group_conv(f, gconv.weight.unflatten(1, (2, 4)), gconv.bias, 2, 1))
    assert torch.autograd.gradcheck(lambda t: gconv(lift(t)), (x,))


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_rotation_pooling_commutes_with_rotation(mode):
    f = torch.randn(2, 3, 4, 5, 5)
    pooled = P4Pool(mode)(f)
    assert pooled.shape == (2, 3, 5, 5)
    assert torch.allclose(p4_pool(rotate_p4(f, 1), mode), rot90(pooled, 1), atol=1e-6)
    expected = f.amax(2) if mode == "max" else f.mean(2)
    assert torch.equal(pooled, expected)


def test_rotate_p4_is_a_group_action():
    f = torch.randn(1, 2, 4, 5, 5)
    assert torch.equal(rotate_p4(rotate_p4(f, 1), 3), f)
    assert torch.equal(rotate_p4(rotate_p4(f, 2), 1), rotate_p4(f, 3))
    assert torch.equal(rotate_p4(f, 4), f)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_p4_cnn_logits_are_rot90_invariant_on_29x29(dtype, tol):
    model = create_model("p4-cnn").to(dtype).eval()
    assert model.geometry.total_stride == 4 and (29 - 1) % 4 == 0
    x = torch.rand(4, 1, 29, 29, dtype=dtype)
    with torch.no_grad():
        y = model(x)
        for k in (1, 2, 3):
            assert _rel(model(rot90(x, k)), y) < tol


def test_p4_cnn_with_trained_batch_norm_statistics_stays_exactly_invariant():
    model = create_model("p4-cnn").double()
    model.train()
    with torch.no_grad():                          # batch statistics far from the initial (0, 1)
        for _ in range(3):
            model(3 * torch.rand(8, 1, 29, 29, dtype=torch.float64) + 1)
    model.eval()
    norms = [model.norm1, model.norm2, model.norm3]
    assert all(float(n.running_mean.abs().max()) > 1e-3 for n in norms)
    x = torch.rand(4, 1, 29, 29, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
        for k in (1, 2, 3):
            assert _rel(model(rot90(x, k)), y) < 1e-10


def test_p4_cnn_sees_the_whole_29x29_canvas():
    g = create_model("p4-cnn").geometry
    assert (g.total_stride, g.receptive_field) == (4, 1 + 4 + 2 + 4 * 2 + 4 * 4) == (4, 31)


def test_p4_cnn_is_not_exactly_invariant_on_28x28():
    model = create_model("p4-cnn").double().eval()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(model(rot90(x, 1)), model(x)) > 1e-3


def test_bad_input_is_a_clear_error():
    with pytest.raises(ShiftlabError, match="odd size"):
        P4Lifting(1, 2, 4)
    with pytest.raises(ShiftlabError, match="stride"):
        P4GroupConv(1, 2, 3, stride=0)
    with pytest.raises(ShiftlabError, match="expects 2 input channels"):
        P4GroupConv(2, 2, 3)(torch.zeros(1, 3, 4, 5, 5))
    with pytest.raises(ShiftlabError, match=r"\(N, C, 4, H, W\)"):
        P4GroupConv(1, 2, 3)(torch.zeros(1, 1, 3, 5, 5))
    with pytest.raises(ShiftlabError, match="NCHW"):
        P4Lifting(1, 2, 3)(torch.zeros(1, 5, 5))
    with pytest.raises(ShiftlabError, match="'max' or 'mean'"):
        P4Pool("sum")
    with pytest.raises(ShiftlabError, match="square"):
        create_model("p4-cnn")(torch.zeros(1, 1, 29, 33))


# ----------------------------------------------------------------------------- rotate / rescale
def test_rotate_by_quarter_turns_matches_rot90_and_zero_is_identity():
    x = torch.rand(3, 2, 11, 11, dtype=torch.float64)
    for k in range(4):
        assert torch.allclose(rotate(x, 90 * k), rot90(x, k), atol=1e-10)
    assert torch.allclose(rotate(x, 0), x, atol=1e-12)
    assert torch.allclose(rescale(x, 1.0), x, atol=1e-12)
    per_sample = rotate(x, [0, 90, 180])
    assert torch.allclose(per_sample[1], rot90(x, 1)[1], atol=1e-10)


def test_rotate_and_rescale_known_answers():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[..., 4, 6] = 1.0                                           # 2 px right of the centre
    up = rotate(x, 90)                                           # counter-clockwise: 2 px above
    assert up[0, 0, 2, 4] == pytest.approx(1.0) and up.sum() == pytest.approx(1.0)
    flat = torch.ones(1, 1, 9, 9, dtype=torch.float64)
    assert torch.allclose(rescale(flat, 2.0), flat)              # zooming in keeps a constant
    small = rescale(flat, 0.5)
    assert small[0, 0, 4, 4] == 1.0 and small[0, 0, 0, 0] == 0.0  # shrinking leaves a zero border
    masked = rotate(flat, 30, mask=True)
    keep = central_mask((9, 9))
    assert torch.equal(masked[0, 0][~keep], torch.zeros(int((~keep).sum()), dtype=torch.float64))
    assert not keep[0, 0] and keep[4, 0] and keep[4, 4]


def test_rotate_and_rescale_reject_bad_input():
    with pytest.raises(ShiftlabError, match="square"):
        rotate(torch.zeros(1, 1, 4, 5), 10)
    with pytest.raises(ShiftlabError, match="one per sample"):
        rotate(torch.zeros(2, 1, 4, 4), [1, 2, 3])
    with pytest.raises(ShiftlabError, match="positive"):
        rescale(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ShiftlabError, match="N×C×H×W"):
        rotate(torch.zeros(4, 4), 10)
