# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MaskDiffusionLoss: the MSE of eq. 7 plus the optional Dice/BCE terms on the predicted x0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medsegdiff_monai.losses import MaskDiffusionLoss


def _mask(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float() * 2 - 1  # x0 in {-1, 1}


def test_plain_mse_is_eq7():
    pred, target = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(MaskDiffusionLoss("epsilon")(pred, target), F.mse_loss(pred, target))


def test_perfect_x0_has_zero_loss_and_a_wrong_one_does_not():
    loss = MaskDiffusionLoss("sample", dice_weight=1.0, bce_weight=1.0)
    x0 = _mask()
    assert float(loss(x0, x0)) < 1e-4
    flipped = -x0
    # wrong everywhere: MSE 4, BCE -log(1e-6) ~ 13.8, Dice ~ 1
    assert float(loss(flipped, x0)) > 15


def test_segmentation_terms_score_the_probability_map():
    """A prediction of 0 everywhere (probability 0.5) costs BCE log 2 and Dice 1 - 2 * 0.5 * |m| / (0.5 N + |m|)."""
    x0 = _mask(1)
    mask = (x0 + 1) / 2
    pred = torch.zeros_like(x0)
    bce = MaskDiffusionLoss("sample", mse_weight=0.0, bce_weight=1.0)(pred, x0)
    torch.testing.assert_close(bce, torch.tensor(torch.log(torch.tensor(2.0)).item()), atol=1e-5, rtol=0)
    dice = MaskDiffusionLoss("sample", mse_weight=0.0, dice_weight=1.0)(pred, x0)
    inter, total = 0.5 * mask.sum(), 0.5 * mask.numel() + mask.sum()
    torch.testing.assert_close(dice, 1 - (2 * inter + 1e-5) / (total + 1e-5), atol=1e-5, rtol=0)


def test_gradients_reach_an_x0_that_is_slightly_off():
    x0 = _mask(2)
    pred = (0.9 * x0 + 0.05 * torch.randn_like(x0)).requires_grad_()
    MaskDiffusionLoss("sample", dice_weight=1.0, bce_weight=1.0)(pred, x0).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    # the gradient pushes the prediction toward the target
    assert float((pred.grad * (pred.detach() - x0)).sum()) > 0


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_segmentation_terms_need_sample_prediction(ptype):
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        MaskDiffusionLoss(ptype, dice_weight=1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dice_weight must be >= 0"):
        MaskDiffusionLoss("sample", dice_weight=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        MaskDiffusionLoss("sample", mse_weight=0.0)
    with pytest.raises(ValueError):
        MaskDiffusionLoss("noise")
