# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""DiffusionSegmenter: the denoiser + sampler as one segmentation network (a bundle's zoo-compatible network_def)."""

from __future__ import annotations

import io

import pytest
import torch
from parameterized import parameterized

from monai.inferers import SliceInferer
from monai.networks.utils import copy_model_state

from medsegdiff_monai.inferers import DiffusionSegInferer
from medsegdiff_monai.inferers.diffusion_seg_inferer import image_seeds
from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler

T = 1000


pytestmark = pytest.mark.usefixtures("one_thread")



def _xs(in_channels: int = 2, out_channels: int = 1, seed: int = 0) -> MedSegDiffUNet:
    torch.manual_seed(seed)
    net = MedSegDiffUNet.from_preset("XS", in_channels=in_channels, out_channels=out_channels)
    # the output convolution starts at zero: randomise it so the network output depends on its input
    torch.nn.init.normal_(net.out[-1].conv.weight, std=0.05)
    return net.eval()


def test_forward_is_ensemble_mean_of_inferer_samples():
    net = _xs()
    image = torch.randn(2, 2, 16, 16)
    seg = DiffusionSegmenter(net, RespacedDDPMScheduler(T), num_inference_steps=4, num_ensemble=3)
    g = torch.Generator().manual_seed(5)
    members = seg.sample(image, g)
    assert members.shape == (2, 3, 1, 16, 16) and members.dtype == torch.float32
    assert 0.0 <= float(members.min()) and float(members.max()) <= 1.0
    inferer = DiffusionSegInferer(RespacedDDPMScheduler(T), num_inference_steps=4, num_ensemble=3, seed=5, output="all")
    out = inferer(image, net)
    members = seg.sample(image, seeds=image_seeds(image, 5))  # the inferer draws per-image noise streams
    torch.testing.assert_close(out["samples"], members)
    torch.testing.assert_close(out["prob"], members.mean(1))
    torch.manual_seed(1)
    prob = seg(image)
    torch.manual_seed(1)
    torch.testing.assert_close(prob, seg.sample(image).mean(1))


@parameterized.expand([("ddim",), ("ddpm",), ("dpmpp_2m",)])
def test_scripted_equals_eager(sampler):
    net = _xs()
    seg = DiffusionSegmenter(net, RespacedDDPMScheduler(T), num_inference_steps=3, num_ensemble=2, sampler=sampler)
    scripted = torch.jit.script(seg)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    image = torch.randn(1, 2, 16, 24)
    torch.manual_seed(0)
    eager = seg(image)
    torch.manual_seed(0)
    again = loaded(image)
    assert eager.shape == (1, 1, 16, 24)
    torch.testing.assert_close(again, eager, atol=1e-5, rtol=1e-5)


def test_state_dict_is_the_networks():
    net, other = _xs(seed=0), _xs(seed=1)
    seg = DiffusionSegmenter(other, RespacedDDPMScheduler(T), num_inference_steps=2, num_ensemble=1)
    assert list(seg.state_dict()) == list(net.state_dict())
    seg.load_state_dict(net.state_dict())  # a trained denoiser's checkpoint loads into the segmenter
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        torch.testing.assert_close(a, b)
    third = _xs(seed=2)
    third.load_state_dict(seg.state_dict())  # and the other way round
    torch.testing.assert_close(third.conv_in_image.conv.weight, net.conv_in_image.conv.weight)
    # MONAI's ckpt_export copies a checkpoint with copy_model_state: every key must match
    fresh = DiffusionSegmenter(_xs(seed=3), RespacedDDPMScheduler(T), num_inference_steps=2, num_ensemble=1)
    _, updated, unchanged = copy_model_state(fresh, net.state_dict())
    assert not unchanged and len(updated) == len(net.state_dict())
    # nested in another module the prefix is kept consistently
    outer = torch.nn.ModuleDict({"seg": fresh})
    keys = list(outer.state_dict())
    assert keys[0].startswith("seg.") and not any(k.startswith("seg.network.") for k in keys)
    outer.load_state_dict(outer.state_dict())


def test_inside_slice_inferer_for_a_volume():
    net = _xs()
    seg = DiffusionSegmenter(net, RespacedDDPMScheduler(T), num_inference_steps=2, num_ensemble=2)
    volume = torch.randn(1, 2, 16, 16, 5)
    prob = SliceInferer(roi_size=(16, 16), spatial_dim=2, sw_batch_size=5)(volume, seg)
    assert prob.shape == (1, 1, 16, 16, 5)


def test_bfloat16_autocast_runs_network_in_bfloat16():
    net = _xs()
    dtypes = []
    net.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    image = torch.randn(1, 2, 16, 16)
    g = torch.Generator().manual_seed(0)
    fp32 = DiffusionSegmenter(net, RespacedDDPMScheduler(T), num_inference_steps=3, num_ensemble=2).sample(image, g)
    g = torch.Generator().manual_seed(0)
    seg = DiffusionSegmenter(net, RespacedDDPMScheduler(T), num_inference_steps=3, num_ensemble=2,
                             autocast_dtype="bfloat16")
    bf16 = seg.sample(image, g)
    assert dtypes[:3] == [torch.float32] * 3 and dtypes[3:] == [torch.bfloat16] * 3
    assert bf16.dtype == torch.float32
    diff = (bf16 - fp32).abs().flatten()
    # same trajectory up to bf16 rounding of the network (a pixel near the clip boundary may move further)
    assert float(diff.mean()) < 0.01 and float(diff.quantile(0.99)) < 0.1


@parameterized.expand(
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": T + 1}, "num_inference_steps"),
        ({"num_ensemble": 0}, "num_ensemble"),
        ({"sampler": "euler"}, "sampler"),
        ({"eta": -1.0}, "eta"),
        ({"mode": "add"}, "mode"),
        ({"autocast_dtype": "int8"}, "autocast_dtype"),
    ]
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DiffusionSegmenter(_xs(), RespacedDDPMScheduler(T), **kwargs)
    with pytest.raises(TypeError, match="network"):
        DiffusionSegmenter(42)  # type: ignore[arg-type]
