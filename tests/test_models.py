"""The zoo: stated geometry equals what the probes measure and what perturbations show."""
import pytest
import torch

from shiftlab.models import chain_geometry, create_model, example_shape, list_models
from shiftlab.probe import infer_layers


def _example_shape(name):
    """The declared example input, else the zoo's usual one-channel sizes."""
    return example_shape(name) or ((1, 64) if name.startswith("conv1d") else
                                   (1, 32, 32) if name.startswith("resnet") else (1, 28, 28))


@pytest.mark.parametrize("name", list_models())
def test_stated_total_stride_matches_the_probes(name):
    model = create_model(name).eval()
    example = torch.zeros(1, *_example_shape(name))
    measured = [i.stride for i in infer_layers(model, example) if i.stride_source == "measured"]
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


def test_bad_builder_arguments_are_one_line_shiftlab_errors():
    from shiftlab.errors import ShiftlabError
    from shiftlab.models.lenet import LeNetWolf
    with pytest.raises(ShiftlabError, match=r"^lenet-wolf: input_size 17 is too small for this net; "
                                            r"images need at least 18x18 pixels$"):
        create_model("lenet-wolf", input_size=17)
    create_model("lenet-wolf", input_size=18)                           # the smallest that fits
    with pytest.raises(ShiftlabError, match=r"^lenet-wolf-maxpool: TypeError: .*'size'"):
        create_model("lenet-wolf-maxpool", size=28)                     # an unknown keyword
    with pytest.raises(ShiftlabError, match="head must be one of linear, gap, got 'gap-linear'"):
        LeNetWolf(head="gap-linear")
    with pytest.raises(ShiftlabError, match="padding must be one of valid, zeros, circular"):
        LeNetWolf(padding="reflect")


def test_sliding_lenet_equals_lenet_on_its_window_and_its_scores_are_equivariant():
    """lenet-wolf-sliding loads lenet-wolf's weights; on 28x28 it is lenet-wolf; on a 38x38
    canvas its window scores move one step per 2-pixel shift, exactly, and alias at odd ones."""
    from shiftlab.data import load_data, place_on_canvas
    from shiftlab.errors import ShiftlabError
    from shiftlab.actions import canvas_shift
    torch.manual_seed(0)
    base = create_model("lenet-wolf").double().eval()
    sliding = create_model("lenet-wolf-sliding", input_size=38).double().eval()
    sliding.load_state_dict(base.state_dict())
    x, _ = load_data("digits")
    x = place_on_canvas(x[:8], (28, 28)).double()
    assert torch.allclose(sliding(x), base(x), atol=1e-12, rtol=0)  # one window
    canvas = place_on_canvas(x, (38, 38))
    ref = sliding.window_scores(canvas)                               # N x 10 x 6 x 6
    assert ref.shape[-2:] == (6, 6)
    for dy, dx in [(2, 0), (0, -4), (4, 4), (-2, 2)]:
        moved = sliding.window_scores(canvas_shift(canvas, torch.tensor([[dy, dx]] * len(x))))
        sy, sx = dy // 2, dx // 2
        a = moved[..., max(sy, 0):6 + min(sy, 0), max(sx, 0):6 + min(sx, 0)]
        b = ref[..., max(-sy, 0):6 + min(-sy, 0), max(-sx, 0):6 + min(-sx, 0)]
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    odd = sliding.window_scores(canvas_shift(canvas, torch.tensor([[0, 1]] * len(x))))
    no_step = (odd[..., 1:] - ref[..., 1:]).abs().max()
    one_step = (odd[..., 1:] - ref[..., :-1]).abs().max()
    assert min(no_step, one_step) > 1e-4              # no window alignment fits: aliasing
    with pytest.raises(ShiftlabError, match="smaller than the 28x28 window"):
        sliding(torch.zeros(1, 1, 20, 20, dtype=torch.float64))
