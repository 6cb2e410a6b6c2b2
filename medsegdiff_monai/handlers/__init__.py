from __future__ import annotations

from .case_ids import CaseIds
from .checkpoint_loader import CheckedCheckpointLoader
from .checkpoint_saver import AtomicCheckpointSaver, ResumableCheckpointSaver
from .metrics import PhysicalHausdorffDistance, RegionMetricsSaver
from .nan_guard import NaNLossGuard, NonFiniteLossError
from .progress import ProgressLogger

__all__ = [
    "AtomicCheckpointSaver",
    "CaseIds",
    "CheckedCheckpointLoader",
    "NaNLossGuard",
    "NonFiniteLossError",
    "PhysicalHausdorffDistance",
    "ProgressLogger",
    "RegionMetricsSaver",
    "ResumableCheckpointSaver",
]
