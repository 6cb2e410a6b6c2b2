# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""BraTS / MSD Task01 datalists, data checks and the synthetic demo data set."""

from __future__ import annotations

from .checks import check_case, check_dataset
from .conventions import (
    LABEL_CONVENTIONS,
    MODALITIES,
    MSD_MODALITY_ORDER,
    REGION_SETS,
    DataError,
    allowed_label_values,
    canonical_modality,
    format_modality_order,
    item_value,
    parse_modality_order,
    region_label_values,
    region_names,
)
from .datalist import LAYOUTS, build_datalist, detect_layout, find_cases, load_datalist, split_cases, write_datalist
from .demo import DEMO_LAYOUTS, make_demo_case, make_demo_data
from .image_writer import AtomicNibabelWriter
from .nifti import NiftiInfo, case_file_problems, inspect_nifti, is_nifti_name, read_nifti

__all__ = [
    "AtomicNibabelWriter",
    "DataError",
    "LABEL_CONVENTIONS",
    "MODALITIES",
    "MSD_MODALITY_ORDER",
    "REGION_SETS",
    "LAYOUTS",
    "DEMO_LAYOUTS",
    "allowed_label_values",
    "canonical_modality",
    "format_modality_order",
    "item_value",
    "parse_modality_order",
    "region_label_values",
    "region_names",
    "detect_layout",
    "find_cases",
    "split_cases",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "make_demo_case",
    "make_demo_data",
    "NiftiInfo",
    "case_file_problems",
    "inspect_nifti",
    "is_nifti_name",
    "read_nifti",
    "check_case",
    "check_dataset",
]
