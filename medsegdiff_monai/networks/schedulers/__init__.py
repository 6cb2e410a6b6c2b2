# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Diffusion schedulers: MONAI's DDPM/DDIM with a step that is correct for any number of inference steps."""

from __future__ import annotations

from .base import RespacedSchedulerMixin
from .ddim import RespacedDDIMScheduler
from .ddpm import RespacedDDPMScheduler
from .respacing import (
    ddim_coefficients,
    ddim_update,
    next_timestep_table,
    posterior_coefficients,
    predict_x0_and_eps,
    previous_timestep_table,
    spaced_timesteps,
)

__all__ = [
    "RespacedDDIMScheduler",
    "RespacedDDPMScheduler",
    "RespacedSchedulerMixin",
    "ddim_coefficients",
    "ddim_update",
    "next_timestep_table",
    "posterior_coefficients",
    "predict_x0_and_eps",
    "previous_timestep_table",
    "spaced_timesteps",
]
