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


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name (underscores become dashes)."""
    _REGISTRY[fn.__name__.replace("_", "-")] = fn
    return fn


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
