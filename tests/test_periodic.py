"""Every circular shift from S^d passes: equal to brute force over all N^d shifts, and refused
for nets that are not periodic."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from shiftlab.actions import circular_shift
from shiftlab.errors import ShiftlabError
from shiftlab.periodic import all_shifts


def _strided_circular_net(dims: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool1d
    net = nn.Sequential(conv(1, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                         conv(6, 6, 3, stride=2, padding=1, padding_mode="circular"), nn.ReLU(),
                         conv(6, 4, 3, stride=2, padding=1, padding_mode="circular"),
                         pool(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    with torch.no_grad():                         # a head sharp enough that shifts flip classes
        net[-1].weight.mul_(300)
        net[-1].bias.zero_()
    return net


def _brute_force(model, x, y):
    """Predictions at every circular shift, the statistics from their definitions."""
    size = x.shape[2:]
    with torch.no_grad():
        preds = torch.stack([model(circular_shift(x, d)).argmax(1)
                             for d in itertools.product(*(range(n) for n in size))], 1)
    agree = (preds[:, :, None] == preds[:, None, :]).double().mean((1, 2))
    right = preds == y[:, None]
    return {"consistency": float(agree.mean()), "clean": float(right[:, 0].double().mean()),
            "mean": float(right.double().mean()), "worst": float(right.all(1).double().mean())}


@pytest.mark.parametrize("dims, size", [(2, (8, 8)), (2, (8, 12)), (1, (24,))])
def test_all_shifts_equals_brute_force(dims, size):
    model = _strided_circular_net(dims)
    torch.manual_seed(1)
    x = torch.randn(12, 1, *size, dtype=torch.float64)
    with torch.no_grad():                         # right at shift 0 for half of the inputs
        y = torch.where(torch.arange(12) % 2 == 0, model(x).argmax(1), torch.randint(0, 3, (12,)))
    fast = all_shifts(model, (x, y), batch_size=5)
    slow = _brute_force(model, x, y)
    assert fast.stride == 4 and fast.passes == 4 ** dims
    assert fast.shifts == int(torch.tensor(size).prod()) and fast.images == 12
    assert fast.consistency == pytest.approx(slow["consistency"], abs=1e-12)
    assert fast.clean_accuracy == pytest.approx(slow["clean"], abs=1e-12)
    assert fast.mean_accuracy == pytest.approx(slow["mean"], abs=1e-12)
    assert fast.worst_case_accuracy == pytest.approx(slow["worst"], abs=1e-12)
    assert fast.consistency < 1 and fast.worst_case_accuracy <= fast.clean_accuracy
    assert fast.to_dict()["speedup"] == fast.shifts / fast.passes


def test_unlabelled_data_gives_consistency_only():
    result = all_shifts(_strided_circular_net(), torch.rand(3, 1, 8, 8, dtype=torch.float64))
    assert result.clean_accuracy is None and result.worst_case_accuracy is None
    assert 0 < result.consistency <= 1


def test_an_aps_net_is_consistent_at_every_shift():
    from shiftlab.models import create_model
    model = create_model("lenet-wolf-maxpool-aps").eval()
    torch.manual_seed(2)
    result = all_shifts(model, torch.rand(4, 1, 28, 28))
    assert result.consistency == 1.0 and result.passes == result.stride ** 2 < result.shifts


@pytest.mark.parametrize("model, size, words", [
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
     (8, 8), "outputs repeat every"),                               # zero padding
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten(),
                   nn.Linear(128, 3)), (8, 8), "outputs repeat every"),   # a flatten head
    (_strided_circular_net().float(), (10, 10), "multiples of the net's total stride 4"),
])
def test_nets_that_are_not_periodic_are_refused_in_one_line(model, size, words):
    torch.manual_seed(3)
    with pytest.raises(ShiftlabError, match=words) as err:
        all_shifts(model, torch.rand(2, 1, *size))
    assert "\n" not in str(err.value)


def test_the_cli_counts_every_circular_shift_and_refuses_other_protocols(tmp_path, capsys):
    from shiftlab.cli import main
    from shiftlab.result import AuditResult
    out = tmp_path / "r.json"
    assert main(["audit", "--model", "lenet-wolf-maxpool-aps", "--data", "synthetic:3", "--shifts=0:1",
                 "--all-shifts", "--quiet", "--out", str(out)]) == 0
    assert "every circular shift (784 per input from 16 passes, stride 4)" in capsys.readouterr().out
    back = AuditResult.from_json(out)
    assert back.all_shifts.consistency == 1.0 and back.all_shifts.clean_accuracy is None
    for argv, words in [(["--protocol", "canvas"], "use it with --protocol circular"),
                        (["--model", "lenet-wolf"], "outputs repeat every")]:
        rc = main(["audit", "--model", "lenet-wolf-maxpool-aps", "--data", "synthetic:2",
                   "--shifts=0:1", "--all-shifts", *argv, "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err.splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], err
        assert not (tmp_path / "x.json").exists()
