# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Dictionary transforms for BraTS / MSD Task01 data, configurable from a MONAI bundle by ``_target_``.

Every constructor argument is a JSON value (strings, numbers, lists, booleans). The per-item keys a datalist of
:mod:`medsegdiff_monai.data` carries (``case_id``, ``label_convention``, ``modality_order``) drive the
transforms, so one pipeline reads BraTS and MSD items alike.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..data.conventions import MODALITIES, DataError, item_value, parse_modality_order
from ..data.nifti import case_file_problems
from .array import CheckFinite, LabelToRegions, RegionsToLabel, ReorderModalities

__all__ = [
    "CheckInputFilesd",
    "CheckInputFilesD",
    "CheckInputFilesDict",
    "CheckFinited",
    "CheckFiniteD",
    "CheckFiniteDict",
    "ReorderModalitiesd",
    "ReorderModalitiesD",
    "ReorderModalitiesDict",
    "LabelToRegionsd",
    "LabelToRegionsD",
    "LabelToRegionsDict",
    "RegionsToLabeld",
    "RegionsToLabelD",
    "RegionsToLabelDict",
    "SliceFgBgToIndicesd",
    "SliceFgBgToIndicesD",
    "SliceFgBgToIndicesDict",
]


def case_name(data: Mapping[Hashable, Any], case_key: str | None, key: Hashable | None = None) -> str | None:
    """The case name for messages: ``data[case_key]``, else the file name recorded in ``data[key]``'s metadata."""
    if case_key and case_key in data and data[case_key] is not None:
        return str(item_value(data[case_key]))
    if key is not None and key in data:
        value = data[key]
        if isinstance(value, MetaTensor):
            fname = value.meta.get("filename_or_obj")
            if fname:
                return str(fname)
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, os.PathLike)):
            return os.fspath(value[0])
    return None


def _is_path_value(value: Any) -> bool:
    if isinstance(value, (str, os.PathLike)):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, (str, os.PathLike)) for v in value)


class CheckInputFilesd(MapTransform):
    """Check a case's files before ``LoadImaged`` reads them; raise one error naming the case, files and problems.

    Reads only NIfTI headers (and the gzip trailer): files must exist and be complete NIfTI images, the modality
    files must share one 3D shape and affine (what ``LoadImaged`` needs to stack them as channels), the channel
    count must match the item's ``modality_order``, and every other key's file (the label) must have the image's
    shape and affine. MONAI's own messages for these cases ("cannot find a suitable reader", "spatial_shape of all
    images should be the same") name neither the case nor the files. Values that are already loaded (arrays) are
    skipped. Files are only read.

    Args:
        keys: the image key first (a file or a list of modality files), then e.g. the label key.
        case_key: item key of the case name used in messages.
        modality_order_key: item key of the modality order; its length is the expected channel count.
        num_channels: the expected channel count when the item has no modality order (None: not checked).
        allow_missing_keys: skip keys that are absent (e.g. unlabeled cases).
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), case_key: str | None = "case_id",
                 modality_order_key: str | None = "modality_order", num_channels: int | None = None,
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.case_key = case_key
        self.modality_order_key = modality_order_key
        self.num_channels = num_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.key_iterator(d) if _is_path_value(d[k])]
        if not keys:
            return d
        image_key = self.keys[0]
        if image_key not in keys:
            return d  # already loaded or absent: nothing left to check from the headers
        num_channels = self.num_channels
        if self.modality_order_key and d.get(self.modality_order_key):
            num_channels = len(parse_modality_order(d[self.modality_order_key]))
        problems = case_file_problems(d[image_key], None, num_channels=num_channels)
        if not problems:
            for k in keys[1:]:
                problems += [p for p in case_file_problems(d[image_key], d[k]) if p not in problems]
        if problems:
            case = case_name(d, self.case_key, image_key)
            raise DataError(f"case {case}: " + " ".join(problems))
        return d


class CheckFinited(MapTransform):
    """Raise, naming the case and channels, when a loaded image holds NaN or infinite values.

    Args:
        keys: image keys to check (after ``LoadImaged``).
        case_key: item key of the case name used in messages.
        channel_names: names of the channels for the message (default t1, t1ce, t2, flair).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "image", case_key: str | None = "case_id",
                 channel_names: str | Sequence[str] | None = MODALITIES, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.case_key = case_key
        self.checker = CheckFinite(channel_names)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], case=case_name(d, self.case_key, key), name=str(key))
        return d


class ReorderModalitiesd(MapTransform):
    """Bring the channels of a channel-first image to the order t1, t1ce, t2, flair (or any ``target_order``).

    The source order comes from the item (``data[order_key]``, written by the datalist builders: ``"flair,t1,
    t1ce,t2"`` for MSD 4D images, giving channels ``[1, 2, 3, 0]``), else from ``source_order``. Use after
    ``EnsureChannelFirstd``. MONAI metadata (affine, applied operations) is kept, so ``Invertd`` still works.

    Args:
        keys: image keys.
        order_key: item key holding the source modality order (comma-separated names); None to ignore items.
        source_order: the source order when the item has none (e.g. ``"flair,t1,t1ce,t2"``).
        target_order: the output order; a subset selects channels.
        case_key: item key of the case name used in messages.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "image", order_key: str | None = "modality_order",
                 source_order: str | Sequence[str] | None = None, target_order: str | Sequence[str] = MODALITIES,
                 case_key: str | None = "case_id", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.order_key = order_key
        self.reorder = ReorderModalities(source_order, target_order)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        order = d.get(self.order_key) if self.order_key else None
        for key in self.key_iterator(d):
            d[key] = self.reorder(d[key], source_order=order, case=case_name(d, self.case_key, key))
        return d


class _ConventionConverterd(MapTransform):
    """Applies ``self.converter(value, convention=..., case=...)`` to each key, the convention read from the item."""

    converter: Any
    convention_key: str | None
    case_key: str | None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        conv = d.get(self.convention_key) if self.convention_key else None
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], convention=conv, case=case_name(d, self.case_key, key))
        return d


class LabelToRegionsd(_ConventionConverterd):
    """Convert label maps to binary region masks: ``"wt"`` (1 channel) or ``"wt_tc_et"`` (WT, TC, ET).

    The label convention comes from the item (``data[convention_key]``: ``"brats"`` 0/1/2/4 or ``"msd"``
    0/1/2/3), else from ``convention``. Values outside the convention raise an error naming the case and the
    values. See :class:`~medsegdiff_monai.transforms.LabelToRegions` for why MONAI's
    ``ConvertToMultiChannelBasedOnBratsClassesd`` is not used. Output masks keep the label's MONAI metadata.

    Args:
        keys: label keys.
        regions: ``"wt"``, ``"wt_tc_et"`` or a list of ``"wt"``/``"tc"``/``"et"``.
        convention: the convention when the item has none (None: items must say).
        convention_key: item key holding the convention; None to ignore items.
        case_key: item key of the case name used in messages.
        dtype: output dtype.
        check_values: reject values outside the convention.
        allow_missing_keys: skip absent keys (unlabeled cases).
    """

    def __init__(self, keys: KeysCollection = "label", regions: str | Sequence[str] = "wt",
                 convention: str | None = None, convention_key: str | None = "label_convention",
                 case_key: str | None = "case_id", dtype: str | torch.dtype = "float32", check_values: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToRegions(regions, convention, dtype, check_values)
        self.convention_key = convention_key
        self.case_key = case_key


class RegionsToLabeld(_ConventionConverterd):
    """Convert region masks or probabilities (WT, or WT, TC, ET) to one label map, e.g. to save predictions.

    The inverse of :class:`LabelToRegionsd`: with ``"wt_tc_et"`` ET gets the convention's enhancing label, TC minus
    ET the core label and WT minus TC the edema label (BraTS 4/1/2, MSD 3/2/1, BraTS 2023 3/1/2); with ``"wt"``
    the output is a binary whole-tumour mask (1 inside). Channels are thresholded first, and non-nested predictions
    are resolved by the hierarchy ET in TC in WT. See :class:`~medsegdiff_monai.transforms.RegionsToLabel`.

    The convention comes from the item (``data[convention_key]``, so predictions are written in the convention of
    the dataset they were made for), else from ``convention``. Set ``convention_key=None`` to always write
    ``convention`` (e.g. ``"brats"`` for a BraTS submission). Outputs keep the input's MONAI metadata, so
    ``SaveImaged`` writes them with the original affine.

    Args:
        keys: prediction keys, shape (R, H, W[, D]).
        regions: ``"wt"`` or ``"wt_tc_et"`` (or a list naming WT, TC and ET once each: their channel order).
        convention: the convention when the item has none (None: items must say; not needed for ``"wt"``).
        convention_key: item key holding the convention; None to ignore items.
        threshold: a channel value ``>= threshold`` is inside the region.
        dtype: output dtype.
        case_key: item key of the case name used in messages.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "pred", regions: str | Sequence[str] = "wt",
                 convention: str | None = None, convention_key: str | None = "label_convention",
                 threshold: float = 0.5, dtype: str | torch.dtype = "uint8", case_key: str | None = "case_id",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToLabel(regions, convention, threshold, dtype)
        self.convention_key = convention_key
        self.case_key = case_key


class SliceFgBgToIndicesd(MapTransform):
    """Per-slice foreground/background indices for ``RandCropByPosNegLabeld`` with ``spatial_size=(-1, -1, 1)``.

    Writes ``data[key + fg_postfix]`` with one flat voxel index per slice that holds any foreground (in any
    channel) and ``data[key + bg_postfix]`` with one per slice without (or per slice, if ``bg_all_slices``), so
    ``RandCropByPosNegLabeld(..., fg_indices_key=..., bg_indices_key=...)`` draws "positive" samples uniformly
    from the tumour slices and "negative" ones from the others.

    Written for this package because MONAI's ``FgBgToIndicesd``/``map_binary_to_indices`` treat a multi-channel
    label as one-hot and drop its channel 0, which here is the whole tumour (so with WT, TC, ET masks edema-only
    slices would count as background), and because they store one index per voxel (tens of MB per BraTS volume,
    held by ``CacheDataset`` for every case) where one per slice is enough when whole slices are cropped.

    Args:
        keys: label keys (channel-first masks, any channel > 0 is foreground).
        fg_postfix: postfix of the foreground-indices key.
        bg_postfix: postfix of the background-indices key.
        slice_axis: the spatial axis slices are taken along (2 = the last, axial for BraTS/MSD).
        bg_all_slices: negatives from every slice (True) or only from slices without foreground (False).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "label", fg_postfix: str = "_fg_indices", bg_postfix: str = "_bg_indices",
                 slice_axis: int = 2, bg_all_slices: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fg_postfix = fg_postfix
        self.bg_postfix = bg_postfix
        self.slice_axis = int(slice_axis)
        self.bg_all_slices = bg_all_slices

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            lab = lab.as_tensor() if isinstance(lab, MetaTensor) else torch.as_tensor(np.asarray(lab))
            spatial = tuple(int(s) for s in lab.shape[1:])
            axis = self.slice_axis % len(spatial)
            fg_mask = (lab > 0).any(0)
            other = tuple(i for i in range(len(spatial)) if i != axis)
            has_fg = fg_mask.any(dim=other) if other else fg_mask
            centre = [s // 2 for s in spatial]
            coords = np.array([centre] * spatial[axis], dtype=np.int64)
            coords[:, axis] = np.arange(spatial[axis])
            flat = np.ravel_multi_index(tuple(coords.T), spatial)
            has_fg = has_fg.cpu().numpy().astype(bool)
            d[f"{key}{self.fg_postfix}"] = flat[has_fg]
            d[f"{key}{self.bg_postfix}"] = flat if self.bg_all_slices else flat[~has_fg]
        return d


CheckInputFilesD = CheckInputFilesDict = CheckInputFilesd
CheckFiniteD = CheckFiniteDict = CheckFinited
ReorderModalitiesD = ReorderModalitiesDict = ReorderModalitiesd
LabelToRegionsD = LabelToRegionsDict = LabelToRegionsd
RegionsToLabelD = RegionsToLabelDict = RegionsToLabeld
SliceFgBgToIndicesD = SliceFgBgToIndicesDict = SliceFgBgToIndicesd
