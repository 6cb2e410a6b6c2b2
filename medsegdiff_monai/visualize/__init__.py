# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Pictures of cases for a person to look at: slice selection, display orientation and PNG overlays.

Kept apart from the transforms, as MONAI keeps ``monai.visualize`` apart from ``monai.transforms``: the functions
here take numpy arrays; :class:`~medsegdiff_monai.transforms.SaveOverlayd` reads a case's data and calls them.
"""

from __future__ import annotations

from .overlay import (
    DisplayPlan,
    choose_slices,
    display_plan,
    import_matplotlib,
    intensity_window,
    orient_slice,
    render_overlay,
    select_slices,
    slice_dice,
)

__all__ = [
    "DisplayPlan",
    "choose_slices",
    "display_plan",
    "import_matplotlib",
    "intensity_window",
    "orient_slice",
    "render_overlay",
    "select_slices",
    "slice_dice",
]
