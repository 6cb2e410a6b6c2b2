# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Speed and memory of training and sampling on this CPU: MedSegDiffUNet presets against MONAI's DiffusionModelUNet.

Measured for every model, input size and setting, each in a fresh process:

- training step: ``SegDiffusionPrepareBatch`` (noise, timesteps) -> ``AutocastDiffusionInferer`` (noise the mask with
  the scheduler, call the network with the image as condition) -> ``MSELoss`` against the noise -> ``backward`` ->
  ``torch.optim.AdamW.step``, in the order of ``monai.engines.SupervisedTrainer``; batch 2;
- sampling: ``DiffusionSegmenter`` segmenting ONE slice with the whole ensemble (5 members) batched, with the
  per-slice target's sampler (5 DDPM steps, 5 members; ``--sampler``, ``--steps``, ``--ensemble``; the bundle now
  samples 2 steps x 2 members, see ``volume.py``); the time per step is reported too (other step counts scale linearly);
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

Code: ``speed_harness.py`` (processes, timing, memory and load probes, machine info), ``speed_workloads.py`` (the
models, the training step and the sampling call), ``speed_report.py`` (ratios, targets, markdown and JSON); this
file is the command line.

The numbers are only good on a quiet machine: other jobs on the same cores slow every measurement down. The load
average before the run and the CPU share other processes took during each measurement are in the report.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import sys
import time
from typing import Any

_STARTED = time.perf_counter()  # the run's wall time counts the library imports too

import torch  # noqa: E402
from speed_harness import (  # noqa: E402
    LOAD_WARNING_THRESHOLD,
    MEMORY_NOTE,
    machine_info,
    run_isolated,
    start_fork_server,
)
from speed_report import check_targets, compute_ratios, find_result, write_report  # noqa: E402
from speed_workloads import (  # noqa: E402
    BASELINE,
    DEFAULT_VARIANTS,
    HAS_EINOPS,
    PRELOAD,
    PRESETS,
    TASKS,
    VARIANTS,
    baseline_attention_note,
    model_info,
    run_config,
    setting_label,
)


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
                        help="sampling steps (default 5, the per-slice target's; time is linear in the steps)")
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
    meta["einops"] = bool(HAS_EINOPS)
    if meta["load_warning"]:
        print(
            f"WARNING: 1-min load average {meta['load_average_before'][0]} > {LOAD_WARNING_THRESHOLD}: other jobs are "
            "using these cores; the numbers will be too slow.",
            file=sys.stderr,
        )
    meta["baseline_attention"] = baseline_attention_note()
    ctx = multiprocessing.get_context("forkserver")
    start_fork_server(ctx, PRELOAD)  # its imports overlap with the FLOP counting below

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
                        record.update(run_isolated(ctx, run_config, cfg, args.timeout))
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
        best = find_result(results, model=t["model"], size=t["size"], task=t["task"], label=t["best_label"])
        assert best is not None
        cfg = dict(common, model=t["model"], size=t["size"], variant=best["variant"], extra=best["extra"],
                   task=t["task"], profile=True)
        record = run_isolated(ctx, run_config, cfg, args.timeout)
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
    markdown = write_report(report, out_dir)
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
    return 1 if any("error" in r and r["extra"] != "compile" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
