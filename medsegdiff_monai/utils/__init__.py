from __future__ import annotations

from .bundle import find_bundle_root, latest_checkpoint

__all__ = ["find_bundle_root", "latest_checkpoint"]
