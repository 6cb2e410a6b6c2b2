from __future__ import annotations

from .enums import DataLayout, OnError, TimestepSampling, look_up_named_option
from .checkpoint import CheckpointError, check_checkpoint, load_checkpoint
from .checkpoint_lookup import latest_checkpoint
from .data_preparation import prepare_datalist
from .distributed import barrier, is_rank0
from .malloc import keep_freed_memory
from .precision import AUTO_GIVE_UP_RATIO, AUTO_MIN_SPEEDUP, bfloat16_kernels_available, time_autocast

__all__ = [
    "AUTO_GIVE_UP_RATIO",
    "AUTO_MIN_SPEEDUP",
    "CheckpointError",
    "DataLayout",
    "OnError",
    "TimestepSampling",
    "barrier",
    "bfloat16_kernels_available",
    "check_checkpoint",
    "is_rank0",
    "keep_freed_memory",
    "latest_checkpoint",
    "load_checkpoint",
    "look_up_named_option",
    "prepare_datalist",
    "time_autocast",
]
