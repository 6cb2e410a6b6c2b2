# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Label conventions, modality names and the error type shared by the data and transform modules.

The BraTS challenges (2018-2022) label a case with 0 background, 1 necrotic/non-enhancing tumour core,
2 peritumoral edema, 4 GD-enhancing tumour. The Medical Segmentation Decathlon Task01_BrainTumour relabels the
same classes as 1 edema, 2 non-enhancing tumour, 3 enhancing tumour. BraTS 2023 uses 3 for the enhancing tumour.
All of them are scored on the nested regions whole tumour (WT), tumour core (TC) and enhancing tumour (ET).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..utils.enums import look_up_named_option

__all__ = [
    "DataError",
    "MODALITIES",
    "MSD_MODALITY_ORDER",
    "LABEL_CONVENTIONS",
    "REGION_SETS",
    "canonical_modality",
    "parse_modality_order",
    "format_modality_order",
    "region_names",
    "region_label_values",
    "allowed_label_values",
    "item_value",
]


class DataError(ValueError):
    """A problem with the input data (a file, a case or a folder). The message names it and says what is wrong."""


#: the channel order of every image this package produces
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: the order of the four volumes inside an MSD Task01_BrainTumour 4D image ("0": FLAIR, "1": T1w, "2": t1gd, "3": T2w)
MSD_MODALITY_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

# spellings of the modalities in the BraTS file names, MSD's dataset.json and BraTS 2023 (t1n, t1c, t2w, t2f)
_MODALITY_ALIASES: dict[str, str] = {
    "t1": "t1",
    "t1w": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1-ce": "t1ce",
    "t1-gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
    "t2-flair": "flair",
}

#: label value -> meaning, and region -> label values, per convention
LABEL_CONVENTIONS: dict[str, dict[str, Any]] = {
    "brats": {
        "labels": {0: "background", 1: "necrotic and non-enhancing tumour core", 2: "peritumoral edema",
                   4: "GD-enhancing tumour"},
        "regions": {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)},
    },
    "msd": {
        "labels": {0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        "regions": {"wt": (1, 2, 3), "tc": (2, 3), "et": (3,)},
    },
    "brats2023": {
        "labels": {0: "background", 1: "necrotic tumour core", 2: "peritumoral edema", 3: "GD-enhancing tumour"},
        "regions": {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)},
    },
}

#: named region sets: "wt" is the paper's binary whole-tumour task; "wt_tc_et" is the BraTS scoring order
REGION_SETS: dict[str, tuple[str, ...]] = {"wt": ("wt",), "wt_tc_et": ("wt", "tc", "et")}


def item_value(value: Any) -> Any:
    """Undo MONAI's path joining on a string-valued datalist field.

    ``monai.data.load_decathlon_datalist`` joins *every* string field of an item with ``base_dir`` when the joined
    path happens to exist: a ``"case_id": "BraTS2021_00000"`` becomes ``"/data/BraTS2021_00000"`` when the
    datalist JSON sits in the data folder, and ``"label_convention": "brats"`` becomes a path when a folder
    ``brats`` lies beside the JSON. The values this package writes never contain a path separator, so the last
    path component is the original value.

    Args:
        value: a field of a datalist item (anything; only strings with a separator are changed).

    Returns:
        the value, with a joined path reduced to its last component.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and ("/" in value or os.sep in value):
        return os.path.basename(os.path.normpath(value))
    return value


def canonical_modality(name: str) -> str:
    """Map a modality spelling (``"T1w"``, ``"t1gd"``, ``"FLAIR"``, ``"t2f"``...) to one of :data:`MODALITIES`.

    Args:
        name: the modality name as found in a file name or dataset.json.

    Raises:
        ValueError: when the name is not a known spelling.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _MODALITY_ALIASES:
        raise ValueError(f"unknown modality {name!r}; known: {sorted(set(_MODALITY_ALIASES))}.")
    return _MODALITY_ALIASES[key]


def parse_modality_order(order: str | Sequence[str]) -> tuple[str, ...]:
    """Parse a modality order given as ``"flair,t1,t1ce,t2"`` or a sequence of names into canonical names.

    Args:
        order: comma-separated string or sequence of modality names.

    Raises:
        ValueError: on an unknown or repeated modality.
    """
    order = item_value(order)
    names = [s for s in order.split(",")] if isinstance(order, str) else list(order)
    result = tuple(canonical_modality(n) for n in names if str(n).strip())
    if len(set(result)) != len(result):
        raise ValueError(f"modality order {order!r} names a modality twice.")
    if not result:
        raise ValueError("modality order is empty.")
    return result


def format_modality_order(order: Sequence[str]) -> str:
    """The datalist spelling of a modality order: canonical names joined by commas, e.g. ``"t1,t1ce,t2,flair"``."""
    return ",".join(parse_modality_order(order))


def _convention(name: str) -> dict[str, Any]:
    key = str(item_value(name)).strip().lower()
    return LABEL_CONVENTIONS[look_up_named_option("label_convention", key, LABEL_CONVENTIONS)]


def region_names(regions: str | Sequence[str]) -> tuple[str, ...]:
    """Resolve a region set (``"wt"``, ``"wt_tc_et"``) or a sequence of region names (``["wt", "et"]``).

    Args:
        regions: a key of :data:`REGION_SETS` or a sequence of ``"wt"``, ``"tc"``, ``"et"``.

    Raises:
        ValueError: on an unknown region.
    """
    if isinstance(regions, str):
        key = regions.strip().lower()
        if key in REGION_SETS:
            return REGION_SETS[key]
        names: Sequence[str] = [r for r in key.replace("+", ",").split(",") if r]
    else:
        names = [str(r).strip().lower() for r in regions]
    valid = ("wt", "tc", "et")
    bad = [r for r in names if r not in valid]
    if bad or not names:
        raise ValueError(
            f"unknown regions {regions!r}; use one of {sorted(REGION_SETS)} or a list of {list(valid)}."
        )
    return tuple(names)


def region_label_values(convention: str, region: str) -> tuple[int, ...]:
    """The label values that make up ``region`` (``"wt"``, ``"tc"`` or ``"et"``) under ``convention``."""
    return tuple(_convention(convention)["regions"][region])


def allowed_label_values(convention: str) -> tuple[int, ...]:
    """All label values a segmentation may contain under ``convention`` (background included)."""
    return tuple(sorted(_convention(convention)["labels"]))
