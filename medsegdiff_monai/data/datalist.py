# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Datalists: build, write and load the MONAI datalist JSON of a BraTS 2020/2021, MSD Task01_BrainTumour or 2D
image data set.

Finding the cases is :mod:`~medsegdiff_monai.data.layouts`' job, splitting them :mod:`~medsegdiff_monai.data.splits`'.

The result is a MONAI (Medical Segmentation Decathlon style) datalist JSON that
``monai.data.load_decathlon_datalist`` reads::

    {
        "layout": "brats2021", "label_convention": "brats", "modality_order": "t1,t1ce,t2,flair",
        "channels": "t1,t1ce,t2,flair", "labels": {...}, "regions": {...}, "split": {...}, ...,
        "training": [
            {"case_id": "BraTS2021_00000",
             "image": ["BraTS2021_00000/BraTS2021_00000_t1.nii.gz", ..._t1ce, ..._t2, ..._flair],
             "label": "BraTS2021_00000/BraTS2021_00000_seg.nii.gz",
             "label_convention": "brats", "modality_order": "t1,t1ce,t2,flair"},
            ...
        ],
        "validation": [...],
        "test": [... items without "label" for unlabeled cases ...]
    }

For MSD, ``"image"`` is the single 4D file and ``"modality_order"`` is ``"flair,t1,t1ce,t2"`` (dataset.json's
order), so :class:`~medsegdiff_monai.transforms.ReorderModalitiesd` brings the channels to t1, t1ce, t2, flair;
``"label_convention": "msd"`` tells :class:`~medsegdiff_monai.transforms.LabelToRegionsd` that 1 is edema,
2 non-enhancing and 3 enhancing tumour. The per-item keys let one pipeline read mixed datalists; the top-level
keys describe the whole file. A 2D image data set (:mod:`~medsegdiff_monai.data.image2d_layout`) writes items
``{"case_id", "image", "label"}`` with one image file each, and its layout's
:attr:`~medsegdiff_monai.data.layout_base.Layout.datalist_info` keys (``source``, ``channels``: rgb, grey or mixed)
instead of the BraTS label and channel keys.

Paths are written relative to the folder of the JSON file (``base_dir``), which is what
``load_decathlon_datalist(path)`` assumes when its ``base_dir`` is None; pass ``absolute_paths=True`` to write
absolute paths instead. The split is by case (one case per patient in BraTS and MSD), never by slice; a split the
data set gives (2D train/val/test folders or a CSV's ``split`` column) is kept
(:func:`~medsegdiff_monai.data.splits.keep_given_split`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..utils.enums import DataLayout, OnError
from .conventions import (
    LABEL_CONVENTIONS,
    MODALITIES,
    DataError,
    format_modality_order,
    item_value,
)
from .layouts import (
    LAYOUT_REGISTRY,
    LAYOUTS,
    data_source,
    detect_layout,
    discover_cases,
    find_cases,
)
from .problems import apply_error_policy
from .splits import check_fractions, keep_given_split, split_cases

__all__ = [
    "build_datalist",
    "write_datalist",
    "load_datalist",
    # re-exported from .layouts and .splits: this module's import path before they were split out
    "LAYOUTS",
    "detect_layout",
    "find_cases",
    "split_cases",
]

#: item fields that are not paths, restored after ``load_decathlon_datalist`` (see :func:`load_datalist`)
_ITEM_META_KEYS = ("case_id", "label_convention", "modality_order")
#: the fields of a datalist item, in the order written
_ITEM_KEYS = ("case_id", "image", "label", "label_convention", "modality_order")


def _rel(path: str, base_dir: Path | None) -> str:
    if base_dir is None:
        return str(Path(path).resolve())
    try:
        return Path(os.path.relpath(Path(path).resolve(), base_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def _with_paths(item: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    out = dict(item)
    img = item["image"]
    out["image"] = [_rel(p, base_dir) for p in img] if isinstance(img, (list, tuple)) else _rel(img, base_dir)
    if item.get("label"):
        out["label"] = _rel(item["label"], base_dir)
    return {k: out[k] for k in _ITEM_KEYS if k in out}


def _volume_info(convention: str, order: tuple[str, ...]) -> dict[str, Any]:
    """The datalist keys describing BraTS/MSD volumes: the label values, regions and channel orders."""
    conv = LABEL_CONVENTIONS[convention]
    return {
        "labels": {str(k): v for k, v in conv["labels"].items()},
        "regions": {k: list(v) for k, v in conv["regions"].items()},
        "modality_order": format_modality_order(order),
        "channels": format_modality_order(MODALITIES),
    }


def build_datalist(
    data_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    layout: str = DataLayout.AUTO,
    base_dir: str | os.PathLike | None = None,
    label_convention: str | None = None,
    on_error: str = OnError.RAISE,
) -> dict[str, Any]:
    """Build a MONAI datalist (the JSON content) for a BraTS, MSD or 2D image data set.

    Args:
        data_dir: the data folder (or a 2D data set's CSV file of pairs).
        val_fraction: fraction of labeled cases for ``"validation"``.
        test_fraction: fraction of labeled cases for ``"test"`` (they keep their ``"label"``, for evaluation); not
            used when the data set gives its split.
        seed: the split seed (see :func:`split_cases`).
        layout: one of :data:`LAYOUTS` (see :func:`~medsegdiff_monai.data.layouts.find_cases`).
        base_dir: write paths relative to this folder (normally the folder of the JSON file); None writes
            absolute paths.
        label_convention: override the layout's label convention (see :func:`find_cases`).
        on_error: ``"raise"`` or ``"skip"`` cases with problems (see :func:`find_cases`).

    Returns:
        the datalist as a dict; see the module docstring for its keys.
    """
    check_fractions(val_fraction, test_fraction)
    layout_found, cases, problems, convention, order = discover_cases(data_dir, layout, label_convention)
    cases = apply_error_policy(cases, problems, on_error)
    if not cases:
        raise DataError(f"{data_dir}: no usable case left.")
    if any("split" in c for c in cases):
        split = keep_given_split(cases, val_fraction, seed)
        split_info = {"by": "given by the data set", "seed": int(seed), "val_fraction": float(val_fraction)}
    else:
        split = split_cases(cases, val_fraction, test_fraction, seed)
        split_info = {"by": "case (patient)", "seed": int(seed), "val_fraction": float(val_fraction),
                      "test_fraction": float(test_fraction)}
    base = Path(base_dir).resolve() if base_dir is not None else None
    root = data_source(data_dir)
    describe = LAYOUT_REGISTRY[layout_found].datalist_info
    from .. import __version__

    datalist: dict[str, Any] = {
        "name": f"medsegdiff-monai datalist ({layout_found})",
        "description": "BraTS brain tumour segmentation cases; keys follow monai.data.load_decathlon_datalist.",
        "generated_by": f"medsegdiff_monai {__version__}",
        "data_dir": _rel(str(root), base),
        "base_dir": "relative paths are relative to the folder of this file "
        "(monai.data.load_decathlon_datalist's default base_dir)",
        "layout": layout_found,
        "label_convention": convention,
        **(_volume_info(convention, order) if describe is None else describe(root, cases)),
        "split": split_info,
        "numTraining": len(split["training"]),
        "numValidation": len(split["validation"]),
        "numTest": len(split["test"]),
    }
    for key in ("training", "validation", "test"):
        datalist[key] = [_with_paths(c, base) for c in split[key]]
    return datalist


def _input_files(datalist: dict[str, Any], base_dir: Path | None) -> set[Path]:
    files: set[Path] = set()
    for key in ("training", "validation", "test"):
        for it in datalist.get(key, []):
            for k in ("image", "label"):
                v = it.get(k)
                for p in (v if isinstance(v, list) else [v] if v else []):
                    files.add(((base_dir / p) if base_dir is not None else Path(p)).resolve())
    return files


def write_datalist(
    data_dir: str | os.PathLike,
    output_json: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    layout: str = DataLayout.AUTO,
    label_convention: str | None = None,
    absolute_paths: bool = False,
    overwrite: bool = False,
    on_error: str = OnError.RAISE,
) -> dict[str, Any]:
    """Build the datalist of a folder (:func:`build_datalist`) and write it as JSON (4-space indent).

    Paths are relative to the JSON file's folder unless ``absolute_paths``. The data set's own files are never
    written: the output may not be one of the case files, the MSD ``dataset.json`` or the 2D CSV of pairs.

    Args:
        data_dir: the data folder (or a 2D data set's CSV file of pairs).
        output_json: where to write the datalist.
        val_fraction: see :func:`build_datalist`.
        test_fraction: see :func:`build_datalist`.
        seed: see :func:`build_datalist`.
        layout: see :func:`build_datalist`.
        label_convention: see :func:`build_datalist`.
        absolute_paths: write absolute paths.
        overwrite: replace an existing ``output_json``.
        on_error: see :func:`build_datalist`.

    Returns:
        the datalist written.

    Raises:
        FileExistsError: when ``output_json`` exists and ``overwrite`` is False.
        DataError: on data problems, or when ``output_json`` is an input file.
    """
    out = Path(output_json).expanduser().resolve()
    root = data_source(data_dir)
    if out == root:
        raise DataError(f"{out}: is the data set's CSV of pairs; write the datalist elsewhere.")
    if out.is_dir():
        raise DataError(f"{out}: is a folder; give the path of the JSON file to write.")
    if out == root / "dataset.json":
        raise DataError(f"{out}: is the data set's own dataset.json; write the datalist elsewhere.")
    base = None if absolute_paths else out.parent
    datalist = build_datalist(root, val_fraction, test_fraction, seed, layout, base, label_convention, on_error)
    if out in _input_files(datalist, base):
        raise DataError(f"{out}: is one of the data set's files; write the datalist elsewhere.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it).")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".datalist-", suffix=".json", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(datalist, f, indent=4)
            f.write("\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return datalist


def load_datalist(
    datalist_json: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Read one list of a datalist with ``monai.data.load_decathlon_datalist``, robustly.

    Two things differ from calling MONAI directly: an empty list gives ``[]`` (MONAI 1.6 raises IndexError on an
    empty ``"test"`` list), and the ``case_id``/``label_convention``/``modality_order`` fields are restored when
    MONAI has joined them with ``base_dir`` because a file of that name exists there
    (see :func:`~medsegdiff_monai.data.conventions.item_value`).

    Args:
        datalist_json: the datalist file.
        key: ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: the folder relative paths start from; None means the JSON file's folder.

    Returns:
        items with absolute (or base_dir-joined) paths.
    """
    from monai.data import load_decathlon_datalist

    path = Path(datalist_json)
    if not path.is_file():
        raise DataError(f"{path}: datalist file not found.")
    try:
        with open(path) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}).") from e
    if key not in content:
        lists = [k for k, v in content.items() if isinstance(v, list)]
        raise DataError(f"{path}: has no {key!r} list (it has {lists}).")
    if not content[key]:
        return []
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    for it in items:
        for k in _ITEM_META_KEYS:
            if k in it:
                it[k] = item_value(it[k])
    return items
