"""Everything an audit can be told: one :class:`AuditConfig`, each field declared once.

A field names, in its ``dataclasses.field`` metadata (an :class:`Option`), its help, its
command-line option, the type that reads it from text and the check that refuses a value
that cannot work. The ``shiftlab audit`` parser is built from these fields and its options
are turned back into a config by the same loop, so an option is written in one place.

:meth:`AuditConfig.check` runs every check once, before any model runs; the config builds
its shift action once (:attr:`AuditConfig.action`). This module imports torch only inside
the checks, so the command line can build its parser without it.

>>> [name for name, _, option in AuditConfig.options()][:4]
['protocol', 'shifts', 'layers', 'pairs']
>>> AuditConfig(pairs=-1).check()
Traceback (most recent call last):
shiftlab.errors.ShiftlabError: pairs per image must be in [0, 10000], got -1
>>> config = AuditConfig(normalize="0.5;0.25").check()
>>> config.normalize, config.check() is config
(((0.5,), (0.25,)), True)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import MAX_SEED, ShiftlabError, check_seed
from .protocols import CROP_OFFSETS, names_with, protocol_names

if TYPE_CHECKING:
    from .actions import ShiftAction

__all__ = ["AuditConfig", "Option", "option", "MAX_PAIRS", "MAX_BATCH", "MAX_INPUT_VALUES",
           "sizes", "int_in"]

#: Most random pairs per image (each pair costs two forward passes per image).
MAX_PAIRS = 10_000
#: Most rows (shifted inputs) in one forward pass.
MAX_BATCH = 1 << 20
#: The most values one ``--input`` (or ``--crop``) may have: 2048x2048 grey, 3x1024x1024 colour.
MAX_INPUT_VALUES = 2 ** 22
#: ``amp``'s names (shiftlab.device.AMP, which needs torch to say their dtypes).
AMP_NAMES = ("bf16", "fp16")


# ----------------------------------------------------------------------------- text -> values
def sizes(text: str) -> tuple[int, ...]:
    """``CxHxW`` (or ``HxW``, ``T``) of positive sizes, at most ``MAX_INPUT_VALUES`` values.

    >>> sizes("3x224x224")
    (3, 224, 224)
    """
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 28x28, got {text!r}")
    count = math.prod(values)
    if count > MAX_INPUT_VALUES:
        raise argparse.ArgumentTypeError(f"{text} is {count:,} values, more than the cap of "
                                         f"{MAX_INPUT_VALUES:,} (e.g. 1x2048x2048 or 3x1024x1024)")
    return values


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """A reader of an integer in ``[low, high]`` (no upper bound if ``high`` is None)."""
    bounds = f"at least {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


# ----------------------------------------------------------------------------- one option
@dataclass(frozen=True)
class Option:
    """How one config field is given on the command line and checked.

    ``flag``: the option (default ``--field-name``); ``""`` keeps the field off the
    command line. ``type`` reads it from text (default: the text itself, or a switch for
    a field whose default is ``False``). ``check`` takes the value and returns it checked
    (possibly parsed), or raises a one-line :class:`ShiftlabError`.
    """

    help: str
    flag: str | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple | None = None
    metavar: str | None = None
    check: Callable[[Any], Any] | None = None

    def arguments(self, name: str, default) -> tuple[list[str], dict]:
        """``argparse.add_argument``'s arguments for the field ``name``."""
        keywords = {"dest": name, "default": default, "help": self.help}
        if default is False and self.type is None:
            keywords["action"] = "store_true"
        else:
            keywords.update({k: v for k, v in (("type", self.type), ("choices", self.choices),
                                                ("metavar", self.metavar)) if v is not None})
        return [self.flag or f"--{name.replace('_', '-')}"], keywords


def option(default, help: str, **how) -> Any:
    """A config field with ``default`` and its :class:`Option` (``help`` and ``how``)."""
    return field(default=default, metadata={"option": Option(help, **how)})


def _within(what: str, low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ShiftlabError(f"{what} must be in [{low}, {high}], got {value}")
        return value
    return check


def _pair_range(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ShiftlabError(f"pair range must be a positive number of pixels, got {value}")
    return value


def _margin(value: int) -> int:
    if value < 0:
        raise ShiftlabError(f"margin must be 0 or more, got {value}")
    return value


def _fill(value: float) -> float:
    if not math.isfinite(value):
        raise ShiftlabError(f"the canvas fill must be a finite number, got {value}")
    return value


def _amp(value: str | None) -> str | None:
    from .device import AMP
    if value is not None and value not in AMP:
        raise ShiftlabError(f"unknown amp {value!r}; use one of {', '.join(AMP)} (or None)")
    return value


def _normalization(value):
    from .data.preprocess import normalization
    return normalization(value)


# ----------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit can be told, checked once (:meth:`check`), with defaults.

    The CLI builds its ``audit`` options from these fields (:meth:`options`);
    :func:`shiftlab.audit` takes a config or keyword overrides of its fields.
    """

    protocol: str = option(
        "circular", "how inputs move: circular (torch.roll), canvas (over a fixed background), "
        "crop (a window over a larger input) or fractional (band-limited, real shifts); "
        "default circular", choices=tuple(protocol_names()))
    shifts: object = option(                           # also a list or a ShiftSet
        None, "shift grid: -4:4, x=-8:8, -1:1:0.25 or 0,0;1,2 (default -4:4; fractional "
        "-2:2:0.5; at most 40,000 shifts). Write --shifts=-4:4")
    layers: object = option(                           # also a list of names
        None, "comma-separated layer names (default: convs, pools, activations, blocks); "
        "see `shiftlab layers`")
    pairs: int = option(5, "random shift pairs per image for consistency", type=int,
                        check=_within("pairs per image", 0, MAX_PAIRS))
    pair_range: float | None = option(                 # [-R, R] under canvas
        None, "consistency shifts in [-R, R)", type=float, check=_pair_range)
    margin: int = option(0, "ignore feature positions this close to a border", type=int,
                         check=_margin)
    fill: float = option(0.0, "canvas background value", type=float, check=_fill)
    crop: tuple[int, ...] | None = option(None, "crop window HxW for --protocol crop", type=sizes)
    crop_offsets: str = option(
        "zhang", "crop consistency windows: offsets in [0, D) as Zhang 2019 (default) or "
        "[0, D]", choices=tuple(CROP_OFFSETS))
    batch_size: int = option(256, "most images in one forward pass", type=int,
                             check=_within("batch size", 1, MAX_BATCH))
    seed: int = option(0, "seeds the random pairs (and, on the command line, the data and "
                          "the model's initial weights)", type=int_in(0, MAX_SEED),
                       check=check_seed)
    sensitivity_layer: str = option("output", "layer for the sensitivity map")  # probe.OUTPUT
    name: str | None = option(None, "the model's name in the result (the CLI's --model)", flag="")
    progress: bool = option(False, "show a progress bar (the CLI's unless --quiet)", flag="")
    normalize: object = option(
        None, "(x - mean) / std per channel after each shift, before the forward: imagenet "
        "or e.g. '0.5,0.5,0.5;0.25,0.25,0.25'", metavar="NAME|MEAN,..;STD,..",
        check=_normalization)                          # also a (mean, std) pair
    amp: str | None = option(
        None, "run the forward passes under autocast in bfloat16 or float16 (the 'exact' "
        "tolerance follows: 10 eps of that dtype)", choices=AMP_NAMES, check=_amp)
    shard: bool = option(
        True, "in a torch.distributed group: audit this rank's shard and merge (every rank "
        "must call); False: all data, alone", flag="")
    half_pixel: bool = option(
        False, "circular/fractional classifiers: also the worst-case gap over the half-pixel "
        "lattice around the grid and half-pixel consistency (output only; about 2-3x the "
        "audit's time)")

    @classmethod
    def options(cls) -> list[tuple[str, Any, Option]]:
        """``(name, default, option)`` of every field given on the command line."""
        return [(f.name, f.default, f.metadata["option"]) for f in dataclasses.fields(cls)
                if f.metadata["option"].flag != ""]

    def check(self) -> "AuditConfig":
        """This config with every field checked, ``normalize`` parsed and the action built,
        before any model runs; one-line errors for options that cannot work. Checking a
        checked config returns it as it is; :func:`dataclasses.replace` makes one to check."""
        if self.__dict__.get("_checked"):
            return self
        checked = dataclasses.replace(self, **{
            f.name: f.metadata["option"].check(getattr(self, f.name))
            for f in dataclasses.fields(self) if f.metadata["option"].check is not None})
        if not checked.action.has_half_pixel and checked.half_pixel:   # the action, built once
            raise ShiftlabError(f"half-pixel shifts are band-limited circular shifts; the "
                                f"'{self.protocol}' protocol has none: use --protocol "
                                f"{' or '.join(names_with('has_half_pixel'))}, or drop "
                                "--half-pixel")
        object.__setattr__(checked, "_checked", True)
        return checked

    @functools.cached_property
    def action(self) -> "ShiftAction":
        """The protocol's shift action (:mod:`shiftlab.actions`), built once per config."""
        from .actions import make_action
        return make_action(self.protocol, fill=self.fill, crop=self.crop,
                           crop_offsets=self.crop_offsets)
