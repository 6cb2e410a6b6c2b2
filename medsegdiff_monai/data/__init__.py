# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""BraTS / MSD Task01 and 2D image-folder data: layouts and case discovery, case ids, splits, datalists, checks and
the demo data sets."""

from __future__ import annotations

from .case_ids import (
    brats_file_name,
    case_id_from_path,
    case_name_formatter,
    parse_brats_file_name,
    strip_nifti_suffix,
)
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
from .datalist import build_datalist, load_datalist, write_datalist
from .demo import DEMO_LAYOUTS, make_demo_case, make_demo_data
from .demo_image2d import make_demo_image, make_demo_images
from .image2d_layout import (
    IMAGE2D_LAYOUT,
    MASK_SUFFIXES,
    image2d_cases,
    image2d_datalist_info,
    is_image_source,
    is_pairs_csv,
    read_pairs_csv,
)
from .image_files import (
    IMAGE_SUFFIXES,
    ConvertImageMode,
    image_pair_problems,
    inspect_image,
    is_image_name,
)
from .image_writer import AtomicNibabelWriter, AtomicPILWriter
from .layout_base import Layout, LayoutCases
from .layouts import (
    LAYOUT_REGISTRY,
    LAYOUTS,
    DiscoveredCases,
    available_layouts,
    data_source,
    detect_layout,
    discover_cases,
    find_cases,
    register_layout,
)
from .nifti import (
    NiftiInfo,
    case_file_problems,
    inspect_nifti,
    is_nifti_name,
    read_nifti,
)
from .problems import apply_error_policy, problem_summary
from .splits import keep_given_split, split_cases

__all__ = [
    "AtomicNibabelWriter",
    "AtomicPILWriter",
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
    "LAYOUT_REGISTRY",
    "Layout",
    "LayoutCases",
    "DiscoveredCases",
    "register_layout",
    "available_layouts",
    "data_source",
    "detect_layout",
    "discover_cases",
    "find_cases",
    "apply_error_policy",
    "problem_summary",
    "split_cases",
    "keep_given_split",
    "brats_file_name",
    "case_id_from_path",
    "case_name_formatter",
    "parse_brats_file_name",
    "strip_nifti_suffix",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "make_demo_case",
    "make_demo_data",
    "make_demo_image",
    "make_demo_images",
    "IMAGE2D_LAYOUT",
    "MASK_SUFFIXES",
    "image2d_cases",
    "image2d_datalist_info",
    "is_image_source",
    "is_pairs_csv",
    "read_pairs_csv",
    "IMAGE_SUFFIXES",
    "ConvertImageMode",
    "image_pair_problems",
    "inspect_image",
    "is_image_name",
    "NiftiInfo",
    "case_file_problems",
    "inspect_nifti",
    "is_nifti_name",
    "read_nifti",
    "check_case",
    "check_dataset",
]
