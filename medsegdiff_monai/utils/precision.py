# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Choose the inference precision by measurement: float32 or bfloat16 autocast, whichever is faster here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["AUTO_GIVE_UP_RATIO", "AUTO_MIN_SPEEDUP", "bfloat16_kernels_available", "time_autocast"]

logger = logging.getLogger(__name__)

# bfloat16 is chosen only when it is clearly faster: a small gain is not worth its rounding.
AUTO_MIN_SPEEDUP = 1.1
# bfloat16 slower than this many times float32 in a timed run cannot win: the remaining runs are skipped. On CPUs
# without native bfloat16 (AVX2 only) a run is ~10x slower, and each skipped run saves seconds of a case's time.
AUTO_GIVE_UP_RATIO = 2.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bfloat16_kernels_available(device: torch.device | str) -> bool:
    """Whether ``device`` has fast bfloat16 kernels worth timing (PyTorch's own check on CPUs).

    On CPUs this is ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, the check PyTorch's inductor and tests use:
    False when oneDNN has no bfloat16 instructions for the processor (e.g. AVX2 only), where bfloat16 runs
    emulated, ~13x slower than float32 here (``docs/volume_speed_amd_avx2/``), so timing it would only cost
    seconds. True means only that bfloat16 *may* pay: :func:`time_autocast` decides. Other devices: True (CUDA
    and XPU decide by timing too). The check is private PyTorch API: if it is missing, True (then timing decides).

    Args:
        device: the device the network runs on.

    Returns:
        False when bfloat16 certainly does not pay on ``device``.
    """
    if torch.device(device).type != "cpu":
        return True
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except (RuntimeError, AttributeError):  # an operator that is registered but not built
        return True


def time_autocast(
    fn: Callable[[], Any], device: torch.device | str, repeats: int = 2, min_speedup: float = AUTO_MIN_SPEEDUP
) -> tuple[str | None, dict[str, float]]:
    """Time ``fn`` in float32 and under bfloat16 autocast on ``device``; pick bfloat16 if it is faster.

    Whether bfloat16 pays depends on the processor, not on the software: on CPUs with AMX (Intel Sapphire Rapids
    and later) this project's networks run ~3x faster in bfloat16, on CPUs without native bfloat16 matrix
    instructions they run slower (see ``docs/``). So the choice is made by timing the workload itself once.
    Each setting runs once to warm up (oneDNN builds its kernels on the first call), then ``repeats`` times,
    alternating; the fastest run of each counts. When a timed bfloat16 run is more than ``AUTO_GIVE_UP_RATIO``
    times the fastest float32 run, the remaining runs are skipped: bfloat16 cannot win (``docs/`` measured ~13x
    slower on an AVX2-only CPU), and those runs would add seconds to every case.

    Args:
        fn: the workload, e.g. one network call on one small input, without side effects on results.
        device: where ``fn`` runs (its ``type`` is the autocast device type).
        repeats: timed runs per setting, >= 1.
        min_speedup: bfloat16 is chosen when ``time_float32 / time_bfloat16 >= min_speedup``.

    Returns:
        ``("bfloat16" or None, {"float32": s, "bfloat16": s})``; ``(None, {})`` when bfloat16 autocast is not
        available on the device.
    """
    device = torch.device(device)
    if int(repeats) < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")

    def run(bf16: bool) -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            fn()
        _sync(device)
        return time.perf_counter() - start

    try:
        run(False)
        run(True)
    except RuntimeError as err:  # e.g. a device without bfloat16 autocast
        logger.warning("amp_dtype 'auto': bfloat16 autocast failed on %s (%s); using float32.", device, err)
        return None, {}
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(int(repeats)):
        times["float32"].append(run(False))
        times["bfloat16"].append(run(True))
        if times["bfloat16"][-1] > AUTO_GIVE_UP_RATIO * min(times["float32"]):
            break
    best = {k: min(v) for k, v in times.items()}
    choice = "bfloat16" if best["float32"] >= min_speedup * best["bfloat16"] else None
    logger.info(
        "amp_dtype 'auto' on %s: float32 %.4f s, bfloat16 %.4f s per probe call -> %s",
        device, best["float32"], best["bfloat16"], choice or "float32",
    )
    return choice, best
