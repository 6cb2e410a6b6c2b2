from __future__ import annotations

from .nan_guard import NaNLossGuard, NonFiniteLossError

__all__ = ["NaNLossGuard", "NonFiniteLossError"]
