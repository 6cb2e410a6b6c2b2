# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The Medical Segmentation Decathlon Task01_BrainTumour layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``,
``imagesTs/``, one 4D image per case in the order of dataset.json's ``"modality"`` (FLAIR, T1w, t1gd, T2w).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..utils.enums import DataLayout
from .case_ids import case_id_from_path
from .conventions import (
    MODALITIES,
    MSD_MODALITY_ORDER,
    DataError,
    canonical_modality,
    format_modality_order,
)
from .layout_base import Layout, LayoutCases, nifti_files

__all__ = ["MSD_LAYOUT", "msd_cases", "msd_order_and_convention"]


def msd_order_and_convention(meta: dict[str, Any], where: Path) -> tuple[tuple[str, ...], str]:
    """The channel order and label convention a dataset.json describes.

    Args:
        meta: the content of dataset.json (``{}`` when there is none).
        where: the dataset.json path, for messages.

    Returns:
        ``(modality order, label convention)``: the order from ``"modality"`` (default
        :data:`~medsegdiff_monai.data.MSD_MODALITY_ORDER`), and ``"msd"`` unless ``"labels"`` includes 4
        (``"brats"``).

    Raises:
        DataError: when ``"modality"`` cannot be read or does not name the four modalities.
    """
    order = MSD_MODALITY_ORDER
    if "modality" in meta:
        try:
            modality = {int(k): v for k, v in dict(meta["modality"]).items()}
            order = tuple(canonical_modality(modality[k]) for k in sorted(modality))
        except (ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{where}: cannot read its 'modality' entry ({e}).") from e
        if sorted(order) != sorted(MODALITIES):
            raise DataError(f"{where}: 'modality' lists {order}, expected the four of {MODALITIES}.")
    convention = "msd"
    labels = meta.get("labels")
    if isinstance(labels, dict) and "4" in {str(k) for k in labels}:
        convention = "brats"
    return order, convention


def _read_dataset_json(ds_file: Path) -> dict[str, Any]:
    try:
        with open(ds_file) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{ds_file}: not a readable dataset.json ({e}).") from e
    if not isinstance(meta, dict):
        raise DataError(f"{ds_file}: expected a JSON object.")
    return meta


def msd_cases(root: Path, label_convention: str | None = None) -> LayoutCases:
    """The cases of an MSD Task01 folder: dataset.json's ``"training"`` and ``"test"`` lists, or without a
    dataset.json the files of ``imagesTr/`` (labels in ``labelsTr/``) and ``imagesTs/``.

    The case id is the image's file name without ``.nii.gz`` (:func:`~medsegdiff_monai.data.case_id_from_path`).

    Args:
        root: the data folder.
        label_convention: overrides the convention read from dataset.json.

    Raises:
        DataError: when dataset.json cannot be read or a training entry has no image.
    """
    ds_file = root / "dataset.json"
    entries: list[tuple[str, str | None]] = []  # (image, label or None)
    meta: dict[str, Any] = {}
    if ds_file.is_file():
        meta = _read_dataset_json(ds_file)
        for i, it in enumerate(meta.get("training", [])):
            if not isinstance(it, dict) or "image" not in it:
                raise DataError(f"{ds_file}: training entry {i} has no 'image'.")
            entries.append((str(root / os.path.normpath(it["image"])),
                            str(root / os.path.normpath(it["label"])) if it.get("label") else None))
        for it in meta.get("test", []):
            img = it.get("image") if isinstance(it, dict) else it
            entries.append((str(root / os.path.normpath(img)), None))
    else:  # no dataset.json: scan the folders (skipping macOS "._*" files of the published archive)
        for sub, labeled in (("imagesTr", True), ("imagesTs", False)):
            for f in nifti_files(root / sub) if (root / sub).is_dir() else []:
                entries.append((str(f), str(root / "labelsTr" / f.name) if labeled else None))
    if not entries:
        return LayoutCases([], {}, label_convention or "msd", MSD_MODALITY_ORDER)
    order, found_convention = msd_order_and_convention(meta, ds_file)
    convention = label_convention or found_convention
    cases, problems = [], {}
    for img, lab in entries:
        cid = case_id_from_path(img)
        probs = problems.setdefault(cid, [])
        if not os.path.isfile(img):
            probs.append(f"image {img} not found.")
        if lab is not None and not os.path.isfile(lab):
            probs.append(f"label {lab} not found.")
        item: dict[str, Any] = {"case_id": cid, "image": img}
        if lab is not None:
            item["label"] = lab
        item["label_convention"] = convention
        item["modality_order"] = format_modality_order(order)
        cases.append(item)
    return LayoutCases(cases, {k: v for k, v in problems.items() if v}, convention, order)


#: the MSD layout, as registered in :mod:`medsegdiff_monai.data.layouts`
MSD_LAYOUT = Layout(
    str(DataLayout.MSD),
    detect=lambda root: (root / "dataset.json").is_file() or (root / "imagesTr").is_dir(),
    discover=msd_cases,
    priority=10,  # marked by its dataset.json or imagesTr/, whatever else the folder holds
    description="an MSD Task01_BrainTumour folder (dataset.json, imagesTr/, labelsTr/, imagesTs/)",
)
