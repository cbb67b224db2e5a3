"""shiftlab: measure, see and fix shift-equivariance and shift-invariance of CNNs.

The flow: ``data`` → ``actions`` (exact shift actions on N×C×T and N×C×H×W) → ``probe``
(named layer outputs) → ``law`` (the one comparison) and ``metrics`` (streaming) →
``audit`` (the engine) → ``result`` (JSON) → ``report`` and the CLI.

The public names below are imported on first use (PEP 562), so ``import shiftlab`` and the
command line start without importing torch; that keeps Ctrl-C during start-up one line.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "audit": "audit", "AuditResult": "result", "LayerResult": "result",
    "InvarianceResult": "result", "Provenance": "result", "ShiftlabError": "errors",
    "AuditConfig": "config", "Probe": "probe", "default_layers": "probe",
    "infer_layers": "probe", "ShiftSet": "shifts",
    "make_action": "actions", "circular_shift": "actions", "canvas_shift": "actions",
    "crop_shift": "actions", "fractional_shift": "actions", "rot90": "actions",
    "flip": "actions", "compare": "law", "LayerGeometry": "law",
    "convert": "convert", "BlurPool": "layers", "blur_pool": "layers",
    "MaxBlurPool": "layers", "BlurConv": "layers", "APS": "layers", "APSShortcut": "layers",
    "aps_downsample": "layers", "Pad": "layers", "Pad1d": "layers", "Pad2d": "layers",
    "IdealDownsample": "layers", "AliasFreeActivation": "layers", "PolyAct": "layers",
    "lie_derivative": "lie", "all_shifts": "periodic", "export_onnx": "export",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import a public name (or a submodule) the first time it is asked for."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """``shiftlab.audit`` and ``shiftlab.convert`` stay the functions after their modules
    (of the same names) are imported; importing a submodule would otherwise bind the
    module over the function."""

    def __setattr__(self, name: str, value) -> None:
        if name in ("audit", "convert") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
