from __future__ import annotations

from .checkpoint_loader import CheckedCheckpointLoader
from .checkpoint_saver import AtomicCheckpointSaver, ResumableCheckpointSaver
from .metrics import PhysicalHausdorffDistance, RegionMetricsSaver
from .nan_guard import NaNLossGuard, NonFiniteLossError
from .progress import ProgressLogger

__all__ = [
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "NaNLossGuard",
    "NonFiniteLossError",
    "PhysicalHausdorffDistance",
    "ProgressLogger",
    "RegionMetricsSaver",
    "ResumableCheckpointSaver",
]
