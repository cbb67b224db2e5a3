"""Experiments pooling, augmentation, convolution-theorem, template-matching, weight-sharing:
their reusable pieces against oracles, each experiment's key claim checked on the data its
``compute`` returns, its figures drawn from that data alone; saving the data and redrawing."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from shiftlab.errors import ShiftlabError
from shiftlab.experiments import (ExperimentResult, augmentation, convolution_theorem, pooling, redraw,
                                  run_experiment, template_matching, weight_sharing)
from shiftlab.experiments.base import data_path, load_data, save_data
from shiftlab.experiments.convolution_theorem import (TheoremReport, check_convolution_theorem,
                                                      circular_convolve, dense_image_map,
                                                      impulse_response, position_dependent_filter)
from shiftlab.experiments.pooling import PooledClassifier, nearest_mean_head, tolerated_shift
from shiftlab.experiments.template_matching import TemplateMatcher, cross_correlate, locate
from shiftlab.experiments.weight_sharing import conv_as_dense, count_parameters, dense_layer
from shiftlab.actions import canvas_shift, circular_shift


# ----------------------------------------------------------------------------- convolution theorem
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_circular_conv_is_its_impulse_response(dtype, tol):
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False).to(dtype).eval()
    report = check_convolution_theorem(conv, (2, 9, 7), dtype)
    assert report.reconstruction_error < min(tol, 1e-6)
    assert report.is_linear and report.is_equivariant and report.is_convolution
    assert report.kernel.shape == (3, 2, 9, 7)


def test_impulse_response_is_the_flipped_kernel_wrapped_around():
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular", bias=False).double()
    k = impulse_response(conv, (1, 6, 6))
    idx = torch.tensor([1, 0, -1])                   # conv2d correlates: K[i] = w[1 - i]
    torch.testing.assert_close(k[:, :, idx][:, :, :, idx], conv.weight.detach(), rtol=0, atol=1e-15)
    assert float(k[:, :, 2:-1, :].abs().max()) == 0.0 and float(k[:, :, :, 2:-1].abs().max()) == 0.0


def test_circular_convolve_matches_a_naive_sum():
    g = torch.Generator().manual_seed(1)
    x, k = torch.randn(2, 2, 4, 5, generator=g).double(), torch.randn(3, 2, 4, 5, generator=g).double()
    naive = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            for a in range(4):
                for b in range(5):
                    naive[:, :, i, j] += (x[:, None, :, a, b] * k[None, :, :, (i - a) % 4, (j - b) % 5]).sum(2)
    torch.testing.assert_close(circular_convolve(x, k), naive, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["dense", "position-dependent"])
def test_linear_but_not_equivariant_maps_fail_clearly(name):
    shape = (1, 10, 10)
    fn = dense_image_map(shape) if name == "dense" else position_dependent_filter
    report = check_convolution_theorem(fn, shape)
    assert report.is_linear
    assert not report.is_equivariant and report.equivariance_error > 0.1
    assert not report.is_convolution and report.reconstruction_error > 0.1


def test_nonlinear_map_fails_linearity():
    report = check_convolution_theorem(lambda x: torch.relu(x - 0.1), (1, 6, 6))
    assert not report.is_linear and report.verdict() == "not linear"


def test_theorem_check_bad_input():
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
    with pytest.raises(ShiftlabError, match="float32"):
        check_convolution_theorem(conv, (1, 8, 8), torch.float64)        # float32 parameters
    with pytest.raises(ShiftlabError, match="image size"):
        check_convolution_theorem(nn.Conv2d(1, 1, 3).double(), (1, 8, 8))
    with pytest.raises(ShiftlabError, match="shape"):
        check_convolution_theorem(lambda x: x, (8, 8))
    with pytest.raises(ShiftlabError, match="raised"):
        check_convolution_theorem(lambda x: x.view(3), (1, 4, 4))


def test_verdict_of_an_equivariant_linear_map_just_over_tolerance():
    """Linear and equivariant, reconstruction just over the tolerance: the verdict must not
    call it non-equivariant."""
    report = TheoremReport(shape=(1, 4, 4), dtype="float64", tolerance=1e-10, linearity_error=1e-13,
                           equivariance_error=1e-13, reconstruction_error=2e-10, kernel=torch.zeros(1, 1, 4, 4))
    assert report.is_linear and report.is_equivariant and not report.is_convolution
    assert "not shift-equivariant" not in report.verdict()
    assert report.verdict().startswith("linear and shift-equivariant")
    report.equivariance_error = 0.5
    assert report.verdict() == "linear, not shift-equivariant: not a convolution"


def test_dense_image_map_is_a_bias_free_dense_layer():
    dense = dense_image_map((2, 3, 3), seed=1)
    assert dense[1].bias is None and dense[1].weight.dtype == torch.float64
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(dense(x), (x.flatten(1) @ dense[1].weight.T).reshape(2, 2, 3, 3))
    assert torch.equal(dense_image_map((2, 3, 3), seed=1)[1].weight, dense[1].weight)   # seeded


# ----------------------------------------------------------------------------- template matching
def test_cross_correlate_matches_a_naive_sum_and_the_module():
    g = torch.Generator().manual_seed(2)
    x, t = torch.rand(2, 2, 6, 7, generator=g).double(), torch.rand(2, 3, 2, generator=g).double()
    r = cross_correlate(x, t, normalized=False)
    assert r.shape == (2, 1, 8, 8)
    padded = torch.nn.functional.pad(x, (1, 1, 2, 2))
    for i in range(8):
        for j in range(8):
            want = (padded[:, :, i:i + 3, j:j + 2] * t).sum((1, 2, 3))
            torch.testing.assert_close(r[:, 0, i, j], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(TemplateMatcher(t)(x), cross_correlate(x, t), rtol=0, atol=0)


def test_template_found_exactly_at_every_shift_and_max_invariant():
    g = torch.Generator().manual_seed(3)
    template = torch.rand(1, 5, 4, generator=g).double() + 0.1
    scene = torch.zeros(1, 1, 24, 24, dtype=torch.float64)
    scene[0, :, 9:14, 10:14] = template
    scene[0, :, 1:4, 18:22] = torch.rand(1, 3, 4, generator=g)          # a distractor
    shifts = torch.tensor([(dy, dx) for dy in range(-1, 6) for dx in range(-6, 2)])
    moved = canvas_shift(scene.expand(len(shifts), -1, -1, -1), shifts)
    response = cross_correlate(moved, template)
    ref = cross_correlate(scene, template)
    torch.testing.assert_close(locate(response, (5, 4)), torch.tensor([9, 10]) + shifts, rtol=0, atol=0)
    torch.testing.assert_close(response.flatten(1).amax(1), torch.ones(len(shifts), dtype=torch.float64))
    expected = canvas_shift(ref.expand(len(shifts), -1, -1, -1), shifts)
    assert float((response - expected).abs().max()) < 1e-12


def test_template_matching_bad_input():
    with pytest.raises(ShiftlabError, match="larger"):
        cross_correlate(torch.rand(1, 1, 4, 4), torch.rand(1, 5, 5))
    with pytest.raises(ShiftlabError, match="zeros"):
        cross_correlate(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2))
    with pytest.raises(ShiftlabError, match="channel"):
        cross_correlate(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 2))


# ----------------------------------------------------------------------------- weight sharing
def test_parameter_counts_of_the_classroom_example():
    assert count_parameters(dense_layer((3, 400, 400), 500, device="meta")) == 240_000_500
    assert count_parameters(nn.Conv2d(3, 1, 5)) == 76
    assert count_parameters(nn.Conv2d(3, 500, 5)) == 3 * 25 * 500 + 500


def test_conv_as_dense_computes_the_conv():
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double().eval()
    dense = conv_as_dense(conv, (2, 6, 5))
    x = torch.rand(4, 2, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), conv(x), rtol=0, atol=1e-12)
    with pytest.raises(ShiftlabError, match="does not fill"):
        dense_layer((1, 4, 4), 10, unflatten=(1, 4, 4))


# ----------------------------------------------------------------------------- pooling pieces
def test_nearest_mean_head_is_the_nearest_class_mean():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(60, 5, generator=g).double()
    y = torch.arange(60) % 3
    head = nearest_mean_head(z, y, 3)
    means = torch.stack([z[y == c].mean(0) for c in range(3)])
    with torch.no_grad():
        assert torch.equal(head(z).argmax(1), torch.cdist(z, means).argmin(1))
    with pytest.raises(ShiftlabError, match="classes"):
        nearest_mean_head(z, torch.zeros(60, dtype=torch.int64), 3)


def test_tolerated_shift_interpolates():
    assert tolerated_shift([0, 1, 2, 3], [0.0, 0.2, 0.4, 0.6], 0.3) == pytest.approx(1.5)
    assert tolerated_shift([0, 1, 2], [0.0, 0.0, 0.0], 0.3) == 2.0


def test_global_pool_classifier_is_exactly_invariant_to_circular_shifts():
    features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.ReLU()).double()
    model = PooledClassifier(features, 0).eval()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(circular_shift(x, (5, -3))), model(x), rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- the experiments
def _drawn_from_json(module, data, folder):
    """``module.draw`` from the data after a trip through JSON (what ``run`` saves): the
    data is plain JSON, and the figures come out of it alone."""
    again = json.loads(json.dumps(data))
    assert again == data                                          # nothing lost on the way
    pngs = module.draw(again, folder)
    assert pngs and all(p.suffix == ".png" and p.stat().st_size > 1000 for p in pngs)
    assert all(p.with_suffix(".svg").is_file() for p in pngs)
    return [p.name for p in pngs]


def test_convolution_theorem_claims_on_its_data(tmp_path):
    data = convolution_theorem.compute(quick=True, log=lambda s: None)
    assert all(convolution_theorem.claims(data).values()), convolution_theorem.claims(data)
    m = data["maps"]
    assert m["circular conv 5x5 (nn.Conv2d)"]["reconstruction_error"] < 1e-10
    assert m["dense layer"]["reconstruction_error"] > 0.1
    assert m["position-dependent filter"]["reconstruction_error"] > 0.1
    assert not m["conv + ReLU (not linear)"]["is_linear"]
    example = data["example"]["circular conv 5x5 (nn.Conv2d)"]
    assert max(max(row) for row in example["error"]) < 1e-10                # its rebuild is exact
    figures = _drawn_from_json(convolution_theorem, data, tmp_path)
    assert convolution_theorem.summarise(data, [tmp_path / f for f in figures]).figures == \
        ["convolution-theorem-maps.png", "convolution-theorem-errors.png"]


def test_template_matching_claims_on_its_data(tmp_path):
    data = template_matching.compute(quick=True, log=lambda s: None)
    assert data["exact_positions"] == data["shifts"] >= 25           # every tested shift
    assert data["max_change"] < 1e-10 and data["equivariance_error_max"] < 1e-10
    assert data["score_target"] == pytest.approx(1.0, abs=1e-12)
    assert data["score_distractor"] < 0.9 and data["score_same_class"] < 0.9
    assert max(data["max_per_shift"]) - min(data["max_per_shift"]) < 1e-10
    assert all(template_matching.claims(data).values())
    assert _drawn_from_json(template_matching, data, tmp_path) == ["template-matching.png"]


def test_invariance_errors_is_the_laws_invariance_branch():
    """|f(Tx) − f(x)| / |f(x)| per shift: 0 for a global max of a bump that stays inside,
    the lost mass for a sum when the bump leaves the canvas."""
    from shiftlab.actions import CanvasShift
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x[0, 0, 3:5, 3:5] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    errors = template_matching.invariance_errors(lambda t: t.flatten(1).amax(1), x, [(1, 2), (-3, 0)],
                                                 CanvasShift())
    assert errors == [0.0, 0.0]
    lost = template_matching.invariance_errors(lambda t: t.flatten(1).sum(1), x, [(0, 4)], CanvasShift())
    assert lost == pytest.approx([(2.0 + 4.0) / 10.0])              # the right column left


def test_weight_sharing_claims_on_its_data(tmp_path):
    data = weight_sharing.compute(quick=True, log=lambda s: None)
    counts, errors = data["parameters"], data["equivariance_error"]
    assert counts["dense 400x400x3 -> 500"] == 240_000_500 and counts["conv, one 5x5x3 filter"] == 76
    assert errors["conv 5x5x3, circular padding"] < 1e-10 < 0.1 < errors["dense layer (random weights)"]
    assert data["tied_distinct_values"] == 75
    assert all(weight_sharing.claims(data).values())
    assert _drawn_from_json(weight_sharing, data, tmp_path) == ["weight-sharing.png"]


@pytest.mark.slow
def test_pooling_claims_on_its_data(tmp_path):
    data = pooling.compute(quick=True, log=lambda s: None)
    d = {name: c["distance"] for name, c in data["curves"].items()}
    for name in ("no pooling", "max-pool 2", "max-pool 4"):     # invariance decays with the shift
        assert d[name][1] < d[name][2] < d[name][4]
    tol = data["tolerated_shift"]
    assert tol["max-pool 4"] > tol["max-pool 2"] > tol["no pooling"]
    assert max(d["global max-pool"]) < 1e-5
    assert all(pooling.claims(data).values()), pooling.claims(data)
    assert _drawn_from_json(pooling, data, tmp_path) == ["pooling.png"]


@pytest.mark.slow
def test_augmentation_claims_on_its_data(tmp_path):
    data = augmentation.compute(quick=True, log=lambda s: None)
    shifted = next(v for k, v in data["variants"].items() if k.startswith("shifted"))
    assert shifted["accuracy_inside"] - shifted["accuracy_outside"] > 0.2
    assert shifted["consistency_inside"] > shifted["consistency_everywhere"]
    assert all(augmentation.claims(data).values()), augmentation.claims(data)
    assert _drawn_from_json(augmentation, data, tmp_path) == ["augmentation.png"]
    assert not list(tmp_path.glob("augmentation-runs"))         # trained in a temporary folder


def test_no_pooling_is_the_identity_and_the_augmentation_default_uses_shipped_nets():
    from shiftlab.experiments.pooling import pooling_layer
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(pooling_layer(1)(x), nn.MaxPool2d(1)(x))
    with pytest.raises(ShiftlabError, match="pooling window"):
        pooling_layer(-1)
    from shiftlab.experiments import TRAINS
    assert TRAINS["augmentation"] == ("augmentation-centred", "augmentation-shifted")


@pytest.mark.slow
def test_augmentation_with_the_shipped_nets(tmp_path):
    data = augmentation.compute(log=lambda s: None, out=tmp_path)
    weights = data["settings"]["weights"]
    assert [w["weights"] for w in weights.values()] == ["weights/augmentation-centred",
                                                        "weights/augmentation-shifted"]
    assert all(w["source"] == "shipped" and w["test_accuracy"] >= 0.98 for w in weights.values())
    assert all(augmentation.claims(data).values()), augmentation.claims(data)
    assert not (tmp_path / "augmentation-runs").exists()


# ----------------------------------------------------------------------------- run, save, redraw
def test_run_saves_result_and_data_and_redraw_makes_the_same_figures(tmp_path):
    """``run_experiment`` writes the result, the data and the figures; ``redraw`` draws the
    figures again from the saved data alone, byte for byte (computing nothing)."""
    result = run_experiment("weight-sharing", tmp_path, quick=True, log=lambda s: None)
    _check_saved(result, tmp_path)
    data = load_data(tmp_path, "weight-sharing")
    assert data == json.loads(json.dumps(weight_sharing.compute(quick=True, log=lambda s: None)))
    assert ExperimentResult.load(tmp_path / "experiment-weight-sharing.json").numbers["parameters"] == \
        data["parameters"]                                          # the keys the report reads stay
    svg = (tmp_path / "weight-sharing.svg").read_bytes()
    (tmp_path / "weight-sharing.svg").unlink()
    (tmp_path / "weight-sharing.png").unlink()
    pngs = redraw("weight-sharing", tmp_path)
    assert [p.name for p in pngs] == result.figures
    assert (tmp_path / "weight-sharing.svg").read_bytes() == svg
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["experiment-data", "experiment-weight-sharing.json", "weight-sharing.png", "weight-sharing.svg"]


@pytest.mark.parametrize("content, match", [
    (None, "no such experiment data"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "no settings"),
    ('{"parameters": {}}', "no settings"),
])
def test_redraw_bad_data(tmp_path, content, match):
    if content is not None:
        path = data_path(tmp_path, "weight-sharing")
        path.parent.mkdir()
        path.write_text(content)
    with pytest.raises(ShiftlabError, match=match):
        redraw("weight-sharing", tmp_path)
    assert not (tmp_path / "weight-sharing.png").exists()
    with pytest.raises(ShiftlabError, match="unknown experiment"):
        redraw("nonsense", tmp_path)


def test_save_data_refuses_what_json_cannot_hold(tmp_path):
    with pytest.raises(ShiftlabError, match="not plain JSON"):
        save_data({"settings": {}, "kernel": torch.zeros(2)}, tmp_path, "weight-sharing")
    assert not (tmp_path / "experiment-data").exists()


def test_computing_the_numbers_draws_nothing():
    """``compute`` never imports matplotlib (nor the figure code): the claims can be
    computed and tested without it."""
    code = ("import sys\n"
            "from shiftlab.experiments import bag_of_features, convolution_theorem, template_matching, "
            "weight_sharing\n"
            "for m in (bag_of_features, convolution_theorem, template_matching, weight_sharing):\n"
            "    assert all(m.claims(m.compute(quick=True, log=lambda s: None)).values()), m.__name__\n"
            "drawing = sorted(n for n in sys.modules if n.startswith(('matplotlib', 'shiftlab.viz')))\n"
            "assert not drawing, drawing\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_experiment_has_the_same_parts():
    """compute / draw / claims / summarise / run, and drawing code only inside draw."""
    import ast
    import importlib
    import inspect
    from shiftlab.experiments import EXPERIMENTS
    for name, (module_name, _) in EXPERIMENTS.items():
        module = importlib.import_module(f"shiftlab.experiments.{module_name}")
        for part in ("compute", "draw", "claims", "summarise", "run"):
            assert callable(getattr(module, part, None)), (name, part)
        assert list(inspect.signature(module.draw).parameters) == ["data", "out"], name
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                drawing = [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                           and (n.module or "").startswith(("matplotlib", "viz"))]
                assert not drawing or node.name == "draw", (name, node.name)
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not any("matplotlib" in ast.dump(n) or getattr(n, "module", "") == "viz" for n in top), name


def _check_saved(result: ExperimentResult, out_dir):
    assert result.figures and all((out_dir / f).is_file() for f in result.figures)
    assert all((out_dir / f.replace(".png", ".svg")).is_file() for f in result.figures)
    assert data_path(out_dir, result.name).is_file()
    again = ExperimentResult.load(out_dir / f"experiment-{result.name}.json")
    assert again.claims == result.claims and again.rows == [list(r) for r in result.rows]
