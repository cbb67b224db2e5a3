"""The audit engine against theory and against a naive oracle."""
import itertools

import pytest
import torch
from torch import nn

from shiftlab import AuditResult, ShiftlabError, audit, canvas_shift
from shiftlab.audit import pair_shifts
from shiftlab.metrics import masked_sq_norms
from shiftlab.models import ConvNet, create_model
from shiftlab.probe import Probe
from shiftlab.transforms import make_action

RANDOM_SHIFTS = [(0, 0), (1, 0), (0, -1), (3, -5), (-7, 2), (6, 6), (-2, -9)]


def _images(n=6, size=16, c=1):
    return torch.rand(n, c, size, size)


# --- exactness where theory says so ----------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_stride1_circular_net_is_exactly_equivariant(dtype, tol):
    model = create_model("conv-circular").to(dtype)
    r = audit(model, _images().to(dtype), shifts=RANDOM_SHIFTS, pairs=2)
    for layer in r.layers:
        assert max(layer.max_error) < tol, layer.name
        assert layer.verdict(r.provenance.tolerance) in ("equivariant", "invariant")
    assert r.invariance.consistency == 1.0


def test_zero_padding_breaks_it_and_the_audit_sees_it():
    model = ConvNet(padding_mode="zeros")
    r = audit(model, _images(), shifts=RANDOM_SHIFTS, pairs=0)
    assert r.layer("features.0").error_exact > 1e-2


def test_total_stride_s_exact_at_multiples_with_period_s():
    model = create_model("conv-maxpool").double()                 # total stride 4
    r = audit(model, _images(4, 16).double(), shifts="-4:4", pairs=0)
    shifts = [tuple(map(int, s)) for s in r.shifts]
    for name, s in [("features.2", 2), ("features.5", 4), ("features.7", 4)]:
        layer = r.layer(name)
        assert layer.stride == s
        err = dict(zip(shifts, layer.error))
        for d, e in err.items():
            if d[0] % s == 0 and d[1] % s == 0:
                assert e < 1e-10, (name, d)
            else:
                assert e > 1e-3, (name, d)
            shifted = (d[0] + s, d[1])
            if shifted in err:                                    # the pattern has period s
                assert err[shifted] == pytest.approx(e, rel=1e-9, abs=1e-12)
        assert layer.alignment[shifts.index((1, 0))] == "nearest"
    pooled = dict(zip(shifts, r.layer("pool").error))
    assert all(pooled[d] < 1e-10 for d in shifts if d[0] % 4 == 0 and d[1] % 4 == 0)
    assert max(pooled.values()) > 1e-4
    assert r.layer("pool").verdict(r.provenance.tolerance) == "invariant at multiples of 4"


def test_valid_convs_are_exact_on_the_canvas_overlap():
    model = create_model("lenet-wolf", input_size=38)
    r = audit(model, _images(4, 38), protocol="canvas", shifts="-3:3", pairs=1)
    for i in range(8):
        assert r.layer(f"features.{i}").error_exact < 1e-5
    assert r.layer("pool").error_exact < 1e-5 and r.layer("pool").error_other > 1e-2


def test_crop_protocol_on_valid_convs():
    model = create_model("lenet-wolf", input_size=28)
    r = audit(model, _images(3, 34), protocol="crop", crop=(28, 28), shifts="-2:2", pairs=2)
    assert r.provenance.input_shape == [1, 28, 28]
    assert r.layer("features.7").error_exact < 1e-5
    assert r.provenance.pair_range == [-3.0, 4.0]        # every window offset of 34 -> 28


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_linear_circular_conv_commutes_with_fractional_shifts(dtype, tol):
    model = nn.Sequential(nn.Conv2d(1, 3, 5, padding=2, padding_mode="circular"),
                          nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular")).to(dtype)
    r = audit(model, _images(3, 12).to(dtype), protocol="fractional", shifts="-1:1:0.25")
    for layer in r.layers[:2]:
        assert "fourier" in layer.alignment
        assert max(layer.max_error) < tol


# --- known-answer synthetic models -----------------------------------------------------
class ParityOfX(nn.Module):
    """Class = parity of the column of the brightest pixel: flips at every 1-px x step."""

    def forward(self, x):
        col = x.sum(dim=(1, 2)).argmax(dim=-1)
        return nn.functional.one_hot(col % 2, 2).to(x.dtype) * 20.0


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 3.0, 1.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 3)


def _dots(n=5, size=16):
    x = torch.zeros(n, 1, size, size)
    for i in range(n):
        x[i, 0, 4 + i, 6 + i] = 1.0
    return x, torch.tensor([(6 + i) % 2 for i in range(n)])


def test_parity_model_flips_at_every_step():
    x, y = _dots()
    r = audit(ParityOfX(), (x, y), protocol="canvas", shifts="x=-3:3", pairs=4, seed=3)
    inv = r.invariance
    assert inv.flip_rate == 1.0 and inv.steps == 6 * 5
    assert inv.mean_abs_change == pytest.approx(0.0, abs=1e-6)
    assert inv.accuracy == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert inv.worst_case_accuracy == 0.0 and inv.clean_accuracy == 1.0
    # consistency: a pair agrees exactly when its two x shifts have the same parity
    lo, hi = r.provenance.pair_range
    ps = pair_shifts(3, 0, 5, 4, lo, hi)
    want = ((ps[0::2, :, 1] - ps[1::2, :, 1]) % 2 == 0).double().mean().item()
    assert inv.consistency == pytest.approx(want)
    assert 0.0 < want < 1.0


def test_constant_model_is_perfectly_stable():
    r = audit(Constant(), _images(7), shifts="-2:2", pairs=3)
    assert r.invariance.consistency == 1.0 and r.invariance.flip_rate == 0.0
    assert r.layer("output").max_error == [0.0] * 25


# --- the engine equals a naive oracle --------------------------------------------------
def _naive_errors(model, x, protocol, shifts, layer, stride, margin):
    action = make_action(protocol)
    with Probe(model, [layer]) as probe, torch.no_grad():
        ref = probe(action.reference(x))[layer]
        errors = []
        for d in shifts:
            out = probe(action(x, d))[layer]
            q = (d[0] / stride, d[1] / stride)
            cands = set(itertools.product({int(q[0] // 1), -int(-q[0] // 1)},
                                          {int(q[1] // 1), -int(-q[1] // 1)}))
            best_d, best_r = None, None
            for k in cands:
                kt = torch.tensor([k] * len(x))
                moved = action.on_features(ref, kt)
                mask = action.valid_mask(tuple(out.shape[-2:]), kt, margin)
                d2, r2 = masked_sq_norms(out, moved, mask)
                if best_d is None:
                    best_d, best_r = d2, r2
                else:
                    better = d2 * best_r < best_d * r2
                    best_d, best_r = torch.where(better, d2, best_d), torch.where(better, r2, best_r)
            errors.append((best_d.sum() / best_r.sum()).sqrt().item())
    return errors


@pytest.mark.parametrize("protocol,margin", [("canvas", 1), ("circular", 0)])
def test_engine_matches_naive_masked_comparison(protocol, margin):
    model = ConvNet(padding_mode="zeros", pool_after=(0,)).eval()
    x = _images(5, 14)
    shifts = [(0, 1), (2, -3), (-1, -1), (4, 2), (0, 0)]
    r = audit(model, x, protocol=protocol, shifts=shifts, margin=margin, pairs=0, batch_size=7)
    for layer, stride in [("features.1", 1), ("features.3", 2), ("features.4", 2)]:
        want = _naive_errors(model, x, protocol, shifts, layer, stride, margin)
        assert r.layer(layer).error == pytest.approx(want, rel=1e-5, abs=1e-7), layer


# --- streaming, determinism, JSON ------------------------------------------------------
def test_streaming_equals_one_shot_and_iterables():
    model = create_model("conv-maxpool")
    x, y = _images(9, 16), torch.randint(0, 10, (9,))
    one = audit(model, (x, y), shifts="-2:2", pairs=3, batch_size=512)
    small = audit(model, (x, y), shifts="-2:2", pairs=3, batch_size=4)       # ragged chunks
    loader = audit(model, [(x[:2], y[:2]), (x[2:7], y[2:7]), (x[7:], y[7:])], shifts="-2:2", pairs=3)
    for other in (small, loader):
        assert other.provenance.n_images == 9
        for a, b in zip(one.layers, other.layers):
            assert a.error == pytest.approx(b.error, rel=1e-5, abs=1e-7)
        assert other.invariance.consistency == one.invariance.consistency
        assert other.invariance.accuracy == one.invariance.accuracy
        assert other.invariance.sensitivity == pytest.approx(one.invariance.sensitivity, rel=1e-5)


def test_same_seed_same_numbers_and_json_round_trip(tmp_path):
    model = create_model("conv-maxpool")
    x = _images(6)
    a = audit(model, x, shifts="-1:1", pairs=2, seed=7)
    b = audit(model, x, shifts="-1:1", pairs=2, seed=7)
    assert a.layers == b.layers and a.invariance == b.invariance
    path = a.to_json(tmp_path / "r.json")
    back = AuditResult.from_json(path)
    assert back.layers == a.layers and back.provenance == a.provenance
    assert back.invariance == a.invariance
    assert back.provenance.protocol == "circular" and back.provenance.seed == 7
    assert back.provenance.n_images == 6 and back.provenance.shifts == "-1:1"


def test_model_mode_is_restored():
    model = create_model("conv-circular").train()
    audit(model, _images(2), shifts="0,0;1,1", pairs=0)
    assert model.training


# --- bad input at the API ---------------------------------------------------------------
@pytest.mark.parametrize("data,match", [
    (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
    (torch.zeros(0, 1, 8, 8), "empty"),
    (torch.zeros(2, 3, 8, 8), "3"),
    (torch.zeros(2, 8, 8), "N x C x H x W"),
    ((torch.zeros(3, 1, 8, 8), torch.zeros(2)), "labels"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "floating point"),
])
def test_bad_data_is_a_clear_error(data, match):
    with pytest.raises(ShiftlabError, match=match):
        audit(create_model("conv-circular"), data, shifts="-1:1")


@pytest.mark.parametrize("kwargs,match", [
    (dict(shifts="-9:9"), "not smaller"),
    (dict(shifts="-1:1:0.5"), "integer"),
    (dict(protocol="crop"), "window size"),
    (dict(layers=["nope"]), "unknown layer"),
    (dict(batch_size=0), "batch_size"),
    (dict(shifts="1:-1"), "STOP >= START"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ShiftlabError, match=match):
        audit(create_model("conv-circular"), torch.zeros(2, 1, 8, 8), **kwargs)


def test_canvas_shift_object_inside_audits_exactly():
    # a digit-like blob well inside a zero canvas: canvas == circular for these shifts
    x = torch.zeros(2, 1, 20, 20)
    x[..., 7:13, 7:13] = torch.rand(2, 1, 6, 6)
    model = create_model("conv-circular")
    a = audit(model, x, protocol="canvas", shifts="-2:2", pairs=0)
    b = audit(model, x, protocol="circular", shifts="-2:2", pairs=0)
    assert a.layer("output").error == pytest.approx(b.layer("output").error, abs=1e-7)
    assert torch.equal(canvas_shift(x, (2, -2)), torch.roll(x, (2, -2), dims=(-2, -1)))
