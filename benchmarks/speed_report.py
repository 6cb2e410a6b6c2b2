# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Report of the speed benchmark (``benchmarks/speed.py``): ratios to the baseline, targets, markdown and JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from speed_harness import (
    LOAD_WARNING_THRESHOLD,
    MALLOC_MMAP_THRESHOLD,
    MEMORY_NOTE,
    OTHER_LOAD_THRESHOLD,
)
from speed_workloads import BASELINE, IN_CHANNELS, OUT_CHANNELS

__all__ = ["TARGETS", "find_result", "compute_ratios", "check_targets", "to_markdown", "write_report"]

# targets on a 2-core machine, for the best measured setting of preset "B" at 256x256
TARGETS: dict[str, dict[str, Any]] = {
    "train": {"model": "B", "size": 256, "limit_s": 5.0, "what": "training step, batch 2"},
    "sample": {"model": "B", "size": 256, "limit_s": 10.0, "what": "one slice, 5-member ensemble, 5 DDPM steps"},
}

def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r


def find_result(results: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    """The first successful measurement whose fields equal ``keys``, or None."""
    return next((r for r in results if _ok(r) and all(r.get(k) == v for k, v in keys.items())), None)


def compute_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours / baseline, pair by pair: same size, setting and task, measured one after the other in this run."""
    ratios = []
    for r in results:
        if not _ok(r) or r["model"] == BASELINE:
            continue
        base = find_result(results, model=BASELINE, size=r["size"], label=r["label"], task=r["task"])
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



def write_report(report: dict[str, Any], out_dir: str) -> str:
    """Write ``benchmark.md`` (:func:`to_markdown`) and ``benchmark.json`` (2-space indent) into ``out_dir``.

    Returns:
        the markdown written.
    """
    markdown = to_markdown(report)
    with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return markdown
