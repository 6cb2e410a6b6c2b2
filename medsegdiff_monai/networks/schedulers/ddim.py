# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""DDIM scheduler whose step pairs each visited timestep with the next visited one."""

from __future__ import annotations

import torch

from monai.networks.schedulers import DDIMScheduler

from .base import RespacedSchedulerMixin, _work_dtype
from .respacing import ddim_coefficients, predict_x0_and_eps

__all__ = ["RespacedDDIMScheduler"]


class RespacedDDIMScheduler(RespacedSchedulerMixin, DDIMScheduler):
    """:class:`monai.networks.schedulers.DDIMScheduler` whose ``step`` goes to the next entry of ``timesteps``.

    Written because MONAI 1.6.1's ``DDIMScheduler.step`` jumps to ``t - num_train_timesteps // num_inference_steps``
    while its ``set_timesteps`` visits ``linspace(T - 1, 0, n).round()``: for n = 10 of 1000 it goes 999 -> 899
    while the next call is at 888, so every step leaves the sample at a different noise level than the one the
    network is told next, and the last step starts from level 99 but jumps to 0 from 0.

    Here the update goes from ``timestep`` (level ``a_t``) to the next visited timestep ``s`` (``a_s``; after the
    last, ``final_alpha_cumprod``, 1 by default) with DDIM's eq. 12/16::

        sigma = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)
        x_s   = sqrt(a_s) * x0 + sqrt(1 - a_s - sigma^2) * eps + sigma * z

    ``eta = 0`` is deterministic DDIM, ``eta = 1`` the respaced ancestral (DDPM) posterior. With ``clip_sample``
    the noise ``eps`` is recomputed from the clipped x0 and x_t (guided-diffusion's rule; MONAI keeps the raw one,
    which re-adds the network's noise bias at every step, see :mod:`~medsegdiff_monai.networks.schedulers.respacing`),
    so ``eta = 1`` equals :class:`RespacedDDPMScheduler` exactly, clipping or not. Other deliberate
    differences from MONAI: ``alphas_cumprod`` stays float32; the lookup is a tensor gather (no host
    synchronisation) and ``timestep`` may be an int, a 0-d/(1,) tensor or a (B,) tensor. With every training step
    visited it is MONAI's update. It remains a drop-in
    for :meth:`monai.inferers.DiffusionInferer.sample`. Constructor arguments are those of
    :class:`monai.networks.schedulers.DDIMScheduler`.

    Args:
        num_train_timesteps: number of diffusion steps used to train the model.
        schedule: member of ``monai.networks.schedulers.NoiseSchedules``, e.g. "linear_beta", "cosine".
        clip_sample: clip the predicted x0 to ``[clip_sample_min, clip_sample_max]``.
        set_alpha_to_one: after the last visited step use ``alpha_bar = 1`` (else ``alpha_bar_0``).
        steps_offset: offset added to the visited timesteps.
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_sample_min: lower clipping value.
        clip_sample_max: upper clipping value.
        schedule_args: arguments of the schedule function (``beta_start``, ``beta_end``, ...).
    """

    def _final_alpha_cumprod(self) -> torch.Tensor:
        return torch.as_tensor(self.final_alpha_cumprod)

    def _predict(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, direction: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
        wd = _work_dtype(sample.dtype)
        a_t, a_to, _ = self._alphas_at(timestep, sample, direction=direction)
        x0, eps = predict_x0_and_eps(
            model_output.to(wd), sample.to(wd), a_t, self.prediction_type, self._clip_range()
        )
        return x0, eps, a_t, a_to, wd

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step from ``timestep`` to the next visited timestep.

        Args:
            model_output: network output (noise, sample or velocity), (B, C, *spatial).
            timestep: current timestep: int, 0-d/(1,) tensor, or (B,) tensor.
            sample: current noisy sample x_t, (B, C, *spatial).
            eta: stochasticity, >= 0 (0: deterministic DDIM, 1: ancestral DDPM posterior).
            generator: random generator for the added noise (on ``sample.device``).

        Returns:
            ``(x_s, x0_pred)``, both (B, C, *spatial) in ``sample.dtype``.

        Raises:
            ValueError: if ``eta`` is negative.
        """
        if eta < 0:
            raise ValueError(f"`eta` must be >= 0, got {eta}.")
        x0, eps, a_t, a_s, wd = self._predict(model_output, timestep, sample, "prev")
        c_x0, c_eps, sigma = ddim_coefficients(a_t, a_s, eta)
        noise = None
        if eta > 0:
            noise = torch.randn(sample.shape, dtype=wd, device=sample.device, generator=generator)
        prev_sample = c_x0 * x0 + c_eps * eps  # eps is recomputed from x0 when x0 was clipped
        if noise is not None:
            prev_sample = prev_sample + sigma * noise
        return prev_sample.to(sample.dtype), x0.to(sample.dtype)

    def reversed_step(  # type: ignore[override]
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic DDIM inversion step from ``timestep`` to the next *higher* visited timestep.

        MONAI's version has the same fixed-stride problem as its ``step``; this one uses the visited timesteps
        (at the highest visited timestep it stays at that level).

        Args:
            model_output: network output at ``timestep``, (B, C, *spatial).
            timestep: current timestep.
            sample: current sample, (B, C, *spatial).

        Returns:
            ``(x_next, x0_pred)``, both (B, C, *spatial) in ``sample.dtype``.
        """
        x0, eps, _, a_n, _ = self._predict(model_output, timestep, sample, "next")
        post_sample = a_n.sqrt() * x0 + (1.0 - a_n).sqrt() * eps
        return post_sample.to(sample.dtype), x0.to(sample.dtype)
