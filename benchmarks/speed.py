# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Speed and memory of training and sampling on this CPU: MedSegDiffUNet presets against MONAI's DiffusionModelUNet.

Measured for every model, input size and setting, each in a fresh process:

- training step: ``SegDiffusionPrepareBatch`` (noise, timesteps) -> ``AutocastDiffusionInferer`` (noise the mask with
  the scheduler, call the network with the image as condition) -> ``MSELoss`` against the noise -> ``backward`` ->
  ``torch.optim.AdamW.step``, in the order of ``monai.engines.SupervisedTrainer``; batch 2;
- sampling: ``DiffusionSegmenter`` segmenting ONE slice with the whole ensemble (5 members) batched, with the
  bundle's default sampler (5 DDPM steps; ``--sampler``, ``--steps``); the time per step is reported too (other step counts scale linearly);
- peak memory: growth of the process's resident set over the measurement (see ``MEMORY_NOTE``).

Models: the MedSegDiffUNet presets XS, S, B (dual encoder, image as ``context``) and, as the baseline, MONAI's
``DiffusionModelUNet`` used as MONAI's DDPM segmentation tutorial uses it: image concatenated to the noisy mask along
channels (``mode="concat"``, ``in_channels = 4 + 1``), in the tutorial's style (64 channels at full resolution, one
residual block per level, attention at the deepest levels, 64 channels per head), sized to the parameter count of "B".
Settings: float32 or bfloat16 autocast, channels-last convolution weights or not; optionally ``torch.compile``
(``--compile``) and a tuned glibc allocator (``--malloc-tuned``), each measured next to the plain setting.

Usage::

    python benchmarks/speed.py                  # XS, S, B, MONAI at 128 and 256 -> docs/benchmark.md, .json (~15 min)
    python benchmarks/speed.py --profile always # the same, plus torch.profiler tables of the two target settings
    python benchmarks/speed.py --quick          # tiny models, 32x32: checks every code path in seconds (a test runs it)
    python benchmarks/speed.py --presets B --sizes 256 --variants bf16-cl --no-baseline --compile --malloc-tuned

The numbers are only good on a quiet machine: other jobs on the same cores slow every measurement down. The load
average before the run and the CPU share other processes took during each measurement are in the report.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import multiprocessing
import multiprocessing.forkserver as forkserver
import os
import platform
import re
import resource
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

_STARTED = time.perf_counter()  # the run's wall time counts the library imports too

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import monai  # noqa: E402
import monai.networks.blocks.selfattention as monai_selfattention  # noqa: E402
from monai.networks.nets import DiffusionModelUNet  # noqa: E402
from monai.utils import optional_import  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from medsegdiff_monai.engines import SegDiffusionPrepareBatch  # noqa: E402
from medsegdiff_monai.inferers import AutocastDiffusionInferer  # noqa: E402
from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet  # noqa: E402
from medsegdiff_monai.networks.schedulers import RespacedDDPMScheduler  # noqa: E402

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

# targets on a 2-core machine, for the best measured setting of preset "B" at 256x256
TARGETS: dict[str, dict[str, Any]] = {
    "train": {"model": "B", "size": 256, "limit_s": 5.0, "what": "training step, batch 2"},
    "sample": {"model": "B", "size": 256, "limit_s": 10.0, "what": "one slice, 5-member ensemble, the bundle's sampler"},
}
LOAD_WARNING_THRESHOLD = 0.5  # 1-min load average before the run
OTHER_LOAD_THRESHOLD = 0.1  # share of the machine's CPU time other processes used during the timed calls

# glibc mallopt parameters (malloc.h) for --malloc-tuned
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts at run time on 64-bit
MALLOC_TRIM_THRESHOLD = 2**31 - 1

MEMORY_NOTE = (
    "Peak memory is the growth of the resident set of the measuring process (a fresh process per model, size, "
    "setting and task, forked from a server that has only imported the libraries): the peak RSS (Linux VmHWM, reset "
    "through /proc/self/clear_refs just before the first call) minus the RSS at that moment, when the model, the "
    "optimiser object and the inputs exist. It is what the task adds over the warm-up and all timed calls: "
    "activations kept for backward, gradients and AdamW state (training), autocast weight copies, oneDNN and "
    "allocator caches, for +compile also the compiler. The float32 weights themselves are not included."
)


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


# ---------------------------------------------------------------------------------------------------- probes
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process (VmHWM, also behind ru_maxrss) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _PeakRSS:
    """Peak resident-set growth over a block, in MiB (see ``MEMORY_NOTE``)."""

    def __enter__(self) -> _PeakRSS:
        self.reset = _reset_peak_rss()
        self.rss_before = _status_kib("VmRSS") or 0
        self.method = "VmHWM after clear_refs" if self.reset else "ru_maxrss, not reset (lower bound)"
        return self

    def __exit__(self, *exc: Any) -> None:
        peak = _status_kib("VmHWM") if self.reset else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak_mib = peak / 1024
        self.growth_mib = max(peak - self.rss_before, 0) / 1024


def _busy_ticks() -> int | None:
    """Busy CPU time of the whole machine (all CPUs, all processes) in clock ticks, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _OtherLoad:
    """Share of the machine's CPU time that *other* processes used over a block: (busy time of all CPUs minus this
    process's CPU time) / (wall time x CPUs). About 0 on a quiet machine; 0.5 on two CPUs means another job kept a
    core busy, and the block's timing is not to be trusted."""

    def __enter__(self) -> _OtherLoad:
        self.busy0, self.own0, self.wall0 = _busy_ticks(), _own_cpu_s(), time.perf_counter()
        self.faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return self

    def __exit__(self, *exc: Any) -> None:
        busy1, own1, wall = _busy_ticks(), _own_cpu_s(), time.perf_counter() - self.wall0
        self.minor_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults0
        self.share: float | None = None
        if self.busy0 is not None and busy1 is not None and wall > 0:
            others = (busy1 - self.busy0) / os.sysconf("SC_CLK_TCK") - (own1 - self.own0)
            self.share = min(max(others / (wall * (os.cpu_count() or 1)), 0.0), 1.0)


def tune_glibc_malloc() -> bool:
    """``mallopt``: serve blocks up to 32 MiB from the heap and keep freed heap memory (no trimming), so that the
    activation buffers of one network call are reused by the next instead of being unmapped and page-faulted (and
    zero-filled by the kernel) again. Same effect as ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=...``.

    Returns:
        True if glibc accepted both settings.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) == 1
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) == 1
    return ok_mmap and ok_trim


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


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration: warm-up calls, then ``repeats`` timed calls, all under the peak-RSS probe.

    Args:
        cfg: model, size, variant, extra, task, quick, train_batch, steps, ensemble, repeats, warmup.

    Returns:
        the result record (seconds, MiB).
    """
    torch.manual_seed(0)
    fn, warm, warm_cost = (_train_setup if cfg["task"] == "train" else _sample_setup)(cfg)
    with _PeakRSS() as mem:
        warm_times = [_timed(warm) for _ in range(cfg["warmup"])]
        with _OtherLoad() as other:
            runs = [_timed(fn) for _ in range(cfg["repeats"])]
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
    """One call of a configuration (after a warm-up call) under ``torch.profiler``: top ops by self CPU time.

    Returns:
        ``{"table": the profiler's table, "top": [{name, calls, self_cpu_s, self_cpu_pct}], "total_self_cpu_s",
        "profiled_wall_s"}``.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    fn, warm, _ = (_train_setup if cfg["task"] == "train" else _sample_setup)(cfg)
    warm()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _timed(fn)
    averages = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in averages)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[: cfg["profile_rows"]]
    return {
        "table": averages.table(sort_by="self_cpu_time_total", row_limit=cfg["profile_rows"]),
        "top": [
            {
                "name": e.key,
                "calls": e.count,
                "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
                "self_cpu_pct": round(100.0 * e.self_cpu_time_total / max(total_us, 1e-9), 1),
            }
            for e in top
        ],
        "total_self_cpu_s": round(total_us / 1e6, 3),
        "profiled_wall_s": round(wall, 3),
    }


def _child(cfg: dict[str, Any], conn: Any) -> None:
    """Entry point of a measuring process: allocator, threads, run, send the record (or the error) back."""
    try:
        if cfg["extra"] == "malloc" and not tune_glibc_malloc():
            raise RuntimeError("glibc mallopt is not available here")
        torch.set_num_threads(cfg["threads"])
        record = profile(cfg) if cfg.get("profile") else measure(cfg)
    except Exception as e:  # reported, not raised: a failing configuration (e.g. torch.compile) skips only itself
        message = str(e).strip().splitlines()
        record = {"error": f"{type(e).__name__}: {message[0] if message else ''}"[:300]}
        record["traceback"] = traceback.format_exc(limit=-4)
    conn.send(record)
    conn.close()


def run_isolated(ctx: Any, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``cfg`` in a fresh process forked from the fork server; return its record (with ``error`` on failure)."""
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(cfg, sender))
    proc.start()
    sender.close()
    record: dict[str, Any]
    try:
        record = receiver.recv() if receiver.poll(timeout) else {"error": f"no result within {timeout:.0f} s"}
    except EOFError:
        record = {"error": "the measuring process died"}
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if "error" in record and proc.exitcode not in (0, None):
        record["error"] += f" (exit code {proc.exitcode})"
    return record


# ---------------------------------------------------------------------------------------------------- report
def machine_info(threads: int) -> dict[str, Any]:
    """Date, library versions, CPU model and its relevant instruction sets, threads, load average."""
    cpu_model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu_model = m.group(1).strip() if m else cpu_model
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
        flags = set(m.group(1).split()) if m else set()
    except OSError:
        pass
    load = [round(v, 2) for v in os.getloadavg()]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_before": load,
        "load_warning": load[0] > LOAD_WARNING_THRESHOLD,
        "einops": bool(HAS_EINOPS),
    }


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r


def _find(results: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    return next((r for r in results if _ok(r) and all(r.get(k) == v for k, v in keys.items())), None)


def compute_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours / baseline, pair by pair: same size, setting and task, measured one after the other in this run."""
    ratios = []
    for r in results:
        if not _ok(r) or r["model"] == BASELINE:
            continue
        base = _find(results, model=BASELINE, size=r["size"], label=r["label"], task=r["task"])
        if base is None:
            continue
        entry = {k: r[k] for k in ("model", "size", "label", "task")}
        entry["time_ratio"] = round(r["median_s"] / base["median_s"], 3)
        if base["peak_rss_growth_mib"] > 0:
            entry["memory_ratio"] = round(r["peak_rss_growth_mib"] / base["peak_rss_growth_mib"], 3)
        ratios.append(entry)
    return ratios


def check_targets(results: list[dict[str, Any]], stand_in: tuple[str, int] | None) -> list[dict[str, Any]]:
    """For each target: the fastest measured setting of its model and size, and whether it is within the limit.

    Args:
        results: the measurements.
        stand_in: ``(model, size)`` replacing "B" at 256x256 (``--quick``), or None.
    """
    out = []
    for task, target in TARGETS.items():
        model, size = stand_in if stand_in else (target["model"], target["size"])
        cands = [r for r in results if _ok(r) and r["model"] == model and r["size"] == size and r["task"] == task]
        entry: dict[str, Any] = {
            "task": task,
            "what": target["what"],
            "model": model,
            "size": size,
            "limit_s": target["limit_s"],
            "stand_in": stand_in is not None,
            "best_label": None,
            "best_s": None,
            "met": None,
        }
        if cands:
            best = min(cands, key=lambda r: r["median_s"])
            entry.update(best_label=best["label"], best_s=best["median_s"], met=best["median_s"] <= target["limit_s"])
            entry["all_s"] = {r["label"]: r["median_s"] for r in cands}
            if task == "sample":
                entry["what"] += f" ({best['steps']} {best['sampler'].upper()} steps)"
        out.append(entry)
    return out


def _time_cell(r: dict[str, Any] | None, ratios: list[dict[str, Any]]) -> str:
    if r is None:
        return "-"
    if not _ok(r):
        return "failed"
    text = f"{r['median_s']:.3f}" if r["median_s"] < 10 else f"{r['median_s']:.1f}"
    ratio = next((x for x in ratios if all(x[k] == r[k] for k in ("model", "size", "label", "task"))), None)
    if ratio is not None:
        text += f" ({ratio['time_ratio']:.2f}x)"
    if r["task"] == "sample":
        text += f" [{r['per_step_s']:.3f}]"
    if (r.get("other_cpu_share") or 0.0) > OTHER_LOAD_THRESHOLD:
        text += " †"
    return text


def _table(report: dict[str, Any], task: str, size: int, cell: Callable[[dict[str, Any] | None], str]) -> list[str]:
    labels = report["settings"]["labels"]
    lines = ["| model | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for model in report["settings"]["models"]:
        cells = [cell(_find_any(report["results"], model, size, task, label)) for label in labels]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _find_any(results: list[dict[str, Any]], model: str, size: int, task: str, label: str) -> dict[str, Any] | None:
    keys = {"model": model, "size": size, "task": task, "label": label}
    return next((r for r in results if all(r.get(k) == v for k, v in keys.items())), None)


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: header, targets, times, memory, compile, models, method, profiles, failures."""
    m, s, results = report["meta"], report["settings"], report["results"]
    lines = [
        "# Speed benchmark: training step and sampling on CPU",
        "",
        f"Generated by `{report['command']}` (wall time of the whole run: {report['total_wall_s']:.0f} s); do not edit "
        "by hand.",
        "",
        f"- date: {m['date']}",
        f"- torch {m['torch']}, MONAI {m['monai']}, Python {m['python']}",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs (flags: {', '.join(m['cpu_flags']) or '-'})",
        f"- torch threads: {m['threads']}",
        f"- 1/5/15-min load average before the run: {m['load_average_before']}; after: {m['load_average_after']}",
    ]
    if m["load_warning"]:
        lines += [
            "",
            f"**Warning: the 1-min load average before the run was {m['load_average_before'][0]} (> "
            f"{LOAD_WARNING_THRESHOLD}): other jobs were using these cores, the times below may be too slow.**",
        ]
    if s["quick"]:
        lines += ["", "**Quick mode: tiny models and inputs, one repeat: a check that every code path runs, not a "
                  "benchmark.**"]
    lines += [
        "",
        "## Targets (2 cores)",
        "",
        "| target | model | size | limit (s) | best setting | measured (s) | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in report["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        best = "-" if t["best_s"] is None else f"{t['best_s']:.2f}"
        lines.append(
            f"| {t['what']} | {t['model']} | {t['size']}x{t['size']} | {t['limit_s']:.0f} | {t['best_label'] or '-'} | "
            f"{best} | {met} |"
        )
    if s["quick"]:
        lines += ["", "(quick mode: the quick model and size stand in for B at 256x256.)"]
    for task in s["tasks"]:
        if task == "train":
            lines += ["", f"## Training step, batch {s['train_batch']}: seconds (median of {s['repeats_train']})"]
            lines += ["", "Cell: median time (ours / baseline in the same setting)."]
        else:
            lines += ["", f"## Sampling one slice, {s['ensemble']} members batched, {s['steps']} {s.get('sampler', 'ddim').upper()} steps: seconds "
                      f"(median of {s['repeats_sample']})"]
            lines += ["", "Cell: median time (ours / baseline in the same setting) [time per denoising step]."]
        for size in s["sizes"]:
            lines += ["", f"{size}x{size}:", ""]
            lines += _table(report, task, size, lambda r: _time_cell(r, report["ratios"]))
    if any(_ok(r) and (r.get("other_cpu_share") or 0.0) > OTHER_LOAD_THRESHOLD for r in results):
        lines += [
            "",
            f"† other processes used more than {OTHER_LOAD_THRESHOLD:.0%} of the machine's CPU time during these "
            "timed calls (`other_cpu_share` in benchmark.json): too slow.",
        ]
    lines += [
        "",
        "## Peak memory: resident-set growth (MiB)",
        "",
        MEMORY_NOTE,
    ]
    for task in s["tasks"]:
        for size in s["sizes"]:
            lines += ["", f"{'training step' if task == 'train' else 'sampling'}, {size}x{size}:", ""]
            lines += _table(
                report, task, size, lambda r: "-" if r is None or not _ok(r) else f"{r['peak_rss_growth_mib']:.0f}"
            )
    compiled = [r for r in results if r.get("extra") == "compile"]
    if compiled:
        lines += ["", "## torch.compile", ""]
        done = [r for r in compiled if _ok(r)]
        if done:
            lines += [
                "| model | size | task | setting | compile time (s) | first call (s) | median (s) |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in done:
                lines.append(
                    f"| {r['model']} | {r['size']} | {r['task']} | {r['label']} | {r.get('compile_s', 0):.1f} | "
                    f"{r['warmup_s'][0]:.2f} | {r['median_s']:.3f} |"
                )
            lines += ["", "Compile time: the first call (which compiles, then runs once) minus the steady-state time "
                      "of the same work."]
        lines += [f"- skipped, torch.compile failed: {r['model']} {r['size']} {r['task']} {r['label']}: {r['error']}"
                  for r in compiled if not _ok(r)]
    lines += [
        "",
        "## Models",
        "",
        "| model | params (M) | " + " | ".join(f"forward GFLOPs/image {z}x{z}" for z in s["sizes"]) + " | called as |",
        "| --- | --- |" + " --- |" * len(s["sizes"]) + " --- |",
    ]
    for model in s["models"]:
        info = report["models"][model]
        gflops = " | ".join(f"{info['forward_gflops'][str(z)]:.2f}" for z in s["sizes"])
        call = "network(x_t, t, context=image)" if info["mode"] == "crossattn" else "network(cat([x_t, image]), t)"
        lines.append(f"| {model} | {info['params'] / 1e6:.2f} | {gflops} | {call} |")
    if BASELINE in report["models"]:
        config = ", ".join(
            f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in report["models"][BASELINE]["config"].items()
        )
        lines += [
            "",
            f"{BASELINE}: `monai.networks.nets.DiffusionModelUNet(spatial_dims=2, in_channels="
            f"{IN_CHANNELS + OUT_CHANNELS}, out_channels={OUT_CHANNELS}, {config})`, called as in MONAI's DDPM "
            "segmentation tutorial: the image concatenated to the noisy mask (DiffusionInferer mode \"concat\"). The "
            "tutorial's network style (64 channels at full resolution, one residual block per level, attention at "
            "the deepest levels, 64 channels per head), sized to about the parameter count of preset B. "
            + m["baseline_attention"],
        ]
    lines += [
        "",
        "FLOPs: torch.utils.flop_counter.FlopCounterMode, forward, batch 1 (convolutions, matrix products, attention; "
        "not FFTs, normalisations or element-wise work).",
        "",
        "## Method",
        "",
        f"- Every (model, size, setting, task) runs in a fresh process forked from a server that has only imported the "
        f"libraries, with `torch.set_num_threads({m['threads']})`. The baseline and the presets of one (size, "
        "setting, task) run one right after the other; the ratios are taken between those measurements.",
        "- Training step: `SegDiffusionPrepareBatch` -> `optimizer.zero_grad(set_to_none=True)` -> "
        "`AutocastDiffusionInferer` (scheduler.add_noise, network call) -> `MSELoss` against the noise -> backward -> "
        f"`torch.optim.AdamW.step`, the order of `SupervisedTrainer`; batch {s['train_batch']}; {s['warmup_train']} "
        f"warm-up step(s) (the first allocates the AdamW state), then {s['repeats_train']} timed steps.",
        f"- Sampling: `DiffusionSegmenter(network, RespacedDDPMScheduler(1000), num_inference_steps={s['steps']}, "
        f"sampler=\"{s.get('sampler', 'ddim')}\", num_ensemble={s['ensemble']})` on one (1, {IN_CHANNELS}, H, W) image, all members in one "
        f"network call per step; {s['warmup_sample']} warm-up call(s) of min(2, steps) steps, then "
        f"{s['repeats_sample']} timed calls. Time per step = median / steps: other step counts scale linearly.",
        "- Settings: fp32 = float32; bf16 = `torch.autocast(\"cpu\", dtype=torch.bfloat16)` around the network "
        "(AutocastDiffusionInferer(autocast_dtype=\"bfloat16\") / DiffusionSegmenter(autocast_dtype=\"bfloat16\")); "
        "-cl = channels-last convolution weights (`MedSegDiffUNet(channels_last=True)`, the package default; for "
        "MONAI's network `.to(memory_format=torch.channels_last)`); +compile = `torch.compile(network)`; +malloc = "
        f"glibc `mallopt(M_MMAP_THRESHOLD, {MALLOC_MMAP_THRESHOLD // 2**20} MiB)` and `mallopt(M_TRIM_THRESHOLD, "
        "2 GiB)` in the measuring process, so that freed activation buffers are reused instead of being unmapped and "
        "page-faulted in again (`minor_page_faults_per_call` in benchmark.json).",
        "- All runs, warm-up times, page faults and the other processes' CPU share are in benchmark.json.",
    ]
    if report["profiles"]:
        lines += ["", "## Where the time goes: torch.profiler, top ops by self CPU time"]
        for p in report["profiles"]:
            lines += [
                "",
                f"{p['task']}, {p['model']} {p['size']}x{p['size']} {p['label']} ({p['reason']}):",
            ]
            if not _ok(p):
                lines.append(f"profiling failed: {p['error']}")
                continue
            lines += [
                f"one call, {p['profiled_wall_s']:.2f} s wall under the profiler, {p['total_self_cpu_s']:.2f} s "
                "self CPU time of all ops (the profiler's full table is in benchmark.json).",
                "",
                "| op | calls | self CPU (s) | share |",
                "| --- | --- | --- | --- |",
            ]
            lines += [
                f"| {op['name']} | {op['calls']} | {op['self_cpu_s']:.3f} | {op['self_cpu_pct']:.1f}% |"
                for op in p["top"]
            ]
    errors = [r for r in results if not _ok(r) and r.get("extra") != "compile"]
    if errors:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- {r['model']} {r['size']} {r['task']} {r['label']}: {r['error']}" for r in errors]
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, 32x32, one repeat, one thread: a code check")
    parser.add_argument("--out-dir", default=None, help="where to write benchmark.md and .json (default docs/)")
    parser.add_argument("--presets", nargs="+", default=None, help=f"MedSegDiffUNet presets (default {list(PRESETS)})")
    parser.add_argument("--no-baseline", action="store_true", help=f"do not measure the {BASELINE} baseline")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="input sizes (default 128 256)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=None,
        help=f"settings (default {list(DEFAULT_VARIANTS)})",
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="what to measure (default both)")
    parser.add_argument("--compile", action="store_true", help="also measure each setting with torch.compile")
    parser.add_argument("--malloc-tuned", action="store_true", help="also measure each setting with mallopt tuning")
    parser.add_argument("--steps", type=int, default=5,
                        help="sampling steps (default 5, the bundle's default; time is linear in the steps)")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                        help="sampler of the sampling measurement (default ddpm, the bundle's default)")
    parser.add_argument("--ensemble", type=int, default=5, help="ensemble members (default 5)")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch size (default 2)")
    parser.add_argument("--repeats-train", type=int, default=None, help="timed training steps (default 5)")
    parser.add_argument("--repeats-sample", type=int, default=None, help="timed sampling calls (default 3)")
    parser.add_argument("--warmup-train", type=int, default=None, help="warm-up training steps (default 2)")
    parser.add_argument("--warmup-sample", type=int, default=1, help="warm-up sampling calls of 2 steps (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 2; --quick: 1)")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="missed",
        choices=("missed", "always"),
        default=None,
        help="write torch.profiler tables (top ops by self CPU time) of the best setting of each missed target "
        "('missed', the default) or of each target ('always')",
    )
    parser.add_argument("--profile-rows", type=int, default=15, help="rows of the profiler tables (default 15)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per measurement")
    args = parser.parse_args(argv)
    quick = args.quick
    args.presets = [p.upper() for p in args.presets] if args.presets else (["XS"] if quick else list(PRESETS))
    args.sizes = args.sizes or ([32] if quick else [128, 256])
    args.variants = args.variants or (["fp32", "bf16-cl"] if quick else list(DEFAULT_VARIANTS))
    args.repeats_train = args.repeats_train or (1 if quick else 5)
    args.repeats_sample = args.repeats_sample or (1 if quick else 3)
    args.warmup_train = args.warmup_train if args.warmup_train is not None else (1 if quick else 2)
    # --quick checks code paths: one thread keeps it fast while other jobs share the cores (two OpenMP threads on
    # two cores that another process also uses wait for each other at every barrier and can be 10x slower)
    args.threads = args.threads or (1 if quick else 2)
    if min(args.repeats_train, args.repeats_sample, args.steps, args.ensemble, args.train_batch, args.threads) < 1:
        parser.error("repeats, steps, ensemble, batch and threads must be >= 1")
    if min(args.warmup_train, args.warmup_sample) < 0:
        parser.error("warm-up counts must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    started = _STARTED
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    meta = machine_info(args.threads)  # the load average first, before this run adds to it
    if meta["load_warning"]:
        print(
            f"WARNING: 1-min load average {meta['load_average_before'][0]} > {LOAD_WARNING_THRESHOLD}: other jobs are "
            "using these cores; the numbers will be too slow.",
            file=sys.stderr,
        )
    meta["baseline_attention"] = baseline_attention_note()
    ctx = multiprocessing.get_context("forkserver")
    # Python 3.11's fork server ignores "__main__" in the preload list (it looks for a key its caller never sets),
    # so the libraries are named. Started now, its imports overlap with the FLOP counting below.
    ctx.set_forkserver_preload(["__main__", *PRELOAD])
    forkserver.ensure_running()

    torch.set_num_threads(args.threads)
    models = list(args.presets) + ([] if args.no_baseline else [BASELINE])
    infos = {model: model_info(model, args.sizes, args.quick) for model in models}
    for model, info in infos.items():
        print(f"{model}: {info['params'] / 1e6:.2f} M parameters, GFLOPs {info['forward_gflops']}", file=sys.stderr)

    common = {
        "quick": args.quick,
        "threads": args.threads,
        "train_batch": args.train_batch,
        "steps": args.steps,
        "sampler": args.sampler,
        "ensemble": args.ensemble,
        "profile_rows": args.profile_rows,
    }
    extras = [""] + (["malloc"] if args.malloc_tuned else []) + (["compile"] if args.compile else [])
    order = ([BASELINE] if BASELINE in models else []) + [m for m in models if m != BASELINE]
    results: list[dict[str, Any]] = []
    for size in args.sizes:
        for task in args.tasks:
            for variant in args.variants:
                for extra in extras:
                    for model in order:
                        cfg = dict(common, model=model, size=size, variant=variant, extra=extra, task=task)
                        cfg["repeats"] = args.repeats_train if task == "train" else args.repeats_sample
                        cfg["warmup"] = args.warmup_train if task == "train" else args.warmup_sample
                        t0 = time.perf_counter()
                        record = {k: cfg[k] for k in ("model", "size", "variant", "extra", "task")}
                        record["label"] = setting_label(variant, extra)
                        record.update(run_isolated(ctx, cfg, args.timeout))
                        results.append(record)
                        what = record.get("error") or (
                            f"median {record['median_s']:.3f} s {record['runs_s']}, peak RSS "
                            f"+{record['peak_rss_growth_mib']:.0f} MiB, others' CPU share {record['other_cpu_share']}"
                        )
                        print(
                            f"[{time.perf_counter() - started:5.0f} s] {task} {model} {size} {record['label']}: {what} "
                            f"({time.perf_counter() - t0:.1f} s)",
                            file=sys.stderr,
                        )

    ratios = compute_ratios(results)
    targets = check_targets(results, (order[-1], max(args.sizes)) if args.quick else None)
    out_dir = args.out_dir or os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs"))
    os.makedirs(out_dir, exist_ok=True)
    profiles: list[dict[str, Any]] = []
    for t in targets if args.profile else []:
        if t["best_label"] is None or (args.profile == "missed" and t["met"]):
            continue
        best = _find(results, model=t["model"], size=t["size"], task=t["task"], label=t["best_label"])
        assert best is not None
        cfg = dict(common, model=t["model"], size=t["size"], variant=best["variant"], extra=best["extra"],
                   task=t["task"], profile=True)
        record = run_isolated(ctx, cfg, args.timeout)
        record.update(task=t["task"], model=t["model"], size=t["size"], label=t["best_label"])
        record["reason"] = "target missed" if t["met"] is False else "target met; --profile always"
        profiles.append(record)
        print(f"profiled {t['task']} {t['model']} {t['size']} {t['best_label']}", file=sys.stderr)
        print(record.get("table", record.get("error")), file=sys.stderr)

    meta["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report: dict[str, Any] = {
        "command": "python benchmarks/speed.py" + (" " + shlex.join(argv) if argv else ""),
        "meta": meta,
        "settings": {
            "quick": args.quick,
            "sizes": args.sizes,
            "models": order,
            "variants": args.variants,
            "extras": [e for e in extras if e],
            "labels": [setting_label(v, e) for v in args.variants for e in extras],
            "tasks": args.tasks,
            "train_batch": args.train_batch,
            "steps": args.steps,
            "sampler": args.sampler,
            "ensemble": args.ensemble,
            "repeats_train": args.repeats_train,
            "repeats_sample": args.repeats_sample,
            "warmup_train": args.warmup_train,
            "warmup_sample": args.warmup_sample,
            "memory_note": MEMORY_NOTE,
        },
        "models": infos,
        "results": results,
        "ratios": ratios,
        "targets": targets,
        "profiles": profiles,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    markdown = to_markdown(report)
    with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(markdown)
    for t in targets:
        status = "not measured" if t["met"] is None else ("MET" if t["met"] else "MISSED")
        print(
            f"target: {t['what']}, {t['model']} {t['size']}x{t['size']}, <= {t['limit_s']:.0f} s: {status}"
            + ("" if t["best_s"] is None else f" (best setting {t['best_label']}: {t['best_s']:.3f} s)")
            + (" [quick mode stand-in, not the real target]" if t["stand_in"] else ""),
            file=sys.stderr,
        )
    if meta["load_warning"]:
        print("WARNING: the machine was not quiet before the run; see the load average in the report.", file=sys.stderr)
    print(f"wrote {os.path.join(out_dir, 'benchmark.md')} and benchmark.json in {report['total_wall_s']:.0f} s",
          file=sys.stderr)
    return 1 if any(not _ok(r) and r["extra"] != "compile" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
