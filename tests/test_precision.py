# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Inference precision: ``amp_dtype="auto"`` chooses by a timed probe, and bfloat16 barely changes the masks."""

from __future__ import annotations

import pytest
import torch

from medsegdiff_monai.inferers import AutocastDiffusionInferer, DiffusionSegInferer
from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler
import medsegdiff_monai.networks.nets.diffusion_segmenter as segmenter_module
from medsegdiff_monai.utils import bfloat16_kernels_available, time_autocast

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> MedSegDiffUNet:
    torch.manual_seed(0)
    net = MedSegDiffUNet.from_preset("XS", in_channels=4, out_channels=1).eval()
    for p in net.out.parameters():  # zero-initialised output convolution: make the predictions non-trivial
        torch.nn.init.normal_(p, std=0.05)
    return net


def _image(size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 4) ** 2).float()
    return disc.expand(2, 4, size, size) + 0.1 * torch.randn(2, 4, size, size, generator=g)


def test_time_autocast_decides_by_the_measured_ratio():
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        choice, times = time_autocast(lambda: conv(x), "cpu", repeats=1, min_speedup=0.0)
        assert choice == "bfloat16" and set(times) == {"float32", "bfloat16"}
        assert all(v > 0 for v in times.values())
        choice, _ = time_autocast(lambda: conv(x), "cpu", repeats=1, min_speedup=1e9)
        assert choice is None
    with pytest.raises(ValueError, match="repeats"):
        time_autocast(lambda: conv(x), "cpu", repeats=0)


def test_time_autocast_stops_probing_a_much_slower_bfloat16():
    import time

    calls = {"float32": 0, "bfloat16": 0}

    def fn() -> None:  # bfloat16 10x slower, as on a CPU without native bfloat16
        bf16 = torch.is_autocast_enabled("cpu")
        calls["bfloat16" if bf16 else "float32"] += 1
        time.sleep(0.02 if bf16 else 0.002)

    choice, times = time_autocast(fn, "cpu", repeats=3)
    assert choice is None and times["bfloat16"] > 5 * times["float32"]
    assert calls == {"float32": 2, "bfloat16": 2}  # warm-up + one timed run each, not 1 + 3

    calls.update(float32=0, bfloat16=0)

    def close() -> None:  # bfloat16 a little slower: not given up, all repeats run
        bf16 = torch.is_autocast_enabled("cpu")
        calls["bfloat16" if bf16 else "float32"] += 1
        time.sleep(0.012 if bf16 else 0.01)

    assert time_autocast(close, "cpu", repeats=3)[0] is None
    assert calls == {"float32": 4, "bfloat16": 4}


@pytest.mark.parametrize("kernels", [True, False])
def test_auto_uses_the_measured_choice_and_leaves_the_random_state_alone(kernels, monkeypatch):
    # both branches on any CPU: with bfloat16 kernels the probe times both precisions; without, it is skipped
    monkeypatch.setattr(segmenter_module, "bfloat16_kernels_available", lambda device: kernels)
    net = _net()
    image = _image()
    sched = RespacedDDPMScheduler(1000)
    auto = DiffusionSegmenter(net, sched, num_inference_steps=2, sampler="ddpm", num_ensemble=2,
                              autocast_dtype="auto")
    state = torch.get_rng_state()
    out = auto.sample(image, seeds=[3, 4])
    assert torch.equal(torch.get_rng_state(), state)
    choice = auto.autocast_choices["cpu"]
    if kernels:
        assert choice["dtype"] in (None, "bfloat16") and set(choice["times"]) == {"float32", "bfloat16"}
    else:
        assert choice == {"dtype": None, "times": {}}
    fixed = DiffusionSegmenter(net, sched, num_inference_steps=2, sampler="ddpm", num_ensemble=2,
                               autocast_dtype=choice["dtype"])
    assert torch.equal(out, fixed.sample(image, seeds=[3, 4]))
    # measured once per device
    auto.sample(image, seeds=[3, 4])
    assert list(auto.autocast_choices) == ["cpu"]


def test_bfloat16_kernels_available_answers_what_pytorch_answers():
    expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bfloat16_kernels_available("cpu") is expected
    assert bfloat16_kernels_available(torch.device("cpu")) is expected
    assert bfloat16_kernels_available("meta") is True  # other devices: timing decides


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a * b).sum() / (a.sum() + b.sum()))


def test_bfloat16_masks_agree_with_float32():
    net = _net()
    image = _image()
    out = {}
    for dtype in (None, "bfloat16"):
        inferer = DiffusionSegInferer(RespacedDDPMScheduler(1000), num_inference_steps=5, sampler="ddpm",
                                      num_ensemble=5, seed=0, output="all", autocast_dtype=dtype)
        out[dtype] = inferer(image, net)
    mask32, mask16 = out[None]["mask"], out["bfloat16"]["mask"]
    assert 0.05 < float(mask32.mean()) < 0.95  # a non-trivial segmentation
    assert _dice(mask32, mask16) >= 0.98
    diff = float((out[None]["prob"] - out["bfloat16"]["prob"]).abs().mean())
    assert 0.0 < diff <= 0.02  # bfloat16 did run (the probabilities differ), and barely changed them


def test_auto_is_for_inference_only():
    with pytest.raises(ValueError, match="inference only"):
        AutocastDiffusionInferer(RespacedDDPMScheduler(1000), "auto")
    with pytest.raises(ValueError, match="autocast_dtype"):
        DiffusionSegInferer(autocast_dtype="fp8")
