"""Layers that fix shift-equivariance: BlurPool (Zhang 2019), APS (Chaman & Dokmanić
2021) and padding that works on maps of any size. One concept per file; each module has
a functional twin."""
from .aps import APS, APSShortcut, aps_downsample, phase_downsample, polyphase_components
from .blurpool import BlurConv, BlurPool, Downsampled, MaxBlurPool, binomial_filter, blur_pool
from .padding import PADDING_MODES, Pad2d, pad2d, same_padding

__all__ = ["BlurPool", "blur_pool", "binomial_filter", "MaxBlurPool", "BlurConv", "Downsampled",
           "APS", "APSShortcut", "aps_downsample", "phase_downsample", "polyphase_components",
           "Pad2d", "pad2d", "same_padding", "PADDING_MODES"]
