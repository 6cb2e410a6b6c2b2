# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Harness of the speed benchmark (``benchmarks/speed.py``): how a measurement is run, not what is measured.

Fresh measuring processes forked from a fork server, threads and allocator settings per process, timed calls under
the peak-memory and other-load probes, ``torch.profiler`` tables, and the machine description of the report.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import re
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing import forkserver
from typing import Any

import monai
import torch

__all__ = [
    "LOAD_WARNING_THRESHOLD",
    "OTHER_LOAD_THRESHOLD",
    "MALLOC_MMAP_THRESHOLD",
    "MEMORY_NOTE",
    "PeakRSS",
    "OtherLoad",
    "tune_glibc_malloc",
    "timed",
    "timed_runs",
    "profile_call",
    "start_fork_server",
    "run_isolated",
    "cpu_model",
    "machine_info",
]

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


class PeakRSS:
    """Peak resident-set growth over a block, in MiB (see ``MEMORY_NOTE``)."""

    def __enter__(self) -> PeakRSS:
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


class OtherLoad:
    """Share of the machine's CPU time that *other* processes used over a block: (busy time of all CPUs minus this
    process's CPU time) / (wall time x CPUs). About 0 on a quiet machine; 0.5 on two CPUs means another job kept a
    core busy, and the block's timing is not to be trusted."""

    def __enter__(self) -> OtherLoad:
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


# ---------------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn``, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_runs(fn: Callable[[], Any], warm: Callable[[], Any], warmup: int,
               repeats: int) -> tuple[list[float], list[float], PeakRSS, OtherLoad]:
    """``warmup`` calls of ``warm``, then ``repeats`` timed calls of ``fn``, all under the peak-RSS probe and the
    timed calls under the other-load probe.

    Returns:
        ``(warm-up times, timed-call times, memory probe, other-load probe)``.
    """
    with PeakRSS() as mem:
        warm_times = [timed(warm) for _ in range(warmup)]
        with OtherLoad() as other:
            runs = [timed(fn) for _ in range(repeats)]
    return warm_times, runs, mem, other


def profile_call(fn: Callable[[], Any], warm: Callable[[], Any], rows: int) -> dict[str, Any]:
    """One call of ``fn`` (after one call of ``warm``) under ``torch.profiler``: top ops by self CPU time.

    Returns:
        ``{"table": the profiler's table, "top": [{name, calls, self_cpu_s, self_cpu_pct}], "total_self_cpu_s",
        "profiled_wall_s"}``.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    warm()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = timed(fn)
    averages = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in averages)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {
        "table": averages.table(sort_by="self_cpu_time_total", row_limit=rows),
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


# ---------------------------------------------------------------------------------------------------- processes
def start_fork_server(ctx: Any, preload: Sequence[str]) -> None:
    """Start the fork server every measuring process is forked from, with ``preload`` imported once in it.

    Args:
        ctx: ``multiprocessing.get_context("forkserver")``.
        preload: the modules to import in the server.
    """
    # Python 3.11's fork server ignores "__main__" in the preload list (it looks for a key its caller never sets),
    # so the libraries are named. Started now, its imports overlap with the caller's next work.
    ctx.set_forkserver_preload(["__main__", *preload])
    forkserver.ensure_running()


def _child(runner: Callable[[dict[str, Any]], dict[str, Any]], cfg: dict[str, Any], conn: Any) -> None:
    """Entry point of a measuring process: allocator, threads, run, send the record (or the error) back."""
    try:
        if cfg["extra"] == "malloc" and not tune_glibc_malloc():
            raise RuntimeError("glibc mallopt is not available here")
        torch.set_num_threads(cfg["threads"])
        record = runner(cfg)
    except Exception as e:  # reported, not raised: a failing configuration (e.g. torch.compile) skips only itself
        message = str(e).strip().splitlines()
        record = {"error": f"{type(e).__name__}: {message[0] if message else ''}"[:300]}
        record["traceback"] = traceback.format_exc(limit=-4)
    conn.send(record)
    conn.close()


def run_isolated(ctx: Any, runner: Callable[[dict[str, Any]], dict[str, Any]], cfg: dict[str, Any],
                 timeout: float) -> dict[str, Any]:
    """Run ``runner(cfg)`` in a fresh process forked from the fork server; return its record (with ``error`` on
    failure).

    Args:
        ctx: the forkserver context (:func:`start_fork_server`).
        runner: a module-level function (the child imports it by name), e.g. ``speed_workloads.run_config``.
        cfg: the configuration; ``cfg["threads"]`` torch threads, ``cfg["extra"] == "malloc"`` tunes glibc malloc.
        timeout: seconds to wait for the record.
    """
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(runner, cfg, sender))
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



# ---------------------------------------------------------------------------------------------------- machine
def _cpuinfo_field(name: str) -> str | None:
    """A field of the first CPU in ``/proc/cpuinfo`` (None where there is none, e.g. off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(rf"^{name}\s*:\s*(.+)$", f.read(), re.MULTILINE)
    except OSError:
        return None
    return m.group(1).strip() if m else None


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    """Date, library versions, CPU model and its relevant instruction sets, threads, load average."""
    flags = set((_cpuinfo_field("flags") or "").split())
    load = [round(v, 2) for v in os.getloadavg()]
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_before": load,
        "load_warning": load[0] > LOAD_WARNING_THRESHOLD,
    }

