"""Shift actions: each against an oracle (torch.roll, slicing, a brute-force mask)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from shiftlab import ShiftlabError, canvas_shift, circular_shift, crop_shift, flip, fractional_shift, rot90
from shiftlab.actions import make_action

shift_st = st.tuples(st.integers(-9, 9), st.integers(-9, 9))


@settings(max_examples=40, deadline=None)
@given(shift=shift_st, h=st.integers(3, 12), w=st.integers(3, 12))
def test_circular_equals_roll(shift, h, w):
    x = torch.randn(2, 3, h, w)
    assert torch.equal(circular_shift(x, shift), torch.roll(x, shift, dims=(-2, -1)))


def test_per_sample_shifts_equal_one_roll_each():
    x = torch.randn(5, 2, 7, 9)
    shifts = torch.tensor([[0, 0], [1, -2], [-3, 4], [6, 8], [-7, -9]])
    for action in (circular_shift, canvas_shift):
        out = action(x, shifts)
        for i, s in enumerate(shifts.tolist()):
            assert torch.equal(out[i:i + 1], action(x[i:i + 1], s))
    rolled = circular_shift(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        assert torch.equal(rolled[i], torch.roll(x[i], s, dims=(-2, -1)))


def test_canvas_shift_of_an_object_inside_is_lossless_and_invertible():
    canvas = torch.zeros(1, 1, 12, 12)
    canvas[..., 4:8, 3:9] = torch.rand(4, 6) + 0.5          # object with a 3-px free border
    for shift in [(3, -3), (-4, 3), (0, 3), (2, 2)]:
        moved = canvas_shift(canvas, shift)
        assert moved.sum() == pytest.approx(canvas.sum().item())    # nothing lost
        assert torch.equal(canvas_shift(moved, (-shift[0], -shift[1])), canvas)
        assert torch.equal(moved, torch.roll(canvas, shift, dims=(-2, -1)))  # same as a roll


def test_canvas_shift_loses_what_leaves_and_fills():
    x = torch.arange(1.0, 17).reshape(1, 1, 4, 4)
    out = canvas_shift(x, (0, 2), fill=-1.0)
    assert torch.equal(out[..., :2], torch.full((1, 1, 4, 2), -1.0))
    assert torch.equal(out[..., 2:], x[..., :2])
    assert torch.equal(canvas_shift(out, (0, -2), fill=-1.0)[..., 2:], torch.full((1, 1, 4, 2), -1.0))


def test_crop_shift_is_a_moving_window():
    x = torch.randn(2, 1, 10, 12)
    # anchor (centred) = (1, 2) for a 8x8 window; shift (1, -2) -> top-left (0, 4)
    assert torch.equal(crop_shift(x, (1, -2), (8, 8)), x[..., 0:8, 4:12])
    assert torch.equal(crop_shift(x, (0, 0), (8, 8)), x[..., 1:9, 2:10])
    with pytest.raises(ShiftlabError, match="leaves"):
        crop_shift(x, (2, 0), (8, 8))


def test_crop_content_moves_like_the_other_shifts():
    x = torch.randn(1, 1, 12, 12)
    a = crop_shift(x, (0, 0), (8, 8))
    b = crop_shift(x, (1, 2), (8, 8))
    assert torch.equal(b[..., 1:, 2:], a[..., :-1, :-2])


@settings(max_examples=30, deadline=None)
@given(shift=shift_st, h=st.integers(2, 11), w=st.integers(2, 11))
def test_integer_fractional_shift_is_exactly_roll(shift, h, w):
    x = torch.randn(2, 2, h, w)
    got = fractional_shift(x, (float(shift[0]), float(shift[1])))
    assert torch.equal(got, torch.roll(x, shift, dims=(-2, -1)))


def test_fractional_shifts_compose_on_odd_sizes():
    x = torch.randn(3, 1, 15, 13, dtype=torch.float64)
    half = fractional_shift(fractional_shift(x, (0.5, -0.25)), (0.5, -0.75))
    assert torch.allclose(half, torch.roll(x, (1, -1), dims=(-2, -1)), atol=1e-12)
    per_sample = fractional_shift(x, torch.tensor([[0.3, 0.0], [0.0, 0.0], [1.5, -2.25]]))
    assert torch.equal(per_sample[1], x[1])
    assert torch.allclose(per_sample[2:], fractional_shift(x[2:], (1.5, -2.25)))


def test_rot90_and_flip_are_group_actions():
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(rot90(rot90(x, 3), 1), x)
    assert torch.equal(rot90(x, 4), x)
    assert torch.equal(flip(flip(x, "x"), "x"), x)
    assert torch.equal(flip(x, "y"), torch.flip(x, dims=(-2,)))
    with pytest.raises(ShiftlabError):
        flip(x, "z")


def _brute_valid(h, w, k, margin):
    mask = torch.zeros(h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            si, sj = i - k[0], j - k[1]
            mask[i, j] = (margin <= i < h - margin and margin <= j < w - margin
                          and margin <= si < h - margin and margin <= sj < w - margin)
    return mask


@settings(max_examples=40, deadline=None)
@given(k=shift_st, h=st.integers(1, 9), w=st.integers(1, 9), margin=st.integers(0, 2))
def test_valid_mask_and_overlap_blocks_match_brute_force(k, h, w, margin):
    canvas = make_action("canvas")
    mask = canvas.valid_mask((h, w), torch.tensor([k]), margin)[0]
    assert torch.equal(mask, _brute_valid(h, w, k, margin))
    ref = torch.randn(1, 2, h, w)
    moved = canvas.on_features(ref, torch.tensor([k]))
    covered = torch.zeros(h, w, dtype=torch.bool)
    for (rows, cols), (src_rows, src_cols) in canvas.overlap_blocks((h, w), k, margin):
        assert torch.equal(moved[..., rows, cols], ref[..., src_rows, src_cols])
        assert not covered[rows, cols].any()
        covered[rows, cols] = True
    assert torch.equal(covered, mask)


@settings(max_examples=30, deadline=None)
@given(k=shift_st, h=st.integers(1, 9), w=st.integers(1, 9))
def test_circular_overlap_blocks_tile_the_rolled_map(k, h, w):
    circ = make_action("circular")
    ref = torch.randn(1, 2, h, w)
    rolled = torch.roll(ref, k, dims=(-2, -1))
    covered = torch.zeros(h, w, dtype=torch.int64)
    for (rows, cols), (src_rows, src_cols) in circ.overlap_blocks((h, w), k):
        assert torch.equal(rolled[..., rows, cols], ref[..., src_rows, src_cols])
        covered[rows, cols] += 1
    assert bool((covered == 1).all())
    assert bool(circ.valid_mask((h, w), torch.tensor([k])).all())


def test_feature_shifts_exact_only_at_multiples_of_the_stride():
    circ = make_action("circular")
    cands, exact = circ.feature_shifts(torch.tensor([[4.0, -8.0], [2.0, 4.0]]), 4)
    assert exact.tolist() == [True, False]
    assert {tuple(c[1].tolist()) for c in cands} == {(0, 1), (1, 1)}
    assert tuple(cands[0][0].tolist()) == (1, -2)


@pytest.mark.parametrize("bad", ["image", torch.randn(8), torch.randn(1, 1, 1, 4, 4)])
def test_inputs_of_no_known_rank_are_a_clear_error(bad):
    with pytest.raises(ShiftlabError, match="N×C×T signal .* or an N×C×H×W map"):
        circular_shift(bad, (1, 1))


@pytest.mark.parametrize("x,shift,match", [
    (torch.randn(3, 1, 8), (1, 1), "one \\(dt,\\) shift .* for 1-D data"),
    (torch.randn(3, 1, 8, 8), (1,), "one \\(dy, dx\\) shift .* for 2-D data"),
])
def test_a_shift_of_the_wrong_rank_is_a_clear_error(x, shift, match):
    with pytest.raises(ShiftlabError, match=match):
        circular_shift(x, shift)


def test_impossible_shifts_are_rejected():
    with pytest.raises(ShiftlabError, match="not smaller"):
        make_action("canvas").check_shifts((8, 8), torch.tensor([[0.0, 8.0]]))
    with pytest.raises(ShiftlabError, match="integer"):
        make_action("circular").check_shifts((8, 8), torch.tensor([[0.5, 0.0]]))
    with pytest.raises(ShiftlabError, match="allows shifts"):
        make_action("crop", crop=(6, 6)).check_shifts((8, 8), torch.tensor([[2.0, 0.0]]))
    with pytest.raises(ShiftlabError, match="unknown protocol"):
        make_action("spiral")
