# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Which layout a data folder has, and which cases it holds.

The layouts are kept in a registry (:data:`LAYOUT_REGISTRY`): :func:`detect_layout` tries them in order of
priority, :func:`discover_cases` and :func:`find_cases` read a folder with the one chosen. The built-in layouts
are BraTS 2021, BraTS 2020 and generic BraTS folders (:mod:`~medsegdiff_monai.data.brats_layout`) and MSD
Task01_BrainTumour (:mod:`~medsegdiff_monai.data.msd_layout`) and 2D image folders or CSV files of image/mask
pairs (:mod:`~medsegdiff_monai.data.image2d_layout`). To add one, describe it as a
:class:`~medsegdiff_monai.data.layout_base.Layout` in its own module and add it to ``_BUILT_IN`` below (or call
:func:`register_layout` at run time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from ..utils.enums import DataLayout, OnError, look_up_named_option
from .brats_layout import BRATS_LAYOUTS
from .case_ids import parse_brats_file_name
from .conventions import LABEL_CONVENTIONS, DataError
from .image2d_layout import IMAGE2D_LAYOUT
from .layout_base import Layout, data_folder, is_visible, nifti_files
from .msd_layout import MSD_LAYOUT
from .problems import apply_error_policy

__all__ = [
    "LAYOUTS",
    "LAYOUT_REGISTRY",
    "DiscoveredCases",
    "register_layout",
    "available_layouts",
    "data_source",
    "detect_layout",
    "discover_cases",
    "find_cases",
    "no_cases_message",
]

#: layout name -> :class:`Layout`; :func:`detect_layout` tries them by increasing ``priority``
LAYOUT_REGISTRY: dict[str, Layout] = {}


def register_layout(layout: Layout, overwrite: bool = False) -> Layout:
    """Add a layout to :data:`LAYOUT_REGISTRY`, so that ``layout=<name>`` selects it and "auto" may detect it.

    Args:
        layout: the layout.
        overwrite: replace a registered layout of the same name.

    Raises:
        ValueError: when the name is ``"auto"`` or already registered (and not ``overwrite``).
    """
    if layout.name == DataLayout.AUTO or (layout.name in LAYOUT_REGISTRY and not overwrite):
        raise ValueError(f"a layout named {layout.name!r} is already registered (or reserved).")
    LAYOUT_REGISTRY[layout.name] = layout
    return layout


_BUILT_IN: tuple[Layout, ...] = (MSD_LAYOUT, *BRATS_LAYOUTS, IMAGE2D_LAYOUT)
for _layout in _BUILT_IN:
    register_layout(_layout)


def available_layouts() -> tuple[str, ...]:
    """The accepted values of ``layout``: ``"auto"`` and every registered layout, in detection order."""
    ordered = sorted(LAYOUT_REGISTRY.values(), key=lambda lay: lay.priority)  # stable: registration order on ties
    return (str(DataLayout.AUTO), *(lay.name for lay in ordered))


#: the accepted values of ``layout`` when the package is imported (:func:`available_layouts` includes layouts
#: registered later); "brats" is any folder-per-case layout named ``<case>/<case>_<modality>.nii.gz``
LAYOUTS: tuple[str, ...] = available_layouts()


class DiscoveredCases(NamedTuple):
    """What :func:`discover_cases` found: the layout used and its :class:`~.layout_base.LayoutCases` fields."""

    layout: str
    cases: list[dict[str, Any]]
    problems: dict[str, list[str]]
    label_convention: str
    modality_order: tuple[str, ...]


def no_cases_message(root: Path) -> str:
    """The error for a folder without cases: what the known layouts look like, and a hint when ``root`` looks like
    a single case folder or a wrapper around the data folder."""
    expected = " or ".join(lay.description for lay in sorted(LAYOUT_REGISTRY.values(), key=lambda lay: lay.name)
                           if lay.description)
    msg = f"{root}: no cases found. Expected {expected}."
    if not root.is_dir():
        return msg
    names = [parse_brats_file_name(f.name) for f in nifti_files(root)]
    if any(parsed and parsed[0] == root.name for parsed in names):
        msg += " This looks like a single case folder: pass the folder that contains the case folders."
    else:
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and is_visible(d)]
        if len(subdirs) == 1:
            msg += f" Did you mean its subfolder {subdirs[0]}?"
    return msg


def data_source(data_dir: str | os.PathLike) -> Path:
    """The absolute path of an existing data folder, or of a data file that a registered layout reads (such as
    the 2D layout's CSV of pairs, :attr:`~medsegdiff_monai.data.layout_base.Layout.accepts_file`).

    Raises:
        DataError: when ``data_dir`` does not exist, or is a file that no layout reads.
    """
    root = data_folder(data_dir, allow_file=True)
    if root.is_dir():
        return root
    file_layouts = [lay for lay in LAYOUT_REGISTRY.values() if lay.accepts_file]
    if not any(lay.detect(root) for lay in file_layouts):
        readable = " or ".join(lay.description for lay in file_layouts if lay.description)
        raise DataError(f"{root}: is a file, expected a data folder" + (f" or {readable}." if readable else "."))
    return root


def detect_layout(data_dir: str | os.PathLike) -> str:
    """Tell which layout a data folder has: the first registered layout, by priority, that recognises it.

    Args:
        data_dir: the folder holding the case folders (BraTS), ``dataset.json``/``imagesTr`` (MSD) or image and
            mask folders (2D), or a CSV file of image/mask pairs.

    Returns:
        ``"msd"`` for a Task01_BrainTumour folder; ``"brats2021"`` when every case folder is named
        ``BraTS2021_NNNNN``; ``"brats2020"`` when every one is ``BraTS20_{Training,Validation}_NNN``;
        ``"image2d"`` for 2D image and mask folders or a CSV of pairs; else ``"brats"`` (any folder-per-case
        layout with ``<case>_<modality>.nii[.gz]`` files); or a layout registered with :func:`register_layout`.

    Raises:
        DataError: when the folder does not exist or holds no recognisable case.
    """
    root = data_source(data_dir)
    for name in available_layouts()[1:]:
        lay = LAYOUT_REGISTRY[name]
        if (root.is_dir() or lay.accepts_file) and lay.detect(root):
            return name
    raise DataError(no_cases_message(root))


def discover_cases(
    data_dir: str | os.PathLike, layout: str = DataLayout.AUTO, label_convention: str | None = None
) -> DiscoveredCases:
    """Every case of a data folder and the problems of its names and files, before any error policy.

    Args:
        data_dir: the data folder (or data file, see :func:`data_source`).
        layout: one of :func:`available_layouts`; ``"auto"`` calls :func:`detect_layout`.
        label_convention: a key of ``LABEL_CONVENTIONS`` overriding the layout's, or None.

    Returns:
        the layout used, the cases (absolute paths, in the order found), case id -> problems (a case id occurring
        twice is a problem too), the label convention and the stored modality order.

    Raises:
        ValueError: on an unknown ``layout`` or ``label_convention``.
        DataError: when the folder is missing or holds no case.
    """
    layout = look_up_named_option("layout", layout, available_layouts())
    if label_convention is not None:
        label_convention = look_up_named_option("label_convention", label_convention, LABEL_CONVENTIONS)
    root = data_source(data_dir)
    if layout == DataLayout.AUTO:
        layout = detect_layout(root)
    elif root.is_file() and not LAYOUT_REGISTRY[layout].accepts_file:
        raise DataError(f"{root}: is a file, expected a data folder (the {layout} layout reads folders).")
    cases, problems, convention, order = LAYOUT_REGISTRY[layout].discover(root, label_convention)
    if not cases:
        raise DataError(no_cases_message(root))
    ids = [c["case_id"] for c in cases]
    for cid in {i for i in ids if ids.count(i) > 1}:
        problems.setdefault(cid, []).append(f"case id {cid!r} occurs {ids.count(cid)} times.")
    return DiscoveredCases(layout, cases, problems, convention, order)


def find_cases(
    data_dir: str | os.PathLike,
    layout: str = DataLayout.AUTO,
    label_convention: str | None = None,
    on_error: str = OnError.RAISE,
) -> list[dict[str, Any]]:
    """List the cases of a data folder, with absolute paths.

    Only file names and folder structure are checked here (not file contents: see
    :func:`medsegdiff_monai.data.check_dataset`). Hidden files and macOS ``._*`` files are ignored.

    Args:
        data_dir: the data folder.
        layout: one of :data:`LAYOUTS`; ``"auto"`` calls :func:`detect_layout`.
        label_convention: override the convention implied by the layout (``"brats"`` for BraTS folders; for MSD
            ``"msd"`` unless dataset.json's labels include 4).
        on_error: ``"raise"`` a :class:`DataError` summarising every problem, or ``"skip"`` the cases with
            problems (with a warning); see :func:`~medsegdiff_monai.data.problems.apply_error_policy`.

    Returns:
        items ``{"case_id", "image", "label" (labeled cases only), "label_convention", "modality_order"}``,
        sorted by case id.

    Raises:
        DataError: when the folder is missing, holds no case, or (``on_error="raise"``) a case has a problem.
    """
    found = discover_cases(data_dir, layout, label_convention)
    cases = apply_error_policy(found.cases, found.problems, on_error)
    return sorted(cases, key=lambda c: c["case_id"])
