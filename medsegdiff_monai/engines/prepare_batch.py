# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Prepare-batch callables that let MONAI's ``SupervisedTrainer`` train a segmentation diffusion model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from monai.data.meta_tensor import MetaTensor
from monai.engines.utils import DiffusionPrepareBatch
from monai.networks.schedulers import Scheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType

from medsegdiff_monai.utils.enums import TimestepSampling, look_up_named_option

__all__ = ["SegDiffusionPrepareBatch"]


def _plain(x: Any) -> torch.Tensor:
    """A plain float tensor (MetaTensor metadata is not needed for the diffusion loss and slows every op)."""
    t = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    return t if torch.is_floating_point(t) else t.float()


class SegDiffusionPrepareBatch(DiffusionPrepareBatch):
    """``prepare_batch`` for :class:`monai.engines.SupervisedTrainer` training MedSegDiff (paper eq. 7).

    From a batch ``{image_key: image, label_key: mask}`` (or an ``(image, mask)`` pair), with masks float {0, 1}
    of shape (B, C, *spatial), it returns ``(x0, target, (), kwargs)``:

    - ``x0 = 2 * mask - 1``: the mask mapped to [-1, 1], the sample that is diffused;
    - ``kwargs = {"noise": eps, "timesteps": t, "condition": image}`` with ``eps ~ N(0, I)`` shaped like ``x0``
      and ``t`` in ``[0, scheduler.num_train_timesteps)``, shape (B,): uniform (the paper), or logit-normal
      (``timestep_sampling="logit_normal"``, see :class:`~medsegdiff_monai.utils.enums.TimestepSampling`);
    - ``target``: by the scheduler's ``prediction_type``: ``eps`` for "epsilon" (the paper), ``x0`` for "sample",
      or the velocity ``scheduler.get_velocity(x0, eps, t)`` for "v_prediction".

    The chain length and the prediction type are the scheduler's, the same object the inferer noises with and
    samples from, so training and sampling cannot disagree about them.

    The trainer then calls ``inferer(x0, network, noise=..., timesteps=..., condition=image)``: MONAI's stock
    :class:`monai.inferers.DiffusionInferer` (default mode "crossattn") noises ``x0`` with the scheduler and calls
    ``network(x=x_t, timesteps=t, context=image)``, and ``loss_function(prediction, target)`` is e.g.
    ``torch.nn.MSELoss()``. Note that the trainer's ``engine.state.output["image"]`` is therefore ``x0`` (the
    mapped mask), and ``"label"`` the target. MetaTensors are converted to plain tensors; mask values are not
    checked (no host synchronisation).

    Example::

        scheduler = RespacedDDPMScheduler(num_train_timesteps=1000)
        trainer = SupervisedTrainer(
            device=device, max_epochs=100, train_data_loader=loader, network=net, optimizer=opt,
            loss_function=torch.nn.MSELoss(), inferer=DiffusionInferer(scheduler),
            prepare_batch=SegDiffusionPrepareBatch(scheduler),
        )

    Args:
        scheduler: the MONAI scheduler of the training (``num_train_timesteps``, ``prediction_type`` and, for
            "v_prediction", ``get_velocity``).
        image_key: key of the image (condition) in dict batches.
        label_key: key of the mask in dict batches.
        timestep_sampling: "uniform" or "logit_normal" (:class:`~medsegdiff_monai.utils.enums.TimestepSampling`).
        logit_mean: mean of the normal variable of "logit_normal" (0: median ``t = T / 2``; 1: median ``0.73 T``).
        logit_std: its standard deviation, > 0.

    Raises:
        ValueError: on an invalid argument (named in the message).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        image_key: str = "image",
        label_key: str = "label",
        timestep_sampling: str = TimestepSampling.UNIFORM,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        num_train = int(getattr(scheduler, "num_train_timesteps", 0))
        if num_train < 1:
            raise ValueError("`scheduler` must be a MONAI Scheduler with a positive `num_train_timesteps`.")
        prediction_type = str(getattr(scheduler, "prediction_type", DDPMPredictionType.EPSILON))
        super().__init__(num_train_timesteps=num_train, condition_name=image_key)
        self.image_key = image_key
        self.label_key = label_key
        self.prediction_type = look_up_named_option("scheduler.prediction_type", prediction_type, DDPMPredictionType)
        self.scheduler = scheduler
        self.timestep_sampling = look_up_named_option("timestep_sampling", timestep_sampling, TimestepSampling)
        if not float(logit_std) > 0:
            raise ValueError(f"`logit_std` must be > 0, got {logit_std}.")
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    def get_timesteps(self, images: torch.Tensor) -> torch.Tensor:
        """One training timestep per sample, (B,) long, on ``images``' device (global random state, as MONAI's).

        Args:
            images: the diffused samples x0, (B, C, *spatial).

        Returns:
            (B,) timesteps in ``[0, num_train_timesteps)``.
        """
        if self.timestep_sampling == TimestepSampling.UNIFORM:
            return super().get_timesteps(images)  # MONAI's: randint(0, T)
        n = torch.randn(images.shape[0], device=images.device) * self.logit_std + self.logit_mean
        t = (torch.sigmoid(n) * self.num_train_timesteps).long()
        return t.clamp_(0, self.num_train_timesteps - 1)

    def get_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Loss target for ``x0 = images``: the noise, ``x0`` itself, or the velocity.

        Args:
            images: diffused samples x0, (B, C, *spatial).
            noise: the noise, same shape.
            timesteps: (B,) timesteps.

        Returns:
            target, same shape as ``images``.
        """
        if self.prediction_type == "sample":
            return images
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(images, noise, timesteps)  # type: ignore[operator]
        return noise

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        """Build ``(x0, target, (), {"noise", "timesteps", "condition"})`` from a batch.

        Args:
            batchdata: dict with ``image_key`` and ``label_key``, or an ``(image, label)`` pair.
            device: target device.
            non_blocking: ``Tensor.to`` argument.
            kwargs: further ``Tensor.to`` arguments.

        Returns:
            ``(x0, target, (), {"noise": noise, "timesteps": timesteps, "condition": image})``.
        """
        if isinstance(batchdata, Mapping):
            missing = [k for k in (self.image_key, self.label_key) if k not in batchdata]
            if missing:
                raise ValueError(
                    f"Batch has no {missing} (image_key={self.image_key!r}, label_key={self.label_key!r}); "
                    f"keys: {list(batchdata)}."
                )
            image, label = batchdata[self.image_key], batchdata[self.label_key]
        elif isinstance(batchdata, Sequence) and len(batchdata) == 2:
            image, label = batchdata
        else:
            raise ValueError("`batchdata` must be a dict with image and label keys or an (image, label) pair.")
        image = _plain(image).to(device=device, non_blocking=non_blocking, **kwargs)
        x0 = (_plain(label).to(device=device, non_blocking=non_blocking, **kwargs) * 2.0 - 1.0).to(image.dtype)
        noise = self.get_noise(x0)
        timesteps = self.get_timesteps(x0)
        target = self.get_target(x0, noise, timesteps)
        return x0, target, (), {"noise": noise, "timesteps": timesteps, "condition": image}
