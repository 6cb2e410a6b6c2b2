# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Glue for MONAI's engines: prepare-batch callables for diffusion segmentation training."""

from __future__ import annotations

from .prepare_batch import SegDiffusionPrepareBatch

__all__ = ["SegDiffusionPrepareBatch"]
