"""A name → builder registry, so new models appear in the CLI without touching it.

>>> from shiftlab.models import create_model
>>> create_model("conv-circular").__class__.__name__
'ConvNet'
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from ..errors import ShiftlabError, one_line

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_EXAMPLES: dict[str, tuple[int, ...]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *,
                   example: tuple[int, ...] | None = None):
    """Register ``fn`` under its own name (underscores become dashes). Used bare
    (``@register_model``) or with ``example=(C, H, W)``: a small input the model runs on
    and is tested at, for models that do not take the zoo's usual one-channel 28x28
    images (or ``1 x T`` signals), such as the 3-channel ImageNet ResNets."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__.replace("_", "-")
        _REGISTRY[name] = fn
        if example is not None:
            _EXAMPLES[name] = tuple(int(v) for v in example)
        return fn
    return register if fn is None else register(fn)


def example_shape(name: str) -> tuple[int, ...] | None:
    """The declared small input ``(C, H, W)`` of zoo model ``name``; ``None`` when it takes
    the zoo's usual inputs (one channel, 28x28 images or signals)."""
    return _EXAMPLES.get(name.replace("_", "-"))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_doc(name: str) -> str:
    doc = (_REGISTRY[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def builder_accepts(name: str, argument: str) -> bool:
    """Whether the registered builder ``name`` takes the keyword ``argument``."""
    key = name.replace("_", "-")
    return key in _REGISTRY and argument in inspect.signature(_REGISTRY[key]).parameters


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name (``"conv-circular"`` or ``"conv_circular"``)."""
    key = name.replace("_", "-")
    if key not in _REGISTRY:
        raise ShiftlabError(f"unknown model {name!r}; choose one of {', '.join(list_models())} "
                            "or give path.py:factory")
    try:
        return _REGISTRY[key](**kwargs)
    except (ValueError, TypeError) as err:            # a bad keyword or size, also from torch
        raise ShiftlabError(f"{key}: {one_line(err)}") from None
