"""BlurPool, APS and padding against independent oracles (numpy padding, explicit loops)."""
import math

import numpy as np
import pytest
import torch

from shiftlab.errors import ShiftlabError
from shiftlab.layers import (APS, APSShortcut, BlurConv, BlurPool, MaxBlurPool, Pad2d,
                             aps_downsample, binomial_filter, blur_pool, pad2d,
                             phase_downsample, polyphase_components)
from shiftlab.testing import assert_shift_equivariant, assert_shift_invariant

NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "zeros": "constant", "circular": "wrap"}


def _blur_by_hand(x: np.ndarray, size: int, stride: int, mode: str) -> np.ndarray:
    """Pad with numpy, then sum kernel x window at every kept position (explicit loops)."""
    row = np.array([math.comb(size - 1, i) for i in range(size)], dtype=np.float64)
    kernel = np.outer(row, row) / row.sum() ** 2
    before = (size - 1) // 2
    pads = ((0, 0), (0, 0), (before, size - 1 - before), (before, size - 1 - before))
    xp = np.pad(x, pads, mode=NUMPY_MODE[mode])
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:2] + (-(-h // stride), -(-w // stride)))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            window = xp[:, :, i * stride:i * stride + size, j * stride:j * stride + size]
            out[:, :, i, j] = (window * kernel).sum(axis=(-2, -1))
    return out


def test_binomial_rows():
    rows = {1: [1], 2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1], 5: [1, 4, 6, 4, 1],
            6: [1, 5, 10, 10, 5, 1], 7: [1, 6, 15, 20, 15, 6, 1]}
    for size, row in rows.items():
        r = torch.tensor(row, dtype=torch.float64)
        assert torch.allclose(binomial_filter(size, dtype=torch.float64), torch.outer(r, r) / r.sum() ** 2)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros", "circular"])
def test_blur_pool_equals_the_binomial_kernel_by_hand(mode):
    x = torch.rand(2, 3, 9, 8, dtype=torch.float64)
    for size in range(1, 8):
        for stride in (1, 2, 3):
            expected = _blur_by_hand(x.numpy(), size, stride, mode)
            out = blur_pool(x, size, stride, mode)
            assert out.shape == expected.shape
            assert np.abs(out.numpy() - expected).max() < 1e-6, (size, stride)
            module = BlurPool(3, size, stride, mode).double()
            assert torch.equal(module(x), out)                       # module == function


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros", "circular"])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (1, 4)])
def test_maps_smaller_than_the_filter(mode, hw):
    x = torch.rand(1, 2, *hw, dtype=torch.float64)
    for size in (5, 7):
        out = blur_pool(x, size, 2, mode)
        assert np.abs(out.numpy() - _blur_by_hand(x.numpy(), size, 2, mode)).max() < 1e-6


def test_pad2d_matches_numpy_and_torch_where_torch_can():
    x = torch.rand(1, 1, 4, 5)
    for mode in ("reflect", "replicate", "circular", "zeros"):
        ours = pad2d(x, (2, 1, 3, 0), mode)
        np_pads = ((0, 0), (0, 0), (2, 1), (3, 0))
        assert np.allclose(ours.numpy(), np.pad(x.numpy(), np_pads, mode=NUMPY_MODE[mode]))
        torch_mode = "constant" if mode == "zeros" else mode
        assert torch.equal(ours, torch.nn.functional.pad(x, (3, 0, 2, 1), mode=torch_mode))
    assert torch.equal(Pad2d((1, 1, 1, 1), "reflect")(x), pad2d(x, (1, 1, 1, 1), "reflect"))


def test_blur_pool_float32_and_float64_and_sizes():
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(2, 4, 7, 10, dtype=dtype)
        y = BlurPool(4, 3, 2).to(dtype)(x)
        assert y.dtype == dtype and y.shape == (2, 4, 4, 5)
    assert BlurPool().state_dict() == {}                           # the filter is not persistent


def test_blur_pool_circular_is_equivariant_at_multiples_of_the_stride():
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert_shift_equivariant(BlurPool(None, 4, 3, "circular"), x, [(3, -6), (9, 3)], stride=3)


def test_plain_subsampling_aliases_off_the_stride_grid():
    """Filter 1 at stride 3 is exact at multiples of 3, but a 1-pixel shift picks other
    pixels: no shift of the output matches, and a global mean after it changes."""
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = BlurPool(None, 1, 3, "circular")
    assert_shift_equivariant(plain, x, [(3, -6), (9, 3)], stride=3)
    y, moved = plain(x), plain(torch.roll(x, 1, dims=-1))
    best = min(float((moved - torch.roll(y, (a, b), (-2, -1))).norm() / y.norm())
               for a in range(4) for b in range(4))
    assert best > 0.5                                              # aliased: nothing lines up
    pooled = torch.nn.Sequential(plain, torch.nn.AdaptiveAvgPool2d(1))
    assert_shift_invariant(pooled, x, [(3, 0), (-6, 9)])
    with pytest.raises(AssertionError, match=r"not shift-invariant under the circular shift \(0, 1\)"):
        assert_shift_invariant(pooled, x, [(0, 1)])


@pytest.mark.parametrize("bad", [dict(filter_size=0), dict(filter_size=8), dict(filter_size=2.5),
                                 dict(stride=0), dict(stride=1.5), dict(padding="mirror")])
def test_blur_pool_bad_arguments(bad):
    with pytest.raises(ShiftlabError):
        BlurPool(**bad)
    with pytest.raises(ShiftlabError):
        blur_pool(torch.zeros(1, 1, 4, 4), **bad)


def test_blur_pool_bad_inputs():
    with pytest.raises(ShiftlabError, match="4-D"):
        BlurPool()(torch.zeros(3, 4, 4))
    with pytest.raises(ShiftlabError, match="3 channels"):
        BlurPool(3)(torch.zeros(1, 2, 4, 4))


def test_max_blur_pool_is_max_pool_then_blur_and_keeps_the_size():
    for h in range(4, 13):
        x = torch.rand(2, 3, h, h + 1)
        out = MaxBlurPool(2, 2, 3)(x)
        assert out.shape == torch.nn.MaxPool2d(2)(x).shape
        assert torch.equal(out, blur_pool(torch.nn.functional.max_pool2d(x, 2, 1), 3, 2))
        assert torch.equal(MaxBlurPool(2, 2, 1)(x), torch.nn.functional.max_pool2d(x, 2, 2)[..., :out.shape[-2], :])


def test_blur_conv_keeps_weights_and_filter_one_is_the_strided_conv():
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    exact = BlurConv(conv, filter_size=1)
    assert torch.equal(exact.op.weight, conv.weight) and exact.op.stride == (1, 1)
    assert conv.stride == (2, 2)                                  # the original is untouched
    assert torch.allclose(exact(x), conv(x), atol=1e-12)
    assert BlurConv(conv, 3)(x).shape == conv(x).shape


# ----------------------------------------------------------------------------- APS
def test_polyphase_components_are_the_strided_slices():
    x = torch.randn(2, 3, 6, 9)
    comps = polyphase_components(x, 3)
    for i in range(3):
        for j in range(3):
            assert torch.equal(comps[:, i * 3 + j], x[..., i::3, j::3])


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_aps_keeps_the_component_of_largest_norm(norm):
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    out, phase = aps_downsample(x, 2, norm)
    for n in range(4):
        comps = [x[n, :, i::2, j::2] for i in range(2) for j in range(2)]
        norms = [{"l2": c.norm(), "l1": c.abs().sum(), "linf": c.abs().max()}[norm] for c in comps]
        best = int(np.argmax([float(v) for v in norms]))
        assert int(phase[n]) == best and torch.equal(out[n], comps[best])


def test_aps_ties_go_to_the_lowest_index():
    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, 1, 0] = x[1, 0, 0, 1] = 1.0                           # phases 2 and 1 tie
    _, phase = aps_downsample(x, 2)
    assert phase.tolist() == [0, 1]


@pytest.mark.parametrize("stride", [2, 3])
def test_aps_of_a_shifted_map_is_the_kept_component_rolled(stride):
    """APS(T_d x) = T_floor((p + d)/s) APS(x), with phase (p + d) mod s per axis."""
    x = torch.randn(3, 2, 4 * stride, 3 * stride, dtype=torch.float64)
    y, phase = aps_downsample(x, stride)
    for d in [(1, 0), (0, -1), (stride + 1, 2), (-5, 7)]:
        ys, phase_s = aps_downsample(torch.roll(x, d, (-2, -1)), stride)
        for n in range(3):
            p = divmod(int(phase[n]), stride)
            q = [(p[a] + d[a]) // stride for a in range(2)]
            assert int(phase_s[n]) == ((p[0] + d[0]) % stride) * stride + (p[1] + d[1]) % stride
            assert torch.equal(ys[n], torch.roll(y[n], q, (-2, -1)))


def test_aps_module_blur_and_sizes_not_divisible():
    x = torch.randn(2, 3, 7, 9)
    aps = APS(2, blur_filter=3)
    y = aps(x)
    assert y.shape == (2, 3, 4, 5)                                # ceil(H/s), like a strided op
    assert aps.last_phase.shape == (2,) and aps.last_size == (7, 9)
    expected, _ = aps_downsample(blur_pool(x, 3, 1, "circular"), 2)
    assert torch.equal(y, expected)


def test_aps_shortcut_takes_the_main_branch_phase_once():
    main, x, sc = APS(2), torch.randn(3, 4, 6, 6), torch.randn(3, 5, 6, 6)
    short = APSShortcut(main)
    main(x)
    phase = main.last_phase.clone()
    assert torch.equal(phase, aps_downsample(x, 2)[1])
    assert torch.equal(short(sc), phase_downsample(sc, phase, 2))
    with pytest.raises(ShiftlabError, match="before its main-branch"):
        short(sc)                                                 # the phase was used up
    main(x)
    with pytest.raises(ShiftlabError, match="same size"):
        short(torch.randn(3, 5, 8, 8))
    assert list(short.children()) == [] and short.state_dict() == {}


def test_aps_bad_arguments():
    for kwargs in (dict(stride=0), dict(norm="l3"), dict(blur_filter=9)):
        with pytest.raises(ShiftlabError):
            APS(**kwargs)
    with pytest.raises(ShiftlabError):
        APSShortcut(torch.nn.Identity())
    with pytest.raises(ShiftlabError, match="phase"):
        phase_downsample(torch.zeros(2, 1, 4, 4), torch.tensor([0, 4]), 2)


def test_shared_stride_helpers_used_by_blur_conv_and_convert():
    from shiftlab.convert import convert
    from shiftlab.layers.blurpool import at_stride_one, equal_stride
    conv = torch.nn.Conv2d(1, 2, 3, stride=(2, 1), padding=1)
    with pytest.raises(ShiftlabError, match=r"^BlurConv: strides differ along H and W \(2, 1\)"):
        BlurConv(conv)
    with pytest.raises(ShiftlabError, match=r"^cannot convert 0 \(Conv2d\): strides differ"):
        convert(torch.nn.Sequential(conv), "blurpool")
    assert equal_stride(torch.nn.MaxPool2d(3), "pool") == 3              # a pool's stride defaults to its kernel
    pool = torch.nn.MaxPool2d(3, 2, padding=1)
    twin = at_stride_one(pool)
    assert twin.stride == 1 and twin.kernel_size == 3 and twin.padding == 1 and pool.stride == 2
    with pytest.raises(ShiftlabError, match="unknown APS norm 'l3'"):
        APS(2, "l3")
    with pytest.raises(ShiftlabError, match="unknown APS norm 'l3'"):
        convert(torch.nn.Sequential(torch.nn.MaxPool2d(2)), "aps", norm="l3")
