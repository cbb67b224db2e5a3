"""Alias-free layers (Michaeli et al. 2023) against torch.fft oracles, their exact
equivariance to sub-pixel circular shifts, the Nyquist convention, and convert("alias-free"):
a converted circular net obeys the fractional-shift law where BlurPool and APS nets do not."""
import pytest
import torch
from torch import nn

from shiftlab import audit
from shiftlab.actions import FractionalShift, fractional_shift
from shiftlab.convert import convert
from shiftlab.data import load_data
from shiftlab.errors import ShiftlabError
from shiftlab.law import map_errors
from shiftlab.layers import (AliasFreeActivation, IdealDownsample, PolyAct, alias_free_activation,
                             fourier_upsample, ideal_downsample)
from shiftlab.layers.alias_free import PAPER_COEFFICIENTS
from shiftlab.models import create_model

F64 = torch.float64
HALF_PIXEL = [(0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (-0.5, 1.5), (1.5, -2.5)]


def _x(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _bins(n: int) -> torch.Tensor:
    """Signed integer frequencies of an n-point DFT: 0, 1, …, −1 (−n/2 for even n)."""
    return torch.fft.fftfreq(n, 1 / n, dtype=F64)


def _oracle_downsample(x, stride):
    """FFT along each spatial axis, zero the bins with 2·s·|k| ≥ n, inverse FFT, every s-th."""
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        keep = (2 * stride * _bins(n).abs() < n).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        x = torch.fft.ifft(torch.fft.fft(x, dim=axis) * keep, dim=axis).real
        x = x.index_select(axis, torch.arange(0, n, stride))
    return x


def _oracle_upsample(x, up, nyquist):
    """Zero-pad the spectrum along each axis; the Nyquist bin of even n dropped or split."""
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        spec = torch.fft.fft(x, dim=axis).movedim(axis, -1)
        out = torch.zeros(*spec.shape[:-1], up * n, dtype=spec.dtype)
        for i, k in enumerate(_bins(n).long().tolist()):
            if n % 2 == 0 and abs(k) == n // 2:
                if nyquist == "split":
                    out[..., n // 2] += spec[..., i] / 2
                    out[..., up * n - n // 2] += spec[..., i] / 2
            else:
                out[..., k % (up * n)] = spec[..., i]
        x = (torch.fft.ifft(out, dim=-1).real * up).movedim(-1, axis)
    return x


def _relative(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


# ----------------------------------------------------------------------------- the oracles
@pytest.mark.parametrize("shape", [(2, 3, 1), (2, 3, 6), (2, 3, 7), (1, 2, 28), (2, 2, 8, 8),
                                   (1, 2, 7, 10), (1, 1, 1, 5), (1, 1, 12, 9)])
def test_ideal_downsample_is_the_fft_low_pass_then_subsampling(shape):
    x = _x(*shape)
    for stride in (1, 2, 3, 4):
        assert torch.allclose(ideal_downsample(x, stride), _oracle_downsample(x, stride), atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 1), (2, 3, 2), (2, 3, 5), (2, 3, 8), (1, 2, 6, 7), (1, 1, 4, 4)])
@pytest.mark.parametrize("nyquist", ["zero", "split"])
def test_fourier_upsample_is_spectral_zero_padding(shape, nyquist):
    x = _x(*shape)
    for up in (2, 3):
        assert torch.allclose(fourier_upsample(x, up, nyquist), _oracle_upsample(x, up, nyquist), atol=1e-12)


def test_upsampling_keeps_the_samples_and_zero_drops_only_the_nyquist_bin():
    odd, even = _x(2, 3, 9), _x(2, 3, 10)
    assert torch.allclose(fourier_upsample(odd)[..., ::2], odd, atol=1e-12)       # no Nyquist bin
    assert torch.allclose(fourier_upsample(even, nyquist="split")[..., ::2], even, atol=1e-12)
    no_nyquist = ideal_downsample(even, 1)                         # stride 1: only bin n/2 goes
    assert torch.allclose(fourier_upsample(even)[..., ::2], no_nyquist, atol=1e-12)
    t = torch.arange(10, dtype=F64)
    assert torch.allclose(even - no_nyquist, (-1) ** t * (even * (-1) ** t).mean(-1, keepdim=True), atol=1e-12)


def test_the_new_nyquist_bin_is_zeroed_and_the_band_below_passes():
    """n = 8, stride 2: bin 2 is the new Nyquist (m = 4), zeroed as in the paper's
    create_lpf_rect; bin 1 passes untouched, sampled every 2nd."""
    t = torch.arange(8, dtype=F64)
    nyquist = torch.cos(2 * torch.pi * 2 * t / 8 + 0.3)[None, None]
    below = torch.cos(2 * torch.pi * 1 * t / 8 + 0.3)[None, None]
    assert ideal_downsample(nyquist, 2).abs().max() < 1e-12
    assert torch.allclose(ideal_downsample(below, 2), below[..., ::2], atol=1e-12)
    m = ideal_downsample(_x(1, 1, 16, 16), 2)                      # 8x8 out: no Nyquist content
    spectrum = torch.fft.fft2(m)
    assert spectrum[..., 4, :].abs().max() < 1e-12 and spectrum[..., :, 4].abs().max() < 1e-12


def test_large_maps_keep_float32_precision():
    x = _x(1, 2, 224)
    assert _relative(ideal_downsample(x.float(), 2).double(), _oracle_downsample(x, 2)) < 1e-6
    assert _relative(fourier_upsample(x.float()).double(), _oracle_upsample(x, 2, "zero")) < 1e-6


# ----------------------------------------------------------------------------- exact equivariance
@pytest.mark.parametrize("size, stride", [((8, 8), 2), ((8, 8), 4), ((12, 10), 2), ((28, 28), 4),
                                          ((15, 9), 3), ((16,), 4), ((24,), 2), ((21,), 3)])
def test_ideal_downsample_commutes_with_every_fractional_shift(size, stride):
    """D_s(T_δ x) = T_{δ/s} D_s(x) when s divides the sides (the law's fractional alignment)."""
    x = _x(3, 2, *size)
    for shift in ((0.5,), (-1.25,), (2.7,)):
        d = torch.tensor(shift * len(size), dtype=F64)[: len(size)].expand(3, -1)
        moved = ideal_downsample(fractional_shift(x, d), stride)
        assert _relative(moved, fractional_shift(ideal_downsample(x, stride), d / stride)) < 1e-12


@pytest.mark.parametrize("size", [(8, 8), (9, 7), (28, 28), (10,), (11,)])
def test_polynomial_activation_is_exactly_alias_free(size):
    """σ(x) = c0 + c1 x + c2 x² on the ×2 grid: the output follows every sub-pixel shift,
    for even and odd sizes, also with white noise (full Nyquist content) as input."""
    x = _x(2, 3, *size)
    poly = PolyAct().double()
    for shift in (0.5, -0.25, 1.7):
        d = torch.full((2, len(size)), shift, dtype=F64)
        a = alias_free_activation(fractional_shift(x, d), poly)
        assert _relative(a, fractional_shift(alias_free_activation(x, poly), d)) < 1e-12


def test_the_papers_split_nyquist_is_exact_only_without_nyquist_content():
    """The subtlety this module decides: with the bin n/2 split (the paper's upsampling) the
    square mixes its two halves into DC, which a half-pixel shift changes by cos²(π/2)."""
    poly = PolyAct().double()
    d = torch.full((2, 2), 0.5, dtype=F64)
    noise = _x(2, 3, 8, 8)

    def error(x, nyquist):
        f = lambda z: alias_free_activation(z, poly, nyquist=nyquist)     # noqa: E731
        return _relative(f(fractional_shift(x, d)), fractional_shift(f(x), d))
    assert error(noise, "zero") < 1e-12
    assert error(noise, "split") > 1e-2
    band_limited = ideal_downsample(noise, 1)                      # what the paper's nets feed it
    assert error(band_limited, "split") < 1e-12
    assert torch.allclose(alias_free_activation(band_limited, poly, nyquist="split"),
                          alias_free_activation(band_limited, poly), atol=1e-12)


def test_relu_on_the_doubled_grid_is_exact_at_half_pixels_only():
    """Any σ commutes with shifts by whole samples of the ×2 grid (half pixels); between
    them ReLU's unbounded spectrum folds back, so other sub-pixel shifts are approximate."""
    x = _x(2, 3, 16, 16)
    f = lambda z: alias_free_activation(z, torch.relu)             # noqa: E731

    def error(shift):
        d = torch.full((2, 2), shift, dtype=F64)
        return _relative(f(fractional_shift(x, d)), fractional_shift(f(x), d))
    assert error(0.5) < 1e-12 and error(-1.5) < 1e-12
    assert 1e-3 < error(0.25) < 0.2 and 1e-3 < error(0.3) < 0.2


# ----------------------------------------------------------------------------- modules
def test_modules_equal_their_functions_in_float32_and_float64():
    for dtype in (torch.float32, F64):
        x = _x(2, 4, 12, 10, dtype=dtype)
        assert torch.equal(IdealDownsample(2)(x), ideal_downsample(x, 2))
        poly = PolyAct(4, dtype=dtype)
        assert torch.equal(AliasFreeActivation(poly)(x), alias_free_activation(x, poly))
        assert AliasFreeActivation(poly)(x).dtype == dtype
        signal = _x(2, 4, 9, dtype=dtype)
        assert torch.equal(IdealDownsample(3, dims=1)(signal), ideal_downsample(signal, 3))


def test_poly_act_is_the_papers_polynomial_shared_or_per_channel():
    x = _x(2, 3, 5, 5)
    c0, c1, c2 = PAPER_COEFFICIENTS
    assert torch.allclose(PolyAct().double()(x), c0 + c1 * x + c2 * x * x)
    per_channel = PolyAct(3, coefficients=(1.0, 2.0, 3.0)).double()
    with torch.no_grad():
        per_channel.coef[1] = torch.tensor([0.0, -1.0, 0.5])
    expected = torch.stack([1 + 2 * x[:, 0] + 3 * x[:, 0] ** 2, -x[:, 1] + 0.5 * x[:, 1] ** 2,
                            1 + 2 * x[:, 2] + 3 * x[:, 2] ** 2], 1)
    assert per_channel.coef.shape == (3, 3) and torch.allclose(per_channel(x), expected)
    assert sum(p.numel() for p in PolyAct().parameters()) == 3        # learnable


def test_gradients_flow_and_are_finite():
    x = _x(1, 2, 6, 5).requires_grad_()
    act = AliasFreeActivation(PolyAct(2).double())
    assert torch.autograd.gradcheck(lambda z: act(z), (x,))
    act(x).square().sum().backward()
    assert torch.isfinite(act.nonlinearity.coef.grad).all() and act.nonlinearity.coef.grad.abs().sum() > 0


def test_vectors_after_global_pooling_pass_point_wise():
    v = _x(4, 7)
    assert torch.allclose(AliasFreeActivation(PolyAct().double())(v), PolyAct().double()(v))


@pytest.mark.parametrize("make, match", [
    (lambda: IdealDownsample(0), "stride"),
    (lambda: IdealDownsample(2, dims=3), "dims"),
    (lambda: AliasFreeActivation(up=1), "upsampling factor"),
    (lambda: AliasFreeActivation(nyquist="half"), "nyquist"),
    (lambda: PolyAct(coefficients=(1.0, 2.0)), "3 finite coefficients"),
    (lambda: PolyAct(0), "channels"),
])
def test_bad_arguments_are_one_line(make, match):
    with pytest.raises(ShiftlabError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_bad_inputs_are_one_line():
    with pytest.raises(ShiftlabError, match="built for dims=2"):
        IdealDownsample(2)(torch.zeros(1, 1, 8))
    with pytest.raises(ShiftlabError, match="built for dims=1"):
        AliasFreeActivation(dims=1)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ShiftlabError, match="built for 3 channels"):
        PolyAct(3)(torch.zeros(1, 2, 4, 4))


# ----------------------------------------------------------------------------- convert
def test_convert_alias_free_replaces_what_the_paper_replaces():
    net, replaced = convert(create_model("conv-maxpool"), "alias-free")
    assert replaced == ["features.1", "features.2", "features.4", "features.5", "features.7"]
    assert isinstance(net.features[1], AliasFreeActivation)
    assert isinstance(net.features[1].nonlinearity, PolyAct)
    assert isinstance(net.features[2].op, nn.AvgPool2d) and isinstance(net.features[2].down, IdealDownsample)
    kept, _ = convert(create_model("conv-maxpool"), "alias-free", activation="keep")
    assert isinstance(kept.features[1].nonlinearity, nn.ReLU) and isinstance(kept.features[2].op, nn.MaxPool2d)
    zero_padded, replaced = convert(create_model("lenet-wolf-stride"), "alias-free")
    assert all(m.padding_mode == "circular" for m in zero_padded.modules() if isinstance(m, nn.Conv2d)
               and any(m.padding))
    assert "features.2" in replaced and isinstance(zero_padded.features[2].down, IdealDownsample)
    again, replaced = convert(net, "alias-free")                  # nothing left to do
    assert replaced == [] and str(again) == str(net)


def test_convert_alias_free_1d():
    net, replaced = convert(create_model("conv1d-maxpool"), "alias-free")
    assert net.features[1].dims == 1 and net.features[2].down.dims == 1
    x = _x(3, 1, 64, dtype=torch.float32)
    errors = map_errors(net.features, x, [(0.5,), (-1.5,)], FractionalShift(), stride=4)
    assert max(errors) < 1e-4


@pytest.mark.parametrize("layer, match", [
    (nn.AdaptiveMaxPool2d(1), "AdaptiveMaxPool2d.*a max over positions"),
    (nn.GroupNorm(1, 4), "GroupNorm.*statistics over positions"),
    (nn.Softmax2d(), "Softmax2d.*does not know this layer"),
    (nn.MaxPool2d(3, 1, 1), "MaxPool2d.*stride 1"),
    (nn.AdaptiveAvgPool2d(3), "AdaptiveAvgPool2d.*uneven windows"),
    (nn.Upsample(scale_factor=2), "Upsample.*does not know"),
    (nn.MultiheadAttention(4, 1), "MultiheadAttention.*does not know"),
])
def test_alias_free_refuses_a_layer_it_cannot_handle_and_names_it(layer, match):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sequential(nn.ReLU(), layer))
    with pytest.raises(ShiftlabError, match=f"cannot make 1.1 \\({match}") as err:
        convert(net, "alias-free")
    assert "\n" not in str(err.value)


def test_alias_free_refuses_layers_converted_already_and_blur_options():
    with pytest.raises(ShiftlabError, match=r"features.2 \(MaxBlurPool\) alias-free: it was converted already"):
        convert(convert(create_model("conv-maxpool"), "blurpool")[0], "alias-free")
    with pytest.raises(ShiftlabError, match="alias-free uses the ideal low-pass filter"):
        convert(create_model("conv-maxpool"), "alias-free", filter_size=3)
    with pytest.raises(ShiftlabError, match="unknown activation"):
        convert(create_model("conv-maxpool"), "alias-free", activation="relu")


# ----------------------------------------------------------------------------- side by side
def _fixes():
    """conv-maxpool (circular, two 2x2 max-pools: total stride 4, GAP head) and its fixes."""
    torch.manual_seed(0)
    base = create_model("conv-maxpool")
    return {"plain": base,
            "blurpool": convert(base, "blurpool", padding="circular")[0],
            "aps": convert(base, "aps")[0],
            "alias-free": convert(base, "alias-free")[0]}


def test_half_pixel_shifts_side_by_side_on_real_digits():
    """Under the fractional protocol (band-limited circular shifts) the alias-free net obeys
    the law at every layer to ≤ 1e-4 in float32 and its logits do not move; BlurPool and
    APS nets, exact only at multiples of their stride, miss it by orders of magnitude."""
    x = load_data("mnist", split="test", seed=0)[0][:16].float()
    errors = {}
    for name, net in _fixes().items():
        result = audit(net.eval(), x, protocol="fractional", shifts=HALF_PIXEL, pairs=0)
        layer = [e for r in result.layers if r.comparison == "equivariance" for e in r.error]
        logits = next(r for r in result.layers if r.name == "output")
        assert logits.comparison == "invariance" and None not in layer + logits.error
        errors[name] = (max(layer), max(logits.error))
    assert errors["alias-free"][0] <= 1e-4 and errors["alias-free"][1] <= 1e-4, errors
    for name in ("plain", "blurpool", "aps"):
        assert errors[name][0] > 1e-2 and errors[name][1] > 1e-3, (name, errors)


def test_zoo_alias_free_lenet_is_invariant_to_sub_pixel_shifts():
    net = create_model("lenet-wolf-maxpool-alias-free").eval()
    x = load_data("mnist", split="test", seed=0)[0][:8].float()
    with torch.no_grad():
        logits = net(x)
        for shift in HALF_PIXEL:
            moved = net(fractional_shift(x, torch.tensor([shift]).expand(len(x), -1)))
            assert _relative(moved, logits) <= 1e-4
    assert max(map_errors(net.features, x, HALF_PIXEL, FractionalShift(), stride=4)) <= 1e-4
