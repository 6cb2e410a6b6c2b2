from __future__ import annotations

from .checkpoint_saver import ResumableCheckpointSaver
from .nan_guard import NaNLossGuard, NonFiniteLossError

__all__ = ["NaNLossGuard", "NonFiniteLossError", "ResumableCheckpointSaver"]
