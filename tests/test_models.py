"""The zoo: stated geometry equals what the probes measure and what perturbations show."""
import pytest
import torch

from shiftlab.models import chain_geometry, create_model, list_models
from shiftlab.probe import infer_layers


def _input_size(name):
    return 32 if name.startswith("resnet") else 28


@pytest.mark.parametrize("name", list_models())
def test_stated_total_stride_matches_the_probes(name):
    model = create_model(name).eval()
    size = _input_size(name)
    measured = [i.stride for i in infer_layers(model, torch.zeros(1, 1, size, size))
                if i.stride_source == "measured"]
    assert model.geometry.total_stride == max(measured)


@pytest.mark.parametrize("name", ["lenet-wolf", "lenet-wolf-stride", "lenet-wolf-maxpool"])
def test_receptive_field_by_perturbation(name):
    """Unit (0, 0) of the last conv changes with the input pixels inside its receptive field
    and with none outside it."""
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    path = model.main_path()
    last_conv = max(i for i, m in enumerate(path) if isinstance(m, torch.nn.Conv2d))
    chain = path[:last_conv + 1]
    field = chain_geometry(chain).receptive_field
    # each layer's padding moves the window's start back by padding x its input spacing
    start, jump = 0, 1
    for m in chain:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            pad, stride = m.padding, m.stride
            start -= (pad if isinstance(pad, int) else pad[0]) * jump
            jump *= stride if isinstance(stride, int) else stride[0]
    sub = torch.nn.Sequential(*chain)
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    base = sub(x)[0, :, 0, 0]
    inside, outside = x.clone(), x.clone()
    inside[..., start + field - 1, start + field - 1] += 100.0
    outside[..., start + field, 0] += 100.0
    assert not torch.allclose(sub(inside)[0, :, 0, 0], base)
    assert torch.equal(sub(outside)[0, :, 0, 0], base)


def test_lenet_wolf_head_is_sized_from_the_input():
    assert create_model("lenet-wolf", input_size=38)(torch.zeros(2, 1, 38, 38)).shape == (2, 10)
    assert create_model("lenet-wolf-gap")(torch.zeros(2, 1, 50, 41)).shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        create_model("lenet-wolf", input_size=16)


def test_geometry_of_lenet_wolf():
    g = create_model("lenet-wolf").geometry
    assert (g.total_stride, g.receptive_field) == (2, 18)        # 1 + 4*4, then max-pool 2
