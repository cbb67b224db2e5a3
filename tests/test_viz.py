"""Figures, the sliding-digit animation and the explorer's frames."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from shiftlab import audit
from shiftlab.errors import ShiftlabError
from shiftlab.models import create_model
from shiftlab.viz import plots
from shiftlab.viz.animate import (animate, colour_maps, compute_frames, law_alignments, probe_maps,
                                  slide_path, stabilise)
from shiftlab.viz.explorer import explorer_frames, load_explorer, save_explorer


def digit(size: int = 24) -> torch.Tensor:
    """A blocky '3' from sklearn's 8x8 digits, upscaled to size x size (exact repeats)."""
    from shiftlab.data import load_data
    x, y = load_data("digits", split="test", seed=0)
    k = int((y == 3).nonzero()[0, 0])
    return x[k].repeat_interleave(size // 8, -2).repeat_interleave(size // 8, -1)


# ----------------------------------------------------------------------------- animation
@pytest.mark.parametrize("path, count", [("left-right", 20), ("diagonal", 20), ("loop", 40)])
def test_slide_path_frame_counts(path, count):
    positions = slide_path(path, (28, 28), 38)
    assert positions.shape == (count, 2)
    assert positions.min() == 0 and positions.max() == 10                  # inside the canvas
    steps = np.abs(np.diff(np.vstack([positions, positions[:1]]), axis=0)).max(axis=1)
    assert (steps == 1).all()                                              # 1 px per frame, loops


def test_slide_path_bad_input():
    with pytest.raises(ShiftlabError, match="unknown path"):
        slide_path("zigzag", (28, 28), 38)
    with pytest.raises(ShiftlabError, match="cannot slide"):
        slide_path("loop", (28, 28), 28)


def test_animation_gif_has_one_frame_per_position(tmp_path):
    model = create_model("lenet-wolf", input_size=28).eval()
    path, frames = animate(model, digit(), tmp_path / "a.gif", canvas=28, path="loop", label=3, title="t")
    assert len(frames) == len(slide_path("loop", (24, 24), 28)) == 16
    with Image.open(path) as gif:
        assert gif.n_frames == 16 and gif.size[0] > 400
    assert frames.probs.shape == (16, 10) and np.allclose(frames.probs.sum(1), 1.0)
    with pytest.raises(ShiftlabError, match="GIF"):
        animate(model, digit(), tmp_path / "a.mp4", canvas=28)


def test_stabilised_view_is_still_for_equivariant_layers_and_moves_for_the_pool():
    """lenet-wolf's valid convs are exactly equivariant under canvas shifts (the digit stays
    inside): their stabilised views are pixel-identical in every frame. Its max-pool (stride
    2) matches only at even shifts."""
    model = create_model("lenet-wolf", input_size=28).eval()
    frames = compute_frames(model, digit(), canvas=28, path="left-right",
                            layers="features.1,features.7,pool")
    by_name = {v.name: v for v in frames.layers}
    for name in ("input", "features.1", "features.7"):
        stable = by_name[name].stable
        assert (stable == stable[0]).all(), name
        assert not (by_name[name].raw == by_name[name].raw[0]).all()      # the raw view moves
    pool = by_name["pool"].stable
    even = frames.shifts[:, 1] % 2 == 0
    same = np.array([(pool[t] == pool[0]).all() for t in range(len(frames))])
    assert same[even].all() and not same[~even].any()


def test_circular_net_stabilised_views_are_still():
    """conv-circular (circular padding, stride 1) is exactly equivariant everywhere."""
    model = create_model("conv-circular").eval()
    frames = compute_frames(model, digit(16), canvas=20, path="diagonal")
    assert len(frames.layers) == 4
    for view in frames.layers:
        assert (view.stable == view.stable[0]).all(), view.name


def test_colour_maps_same_vectors_same_colours_and_seeded():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 5, 6, 6))
    maps[1] = maps[0]
    first, again = colour_maps(maps, clusters=4, seed=1), colour_maps(maps, clusters=4, seed=1)
    assert first.shape == (3, 6, 6, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and np.array_equal(first[0], first[1])
    assert (colour_maps(np.zeros((2, 3, 4, 4))) == 0).all()                # no activation: black
    with pytest.raises(ShiftlabError, match="clusters"):
        colour_maps(maps, clusters=0)


def test_stabilise_crops_the_common_window():
    from shiftlab.actions import CanvasShift
    from shiftlab.law import LayerGeometry, alignments
    views = np.arange(2 * 6 * 6).reshape(2, 6, 6)
    geometry = LayerGeometry.same_size(CanvasShift(), 2, (6, 6))
    floor = [alignments(CanvasShift(), geometry, d)[0] for d in [(0, 0), (-3, 4)]]
    assert [a.feature_shift for a in floor] == [(0, 0), (-2, 2)]               # (-3, 4) / 2, floored
    out = stabilise(views, floor)
    assert out.shape == (2, 4, 4)
    assert np.array_equal(out[0], views[0, 2:6, 0:4]) and np.array_equal(out[1], views[1, 0:4, 2:6])
    gone = alignments(CanvasShift(), LayerGeometry.same_size(CanvasShift(), 1, (6, 6)), (0, 12))
    with pytest.raises(ShiftlabError, match="no window"):
        stabilise(views, [floor[0], gone[0]])
    with pytest.raises(ShiftlabError, match="no window"):
        stabilise(views, [floor[0], None])


def _old_stabilise(views, shifts, stride):
    """The animation's own numpy alignment before it came from the law (an oracle): every
    frame moved back by ⌊δ / s⌋, on the window all frames cover."""
    moved = np.floor_divide(shifts, stride)
    low, span = moved.min(0), moved.max(0) - moved.min(0)
    h, w = views.shape[1] - span[0], views.shape[2] - span[1]
    return np.stack([views[k, e[0]:e[0] + h, e[1]:e[1] + w] for k, e in enumerate(moved - low)])


def test_stabilised_frames_are_the_laws_aligned_maps():
    """The stabilised view of frame t is φ(x_t) read through the law's alignment: on the
    window it shows, φ(x_t) lies inside the law's compared region, and frame 0's view there
    is what ``law.expected`` calls T'φ(x_0); the number under it is ``law.compare``'s. Where
    the stride divides the shift the frames are the ones the animation drew before (its own
    ⌊δ/s⌋ alignment); elsewhere the law's nearest alignment (floor or ceil, the better)."""
    from shiftlab.actions import CanvasShift
    from shiftlab.law import LayerGeometry, alignments, compare, expected, relative_error
    from shiftlab.viz.animate import canvas_frames, choose_layers
    action, canvas = CanvasShift(), 30
    model = create_model("lenet-wolf", input_size=canvas).eval()
    frames = compute_frames(model, digit(), canvas=canvas, path="loop", layers="features.1,pool")
    inputs = canvas_frames(digit(), frames.positions, canvas, torch.float32)
    infos = choose_layers(model, inputs[:1], "features.1,pool")
    maps, _ = probe_maps(model, inputs, infos)
    for info, view in zip(infos, frames.layers[1:]):
        phi, shifts = maps[info.name], frames.shifts                      # (T, C, h, w)
        aligned, errors = law_alignments(phi, shifts, info.stride)
        assert [a.feature_shift for a in aligned] == [a.feature_shift for a in view.aligned]
        np.testing.assert_array_equal(errors, view.error)
        stable = stabilise(phi.transpose(0, 2, 3, 1), aligned)           # the maps, moved back
        h, w = stable.shape[1:3]
        y0, x0 = (max(a.blocks[0][1][axis].start for a in aligned) for axis in range(2))
        geometry = LayerGeometry.same_size(action, info.stride, phi.shape[2:])
        for t, a in enumerate(aligned):
            candidates = alignments(action, geometry, tuple(float(d) for d in shifts[t]))
            assert a in candidates
            moved, mask = expected(action, torch.from_numpy(phi[:1]), a)   # T'φ(x_0), compared region
            (out, src), = a.blocks
            ky, kx = out[0].start - src[0].start, out[1].start - src[1].start
            rows, cols = slice(y0 + ky, y0 + ky + h), slice(x0 + kx, x0 + kx + w)
            assert mask is None or bool(mask[0, rows, cols].all())
            np.testing.assert_array_equal(stable[t], phi[t][:, rows, cols].transpose(1, 2, 0))
            np.testing.assert_array_equal(stable[0], moved[0][:, rows, cols].numpy().transpose(1, 2, 0))
            law = compare(action, geometry, torch.from_numpy(phi[t:t + 1]), torch.from_numpy(phi[:1]),
                          tuple(float(d) for d in shifts[t]))            # the law keeps the best
            assert errors[t] == float(relative_error(law))
        exact = (shifts % info.stride == 0).all(1)
        assert np.array_equal(_old_stabilise(view.raw, shifts, info.stride)[exact], view.stable[exact])
        kinds = {a.kind for a, e in zip(aligned, exact) if not e}
        assert kinds == (set() if info.stride == 1 else {"nearest"})


def test_animate_cli(tmp_path):
    from shiftlab.cli import main
    out = tmp_path / "digit.gif"
    assert main(["animate", "--model", "conv-circular", "--data", "digits", "--canvas", "12",
                 "--index", "4", "--out", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 8
    assert main(["animate", "--model", "conv-circular", "--data", "digits", "--canvas", "12",
                 "--index", "99999", "--out", str(out)]) == 2
    assert main(["animate", "--model", "conv-circular", "--data", "digits", "--canvas", "8",
                 "--out", str(out)]) == 2


# ----------------------------------------------------------------------------- explorer
def test_explorer_frames(tmp_path):
    model = create_model("lenet-wolf", input_size=28).eval()
    data = explorer_frames(model, digit(), canvas=28, label=3, title="lenet-wolf")
    assert data["dys"] == data["dxs"] == [-2, -1, 0, 1, 2]
    assert len(data["frames"]) == 25 and len(data["layers"]) == 3
    centre = data["frames"][12]
    assert (centre["dy"], centre["dx"]) == (0, 0)
    assert abs(sum(centre["probs"]) - 1) < 1e-3
    images = [Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
              for uri in [centre["input"], *centre["maps"]]]
    assert images[0].size == (28, 28) and images[1].size == tuple(data["layers"][0]["shape"][1:])
    assert data["frames"][13]["input"] != centre["input"]
    path = save_explorer(data, tmp_path, "lenet-wolf")
    assert load_explorer(path) == json.loads(json.dumps(data))
    with pytest.raises(ShiftlabError, match="radius"):
        explorer_frames(model, digit(), canvas=28, radius=3)
    path.write_text('{"schema": "shiftlab.explorer/1", "frames": []}')
    with pytest.raises(ShiftlabError, match="incomplete"):
        load_explorer(path)


# ----------------------------------------------------------------------------- figures
@pytest.fixture(scope="module")
def audits():
    torch.manual_seed(0)
    images = torch.rand(8, 1, 16, 16) * (torch.rand(8, 1, 16, 16) > 0.7)
    labels = torch.arange(8) % 10
    return {name: audit(create_model(name), (images, labels), shifts="-2:2", name=name, pairs=2)
            for name in ("conv-circular", "conv-maxpool")}


def _check_written(paths, min_kb=8):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    with Image.open(paths[0]) as image:
        image.load()
        assert image.size[0] > 150 and image.size[1] > 100
    assert paths[0].stat().st_size > min_kb * 1000
    assert paths[1].read_text().lstrip().startswith("<?xml")


@pytest.mark.slow
def test_every_figure_is_written(audits, tmp_path):
    one = audits["conv-maxpool"]
    _check_written(plots.plot_layer_errors(one, tmp_path, "layers"))
    _check_written(plots.plot_stability(audits, tmp_path, "stability"))
    _check_written(plots.plot_accuracy_heatmap(one, tmp_path, "heatmap"))
    _check_written(plots.plot_sensitivity(audits, tmp_path, "sensitivity"))
    _check_written(plots.plot_model_bars(audits, tmp_path, "bars"))


def test_shift_line_walks_dy_zero_in_order(audits):
    result = audits["conv-maxpool"]
    axis, offsets, idx = plots.shift_line(result)
    assert axis == "dx" and offsets.tolist() == [-2, -1, 0, 1, 2]
    assert [result.shifts[k] for k in idx] == [[0.0, float(d)] for d in range(-2, 3)]
    # the period-S pattern the layer plot shows: stride 4 is exact at 0 only, inexact elsewhere
    layer = result.layer("features.5")
    errors = np.asarray(layer.error)[idx]
    assert errors[2] < 1e-6 and (errors[[0, 1, 3, 4]] > 1e-3).all()


def test_figures_bad_input(audits, tmp_path):
    unlabelled = audit(create_model("conv-circular"), torch.rand(2, 1, 8, 8), shifts="-1:1", pairs=0)
    with pytest.raises(ShiftlabError, match="labelled"):
        plots.plot_stability({"x": unlabelled}, tmp_path, "s")
    listed = audit(create_model("conv-circular"), (torch.rand(2, 1, 8, 8), torch.tensor([0, 1])),
                   shifts="0,0;1,1", pairs=0)
    with pytest.raises(ShiftlabError, match="not a 2-D grid"):
        plots.plot_accuracy_heatmap(listed, tmp_path, "h")
    with pytest.raises(ShiftlabError, match="AuditResult"):
        plots.plot_model_bars({}, tmp_path, "b")
    assert not list(tmp_path.iterdir())                                   # nothing half-written
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []                                        # nor left open


def _with_gaps(result):
    """A copy of ``result`` as the audit writes it for a layer that does not fit the protocol:
    one layer not comparable (every non-zero shift None), one with a few None shifts."""
    import copy
    result = copy.deepcopy(result)
    whole, part = result.layers[0], result.layers[1]
    zero = result.shifts.index([0.0, 0.0])
    whole.comparison, whole.note = "not comparable", "not comparable: every receptive field wrapped"
    whole.error = [0.0 if k == zero else None for k in range(len(result.shifts))]
    whole.error_exact = whole.error_other = None
    part.error = [None if max(map(abs, s)) == 2 else e for s, e in zip(result.shifts, part.error)]
    return result


def test_heatmap_columns_walk_dx_then_dy(audits):
    result = audits["conv-maxpool"]
    indices, labels, groups = plots.heatmap_columns(result)
    assert [result.shifts[k] for k in indices] == \
        [[0.0, float(d)] for d in range(-2, 3)] + [[float(d), 0.0] for d in range(-2, 3)]
    assert labels == ["-2", "-1", "0", "1", "2"] * 2
    assert groups == [("dx (dy = 0)", 0, 4), ("dy (dx = 0)", 5, 9)]
    listed = audit(create_model("conv-circular"), torch.rand(2, 1, 8, 8), shifts="1,1;0,2", pairs=0)
    assert plots.heatmap_columns(listed) == ([0, 1], ["1,1", "0,2"], [("shift (dy, dx)", 0, 1)])
    row = audit(create_model("conv-circular"), torch.rand(2, 1, 8, 8), shifts="x=-1:1", pairs=0)
    assert plots.heatmap_columns(row)[2] == [("dx (dy = 0)", 0, 2)]       # no dy line to walk


def test_layer_error_grid_keeps_gaps_and_marks_exact_comparisons(audits):
    result = _with_gaps(audits["conv-maxpool"])
    indices, _, _ = plots.heatmap_columns(result)
    grid, exact = plots.layer_error_grid(result, indices)
    assert grid.shape == exact.shape == (len(result.layers), 10)
    assert np.isnan(grid[0]).sum() == 8 and grid[0, 2] == grid[0, 7] == plots.ERROR_RANGE[0] - 1
    assert np.isnan(grid[1]).tolist() == [True, False, False, False, True] * 2
    for i, layer in enumerate(result.layers[1:], 1):
        for j, k in enumerate(indices):
            if layer.error[k] is not None:
                assert exact[i, j] == (layer.alignment[k] == "exact")
                assert grid[i, j] == pytest.approx(np.log10(max(layer.error[k], 1e-8)))
    spatial = [i for i, l in enumerate(result.layers) if i >= 2 and l.comparison == "equivariance"]
    assert spatial and exact[spatial][:, [2, 7]].all()     # the zero shift is exact on every map


def _grey_pixels(png: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return int((pixels == (217, 217, 217)).all(axis=1).sum())


def test_not_comparable_cells_are_drawn_grey_and_figures_write_nothing(audits, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from shiftlab.viz.figure import figure_png
    monkeypatch.chdir(tmp_path)
    open_before = plt.get_fignums()
    plain = figure_png(plots.draw_layer_errors(audits["conv-maxpool"]))
    gaps = figure_png(plots.draw_layer_errors(_with_gaps(audits["conv-maxpool"])))
    assert plain.startswith(b"\x89PNG") and gaps.startswith(b"\x89PNG")
    assert _grey_pixels(gaps) > _grey_pixels(plain) + 500       # 12 hatched cells, beyond the legend's
    assert list(tmp_path.iterdir()) == [] and plt.get_fignums() == open_before


def test_by_model_puts_each_protocol_of_a_model_in_one_row(audits):
    import copy
    canvas = copy.deepcopy(audits["conv-maxpool"])
    canvas.provenance.protocol = "canvas"
    again = copy.deepcopy(audits["conv-maxpool"])
    table = plots.by_model({"b-circ": audits["conv-maxpool"], "b-canvas": canvas,
                            "a": audits["conv-circular"], "b-again": again})
    assert list(table) == ["b-again", "conv-circular", "conv-maxpool"]   # a repeat keeps its name
    assert list(table["conv-maxpool"]) == ["canvas", "circular"]
    assert plots.by_protocol(table["conv-maxpool"]) == {"canvas": {"conv-maxpool": canvas},
                                                         "circular": {"conv-maxpool": audits["conv-maxpool"]}}


def test_model_bars_show_every_value_and_na_for_unlabelled(audits):
    import matplotlib.pyplot as plt
    unlabelled = audit(create_model("conv-circular"), torch.rand(4, 1, 16, 16), shifts="-1:1", pairs=2,
                       name="blind")
    fig = plots.draw_model_bars({"m": audits["conv-maxpool"], "u": unlabelled})
    texts = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    inv = audits["conv-maxpool"].invariance
    expected = (inv.clean_accuracy, inv.worst_case_accuracy, inv.consistency, inv.flip_rate)
    for labels, value in zip(texts, expected):
        assert f"{value:.1%}" in labels
    assert "n/a" in texts[0] and "n/a" in texts[1]                     # no labels: no accuracy
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["blind", "conv-maxpool"]
    plt.close(fig)


# ----------------------------------------------------------------------------- review fixes
def test_canvas_larger_than_a_panel_is_rejected(tmp_path):
    from shiftlab.cli import main
    from shiftlab.viz.animate import CELL, AnimationFrames, LayerFrames, check_canvas, render_frame
    assert check_canvas(CELL) == CELL
    model = create_model("conv-circular").eval()
    with pytest.raises(ShiftlabError, match=f"between 1 and {CELL} pixels"):
        animate(model, digit(8), tmp_path / "big.gif", canvas=CELL + 1)
    assert main(["animate", "--model", "conv-circular", "--data", "digits", "--canvas", "4000",
                 "--out", str(tmp_path / "big.gif")]) == 2
    assert not list(tmp_path.iterdir())
    huge = np.zeros((1, CELL + 8, CELL + 8, 3), np.uint8)           # e.g. an upsampling layer
    frames = AnimationFrames(np.zeros((1, 2), int), np.zeros((1, 2), int),
                             [LayerFrames("up", "Upsample", 1, huge, None)], np.ones((1, 1)))
    with pytest.raises(ShiftlabError, match="larger than a 132-pixel panel"):
        render_frame(frames, 0)


def test_gif_palette_is_fit_on_a_sample_and_shared(monkeypatch):
    """Every frame is drawn once and quantised with one palette fit on at most
    PALETTE_FRAMES frames, so a long path never builds a T-frame montage."""
    from shiftlab.viz import animate as animate_module
    frames = compute_frames(create_model("conv-circular").eval(), digit(8), canvas=14, path="loop")
    assert len(frames) == 24 > animate_module.PALETTE_FRAMES
    drawn, montages = [], []
    render, new = animate_module.render_frame, Image.new
    monkeypatch.setattr(animate_module, "render_frame", lambda f, t: drawn.append(t) or render(f, t))
    monkeypatch.setattr(animate_module.Image, "new", lambda mode, size, *a: montages.append(size) or new(mode, size, *a))
    images = animate_module._quantised_frames(frames)
    assert sorted(drawn) == list(range(24))
    height = images[0].size[1]
    assert max(h for _, h in montages) == animate_module.PALETTE_FRAMES * height   # 16 frames, not 24
    assert len(images) == 24 and all(im.mode == "P" for im in images)
    assert all(im.getpalette() == images[0].getpalette() for im in images)
    background = [im.getpixel((0, 0)) for im in images]
    assert len(set(background)) == 1


def test_explorer_reuses_the_public_animation_helpers():
    from shiftlab.viz import animate as animate_module
    from shiftlab.viz import explorer
    for name in ("check_image", "model_dtype", "canvas_frames", "choose_layers", "probe_maps",
                 "colour_maps", "grey_maps"):
        assert getattr(explorer, name) is getattr(animate_module, name)
        assert f":func:`{name}`" in animate_module.__doc__
    assert explorer.model_dtype(create_model("conv-circular").double()) == torch.float64
    with pytest.raises(ShiftlabError, match="one image"):
        explorer.check_image(torch.zeros(1, 1, 4, 4))
