"""Model surgery: make any ``nn.Module`` anti-aliased (BlurPool), adaptively sampled (APS),
circular-padded or alias-free, keeping its trained weights.

``convert`` walks ``model.named_modules()`` and replaces child modules by name:

============  ====================================  ======================================
method        strided Conv1d/2d (stride s)          MaxPool1d/2d / AvgPool1d/2d (stride s)
============  ====================================  ======================================
blurpool      conv at stride 1 → BlurPool(s)        pool at stride 1 → BlurPool(s)
              (:class:`BlurConv`)                   (:class:`MaxBlurPool` for max-pools)
aps           conv at stride 1 → APS(s)             circular 'same' pad → pool at stride 1
                                                    → APS(s)
circular      ``padding_mode="circular"`` on every  pools with padding get a circular
              conv with padding                     :class:`Pad` instead; BlurPool / APS
                                                    blurs / Pads become circular
alias-free    circular conv at stride 1 →           circular 'same' pad → pool at stride 1
              :class:`IdealDownsample` (s)          → :class:`IdealDownsample` (s); a
                                                    max-pool's max becomes an average
                                                    (``activation="polynomial"``)
============  ====================================  ======================================

**alias-free** (Michaeli et al. 2023, :mod:`shiftlab.layers.alias_free`) also makes every
padded conv circular and every element-wise activation module (ReLU, GELU, …) an
:class:`AliasFreeActivation`: with ``activation="polynomial"`` (default) the paper's
degree-2 :class:`PolyAct` on the ×2 grid, which makes a circular net with a global-average
head *exactly* invariant to sub-pixel circular shifts but changes its function (train it);
with ``activation="keep"`` the model's own nonlinearity on the ×2 grid and max-pools kept
as maxes, approximately alias-free and close to the trained function. It knows convs,
pools, element-wise activations, BatchNorm (exact in ``eval()``), Linear, Dropout,
Identity, Flatten, global average pools and shiftlab's :class:`Pad`; any other layer —
a global max, a norm over positions, an unknown module, a stride-1 max-pool — is refused
with its path, since the result could not be alias-free. Like strided calls, functional
nonlinearities in a ``forward`` (``F.relu(x)``) are invisible to it and stay as they are.

Signals (``Conv1d``, ``MaxPool1d``, ``AvgPool1d``) and images convert alike, each
layer to the fix of its own rank. The stride-1 twin of a conv has the same weights, so ``blurpool`` with ``filter_size=1``
computes exactly the original function. Output sizes are kept (a stride-1 op followed by
a stride-``s`` downsampler of ``ceil`` size has the strided op's ``floor`` size), except
for pools under ``aps``, whose output is ``ceil(H/s)``: on odd sizes that is one more than
before, and a Linear head sized from the map no longer fits. Pass ``input_shape`` to have
that checked here, with a one-line error naming the layer.

**Residual blocks** (``aps``): a module with a child named ``shortcut`` or ``downsample``
that downsamples is a residual block; its shortcut's strided op gets an
:class:`APSShortcut` tied to the APS of the first strided op of the main branch, so both
paths keep the same phase.

**What is exactly invariant.** APS gives exact invariance to integer circular shifts only
when every conv is circular-padded (apply ``circular`` first, or start from a circular
net), every map that APS splits has sides divisible by its stride, the head is
shift-invariant (global pooling), and the largest-norm component is unique (ties have
measure zero for real-valued data). With a flatten + Linear head the final map is only
circularly shifted, so the logits change. The ``*-aps`` zoo models are built that way.

**Refused**, with the module's path and type: strided convs with dilation, pools with
``ceil_mode``, dilated or index-returning max-pools, unequal strides along H and W, and
downsamplers it cannot rebuild (``LPPool1d``/``2d``, ``FractionalMaxPool2d``, ``PixelUnshuffle``).
Strided *functional* calls in a ``forward`` (``F.max_pool2d(x, 2)``) are invisible to it
and stay as they are; adaptive pools are left alone.

>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2))
>>> fixed, replaced = convert(net, "blurpool")
>>> replaced, type(fixed[1]).__name__
(['1'], 'MaxBlurPool')
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
from torch import nn

from .errors import ShiftlabError, one_line
from .layers import (APS, AliasFreeActivation, APSShortcut, BlurConv, BlurPool, Downsampled,
                     IdealDownsample, MaxBlurPool, Pad, PolyAct, same_padding)
from .layers.alias_free import check_nyquist
from .layers.aps import check_norm
from .layers.blurpool import at_stride_one, check_filter_size, equal_stride
from .layers.padding import check_padding_mode
from .shapes import module_rank, per_axis

METHODS = ("blurpool", "aps", "circular", "alias-free")
#: how alias-free conversion treats nonlinearities (see the module doc)
ACTIVATIONS = ("polynomial", "keep")
SHORTCUT_NAMES = ("shortcut", "downsample")
_UNSUPPORTED = (nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d, nn.PixelUnshuffle)
_CONVS, _MAX_POOLS = (nn.Conv1d, nn.Conv2d), (nn.MaxPool1d, nn.MaxPool2d)
_POOLS = _MAX_POOLS + (nn.AvgPool1d, nn.AvgPool2d)
MAX_INPUT_VALUES = 1 << 24    # C·H·W of the size check's one input (64 MB in float32)


def _where(name: str, module: nn.Module) -> str:
    return f"{name or 'the model'} ({type(module).__name__})"


def _stride(name: str, m: nn.Module) -> int | None:
    """The stride of a strided conv/pool to convert, ``None`` for others; refuses what
    cannot be converted."""
    if isinstance(m, _UNSUPPORTED):
        raise ShiftlabError(f"cannot convert {_where(name, m)}: no anti-aliased form of it; "
                            "replace it with a strided conv or pool first")
    if not isinstance(m, _CONVS + _POOLS):
        return None
    stride = equal_stride(m, f"cannot convert {_where(name, m)}")
    if stride == 1:
        return None
    d = module_rank(m)
    if isinstance(m, _CONVS) and set(per_axis(m.dilation, d)) != {1}:
        raise ShiftlabError(f"cannot convert {_where(name, m)}: a strided conv with dilation "
                            f"{m.dilation} has no stride-1 twin here")
    if isinstance(m, _POOLS) and m.ceil_mode:
        raise ShiftlabError(f"cannot convert {_where(name, m)}: ceil_mode=True changes the "
                            "output size; use ceil_mode=False")
    if isinstance(m, _MAX_POOLS) and (set(per_axis(m.dilation, d)) != {1} or m.return_indices):
        raise ShiftlabError(f"cannot convert {_where(name, m)}: dilated or index-returning "
                            "max-pools are not supported")
    return stride


def _blurred(m: nn.Module, stride: int, size: int, padding: str) -> nn.Module:
    """The BlurPool form of a strided conv or pool."""
    d = module_rank(m)
    if isinstance(m, _CONVS):
        return BlurConv(m, size, padding)
    if isinstance(m, _MAX_POOLS):
        return MaxBlurPool(m.kernel_size, stride, size, padding, m.padding, dims=d)
    return Downsampled(at_stride_one(m), BlurPool(None, size, stride, padding, dims=d))


def _sampled(m: nn.Module, down: nn.Module) -> Downsampled:
    """The APS form: a conv at stride 1, or a pool at stride 1 with circular 'same' padding."""
    op = at_stride_one(m)
    if isinstance(m, _CONVS):
        return Downsampled(op, down)
    pads = tuple(p for k in per_axis(m.kernel_size, module_rank(m)) for p in same_padding(k))
    op.padding = 0
    return Downsampled(op, down, Pad(pads, "circular"))


def _under(path: str, prefix: str) -> bool:
    return prefix == "" or path.startswith(prefix + ".")


def _shortcut_ties(model: nn.Module, strided: dict[str, int]) -> dict[str, str]:
    """Map each strided op inside a residual shortcut to the main branch's first one."""
    ties: dict[str, str] = {}
    for block_name, block in model.named_modules():
        for child_name, _ in block.named_children():
            if child_name not in SHORTCUT_NAMES:
                continue
            prefix = f"{block_name}.{child_name}" if block_name else child_name
            short = [p for p in strided if p == prefix or _under(p, prefix)]
            main = [p for p in strided if _under(p, block_name) and p not in short]
            if not short:
                continue
            if not main:
                raise ShiftlabError(f"{block_name or 'the model'}: its {child_name} downsamples but "
                                    "the main branch has no strided conv or pool to take the phase from")
            for p in short:
                if strided[p] != strided[main[0]]:
                    raise ShiftlabError(f"{p} has stride {strided[p]} but the main branch's "
                                        f"{main[0]} has {strided[main[0]]}; they must match")
                ties[p] = main[0]
    return ties


def _replace(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    if not path:
        return new
    parent, _, last = path.rpartition(".")
    setattr(root.get_submodule(parent), last, new)
    return root


def _make_circular(m: nn.Module) -> nn.Module | None:
    """The circular form of ``m`` (possibly ``m`` itself, changed), or ``None`` if unchanged."""
    if isinstance(m, _CONVS):
        padded = m.padding == "same" or (m.padding != "valid" and any(per_axis(m.padding, module_rank(m))))
        if padded and m.padding_mode != "circular":
            m.padding_mode = "circular"
            return m
    elif isinstance(m, _POOLS):
        pads = per_axis(m.padding, module_rank(m))
        if any(pads):
            pool = copy.deepcopy(m)
            pool.padding = 0
            return nn.Sequential(OrderedDict(pad=Pad(tuple(p for v in pads for p in (v, v)), "circular"),
                                             pool=pool))
    elif isinstance(m, (BlurPool, Pad)):
        attr = "padding" if isinstance(m, BlurPool) else "mode"
        if getattr(m, attr) != "circular":
            setattr(m, attr, "circular")
            return m
    return None


# ----------------------------------------------------------------------------- alias-free
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU,
              nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh,
              nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid)
#: layers that act on every position alike and linearly (in eval mode): alias-free as they are
_TRANSPARENT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, nn.Identity, nn.Flatten, nn.Dropout,
                nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_GLOBAL_AVERAGE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_WHY_NOT = (
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d), "a max over positions is not invariant to "
     "sub-pixel shifts; use a global average pool"),
    ((nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm),
     "its statistics over positions are not alias-free (the paper uses an alias-free "
     "LayerNorm); use BatchNorm"),
    ((APS, APSShortcut, BlurPool, MaxBlurPool), "it was converted already; convert the original model"),
)


def _refuse(name: str, m: nn.Module, why: str):
    raise ShiftlabError(f"cannot make {_where(name, m)} alias-free: {why}")


def _model_rank(model: nn.Module) -> int:
    ranks = {r for m in model.modules() if (r := module_rank(m)) is not None}
    if len(ranks) > 1:
        raise ShiftlabError("cannot make the model alias-free: it mixes 1-D and 2-D layers")
    return ranks.pop() if ranks else 2


def _alias_free_layer(name: str, m: nn.Module, dims: int, activation: str,
                      nyquist: str) -> nn.Module | None:
    """The alias-free form of the leaf ``m`` (possibly ``m`` changed), ``None`` if it stays."""
    if isinstance(m, _POINTWISE):
        fn = PolyAct() if activation == "polynomial" else m
        return AliasFreeActivation(fn, nyquist=nyquist, dims=dims)
    if isinstance(m, _CONVS + _POOLS):
        stride = _stride(name, m)
        if stride is None:
            if isinstance(m, _MAX_POOLS):
                _refuse(name, m, "a max-pool at stride 1 is a nonlinearity without an "
                                 "alias-free form; remove it or use an activation")
            return _make_circular(m)
        if isinstance(m, _MAX_POOLS) and activation == "polynomial":   # its linear twin
            m = nn.AvgPool2d(m.kernel_size, stride) if dims == 2 else nn.AvgPool1d(m.kernel_size, stride)
        new = _sampled(m, IdealDownsample(stride, dims=module_rank(m)))
        _make_circular(new.op)
        return new
    if isinstance(m, _GLOBAL_AVERAGE):
        if set(per_axis(m.output_size, module_rank(m))) != {1}:
            _refuse(name, m, f"an adaptive pool to {m.output_size} averages uneven windows; "
                             "only global pooling (output size 1) is shift-invariant")
        return None
    if isinstance(m, Pad):
        return _make_circular(m)
    if isinstance(m, _TRANSPARENT):
        return None
    for kinds, why in _WHY_NOT:
        if isinstance(m, kinds):
            _refuse(name, m, why)
    _refuse(name, m, "shiftlab does not know this layer; replace it with a conv, a pool or an "
                     "element-wise activation, or make it alias-free yourself")


def _alias_free(model: nn.Module, activation: str, nyquist: str) -> tuple[nn.Module, list[str]]:
    dims = _model_rank(model)
    replaced, skip = [], []
    for name, m in list(model.named_modules()):
        if any(_under(name, p) for p in skip):
            continue
        if isinstance(m, Downsampled) and isinstance(m.down, (BlurPool, APS, APSShortcut)):
            _refuse(name, m, "it was converted already; convert the original model")
        if isinstance(m, (AliasFreeActivation, IdealDownsample)):
            skip.append(name)
            continue
        if isinstance(m, _CONTAINERS) or (any(True for _ in m.children())
                                          and not type(m).__module__.startswith("torch.")):
            continue                      # a block of the user's or shiftlab's: convert its children
        new = _alias_free_layer(name, m, dims, activation, nyquist)
        if new is not None:
            model = _replace(model, name, new) if new is not m else model
            replaced.append(name)
            skip.append(name)
    return model, replaced


def _output_sizes(model: nn.Module, paths: list[str], example: torch.Tensor):
    """Output shape of each module in ``paths`` for ``example``, and the error, if any."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def record(path):
        def hook(_module, _inputs, out):
            shapes.setdefault(path, tuple(out.shape[1:]))     # returns None: output unchanged
        return hook

    hooks = [modules[p].register_forward_hook(record(p)) for p in paths]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
        error = None
    except Exception as err:                      # report torch's complaint on one line
        error = one_line(err)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes, error


def check_input_shape(input_shape) -> tuple[int, ...]:
    """``(C, T)`` or ``(C, H, W)`` of positive sizes, small enough to run the model on once."""
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ShiftlabError(f"input_shape must be (C, T) or (C, H, W) of positive sizes, got {input_shape!r}")
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise ShiftlabError(f"an input of {'x'.join(map(str, shape))} is too large to check the "
                            f"converted model on (at most {MAX_INPUT_VALUES:,} values); give a smaller one")
    return shape


def _check_sizes(before: nn.Module, after: nn.Module, replaced: list[str], input_shape) -> None:
    shape = check_input_shape(input_shape)
    param = next(iter(before.parameters()), None)
    example = torch.zeros(1, *shape, dtype=param.dtype if param is not None else torch.float32)
    text = "x".join(map(str, shape))
    old, error = _output_sizes(before, replaced, example)
    if error:
        raise ShiftlabError(f"the model cannot run on {text} inputs: {error}")
    new, error = _output_sizes(after, replaced, example)
    modules = dict(before.named_modules())
    for p in replaced:
        if p in old and p in new and old[p] != new[p]:
            raise ShiftlabError(
                f"converting changes the output of {_where(p, modules[p])} from "
                f"{'x'.join(map(str, old[p]))} to {'x'.join(map(str, new[p]))} on {text} inputs, so "
                "layers sized from it (a Linear head) no longer fit; use a global-pooling head or "
                "sizes divisible by the strides")
    if error:
        raise ShiftlabError(f"the converted model cannot run on {text} inputs: {error}")


def convert(model: nn.Module, method: str, *, filter_size: int | None = None,
            padding: str | None = None, norm: str = "l2", input_shape=None,
            inplace: bool = False, activation: str = "polynomial",
            nyquist: str = "zero") -> tuple[nn.Module, list[str]]:
    """Return ``(converted model, paths of the modules replaced or changed)``.

    Args:
        model: any ``nn.Module``; not modified unless ``inplace``.
        method: ``"blurpool"``, ``"aps"``, ``"circular"`` or ``"alias-free"`` (see the module doc).
        filter_size: binomial filter size 1..7; default 3 for ``blurpool``, none (no
            pre-blur) for ``aps``.
        padding: the blur's padding; default ``reflect`` for ``blurpool`` (Zhang),
            ``circular`` for the APS pre-blur.
        norm: the APS norm, ``l2`` | ``l1`` | ``linf``.
        input_shape: ``(C, T)`` or ``(C, H, W)``; if given, check that no replaced layer changes its
            output size and the converted model runs.
        activation: ``alias-free`` only: ``"polynomial"`` (the paper's, exact) or ``"keep"``
            (the model's own nonlinearities on the ×2 grid, approximate).
        nyquist: ``alias-free`` only: ``"zero"`` or ``"split"`` (the paper's upsampling), see
            :mod:`shiftlab.layers.alias_free`.
    """
    if method not in METHODS:
        raise ShiftlabError(f"unknown conversion method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise ShiftlabError(f"convert needs an nn.Module, got {type(model).__name__}")
    if activation not in ACTIVATIONS:
        raise ShiftlabError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    check_nyquist(nyquist)
    if method == "alias-free" and (filter_size is not None or padding is not None):
        raise ShiftlabError("filter_size and padding set the binomial blur of blurpool and aps; "
                            "alias-free uses the ideal low-pass filter, so leave them out")
    original = model
    if not inplace:
        model = copy.deepcopy(model)
    elif input_shape is not None:
        original = copy.deepcopy(model)
    size = filter_size if filter_size is not None else (3 if method == "blurpool" else None)
    blur_padding = check_padding_mode(padding or ("reflect" if method == "blurpool" else "circular"))
    if size is not None:
        check_filter_size(size)
    check_norm(norm)
    replaced: list[str] = []
    if method == "alias-free":
        model, replaced = _alias_free(model, activation, nyquist)
    elif method == "circular":
        for name, m in list(model.named_modules()):
            new = _make_circular(m)
            if new is not None:
                model = _replace(model, name, new) if new is not m else model
                replaced.append(name)
    else:
        strided = {n: s for n, m in model.named_modules() if (s := _stride(n, m)) is not None}
        ties = _shortcut_ties(model, strided) if method == "aps" else {}
        modules = dict(model.named_modules())
        made: dict[str, APS] = {}
        for name in sorted(strided, key=lambda n: n in ties):        # main branches first
            m, s = modules[name], strided[name]
            if method == "blurpool":
                new = _blurred(m, s, size, blur_padding)
            else:
                down = APSShortcut(made[ties[name]]) if name in ties else \
                    made.setdefault(name, APS(s, norm, size, blur_padding, dims=module_rank(m)))
                new = _sampled(m, down)
            model = _replace(model, name, new)
        replaced = list(strided)
    if input_shape is not None:
        _check_sizes(original, model, replaced, input_shape)
    return model, replaced
