# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""BraTS / MSD and 2D image data transforms: file checks, modality order, label regions, mask channels, slice
sampling, PNG overlays, pipelines, post-processing."""

from __future__ import annotations

from .array import CheckFinite, LabelToRegions, RegionsToLabel, ReorderModalities, resolve_dtype
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
    RegionsToLabelD,
    RegionsToLabelDict,
    RegionsToLabeld,
    ReorderModalitiesD,
    ReorderModalitiesDict,
    ReorderModalitiesd,
    SliceFgBgToIndicesD,
    SliceFgBgToIndicesDict,
    SliceFgBgToIndicesd,
    case_name,
)
from .image2d import (
    ChannelsToMaskD,
    ChannelsToMaskd,
    ChannelsToMaskDict,
    CheckImagePairD,
    CheckImagePaird,
    CheckImagePairDict,
    MaskToChannelsD,
    MaskToChannelsd,
    MaskToChannelsDict,
    mask_channel_count,
)
from .overlay import SaveOverlayD, SaveOverlayDict, SaveOverlayd, overlay_file_stem, select_slices
from .post import SaveCased, SaveSegmentationd, ThresholdToMaskd
from .pipelines import get_eval_transforms, get_inference_transforms, get_train_transforms

__all__ = [
    "CheckFinite",
    "LabelToRegions",
    "RegionsToLabel",
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
    "RegionsToLabeld",
    "RegionsToLabelD",
    "RegionsToLabelDict",
    "ReorderModalitiesd",
    "ReorderModalitiesD",
    "ReorderModalitiesDict",
    "SliceFgBgToIndicesd",
    "SliceFgBgToIndicesD",
    "SliceFgBgToIndicesDict",
    "CheckImagePaird",
    "CheckImagePairD",
    "CheckImagePairDict",
    "MaskToChannelsd",
    "MaskToChannelsD",
    "MaskToChannelsDict",
    "ChannelsToMaskd",
    "ChannelsToMaskD",
    "ChannelsToMaskDict",
    "mask_channel_count",
    "SaveOverlayd",
    "SaveOverlayD",
    "SaveOverlayDict",
    "select_slices",
    "overlay_file_stem",
    "case_name",
    "SaveCased",
    "SaveSegmentationd",
    "ThresholdToMaskd",
    "get_eval_transforms",
    "get_inference_transforms",
    "get_train_transforms",
]
