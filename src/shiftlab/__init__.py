"""shiftlab: measure, see and fix shift-equivariance and shift-invariance of CNNs.

The flow: ``transforms`` (exact shift actions) → ``probe`` (named layer outputs) →
``metrics`` (streaming) → ``audit`` (the engine) → ``result`` (JSON) → CLI.
"""
__version__ = "0.1.0"

from .audit import audit
from .convert import convert
from .errors import ShiftlabError
from .layers import APS, APSShortcut, BlurConv, BlurPool, MaxBlurPool, Pad2d, aps_downsample, blur_pool
from .probe import Probe, default_layers, infer_layers
from .result import AuditResult, InvarianceResult, LayerResult, Provenance
from .shifts import ShiftSet
from .transforms import (canvas_shift, circular_shift, crop_shift, flip, fractional_shift,
                         make_action, rot90)

__all__ = [
    "audit", "AuditResult", "LayerResult", "InvarianceResult", "Provenance", "ShiftlabError",
    "Probe", "default_layers", "infer_layers", "ShiftSet", "make_action",
    "circular_shift", "canvas_shift", "crop_shift", "fractional_shift", "rot90", "flip",
    "convert", "BlurPool", "blur_pool", "MaxBlurPool", "BlurConv", "APS", "APSShortcut",
    "aps_downsample", "Pad2d",
]
