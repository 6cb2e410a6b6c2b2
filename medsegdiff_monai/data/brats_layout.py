# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The BraTS folder-per-case layouts: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.

``"brats2021"`` (case folders ``BraTS2021_NNNNN``) and ``"brats2020"`` (``BraTS20_{Training,Validation}_NNN``)
check the case folder names too; ``"brats"`` accepts any case folder name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..utils.enums import DataLayout
from .case_ids import BRATS_FILE_KINDS, brats_file_name, parse_brats_file_name
from .conventions import MODALITIES, format_modality_order
from .layout_base import Layout, LayoutCases, case_dirs, nifti_files
from .nifti import NIFTI_SUFFIXES

__all__ = ["BRATS_LAYOUTS", "brats_case", "brats_cases"]

# layout -> (case folder pattern, how the names look)
_CASE_NAMES: dict[str, tuple[re.Pattern, str]] = {
    DataLayout.BRATS2021: (re.compile(r"^BraTS2021_\d+$"), "BraTS2021_NNNNN"),
    DataLayout.BRATS2020: (re.compile(r"^BraTS20_(Training|Validation)_\d+$"),
                           "BraTS20_Training_NNN or BraTS20_Validation_NNN"),
}
_EXPECTED = f"<{'|'.join(BRATS_FILE_KINDS)}>"


def brats_case(folder: Path, label_convention: str) -> tuple[dict[str, Any], list[str]]:
    """Read one BraTS case folder.

    Args:
        folder: the case folder; its name is the case id.
        label_convention: the ``label_convention`` written into the item.

    Returns:
        ``(item, problems)``: the item with absolute paths (``"label"`` only when a segmentation exists) and the
        problems of the folder's file names (missing modality, a stray or doubled file, files of another case).
    """
    name = folder.name
    files = {f.name: f for f in nifti_files(folder)}
    found: dict[str, Path] = {}
    problems: list[str] = []
    for kind in BRATS_FILE_KINDS:
        hits = [files[n] for n in (brats_file_name(name, kind, suffix) for suffix in NIFTI_SUFFIXES) if n in files]
        if len(hits) > 1:
            problems.append(f"both {hits[0].name} and {hits[1].name} exist in {folder}; keep one.")
        if hits:
            found[kind] = hits[0]
    used = {p.name for p in found.values()}
    foreign: list[str] = []
    for fname in sorted(set(files) - used):
        parsed = parse_brats_file_name(fname)
        if parsed and parsed[0] != name:
            foreign.append(fname)
        elif "seg" in fname.lower():
            problems.append(
                f"unexpected segmentation file {folder / fname}: rename it to {brats_file_name(name, 'seg')} "
                f"(or {brats_file_name(name, 'seg', '.nii')} if it is not compressed)."
            )
        else:
            problems.append(f"unexpected file {folder / fname} (expected {name}_{_EXPECTED}.nii.gz).")
    if foreign:
        problems.append(
            f"case folder name does not match its files: folder {name!r} holds {', '.join(foreign)} "
            f"(expected {name}_{_EXPECTED}.nii.gz)."
        )
    missing = [m for m in MODALITIES if m not in found]
    if missing and not foreign:
        for m in missing:
            problems.append(f"missing modality {m}: {folder / brats_file_name(name, m)} not found.")
    item: dict[str, Any] = {"case_id": name, "image": [str(found[m]) for m in MODALITIES if m in found]}
    if "seg" in found:
        item["label"] = str(found["seg"])
    item["label_convention"] = label_convention
    item["modality_order"] = format_modality_order(MODALITIES)
    return item, problems


def brats_cases(root: Path, label_convention: str | None = None, layout: str = DataLayout.BRATS) -> LayoutCases:
    """The cases of a BraTS folder (one :func:`brats_case` per visible sub-folder holding NIfTI files).

    Args:
        root: the data folder.
        label_convention: the label convention (None: ``"brats"``).
        layout: ``"brats2021"`` or ``"brats2020"`` also report case folders not named like that release's.
    """
    convention = label_convention or "brats"
    cases, problems = [], {}
    pattern, names = _CASE_NAMES.get(layout, (None, ""))
    for d in case_dirs(root):
        item, probs = brats_case(d, convention)
        if pattern is not None and not pattern.match(d.name):
            probs.insert(0, f"folder {d} is not named like a {layout} case ({names}).")
        cases.append(item)
        if probs:
            problems[d.name] = probs
    return LayoutCases(cases, problems, convention, MODALITIES)


def _release_layout(layout: DataLayout) -> Layout:
    pattern = _CASE_NAMES[layout][0]

    def detect(root: Path) -> bool:
        names = [d.name for d in case_dirs(root)]
        return bool(names) and all(pattern.match(n) for n in names)

    def discover(root: Path, label_convention: str | None) -> LayoutCases:
        return brats_cases(root, label_convention, layout)

    return Layout(str(layout), detect, discover, priority=20)


#: the BraTS layouts, as registered in :mod:`medsegdiff_monai.data.layouts`
BRATS_LAYOUTS: tuple[Layout, ...] = (
    _release_layout(DataLayout.BRATS2021),
    _release_layout(DataLayout.BRATS2020),
    Layout(
        str(DataLayout.BRATS),
        detect=lambda root: bool(case_dirs(root)),
        discover=lambda root, label_convention: brats_cases(root, label_convention),
        priority=90,  # any folder of case folders: the catch-all, tried last
        description="a BraTS folder (<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, e.g. "
        "BraTS2021_00000/BraTS2021_00000_t1.nii.gz)",
    ),
)
