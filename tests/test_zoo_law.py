"""Every registered zoo model goes through the one law: the audit engine's fast
comparison equals the plain law (:func:`shiftlab.law.compare` with ``block_norms``) on
that model's own feature maps, under a circular and a canvas protocol. A model added to
the registry is enrolled here automatically."""
import pytest
import torch

from shiftlab import audit
from shiftlab.actions import make_action
from shiftlab.law import compare, layer_geometries
from shiftlab.models import create_model, example_shape, list_models
from shiftlab.probe import Probe, infer_layers
from shiftlab.shifts import ShiftSet

SHIFTS = {2: "0,0;0,2;2,-1;-4,4", 1: "0;2;-1;4"}


def _example(name, model) -> torch.Tensor:
    """A small batch the model runs on: its declared example shape (the 3-channel
    ResNets: 3x32x32), else the first of the zoo's usual 1-channel sizes that fits."""
    declared = example_shape(name)
    for shape in ([declared] if declared else []) + [(1, s, s) for s in (28, 29, 32)] + [(1, 40, 81), (1, 64)]:
        x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(shape[-1]), dtype=torch.float64)
        try:
            with torch.no_grad():
                model(x)
            return x
        except Exception:
            continue
    pytest.fail("no input size fits this zoo model")


@pytest.mark.parametrize("protocol", ["circular", "canvas"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_through_the_one_law(name, protocol):
    model = create_model(name).double().eval()
    x = _example(name, model).double()
    rank = x.ndim - 2
    result = audit(model, x, protocol=protocol, shifts=SHIFTS[rank], pairs=0)
    action = make_action(protocol)
    shifts = ShiftSet.parse(SHIFTS[rank], rank=rank).tensor()
    infos = infer_layers(model, x[:1], None)
    geometries = layer_geometries(model, x[:1], action, infos, shifts)
    with Probe(model) as probe, torch.no_grad():
        ref = probe(x)
        for k, shift in enumerate(shifts.tolist()):
            moved = probe(action(x, tuple(int(v) for v in shift)))
            for layer in result.layers:
                if layer.comparison == "skipped":
                    continue
                c = compare(action, geometries[layer.name], moved[layer.name], ref[layer.name], shift)
                if c.positions == 0:
                    assert layer.error[k] is None, (layer.name, shift)
                    continue
                want = (c.diff_sq.sum() / c.ref_sq.sum()).sqrt().item() if c.ref_sq.sum() > 0 else 0.0
                assert layer.error[k] == pytest.approx(want, rel=1e-9, abs=1e-12), (layer.name, shift)
    assert all(e == 0.0 for l in result.layers if l.comparison != "skipped"
               for e in [l.error[0]]), "the identity shift must compare exactly"
