# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Training losses of the mask diffusion."""

from __future__ import annotations

from .mask_diffusion_loss import MaskDiffusionLoss

__all__ = ["MaskDiffusionLoss"]
