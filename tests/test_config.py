"""AuditConfig: each field declares its option once; the audit parser and the config built
from its options follow from the fields; the checks run once and the action is built once."""
import dataclasses

import pytest

from shiftlab import ShiftlabError
from shiftlab.cli import build_parser
from shiftlab.cli.audit import config_from
from shiftlab.config import MAX_BATCH, MAX_PAIRS, AuditConfig


def _audit_parser():
    return build_parser()._subparsers._group_actions[0].choices["audit"]


def test_every_option_of_the_config_is_an_audit_option_as_its_field_declares_it():
    actions = {a.dest: a for a in _audit_parser()._actions}
    for name, default, option in AuditConfig.options():
        action = actions[name]
        assert action.option_strings == [f"--{name.replace('_', '-')}"]
        assert (action.default, action.help) == (default, option.help)
        assert action.choices == option.choices
    fields = {f.name for f in dataclasses.fields(AuditConfig)}
    assert fields - {name for name, _, _ in AuditConfig.options()} == {"name", "progress", "shard"}


def test_the_options_become_the_config_field_by_field():
    argv = ["audit", "--model", "lenet-wolf", "--protocol", "crop", "--crop", "20x20",
            "--shifts=-2:2", "--pairs", "3", "--pair-range", "1.5", "--margin", "1",
            "--fill", "0.5", "--crop-offsets", "inclusive", "--batch-size", "7", "--seed", "9",
            "--sensitivity-layer", "features.0", "--normalize", "0.5;0.25", "--amp", "bf16",
            "--layers", "features.0,features.1", "--quiet"]
    config = config_from(build_parser().parse_args(argv))
    assert config == AuditConfig(
        protocol="crop", crop=(20, 20), shifts="-2:2", pairs=3, pair_range=1.5, margin=1,
        fill=0.5, crop_offsets="inclusive", batch_size=7, seed=9, sensitivity_layer="features.0",
        normalize="0.5;0.25", amp="bf16", layers="features.0,features.1", name="lenet-wolf",
        progress=False)
    assert config_from(build_parser().parse_args(["audit", "--model", "m"])) == AuditConfig(name="m")


def test_the_names_the_config_cannot_import_without_torch_are_the_real_ones():
    from shiftlab.device import AMP
    from shiftlab.probe import OUTPUT
    options = {name: option for name, _, option in AuditConfig.options()}
    assert options["amp"].choices == tuple(AMP)
    assert AuditConfig().sensitivity_layer == OUTPUT


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, f"batch size must be in [1, {MAX_BATCH}], got 0"),
    ({"pairs": MAX_PAIRS + 1}, f"pairs per image must be in [0, {MAX_PAIRS}], got {MAX_PAIRS + 1}"),
    ({"pair_range": float("inf")}, "pair range must be a positive number of pixels, got inf"),
    ({"margin": -2}, "margin must be 0 or more, got -2"),
    ({"fill": float("nan")}, "the canvas fill must be a finite number, got nan"),
    ({"seed": -1}, "seed must be a whole number from 0 to 4294967295, got -1"),
    ({"amp": "int8"}, "unknown amp 'int8'; use one of bf16, fp16 (or None)"),
    ({"normalize": "bogus"}, "unknown normalisation 'bogus'"),
    ({"protocol": "sideways"}, "unknown protocol 'sideways'; choose one of circular, canvas, crop, fractional"),
    ({"protocol": "crop"}, "the 'crop' protocol needs a window size"),
    ({"protocol": "canvas", "half_pixel": True},
     "the 'canvas' protocol has none: use --protocol circular or fractional, or drop --half-pixel"),
])
def test_check_refuses_each_option_that_cannot_work_in_one_line(options, message):
    with pytest.raises(ShiftlabError) as err:
        AuditConfig(**options).check()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_checks_run_once_and_the_action_is_built_once(monkeypatch):
    import shiftlab.actions
    built = []
    make_action = shiftlab.actions.make_action

    def counting(*args, **kwargs):
        built.append(args)
        return make_action(*args, **kwargs)
    monkeypatch.setattr(shiftlab.actions, "make_action", counting)
    config = AuditConfig(protocol="canvas", fill=0.25, normalize="imagenet").check()
    assert config.check() is config and config.action is config.action
    assert config.action.fill == 0.25 and config.normalize[0] == (0.485, 0.456, 0.406)
    assert len(built) == 1
    changed = dataclasses.replace(config, pairs=2)             # a new config is checked anew
    assert changed.check() is not changed and len(built) == 2
