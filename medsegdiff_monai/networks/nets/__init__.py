from __future__ import annotations

from .diffusion_segmenter import DiffusionSegmenter
from .medsegdiff_unet import MEDSEGDIFF_PRESETS, MedSegDiffUNet

__all__ = ["DiffusionSegmenter", "MEDSEGDIFF_PRESETS", "MedSegDiffUNet"]
