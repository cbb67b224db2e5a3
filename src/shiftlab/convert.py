"""Model surgery: make any ``nn.Module`` anti-aliased (BlurPool), adaptively sampled (APS)
or circular-padded, keeping its trained weights.

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
============  ====================================  ======================================

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
from .layers import APS, APSShortcut, BlurConv, BlurPool, Downsampled, MaxBlurPool, Pad, same_padding
from .layers.aps import check_norm
from .layers.blurpool import at_stride_one, check_filter_size, equal_stride
from .layers.padding import check_padding_mode
from .shapes import module_rank, per_axis

METHODS = ("blurpool", "aps", "circular")
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
            inplace: bool = False) -> tuple[nn.Module, list[str]]:
    """Return ``(converted model, paths of the modules replaced or changed)``.

    Args:
        model: any ``nn.Module``; not modified unless ``inplace``.
        method: ``"blurpool"``, ``"aps"`` or ``"circular"`` (see the module doc).
        filter_size: binomial filter size 1..7; default 3 for ``blurpool``, none (no
            pre-blur) for ``aps``.
        padding: the blur's padding; default ``reflect`` for ``blurpool`` (Zhang),
            ``circular`` for the APS pre-blur.
        norm: the APS norm, ``l2`` | ``l1`` | ``linf``.
        input_shape: ``(C, T)`` or ``(C, H, W)``; if given, check that no replaced layer changes its
            output size and the converted model runs.
    """
    if method not in METHODS:
        raise ShiftlabError(f"unknown conversion method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise ShiftlabError(f"convert needs an nn.Module, got {type(model).__name__}")
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
    if method == "circular":
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
