# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Inferers: the training call with mixed precision, and ensemble diffusion sampling of segmentation masks."""

from __future__ import annotations

from .autocast_diffusion_inferer import AutocastDiffusionInferer
from .diffusion_seg_inferer import DiffusionSegInferer

__all__ = ["AutocastDiffusionInferer", "DiffusionSegInferer"]
