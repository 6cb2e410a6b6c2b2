# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Inferers: ensemble diffusion sampling of segmentation masks."""

from __future__ import annotations

from .diffusion_seg_inferer import DiffusionSegInferer

__all__ = ["DiffusionSegInferer"]
