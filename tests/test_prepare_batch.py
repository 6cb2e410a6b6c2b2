# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Tests of SegDiffusionPrepareBatch and of training with MONAI's SupervisedTrainer + stock DiffusionInferer."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from parameterized import parameterized

from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import DiffusionPrepareBatch
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDPMScheduler

from medsegdiff_monai.engines import SegDiffusionPrepareBatch
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler

T = 1000


def _batch(b=4, in_channels=2, out_channels=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn((b, in_channels, size, size), generator=g),
        "label": (torch.rand((b, out_channels, size, size), generator=g) > 0.5).float(),
    }


class SpyNet(torch.nn.Module):
    """Records how it is called; a 1x1 conv of [x, context] so that it can be trained."""

    def __init__(self, in_channels=2, out_channels=1):
        super().__init__()
        self.out_channels = out_channels
        self.conv = torch.nn.Conv2d(in_channels + out_channels, out_channels, 1)
        self.calls: list[dict] = []

    def forward(self, x, timesteps, context=None):
        self.calls.append({"x": x.detach().clone(), "timesteps": timesteps, "context": context})
        return self.conv(torch.cat([x, context], 1))


def test_is_a_monai_diffusion_prepare_batch():
    assert isinstance(SegDiffusionPrepareBatch(RespacedDDPMScheduler(T)), DiffusionPrepareBatch)


@parameterized.expand([("epsilon",), ("sample",), ("v_prediction",)])
def test_outputs(prediction_type):
    sched = RespacedDDPMScheduler(T, prediction_type=prediction_type)
    pb = SegDiffusionPrepareBatch(sched)
    batch = _batch()
    x0, target, args, kwargs = pb(batch, device="cpu")
    torch.testing.assert_close(x0, batch["label"] * 2 - 1)
    assert set(x0.unique().tolist()) <= {-1.0, 1.0}
    assert args == () and set(kwargs) == {"noise", "timesteps", "condition"}
    assert kwargs["condition"] is not None and torch.equal(kwargs["condition"], batch["image"])
    noise, t = kwargs["noise"], kwargs["timesteps"]
    assert noise.shape == x0.shape and t.shape == (4,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < T
    expected = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": sched.get_velocity(x0, noise, t),
    }[prediction_type]
    torch.testing.assert_close(target, expected)
    if prediction_type == "v_prediction":  # the definition, independent of the scheduler code
        a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        torch.testing.assert_close(target, a.sqrt() * noise - (1 - a).sqrt() * x0)


def test_tuple_batch_keys_and_metatensor():
    pb = SegDiffusionPrepareBatch(RespacedDDPMScheduler(T), image_key="img", label_key="seg")
    batch = _batch()
    x0, _, _, kw = pb({"img": MetaTensor(batch["image"]), "seg": MetaTensor(batch["label"])})
    assert type(x0) is torch.Tensor and type(kw["condition"]) is torch.Tensor
    x0b, _, _, kwb = SegDiffusionPrepareBatch(RespacedDDPMScheduler(T))((batch["image"], batch["label"]))
    torch.testing.assert_close(x0, x0b)
    torch.testing.assert_close(kw["condition"], kwb["condition"])
    with pytest.raises(ValueError, match="label"):
        SegDiffusionPrepareBatch(RespacedDDPMScheduler(T))({"image": batch["image"]})
    with pytest.raises(ValueError, match="batchdata"):
        SegDiffusionPrepareBatch(RespacedDDPMScheduler(T))(batch["image"])
    x0u, _, _, _ = SegDiffusionPrepareBatch(RespacedDDPMScheduler(T))({"image": batch["image"], "label": batch["label"].to(torch.uint8)})
    assert x0u.dtype == torch.float32


def test_timesteps_cover_the_chain():
    torch.manual_seed(0)
    pb = SegDiffusionPrepareBatch(RespacedDDPMScheduler(10))
    seen = torch.cat([pb(_batch(b=16))[3]["timesteps"] for _ in range(20)])
    assert set(seen.tolist()) == set(range(10))


def test_reads_chain_length_and_prediction_type_from_the_scheduler():
    pb = SegDiffusionPrepareBatch(DDPMScheduler(10, prediction_type="sample"))
    assert pb.num_train_timesteps == 10 and pb.prediction_type == "sample"
    with pytest.raises(ValueError, match="scheduler"):
        SegDiffusionPrepareBatch(object())  # type: ignore[arg-type]
    bad = DDPMScheduler(10)
    bad.prediction_type = "noise"
    with pytest.raises(ValueError, match="prediction_type"):
        SegDiffusionPrepareBatch(bad)


def test_supervised_trainer_with_stock_diffusion_inferer():
    """MONAI's SupervisedTrainer + stock DiffusionInferer (mode crossattn) + MSE: eq. 7 of the paper."""
    torch.manual_seed(0)
    sched = RespacedDDPMScheduler(T)
    net = SpyNet()
    before = [p.detach().clone() for p in net.parameters()]
    data = [_batch(seed=i) for i in range(3)]
    losses: list[float] = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        epoch_length=3,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=torch.nn.MSELoss(),
        inferer=DiffusionInferer(sched),
        prepare_batch=SegDiffusionPrepareBatch(RespacedDDPMScheduler(T)),
        decollate=False,
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"].detach()))
    )
    trainer.run()
    assert len(net.calls) == 3 and all(torch.isfinite(torch.tensor(losses)))
    call = net.calls[0]
    torch.testing.assert_close(call["context"], data[0]["image"])  # the image is the condition
    assert call["x"].shape == data[0]["label"].shape  # the noisy mask is the diffused input
    out = trainer.state.output
    x0 = data[2]["label"] * 2 - 1
    torch.testing.assert_close(out["image"], x0)  # the trainer's "image" is x0, its "label" the target
    t = net.calls[2]["timesteps"]
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    noisy = net.calls[2]["x"]
    torch.testing.assert_close(out["label"], (noisy - a.sqrt() * x0) / (1 - a).sqrt(), atol=1e-4, rtol=1e-4)
    assert any(not torch.equal(p, q) for p, q in zip(before, net.parameters()))


def test_json_configurable():
    parser = ConfigParser(
        {
            "scheduler": {
                "_target_": "medsegdiff_monai.networks.schedulers.RespacedDDPMScheduler",
                "prediction_type": "v_prediction",
            },
            "prepare_batch": {
                "_target_": "medsegdiff_monai.engines.SegDiffusionPrepareBatch",
                "scheduler": "@scheduler",
            },
        }
    )
    pb = parser.get_parsed_content("prepare_batch")
    assert isinstance(pb, SegDiffusionPrepareBatch) and pb.prediction_type == "v_prediction"


def test_logit_normal_timesteps_follow_their_distribution():
    """Known answers: P(t >= T/2) = Phi(mean / std) and median(t) = T * sigmoid(mean); uniform stays MONAI's."""
    sched = RespacedDDPMScheduler(1000)
    x0 = torch.zeros(20000, 1, 1, 1)
    torch.manual_seed(0)
    t = SegDiffusionPrepareBatch(sched, timestep_sampling="logit_normal", logit_mean=1.0).get_timesteps(x0)
    assert t.dtype == torch.long and t.shape == (20000,) and 0 <= int(t.min()) and int(t.max()) <= 999
    phi_1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # 0.841
    assert abs(float((t >= 500).float().mean()) - phi_1) < 0.01
    assert abs(float(t.float().median()) - 1000 / (1 + math.exp(-1))) < 10
    narrow = SegDiffusionPrepareBatch(sched, timestep_sampling="logit_normal", logit_std=0.1).get_timesteps(x0)
    assert abs(float((narrow >= 500).float().mean()) - 0.5) < 0.02 and float(narrow.float().std()) < 30
    torch.manual_seed(0)
    uniform = SegDiffusionPrepareBatch(sched).get_timesteps(x0)
    torch.manual_seed(0)
    assert torch.equal(uniform, torch.randint(0, 1000, (20000,)))
    with pytest.raises(ValueError, match="timestep_sampling"):
        SegDiffusionPrepareBatch(sched, timestep_sampling="cosine")
    with pytest.raises(ValueError, match="logit_std"):
        SegDiffusionPrepareBatch(sched, timestep_sampling="logit_normal", logit_std=0)
