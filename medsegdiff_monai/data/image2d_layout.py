# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The 2D image-folder layout: photographs, fundus or ultrasound images with one mask image each.

The layout of ISIC (dermoscopy), REFUGE-2 (fundus) and DDTI (thyroid ultrasound) style data sets: images and
masks in two folders, paired by file name, or an explicit CSV of pairs. Accepted forms of the data source:

- a folder holding an image folder and a mask folder::

      images/ISIC_0000000.jpg     masks/ISIC_0000000_segmentation.png
      images/g0001.jpg            masks/g0001.bmp

  Image folders are named like ``images``, ``img``, ``*_Data``, ``*_Input``; mask folders like ``masks``,
  ``labels``, ``gt``, ``*_GroundTruth``, ``annotations``, ``segmentations`` (case-insensitive). Files are found
  in subfolders too (e.g. REFUGE's ``Glaucoma/`` and ``Non-Glaucoma/``). A mask belongs to the image with its
  stem, with or without one of :data:`MASK_SUFFIXES` (``_mask``, ``_segmentation``, ``_Segmentation``, ``_gt``...).
- an existing split kept as it is: subfolders ``train/``, ``val/``, ``test/`` (or ``training``,
  ``validation``, ``testing``), each with an image and a mask folder; or image and mask folders whose names
  carry the split, as ISIC 2018 ships them (``ISIC2018_Task1-2_Training_Input`` with
  ``ISIC2018_Task1_Training_GroundTruth``, ``..._Validation_Input`` with ``..._Validation_GroundTruth``). The
  cases then carry a ``"split"`` that :func:`~medsegdiff_monai.data.splits.keep_given_split` keeps.
- a folder of images only (no mask folder): unlabeled images, for inference.
- a CSV file with columns ``image`` and ``mask`` (or ``label``), optionally ``case_id`` and ``split``
  (``training``/``validation``/``test``, or ``train``/``val``/``test``); paths relative to the CSV's folder; an
  empty mask is an unlabeled image.

The case id is the image's file stem (:func:`~medsegdiff_monai.data.case_ids.case_id_from_path`) and must be
unique. Masks are read as they are (binary or one value per class); the bundle's ``image2d.json`` says how their
values map to classes. Reading a source checks names and image headers (size, readability), never the pixels.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from ..utils.enums import DataLayout
from .case_ids import case_id_from_path
from .conventions import DataError
from .image_files import IMAGE_SUFFIXES, image_pair_problems, is_image_name
from .layout_base import Layout, LayoutCases

__all__ = [
    "IMAGE2D_LAYOUT",
    "MASK_SUFFIXES",
    "image2d_cases",
    "image2d_datalist_info",
    "is_image_source",
    "is_pairs_csv",
    "read_pairs_csv",
]

#: suffixes of a mask's stem that pair it with the image of the stem without it (matching is case-insensitive)
MASK_SUFFIXES: tuple[str, ...] = (
    "_segmentation", "_mask", "_masks", "_seg", "_gt", "_label", "_labels", "_anno", "_annotation", "-mask",
)

#: the ``label_convention`` of 2D cases: mask values are mapped to classes by the bundle (``mask_classes``)
IMAGE2D_CONVENTION = "image2d"

_MASK_DIR = re.compile(r"mask|label|groundtruth|ground[_ -]truth|annotation|segmentation|^gts?$|_gt$|^seg$",
                       re.IGNORECASE)
_IMAGE_DIR = re.compile(r"image|img|input|photo|^data$|_data$", re.IGNORECASE)
_SPLITS = (("test", re.compile(r"(^|[^a-z])test(ing)?([^a-z]|$)")),
           ("validation", re.compile(r"(^|[^a-z])val(id|idation)?([^a-z]|$)")),
           ("training", re.compile(r"(^|[^a-z])train(ing)?([^a-z]|$)")))
_SPLIT_NAMES = {"training": "training", "train": "training", "validation": "validation", "val": "validation",
                "valid": "validation", "test": "test", "testing": "test"}
_CSV_IMAGE, _CSV_MASK = ("image",), ("mask", "label")
_EXPECTED = (
    "Expected an image folder and a mask folder (e.g. images/ and masks/, or ISIC's *_Data and *_GroundTruth) "
    "with masks named like their images (same stem, or with _mask, _segmentation, _gt ...), train/ and test/ "
    "subfolders holding such folders, a folder of images only, or a CSV file of pairs (columns image,mask)."
)


def _stem(path: Path) -> str:
    """A file's name without its extension (for images, their case id: :func:`case_id_from_path`)."""
    return path.name[: len(path.name) - len(path.suffix)]


def _mask_stem(stem: str) -> str | None:
    """The image stem a mask stem points to when it ends in a mask suffix, else None."""
    low = stem.lower()
    for suffix in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if is_image_name(f)]
    return found


def _split_of(name: str) -> str | None:
    low = name.lower()
    return next((split for split, pattern in _SPLITS if pattern.search(low)), None)


def _kind(folder: Path) -> str | None:
    """"mask", "image" or None, from a folder's name."""
    if _MASK_DIR.search(folder.name):
        return "mask"
    return "image" if _IMAGE_DIR.search(folder.name) else None


def is_pairs_csv(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a CSV file (a list of image/mask pairs)."""
    path = Path(source).expanduser()
    return path.suffix.lower() == ".csv" and path.is_file()


def _holds_images(folder: Path, depth: int = 2) -> bool:
    """Whether ``folder`` or its subfolders down to ``depth`` levels hold an image file (stops at the first)."""
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError:
        return False
    if any(e.is_file() and is_image_name(e.name) for e in entries):
        return True
    return depth > 1 and any(e.is_dir() and _holds_images(Path(e.path), depth - 1) for e in entries)


def _is_image_root(folder: Path) -> bool:
    """An image folder that holds images, or an image folder next to a mask folder (empty or not)."""
    subdirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    images = [d for d in subdirs if _kind(d) == "image"]
    return any(_holds_images(d) for d in images) or bool(images and any(_kind(d) == "mask" for d in subdirs))


def is_image_source(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a 2D image data set: a CSV of pairs, a folder with an image folder (holding images, or
    next to a mask folder), split folders holding one, or image files directly. Never raises."""
    try:
        path = Path(source).expanduser()
        if is_pairs_csv(path):
            return True
        if not path.is_dir():
            return False
        if _is_image_root(path):
            return True
        subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if any(_split_of(d.name) and _is_image_root(d) for d in subdirs):
            return True
        return any(f.is_file() and is_image_name(f.name) for f in path.iterdir())
    except OSError:
        return False


def _folder_groups(root: Path, split: str | None = None) -> list[tuple[str | None, Path, Path | None]]:
    """(split, image folder, mask folder or None) of a data folder; see the module docstring."""
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    images = [d for d in subdirs if _kind(d) == "image"]
    masks = [d for d in subdirs if _kind(d) == "mask"]
    if images:
        groups, used = [], set()
        for img in images:
            tag = _split_of(img.name) or split
            same = [m for m in masks if (_split_of(m.name) or split) == tag]
            if not same and len(images) == 1 and len(masks) == 1:  # one of each: a pair whatever their names
                same = masks
            if len(same) > 1:
                raise DataError(f"{root}: image folder {img.name} could pair with mask folders "
                                f"{', '.join(m.name for m in same)}; keep one, or list the pairs in a CSV file.")
            groups.append((tag, img, same[0] if same else None))
            used.update(same)
        tags = [g[0] for g in groups]
        if len(set(tags)) < len(tags):
            raise DataError(f"{root}: several image folders ({', '.join(g[1].name for g in groups)}) for the same "
                            "split; keep one per split, or list the pairs in a CSV file.")
        for m in masks:
            if m not in used:
                raise DataError(f"{m}: mask folder without an image folder of the same split; "
                                f"image folders: {', '.join(i.name for i in images)}.")
        return groups
    if split is None:
        nested = [(d, _split_of(d.name)) for d in subdirs if _split_of(d.name)]
        groups = [g for d, tag in nested if any(_kind(s) == "image" for s in d.iterdir() if s.is_dir())
                  for g in _folder_groups(d, tag)]
        if groups:
            return groups
    if any(f.is_file() and is_image_name(f.name) for f in root.iterdir()):
        return [(split, root, None)]
    raise DataError(f"{root}: no images found. {_EXPECTED}")


def _pair_group(split: str | None, image_dir: Path, mask_dir: Path | None,
                problems: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Pair the files of one image folder with those of its mask folder; problems are added by case id."""
    image_files = _image_files(image_dir)
    if mask_dir is None:  # one folder: masks may lie next to their images (ISIC_0000000_segmentation.png)
        stems = {_stem(f) for f in image_files}
        mask_files = [f for f in image_files if _mask_stem(_stem(f)) in stems]
        image_files = [f for f in image_files if f not in mask_files]
    else:
        mask_files = _image_files(mask_dir)
    if not image_files:
        raise DataError(f"{image_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this image folder.")
    if mask_dir is not None and not mask_files:
        raise DataError(f"{mask_dir}: no mask files ({', '.join(IMAGE_SUFFIXES)}) in this mask folder.")
    by_stem: dict[str, Path] = {}
    for f in image_files:
        stem = case_id_from_path(f)
        if stem in by_stem:
            problems.setdefault(stem, []).append(f"two images with the stem {stem!r}: {by_stem[stem]} and {f}; "
                                                 "case ids must be unique (rename one or use a CSV with case_id).")
        else:
            by_stem[stem] = f
    mask_of: dict[str, Path] = {}
    for f in mask_files:
        stem = _stem(f)
        target = stem if stem in by_stem else _mask_stem(stem)
        if target is None or target not in by_stem:
            looked = f"{stem}.*" if target is None else f"{stem}.* or {target}.*"
            problems.setdefault(stem, []).append(f"mask {f} has no image: no {looked} in {image_dir}.")
        elif target in mask_of:
            problems.setdefault(target, []).append(f"two masks for image {by_stem[target]}: {mask_of[target]} "
                                                   f"and {f}; keep one.")
        else:
            mask_of[target] = f
    cases = []
    for stem, f in sorted(by_stem.items()):
        item: dict[str, Any] = {"case_id": stem, "image": str(f)}
        if stem in mask_of:
            item["label"] = str(mask_of[stem])
        elif mask_dir is not None:
            problems.setdefault(stem, []).append(
                f"image {f} has no mask: no {stem}.* or {stem}{{{','.join(MASK_SUFFIXES[:3])},...}}.* in {mask_dir}.")
        if split is not None:
            item["split"] = split
        cases.append(item)
    return cases


def read_pairs_csv(csv_file: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Read a CSV of image/mask pairs (see the module docstring).

    Args:
        csv_file: the CSV file; relative paths in it start from its folder.

    Returns:
        ``(cases, problems)``: items ``{"case_id", "image", "label" (if any), "split" (if given)}`` with absolute
        paths, and the problems by case id (missing files, unknown split names, repeated ids).

    Raises:
        DataError: when the file cannot be read, has no image column or no rows.
    """
    path = Path(csv_file).expanduser().resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e}).") from e
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else []) if c}
    image_col = next((columns[c] for c in _CSV_IMAGE if c in columns), None)
    mask_col = next((columns[c] for c in _CSV_MASK if c in columns), None)
    if not rows or image_col is None:
        raise DataError(f"{path}: expected a header row with the columns image and mask (or label), optionally "
                        f"case_id and split, and one row per image; found columns {sorted(columns)} and "
                        f"{len(rows)} row(s).")
    cases, problems = [], {}
    for n, row in enumerate(rows, start=2):
        image = (row.get(image_col) or "").strip()
        if not image:
            problems.setdefault(f"row {n}", []).append(f"{path}, row {n}: empty image path.")
            continue
        image_path = (path.parent / image).resolve()
        cid = (row.get(columns.get("case_id", ""), "") or "").strip() or case_id_from_path(image_path)
        item: dict[str, Any] = {"case_id": cid, "image": str(image_path)}
        mask = (row.get(mask_col) or "").strip() if mask_col else ""
        if mask:
            item["label"] = str((path.parent / mask).resolve())
        split = (row.get(columns.get("split", ""), "") or "").strip().lower()
        if split:
            if split not in _SPLIT_NAMES:
                problems.setdefault(cid, []).append(f"{path}, row {n}: unknown split {split!r} (use training, "
                                                    "validation or test).")
            else:
                item["split"] = _SPLIT_NAMES[split]
        for key in ("image", "label"):
            if key in item and not os.path.isfile(item[key]):
                problems.setdefault(cid, []).append(f"{path}, row {n}: {key} file {item[key]} not found.")
        cases.append(item)
    return cases, problems




def image2d_cases(source: Path, label_convention: str | None = None) -> LayoutCases:
    """The cases of a 2D image data set (folder or CSV), with their names and image headers checked.

    Args:
        source: the data folder or a CSV file of pairs.
        label_convention: not used (mask values are mapped to classes by the bundle); accepted for the
            :class:`~medsegdiff_monai.data.layout_base.Layout` interface.

    Returns:
        items ``{"case_id", "image", "label" (labeled images), "split" (when the folders or the CSV give one)}``
        with absolute paths, sorted by case id, and the problems by case id (unpaired images and masks, repeated
        stems, unreadable files, masks of another size than their image).

    Raises:
        DataError: when the source holds no images, or its folders cannot be paired.
    """
    if is_pairs_csv(source):
        cases, problems = read_pairs_csv(source)
    else:
        problems = {}
        cases = [c for group in _folder_groups(source) for c in _pair_group(*group, problems)]
    for c in cases:
        if not problems.get(c["case_id"]):
            found = image_pair_problems(c)  # headers: size and readability
            if found:
                problems[c["case_id"]] = found
    return LayoutCases(sorted(cases, key=lambda c: c["case_id"]), problems, IMAGE2D_CONVENTION, ())


def image2d_datalist_info(source: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level keys of a 2D data set's datalist: what it holds, how it was read and its image channels.

    Args:
        source: the data folder or CSV file.
        cases: the cases written.

    Returns:
        ``{"description", "source": "folders" | "csv", "channels": "rgb" | "grey" | "mixed"}``.
    """
    from PIL import Image

    modes = set()
    for c in cases:
        with Image.open(c["image"]) as im:
            modes.add("rgb" if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV") else "grey")
    return {
        "description": "2D images with one mask image each; keys follow monai.data.load_decathlon_datalist.",
        "source": "csv" if is_pairs_csv(source) else "folders",
        "channels": modes.pop() if len(modes) == 1 else "mixed",
    }


#: the 2D image-folder layout, as registered in :mod:`medsegdiff_monai.data.layouts`
IMAGE2D_LAYOUT = Layout(
    str(DataLayout.IMAGE2D),
    detect=is_image_source,
    discover=image2d_cases,
    priority=30,  # after MSD and the named BraTS releases, before the catch-all BraTS layout
    description="a 2D image data set (images/ and masks/ folders paired by name, e.g. ISIC_0000000.jpg with "
    "ISIC_0000000_segmentation.png, or a CSV file of image,mask pairs)",
    accepts_file=True,
    datalist_info=image2d_datalist_info,
)
