# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The sampling schedule shared by every sampling path: visited timesteps and per-step update coefficients."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler, Scheduler
from monai.utils import StrEnum
from monai.networks.schedulers.ddpm import DDPMPredictionType
from torch import nn

from ...utils.enums import look_up_named_option
from .respacing import predict_x0_and_eps, spaced_timesteps, update_coefficients

__all__ = ["SamplerType", "DiffusionSampler", "x0_convention"]


class SamplerType(StrEnum):
    """Sampling algorithms of :class:`DiffusionSampler`.

    - ``DDPM``: respaced ancestral sampling of the posterior ``q(x_s | x_t, x0)`` ("fixed_small" variance).
    - ``DDIM``: DDIM with stochasticity ``eta`` (0: deterministic).
    - ``DPMPP_2M``: DPM-Solver++(2M), multistep second order, data prediction with thresholding (deterministic).
    """

    DDPM = "ddpm"
    DDIM = "ddim"
    DPMPP_2M = "dpmpp_2m"


def x0_convention(scheduler: Scheduler, clip_sample: bool | None = None) -> tuple[str, tuple[float, float] | None]:
    """How a network output becomes the clean-sample estimate for ``scheduler``: the place every sampling and
    training path reads it from (:class:`DiffusionSampler`, and the self-conditioning estimate of
    :class:`~medsegdiff_monai.inferers.AutocastDiffusionInferer`).

    Args:
        scheduler: a MONAI scheduler (``prediction_type``; optional ``clip_sample``, ``clip_sample_values``).
        clip_sample: clip the estimate; None follows ``scheduler.clip_sample`` (True if the scheduler has none).

    Returns:
        ``(prediction_type, clip_range)``: "epsilon", "sample" or "v_prediction", and the ``(min, max)`` the estimate
        is clipped to (the scheduler's ``clip_sample_values``, default ``(-1, 1)``) or None for no clipping.

    Raises:
        ValueError: for an unknown prediction type.
    """
    prediction_type = str(getattr(scheduler, "prediction_type", DDPMPredictionType.EPSILON))
    prediction_type = look_up_named_option("scheduler.prediction_type", prediction_type, DDPMPredictionType)
    if clip_sample is None:
        clip_sample = bool(getattr(scheduler, "clip_sample", True))
    lo, hi = getattr(scheduler, "clip_sample_values", (-1.0, 1.0))
    return prediction_type, (float(lo), float(hi)) if clip_sample else None


class DiffusionSampler(nn.Module):
    """Visited timesteps and update coefficients of a few-step diffusion sampler, validated once.

    Every sampler here (respaced DDPM, DDIM, DPM-Solver++(2M)) is one update rule with per-step coefficients,
    precomputed in float64 from the scheduler's noise schedule (:func:`~.respacing.update_coefficients`)::

        x0_i    = clip(predicted x0 at step i)                      (the network output converted, then clipped)
        x_{i+1} = c_xt[i] * x_i + c_x0[i] * x0_i + c_prev[i] * x0_{i-1} + sigma[i] * z_i

    and the result of the last step is its ``x0``. The update depends on ``(x_t, x0)`` only, never on the network's
    raw noise estimate, so clipping stays consistent: a clipped ``x0`` is always paired with the noise recomputed
    from it and ``x_t`` (the principle of :mod:`~medsegdiff_monai.networks.schedulers.respacing`). This is what
    keeps sampling from getting worse with more steps when the network is imperfect.

    The visited timesteps are ``linspace(T - 1, 0, n).round()`` (+ ``steps_offset``), MONAI's spacing; each update
    goes from the noise level of one visited timestep to the next (after the last, to
    ``final_alpha_cumprod`` when the scheduler has one, else 1). Only the scheduler's ``alphas_cumprod``,
    ``prediction_type``, ``clip_sample``/``clip_sample_values``, ``steps_offset`` and ``final_alpha_cumprod`` are
    read; never its ``step`` (MONAI 1.6.1's DDPM/DDIM ``step`` go to the wrong level with fewer steps than
    training steps), so any MONAI scheduler samples correctly here.

    :class:`~medsegdiff_monai.networks.nets.DiffusionSegmenter` runs the sampling loop with this module, and
    :class:`~medsegdiff_monai.inferers.DiffusionSegInferer` samples through ``DiffusionSegmenter``: there is one
    loop and one validation of the sampling arguments. Scriptable; its buffers are not saved in state dicts.

    Args:
        scheduler: the MONAI scheduler the network was trained with. Default: ``DDPMScheduler(1000)``.
        num_inference_steps: number of network calls, in ``[1, scheduler.num_train_timesteps]``.
        sampler: a :class:`SamplerType`: "ddpm", "ddim" or "dpmpp_2m".
        eta: DDIM stochasticity, >= 0 ("ddim" only; "ddpm" is DDIM with ``eta = 1``).
        clip_sample: clip the predicted x0 to the scheduler's clip range (default ``[-1, 1]``) at every step; None
            follows ``scheduler.clip_sample`` (True if the scheduler has none). Masks live in ``[-1, 1]``, so
            clipping is DPM-Solver++'s thresholding of the data prediction.

    Raises:
        ValueError: naming the first invalid argument.
    """

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        num_inference_steps: int = 10,
        sampler: str = SamplerType.DDIM,
        eta: float = 0.0,
        clip_sample: bool | None = None,
    ) -> None:
        super().__init__()
        scheduler = scheduler if scheduler is not None else DDPMScheduler(num_train_timesteps=1000)
        num_train = int(getattr(scheduler, "num_train_timesteps", 0))
        if num_train < 1 or not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError("`scheduler` must be a MONAI Scheduler with `num_train_timesteps` and `alphas_cumprod`.")
        self.sampler = look_up_named_option("sampler", sampler, SamplerType)
        if not float(eta) >= 0:
            raise ValueError(f"`eta` must be >= 0, got {eta}.")
        self.eta = float(eta) if self.sampler == SamplerType.DDIM else 1.0 if self.sampler == SamplerType.DDPM else 0.0
        self.prediction_type, clip_range = x0_convention(scheduler, clip_sample)
        self.clip_sample = clip_range is not None
        self.clip_min, self.clip_max = clip_range if clip_range is not None else (-1.0, 1.0)  # unused when off
        self.num_train_timesteps = num_train
        self.stochastic = self.eta > 0

        offset = int(getattr(scheduler, "steps_offset", 0) or 0)
        timesteps = spaced_timesteps(num_train, num_inference_steps, offset)  # validates num_inference_steps
        self.num_inference_steps = int(timesteps.numel())
        alphas = torch.as_tensor(scheduler.alphas_cumprod).detach().to("cpu", torch.float64)
        final = torch.as_tensor(getattr(scheduler, "final_alpha_cumprod", 1.0)).to("cpu", torch.float64).reshape(1)
        a_t = alphas[timesteps]
        a_s = torch.cat([alphas[timesteps[1:]], final])
        a_p = torch.cat([a_t[:1], a_t[:-1]])  # level of the previous step (unused at step 0)
        c_xt, c_x0, c_prev, sigma = update_coefficients(self.sampler, a_t, a_s, a_p, self.eta)
        if self.sampler == SamplerType.DPMPP_2M:  # the first step has no previous x0: first order
            c1_xt, c1_x0, _, _ = update_coefficients(self.sampler, a_t[:1], a_s[:1], None)
            c_xt[0], c_x0[0], c_prev[0] = c1_xt[0], c1_x0[0], 0.0
        self.register_buffer("timesteps", timesteps, persistent=False)
        self.register_buffer("alpha_prod_t", a_t.float(), persistent=False)
        self.register_buffer("coef_xt", c_xt.float(), persistent=False)
        self.register_buffer("coef_x0", c_x0.float(), persistent=False)
        self.register_buffer("coef_prev", c_prev.float(), persistent=False)
        self.register_buffer("sigma", sigma.float(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"sampler={self.sampler!r}, num_inference_steps={self.num_inference_steps}, eta={self.eta}, "
            f"prediction_type={self.prediction_type!r}, clip_sample={self.clip_sample}"
        )

    def predict_x0(self, i: int, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The (clipped) clean-sample prediction of step ``i``.

        Args:
            i: step index, ``0 <= i < num_inference_steps``.
            model_output: float32 network output at ``timesteps[i]`` (noise, sample or velocity), (B, C, *spatial).
            x: current sample, same shape.

        Returns:
            ``x0``, shaped like ``x``.
        """
        clip_range: tuple[float, float] | None = None
        if self.clip_sample:
            clip_range = (self.clip_min, self.clip_max)
        x0, _ = predict_x0_and_eps(model_output, x, self.alpha_prod_t[i], self.prediction_type, clip_range)
        return x0

    def step(
        self,
        i: int,
        x: torch.Tensor,
        x0: torch.Tensor,
        x0_prev: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update from the level of step ``i`` to the level of step ``i + 1``.

        Args:
            i: step index, ``0 <= i < num_inference_steps - 1``.
            x: current sample ``x_t``, (B, C, *spatial).
            x0: the clipped clean-sample prediction of this step (:meth:`predict_x0`).
            x0_prev: that of the previous step (DPM-Solver++ only; ignored at ``i = 0``).
            noise: standard normal noise shaped like ``x`` for stochastic samplers (``self.stochastic``).

        Returns:
            the sample at the next level, shaped like ``x``.
        """
        out = self.coef_xt[i] * x + self.coef_x0[i] * x0
        if x0_prev is not None and i > 0:
            out = out + self.coef_prev[i] * x0_prev
        if noise is not None:
            out = out + self.sigma[i] * noise
        return out
