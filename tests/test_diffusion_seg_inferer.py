# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Tests of DiffusionSegInferer: correctness with an oracle network, shapes, options, MONAI engine integration."""

from __future__ import annotations

import pytest
import torch
from parameterized import parameterized

from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.inferers import SliceInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.utils import optional_import

import medsegdiff_monai.inferers.diffusion_seg_inferer as dsi
from medsegdiff_monai.inferers import DiffusionSegInferer
from medsegdiff_monai.networks.nets import MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDIMScheduler, RespacedDDPMScheduler

_, has_sitk = optional_import("SimpleITK")
T = 1000


pytestmark = pytest.mark.usefixtures("one_thread")



class MaskOracle(torch.nn.Module):
    """Knows the true mask of an image (channel c: ``image[:, c % C_in] > 0.5``) and returns the exact output.

    Records the true noise of each sample it is shown (``seen``) and the batch size of each call (``batches``).
    Accepts the crossattn (``context`` = image) and concat (image after the mask along channels) conventions.
    """

    def __init__(self, scheduler, out_channels: int = 1, in_channels: int = 1, prediction_type: str = "epsilon"):
        super().__init__()
        self.ac = scheduler.alphas_cumprod.double()
        self.out_channels, self.in_channels = out_channels, in_channels
        self.prediction_type = prediction_type
        self.seen: list[torch.Tensor] = []
        self.batches: list[int] = []
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x, timesteps, context=None):
        if context is None:
            x, context = x[:, : self.out_channels], x[:, self.out_channels :]
        self.batches.append(x.shape[0])
        self.timesteps.append(timesteps)
        idx = [c % context.shape[1] for c in range(self.out_channels)]
        x0 = (context[:, idx] > 0.5).double() * 2 - 1
        a = self.ac[timesteps.long()].reshape((-1,) + (1,) * (x.ndim - 1))
        eps = (x.double() - a.sqrt() * x0) / (1 - a).sqrt()
        self.seen.append(eps.float())
        if self.prediction_type == "epsilon":
            return eps.float()
        if self.prediction_type == "sample":
            return x0.float()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float()


class TinyNet(torch.nn.Module):
    """A small random conditional network (2D or 3D) with the MedSegDiffUNet call convention."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, width: int = 8):
        super().__init__()
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        self.out_channels = out_channels
        self.inp = conv(in_channels + out_channels, width, 3, padding=1)
        self.temb = torch.nn.Linear(1, width)
        self.out = conv(width, out_channels, 3, padding=1)

    def forward(self, x, timesteps, context=None):
        h = self.inp(torch.cat([x, context], 1))
        emb = self.temb(timesteps.float().reshape(-1, 1) / 1000.0)
        h = torch.relu(h + emb.reshape(emb.shape + (1,) * (x.ndim - 2)))
        return self.out(h)


def _image(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _max_direction_change(seen):
    return max(float((e - seen[0]).abs().max()) for e in seen)


# ------------------------------------------------------------------------------------------- correctness


@parameterized.expand(
    [
        (DDPMScheduler(T), 10),
        (DDIMScheduler(T), 10),
        (DDPMScheduler(T), 100),
        (RespacedDDIMScheduler(T), 50),
        (RespacedDDPMScheduler(T, schedule="cosine"), 10),
    ]
)
def test_ddim_trajectory_is_correct_with_any_scheduler(scheduler, steps):
    """Whatever MONAI scheduler is passed (MONAI 1.6.1's stock step is wrong), the inferer steps correctly."""
    oracle = MaskOracle(scheduler)
    image = _image((2, 1, 16, 16))
    inferer = DiffusionSegInferer(scheduler, num_inference_steps=steps, num_ensemble=3, seed=0, output="all")
    out = inferer(image, oracle)
    assert len(oracle.seen) == steps
    assert _max_direction_change(oracle.seen) <= 1e-3
    torch.testing.assert_close(out["mask"], (image > 0.5).float())
    torch.testing.assert_close(out["prob"], (image > 0.5).float(), atol=1e-4, rtol=0)
    assert float(out["uncertainty"].max()) < 1e-6


@parameterized.expand([(10,), (100,)])
def test_ddpm_sampler_keeps_unit_variance(steps):
    scheduler = DDPMScheduler(T)  # stock: its own step would fail this at 100 steps
    oracle = MaskOracle(scheduler)
    image = _image((2, 1, 64, 64))
    inferer = DiffusionSegInferer(scheduler, num_inference_steps=steps, sampler="ddpm", num_ensemble=8, seed=0)
    prob = inferer(image, oracle)
    assert max(abs(float(e.var()) - 1.0) for e in oracle.seen) < 0.05
    torch.testing.assert_close(prob, (image > 0.5).float(), atol=1e-4, rtol=0)


@parameterized.expand([("sample",), ("v_prediction",)])
def test_prediction_types(prediction_type):
    scheduler = DDIMScheduler(T, prediction_type=prediction_type)
    oracle = MaskOracle(scheduler, prediction_type=prediction_type)
    image = _image((2, 1, 16, 16))
    prob = DiffusionSegInferer(scheduler, num_inference_steps=10, num_ensemble=2, seed=0)(image, oracle)
    assert _max_direction_change(oracle.seen) <= 1e-3
    torch.testing.assert_close(prob, (image > 0.5).float(), atol=1e-4, rtol=0)


def test_ensemble_members_are_batched():
    scheduler = DDPMScheduler(T)
    oracle = MaskOracle(scheduler)
    inferer = DiffusionSegInferer(scheduler, num_inference_steps=7, num_ensemble=5)
    inferer(_image((3, 1, 8, 8)), oracle)
    assert oracle.batches == [15] * 7  # one call per step, 3 images x 5 members
    assert all(t.shape == (15,) and t.dtype == torch.long for t in oracle.timesteps)
    assert [int(t[0]) for t in oracle.timesteps] == torch.linspace(999, 0, 7).round().long().tolist()


def test_concat_mode():
    scheduler = DDPMScheduler(T)
    oracle = MaskOracle(scheduler, out_channels=2, in_channels=1)
    image = _image((2, 1, 8, 8))
    out = DiffusionSegInferer(scheduler, mode="concat", num_ensemble=2, output="mask")(image, oracle)
    torch.testing.assert_close(out, (image > 0.5).float().repeat(1, 2, 1, 1))


def test_medsegdiff_unet_both_modes():
    net = MedSegDiffUNet.from_preset("XS", spatial_dims=2, in_channels=2, out_channels=1).eval()
    image = torch.randn(2, 2, 16, 16)
    outs = [
        DiffusionSegInferer(num_inference_steps=2, num_ensemble=2, mode=mode, seed=0)(image, net)
        for mode in ("crossattn", "concat")
    ]
    assert outs[0].shape == (2, 1, 16, 16)
    torch.testing.assert_close(outs[0], outs[1])


# --------------------------------------------------------------------------------------- shapes & options


@parameterized.expand([(2, 1, 1), (2, 3, 2), (3, 2, 1)])
def test_shapes_and_dtypes(spatial_dims, in_channels, out_channels):
    spatial = (8, 12) if spatial_dims == 2 else (8, 6, 4)
    net = TinyNet(spatial_dims, in_channels, out_channels)
    image = torch.randn((2, in_channels) + spatial)
    out = DiffusionSegInferer(num_inference_steps=3, num_ensemble=4, seed=1).segment(image, net)
    for key in ("prob", "mask", "fused", "uncertainty"):
        assert out[key].shape == (2, out_channels) + spatial and out[key].dtype == torch.float32
    assert out["samples"].shape == (2, 4, out_channels) + spatial
    for key in ("prob", "fused", "samples"):
        assert 0.0 <= float(out[key].min()) and float(out[key].max()) <= 1.0
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= float(out["uncertainty"].min()) and float(out["uncertainty"].max()) <= 0.25
    torch.testing.assert_close(out["prob"], out["samples"].mean(1))
    assert not out["prob"].requires_grad


def test_output_selection():
    net, image = TinyNet(), torch.randn(1, 1, 8, 8)
    full = DiffusionSegInferer(num_inference_steps=2, num_ensemble=3, seed=0, output="all")(image, net)
    assert set(full) == {"prob", "mask", "fused", "uncertainty", "samples"}
    for key in ("prob", "mask", "uncertainty"):
        out = DiffusionSegInferer(num_inference_steps=2, num_ensemble=3, seed=0, output=key)(image, net)
        torch.testing.assert_close(out, full[key])


@parameterized.expand([("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_seed_reproducibility(sampler, eta):
    net, image = TinyNet(), torch.randn(2, 1, 8, 8)
    kw = {"num_inference_steps": 4, "num_ensemble": 3, "sampler": sampler, "eta": eta, "output": "all"}
    a = DiffusionSegInferer(seed=3, **kw)(image, net)["samples"]
    b = DiffusionSegInferer(seed=3, **kw)(image, net)["samples"]
    c = DiffusionSegInferer(seed=4, **kw)(image, net)["samples"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    unseeded = DiffusionSegInferer(seed=None, **kw)
    assert not torch.equal(unseeded(image, net)["samples"], unseeded(image, net)["samples"])


@parameterized.expand([(None,), (2,)])
def test_per_case_reproducibility(slice_axis):
    """With a seed, a case's segmentation does not depend on the other cases of its batch or their order."""
    net = TinyNet(spatial_dims=2 if slice_axis is None else 2)
    shape = (3, 1, 8, 8) if slice_axis is None else (3, 1, 8, 8, 4)
    images = _image(shape, seed=3)
    inferer = DiffusionSegInferer(num_inference_steps=4, sampler="ddpm", num_ensemble=2, seed=7, output="all",
                                  slice_axis=slice_axis, sw_batch_size=3)
    together = inferer(images, net)["samples"]
    reversed_order = inferer(images.flip(0), net)["samples"].flip(0)
    alone = torch.cat([inferer(images[i : i + 1], net)["samples"] for i in range(3)])
    torch.testing.assert_close(reversed_order, together)
    torch.testing.assert_close(alone, together)
    assert not torch.equal(together[0], together[1])  # different cases, different noise
    other_seed = DiffusionSegInferer(num_inference_steps=4, sampler="ddpm", num_ensemble=2, seed=8, output="all",
                                     slice_axis=slice_axis, sw_batch_size=3)(images, net)["samples"]
    assert not torch.equal(other_seed, together)


def test_out_channels_resolution():
    image = _image((1, 1, 8, 8))
    oracle = MaskOracle(DDPMScheduler(T), out_channels=2)

    def plain(x, timesteps, context=None):  # a callable without `out_channels`
        return oracle(x, timesteps, context)

    assert DiffusionSegInferer(out_channels=2, num_ensemble=1)(image, plain).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="out_channels"):
        DiffusionSegInferer(num_ensemble=1)(image, plain)
    wrapped = torch.nn.Module()
    wrapped.module = oracle  # e.g. DistributedDataParallel
    wrapped.forward = oracle.forward
    assert DiffusionSegInferer(num_ensemble=1)(image, wrapped).shape == (1, 2, 8, 8)

    def wrong(x, timesteps, context=None):
        return torch.zeros((x.shape[0], 2) + tuple(x.shape[2:]))

    with pytest.raises(ValueError, match="channels"):
        DiffusionSegInferer(out_channels=3, num_ensemble=1)(image, wrong)


def test_learned_variance_output_uses_mean_channels():
    oracle = MaskOracle(DDPMScheduler(T))

    def doubled(x, timesteps, context=None):
        out = oracle(x, timesteps, context)
        return torch.cat([out, torch.zeros_like(out)], 1)

    image = _image((1, 1, 8, 8))
    prob = DiffusionSegInferer(out_channels=1, num_ensemble=1)(image, doubled)
    torch.testing.assert_close(prob, (image > 0.5).float(), atol=1e-4, rtol=0)


@parameterized.expand(
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": T + 1}, "num_inference_steps"),
        ({"num_ensemble": 0}, "num_ensemble"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"sampler": "euler"}, "sampler"),
        ({"fusion": "max"}, "fusion"),
        ({"eta": -0.1}, "eta"),
        ({"uncertainty": "std"}, "uncertainty"),
        ({"output": "probs"}, "output"),
        ({"mode": "add"}, "mode"),
        ({"slice_axis": 3}, "slice_axis"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"out_channels": 0}, "out_channels"),
    ]
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DiffusionSegInferer(DDPMScheduler(T), **kwargs)


def test_staple_without_simpleitk_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dsi, "has_sitk", False)
    with pytest.raises(ImportError, match="SimpleITK"):
        DiffusionSegInferer(fusion="staple")


# ------------------------------------------------------------------------------------- fusion & uncertainty


def _crafted_samples():
    """(1, 4, 1, 1, 4) member probabilities: four pixels with distinct mean/vote outcomes."""
    members = torch.tensor(
        [
            [0.9, 0.6, 0.1, 1.0],
            [0.9, 0.6, 0.1, 1.0],
            [0.2, 0.6, 0.1, 0.0],
            [0.2, 0.0, 0.9, 0.0],
        ]
    )
    return members.reshape(1, 4, 1, 1, 4)


def test_fusion_mean_and_vote():
    samples = _crafted_samples()
    mean = DiffusionSegInferer(fusion="mean")._fuse(samples)
    torch.testing.assert_close(mean["prob"].flatten(), torch.tensor([0.55, 0.45, 0.3, 0.5]))
    torch.testing.assert_close(mean["mask"].flatten(), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    vote = DiffusionSegInferer(fusion="vote")._fuse(samples)
    torch.testing.assert_close(vote["prob"], mean["prob"])  # prob is always the ensemble mean
    torch.testing.assert_close(vote["fused"].flatten(), torch.tensor([0.5, 0.75, 0.25, 0.5]))
    torch.testing.assert_close(vote["mask"].flatten(), torch.tensor([0.0, 1.0, 0.0, 0.0]))  # strict majority
    var = mean["uncertainty"].flatten()
    torch.testing.assert_close(var, samples.var(1, unbiased=False).flatten())
    ent = DiffusionSegInferer(uncertainty="entropy")._fuse(samples)["uncertainty"].flatten()
    assert float(ent[3]) == pytest.approx(1.0) and float(ent[2]) == pytest.approx(0.8813, abs=1e-3)
    certain = DiffusionSegInferer(uncertainty="entropy")._fuse(torch.ones(1, 2, 1, 2, 2))["uncertainty"]
    assert float(certain.abs().max()) == 0.0


@pytest.mark.skipif(not has_sitk, reason="SimpleITK not installed")
def test_fusion_staple():
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(1, 1, 16, 16)
    truth[..., 4:12, 4:12] = 1
    members = truth.unsqueeze(1).repeat(1, 5, 1, 1, 1)
    flips = torch.rand(members.shape, generator=g) < torch.tensor([0.02, 0.02, 0.02, 0.02, 0.4]).reshape(1, 5, 1, 1, 1)
    members = torch.where(flips, 1 - members, members)  # four good raters, one bad
    out = DiffusionSegInferer(fusion="staple", output="all")._fuse(members)
    assert out["fused"].shape == out["mask"].shape == (1, 1, 16, 16)
    assert 0.0 <= float(out["fused"].min()) and float(out["fused"].max()) <= 1.0
    assert float((out["mask"] != truth).float().mean()) < 0.01
    empty = DiffusionSegInferer(fusion="staple")._fuse(torch.zeros(1, 3, 1, 4, 4))  # STAPLE undefined: vote
    assert float(empty["mask"].abs().max()) == 0.0 and torch.isfinite(empty["fused"]).all()
    oracle = MaskOracle(DDPMScheduler(T))
    image = _image((2, 1, 8, 8))
    mask = DiffusionSegInferer(fusion="staple", num_ensemble=3, output="mask")(image, oracle)
    torch.testing.assert_close(mask, (image > 0.5).float())


# --------------------------------------------------------------------------------------------- MONAI usage


def test_as_supervised_evaluator_inferer():
    scheduler = RespacedDDPMScheduler(T)
    oracle = MaskOracle(scheduler)
    data = []
    for i in range(3):
        image = _image((2, 1, 16, 16), seed=i)
        data.append({"image": image, "label": (image > 0.5).float()})
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        epoch_length=len(data),
        network=oracle,
        inferer=DiffusionSegInferer(scheduler, num_inference_steps=5, num_ensemble=2, seed=0, output="mask"),
        key_val_metric={"dice": MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))},
    )
    evaluator.run()
    assert evaluator.state.metrics["dice"] == pytest.approx(1.0)
    assert oracle.batches == [4] * 15


@parameterized.expand([(0, 1), (1, 2), (2, 4)])
def test_slice_mode(slice_axis, sw_batch_size):
    scheduler = DDPMScheduler(T)
    oracle = MaskOracle(scheduler)
    volume = _image((2, 1, 6, 8, 4))
    inferer = DiffusionSegInferer(
        scheduler, num_inference_steps=3, num_ensemble=2, slice_axis=slice_axis, sw_batch_size=sw_batch_size,
        seed=0, output="all",
    )
    out = inferer(volume, oracle)
    assert out["samples"].shape == (2, 2, 1, 6, 8, 4)
    torch.testing.assert_close(out["mask"], (volume > 0.5).float())
    assert _max_direction_change([e[:1] for e in oracle.seen[:3]]) <= 1e-3  # first slice batch, 3 steps
    n_slices = 2 * volume.shape[2 + slice_axis]
    assert sum(oracle.batches) == n_slices * 2 * 3  # slices x members x steps, in batches of sw x members
    assert max(oracle.batches) == min(sw_batch_size, n_slices) * 2
    again = DiffusionSegInferer(
        scheduler, num_inference_steps=3, num_ensemble=2, slice_axis=slice_axis, sw_batch_size=sw_batch_size, seed=0
    )(volume, TinyNet())
    assert again.shape == (2, 1, 6, 8, 4)
    with pytest.raises(ValueError, match="slice_axis"):
        inferer(_image((1, 1, 8, 8)), oracle)


def test_slice_mode_skips_empty_slices():
    """Slices with no nonzero voxel (background outside the head) cost no network call and come out empty."""
    scheduler = DDPMScheduler(T)
    oracle = MaskOracle(scheduler)
    volume = _image((2, 1, 8, 8, 6)) + 0.01
    volume[0, :, :, :, :2] = 0  # two empty slices in the first volume, four in the second
    volume[1, :, :, :, 2:] = 0
    out = DiffusionSegInferer(scheduler, num_inference_steps=3, num_ensemble=2, slice_axis=2, sw_batch_size=3,
                              seed=0, output="all")(volume, oracle)
    assert sum(oracle.batches) == (4 + 2) * 2 * 3  # 6 non-empty slices x 2 members x 3 steps
    assert oracle.batches[:3] == [6, 6, 6]  # slices of different volumes share network calls
    torch.testing.assert_close(out["mask"], (volume > 0.5).float())
    assert float(out["samples"][0, :, :, :, :, :2].abs().max()) == 0.0
    assert float(out["uncertainty"][1, :, :, :, 2:].abs().max()) == 0.0


def test_inside_monai_slice_inferer():
    scheduler = DDPMScheduler(T)
    oracle = MaskOracle(scheduler)
    volume = _image((1, 1, 8, 8, 5))
    seg = DiffusionSegInferer(scheduler, num_inference_steps=4, num_ensemble=3, seed=0)
    slicer = SliceInferer(roi_size=(8, 8), spatial_dim=2, sw_batch_size=5, overlap=0.0)
    prob = slicer(volume, lambda x: seg(x, oracle))
    assert prob.shape == (1, 1, 8, 8, 5)
    torch.testing.assert_close(prob, (volume > 0.5).float(), atol=1e-4, rtol=0)
    assert oracle.batches == [15] * 4  # 5 slices x 3 members per call


def test_metatensor_in_metatensor_out():
    image = MetaTensor(_image((1, 1, 8, 8)), meta={"filename_or_obj": "x.nii.gz"})
    out = DiffusionSegInferer(num_ensemble=2, output="all")(image, TinyNet())
    for key in ("prob", "mask", "uncertainty"):
        assert isinstance(out[key], MetaTensor) and out[key].meta["filename_or_obj"] == "x.nii.gz"


def test_no_host_sync_in_step_loop(monkeypatch):
    """The sampler loop never asks a tensor for a Python value (.item(), bool(), float(), ...)."""
    inferer = DiffusionSegInferer(num_inference_steps=5, num_ensemble=2, sampler="ddpm", clip_sample=True)
    net, image = TinyNet(), torch.randn(1, 1, 8, 8)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the sampling loop")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    segmenter = inferer.segmenter(net)  # the inferer's sampling loop is the segmenter's
    samples = segmenter.sample(image, torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert samples.shape == (1, 2, 1, 8, 8)


def test_progress_bar(capsys):
    out = DiffusionSegInferer(num_inference_steps=3, num_ensemble=1, progress=True)(torch.randn(1, 1, 8, 8), TinyNet())
    assert out.shape == (1, 1, 8, 8)


def test_json_configurable():
    parser = ConfigParser(
        {
            "scheduler": {
                "_target_": "medsegdiff_monai.networks.schedulers.RespacedDDPMScheduler",
                "num_train_timesteps": 100,
            },
            "inferer": {
                "_target_": "medsegdiff_monai.inferers.DiffusionSegInferer",
                "scheduler": "@scheduler",
                "num_inference_steps": 5,
                "sampler": "ddpm",
                "num_ensemble": 3,
                "threshold": 0.4,
                "fusion": "vote",
                "seed": 0,
                "slice_axis": 2,
                "sw_batch_size": 8,
            },
        }
    )
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, DiffusionSegInferer)
    assert inferer.solver.num_train_timesteps == 100 and inferer.solver.eta == 1.0 and inferer.slice_axis == 2
