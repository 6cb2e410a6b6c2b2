# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Case ids and file names: the one place that says how a case is named on disk and how to read the name back.

BraTS names every file of a case ``<case>/<case>_<modality>.nii.gz`` (``<modality>`` one of t1, t1ce, t2, flair
and seg; BraTS 2023 spells them t1n, t1c, t2w, t2f); the Medical Segmentation Decathlon names a case's 4D image
``imagesTr/<case>.nii.gz``; a 2D image-folder data set (ISIC, REFUGE-2, DDTI) names a case by its image's file stem
(``images/ISIC_0000000.jpg``). Datalists, predictions and overlays all take a case's id from these rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from .conventions import MODALITIES
from .image_files import is_image_name
from .nifti import NIFTI_SUFFIXES

__all__ = [
    "BRATS_FILE_KINDS", "strip_nifti_suffix", "case_id_from_path", "case_name_formatter", "brats_file_name",
    "parse_brats_file_name",
]

#: the ``<kind>`` of a BraTS file name ``<case>_<kind>.nii.gz``: the four modalities and the segmentation
BRATS_FILE_KINDS: tuple[str, ...] = (*MODALITIES, "seg")

# modality suffixes stripped from image file names to get the case id: BraTS 2020/2021 and BraTS 2023 spellings
_MODALITY_SUFFIX = re.compile(r"_(t1|t1ce|t2|flair|t1n|t1c|t2w|t2f)$", re.IGNORECASE)
_BRATS_FILE = re.compile(
    rf"^(?P<case>.+)_(?P<kind>{'|'.join(BRATS_FILE_KINDS)})(?P<suffix>\.nii(\.gz)?)$", re.IGNORECASE
)


def strip_nifti_suffix(name: str | os.PathLike) -> str:
    """The base name of a file without ``.nii``/``.nii.gz`` (any case): ``a/b/x.nii.gz`` -> ``x``.

    Args:
        name: a file name or path; any other name is returned as its base name.
    """
    base = os.path.basename(os.path.normpath(os.fspath(name))) if os.fspath(name) else ""
    for suffix in NIFTI_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def case_id_from_path(path: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """The case id of an image file: its name without ``.nii``/``.nii.gz`` and without a modality suffix, or for a
    2D image (:data:`~medsegdiff_monai.data.image_files.IMAGE_SUFFIXES`) its file stem.

    ``.../BraTS2021_00000_t1.nii.gz`` -> ``BraTS2021_00000``, ``.../imagesTr/BRATS_001.nii.gz`` -> ``BRATS_001``,
    ``.../BraTS-GLI-00000-000_t2f.nii.gz`` -> ``BraTS-GLI-00000-000``, ``.../images/ISIC_0000000.jpg`` ->
    ``ISIC_0000000``.

    Args:
        path: an image path, or a list of a case's modality files (the first one is used).
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    if is_image_name(path):  # type: ignore[arg-type]
        return os.path.splitext(os.path.basename(os.fspath(path)))[0]  # type: ignore[arg-type]
    return _MODALITY_SUFFIX.sub("", strip_nifti_suffix(path))  # type: ignore[arg-type]


def brats_file_name(case_id: str, kind: str, suffix: str = ".nii.gz") -> str:
    """The BraTS file name of one of a case's files: ``("BraTS2021_00000", "t1")`` -> ``BraTS2021_00000_t1.nii.gz``.

    Args:
        case_id: the case (and case folder) name.
        kind: one of :data:`BRATS_FILE_KINDS`.
        suffix: ``".nii.gz"`` or ``".nii"``.
    """
    return f"{case_id}_{kind}{suffix}"


def parse_brats_file_name(name: str | os.PathLike) -> tuple[str, str] | None:
    """Read a BraTS file name back: ``BraTS2021_00000_t1ce.nii.gz`` -> ``("BraTS2021_00000", "t1ce")``.

    Args:
        name: a file name or path.

    Returns:
        ``(case_id, kind)`` with ``kind`` in lower case, or None when the name does not follow
        ``<case>_<t1|t1ce|t2|flair|seg>.nii[.gz]``.
    """
    match = _BRATS_FILE.match(os.path.basename(os.fspath(name)))
    return (match.group("case"), match.group("kind").lower()) if match else None


def case_name_formatter(metadict: dict, saver: Any) -> dict:
    """``output_name_formatter`` for MONAI's ``SaveImaged``: name outputs by case id, not by the first modality's
    file (``BraTS2021_00000_pred.nii.gz`` rather than ``BraTS2021_00000_t1_pred.nii.gz``; for a 2D image
    ``ISIC_0000000_seg.png``, where MONAI would keep the ``.jpg`` of ``ISIC_0000000.jpg`` in the name).

    Args:
        metadict: the image's metadata (``filename_or_obj``).
        saver: the ``SaveImage`` transform (for its data index when there is no file name).

    Returns:
        the ``FolderLayout.filename`` arguments ``{"subject": case_id, "idx": patch_index}``.
    """
    name = metadict.get("filename_or_obj") if metadict else None
    subject = case_id_from_path(name) if name else str(getattr(saver, "_data_index", 0))
    return {"subject": subject, "idx": metadict.get("patch_index") if metadict else None}
