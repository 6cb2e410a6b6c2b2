# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The diffusion regression loss with an optional segmentation loss on the predicted mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.schedulers.ddpm import DDPMPredictionType
from monai.utils import look_up_option

__all__ = ["MaskDiffusionLoss"]


class MaskDiffusionLoss(torch.nn.modules.loss._Loss):
    """Mean squared error of the diffusion target (paper eq. 7), plus Dice and BCE on the predicted clean mask.

    With ``prediction_type="sample"`` the network predicts the clean mask x0 in [-1, 1] directly, so its
    probability map ``p = clamp((prediction + 1) / 2, 0, 1)`` can be scored with a segmentation loss against the
    mask ``(target + 1) / 2``:

        loss = mse_weight * MSE(prediction, target) + dice_weight * Dice(p, mask) + bce_weight * BCE(p, mask)

    The segmentation terms are a departure from the paper, which trains with the plain MSE of eq. 7; they play the
    role of the official code's calibration loss (a Dice/BCE loss on a separate sigmoid head). They need the
    predicted x0, which a loss called as ``loss(prediction, target)`` only has for "sample" prediction (for
    "epsilon" and "v_prediction" the noisy input and the timestep would be needed too), so for the other
    prediction types only ``dice_weight = bce_weight = 0`` is accepted.

    Args:
        prediction_type: the scheduler's prediction type: "epsilon", "sample" or "v_prediction".
        mse_weight: weight of the MSE of the prediction against the target.
        dice_weight: weight of the soft Dice loss (MONAI ``DiceLoss``, per channel, batch-wise) on ``p``.
        bce_weight: weight of the binary cross-entropy on ``p``.

    Raises:
        ValueError: for a negative weight, all weights zero, or a segmentation weight with a prediction type other
            than "sample".
    """

    def __init__(
        self,
        prediction_type: str = DDPMPredictionType.EPSILON,
        mse_weight: float = 1.0,
        dice_weight: float = 0.0,
        bce_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.prediction_type = look_up_option(str(prediction_type), [str(p) for p in DDPMPredictionType])
        for name, w in (("mse_weight", mse_weight), ("dice_weight", dice_weight), ("bce_weight", bce_weight)):
            if w < 0:
                raise ValueError(f"MaskDiffusionLoss: {name} must be >= 0, got {w}.")
        if mse_weight == dice_weight == bce_weight == 0:
            raise ValueError("MaskDiffusionLoss: at least one of mse_weight, dice_weight, bce_weight must be > 0.")
        if (dice_weight or bce_weight) and self.prediction_type != DDPMPredictionType.SAMPLE:
            raise ValueError(
                "MaskDiffusionLoss: dice_weight and bce_weight need prediction_type='sample' (the loss sees only the "
                f"prediction and the target, so it has no x0 estimate for {self.prediction_type!r})."
            )
        self.mse_weight, self.dice_weight, self.bce_weight = float(mse_weight), float(dice_weight), float(bce_weight)
        self.dice = DiceLoss(sigmoid=False, batch=True)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of a batch.

        Args:
            prediction: network output, (B, C, *spatial).
            target: the diffusion target of the same shape (for "sample": the mask mapped to [-1, 1]).

        Returns:
            the scalar loss.
        """
        prediction = prediction.float()
        target = target.float()
        loss = prediction.new_zeros(())
        if self.mse_weight:
            loss = loss + self.mse_weight * F.mse_loss(prediction, target)
        if self.dice_weight or self.bce_weight:
            prob = ((prediction + 1) / 2).clamp(0, 1)
            mask = ((target + 1) / 2).clamp(0, 1)
            if self.dice_weight:
                loss = loss + self.dice_weight * self.dice(prob, mask)
            if self.bce_weight:
                loss = loss + self.bce_weight * F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), mask)
        return loss
