from __future__ import annotations

from .enums import DataLayout, OnError, look_up_named_option
from .bundle import find_bundle_root, latest_checkpoint, prepare_datalist
from .checkpoint import CheckpointError, check_checkpoint, load_checkpoint
from .precision import AUTO_MIN_SPEEDUP, time_autocast

__all__ = [
    "AUTO_MIN_SPEEDUP",
    "CheckpointError",
    "DataLayout",
    "OnError",
    "check_checkpoint",
    "find_bundle_root",
    "latest_checkpoint",
    "load_checkpoint",
    "look_up_named_option",
    "prepare_datalist",
    "time_autocast",
]
