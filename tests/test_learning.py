# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""End-to-end learning test: MedSegDiffUNet "XS" learns to segment bright discs with MONAI's engines.

Training: ``SupervisedTrainer`` + ``SegDiffusionPrepareBatch`` + MONAI's stock ``DiffusionInferer`` + MSE.
Evaluation: ``SupervisedEvaluator`` whose inferer is ``DiffusionSegInferer`` (10 DDIM steps, 5 members), scored
with MONAI's ``MeanDice`` on held-out images. CPU, 2 threads, well under 90 s on an idle 2-core machine.
"""

from __future__ import annotations

import time

import pytest
import torch

from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, MeanDice, from_engine
from monai.inferers import DiffusionInferer

from medsegdiff_monai.engines import SegDiffusionPrepareBatch
from medsegdiff_monai.inferers import AutocastDiffusionInferer, DiffusionSegInferer
from medsegdiff_monai.networks.nets import MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler

SIZE = 32
NOISE_STD = 0.3
BATCH = 16
TRAIN_CONFIGS = {
    # prediction type: (training iterations, noise schedule, peak learning rate)
    "epsilon": (300, "cosine", 3e-3),  # the paper's loss (eq. 7)
    "sample": (80, "linear_beta", 3e-3),
}


def make_discs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, 32, 32): a disc of intensity 1 (radius 4-10 px, random centre) plus N(0, 0.3^2) noise.

    Returns:
        ``(images, masks)``, masks float {0, 1}.
    """
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    r = torch.rand(n, generator=generator) * 6 + 4
    cy = torch.rand(n, generator=generator) * (SIZE - 2 * r) + r
    cx = torch.rand(n, generator=generator) * (SIZE - 2 * r) + r
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    masks = (d2 <= r[:, None, None] ** 2).float()[:, None]
    images = masks + NOISE_STD * torch.randn(masks.shape, generator=generator)
    return images, masks


def train_and_evaluate(
    prediction_type: str, seed: int = 0, self_condition: bool = False
) -> tuple[float, float, float]:
    """Train on fresh discs, segment 16 held-out images; return (mean Dice, train seconds, sampling seconds).

    With ``self_condition`` the network reads the previous x0 estimate, trained by ``AutocastDiffusionInferer``
    (half of the steps) instead of MONAI's stock inferer.
    """
    iterations, schedule, lr = TRAIN_CONFIGS[prediction_type]
    torch.manual_seed(seed)
    images, masks = make_discs(iterations * BATCH, torch.Generator().manual_seed(seed))
    train_data = [
        {"image": images[i * BATCH : (i + 1) * BATCH], "label": masks[i * BATCH : (i + 1) * BATCH]}
        for i in range(iterations)
    ]
    net = MedSegDiffUNet.from_preset(
        "XS", spatial_dims=2, in_channels=1, out_channels=1, self_condition=self_condition
    )
    scheduler = RespacedDDPMScheduler(num_train_timesteps=1000, schedule=schedule, prediction_type=prediction_type)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iterations, pct_start=0.1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=train_data,
        epoch_length=iterations,
        network=net,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        inferer=AutocastDiffusionInferer(scheduler) if self_condition else DiffusionInferer(scheduler),
        prepare_batch=SegDiffusionPrepareBatch(scheduler),
        train_handlers=[LrScheduleHandler(lr_schedule, epoch_level=False, print_lr=False)],
        decollate=False,
    )
    t0 = time.perf_counter()
    trainer.run()
    t_train = time.perf_counter() - t0

    test_images, test_masks = make_discs(16, torch.Generator().manual_seed(1000 + seed))
    val_data = [{"image": test_images[i : i + 8], "label": test_masks[i : i + 8]} for i in (0, 8)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val_data,
        epoch_length=len(val_data),
        network=net,
        inferer=DiffusionSegInferer(
            scheduler, num_inference_steps=10, sampler="ddim", num_ensemble=5, seed=seed, output="mask"
        ),
        key_val_metric={"dice": MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))},
    )
    t0 = time.perf_counter()
    evaluator.run()
    t_sample = time.perf_counter() - t0
    return float(evaluator.state.metrics["dice"]), t_train, t_sample


@pytest.mark.slow
@pytest.mark.parametrize("prediction_type", ["epsilon"])
def test_medsegdiff_learns_discs(two_threads, prediction_type):
    t0 = time.perf_counter()
    dice, t_train, t_sample = train_and_evaluate(prediction_type, seed=0)
    total = time.perf_counter() - t0
    print(f"{prediction_type}: Dice {dice:.4f}, train {t_train:.1f} s, sampling {t_sample:.1f} s, total {total:.1f} s")
    assert dice >= 0.9


@pytest.mark.slow
def test_self_conditioned_medsegdiff_learns_discs(two_threads):
    """x0 prediction with self-conditioning learns too; the 10-step sampler feeds each step's estimate to the next."""
    dice, t_train, t_sample = train_and_evaluate("sample", seed=0, self_condition=True)
    print(f"sample + self-conditioning: Dice {dice:.4f}, train {t_train:.1f} s, sampling {t_sample:.1f} s")
    assert dice >= 0.9
