# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Workloads of the speed benchmark (``benchmarks/speed.py``): the models and what one measurement runs.

A training step in the order of ``monai.engines.SupervisedTrainer`` with this package's prepare-batch and inferer,
and the segmentation of one slice by ``DiffusionSegmenter``, for the MedSegDiffUNet presets and MONAI's
``DiffusionModelUNet`` baseline in each precision/layout setting. :func:`run_config` is what a measuring process
runs (see :func:`speed_harness.run_isolated`).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import monai.networks.blocks.selfattention as monai_selfattention  # noqa: E402
from monai.networks.nets import DiffusionModelUNet  # noqa: E402
from monai.utils import optional_import  # noqa: E402
from speed_harness import profile_call, timed_runs  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from medsegdiff_monai.engines import SegDiffusionPrepareBatch  # noqa: E402
from medsegdiff_monai.inferers import AutocastDiffusionInferer  # noqa: E402
from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet  # noqa: E402
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler  # noqa: E402

__all__ = [
    "PRELOAD",
    "IN_CHANNELS",
    "OUT_CHANNELS",
    "BASELINE",
    "PRESETS",
    "BASELINE_CONFIG",
    "BASELINE_CONFIG_QUICK",
    "VARIANTS",
    "DEFAULT_VARIANTS",
    "TASKS",
    "HAS_EINOPS",
    "baseline_attention_note",
    "build_network",
    "model_info",
    "setting_label",
    "measure",
    "profile",
    "run_config",
]

_, HAS_EINOPS = optional_import("einops")

# imported once by the fork server that every measuring process is forked from
PRELOAD = [
    "torch",
    "torch._dynamo",  # imported on first use by torch.optim (0.7 s per process otherwise)
    "torch.profiler",
    "torch.utils.flop_counter",
    "monai",
    "monai.networks.nets",
    "medsegdiff_monai.engines",
    "medsegdiff_monai.inferers",
    "medsegdiff_monai.networks.nets",
    "medsegdiff_monai.networks.schedulers",
    "speed_harness",
    "speed_workloads",
]

IN_CHANNELS = 4  # BraTS: t1, t1ce, t2, flair
OUT_CHANNELS = 1  # whole-tumour mask
NUM_TRAIN_TIMESTEPS = 1000
BASELINE = "MONAI"
PRESETS = ("XS", "S", "B")

# MONAI's DDPM segmentation tutorial ("Diffusion Models for Implicit Image Segmentation Ensembles") uses
# channels=(64, 64, 64), attention at the last level, num_res_blocks=1, num_head_channels=64 on 64x64 slices. Same
# style here, widened and deepened (4 downsamplings) to about the parameter count of preset "B" (21.9 M vs 22.2 M).
BASELINE_CONFIG: dict[str, Any] = {
    "channels": (64, 128, 192, 256, 256),
    "attention_levels": (False, False, False, True, True),
    "num_res_blocks": 1,
    "num_head_channels": 64,
    "with_conditioning": False,
}
# --quick: a tiny baseline of the same structure, so that every code path runs in seconds
BASELINE_CONFIG_QUICK: dict[str, Any] = {
    "channels": (32, 32, 64),
    "attention_levels": (False, False, True),
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "with_conditioning": False,
}

# setting name -> (autocast dtype, channels-last convolution weights)
VARIANTS: dict[str, tuple[str | None, bool]] = {
    "fp32": (None, False),
    "fp32-cl": (None, True),
    "bf16": ("bfloat16", False),
    "bf16-cl": ("bfloat16", True),
}
# All four by default: which one is fastest depends on the CPU, so it is chosen by measurement. On AMD EPYC with
# AVX-512-bf16 (no AMX) bf16 convolutions were slow unless channels-last; on Intel Xeon with AMX, plain bf16 was the
# fastest training setting and bf16-cl the fastest sampling setting (docs/speed_intel_amx/benchmark.md).
DEFAULT_VARIANTS = ("fp32", "fp32-cl", "bf16", "bf16-cl")
TASKS = ("train", "sample")


# ---------------------------------------------------------------------------------------------------- models
class _RearrangeStandIn(nn.Module):
    """Stand-in for ``einops.layers.torch.Rearrange`` for the three patterns MONAI's ``SABlock`` uses.

    Only used when ``einops`` (an optional MONAI dependency this project does not require) is not installed. The
    rearrangements are the reshape/permute views einops itself performs, so MONAI's attention code runs unchanged
    around them.

    Args:
        pattern: the einops pattern.
        axes_lengths: named axis lengths; ``l`` is the number of heads.
    """

    PATTERNS = ("b h (l d) -> b l h d", "b l h d -> b h (l d)", "b h (qkv l d) -> qkv b l h d")

    def __init__(self, pattern: str, **axes_lengths: int) -> None:
        super().__init__()
        self.pattern = " ".join(pattern.split())
        if self.pattern not in self.PATTERNS:
            raise NotImplementedError(f"Rearrange stand-in: unsupported pattern {pattern!r}; install einops.")
        self.heads = int(axes_lengths.get("l", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pattern == self.PATTERNS[0]:
            b, n, c = x.shape
            return x.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        if self.pattern == self.PATTERNS[1]:
            b, heads, n, d = x.shape
            return x.permute(0, 2, 1, 3).reshape(b, n, heads * d)
        b, n, c = x.shape
        return x.reshape(b, n, 3, self.heads, c // (3 * self.heads)).permute(2, 0, 3, 1, 4)


def baseline_attention_note() -> str:
    """How the baseline's attention blocks were built in this run."""
    if HAS_EINOPS:
        return "MONAI's SpatialAttentionBlock runs with einops (installed)."
    return (
        "einops is not installed (MONAI needs it for SpatialAttentionBlock, which DiffusionModelUNet's middle block "
        "always has): the benchmark gives MONAI's SABlock a reshape/permute stand-in for einops' Rearrange; the "
        "attention computation (MONAI's default non-flash path, as in the tutorial) and the parameters are MONAI's."
    )


def build_network(model: str, channels_last: bool, quick: bool = False) -> tuple[nn.Module, str]:
    """Build a model; return it with the DiffusionInferer conditioning mode it is called with.

    Args:
        model: a MedSegDiffUNet preset name, or ``BASELINE``.
        channels_last: store the convolution weights channels-last.
        quick: the tiny baseline configuration.

    Returns:
        ``(network, mode)``: mode "crossattn" (MedSegDiffUNet) or "concat" (the baseline).
    """
    if model == BASELINE:
        if not HAS_EINOPS:
            monai_selfattention.Rearrange = _RearrangeStandIn  # type: ignore[attr-defined]
        config = BASELINE_CONFIG_QUICK if quick else BASELINE_CONFIG
        net: nn.Module = DiffusionModelUNet(
            spatial_dims=2, in_channels=IN_CHANNELS + OUT_CHANNELS, out_channels=OUT_CHANNELS, **config
        )
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net, "concat"
    net = MedSegDiffUNet.from_preset(
        model, spatial_dims=2, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, channels_last=channels_last
    )
    return net, "crossattn"


def model_info(model: str, sizes: Sequence[int], quick: bool) -> dict[str, Any]:
    """Parameter count and forward GFLOPs per image (FlopCounterMode: convolutions, matrix products, attention)."""
    net, mode = build_network(model, channels_last=False, quick=quick)
    info: dict[str, Any] = {"params": sum(p.numel() for p in net.parameters()), "mode": mode, "forward_gflops": {}}
    if model == BASELINE:
        config = BASELINE_CONFIG_QUICK if quick else BASELINE_CONFIG
        info["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    net.eval()
    for size in sizes:
        x, image = torch.zeros(1, OUT_CHANNELS, size, size), torch.zeros(1, IN_CHANNELS, size, size)
        t = torch.tensor([1])
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            if mode == "concat":
                net(torch.cat([x, image], dim=1), timesteps=t)
            else:
                net(x, timesteps=t, context=image)
        info["forward_gflops"][str(size)] = round(counter.get_total_flops() / 1e9, 3)
    return info


# ---------------------------------------------------------------------------------------------------- measurements
def setting_label(variant: str, extra: str = "") -> str:
    """Column label of a setting: the variant, plus "+compile" or "+malloc"."""
    return variant + (f"+{extra}" if extra else "")


def _network(cfg: dict[str, Any]) -> tuple[nn.Module, str]:
    """The configuration's network (``torch.compile``-d for the "compile" extra) and its conditioning mode."""
    _, channels_last = VARIANTS[cfg["variant"]]
    net, mode = build_network(cfg["model"], channels_last, cfg["quick"])
    if cfg["extra"] == "compile":
        net = torch.compile(net)  # type: ignore[assignment]
    return net, mode


def _train_setup(cfg: dict[str, Any]) -> tuple[Callable[[], Any], Callable[[], Any], float]:
    """A training step, in the order of ``monai.engines.SupervisedTrainer._iteration``, with this project's parts.

    Returns:
        ``(timed call, warm-up call, cost of one warm-up call in timed calls)``.
    """
    autocast, _ = VARIANTS[cfg["variant"]]
    net, mode = _network(cfg)
    net.train()
    size, batch = cfg["size"], cfg["train_batch"]
    scheduler = RespacedDDPMScheduler(NUM_TRAIN_TIMESTEPS)
    prepare_batch = SegDiffusionPrepareBatch(scheduler)
    inferer = AutocastDiffusionInferer(scheduler, autocast_dtype=autocast)
    loss_function = nn.MSELoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batchdata = {
        "image": torch.randn(batch, IN_CHANNELS, size, size, generator=g),
        "label": (torch.rand(batch, OUT_CHANNELS, size, size, generator=g) > 0.7).float(),
    }

    def step() -> None:
        inputs, targets, args, kwargs = prepare_batch(batchdata)  # x0 = 2 * mask - 1; noise, timesteps, image
        optimizer.zero_grad(set_to_none=True)
        pred = inferer(inputs, net, *args, mode=mode, **kwargs)  # scheduler.add_noise, network(x_t, t, image)
        loss = loss_function(pred, targets).mean()
        loss.backward()
        optimizer.step()

    return step, step, 1.0


def _sample_setup(cfg: dict[str, Any]) -> tuple[Callable[[], Any], Callable[[], Any], float]:
    """Segmentation of ONE slice by ``DiffusionSegmenter``, all ensemble members in one network call per step.

    Returns:
        ``(timed call, warm-up call, cost of one warm-up call in timed calls)``; the warm-up samples with the same
        network and shapes but ``min(2, steps)`` steps.
    """
    autocast, _ = VARIANTS[cfg["variant"]]
    net, mode = _network(cfg)
    net.eval()
    image = torch.randn(1, IN_CHANNELS, cfg["size"], cfg["size"], generator=torch.Generator().manual_seed(0))

    def segmenter(steps: int) -> DiffusionSegmenter:
        return DiffusionSegmenter(
            net,
            RespacedDDPMScheduler(NUM_TRAIN_TIMESTEPS),
            num_inference_steps=steps,
            sampler=cfg["sampler"],
            num_ensemble=cfg["ensemble"],
            out_channels=OUT_CHANNELS,
            mode=mode,
            autocast_dtype=autocast,
        ).eval()

    warm_steps = min(2, cfg["steps"])
    timed, warm = segmenter(cfg["steps"]), segmenter(warm_steps)
    return (lambda: timed(image)), (lambda: warm(image)), warm_steps / cfg["steps"]


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration: warm-up calls, then ``repeats`` timed calls, all under the peak-RSS probe.

    Args:
        cfg: model, size, variant, extra, task, quick, train_batch, steps, ensemble, repeats, warmup.

    Returns:
        the result record (seconds, MiB).
    """
    torch.manual_seed(0)
    fn, warm, warm_cost = (_train_setup if cfg["task"] == "train" else _sample_setup)(cfg)
    warm_times, runs, mem, other = timed_runs(fn, warm, cfg["warmup"], cfg["repeats"])
    median = statistics.median(runs)
    record: dict[str, Any] = {
        "median_s": round(median, 4),
        "runs_s": [round(t, 4) for t in runs],
        "warmup_s": [round(t, 4) for t in warm_times],
    }
    if cfg["task"] == "sample":
        record.update(steps=cfg["steps"], sampler=cfg["sampler"], ensemble=cfg["ensemble"], per_step_s=round(median / cfg["steps"], 4))
    else:
        record["batch"] = cfg["train_batch"]
    if cfg["extra"] == "compile" and warm_times:
        # the first call compiles (the forward; for training also the backward), then runs once
        record["compile_s"] = round(max(warm_times[0] - warm_cost * median, 0.0), 2)
    record.update(
        peak_rss_growth_mib=round(mem.growth_mib, 1),
        peak_rss_mib=round(mem.peak_mib, 1),
        memory_method=mem.method,
        minor_page_faults_per_call=round(other.minor_faults / len(runs)),
        other_cpu_share=None if other.share is None else round(other.share, 3),
    )
    return record


def profile(cfg: dict[str, Any]) -> dict[str, Any]:
    """One call of a configuration (after a warm-up call) under ``torch.profiler`` (``speed_harness.profile_call``).

    Returns:
        ``{"table", "top": [{name, calls, self_cpu_s, self_cpu_pct}], "total_self_cpu_s", "profiled_wall_s"}``.
    """
    torch.manual_seed(0)
    fn, warm, _ = (_train_setup if cfg["task"] == "train" else _sample_setup)(cfg)
    return profile_call(fn, warm, cfg["profile_rows"])


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a measuring process runs: :func:`profile` when ``cfg["profile"]``, else :func:`measure`."""
    return profile(cfg) if cfg.get("profile") else measure(cfg)
