# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The BraTS / MSD preprocessing chains: the one definition the bundle, the benchmarks and Python users share.

The bundle's configs instantiate these factories by ``_target_`` (``train.json``: ``train#preprocessing`` =
:func:`get_train_transforms`, ``validate#preprocessing`` = :func:`get_eval_transforms`; ``inference.json``:
``preprocessing`` = :func:`get_inference_transforms`), passing the bundle's parameters (``spatial_size``,
``regions``, ``slices_per_volume``, ...). The chain lives here rather than as transform lists in the JSON because
the package is the lower layer: it works installed from a wheel, without the bundle's files, and nothing in
``medsegdiff_monai`` reads the bundle. ``tests/test_pipelines_bundle.py`` checks that the bundle's parsed
preprocessing and these factories give identical tensors.

Evaluation / inference (whole volumes, invertible with ``monai.transforms.Invertd``)::

    CheckInputFilesd -> LoadImaged(NibabelReader) -> EnsureChannelFirstd -> [Orientationd] -> ReorderModalitiesd
    -> CheckFinited -> LabelToRegionsd -> CropForegroundd(source: image) -> Resized((H, W, -1); image
    trilinear, label nearest) -> NormalizeIntensityd(nonzero, channel_wise) -> EnsureTyped

    output: image (4, H, W, D) float32, label (R, H, W, D) float32 {0, 1}; MetaTensors with applied operations.
    With ``original_label_key``, a copy of the region label before cropping and resizing is kept (evaluation
    scores predictions against it in the input's geometry).

Training (2D axial slices) adds, after the above::

    SliceFgBgToIndicesd -> RandCropByPosNegLabeld(spatial_size (-1, -1, 1), pos, neg, num_samples)
    -> SqueezeDimd(dim=3) [-> augmentation]

    output: ``slices_per_volume`` samples per volume, image (4, H, W), label (R, H, W).

Everything before ``RandCropByPosNegLabeld`` is deterministic, so ``CacheDataset``/``PersistentDataset`` cache the
loaded, cropped, normalised and resized volumes.

2D image folders (``bundle/configs/image2d.json``: ISIC, REFUGE-2, DDTI style; :func:`get_image2d_eval_transforms`,
:func:`get_image2d_train_transforms`, :func:`get_image2d_inference_transforms`)::

    CheckImagePaird -> LoadImaged(PILReader, ConvertImageMode(image_channels); mask as stored)
    -> EnsureChannelFirstd -> MaskToChannelsd(mask_classes / mask_threshold) [-> CopyItemsd(original label)]
    -> Resized((H, W); image bilinear, label nearest) -> NormalizeIntensityd(channel_wise) -> EnsureTyped
    [-> augmentation (training)]

    output: image (C, H, W) float32 with C = image_channels (3 for RGB), label (K, H, W) float32 {0, 1}; the
    whole image is one sample (no slicing), and ``Invertd`` maps predictions back to each image's own size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.data import PILReader
from monai.transforms import (
    Compose,
    CopyItemsd,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    Resized,
    SqueezeDimd,
)

from ..data.conventions import MODALITIES
from ..data.image_files import ConvertImageMode
from .dictionary import (
    CheckFinited,
    CheckInputFilesd,
    LabelToRegionsd,
    ReorderModalitiesd,
    SliceFgBgToIndicesd,
)
from .image2d import CheckImagePaird, MaskToChannelsd

__all__ = [
    "get_eval_transforms",
    "get_train_transforms",
    "get_inference_transforms",
    "get_image2d_eval_transforms",
    "get_image2d_train_transforms",
    "get_image2d_inference_transforms",
]


def _size2d(spatial_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(spatial_size, int):
        return (int(spatial_size), int(spatial_size))
    size = tuple(int(s) for s in spatial_size)
    if len(size) == 3 and size[2] == -1:
        size = size[:2]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"spatial_size must be (H, W) or an int, got {spatial_size!r}.")
    return size  # type: ignore[return-value]


def _volume_transforms(
    spatial_size: int | Sequence[int],
    image_key: str,
    label_key: str | None,
    case_key: str,
    regions: str | Sequence[str],
    label_convention: str | None,
    modalities: str | Sequence[str],
    margin: int,
    orientation: str | None,
    check_files: bool,
    reader: str,
    anti_aliasing: bool,
    original_label_key: str | None = None,
) -> list:
    h, w = _size2d(spatial_size)
    keys = [image_key] + ([label_key] if label_key else [])
    xforms: list = []
    if check_files:
        xforms.append(CheckInputFilesd(keys=keys, case_key=case_key, allow_missing_keys=False))
    xforms += [
        LoadImaged(keys=keys, reader=reader, image_only=True),
        EnsureChannelFirstd(keys=keys),
    ]
    if orientation:
        xforms.append(Orientationd(keys=keys, axcodes=orientation))
    xforms += [
        ReorderModalitiesd(keys=image_key, target_order=modalities, case_key=case_key),
        CheckFinited(keys=image_key, case_key=case_key, channel_names=modalities),
    ]
    if label_key:
        xforms.append(LabelToRegionsd(keys=label_key, regions=regions, convention=label_convention, case_key=case_key))
        if original_label_key:
            xforms.append(CopyItemsd(keys=label_key, names=original_label_key))
    xforms += [
        CropForegroundd(keys=keys, source_key=image_key, margin=margin, allow_smaller=True, start_coord_key=None,
                        end_coord_key=None),
        # resize before normalising: the statistics over the brain barely change, NormalizeIntensityd (boolean
        # indexing) is the costliest step and runs on ~2x fewer voxels at network size
        Resized(keys=keys, spatial_size=(h, w, -1), mode=["trilinear"] + ["nearest"] * (len(keys) - 1),
                anti_aliasing=[bool(anti_aliasing)] + [False] * (len(keys) - 1)),
        NormalizeIntensityd(keys=image_key, nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, dtype="float32"),
    ]
    return xforms


def get_eval_transforms(
    spatial_size: int | Sequence[int] = (256, 256),
    image_key: str = "image",
    label_key: str | None = "label",
    case_key: str = "case_id",
    regions: str | Sequence[str] = "wt",
    label_convention: str | None = None,
    modalities: str | Sequence[str] = MODALITIES,
    margin: int = 0,
    orientation: str | None = None,
    check_files: bool = True,
    reader: str = "NibabelReader",
    anti_aliasing: bool = False,
    original_label_key: str | None = None,
) -> Compose:
    """Whole-volume preprocessing for evaluation and inference; ``Invertd`` maps predictions back.

    Args:
        spatial_size: in-plane network size (H, W) (or an int); the depth (axial slices) is kept.
        image_key: item key of the image (list of modality files, or one 4D file).
        label_key: item key of the label; None for inference on unlabeled cases.
        case_key: item key of the case name used in error messages.
        regions: ``"wt"`` (1 channel) or ``"wt_tc_et"`` (3 channels), see :class:`LabelToRegionsd`.
        label_convention: the convention when items carry no ``label_convention``.
        modalities: the output channels and their order.
        margin: voxels kept around the brain by ``CropForegroundd``.
        orientation: optional axis codes (e.g. ``"RAS"``) for ``Orientationd``; None keeps the stored orientation
            (axial slices along the third axis, as in BraTS and MSD).
        check_files: start with :class:`CheckInputFilesd` (header checks with clear messages).
        reader: the ``LoadImaged`` reader.
        anti_aliasing: Gaussian anti-aliasing before downsampling the image. Off by default: a BraTS brain
            (about 140 x 170 voxels) shrinks to 128 x 128 by a factor below 1.5, and the smoothing costs ~10x the
            resize itself (about 1 s per BraTS volume on one thread).
        original_label_key: when set (and ``label_key`` is), keep a copy of the region label (R, *input spatial)
            under this key before cropping and resizing, for metrics in the input's geometry.

    Returns:
        a ``Compose``; outputs image (C, H, W, D) and label (R, H, W, D) MetaTensors.
    """
    return Compose(_volume_transforms(spatial_size, image_key, label_key, case_key, regions, label_convention,
                                      modalities, margin, orientation, check_files, reader, anti_aliasing,
                                      original_label_key))


def get_inference_transforms(spatial_size: int | Sequence[int] = (256, 256), **kwargs) -> Compose:
    """:func:`get_eval_transforms` without a label (``label_key=None``); other arguments are passed on."""
    kwargs["label_key"] = None
    return get_eval_transforms(spatial_size, **kwargs)


def get_train_transforms(
    spatial_size: int | Sequence[int] = (256, 256),
    slices_per_volume: int = 8,
    pos: float = 1.0,
    neg: float = 1.0,
    image_key: str = "image",
    label_key: str = "label",
    case_key: str = "case_id",
    regions: str | Sequence[str] = "wt",
    label_convention: str | None = None,
    modalities: str | Sequence[str] = MODALITIES,
    margin: int = 0,
    orientation: str | None = None,
    check_files: bool = True,
    reader: str = "NibabelReader",
    anti_aliasing: bool = False,
    augmentation: Sequence[Callable] | None = None,
) -> Compose:
    """Training preprocessing: the eval chain on whole volumes, then random axial slices as 2D samples.

    Args:
        spatial_size: in-plane network size (H, W) (or an int).
        slices_per_volume: 2D samples drawn from each volume per epoch.
        pos: weight of slices with tumour; ``pos / (pos + neg)`` of the samples come from tumour slices.
        neg: weight of slices without tumour (drawn when a volume has no tumour at all); 0 for tumour only.
        image_key: see :func:`get_eval_transforms`.
        label_key: item key of the label.
        case_key: see :func:`get_eval_transforms`.
        regions: see :func:`get_eval_transforms`.
        label_convention: see :func:`get_eval_transforms`.
        modalities: see :func:`get_eval_transforms`.
        margin: see :func:`get_eval_transforms`.
        orientation: see :func:`get_eval_transforms`.
        check_files: see :func:`get_eval_transforms`.
        reader: see :func:`get_eval_transforms`.
        anti_aliasing: see :func:`get_eval_transforms`.
        augmentation: transforms applied to every 2D sample after slicing (the bundle's ``train#augmentation``,
            e.g. ``RandFlipd``, ``RandAffined``); None or empty: none.

    Returns:
        a ``Compose`` returning a list of ``slices_per_volume`` dicts with image (C, H, W) and label (R, H, W).
    """
    if int(slices_per_volume) < 1:
        raise ValueError(f"slices_per_volume must be at least 1, got {slices_per_volume}.")
    if pos < 0 or neg < 0 or pos + neg <= 0:
        raise ValueError(f"pos and neg must be non-negative and not both zero, got {pos}, {neg}.")
    keys = [image_key, label_key]
    xforms = _volume_transforms(spatial_size, image_key, label_key, case_key, regions, label_convention, modalities,
                                margin, orientation, check_files, reader, anti_aliasing)
    xforms += [
        SliceFgBgToIndicesd(keys=label_key),
        RandCropByPosNegLabeld(
            keys=keys, label_key=label_key, spatial_size=(-1, -1, 1), pos=pos, neg=neg,
            num_samples=int(slices_per_volume), fg_indices_key=f"{label_key}_fg_indices",
            bg_indices_key=f"{label_key}_bg_indices", allow_smaller=True,
        ),
        SqueezeDimd(keys=keys, dim=3),
        *(augmentation or ()),
    ]
    return Compose(xforms)


def get_image2d_eval_transforms(
    spatial_size: int | Sequence[int] = (256, 256),
    image_key: str = "image",
    label_key: str | None = "label",
    case_key: str = "case_id",
    image_channels: int = 3,
    mask_classes: Sequence | None = None,
    mask_threshold: float | None = None,
    check_files: bool = True,
    original_label_key: str | None = None,
) -> Compose:
    """Preprocessing of 2D images (PNG, JPEG, BMP, TIFF) and their masks for evaluation; ``Invertd`` maps
    predictions back to each image's own size.

    Args:
        spatial_size: the network size (H, W) (or an int); every image is resized to it.
        image_key: item key of the image file.
        label_key: item key of the mask file; None for inference on unlabeled images (a missing mask is skipped
            too).
        case_key: item key of the case name used in error messages.
        image_channels: 3 (RGB; greyscale files are repeated) or 1 (greyscale; colour files become luminance).
        mask_classes: None for a binary mask (one channel), or the mask value(s) of each class, one channel per
            class, e.g. ``[[0, 128], [0]]`` for REFUGE-2's optic disc and cup (see :class:`MaskToChannelsd`).
        mask_threshold: for a binary mask: foreground is ``value > mask_threshold`` (None: any nonzero value).
        check_files: start with :class:`CheckImagePaird` (decodes the files, checks the mask's size, and names
            the file on a problem).
        original_label_key: when set (and ``label_key`` is), keep a copy of the mask channels (K, H0, W0) at the
            image's own size under this key, for metrics in the original geometry.

    Returns:
        a ``Compose``; outputs image (image_channels, H, W) and label (K, H, W) float32 MetaTensors.
    """
    h, w = _size2d(spatial_size)
    keys = [image_key] + ([label_key] if label_key else [])
    xforms: list = []
    if check_files:
        xforms.append(CheckImagePaird(keys=keys, case_key=case_key))
    xforms += [
        # rows stay rows (reverse_indexing=False): arrays are (H, W) as in the file, and written back as such
        LoadImaged(keys=image_key, reader=PILReader(converter=ConvertImageMode(image_channels),
                                                    reverse_indexing=False), image_only=True),
    ]
    if label_key:
        xforms.append(LoadImaged(keys=label_key, reader=PILReader(reverse_indexing=False), image_only=True,
                                 allow_missing_keys=True))
    xforms.append(EnsureChannelFirstd(keys=keys, allow_missing_keys=True))
    if label_key:
        xforms.append(MaskToChannelsd(keys=label_key, classes=mask_classes, threshold=mask_threshold,
                                      image_key=image_key, case_key=case_key))
        if original_label_key:
            xforms.append(CopyItemsd(keys=label_key, names=original_label_key, allow_missing_keys=True))
    xforms += [
        Resized(keys=keys, spatial_size=(h, w), mode=["bilinear"] + ["nearest"] * (len(keys) - 1),
                allow_missing_keys=True),
        NormalizeIntensityd(keys=image_key, channel_wise=True),
        EnsureTyped(keys=keys, dtype="float32", allow_missing_keys=True),
    ]
    return Compose(xforms)


def get_image2d_inference_transforms(spatial_size: int | Sequence[int] = (256, 256), **kwargs) -> Compose:
    """:func:`get_image2d_eval_transforms` without a mask (``label_key=None``); other arguments are passed on."""
    kwargs["label_key"] = None
    return get_image2d_eval_transforms(spatial_size, **kwargs)


def get_image2d_train_transforms(
    spatial_size: int | Sequence[int] = (256, 256),
    image_key: str = "image",
    label_key: str = "label",
    case_key: str = "case_id",
    image_channels: int = 3,
    mask_classes: Sequence | None = None,
    mask_threshold: float | None = None,
    check_files: bool = True,
    augmentation: Sequence[Callable] | None = None,
) -> Compose:
    """Training preprocessing of 2D images: :func:`get_image2d_eval_transforms`, then the augmentation.

    Args:
        spatial_size: see :func:`get_image2d_eval_transforms`.
        image_key: see :func:`get_image2d_eval_transforms`.
        label_key: item key of the mask file.
        case_key: see :func:`get_image2d_eval_transforms`.
        image_channels: see :func:`get_image2d_eval_transforms`.
        mask_classes: see :func:`get_image2d_eval_transforms`.
        mask_threshold: see :func:`get_image2d_eval_transforms`.
        check_files: see :func:`get_image2d_eval_transforms`.
        augmentation: transforms applied to every image after resizing (the bundle's ``train#augmentation``);
            None or empty: none.

    Returns:
        a ``Compose`` returning one dict per image with image (image_channels, H, W) and label (K, H, W).
    """
    if not label_key:
        raise ValueError("get_image2d_train_transforms: label_key is required (training needs masks).")
    pre = get_image2d_eval_transforms(spatial_size, image_key=image_key, label_key=label_key, case_key=case_key,
                                      image_channels=image_channels, mask_classes=mask_classes,
                                      mask_threshold=mask_threshold, check_files=check_files)
    return Compose([*pre.transforms, *(augmentation or ())])
