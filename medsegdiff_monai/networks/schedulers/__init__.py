# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Diffusion schedulers and samplers: MONAI's DDPM/DDIM with a step that is correct for any number of inference
steps, and :class:`DiffusionSampler`, the one sampling schedule (DDPM, DDIM, DPM-Solver++) of every sampling path."""

from __future__ import annotations

from .base import RespacedSchedulerMixin
from .ddim import RespacedDDIMScheduler
from .ddpm import RespacedDDPMScheduler
from .respacing import (
    ddim_coefficients,
    dpm_solver_pp_2m_coefficients,
    next_timestep_table,
    posterior_coefficients,
    predict_x0_and_eps,
    previous_timestep_table,
    spaced_timesteps,
    update_coefficients,
)
from .sampler import DiffusionSampler, SamplerType, x0_convention

__all__ = [
    "DiffusionSampler",
    "SamplerType",
    "RespacedDDIMScheduler",
    "RespacedDDPMScheduler",
    "RespacedSchedulerMixin",
    "ddim_coefficients",
    "dpm_solver_pp_2m_coefficients",
    "next_timestep_table",
    "posterior_coefficients",
    "predict_x0_and_eps",
    "previous_timestep_table",
    "spaced_timesteps",
    "update_coefficients",
    "x0_convention",
]
