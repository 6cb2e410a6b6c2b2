# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Dictionary transforms for 2D image-folder data sets (ISIC, REFUGE-2, DDTI style): file checks, mask values to
channels and back.

Used by ``bundle/configs/image2d.json`` around MONAI's ``LoadImaged`` (``PILReader``), ``Resized`` and
``Invertd``; every constructor argument is a JSON value.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from ..data.conventions import DataError
from ..data.image_files import image_pair_problems
from .dictionary import case_name

__all__ = [
    "ChannelsToMaskD",
    "ChannelsToMaskDict",
    "ChannelsToMaskd",
    "CheckImagePairD",
    "CheckImagePairDict",
    "CheckImagePaird",
    "MaskToChannelsD",
    "MaskToChannelsDict",
    "MaskToChannelsd",
    "mask_channel_count",
]


def mask_channel_count(classes: Sequence[Any] | None) -> int:
    """The number of mask channels (network output channels) for ``classes`` (see :class:`MaskToChannelsd`)."""
    return 1 if classes is None else len(classes)


class CheckImagePaird(MapTransform):
    """Check a 2D case's files before ``LoadImaged`` reads them: readable images (the pixels are decoded, so
    truncated files are found), and a mask of its image's height and width. Raises one
    :class:`~medsegdiff_monai.data.DataError` naming the case and file; MONAI's own message for a truncated
    image ("image file is truncated") names neither. Values that are already loaded are skipped.

    Args:
        keys: the image key, then optionally the mask key.
        case_key: item key of the case name used in messages.
        allow_missing_keys: skip absent keys (unlabeled images).
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), case_key: str | None = "case_id",
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_key, mask_key = self.keys[0], (self.keys[1] if len(self.keys) > 1 else None)
        if not isinstance(d.get(image_key), str):
            return d
        item = {"image": d[image_key]}
        if mask_key is not None and isinstance(d.get(mask_key), str):
            item["label"] = d[mask_key]
        problems = image_pair_problems(item, read_data=True)
        if problems:
            raise DataError(f"case {case_name(d, self.case_key, image_key)}: " + " ".join(problems))
        return d


class MaskToChannelsd(MapTransform):
    """Turn a loaded mask image into binary channels, one per class, float {0, 1}.

    - ``classes=None``: a binary mask, one channel: a pixel is foreground when its value is above ``threshold``
      (default: any nonzero value; e.g. 127 for masks saved as JPEG, whose edges hold values between 0 and 255).
    - ``classes=[v1, v2, ...]``: multi-class by value, channel ``k`` holds the pixels whose value is ``v_k``; an
      entry may be a list of values, e.g. REFUGE-2 masks (255 background, 128 optic disc rim, 0 optic cup) give
      the disc and the cup with ``[[0, 128], [0]]``. Values listed nowhere are background.

    A mask stored as RGB with equal channels is read as one channel; a colour mask is an error naming the case.
    With ``image_key`` the mask must have the image's spatial shape.

    Args:
        keys: the mask key(s); masks (1, H, W) or (3, H, W) channel first, as after ``EnsureChannelFirstd``.
        classes: None (binary) or the value(s) of each class.
        threshold: with ``classes=None``: foreground is ``value > threshold`` (None: ``value != 0``).
        image_key: the key of the image the mask must match in size (None: not checked).
        case_key: item key of the case name used in messages.
        allow_missing_keys: skip absent keys (unlabeled images).

    Raises:
        ValueError: on an empty ``classes`` or both ``classes`` and ``threshold`` set.
    """

    def __init__(self, keys: KeysCollection = "label", classes: Sequence[Any] | None = None,
                 threshold: float | None = None, image_key: str | None = "image", case_key: str | None = "case_id",
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        if classes is not None and len(classes) == 0:
            raise ValueError("MaskToChannelsd: classes must list at least one class value, or be None (binary).")
        if classes is not None and threshold is not None:
            raise ValueError("MaskToChannelsd: give classes (multi-class by value) or threshold (binary), not both.")
        self.classes = None if classes is None else [
            [float(v) for v in (c if isinstance(c, (list, tuple)) else [c])] for c in classes]
        self.threshold = None if threshold is None else float(threshold)
        self.image_key = image_key
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            case = case_name(d, self.case_key, key)
            m = convert_to_tensor(mask, track_meta=False)
            if m.ndim == 2:
                m = m[None]
            if self.image_key is not None and self.image_key in d:
                shape = tuple(d[self.image_key].shape[1:])
                if tuple(m.shape[1:]) != shape:
                    raise DataError(f"case {case}: mask {key!r} has the spatial shape {tuple(m.shape[1:])}, its image "
                                    f"{shape}; masks must have their image's size.")
            if m.shape[0] > 1:
                if not all(torch.equal(m[0], m[c]) for c in range(1, min(3, m.shape[0]))):
                    raise DataError(f"case {case}: mask {key!r} is a colour image ({m.shape[0]} different channels); "
                                    "masks must be one channel (binary, or one value per class).")
                m = m[:1]
            m = m[0].float()
            if self.classes is None:
                out = (m > self.threshold if self.threshold is not None else m != 0)[None]
            else:
                out = torch.stack([sum(m == v for v in values).bool() for values in self.classes])
            d[key] = convert_to_dst_type(out.float(), mask, dtype=torch.float32)[0]
        return d


class ChannelsToMaskd(MapTransform):
    """Turn class channels (probabilities or binary, (K, H, W)) into one mask image (1, H, W) to write as PNG.

    A pixel of channel ``k`` at or above ``threshold`` gets ``values[k]``; later channels are painted over earlier
    ones (nested classes such as disc then cup keep the inner one); other pixels are 0.

    Args:
        keys: the prediction key(s).
        threshold: the channel value from which a pixel belongs to the class.
        values: the value written per channel; None: 255 for one channel (a black and white mask, as ISIC's),
            else 1, 2, ... K.
        dtype: the output dtype (uint8 for PNG).
    """

    def __init__(self, keys: KeysCollection = "pred", threshold: float = 0.5, values: Sequence[int] | None = None,
                 dtype: str | torch.dtype = "uint8", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        from .array import resolve_dtype

        self.threshold = float(threshold)
        self.values = None if values is None else [int(v) for v in values]
        self.dtype = resolve_dtype(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            p = convert_to_tensor(pred, track_meta=False)
            values = self.values or ([255] if p.shape[0] == 1 else list(range(1, p.shape[0] + 1)))
            if len(values) != p.shape[0]:
                raise ValueError(f"ChannelsToMaskd: {key!r} has {p.shape[0]} channel(s) but values lists "
                                 f"{len(values)}.")
            out = torch.zeros(p.shape[1:], dtype=torch.int64, device=p.device)
            for channel, value in zip(p, values):
                out[channel >= self.threshold] = value
            d[key] = convert_to_dst_type(out[None], pred, dtype=self.dtype)[0]
        return d


CheckImagePairD = CheckImagePairDict = CheckImagePaird
MaskToChannelsD = MaskToChannelsDict = MaskToChannelsd
ChannelsToMaskD = ChannelsToMaskDict = ChannelsToMaskd
