from __future__ import annotations

from .enums import look_up_named_option
from .bundle import case_id_from_path, case_name_formatter, find_bundle_root, latest_checkpoint, prepare_datalist

__all__ = [
    "look_up_named_option",
    "case_id_from_path", "case_name_formatter", "find_bundle_root", "latest_checkpoint", "prepare_datalist"]
