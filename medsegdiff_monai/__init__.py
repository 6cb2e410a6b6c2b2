# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MedSegDiff (Wu et al., arXiv 2211.00611) as MONAI components: networks, diffusion inferer, BraTS data."""

from __future__ import annotations

__version__ = "0.1.0"

from . import data, engines, handlers, inferers, losses, networks, transforms, utils, visualize  # noqa: E402

__all__ = [
    "data", "engines", "handlers", "inferers", "losses", "networks", "transforms", "utils", "visualize", "__version__"
]
