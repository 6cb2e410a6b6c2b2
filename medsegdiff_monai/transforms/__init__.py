# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""BraTS / MSD data transforms: file checks, modality order, label regions, slice sampling, ready pipelines."""

from __future__ import annotations

from .array import CheckFinite, LabelToRegions, ReorderModalities, resolve_dtype
from .dictionary import (
    CheckFiniteD,
    CheckFiniteDict,
    CheckFinited,
    CheckInputFilesD,
    CheckInputFilesDict,
    CheckInputFilesd,
    LabelToRegionsD,
    LabelToRegionsDict,
    LabelToRegionsd,
    ReorderModalitiesD,
    ReorderModalitiesDict,
    ReorderModalitiesd,
    SliceFgBgToIndicesD,
    SliceFgBgToIndicesDict,
    SliceFgBgToIndicesd,
    case_name,
)
from .pipelines import get_eval_transforms, get_inference_transforms, get_train_transforms

__all__ = [
    "CheckFinite",
    "LabelToRegions",
    "ReorderModalities",
    "resolve_dtype",
    "CheckFinited",
    "CheckFiniteD",
    "CheckFiniteDict",
    "CheckInputFilesd",
    "CheckInputFilesD",
    "CheckInputFilesDict",
    "LabelToRegionsd",
    "LabelToRegionsD",
    "LabelToRegionsDict",
    "ReorderModalitiesd",
    "ReorderModalitiesD",
    "ReorderModalitiesDict",
    "SliceFgBgToIndicesd",
    "SliceFgBgToIndicesD",
    "SliceFgBgToIndicesDict",
    "case_name",
    "get_eval_transforms",
    "get_inference_transforms",
    "get_train_transforms",
]
