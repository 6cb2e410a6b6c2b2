from __future__ import annotations

from .attentive_fusion import AttentiveFusion
from .diffusion_blocks import SpatialSelfAttention, TimestepResBlock, UpsampleConv
from .ff_parser import FFParser, resize_spectrum_map, rfft_shape

__all__ = [
    "AttentiveFusion",
    "FFParser",
    "SpatialSelfAttention",
    "TimestepResBlock",
    "UpsampleConv",
    "resize_spectrum_map",
    "rfft_shape",
]
