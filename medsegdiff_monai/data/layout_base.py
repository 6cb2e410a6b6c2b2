# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""What a data-folder layout is made of: its description (:class:`Layout`), what reading a folder of that layout
gives (:class:`LayoutCases`), and the helpers every layout reads folders with.

A layout is registered in :mod:`medsegdiff_monai.data.layouts`, which detects it and lists its cases.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .conventions import DataError
from .nifti import is_nifti_name

__all__ = ["Layout", "LayoutCases", "data_folder", "is_visible", "nifti_files", "case_dirs"]


class LayoutCases(NamedTuple):
    """The cases a layout found in a data folder.

    Attributes:
        cases: items ``{"case_id", "image", "label" (labeled cases), "label_convention", "modality_order"}`` with
            absolute paths, in the order found.
        problems: case id -> the problems of that case's names and files (only cases with problems). A problem
            may be filed under an id that is no case, e.g. the stem of a mask without an image.
        label_convention: the label convention of the whole folder (a key of ``LABEL_CONVENTIONS``, or the
            layout's own name when the labels are mapped elsewhere: ``"image2d"`` masks by the bundle's
            ``mask_classes``).
        modality_order: the order of the image channels as stored, e.g. ``("flair", "t1", "t1ce", "t2")``.
    """

    cases: list[dict[str, Any]]
    problems: dict[str, list[str]]
    label_convention: str
    modality_order: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """A data-folder layout: how to recognise it and how to list its cases.

    Attributes:
        name: the ``layout`` argument that selects it, e.g. ``"brats2021"``.
        detect: ``detect(root) -> bool``, whether the existing folder ``root`` has this layout. It only looks at
            names (cheap), never reads images.
        discover: ``discover(root, label_convention) -> LayoutCases``, the cases of ``root``;
            ``label_convention`` (None: the layout's own) overrides the convention. An empty ``cases`` list means
            the folder holds none (the caller raises the error listing the known layouts).
        priority: layouts are tried by :func:`~medsegdiff_monai.data.detect_layout` in increasing priority (a
            catch-all layout such as the generic ``"brats"`` comes last).
        description: how the layout looks, for the "no cases found" message (None: covered by another layout's).
        accepts_file: the data source may be a file rather than a folder (the 2D layout's CSV of pairs); only
            such layouts are asked to ``detect`` or ``discover`` a file.
        datalist_info: ``datalist_info(root, cases) -> dict``, the top-level keys describing the data in the
            datalist :func:`~medsegdiff_monai.data.build_datalist` writes (None: the BraTS keys ``labels``,
            ``regions``, ``modality_order`` and ``channels`` of the label convention and modality order).
    """

    name: str
    detect: Callable[[Path], bool]
    discover: Callable[[Path, str | None], LayoutCases]
    priority: int = 50
    description: str | None = None
    accepts_file: bool = False
    datalist_info: Callable[[Path, list[dict[str, Any]]], dict[str, Any]] | None = None


def data_folder(data_dir: str | os.PathLike, allow_file: bool = False) -> Path:
    """The absolute path of an existing data folder (or, with ``allow_file``, data file such as a CSV of pairs).

    Raises:
        DataError: when ``data_dir`` does not exist, or is a file and not ``allow_file``.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"{root}: data folder not found.")
    if not allow_file and not root.is_dir():
        raise DataError(f"{root}: is a file, expected a data folder.")
    return root.resolve()


def is_visible(path: Path) -> bool:
    """False for hidden files and folders, which also skips macOS ``._*`` resource forks and ``.DS_Store``."""
    return not path.name.startswith(".")


def nifti_files(folder: Path) -> list[Path]:
    """The visible ``.nii``/``.nii.gz`` files directly in ``folder``, sorted; empty when it cannot be listed."""
    try:
        return sorted(f for f in folder.iterdir() if f.is_file() and is_nifti_name(f.name))
    except OSError:
        return []


def case_dirs(root: Path) -> list[Path]:
    """The visible sub-folders of ``root`` that hold at least one NIfTI file, sorted (BraTS case folders)."""
    return [d for d in sorted(root.iterdir()) if d.is_dir() and is_visible(d) and nifti_files(d)]
