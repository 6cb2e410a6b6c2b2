# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's ``DiffusionInferer`` for the training call, with mixed precision on any device and self-conditioning."""

from __future__ import annotations

import contextlib

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from torch import nn

from medsegdiff_monai.networks.nets.diffusion_segmenter import AUTOCAST_DTYPES, AutocastDtype
from medsegdiff_monai.networks.schedulers.respacing import predict_x0_and_eps
from medsegdiff_monai.networks.schedulers.sampler import x0_convention
from medsegdiff_monai.utils.enums import look_up_named_option

__all__ = ["AutocastDiffusionInferer"]


class AutocastDiffusionInferer(DiffusionInferer):
    """:class:`monai.inferers.DiffusionInferer` whose training call can run the network under ``torch.autocast``.

    Written because MONAI 1.6.1's ``SupervisedTrainer(amp=True)`` enters ``torch.autocast("cuda")`` only, so it
    does nothing on CPU, and pairs it with a float16 ``GradScaler``. Here the network runs under
    ``torch.autocast(device_type=<device of the inputs>, dtype=autocast_dtype)``: bfloat16 needs no loss scaling
    and pays on GPUs and on CPUs with AMX or AVX-512-bf16 (see ``benchmarks/``). Noising (``scheduler.add_noise``)
    stays float32 (autocast only changes convolutions and matrix products), and the prediction is returned as
    float32, so the loss is computed in float32.

    Self-conditioning (Chen et al., "Analog Bits", arXiv 2208.04202), for networks built with
    ``self_condition=True`` (:class:`~medsegdiff_monai.networks.nets.MedSegDiffUNet`): with probability
    ``self_condition_prob`` per training step, a first network call without gradient estimates the clean mask from
    ``x_t`` (converted from the prediction by the scheduler's ``prediction_type``, clipped to the scheduler's
    ``clip_sample_values`` unless its ``clip_sample`` is False, as the sampler does by default), and the trained
    call gets it as ``x_self_cond``; otherwise the trained call gets none (zeros), as the first sampling step does.
    MONAI's inferer has no such option.

    With ``autocast_dtype=None`` and a network without self-conditioning it is exactly MONAI's ``DiffusionInferer``.
    :meth:`sample` is MONAI's (use :class:`~medsegdiff_monai.inferers.DiffusionSegInferer` to segment).

    Args:
        scheduler: the diffusion scheduler (e.g. :class:`~medsegdiff_monai.networks.schedulers.RespacedDDPMScheduler`).
        autocast_dtype: None (float32), "bfloat16" or "float16" (float16 has no loss scaling here: on GPUs prefer
            bfloat16, or ``SupervisedTrainer(amp=True)`` which scales the loss).
        self_condition_prob: share of the training steps that self-condition, in [0, 1] (0.5 in Chen et al.); used
            only with a network whose ``self_condition`` is True (also inside ``DistributedDataParallel``). The
            first call costs a forward pass without gradient on those steps.

    Example::

        trainer = SupervisedTrainer(..., inferer=AutocastDiffusionInferer(scheduler, "bfloat16"),
                                    prepare_batch=SegDiffusionPrepareBatch(scheduler), loss_function=torch.nn.MSELoss())
    """

    def __init__(
        self, scheduler: Scheduler, autocast_dtype: str | None = None, self_condition_prob: float = 0.5
    ) -> None:
        super().__init__(scheduler)
        if not 0.0 <= float(self_condition_prob) <= 1.0:
            raise ValueError(f"`self_condition_prob` must be in [0, 1], got {self_condition_prob}.")
        self.self_condition_prob = float(self_condition_prob)
        if autocast_dtype is not None:
            autocast_dtype = look_up_named_option("autocast_dtype", autocast_dtype, AutocastDtype)
            if autocast_dtype == AutocastDtype.AUTO:  # training numerics must not depend on a timing
                raise ValueError(
                    "`autocast_dtype`='auto' is for inference only; for training choose None (float32), 'bfloat16' "
                    "or 'float16'."
                )
        self.autocast_dtype = autocast_dtype

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None = None,
        mode: str = "crossattn",
        seg: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise ``inputs`` at ``timesteps`` and return the network's prediction (float32).

        Args:
            inputs: clean samples x0, ``(B, C, *spatial)`` (masks mapped to [-1, 1]).
            diffusion_model: the network.
            noise: the noise, shaped like ``inputs``.
            timesteps: ``(B,)`` timesteps.
            condition: the image, ``(B, C_in, *spatial)``.
            mode: "crossattn" or "concat".
            seg: SPADE segmentation, passed on to MONAI.

        Returns:
            the prediction, ``(B, C, *spatial)`` float32.
        """
        self_conditions = bool(getattr(getattr(diffusion_model, "module", diffusion_model), "self_condition", False))
        if self.autocast_dtype is None and not self_conditions:
            return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg)
        # autocast changes convolutions and matrix products only: the element-wise noising stays float32
        precision = (
            contextlib.nullcontext()
            if self.autocast_dtype is None
            else torch.autocast(device_type=inputs.device.type, dtype=AUTOCAST_DTYPES[self.autocast_dtype])
        )
        with precision:
            if not self_conditions:
                return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg).float()
            return self._self_conditioned(inputs, diffusion_model, noise, timesteps, condition, mode).float()

    def _self_conditioned(
        self,
        inputs: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor | None,
        mode: str,
    ) -> torch.Tensor:
        """The training call of a self-conditioning network (MONAI's noising and conditioning modes, see above)."""
        if mode not in ("crossattn", "concat"):
            raise NotImplementedError(f"{mode} condition is not supported")
        x_t = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        x_in, context = x_t, condition
        if mode == "concat":
            if condition is None:
                raise ValueError("Conditioning is required for concat condition")
            x_in, context = torch.cat([x_t, condition], dim=1), None
        estimate = None
        # one draw per step from the global random state (seeded by the bundle's set_determinism)
        if self.self_condition_prob > 0 and float(torch.rand(())) < self.self_condition_prob:
            with torch.no_grad():
                first = diffusion_model(x=x_in, timesteps=timesteps, context=context).float()
                alpha = self.scheduler.alphas_cumprod.to(x_t.device)[timesteps.long()]
                alpha = alpha.reshape((-1,) + (1,) * (x_t.dim() - 1))
                prediction_type, clip_range = x0_convention(self.scheduler)  # as the sampler converts and clips
                estimate, _ = predict_x0_and_eps(first, x_t.float(), alpha, prediction_type, clip_range)
        prediction: torch.Tensor = diffusion_model(x=x_in, timesteps=timesteps, context=context, x_self_cond=estimate)
        return prediction
