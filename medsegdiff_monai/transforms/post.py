# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Post-processing components of the bundle's evaluation and inference: masks from probabilities, case files.

``evaluate.json`` post-processes each case in seven named steps::

    FlattenSubKeysd (pred -> pred_fused, pred_uncertainty) -> SaveOverlayd (network space)
    -> Invertd (input geometry) -> CopyItemsd (label_original -> label_eval)
    -> ThresholdToMaskd (pred_fused -> pred_mask) -> SaveSegmentationd (pred_mask -> <case>_seg.nii.gz)
    -> SaveCased (pred_uncertainty -> <case>_uncertainty.nii.gz)

and ``inference.json`` in two (``Invertd`` -> ``SaveSegmentationd``). The metrics compare ``pred_mask`` with
``label_eval``, the copy of the ``label_original`` that the preprocessing kept
(``get_eval_transforms(original_label_key=...)``): MONAI's engines keep the keys of the loaded batch apart from
the engine's output (``monai.engines.utils.engine_apply_transform``) and metric handlers read only the output, so
the kept label is copied once under a new name; nothing is deleted or renamed. Every case file is named by
:func:`medsegdiff_monai.data.case_name_formatter`.

The 2D overlay (``image2d.json``) uses the same steps with the image writers: :class:`SaveMaskPNGd`
(``pred_mask`` -> ``<image>_seg.png`` at the image's own size) instead of ``SaveSegmentationd``, and
:class:`SaveMapTIFFd` (``pred_uncertainty`` -> ``<image>_uncertainty.tif``) instead of ``SaveCased``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection
from monai.transforms import AsDiscreted, CopyItemsd, MapTransform, SaveImaged

from ..data.case_ids import case_name_formatter
from ..data.image_writer import AtomicNibabelWriter, AtomicPILWriter
from .dictionary import RegionsToLabeld
from .image2d import ChannelsToMaskd

__all__ = ["ThresholdToMaskd", "SaveCased", "SaveSegmentationd", "SaveMaskPNGd", "SaveMapTIFFd"]


class ThresholdToMaskd(MapTransform):
    """Threshold probabilities into binary masks under new keys, keeping the probabilities.

    MONAI's ``AsDiscreted(threshold=...)`` works in place; this is ``CopyItemsd`` then ``AsDiscreted`` as one
    step, so that a config names the result instead of copying keys around. A value ``>= threshold`` is 1.

    Args:
        keys: the probability keys, e.g. ``"pred_fused"`` (C, *spatial) in [0, 1].
        names: the mask key for each of ``keys``, e.g. ``"pred_mask"``.
        threshold: the probability from which a voxel is inside.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, names: KeysCollection, threshold: float = 0.5,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        names = [names] if isinstance(names, str) else list(names)
        if len(names) != len(self.keys):
            raise ValueError(f"ThresholdToMaskd: `names` must give one name per key, got {names} for {self.keys}.")
        self.copy = CopyItemsd(keys, names=names, allow_missing_keys=allow_missing_keys)
        self.discrete = AsDiscreted(keys=names, threshold=float(threshold), allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return dict(self.discrete(self.copy(data)))


class SaveCased(SaveImaged):
    """``SaveImaged`` that writes one ``<output_dir>/<case>_<output_postfix>.nii.gz`` per case, atomically.

    The defaults every case file of the bundle shares: named by case id
    (:func:`~medsegdiff_monai.data.case_name_formatter`: ``BraTS2021_00000_seg.nii.gz``, not
    ``BraTS2021_00000_t1_seg.nii.gz``), written with :class:`~medsegdiff_monai.data.AtomicNibabelWriter` (a
    killed job leaves no truncated file), in the data's own geometry (no resampling: ``Invertd`` has restored it),
    all in ``output_dir``. Other arguments are ``SaveImaged``'s.

    Args:
        keys: the keys to write, (C, *spatial) MetaTensors.
        output_dir: the folder to write to.
        output_postfix: the file name's postfix after the case id.
        output_dtype: the data type on disk.
        kwargs: more ``SaveImaged`` arguments (e.g. ``print_log``).
    """

    def __init__(self, keys: KeysCollection, output_dir: str = "./", output_postfix: str = "seg",
                 output_dtype: DtypeLike = np.float32, **kwargs: Any) -> None:
        kwargs.setdefault("resample", False)
        kwargs.setdefault("separate_folder", False)
        kwargs.setdefault("output_name_formatter", case_name_formatter)
        kwargs.setdefault("writer", AtomicNibabelWriter)
        super().__init__(keys, output_dir=output_dir, output_postfix=output_postfix, output_dtype=output_dtype,
                         **kwargs)


class SaveSegmentationd(SaveCased):
    """Write region masks (or probabilities) as one label map per case, ``<case>_seg.nii.gz`` (uint8).

    The region channels are converted with :class:`~medsegdiff_monai.transforms.RegionsToLabeld` (thresholded,
    in the item's label convention: BraTS 0/1/2/4, MSD 0/1/2/3; binary for ``"wt"``) and written by
    :class:`SaveCased`. The item itself is returned unchanged, so the region masks stay available to the metrics.

    Args:
        keys: the region mask or probability keys, (R, *spatial).
        output_dir: the folder to write to.
        regions: the region set of the channels, ``"wt"`` or ``"wt_tc_et"``.
        threshold: a channel value ``>= threshold`` is inside the region.
        convention: the label convention when items carry none (see ``RegionsToLabeld``).
        convention_key: the item key of the label convention.
        output_postfix: the file name's postfix after the case id.
        kwargs: more :class:`SaveCased` / ``SaveImaged`` arguments.
    """

    def __init__(self, keys: KeysCollection, output_dir: str = "./", regions: str | Sequence[str] = "wt",
                 threshold: float = 0.5, convention: str | None = None,
                 convention_key: str | None = "label_convention", output_postfix: str = "seg",
                 **kwargs: Any) -> None:
        kwargs.setdefault("output_dtype", np.uint8)
        super().__init__(keys, output_dir=output_dir, output_postfix=output_postfix, **kwargs)
        self.to_label = RegionsToLabeld(keys=self.keys, regions=regions, convention=convention,
                                        convention_key=convention_key, threshold=threshold,
                                        allow_missing_keys=self.allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        super().__call__(self.to_label(data))
        return dict(data)


class SaveMaskPNGd(SaveCased):
    """Write 2D class masks (or probabilities) as one mask image per case, ``<case>_seg.png`` (uint8).

    The 2D counterpart of :class:`SaveSegmentationd`: the class channels (K, H, W) become one mask with
    :class:`~medsegdiff_monai.transforms.ChannelsToMaskd` (255 for a binary mask, as ISIC's; ``values`` per
    class otherwise) and are written by :class:`SaveCased` with
    :class:`~medsegdiff_monai.data.AtomicPILWriter`, rows as rows, in the array's size (after ``Invertd``: the
    image's own). The item itself is returned unchanged, so the masks stay available to the metrics.

    Args:
        keys: the class mask or probability keys, (K, H, W).
        output_dir: the folder to write to.
        threshold: a channel value ``>= threshold`` belongs to the class.
        values: the pixel value of each class; None: 255 for one class, else 1, 2, ... K.
        output_postfix: the file name's postfix after the case id.
        output_ext: the image format's extension (``.png``; ``.bmp`` and ``.tif`` work too).
        kwargs: more :class:`SaveCased` / ``SaveImaged`` arguments.
    """

    def __init__(self, keys: KeysCollection, output_dir: str = "./", threshold: float = 0.5,
                 values: Sequence[int] | None = None, output_postfix: str = "seg", output_ext: str = ".png",
                 **kwargs: Any) -> None:
        kwargs.setdefault("output_dtype", np.uint8)
        kwargs.setdefault("writer", AtomicPILWriter)
        super().__init__(keys, output_dir=output_dir, output_postfix=output_postfix, output_ext=output_ext,
                         **kwargs)
        self.to_mask = ChannelsToMaskd(keys=self.keys, threshold=threshold, values=values,
                                       allow_missing_keys=self.allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        super().__call__(self.to_mask(data))
        return dict(data)


class SaveMapTIFFd(SaveCased):
    """Write a 2D float map per case (e.g. the ensemble's uncertainty) as ``<case>_<postfix>.tif`` (float32).

    Image formats hold one float channel, so a map of K channels (K, H, W) is reduced to its per-pixel maximum
    over the channels first (for one channel: the map itself). Written by :class:`SaveCased` with
    :class:`~medsegdiff_monai.data.AtomicPILWriter`; the item is returned unchanged.

    Args:
        keys: the map keys, (K, H, W).
        output_dir: the folder to write to.
        output_postfix: the file name's postfix after the case id.
        kwargs: more :class:`SaveCased` / ``SaveImaged`` arguments.
    """

    def __init__(self, keys: KeysCollection, output_dir: str = "./", output_postfix: str = "uncertainty",
                 **kwargs: Any) -> None:
        kwargs.setdefault("writer", AtomicPILWriter)
        kwargs.setdefault("output_ext", ".tif")
        super().__init__(keys, output_dir=output_dir, output_postfix=output_postfix, output_dtype=np.float32,
                         **kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key].amax(0, keepdim=True)  # MetaTensor: keeps the metadata the writer names the file by
        super().__call__(d)
        return dict(data)
