# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MedSegDiffUNet ``context_repeats``: the member-independent image branch runs once per image, same outputs."""

from __future__ import annotations

import pytest
import torch

from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler

pytestmark = pytest.mark.usefixtures("one_thread")

# 4 levels -> 3 two-encoder levels, conditioning at 1 and 2: level 0 of the image encoder is member-independent
SMALL = {"channels": (8, 16, 16, 32), "num_res_blocks": 1, "attention_levels": (False, False, False, True),
         "norm_num_groups": 8, "num_head_channels": 8}


def _net(spatial_dims: int = 2, **kwargs) -> MedSegDiffUNet:
    torch.manual_seed(0)
    net = MedSegDiffUNet(spatial_dims, in_channels=4, out_channels=2, **{**SMALL, **kwargs}).eval()
    for p in net.out.parameters():  # the output convolution is zero-initialised: make the output non-trivial
        torch.nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize(
    "spatial_dims, kwargs, autocast",
    [
        (2, {}, False),
        (2, {}, True),
        (2, {"channels_last": False}, False),
        (2, {"dynamic_conditioning": False}, False),  # no fusion: the whole image encoder is shared
        (2, {"conditioning_levels": (0,)}, False),  # fusion at level 0: only the input convolution is shared
        (3, {}, False),
    ],
)
def test_same_output_as_repeated_context(spatial_dims, kwargs, autocast):
    net = _net(spatial_dims, **kwargs)
    size = (16,) * spatial_dims
    image = torch.randn((3, 4) + size)
    r = 4
    x = torch.randn((3 * r, 2) + size)
    t = torch.tensor([3, 400, 999]).repeat_interleave(r)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        repeated = net(x, t, context=image.repeat_interleave(r, dim=0))
        shared = net(x, t, context=image, context_repeats=r)
    assert shared.shape == repeated.shape
    assert torch.equal(shared, repeated)  # bit for bit
    assert repeated.abs().sum() > 0


def test_image_branch_runs_once_per_image():
    net = _net()
    rows: list[int] = []
    net.encoder[0].image_stage.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    net.encoder[1].image_stage.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    image, x, t = torch.randn(2, 4, 16, 16), torch.randn(10, 2, 16, 16), torch.full((10,), 50)
    with torch.no_grad():
        net(x, t, context=image, context_repeats=5)
    assert rows == [2, 10]  # level 0 once per image; level 1 fuses the mask features, so once per member


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_segmenter_results_identical_with_and_without_sharing(sampler):
    net = _net()
    calls: list[int] = []
    net.conv_in_image.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    image = torch.randn(3, 4, 16, 16)
    out = {}
    for share in (False, True):
        seg = DiffusionSegmenter(net, RespacedDDPMScheduler(1000), num_inference_steps=3, sampler=sampler,
                                 num_ensemble=4, share_context=share)
        assert seg.share_context is share
        out[share] = seg.sample(image, seeds=[1, 2, 3])
    assert torch.equal(out[True], out[False])
    assert calls == [12] * 3 + [3] * 3  # 3 steps: 3 images x 4 members, then 3 images


def test_not_shared_in_concat_mode_or_for_other_networks():
    net = _net()
    assert not DiffusionSegmenter(net, mode="concat", num_ensemble=2, out_channels=2).share_context
    other = torch.nn.Conv2d(6, 2, 3, padding=1)
    assert not DiffusionSegmenter(lambda x, timesteps, context: other(torch.cat([x, context], 1)), num_ensemble=2,
                                  out_channels=2).share_context


def test_bad_context_repeats():
    net = _net()
    image, x, t = torch.randn(2, 4, 16, 16), torch.randn(6, 2, 16, 16), torch.zeros(6)
    with pytest.raises(ValueError, match="context_repeats must be >= 1"):
        net(x, t, context=image, context_repeats=0)
    with pytest.raises(ValueError, match="does not match x shape"):
        net(x, t, context=image, context_repeats=2)
    with pytest.raises(ValueError, match="needs the image as `context`"):
        net(torch.randn(6, 6, 16, 16), t, context_repeats=3)
