"""Capture the outputs of named submodules of any ``nn.Module`` in one forward pass.

The default probe set is every convolution, pooling, activation and linear layer, every
user-defined block (a module of your own class that has children, such as a residual
block), and the model's output, named ``"output"``. A module called twice in one forward
pass (a shared ``ReLU``) is recorded twice, as ``name`` and ``name#2``.

Each layer's *cumulative stride* is measured, not read from the module: the probe runs
one example at two sizes that differ by ``STRIDE_PROBE_PAD`` pixels and divides that
difference by how much the layer's output grew. A layer whose output does not grow
(after global pooling, a linear layer) has no stride: it should be *invariant*.

>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.MaxPool2d(2), torch.nn.Flatten())
>>> info = infer_layers(net, torch.zeros(1, 1, 8, 8))
>>> [(i.name, i.stride) for i in info]
[('0', 1), ('1', 1), ('2', 2), ('output', None)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from .actions import spatial_rank
from .errors import ShiftlabError, one_line, run_model

#: Width added to the example input to measure strides; divisible by 1, 2, 3, 4, 6, 8, …, 32, 48, 96.
STRIDE_PROBE_PAD = 96
OUTPUT = "output"

_PROBED_TYPES = (
    nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
    nn.MaxPool1d, nn.AvgPool1d, nn.LPPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d,
    nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Tanh, nn.Sigmoid, nn.Softplus,
)


def _is_user_block(module: nn.Module) -> bool:
    return not type(module).__module__.startswith("torch.") and any(True for _ in module.children())


def default_layers(model: nn.Module) -> list[str]:
    """Names of the modules probed by default (see the module doc), in definition order."""
    return [name for name, m in model.named_modules()
            if name and (isinstance(m, _PROBED_TYPES) or _is_user_block(m))]


def resolve_layers(model: nn.Module, layers: "Iterable[str] | str | None") -> list[str]:
    """Validate user layer names. ``None`` = the default set, ``"all"`` = every submodule."""
    if layers is None:
        return default_layers(model)
    known = dict(model.named_modules())
    if layers == "all":
        return [n for n in known if n]
    if isinstance(layers, str):
        layers = [s for s in layers.split(",") if s]
    names = list(layers)
    for name in names:
        if name != OUTPUT and name not in known:
            sample = ", ".join(n for n in list(known)[1:9])
            raise ShiftlabError(f"unknown layer {name!r}; the model has e.g. {sample} "
                                "(see `shiftlab layers`)")
    return [n for n in names if n != OUTPUT]


class Probe:
    """Forward hooks that record the named submodules' outputs.

    Use as a context manager; calling it runs the model and returns
    ``{layer name: output tensor, ..., "output": model output}`` in call order. With a
    ``sink``, each layer's output is handed to ``sink(name, output)`` the moment its module
    returns (while it is still in cache, before a later in-place op changes it) and only
    ``"output"`` is returned.
    """

    def __init__(self, model: nn.Module, layers: "Iterable[str] | str | None" = None,
                 clone: Iterable[str] = ()):
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.clone = set(clone)        # outputs a later in-place op overwrites: copy them
        self.sink = None               # sink(name, output): hand each map over as it is made
        self._handles: list = []
        self._record: dict[str, Tensor] = {}
        self._calls: dict[str, int] = {}
        self.versions: dict[str, int] = {}   # version counters at record time

    def __enter__(self) -> "Probe":
        modules = dict(self.model.named_modules())
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, Tensor):
                k = self._calls[name] = self._calls.get(name, 0) + 1   # called again: name#2
                key = name if k == 1 else f"{name}#{k}"
                if self.sink is not None:              # used now, before any in-place op
                    self.sink(key, output)
                    return
                self._record[key] = output.clone() if key in self.clone else output
                if not output.is_inference():
                    self.versions[key] = output._version
        return hook

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        self._record, self._calls = {}, {}
        out = self.model(x)
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            out = out[0]
        elif isinstance(out, dict) and out:
            out = next(iter(out.values()))
        if not isinstance(out, Tensor):
            raise ShiftlabError(f"the model returned {type(out).__name__}; shiftlab needs a tensor")
        record, self._record = self._record, {}
        record[OUTPUT] = out
        return record


@dataclass(frozen=True)
class LayerInfo:
    """What the probe learned about one recorded layer."""

    name: str
    kind: str                     # the module's class name
    shape: tuple[int, ...]        # output shape of one sample
    stride: int | None            # cumulative stride; None: not spatial (invariance layer)
    stride_source: str            # "measured", "ratio", "none" or "unknown"
    overwritten: bool = False     # a later in-place op (ReLU(inplace=True)) changes it

    @property
    def spatial(self) -> bool:
        """Does the map keep the input's spatial axes (with a known stride)?"""
        return self.stride is not None and self.stride_source in ("measured", "ratio")


def stride_probe_input(example: Tensor) -> Tensor:
    """``example`` grown by ``STRIDE_PROBE_PAD`` zeros at the end of every spatial axis: the
    second of the two inputs the strides are measured from."""
    return nn.functional.pad(example, (0, STRIDE_PROBE_PAD) * spatial_rank(example))


def measure_strides(size_in: "tuple[int, ...]", small: "tuple[int, ...]",
                    large: "tuple[int, ...] | None") -> "list[float | None]":
    """Per axis, the cumulative stride of a map of spatial size ``small`` (at an input of
    ``size_in``) that has size ``large`` at :func:`stride_probe_input`'s larger input: the
    one stride measurement of shiftlab (:func:`infer_layers`, :mod:`shiftlab.lie`).

    ``STRIDE_PROBE_PAD / growth`` where the map grows (a fraction for an up-sampled map);
    ``inf`` where it does not grow (global pooling: the map does not move with the input);
    None where it shrinks (unknown); ``size_in / small`` per axis when ``large`` is None (the
    map was not reached at the larger size, e.g. behind a head sized for one input).

    >>> measure_strides((28, 28), (14, 14), (62, 62)), measure_strides((28,), (7,), None)
    ([2.0, 2.0], [4.0])
    """
    if large is None:
        return [i / o for i, o in zip(size_in, small)]
    out: list[float | None] = []
    for o, g in zip(small, large):
        grown = g - o
        out.append(STRIDE_PROBE_PAD / grown if grown > 0 else math.inf if grown == 0 else None)
    return out


def _forward_lenient(probe: Probe, x: Tensor) -> dict[str, Tensor]:
    """Forward ``x``; if a later layer rejects the size, keep what was recorded up to it."""
    try:
        return probe(x)
    except Exception:                                   # a head sized for one input size
        return dict(probe._record)


def infer_layers(model: nn.Module, example: Tensor,
                 layers: "Iterable[str] | str | None" = None) -> list[LayerInfo]:
    """Run ``example`` (one sample) and describe every recorded layer, stride measured.

    Raises :class:`ShiftlabError` if the model cannot run on ``example``.
    """
    example = example[:1]
    modules = dict(model.named_modules())
    # no_grad, not inference_mode: version counters reveal outputs modified in place
    with Probe(model, layers) as probe, torch.no_grad():
        base = run_model(probe, example)
        overwritten = {n for n, out in base.items()
                       if n in probe.versions and out._version != probe.versions[n]}
        if overwritten:                                     # record true copies of those
            probe.clone = overwritten
            base = probe(example)
        big = _forward_lenient(probe, stride_probe_input(example))
    size_in = example.shape[2:]
    infos = []
    for name, out in base.items():
        kind = type(model).__name__ if name == OUTPUT else type(modules[name.split("#")[0]]).__name__
        shape = tuple(out.shape[1:])
        stride, source = None, "none"
        if out.ndim == example.ndim:
            grown = big.get(name)
            reached = grown is not None and grown.ndim == out.ndim
            strides = measure_strides(tuple(size_in), tuple(out.shape[2:]),
                                      tuple(grown.shape[2:]) if reached else None)
            one = strides[0] if len(set(strides)) == 1 else None     # the same on every axis
            if one == math.inf:
                stride, source = None, "none"           # global pooling: not spatial
            elif one is not None and one == int(one) and one >= 1:
                stride, source = int(one), "measured" if reached else "ratio"
            else:
                source = "unknown"
        infos.append(LayerInfo(name, kind, shape, stride, source, name in overwritten))
    return infos


def wrap_reach(model: nn.Module, example: Tensor, layers: Iterable[str],
               shifts: "Iterable[tuple[int, int]]", chunk: int = 32) -> dict[str, dict[tuple[int, int], Tensor]]:
    """Which feature positions a circular shift's wrapped pixels reach, measured.

    A circular shift by ``d > 0`` along an axis wraps the input's last ``d`` rows (or
    columns) into its first ``d``; ``d < 0`` wraps the first ``|d|`` into the last. For
    every ``(axis, d)`` in ``shifts`` (axis 0 = rows, 1 = columns) this fills exactly that
    wrapped band of ``example`` with NaN and runs the model: NaN spreads through every
    convolution, pooling and activation that reads it, so a feature position is NaN iff its
    receptive field covers a wrapped pixel (whatever the weights and values). The same
    bands are what a canvas shift fills (``d``) and loses (``-d``): the law measures both.

    Returns ``{layer: {(axis, d): (size along axis,) bool}}``, true where reached, for
    the 4-D outputs of ``layers`` and of the model (``"output"``). Raises :class:`ShiftlabError` if the model cannot run
    on NaN inputs.
    """
    keys = list(dict.fromkeys((int(a), int(d)) for a, d in shifts if int(d) != 0))
    example = example[:1]
    rank = spatial_rank(example)
    size = example.shape[2:]
    reach: dict[str, dict[tuple[int, int], Tensor]] = {}
    with Probe(model, layers) as probe, torch.no_grad():
        for lo in range(0, len(keys), chunk):
            part = keys[lo:lo + chunk]
            x = example.repeat(len(part), *([1] * (example.ndim - 1)))
            for row, (axis, d) in enumerate(part):
                band = slice(0, d) if d > 0 else slice(size[axis] + d, size[axis])
                x[(row, slice(None)) + (slice(None),) * axis + (band,)] = float("nan")
            try:
                outs = probe(x)
            except Exception as err:
                raise ShiftlabError(f"cannot trace receptive fields (the model fails on NaN "
                                    f"inputs: {one_line(err)})") from None
            for name, out in outs.items():
                if out.ndim != example.ndim:
                    continue
                nan = torch.isnan(out).any(dim=1)                  # (n, *spatial)
                for row, (axis, d) in enumerate(part):
                    others = tuple(a for a in range(rank) if a != axis)
                    along = nan[row].any(dim=others) if others else nan[row]
                    reach.setdefault(name, {})[(axis, d)] = along.cpu()
    return reach
