from __future__ import annotations

from .bundle import case_id_from_path, case_name_formatter, find_bundle_root, latest_checkpoint, prepare_datalist

__all__ = ["case_id_from_path", "case_name_formatter", "find_bundle_root", "latest_checkpoint", "prepare_datalist"]
