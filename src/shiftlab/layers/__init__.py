"""Layers that fix shift-equivariance: BlurPool (Zhang 2019), APS (Chaman & Dokmanić
2021), alias-free downsampling and activations (Michaeli et al. 2023) and padding that
works on maps of any size. One concept per file; each module has
a functional twin. Every layer is written once for any spatial rank: functions take it
from the input (``N×C×T`` signals or ``N×C×H×W`` images), modules from ``dims=1 | 2``."""
from .alias_free import (AliasFreeActivation, IdealDownsample, PolyAct, alias_free_activation,
                         fourier_upsample, ideal_downsample)
from .aps import APS, APSShortcut, aps_downsample, phase_downsample, polyphase_components
from .blurpool import BlurConv, BlurPool, Downsampled, MaxBlurPool, binomial_filter, blur_pool
from .padding import PADDING_MODES, Pad, Pad1d, Pad2d, pad, pad1d, pad2d, same_padding
from ..shapes import SPATIAL_RANKS, module_rank, spatial_rank

__all__ = ["BlurPool", "blur_pool", "binomial_filter", "MaxBlurPool", "BlurConv", "Downsampled",
           "APS", "APSShortcut", "aps_downsample", "phase_downsample", "polyphase_components",
           "IdealDownsample", "ideal_downsample", "AliasFreeActivation", "alias_free_activation",
           "PolyAct", "fourier_upsample",
           "Pad", "Pad1d", "Pad2d", "pad", "pad1d", "pad2d", "same_padding", "PADDING_MODES",
           "SPATIAL_RANKS", "module_rank", "spatial_rank"]
