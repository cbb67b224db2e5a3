"""Streaming metrics: known answers; one batch == many batches == merged shards."""
import pytest
import torch

from shiftlab.metrics import (Consistency, EquivarianceError, GridStability, SensitivityMap,
                              consistency, flip_rate, masked_sq_norms)
from shiftlab.shifts import ShiftSet


def _split_update(metric_factory, update, chunks):
    one = metric_factory()
    update(one, slice(None))
    many = metric_factory()
    for sl in chunks:
        update(many, sl)
    left, right = metric_factory(), metric_factory()
    for sl in chunks[: len(chunks) // 2]:
        update(left, sl)
    for sl in chunks[len(chunks) // 2:]:
        update(right, sl)
    return one, many, left.merge(right)


CHUNKS = [slice(0, 3), slice(3, 4), slice(4, 11), slice(11, 20)]


def test_equivariance_error_streams_and_merges():
    idx = torch.randint(0, 5, (20,))
    d2, r2 = torch.rand(20), torch.rand(20) + 0.5
    runs = _split_update(lambda: EquivarianceError(5),
                         lambda m, sl: m.update(idx[sl], d2[sl], r2[sl]), CHUNKS)
    want = [((d2[idx == k].double().sum() / r2[idx == k].double().sum()).sqrt().item()
             if (idx == k).any() else 0.0) for k in range(5)]
    for metric in runs:
        got = metric.compute()
        assert got["error"] == pytest.approx(want, rel=1e-12)
        assert got["count"] == torch.bincount(idx, minlength=5).tolist()
        assert max(got["max_error"]) == pytest.approx((d2.double() / r2.double()).sqrt().max().item())


def test_grid_stability_streams_merges_and_knows_its_answers():
    grid = ShiftSet.parse("x=0:3")                                   # 4 shifts in a row
    probs = torch.softmax(torch.randn(4, 20, 3), -1)
    labels = torch.randint(0, 3, (20,))
    runs = _split_update(lambda: GridStability(4, grid.neighbours()),
                         lambda m, sl: m.update(probs[:, sl], labels[sl]), CHUNKS)
    pred = probs.argmax(-1)
    flips = (pred[1:] != pred[:-1]).double().mean().item()
    # MAC (Azulay & Weiss): the earlier step's top-1 class, its probability at both steps
    mac = sum(abs(probs[j, n, pred[j - 1, n]] - probs[j - 1, n, pred[j - 1, n]]).item()
              for j in range(1, 4) for n in range(20)) / (3 * 20)
    hit = pred == labels
    for metric in runs:
        got = metric.compute()
        assert got["flip_rate"] == pytest.approx(flips)
        assert got["mean_abs_change"] == pytest.approx(mac, rel=1e-6)
        assert got["accuracy"] == pytest.approx(hit.double().mean(1).tolist())
        assert got["worst_case_accuracy"] == pytest.approx(hit.all(0).double().mean().item())
        assert got["true_class_prob"] == pytest.approx(
            probs.gather(2, labels[None, :, None].expand(4, -1, 1))[..., 0].double().mean(1).tolist(), rel=1e-6)
    assert flip_rate(probs, grid.neighbours()) == pytest.approx(flips)


def test_alternating_predictions_flip_at_every_step():
    probs = torch.zeros(5, 2, 2)
    probs[0::2, :, 0] = 1
    probs[1::2, :, 1] = 1
    m = GridStability(5, ShiftSet.parse("x=0:4").neighbours())
    m.update(probs)
    assert m.compute()["flip_rate"] == 1.0 and m.compute()["mean_abs_change"] == 1.0
    assert "accuracy" not in m.compute()                              # no labels given


def test_mac_follows_the_earlier_steps_class():
    """The issue's example: [0.6, 0.4] then [0.3, 0.7]. The definition (Azulay & Weiss
    2019) compares class 0 at both steps: |0.3 − 0.6| = 0.3; the difference of the top
    probabilities (0.7 − 0.6 = 0.1) is not MAC."""
    m = GridStability(2, torch.tensor([[0, 1]], dtype=torch.float64))
    m.update(torch.tensor([[[0.6, 0.4]], [[0.3, 0.7]]], dtype=torch.float64))
    assert m.compute()["mean_abs_change"] == pytest.approx(0.3, abs=1e-12)
    m = GridStability(2, torch.tensor([[0, 1]], dtype=torch.float64))                     # the step taken backwards
    m.update(torch.tensor([[[0.3, 0.7]], [[0.6, 0.4]]], dtype=torch.float64))
    assert m.compute()["mean_abs_change"] == pytest.approx(0.3, abs=1e-12)   # class 1: 0.7 → 0.4
    m = GridStability(3, torch.tensor([[0, 1], [1, 2]], dtype=torch.float64))             # no flip, class kept
    m.update(torch.tensor([[[0.9, 0.1]], [[0.8, 0.2]], [[0.55, 0.45]]], dtype=torch.float64))
    assert m.compute()["mean_abs_change"] == pytest.approx((0.1 + 0.25) / 2, abs=1e-12)


def test_consistency_streams_and_merges():
    a, b = torch.randint(0, 3, (20,)), torch.randint(0, 3, (20,))
    for metric in _split_update(Consistency, lambda m, sl: m.update(a[sl], b[sl]), CHUNKS):
        assert metric.compute() == {"consistency": consistency(a, b), "pairs": 20}


def test_sensitivity_map_and_radial_average():
    shifts = ShiftSet.parse("-1:1").tensor()
    m = SensitivityMap(shifts)
    idx = torch.arange(9)
    m.update(idx, shifts.norm(dim=1).square(), torch.ones(9))         # distance = |δ|
    got = m.compute()
    assert got["map"] == pytest.approx(shifts.norm(dim=1).tolist())
    assert got["radius"] == [0.0, 1.0]                               # |δ| = 0, 1, √2 -> bins 0, 1, 1
    assert got["radial"] == pytest.approx([0.0, (4 * 1 + 4 * 2 ** 0.5) / 8])


def test_masked_norms_only_count_the_mask():
    a, b = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    d2, r2 = masked_sq_norms(a, b, mask)
    assert d2.tolist() == pytest.approx([24.0, 0.0], rel=1e-6)    # float32 norms, squared
    assert r2.tolist() == [0.0, 0.0]


def test_merge_rejects_a_different_metric():
    with pytest.raises(ValueError, match="cannot merge"):
        EquivarianceError(3).merge(Consistency())
    with pytest.raises(ValueError, match="shape"):
        EquivarianceError(3).merge(EquivarianceError(4))
