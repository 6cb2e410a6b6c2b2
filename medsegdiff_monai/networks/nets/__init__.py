from __future__ import annotations

from .medsegdiff_unet import MEDSEGDIFF_PRESETS, MedSegDiffUNet

__all__ = ["MEDSEGDIFF_PRESETS", "MedSegDiffUNet"]
