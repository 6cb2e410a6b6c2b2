# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Array transforms for BraTS data that MONAI does not provide (or provides for another convention).

- :class:`ReorderModalities`: MONAI has no transform that selects/permutes channels by name. MSD Task01 stores
  FLAIR, T1w, t1gd, T2w; this package's channel order is t1, t1ce, t2, flair.
- :class:`LabelToRegions`: MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` returns the channels in the
  order TC, WT, ET, knows only the BraTS label values (ET = 4 or 3, with 1 and 2 fixed, so it cannot read MSD's
  1 = edema, 2 = non-enhancing), has no single-channel whole-tumour mode (the paper's task) and silently ignores
  values outside the convention. This one gives WT, TC, ET (the BraTS scoring order) or WT alone, for the BraTS,
  MSD and BraTS 2023 conventions, and rejects unexpected values.
- :class:`RegionsToLabel`: the inverse of :class:`LabelToRegions`, for writing predictions as label maps in a
  convention (BraTS submissions: 0/1/2/4). MONAI has no transform that builds a label map from nested regions.
- :class:`CheckFinite`: raises on NaN/inf intensities, which otherwise turn the loss into NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import (
    TransformBackends,
    convert_to_dst_type,
    convert_to_tensor,
    get_equivalent_dtype,
)

from ..data.conventions import (
    MODALITIES,
    DataError,
    allowed_label_values,
    item_value,
    parse_modality_order,
    region_label_values,
    region_names,
)

__all__ = ["ReorderModalities", "LabelToRegions", "RegionsToLabel", "CheckFinite", "resolve_dtype"]


def resolve_dtype(dtype: str | torch.dtype | np.dtype | type | None) -> torch.dtype | None:
    """Turn a JSON-friendly dtype spelling (``"float32"``, ``"torch.float32"``, ``"uint8"``) into a torch dtype.

    Numpy spellings and types go through ``monai.utils.get_equivalent_dtype``; ``"torch.<name>"`` and torch-only
    names that numpy lacks (``"bfloat16"``) are read from ``torch``.

    Raises:
        ValueError: on a name that is neither a torch nor a numpy dtype.
    """
    if isinstance(dtype, str):
        value = getattr(torch, dtype.split(".")[-1], None)
        if isinstance(value, torch.dtype):
            return value
    try:
        return get_equivalent_dtype(dtype, torch.Tensor)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}.") from None


def _in_values(x: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    # a chain of comparisons: several times faster than torch.isin for a handful of values on large volumes
    out = x == values[0]
    for v in values[1:]:
        out |= x == v
    return out


def _prefix(case: str | None) -> str:
    return f"case {case}: " if case else ""


class ReorderModalities(Transform):
    """Reorder (or select) the channels of a channel-first image from one modality order to another.

    Args:
        source_order: the modality of each input channel, e.g. ``"flair,t1,t1ce,t2"`` (MSD) or a list of names;
            spellings such as ``T1w``/``t1gd``/``FLAIR`` are understood. None means "given at call time".
        target_order: the output channels; defaults to t1, t1ce, t2, flair. A subset selects channels.

    Example: ``ReorderModalities("flair,t1,t1ce,t2")(img)`` returns ``img[[1, 2, 3, 0]]``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, source_order: str | Sequence[str] | None = None,
                 target_order: str | Sequence[str] = MODALITIES) -> None:
        self.source_order = parse_modality_order(source_order) if source_order is not None else None
        self.target_order = parse_modality_order(target_order)

    def indices(self, source_order: str | Sequence[str] | None = None, case: str | None = None) -> list[int]:
        """The input channel index of every output channel."""
        src = parse_modality_order(source_order) if source_order is not None else self.source_order
        if src is None:
            raise DataError(f"{_prefix(case)}the modality order of the image is unknown; set source_order or give "
                            "the item a 'modality_order' (e.g. \"t1,t1ce,t2,flair\").")
        missing = [m for m in self.target_order if m not in src]
        if missing:
            raise DataError(f"{_prefix(case)}image has modalities {list(src)}, missing {missing}.")
        return [src.index(m) for m in self.target_order]

    def __call__(self, img: NdarrayOrTensor, source_order: str | Sequence[str] | None = None,
                 case: str | None = None) -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image, shape (C, spatial...), C = number of source modalities.
            source_order: overrides the constructor's ``source_order``.
            case: a case name for error messages.
        """
        idx = self.indices(source_order, case)
        n_src = len(parse_modality_order(source_order)) if source_order is not None else len(self.source_order)
        if img.shape[0] != n_src:
            raise DataError(f"{_prefix(case)}image has {img.shape[0]} channel(s) but its modality order lists "
                            f"{n_src}.")
        if idx == list(range(img.shape[0])):
            return img
        if isinstance(img, torch.Tensor):
            return torch.index_select(img, 0, torch.as_tensor(idx, device=img.device))
        return img[idx]


class LabelToRegions(Transform):
    """Convert a BraTS/MSD label map to binary region masks: WT, or WT, TC, ET (channels in that order).

    Regions by convention:

    - ``"brats"`` (0, 1 necrotic core, 2 edema, 4 enhancing): WT = {1, 2, 4}, TC = {1, 4}, ET = {4}
    - ``"msd"`` (0, 1 edema, 2 non-enhancing, 3 enhancing): WT = {1, 2, 3}, TC = {2, 3}, ET = {3}
    - ``"brats2023"`` (0, 1, 2, 3 enhancing): WT = {1, 2, 3}, TC = {1, 3}, ET = {3}

    Args:
        regions: ``"wt"`` (1 channel, the paper's binary task), ``"wt_tc_et"`` (3 channels) or a list of region
            names such as ``["wt", "et"]``.
        convention: the label convention, or None to give it at call time.
        dtype: output dtype (masks hold 0 and 1).
        check_values: raise a :class:`~medsegdiff_monai.data.DataError` when the label holds values outside the
            convention (e.g. a BraTS label read as MSD, or an interpolated mask).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: str | Sequence[str] = "wt", convention: str | None = "brats",
                 dtype: str | torch.dtype = "float32", check_values: bool = True) -> None:
        self.regions = region_names(regions)
        self.convention = convention
        if convention is not None:
            allowed_label_values(convention)  # validates the name
        self.dtype = resolve_dtype(dtype)
        self.check_values = check_values

    def __call__(self, img: NdarrayOrTensor, convention: str | None = None, case: str | None = None) -> NdarrayOrTensor:
        """
        Args:
            img: label map, shape (1, H, W[, D]) or (H, W[, D]).
            convention: overrides the constructor's convention.
            case: a case name for error messages.

        Returns:
            masks of shape (R, H, W[, D]), R = number of regions, same type (and MONAI metadata) as ``img``.
        """
        conv = item_value(convention) if convention is not None else self.convention
        if conv is None:
            raise DataError(f"{_prefix(case)}the label convention is unknown; set convention or give the item a "
                            "'label_convention' ('brats' or 'msd').")
        conv = str(conv).lower()
        lab = convert_to_tensor(img, track_meta=False)
        if lab.ndim >= 3 and lab.shape[0] == 1:
            lab = lab[0]
        elif lab.ndim == 4:
            raise DataError(f"{_prefix(case)}expected a single-channel label map, got shape {tuple(img.shape)}.")
        if self.check_values:
            valid = _in_values(lab, allowed_label_values(conv))
            if not bool(valid.all()):
                bad = torch.unique(lab[~valid])
                shown = ", ".join(f"{v:g}" for v in bad[:10].tolist()) + (" ..." if bad.numel() > 10 else "")
                raise DataError(
                    f"{_prefix(case)}label values {shown} are not in the {conv!r} convention "
                    f"{list(allowed_label_values(conv))}."
                )
        out = torch.stack([_in_values(lab, region_label_values(conv, r)) for r in self.regions]).to(self.dtype)
        return convert_to_dst_type(out, img, dtype=self.dtype)[0]


class RegionsToLabel(Transform):
    """Convert region masks (WT, or WT, TC, ET) back to a label map in a convention; the inverse of LabelToRegions.

    Use it to write predictions the way the BraTS challenges expect them (one label map, 0/1/2/4). The input may
    hold probabilities: every channel is thresholded first (``>= threshold``, as ``monai.transforms.AsDiscrete``).

    - ``regions="wt_tc_et"`` (3 channels, in the order given by ``regions``): the regions are nested, ET inside
      TC inside WT. A prediction that is not nested is resolved by that hierarchy: a voxel in ET counts as TC and
      WT, a voxel in TC counts as WT. Then ET gets the convention's enhancing label, TC minus ET the necrotic /
      non-enhancing core label and WT minus TC the edema label:

      =============  ==  ===========  ===========
      convention     ET  TC minus ET  WT minus TC
      =============  ==  ===========  ===========
      ``brats``      4   1            2
      ``msd``        3   2            1
      ``brats2023``  3   1            2
      =============  ==  ===========  ===========

    - ``regions="wt"`` (1 channel, the paper's binary task): a whole-tumour prediction has no sub-regions, so the
      output is a binary mask, ``wt_value`` (1) inside the tumour and 0 outside, whatever the convention. Note that
      1 is not "whole tumour" in any BraTS convention (it is the necrotic core in ``brats``, edema in ``msd``);
      the file is a binary WT mask, not a challenge label map.

    ``LabelToRegions(regions, convention)`` followed by ``RegionsToLabel(regions, convention)`` gives back the
    original label map for ``"wt_tc_et"``, and the binary whole-tumour mask for ``"wt"``.

    Args:
        regions: ``"wt"`` (1 channel) or ``"wt_tc_et"`` (3 channels); a list naming ``"wt"``, ``"tc"`` and ``"et"``
            once each gives another channel order.
        convention: the label convention of the output (``"brats"``, ``"msd"``, ``"brats2023"``), or None to give
            it at call time. Not needed for ``"wt"``.
        threshold: a channel value ``>= threshold`` is inside the region (probabilities or binary masks).
        dtype: output dtype (default ``uint8``, what BraTS label files use).
        wt_value: the value written inside the whole tumour in the ``"wt"`` mode.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: str | Sequence[str] = "wt", convention: str | None = "brats", threshold: float = 0.5,
                 dtype: str | torch.dtype = "uint8", wt_value: int = 1) -> None:
        self.regions = region_names(regions)
        if sorted(self.regions) not in (["wt"], ["et", "tc", "wt"]):
            raise ValueError(
                f"RegionsToLabel needs the regions 'wt' or 'wt_tc_et' (WT, TC and ET once each, any order), got "
                f"{list(self.regions)}: other region sets do not determine the label of every voxel."
            )
        self.convention = convention
        if convention is not None:
            allowed_label_values(convention)  # validates the name
        self.threshold = float(threshold)
        self.dtype = resolve_dtype(dtype)
        self.wt_value = int(wt_value)

    def __call__(self, img: NdarrayOrTensor, convention: str | None = None, case: str | None = None) -> NdarrayOrTensor:
        """
        Args:
            img: region masks or probabilities, shape (R, H, W[, D]), R = number of regions (1 or 3).
            convention: overrides the constructor's convention.
            case: a case name for error messages.

        Returns:
            the label map, shape (1, H, W[, D]), same type (and MONAI metadata) as ``img``, dtype ``dtype``.
        """
        if img.ndim < 2 or img.shape[0] != len(self.regions):
            raise DataError(
                f"{_prefix(case)}expected {len(self.regions)} region channel(s) {list(self.regions)} first, got "
                f"shape {tuple(img.shape)}."
            )
        masks = convert_to_tensor(img, track_meta=False)
        masks = masks >= self.threshold if masks.dtype != torch.bool else masks
        if self.regions == ("wt",):
            out = masks[:1].to(torch.int64) * self.wt_value
            return convert_to_dst_type(out, img, dtype=self.dtype)[0]
        conv = item_value(convention) if convention is not None else self.convention
        if conv is None:
            raise DataError(f"{_prefix(case)}the label convention of the output is unknown; set convention or give "
                            "the item a 'label_convention' ('brats', 'msd' or 'brats2023').")
        conv = str(conv).lower()
        label_of = {}
        for region, inner in (("et", None), ("tc", "et"), ("wt", "tc")):
            # the one label value of the region that its inner region does not hold
            values = set(region_label_values(conv, region))
            label_of[region] = (values - set(region_label_values(conv, inner)) if inner else values).pop()
        et = masks[self.regions.index("et")]
        tc = masks[self.regions.index("tc")] | et  # the hierarchy resolves non-nested predictions
        wt = masks[self.regions.index("wt")] | tc
        out = torch.zeros(et.shape, dtype=torch.int64, device=et.device)
        out[wt] = label_of["wt"]
        out[tc] = label_of["tc"]
        out[et] = label_of["et"]
        return convert_to_dst_type(out[None], img, dtype=self.dtype)[0]


class CheckFinite(Transform):
    """Raise when an image holds NaN or infinite values; return it unchanged otherwise.

    Args:
        channel_names: names of the channels for the message (default t1, t1ce, t2, flair when there are 4).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channel_names: str | Sequence[str] | None = MODALITIES) -> None:
        self.channel_names = parse_modality_order(channel_names) if channel_names else None

    def __call__(self, img: NdarrayOrTensor, case: str | None = None, name: str = "image") -> NdarrayOrTensor:
        """
        Args:
            img: channel-first image.
            case: a case name for error messages.
            name: what the image is, for the message.
        """
        t = convert_to_tensor(img, track_meta=False)
        if not t.is_floating_point():
            return img
        # fast path: any NaN/inf makes the sum non-finite (one reduction, no volume-sized temporary); a sum that
        # overflows only sends finite data to the exact count below
        if bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()):
            return img
        flat = t.reshape(t.shape[0], -1)
        n_nan = torch.isnan(flat).sum(1)
        n_inf = torch.isinf(flat).sum(1)
        bad = [c for c in range(t.shape[0]) if n_nan[c] or n_inf[c]]
        names = self.channel_names if self.channel_names and len(self.channel_names) == t.shape[0] else None
        where = ", ".join(f"{c} ({names[c]})" if names else str(c) for c in bad)
        raise DataError(
            f"{_prefix(case)}{name} has {int(n_nan.sum())} NaN and {int(n_inf.sum())} infinite value(s) in "
            f"channel(s) {where}."
        )
