# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""AutocastDiffusionInferer: MONAI's DiffusionInferer training call with bfloat16 autocast on CPU."""

from __future__ import annotations

import pytest
import torch

from monai.engines import SupervisedTrainer
from monai.inferers import DiffusionInferer

from medsegdiff_monai.engines import SegDiffusionPrepareBatch
from medsegdiff_monai.inferers import AutocastDiffusionInferer
from medsegdiff_monai.networks.nets import MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler


def _batch():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 2, 16, 16, generator=g)
    return {"image": image, "label": (image[:, :1] > 0).float()}


def test_same_as_monai_without_autocast():
    torch.manual_seed(0)
    net = MedSegDiffUNet.from_preset("XS", in_channels=2, out_channels=1)
    sched = RespacedDDPMScheduler(1000)
    x0, _, _, kwargs = SegDiffusionPrepareBatch(RespacedDDPMScheduler(1000))(_batch())
    ours = AutocastDiffusionInferer(sched)(x0, net, **kwargs)
    stock = DiffusionInferer(sched)(x0, net, **kwargs)
    torch.testing.assert_close(ours, stock)


def test_bfloat16_training_step():
    torch.manual_seed(0)
    net = MedSegDiffUNet.from_preset("XS", in_channels=2, out_channels=1)
    out_dtypes = []
    net.register_forward_hook(lambda m, i, o: out_dtypes.append(o.dtype))
    sched = RespacedDDPMScheduler(1000)
    before = net.conv_in_mask.conv.weight.detach().clone()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[_batch()] * 2, epoch_length=2, network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3), loss_function=torch.nn.MSELoss(),
        inferer=AutocastDiffusionInferer(sched, "bfloat16"), prepare_batch=SegDiffusionPrepareBatch(sched),
        decollate=False,
    )
    trainer.run()
    assert out_dtypes == [torch.bfloat16, torch.bfloat16]
    assert trainer.state.output["pred"].dtype == torch.float32
    assert torch.isfinite(trainer.state.output["loss"])
    assert net.conv_in_mask.conv.weight.dtype == torch.float32  # master weights stay float32
    assert not torch.equal(before, net.conv_in_mask.conv.weight)


def test_bad_dtype():
    with pytest.raises(ValueError, match="autocast_dtype"):
        AutocastDiffusionInferer(RespacedDDPMScheduler(1000), "int8")
