"""APS inside ``torch.func`` transforms: the Lie derivative runs every model under
``torch.func.jvp``; an APS layer used to keep the transform's wrapper of its phases in
``last_phase``, after which ``torch.save`` and ``convert`` of the model raised "Cannot
access storage of TensorWrapper"."""
import io

import torch
from torch import nn

from shiftlab import lie_derivative
from shiftlab.convert import convert
from shiftlab.layers.aps import APS, plain_value
from shiftlab.models import create_model


def _is_wrapped(t) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def test_save_and_convert_work_after_the_lie_derivative_of_an_aps_model():
    """Guards the zoo's APS net and a converted one: after ``lie_derivative`` the model saves,
    deep-copies and converts, and ``last_phase`` holds the plain phases of the last images."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    zoo = create_model("lenet-wolf-maxpool-aps").eval()
    converted, _ = convert(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
                                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                         nn.Linear(4 * 14 * 14, 10)).eval(), "aps")
    for model in (zoo, converted):
        lie_derivative(model, x, batch_size=3)
        layers = [m for m in model.modules() if isinstance(m, APS)]
        assert layers and all(not _is_wrapped(m.last_phase) for m in layers)
        torch.save(model, io.BytesIO())
        torch.save(model.state_dict(), io.BytesIO())
        convert(model, "blurpool")
        convert(model, "circular")
        seen = [m.last_phase.clone() for m in layers]
        with torch.no_grad():
            model(x)
        assert all(torch.equal(a, m.last_phase) for a, m in zip(seen, layers))


def test_the_phase_handed_to_a_shortcut_inside_jvp_is_plain_and_the_same():
    """Guards the residual APS nets: inside ``jvp`` the shortcut gets the plain phase (the same
    values as outside), so their Lie derivative and their saving both work."""
    model = create_model("resnet-small-aps").eval()
    x = torch.rand(2, 1, 32, 32)
    result = lie_derivative(model, x, batch_size=2)
    assert all(v >= 0 for v in result.lee.values())
    torch.save(model, io.BytesIO())

    layer, seen = APS(2), {}

    def f(t):
        out = layer(x * (1 + t))
        seen["phase"] = layer.last_phase
        return out

    torch.func.jvp(f, (torch.zeros(()),), (torch.ones(()),))
    plain = APS(2)
    with torch.no_grad():
        plain(x)
    assert not _is_wrapped(seen["phase"]) and torch.equal(seen["phase"], plain.last_phase)
    t = torch.ones(2)
    assert plain_value(t) is t                              # outside transforms: itself
    got = []
    torch.func.vmap(lambda v: got.append(plain_value(v)) or v)(t)
    assert got == [None]                                    # vmap: no plain per-sample form
