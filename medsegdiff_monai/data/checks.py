# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Whole-data-set validation: every problem of every case, named, without writing anything."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .conventions import DataError, allowed_label_values, parse_modality_order
from .image_files import image_pair_problems, is_image_name
from .layouts import discover_cases
from .nifti import case_file_problems, read_nifti

__all__ = ["check_case", "check_dataset"]


def _label_problems(data: np.ndarray, path: str, convention: str) -> list[str]:
    problems = []
    if not np.all(np.isfinite(data)):
        problems.append(f"{path}: segmentation holds NaN or infinite values.")
        data = np.nan_to_num(data, nan=-1.0, posinf=-1.0, neginf=-1.0)
    values = np.unique(data)
    allowed = allowed_label_values(convention)
    bad = [v.item() for v in values if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        problems.append(
            f"{path}: label values {shown} are not in the {convention!r} convention {list(allowed)}."
        )
    return problems


def check_case(item: dict[str, Any], read_data: bool = True) -> list[str]:
    """Check one datalist item's files.

    Headers are always checked (see :func:`~medsegdiff_monai.data.nifti.case_file_problems`). With
    ``read_data`` every file is read in full: images must be finite and not all zero, segmentations must only hold
    the values of the item's ``label_convention``. A 2D image (PNG, JPEG, ...) is checked by its format's rules
    instead (:func:`~medsegdiff_monai.data.image_files.image_pair_problems`: readable, the mask of the image's
    size, with ``read_data`` decoded and one channel).

    Args:
        item: ``{"image", "label" (optional), "label_convention", "modality_order", ...}`` with usable paths.
        read_data: also read and check the voxel data.

    Returns:
        the problems, each naming a file; empty when the case is fine.
    """
    if isinstance(item["image"], (str, os.PathLike)) and is_image_name(item["image"]):
        return image_pair_problems(item, read_data=read_data)
    order = item.get("modality_order")
    num_channels = len(parse_modality_order(order)) if order else None
    problems = case_file_problems(item["image"], item.get("label"), num_channels=num_channels)
    if problems or not read_data:
        return problems
    images = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    for f in images:
        try:
            data, _ = read_nifti(f)
        except DataError as e:
            problems.append(str(e))
            continue
        arr = np.asarray(data)
        if arr.dtype.kind == "f":
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            if n_nan or n_inf:
                problems.append(f"{f}: image holds {n_nan} NaN and {n_inf} infinite value(s).")
        channels = [arr] if arr.ndim == 3 else [arr[..., c] for c in range(arr.shape[-1])]
        for c, ch in enumerate(channels):
            if not np.any(np.nan_to_num(ch) != 0):
                where = f" (channel {c})" if len(channels) > 1 else ""
                problems.append(f"{f}{where}: image is all zero.")
    if item.get("label"):
        try:
            data, _ = read_nifti(item["label"])
            problems.extend(_label_problems(np.asarray(data), item["label"], item.get("label_convention", "brats")))
        except DataError as e:
            problems.append(str(e))
    return problems


def check_dataset(
    data_dir: str | os.PathLike,
    layout: str = "auto",
    label_convention: str | None = None,
    read_data: bool = True,
    progress: Callable[[str, list[str]], None] | None = None,
) -> tuple[str, dict[str, list[str]]]:
    """Validate a data folder: its structure, and every case's files (see :func:`check_case`).

    Never writes anything.

    Args:
        data_dir: the data folder.
        layout: see :func:`~medsegdiff_monai.data.find_cases`.
        label_convention: see :func:`~medsegdiff_monai.data.find_cases`.
        read_data: read every file in full (slower, finds NaN, bad labels, truncated data).
        progress: called as ``progress(case_id, problems)`` after each case.

    Returns:
        ``(layout, report)`` where ``report`` maps every case id to its problems (an empty list when fine); a
        problem filed under an id that is no case (e.g. a 2D mask without an image, under its stem) is reported
        too.

    Raises:
        DataError: when the folder is missing or holds no recognisable case.
    """
    layout, cases, problems, _, _ = discover_cases(data_dir, layout, label_convention)
    by_id = {c["case_id"]: c for c in cases}
    report: dict[str, list[str]] = {}
    for cid in sorted(set(by_id) | {k for k, v in problems.items() if v}):
        probs = list(problems.get(cid, []))
        if not probs:
            probs = check_case(by_id[cid], read_data=read_data)
        report[cid] = probs
        if progress is not None:
            progress(cid, probs)
    return layout, report
