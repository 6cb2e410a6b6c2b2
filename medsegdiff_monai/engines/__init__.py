# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Glue for MONAI's engines: prepare-batch callables for diffusion segmentation training, a resumable evaluator."""

from __future__ import annotations

from .prepare_batch import SegDiffusionPrepareBatch
from .resumable_evaluator import ResumableEvaluator

__all__ = ["ResumableEvaluator", "SegDiffusionPrepareBatch"]
