"""The README's zoo table says what ``shiftlab models`` says: every stride and receptive field
it gives is the registry's (computed from the layers). It gave ``p4-cnn`` a receptive field of
19; the model's is 31, and a perturbation measures 31."""
import re
from pathlib import Path

import pytest
import torch

from shiftlab.models import create_model, list_models

README = Path(__file__).resolve().parents[1] / "README.md"


def _zoo_rows() -> list[tuple[list[str], list[str], list[str]]]:
    """``(names, strides, fields)`` per row of the README's zoo table (cells split at commas,
    in the order of the names, or one value for all; wildcard rows such as ``*-aps`` and other
    libraries' ``torchvision:NAME`` are left out)."""
    text = README.read_text()
    table = text.split("## The zoo", 1)[1].split("\n\n| model | stride | RF |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or set(cells[0]) <= set("-") or "*" in cells[0] or ":" in cells[0]:
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        def split(cell: str) -> list[str]:             # one value alone holds for every name
            values = [v.strip() for v in cell.split(",")]
            return values * len(names) if len(values) == 1 else values
        rows.append((names, split(cells[1]), split(cells[2])))
    return rows


def test_the_readme_zoo_table_matches_the_registry():
    """Guards every row's stride and receptive field against the model's own geometry (what
    ``shiftlab models`` prints); an empty cell claims nothing."""
    rows = _zoo_rows()
    assert len(rows) >= 10 and any("p4-cnn" in names for names, _, _ in rows)
    for names, strides, fields in rows:
        assert len(strides) == len(fields) == len(names), names
        for name, stride, field in zip(names, strides, fields):
            assert name in list_models(), name
            geometry = create_model(name).geometry
            if stride:
                assert int(stride) == geometry.total_stride, (name, stride, geometry)
            if field:
                assert int(field) == geometry.receptive_field, (name, field, geometry)


def test_p4_cnn_receptive_field_is_31_by_perturbation():
    """Guards the number itself: the input pixels that move the centre unit of ``p4-cnn``'s
    last p4 map span 31 x 31 (kernels 5, 3, 5, 5 with strides 1, 2, 2, 1)."""
    torch.manual_seed(0)
    model = create_model("p4-cnn").double().eval()
    x = torch.rand(1, 1, 61, 61, dtype=torch.float64, requires_grad=True)
    f = model.features(x)
    centre = f.shape[-1] // 2
    f[0, :, :, centre, centre].sum().backward()
    moved = x.grad[0, 0] != 0
    rows, cols = moved.any(1).nonzero().flatten(), moved.any(0).nonzero().flatten()
    assert int(rows[-1] - rows[0]) + 1 == int(cols[-1] - cols[0]) + 1 == 31
    assert model.geometry.receptive_field == 31
