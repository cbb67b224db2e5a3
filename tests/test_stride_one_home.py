"""One stride measurement: the probe measures every layer's cumulative stride
(:func:`shiftlab.probe.measure_strides`) and the Lie derivative scales its shifts by the same
measurement. Before, ``lie.py`` repeated the measurement with its own arithmetic."""
import ast
from pathlib import Path

import pytest
import torch

import shiftlab
from shiftlab.lie import _attributed_layers, _measure_calls
from shiftlab.models import create_model
from shiftlab.probe import infer_layers, measure_strides

ROOT = Path(shiftlab.__file__).parent


def test_only_the_probe_measures_strides():
    """Guards the one home: no module but ``probe.py`` names the probe's padding or grows
    an input by it (``lie.py`` did)."""
    users = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")
                   if p.name != "probe.py" and "STRIDE_PROBE_PAD" in p.read_text())
    assert users == []
    lie = ast.parse((ROOT / "lie.py").read_text())
    called = {n.func.id for n in ast.walk(lie) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"measure_strides", "stride_probe_input"} <= called


@pytest.mark.parametrize("name, shape", [("lenet-wolf-maxpool", (1, 28, 28)), ("lenet-wolf", (1, 28, 28)),
                                         ("resnet-small", (1, 32, 32)), ("conv1d-maxpool", (1, 64))])
def test_the_lie_derivative_scales_each_map_by_the_probes_stride(name, shape):
    """Guards identical numbers: every map the Lie derivative shifts moves by ``N / (2 s)``
    pixels per unit with ``s`` the probe's stride of that layer (``None`` where the probe
    finds no spatial stride)."""
    model = create_model(name).eval()
    x = torch.rand(1, *shape)
    infos = {i.name: i for i in infer_layers(model, x)}
    calls = _measure_calls(model, x, _attributed_layers(model, None))
    checked = 0
    for call in calls:
        info = infos.get(call.name)
        if info is None:
            continue
        if info.spatial:
            assert call.pixels_out == tuple(n / 2 / info.stride for n in shape[1:]), call.name
            checked += 1
        elif info.stride_source == "none":
            assert call.pixels_out is None, call.name
    assert checked >= 3


def test_measure_strides_cases():
    """Guards the measurement's cases: growth, up-sampling, global pooling, shrinking, ratio."""
    assert measure_strides((28, 28), (28, 28), (124, 124)) == [1.0, 1.0]
    assert measure_strides((10,), (20,), (212,)) == [0.5]                  # up-sampled by 2
    assert measure_strides((28, 28), (1, 1), (1, 1)) == [float("inf")] * 2
    assert measure_strides((28,), (5,), (4,)) == [None]
    assert measure_strides((30, 28), (10, 7), None) == [3.0, 4.0]
