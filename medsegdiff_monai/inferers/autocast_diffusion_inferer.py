# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's ``DiffusionInferer`` for the training call, with mixed precision on any device."""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from torch import nn

from medsegdiff_monai.networks.nets.diffusion_segmenter import AUTOCAST_DTYPES, AutocastDtype
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

    With ``autocast_dtype=None`` it is exactly MONAI's ``DiffusionInferer``. :meth:`sample` is MONAI's
    (use :class:`~medsegdiff_monai.inferers.DiffusionSegInferer` to segment).

    Args:
        scheduler: the diffusion scheduler (e.g. :class:`~medsegdiff_monai.networks.schedulers.RespacedDDPMScheduler`).
        autocast_dtype: None (float32), "bfloat16" or "float16" (float16 has no loss scaling here: on GPUs prefer
            bfloat16, or ``SupervisedTrainer(amp=True)`` which scales the loss).

    Example::

        trainer = SupervisedTrainer(..., inferer=AutocastDiffusionInferer(scheduler, "bfloat16"),
                                    prepare_batch=SegDiffusionPrepareBatch(scheduler), loss_function=torch.nn.MSELoss())
    """

    def __init__(self, scheduler: Scheduler, autocast_dtype: str | None = None) -> None:
        super().__init__(scheduler)
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
        if self.autocast_dtype is None:
            return super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg)
        # autocast changes convolutions and matrix products only: the element-wise noising stays float32
        with torch.autocast(device_type=inputs.device.type, dtype=AUTOCAST_DTYPES[self.autocast_dtype]):
            prediction = super().__call__(inputs, diffusion_model, noise, timesteps, condition, mode, seg)
        return prediction.float()
