"""The audit engine against theory and against a naive oracle."""
import itertools

import pytest
import torch
from torch import Tensor, nn

from shiftlab import AuditResult, ShiftlabError, audit, canvas_shift
from shiftlab.audit import pair_shifts
from shiftlab.metrics import masked_sq_norms
from shiftlab.models import ConvNet, create_model
from shiftlab.probe import Probe
from shiftlab.actions import make_action

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
    # Zhang's window offsets o in [0, D), D = 34 - 28 = 6; a shift is anchor (3) - o
    assert r.provenance.pair_range == [-2.0, 4.0]
    assert "[0, D)" in r.provenance.pair_offsets and "D = 6" in r.provenance.pair_offsets
    r = audit(model, _images(3, 34), protocol="crop", crop=(28, 28), shifts="-2:2", pairs=2,
              crop_offsets="inclusive")
    assert r.provenance.pair_range == [-3.0, 4.0]        # every window offset of 34 -> 28
    assert "[0, D]" in r.provenance.pair_offsets


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
    # MAC follows the earlier step's class: its probability goes from ~1 to ~0 at every
    # step (the difference of the two top probabilities would be 0 here)
    assert inv.mean_abs_change == pytest.approx(1.0, abs=1e-6)
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
    """Brute force. Under the canvas protocol a position also counts only where the layer is
    defined as a shift: it is not NaN when the fill that entered ``T_δ x`` is NaN, and its
    source is not NaN when the content of ``x`` that left the frame is NaN (2-D bands)."""
    action = make_action(protocol)
    nan = float("nan")
    with Probe(model, [layer]) as probe, torch.no_grad():
        ref = probe(action.reference(x))[layer]
        errors = []
        for d in shifts:
            out = probe(action(x, d))[layer]
            if action.fills:
                entered = probe(canvas_shift(x, d, fill=nan))[layer].isnan().any(1)
                lost = canvas_shift(canvas_shift(x, d), tuple(-v for v in d), fill=nan)
                left = probe(lost)[layer].isnan().any(1, keepdim=True)
            q = (d[0] / stride, d[1] / stride)
            cands = set(itertools.product({int(q[0] // 1), -int(-q[0] // 1)},
                                          {int(q[1] // 1), -int(-q[1] // 1)}))
            best_d, best_r = None, None
            for k in cands:
                kt = torch.tensor([k] * len(x))
                moved = action.on_features(ref, kt)
                mask = action.valid_mask(tuple(out.shape[-2:]), kt, margin)
                if action.fills:
                    mask = mask & ~entered & ~action.on_features(left.double(), kt)[:, 0].bool()
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
    (torch.zeros(2, 8, 8), "starts with a Conv2d .* the data are 1-D signals"),
    (torch.zeros(2, 1, 1, 8, 8), "N x C x T signals or N x C x H x W"),
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
    (dict(batch_size=0), "batch size"),
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


# --- circular shifts on layers that change the map size --------------------------------
def _wrapped_oracle(layer: nn.Module, x: Tensor, shift, reach_rows, reach_cols) -> float:
    """Brute force: compare φ(roll(x)) with φ(x) moved by the shift, at output positions
    p whose window (given by hand) holds no wrapped pixel and whose source p − δ exists."""
    with torch.no_grad():
        out, ref = layer(torch.roll(x, shift, dims=(-2, -1))), layer(x)
    h, w = out.shape[-2:]
    dy, dx = shift
    num = den = 0.0
    for p, q in itertools.product(range(h), range(w)):
        if not (0 <= p - dy < h and 0 <= q - dx < w) or reach_rows(p, dy) or reach_cols(q, dx):
            continue
        num += (out[..., p, q] - ref[..., p - dy, q - dx]).double().square().sum().item()
        den += ref[..., p - dy, q - dx].double().square().sum().item()
    return (num / den) ** 0.5


def _window_hits_wrap(pad: int, k: int, n_in: int):
    """Does output p's window [p − pad, p − pad + k) hold a pixel the shift d wrapped?"""
    def hit(p, d):
        lo, hi = p - pad, p - pad + k - 1
        band = range(0, d) if d > 0 else range(n_in + d, n_in)
        return any(lo <= r <= hi for r in band)
    return hit


@pytest.mark.parametrize("pad", [0, 1])
def test_circular_shifts_compare_size_changing_maps_where_nothing_wrapped(pad):
    """A 5×5 conv with padding 0 (28 → 24) or 1 (28 → 26): a roll of the input is not a roll
    of the map. The audit compares exactly the positions a brute-force oracle picks by hand
    from the window geometry, and gets its error."""
    conv = nn.Conv2d(1, 3, 5, padding=pad, bias=False).double()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    r = audit(conv, x, protocol="circular", shifts="-3:3", pairs=0, layers=[])
    hit = _window_hits_wrap(pad, 5, 28)
    for k, (dy, dx) in enumerate(r.shifts):
        want = _wrapped_oracle(conv, x, (int(dy), int(dx)), hit, hit)
        assert r.layer("output").error[k] == pytest.approx(want, rel=1e-9, abs=1e-12)
    if pad == 0:                                            # valid conv: exact where compared
        assert r.layer("output").error_exact < 1e-12
    assert "receptive field did not wrap" in r.layer("output").note


def test_lenet_wolf_convolutions_are_exact_under_circular_shifts():
    """Issue 10: lenet-wolf's valid convolutions (28 → 24 → 20 → 16 → 12) showed an error of
    0.17–0.23 under circular ±4 shifts of MNIST digits, as if convolution were not
    equivariant. Compared where their receptive fields did not wrap, they are exact."""
    from shiftlab.data import load_data
    x, y = load_data("digits", split="test")                # always there; 8×8 → place on 28
    from shiftlab.data import place_on_canvas
    x = place_on_canvas(x[:40], (28, 28))
    model = create_model("lenet-wolf").eval()
    r = audit(model, (x, y[:40]), protocol="circular", shifts="-4:4", pairs=0)
    for name in ("features.0", "features.2", "features.4", "features.6"):
        layer = r.layer(name)
        assert layer.comparison == "equivariance" and layer.error_exact < 1e-5, name
        assert all(e is not None and e < 1e-5 for e in layer.error), name
        assert layer.verdict(r.provenance.tolerance) == "equivariant"
    assert r.layer("pool").error_exact < 1e-5                 # exact at even shifts
    assert r.layer("pool").error_other > 1e-2                 # not at odd ones


def test_a_map_every_wrap_reaches_is_not_comparable(tmp_path):
    """A 28×28 kernel on a 28×28 input: its single output sees every pixel, so under any
    circular shift nothing is comparable. The result says so: per-shift errors are None
    (JSON null), the verdict and the table say "not comparable"."""
    model = nn.Sequential(nn.Conv2d(1, 2, 28), nn.ReLU(), nn.Flatten())
    r = audit(model, torch.rand(3, 1, 28, 28), protocol="circular", shifts="x=-2:2", pairs=0)
    layer = r.layer("0")
    assert layer.comparison == "not comparable"
    assert layer.error == [None, None, 0.0, None, None]       # only the identity compares
    assert layer.error_exact is None and layer.error_other is None
    assert layer.verdict(r.provenance.tolerance) == "not comparable"
    assert layer.note.startswith("not comparable")
    assert "not comparable" in r.table()
    path = r.to_json(tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = AuditResult.from_json(path)
    assert back.layer("0").error == [None, None, 0.0, None, None]


def test_same_size_maps_still_roll_under_circular_shifts():
    """Zero padding on a same-size map: a roll is the induced action, and the audit still
    reports the padding's error at the borders (not hidden as 'not comparable')."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    r = audit(model, torch.rand(3, 1, 12, 12), protocol="circular", shifts="x=-2:2", pairs=0)
    assert r.layer("0").note is None and r.layer("0").error_exact > 1e-3


# --- Zhang's crop protocol ----------------------------------------------------------------
@pytest.mark.parametrize("offsets,count", [("zhang", 4), ("inclusive", 5)])
def test_crop_pairs_draw_zhangs_window_offsets(offsets, count):
    """Zhang (2019) draws window offsets with randint(D): {0 … D−1}; "inclusive" adds D.
    On 32×32 images with a 28×28 window (D = 4) every drawn offset anchor − shift lies in
    that set, and every value of it occurs."""
    model = create_model("lenet-wolf", input_size=28)
    r = audit(model, torch.rand(40, 1, 32, 32), protocol="crop", crop=(28, 28), shifts="0:0",
              pairs=8, crop_offsets=offsets)
    lo, hi = r.provenance.pair_range
    drawn = pair_shifts(0, 0, 40, 8, lo, hi)
    offsets_seen = set((2 - drawn).flatten().long().tolist())     # anchor = D // 2 = 2
    assert offsets_seen == set(range(count))


def test_crop_without_window_offsets_is_a_clear_error():
    with pytest.raises(ShiftlabError, match=r"\[0, D\)"):
        audit(create_model("lenet-wolf", input_size=28), torch.rand(2, 1, 28, 28),
              protocol="crop", crop=(28, 28), shifts="0:0", pairs=1)
    r = audit(create_model("lenet-wolf", input_size=28), torch.rand(2, 1, 28, 28),
              protocol="crop", crop=(28, 28), shifts="0:0", pairs=1, crop_offsets="inclusive")
    assert r.invariance.consistency == 1.0


@pytest.mark.parametrize("labels,match", [
    (torch.tensor([0.5, 1.0]), "whole class indices"),
    (torch.tensor([0, 10]), r"class indices in \[0, 9\]"),
    (torch.tensor([-1, 2]), r"class indices in \[0, 9\]"),
])
def test_labels_that_are_not_class_indices_are_refused_by_the_api(labels, match):
    with pytest.raises(ShiftlabError, match=match):
        audit(create_model("conv-circular"), (torch.rand(2, 1, 8, 8), labels), shifts="-1:1")


@pytest.mark.parametrize("cache", [1 << 19, 100, 1])          # one chunk, several rows, one row
@pytest.mark.parametrize("circular", [True, False])
def test_fast_norms_equal_the_plain_law_in_2d_in_chunks(circular, cache, monkeypatch):
    """The law's fast comparison, in cache-sized pieces, equals its plain block norms."""
    import sys
    from shiftlab.actions import make_action
    from shiftlab.law import LayerGeometry, ReferenceMaps, alignments, block_norms
    monkeypatch.setattr(sys.modules["shiftlab.law"], "CACHE_VALUES", cache)
    action = make_action("circular" if circular else "canvas")
    ref = torch.randn(5, 3, 9, 11, dtype=torch.float64)
    out = torch.randn(5, 3, 9, 11, dtype=torch.float64)
    geometry = LayerGeometry.same_size(action, 1, (9, 11), margin=0 if circular else 1)
    fast = ReferenceMaps(ref)
    for shift in ((0.0, 0.0), (2.0, -3.0), (-4.0, 5.0), (1.0, 0.0)):
        (a,) = alignments(action, geometry, shift)
        want = block_norms(out, ref, a)
        got = fast.norms(out, a, slice(0, 5))
        assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
        assert got[2] == want[2]
        some = fast.norms(out[1:], a, slice(1, 5))           # rows of a later block of samples
        assert torch.allclose(some[0], block_norms(out[1:], ref[1:], a)[0])
        assert torch.allclose(some[1], want[1][1:])
