"""The worst-case shift gap and half-pixel consistency (issue 13, part 2).

Gap = clean accuracy − worst-case accuracy over a set of shifts (Michaeli, Michaeli & Soudry,
CVPR 2023): over the grid's integer shifts, and over the half-pixel lattice around the grid.
A model that reads the Nyquist column gives known values; a circular APS net has no integer
gap but a half-pixel one; shards merge to one pass; JSON round-trips, old JSON loads; the
CLI, the report and the demo show it.
"""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from shiftlab import AuditConfig, ShiftlabError, audit
from shiftlab.audit import _audit_shard, _merge_shards, half_pixel_lattice
from shiftlab.cli import main
from shiftlab.models import create_model
from shiftlab.result import AuditResult

NEW_FIELDS = ("gap_integer", "integer_worst_case_accuracy", "gap_integer_shifts", "gap_half_pixel",
              "half_pixel_worst_case_accuracy", "gap_half_pixel_shifts", "half_pixel_consistency",
              "half_pixel_pairs", "half_pixel_consistency_rule")


class NyquistReader(nn.Module):
    """Class 1 when the image has a strong column-alternating (x-Nyquist) component.

    ``m = |mean(x · (−1)^w)|``: a circular integer shift keeps m; a band-limited shift by f
    along x scales it by |cos(π f)|, so m = 0 at half-pixel x shifts; y shifts keep it.
    Logits ``(0.5 − m, m − 0.5)``.
    """

    def forward(self, x):
        sign = 1 - 2 * (torch.arange(x.shape[-1]) % 2).to(x.dtype)
        m = (x * sign).mean(dim=(1, 2, 3)).abs()
        return torch.stack([0.5 - m, m - 0.5], 1)


def nyquist_data(n: int = 10, striped: int = 3):
    """``striped`` images carry the pattern (label 1), the rest are smooth (label 0)."""
    g = torch.Generator().manual_seed(0)
    smooth = torch.rand(n, 1, 1, 1, generator=g) * torch.ones(n, 1, 8, 8)   # constant images
    stripes = (1 - 2 * (torch.arange(8) % 2)).float().expand(1, 1, 8, 8)
    x = smooth.clone()
    x[:striped] = x[:striped] + stripes
    y = torch.zeros(n, dtype=torch.int64)
    y[:striped] = 1
    return x, y


# ----------------------------------------------------------------------------- the lattice
def test_half_pixel_lattice_spans_each_axis_of_the_grid_and_the_origin():
    grid = torch.tensor([[0.0, -2.0], [0.0, 1.0]])
    lattice = half_pixel_lattice(grid)
    assert lattice[:, 0].unique().tolist() == [0.0]
    assert lattice[:, 1].tolist() == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0]
    assert half_pixel_lattice(torch.tensor([[1.0], [2.0]])).flatten().tolist() == [0, 0.5, 1, 1.5, 2]
    assert len(half_pixel_lattice(torch.tensor([[-4.0, -4.0], [4.0, 4.0]]))) == 17 ** 2
    assert half_pixel_lattice(torch.tensor([[0.25, -0.25]])).tolist() == \
        [[0.0, -0.5], [0.0, 0.0], [0.5, -0.5], [0.5, 0.0]]          # rounded outwards to halves


# ----------------------------------------------------------------------------- known values
@pytest.mark.parametrize("protocol", ["circular", "fractional"])
def test_a_model_that_sees_half_pixel_x_shifts_has_the_known_gaps(protocol):
    x, y = nyquist_data(10, striped=3)
    model = NyquistReader()
    r = audit(model, (x, y), protocol=protocol, shifts="-1:1", pairs=4, half_pixel=True, layers=[])
    inv = r.invariance
    assert inv.clean_accuracy == 1.0
    assert inv.integer_worst_case_accuracy == 1.0 and inv.gap_integer == 0.0   # rolls keep m
    # every striped image is wrong at x = ±0.5: worst case 7/10, gap 3 points in 10
    assert inv.half_pixel_worst_case_accuracy == 0.7 and inv.gap_half_pixel == pytest.approx(0.3, abs=0)
    # every half-pixel pair has x = s + 1/2: the striped images flip, the smooth ones do not
    assert inv.half_pixel_consistency == 0.7 and inv.half_pixel_pairs == 40
    assert "25 shifts" in inv.gap_half_pixel_shifts and "{-1, -0.5, …, 1} per axis" in inv.gap_half_pixel_shifts
    # the fractional grid -1:1 is integer already: the worst case over it is the integer one
    assert inv.worst_case_accuracy == 1.0
    # forwards: 10 clean + 8·10 grid + 4·10 pairs·2 + (25 − 9)·10 lattice + 4·10 half-pixel pairs
    assert r.forwards == 10 + 80 + 80 + 160 + 40


def test_the_lattice_follows_the_grid_axis_by_axis():
    """A grid along y only: the lattice moves y only, which this model does not see."""
    x, y = nyquist_data(10, striped=3)
    inv = audit(NyquistReader(), (x, y), shifts="y=-2:2", pairs=2, half_pixel=True, layers=[]).invariance
    assert inv.gap_integer == 0.0 and inv.gap_half_pixel == 0.0 and inv.half_pixel_worst_case_accuracy == 1.0
    assert "y in {-2, -1.5, …, 2}, x in {0}" in inv.gap_half_pixel_shifts
    assert inv.half_pixel_consistency == 0.7                  # pairs still move x by s + 1/2
    inv = audit(NyquistReader(), (x, y), shifts="x=-2:2", pairs=2, half_pixel=True, layers=[]).invariance
    assert inv.gap_half_pixel == pytest.approx(0.3, abs=0)


def test_a_fractional_grid_splits_into_its_integer_shifts_for_the_integer_gap():
    x, y = nyquist_data(10, striped=3)
    inv = audit(NyquistReader(), (x, y), protocol="fractional", shifts="x=-1:1:0.5", pairs=0,
                layers=[]).invariance
    assert inv.worst_case_accuracy == 0.7                     # the grid holds x = ±0.5
    assert inv.gap_integer == 0.0 and "2 non-zero integer shifts" in inv.gap_integer_shifts
    assert inv.gap_half_pixel is None and inv.half_pixel_consistency is None   # not asked for


def test_the_integer_gap_is_always_there_for_labelled_classifiers_and_null_without_labels():
    torch.manual_seed(0)
    model = create_model("conv-maxpool")
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 10, (6,))
    for protocol in ("circular", "canvas"):
        inv = audit(model, (x, y), protocol=protocol, shifts="-1:1", pairs=1).invariance
        assert inv.gap_integer == pytest.approx(inv.clean_accuracy - inv.worst_case_accuracy, abs=1e-15)
        assert inv.gap_half_pixel is None
    inv = audit(model, x, shifts="-1:1", pairs=2, half_pixel=True).invariance
    assert inv.gap_integer is None and inv.gap_half_pixel is None and inv.gap_integer_shifts is None
    assert inv.half_pixel_consistency is not None and inv.half_pixel_pairs == 12   # needs no labels


def test_a_circular_aps_net_has_no_integer_gap_but_a_half_pixel_one():
    """APS (Chaman & Dokmanić 2021) is exactly invariant to integer circular shifts, not to
    half-pixel ones (Michaeli et al. 2023). Untrained, labelled by its own clean predictions."""
    from shiftlab.data import load_data
    torch.manual_seed(0)
    model = create_model("lenet-wolf-maxpool-aps").eval()
    x, _ = load_data("mnist", split="test", seed=0)
    x = x[:32]
    with torch.no_grad():
        y = model(x).argmax(-1)
    inv = audit(model, (x, y), shifts="-2:2", pairs=3, half_pixel=True, layers=[]).invariance
    assert inv.clean_accuracy == 1.0 and inv.worst_case_accuracy == 1.0 and inv.consistency == 1.0
    assert inv.gap_integer == 0.0
    assert inv.gap_half_pixel > 0.1 and inv.half_pixel_consistency < 0.95


# ----------------------------------------------------------------------------- shards
@pytest.mark.parametrize("world", [2, 3])
def test_half_pixel_state_merges_over_shards_to_one_pass(world):
    torch.manual_seed(0)
    model = create_model("lenet-wolf-maxpool-aps")
    x, y = torch.rand(14, 1, 28, 28), torch.randint(0, 10, (14,))
    config = AuditConfig(batch_size=5, shifts="x=-1:1", pairs=2, half_pixel=True, layers=[])
    single = audit(model, (x, y), config).to_dict()
    shards = [pickle.loads(pickle.dumps(_audit_shard(model, (x, y), config, rank, world)[0]))
              for rank in range(world)]
    merged = _merge_shards(shards)
    merged.model = model
    result = merged.result(torch.float32, torch.device("cpu"), world).to_dict()
    for key in NEW_FIELDS:
        assert result["invariance"][key] == single["invariance"][key], key
    assert single["invariance"]["half_pixel_pairs"] == 28 and result["forwards"] == single["forwards"]
    assert single["invariance"]["half_pixel_worst_case_accuracy"] is not None


def test_batching_does_not_change_the_half_pixel_pairs():
    torch.manual_seed(1)
    model = create_model("conv-circular")
    x = torch.rand(9, 1, 12, 12)
    a = audit(model, x, shifts="0:0", pairs=3, half_pixel=True, batch_size=4, layers=[]).invariance
    b = audit(model, x, shifts="0:0", pairs=3, half_pixel=True, batch_size=1000, layers=[]).invariance
    assert a.half_pixel_consistency == b.half_pixel_consistency and a.half_pixel_pairs == 27


# ----------------------------------------------------------------------------- JSON
def test_json_round_trip_and_old_results_load(tmp_path):
    x, y = nyquist_data(6, striped=2)
    result = audit(NyquistReader(), (x, y), shifts="-1:1", pairs=2, half_pixel=True, layers=[])
    path = result.to_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["invariance"]["gap_half_pixel"] == pytest.approx(2 / 6, abs=0)
    assert "s + ½" in data["invariance"]["half_pixel_consistency_rule"]
    assert AuditResult.from_json(path).to_dict() == result.to_dict()
    for key in NEW_FIELDS:                                   # a result written before issue 13
        del data["invariance"][key]
    old = AuditResult.from_dict(data).invariance
    assert old.gap_integer is None and old.half_pixel_consistency is None and old.half_pixel_pairs == 0
    assert "worst-case gap" not in AuditResult.from_dict(data).table()


@pytest.mark.parametrize("key,value", [("gap_half_pixel", 1.5), ("half_pixel_consistency", -0.1),
                                       ("gap_integer", "3"), ("half_pixel_pairs", 0.5)])
def test_malformed_gap_fields_are_refused(key, value):
    x, y = nyquist_data(4, striped=1)
    data = audit(NyquistReader(), (x, y), shifts="-1:1", pairs=1, half_pixel=True, layers=[]).to_dict()
    data["invariance"][key] = value
    with pytest.raises(ShiftlabError, match=f"invariance.{key}"):
        AuditResult.from_dict(data)


def test_the_table_shows_both_gaps_in_points():
    x, y = nyquist_data(10, striped=3)
    table = audit(NyquistReader(), (x, y), shifts="-1:1", pairs=1, half_pixel=True, layers=[]).table()
    assert "worst-case gap (clean - worst-case accuracy): 0.0 pt over integer shifts, 30.0 pt over " \
           "the half-pixel lattice" in table
    assert "half-pixel consistency 70.00% (10 pairs" in table


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("protocol,extra", [("canvas", []), ("crop", ["--crop", "10x10"])])
def test_cli_half_pixel_needs_a_circular_protocol(capsys, tmp_path, protocol, extra):
    out = tmp_path / "results" / "r.json"
    rc = main(["audit", "--model", "conv-circular", "--data", "synthetic:4:1x12x12", "--shifts=-1:1",
               "--quiet", "--protocol", protocol, *extra, "--half-pixel", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("shiftlab audit: error: half-pixel"), err
    assert "--protocol circular or fractional" in err[0]
    assert not out.parent.exists()


@pytest.mark.parametrize("case,match", [
    ("feature map", "not a vector of class scores: drop --half-pixel"),
    ("lattice too big", "half-pixel lattice: shift of 6 px is not smaller than the 6x6 input"),
])
def test_half_pixel_bad_input_in_the_library(case, match):
    if case == "feature map":
        model, x, shifts = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), torch.rand(2, 1, 8, 8), "-1:1"
    else:                      # a grid shift of 5.75 fits 6x6 inputs; the lattice rounds it to 6
        model, x, shifts = NyquistReader(), torch.rand(2, 1, 6, 6), "5.75,0"
    with pytest.raises(ShiftlabError, match=match):
        audit(model, x, protocol="fractional", shifts=shifts, pairs=0, half_pixel=True)


def test_cli_half_pixel_writes_the_gap(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["audit", "--model", "conv-circular", "--data", "synthetic:4:1x12x12", "--shifts=-1:1",
               "--pairs", "1", "--quiet", "--half-pixel", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    inv = json.loads(out.read_text())["invariance"]
    assert inv["half_pixel_pairs"] == 4 and inv["half_pixel_consistency"] is not None
    assert "half-pixel consistency" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the demo
def test_the_demo_audits_show_every_model_s_gap(tmp_path, capsys):
    from shiftlab.demo import DemoSettings, audit_runs, shipped_run, use_shipped
    runs = (shipped_run("lenet-wolf-maxpool-aps"),)
    use_shipped(tmp_path / "models" / runs[0].name, runs[0].name)
    settings = DemoSettings(audit_images=4, audit_shifts="-1:1", runs=runs, experiments=())
    paths = audit_runs(tmp_path, settings)
    said = capsys.readouterr().out
    circular = AuditResult.from_json(paths["lenet-wolf-maxpool-aps-circular"]).invariance
    canvas = AuditResult.from_json(paths["lenet-wolf-maxpool-aps-canvas"]).invariance
    assert circular.gap_integer is not None and circular.gap_half_pixel is not None
    assert canvas.gap_integer is not None and canvas.gap_half_pixel is None
    assert "half-pixel consistency" in said and said.count(" pt integer") == 2
