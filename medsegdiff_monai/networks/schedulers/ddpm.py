# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""DDPM scheduler whose ancestral step is correct for any number of inference steps."""

from __future__ import annotations

import torch

from monai.networks.schedulers import DDPMScheduler
from monai.networks.schedulers.ddpm import DDPMVarianceType

from .base import RespacedSchedulerMixin, _work_dtype
from .respacing import posterior_coefficients, predict_x0_and_eps

__all__ = ["RespacedDDPMScheduler"]


class RespacedDDPMScheduler(RespacedSchedulerMixin, DDPMScheduler):
    """:class:`monai.networks.schedulers.DDPMScheduler` with a respaced ancestral ``step``.

    Written because MONAI 1.6.1's ``DDPMScheduler.step`` always uses ``alpha_bar_{t-1}`` and ``beta_t`` (a step
    from t to t - 1) whatever ``set_timesteps`` chose: with 100 of 1000 steps, every update removes 1/10 of the
    noise it should, and the network then sees samples far noisier than the level it is told.

    Here ``step`` goes from ``timestep`` to the *next visited* timestep ``s`` (the next entry of
    ``self.timesteps``; after the last one to the clean sample, ``alpha_bar = 1``). The visited subsequence is a
    Markov chain with ``beta'_t = 1 - alpha_bar_t / alpha_bar_s`` (Nichol & Dhariwal 2021, "respacing"), and the
    update samples its posterior ``q(x_s | x_t, x0_pred)``:
    mean ``sqrt(a_s) beta'_t / (1 - a_t) x0 + sqrt(a_t / a_s) (1 - a_s) / (1 - a_t) x_t``, variance
    ``(1 - a_s) / (1 - a_t) beta'_t`` ("fixed_small"; DDIM with eta = 1 unless clipping changed x0) or
    ``beta'_t`` ("fixed_large").
    With all training steps visited this is exactly MONAI's update.

    Other differences from MONAI's class (all deliberate):

    - ``alphas_cumprod`` stays float32 (MONAI's ``add_noise`` casts it to the input dtype for good).
    - The lookup of the next level is a tensor gather (no host synchronisation) and ``timestep`` may be an int,
      a 0-d/(1,) tensor or a (B,) tensor of per-sample timesteps. A timestep that is not visited steps to the
      largest visited one below it.
    - Noise is drawn at every step (scaled by 0 at the last) so the random stream does not depend on values.

    It remains a drop-in for :meth:`monai.inferers.DiffusionInferer.sample`. Constructor arguments are those of
    :class:`monai.networks.schedulers.DDPMScheduler`.

    Args:
        num_train_timesteps: number of diffusion steps used to train the model.
        schedule: member of ``monai.networks.schedulers.NoiseSchedules``, e.g. "linear_beta", "cosine".
        variance_type: "fixed_small", "fixed_large", "learned" or "learned_range".
        clip_sample: clip the predicted x0 to ``[clip_sample_min, clip_sample_max]``.
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_sample_min: lower clipping value.
        clip_sample_max: upper clipping value.
        schedule_args: arguments of the schedule function (``beta_start``, ``beta_end``, ...).
    """

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step from ``timestep`` to the next visited timestep.

        Args:
            model_output: network output, (B, C, *spatial), or (B, 2C, *spatial) with a learned variance.
            timestep: current timestep: int, 0-d/(1,) tensor, or (B,) tensor.
            sample: current noisy sample x_t, (B, C, *spatial).
            generator: random generator for the added noise (on ``sample.device``).

        Returns:
            ``(x_s, x0_pred)``, both (B, C, *spatial) in ``sample.dtype``.
        """
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in (
            DDPMVarianceType.LEARNED,
            DDPMVarianceType.LEARNED_RANGE,
        ):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        wd = _work_dtype(sample.dtype)
        x_t = sample.to(wd)
        a_t, a_s, is_final = self._alphas_at(timestep, sample)
        x0, _ = predict_x0_and_eps(model_output.to(wd), x_t, a_t, self.prediction_type, self._clip_range())
        c_x0, c_xt, var_small, beta = posterior_coefficients(a_t, a_s)
        mean = c_x0 * x0 + c_xt * x_t

        if self.variance_type == DDPMVarianceType.FIXED_LARGE:
            variance = beta
        elif self.variance_type == DDPMVarianceType.LEARNED and predicted_variance is not None:
            variance = predicted_variance.to(wd)
        elif self.variance_type == DDPMVarianceType.LEARNED_RANGE and predicted_variance is not None:
            # MONAI's convention: linear interpolation between the two fixed variances, here respaced
            frac = (predicted_variance.to(wd) + 1) / 2
            variance = frac * beta + (1 - frac) * var_small
        else:
            variance = var_small
        std = torch.where(is_final, torch.zeros_like(variance), variance.clamp(min=0.0).sqrt())
        noise = torch.randn(sample.shape, dtype=wd, device=sample.device, generator=generator)
        prev_sample = mean + std * noise
        return prev_sample.to(sample.dtype), x0.to(sample.dtype)

