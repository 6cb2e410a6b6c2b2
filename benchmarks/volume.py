# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Seconds per BraTS-size case for the bundle's inference path, and where the time goes.

One synthetic BraTS-size case (240x240x155, four modalities, a brain of realistic extent: the project's generator
``medsegdiff_monai.data.make_demo_data`` at that size) is segmented with ``bundle/configs/inference.json`` exactly as
``python -m medsegdiff_monai predict`` runs it (``ConfigWorkflow``: load -> crop -> resize to 256x256 -> normalise ->
``DiffusionSegInferer`` slice by slice -> invert -> label map -> ``SaveImaged``), with preset B and the bundle's
default sampler (its steps and members from ``inference.json``), in each precision/layout setting; ``auto-cl`` is
the bundle's default (``amp_dtype: "auto"``: bfloat16 only where a timed first call shows it faster). Measured per
setting:

- seconds per case end to end (building the workflow and loading the checkpoint included), and its shares: data loading (reading and preprocessing), network (time inside the network's
  forward calls), sampler loop without the network (noise, updates, slicing, fusion), post-processing (inverting
  the preprocessing, label map) and writing (``SaveImaged``);
- achieved GFLOP/s of the network calls (FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``) against
  the convolution limit measured on the same machine (a big 3x3 ``conv2d`` timed alone, per precision);
- what sharing the member-independent image features saves (one network call of one slice x the members, with and
  without ``context_repeats``);
- the Dice of each setting's written segmentation against the float32 one (the precision's effect on results).

The network is preset B untrained (its zero-initialised output convolution re-initialised at random, so the
predictions and the Dice comparison are not trivially empty): time does not depend on the weights.

With ``--max-slices N`` only the central N brain slices of the case are kept (the others are zeroed, so the
inferer skips them) and the per-slice work (network and sampler) is extrapolated linearly to all brain slices of
the intact case; the report says so. Data loading is also timed on the intact case.

Usage::

    python benchmarks/volume.py                      # full case, float32 and the default (auto) precision
    python benchmarks/volume.py --max-slices 16      # 16 slices measured, extrapolated to the whole case
    python benchmarks/volume.py --num_ensemble 1 --settings auto-cl --out-dir docs/volume_speed_1member
    python benchmarks/volume.py --short              # tiny case and model: a code check in seconds (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import nibabel as nib
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.engines.utils import IterationEvents
from monai.transforms import SaveImaged
from torch.utils.flop_counter import FlopCounterMode

from medsegdiff_monai.data import find_cases, make_demo_data
from medsegdiff_monai.networks.nets import MedSegDiffUNet
import speed_harness  # benchmarks/speed_harness.py

BUNDLE = REPO / "bundle"
BRATS_SHAPE = (240, 240, 155)
SETTINGS = {  # label -> (amp_dtype, channels_last)
    "fp32-cl": (None, True),
    "fp32": (None, False),
    "bf16-cl": ("bfloat16", True),
    "bf16": ("bfloat16", False),
    "auto-cl": ("auto", True),  # the bundle's default: inference.json "amp_dtype": "auto"
}
DEFAULT_SETTINGS = ("fp32-cl", "auto-cl")


# ------------------------------------------------------------------------------------------------- machine
def machine_info(threads: int) -> dict[str, Any]:
    """The speed benchmark's machine record (date, CPU model and bfloat16 flags, versions, load), plus niceness."""
    return {**speed_harness.machine_info(threads), "nice": os.nice(0)}


# ------------------------------------------------------------------------------------------------- the case
def make_case(root: Path, shape: tuple[int, ...]) -> list[dict]:
    """One synthetic BraTS 2021 case of ``shape`` under ``root``; returns its datalist (``find_cases``)."""
    make_demo_data(root, num_cases=1, shape=shape, seed=13)
    return find_cases(str(root))


def brain_slices(case_dir: Path) -> tuple[int, int]:
    """First and one-past-last axial slice with a nonzero voxel in any modality."""
    mask = None
    for f in sorted(case_dir.glob("*.nii.gz")):
        if f.name.endswith("_seg.nii.gz"):
            continue
        nz = np.asarray(nib.load(f).dataobj).any(axis=(0, 1))
        mask = nz if mask is None else mask | nz
    assert mask is not None
    idx = np.flatnonzero(mask)
    return int(idx[0]), int(idx[-1]) + 1


def reduce_case(src: Path, dst_root: Path, max_slices: int) -> tuple[list[dict], int]:
    """Copy the case, keeping only the central ``max_slices`` brain slices (others zeroed); returns its datalist
    and the number of slices kept."""
    lo, hi = brain_slices(src)
    keep = min(max_slices, hi - lo)
    start = lo + (hi - lo - keep) // 2
    dst = dst_root / src.name
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.nii.gz")):
        img = nib.load(f)
        data = np.asarray(img.dataobj).copy()
        data[..., :start] = 0
        data[..., start + keep :] = 0
        out = nib.Nifti1Image(data, img.affine, img.header)
        nib.save(out, dst / f.name)
    return find_cases(str(dst_root)), keep


def _inference_self_condition() -> bool:
    """Whether ``inference.json`` builds a self-conditioning network (the model must match it to load)."""
    return bool(ConfigParser.load_config_file(str(BUNDLE / "configs" / "inference.json"))["self_condition"])


def save_model(path: Path, preset: str, image_size: list[int]) -> None:
    """An untrained preset with a random (not zero) output convolution, saved as the bundle's model.pt."""
    torch.manual_seed(0)
    net = _network(preset, image_size)
    conv = net.out[-1].conv
    torch.nn.init.normal_(conv.weight, std=0.02)
    torch.nn.init.zeros_(conv.bias)
    torch.save(net.state_dict(), path)


# ------------------------------------------------------------------------------------------------- FLOPs
def flops_of_call(net: torch.nn.Module, rows: int, images: int, size: list[int]) -> int:
    """FLOPs of one forward with ``rows`` mask rows sharing ``images`` images (FlopCounterMode)."""
    x = torch.randn(rows, net.out_channels, *size)
    context = torch.randn(images, net.in_channels, *size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.full((rows,), 500), context=context, context_repeats=rows // images)
    return int(counter.get_total_flops())


def flop_model(net: torch.nn.Module, members: int, size: list[int]) -> tuple[int, int]:
    """``(per_row, per_image)`` FLOPs: a call of R rows and I images costs ``R * per_row + I * per_image``
    (the image branch before the first fusion runs once per image)."""
    one = flops_of_call(net, members, 1, size)  # members * per_row + per_image
    shared = flops_of_call(net, 2 * members, 1, size)  # 2 * members rows sharing 1 image
    per_row = (shared - one) // members
    return per_row, one - members * per_row


# ------------------------------------------------------------------------------------------------- limits
def _best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def conv_limits(short: bool, repeats: int) -> list[dict[str, Any]]:
    """GFLOP/s of a big 3x3 conv2d alone (channels-last), and of the narrow full-resolution conv of preset B."""
    shapes = [("big 128->128 @64x64, batch 8", 8, 128, 64), ("narrow 16->16 @256x256, batch 8", 8, 16, 256)]
    if short:
        shapes = [("big 64->64 @32x32, batch 4", 4, 64, 32)]
    out = []
    for name, b, c, s in shapes:
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(b, c, s, s).contiguous(memory_format=torch.channels_last)
        flops = 2 * b * s * s * c * c * 9
        for dtype in ("float32", "bfloat16"):

            def call(dtype=dtype, conv=conv, x=x):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    conv(x)

            t = _best_time(call, repeats)
            out.append({"conv": name, "precision": dtype, "seconds": t, "gflops": flops / t / 1e9})
    return out


def _network(preset: str, size: list[int]) -> MedSegDiffUNet:
    """The benchmark's network in eval mode: 4 image channels, 1 mask channel, FF-Parser maps sized for ``size``,
    self-conditioning as in ``inference.json``."""
    return MedSegDiffUNet.from_preset(preset, in_channels=4, out_channels=1, image_size=size,
                                      self_condition=_inference_self_condition()).eval()


def sharing_saving(preset: str, size: list[int], members: int, repeats: int) -> list[dict[str, Any]]:
    """Seconds of one network call (1 slice x ``members``) with the image repeated vs shared, per precision."""
    torch.manual_seed(0)
    net = _network(preset, size)
    x, image = torch.randn(members, 1, *size), torch.randn(1, 4, *size)
    t = torch.full((members,), 500)
    out = []
    for dtype in ("float32", "bfloat16"):
        times = {}
        for mode in ("repeated", "shared"):

            def call(mode=mode, dtype=dtype):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    if mode == "shared":
                        net(x, t, context=image, context_repeats=members)
                    else:
                        net(x, t, context=image.repeat_interleave(members, 0))

            times[mode] = _best_time(call, repeats)
        out.append({"precision": dtype, "repeated_s": times["repeated"], "shared_s": times["shared"],
                    "saving": 1.0 - times["shared"] / times["repeated"]})
    return out


def op_profile(preset: str, size: list[int], rows: int, images: int, bf16: bool, top: int = 8) -> dict[str, Any]:
    """Where one network call's time goes, by operator (``torch.profiler``, self CPU time), channels-last.

    Args:
        preset: network preset.
        size: in-plane size.
        rows: rows per call (slices x members, as the bundle batches them).
        images: distinct images in the call (``context_repeats = rows // images``).
        bf16: under bfloat16 autocast (the precision the default setting chose).
        top: operators listed; the rest are summed as "other".

    Returns:
        ``{"seconds": one call, "ops": [{"op", "share"}...]}`` with shares of the profiled self CPU time.
    """
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = _network(preset, size)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(rows, 1, *size).contiguous(memory_format=torch.channels_last)
    image = torch.randn(images, 4, *size).contiguous(memory_format=torch.channels_last)
    t = torch.full((rows,), 500)

    def call() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x, t, context=image, context_repeats=rows // images)

    seconds = _best_time(call, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = [{"op": e.key, "share": e.self_cpu_time_total / total} for e in events[:top]]
    ops.append({"op": "other", "share": max(0.0, 1.0 - sum(o["share"] for o in ops))})
    return {"seconds": seconds, "rows": rows, "precision": "bfloat16" if bf16 else "float32", "ops": ops}


# ------------------------------------------------------------------------------------------------- one run
class _TimedWriter:
    """Stands for ``SaveImaged`` in the post-processing Compose and adds up its time."""

    def __init__(self, inner: Any, acc: dict[str, float]) -> None:
        self.inner, self.acc = inner, acc

    def __call__(self, data: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner(data)
        self.acc["write_s"] += time.perf_counter() - t0
        return out


def run_setting(cases: list[dict], ckpt: Path, out_dir: Path, amp_dtype: str | None, channels_last: bool,
                overrides: dict[str, Any], flops: tuple[int, int]) -> dict[str, Any]:
    """Segment ``cases`` with inference.json as ``predict`` does, timing every phase."""
    t_start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        datalist=cases,
        output_dir=str(out_dir),
        ckpt_path=str(ckpt),
        device=torch.device("cpu"),
        progress=False,
        amp_dtype=amp_dtype,
        **{"network_def#network#channels_last": channels_last},
        **overrides,
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    acc = {"load_s": 0.0, "sampling_s": 0.0, "post_s": 0.0, "write_s": 0.0, "network_s": 0.0}
    counts = {"calls": 0, "rows": 0, "images": 0}
    marks: dict[str, float] = {}

    post = workflow.parser.get_parsed_content("postprocessing")
    post.transforms = tuple(_TimedWriter(t, acc) if isinstance(t, SaveImaged) else t for t in post.transforms)

    def mark(name):
        def f(engine):
            marks[name] = time.perf_counter()
        return f

    def add(key, since):
        def f(engine):
            acc[key] += time.perf_counter() - marks[since]
        return f

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, mark("get"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, add("load_s", "get"))
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, mark("got"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, add("sampling_s", "got"))
    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("fwd"))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, add("post_s", "fwd"))

    net = evaluator.network
    net_start: list[float] = []

    def pre(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        ctx = kwargs.get("context")
        counts["calls"] += 1
        counts["rows"] += int(x.shape[0])
        counts["images"] += int(ctx.shape[0]) if ctx is not None else int(x.shape[0])
        net_start.append(time.perf_counter())

    def post_hook(module, args, output):
        acc["network_s"] += time.perf_counter() - net_start.pop()

    h1 = net.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = net.register_forward_hook(post_hook)
    t_init = time.perf_counter() - t_start
    t0 = time.perf_counter()
    workflow.run()
    total = time.perf_counter() - t0
    workflow.finalize()
    h1.remove()
    h2.remove()
    # amp_dtype "auto": what the timed first call chose (DiffusionSegmenter.autocast_choices)
    choices = getattr(getattr(evaluator.inferer, "_segmenter", None), "autocast_choices", {}) or {}
    chosen = next(iter(choices.values()), None)
    per_row, per_image = flops
    flop_total = counts["rows"] * per_row + counts["images"] * per_image
    sampler_other = acc["sampling_s"] - acc["network_s"]
    post_other = acc["post_s"] - acc["write_s"]
    other = total - acc["load_s"] - acc["sampling_s"] - acc["post_s"]
    return {
        "setup_s": t_init,
        "total_s": total,
        "load_s": acc["load_s"],
        "network_s": acc["network_s"],
        "sampler_other_s": sampler_other,
        "postprocess_s": post_other,
        "write_s": acc["write_s"],
        "other_s": other,
        "network_calls": counts["calls"],
        "network_rows": counts["rows"],
        "gflop": flop_total / 1e9,
        "network_gflops": flop_total / acc["network_s"] / 1e9 if acc["network_s"] > 0 else None,
        "precision_used": None if chosen is None else (chosen["dtype"] or "float32"),
        "auto_probe_s": None if chosen is None else chosen["times"],
    }


def dice_files(a: Path, b: Path) -> float:
    x, y = np.asarray(nib.load(a).dataobj) > 0, np.asarray(nib.load(b).dataobj) > 0
    denom = x.sum() + y.sum()
    return float(2 * (x & y).sum() / denom) if denom else 1.0


def time_loading(cases: list[dict], overrides: dict[str, Any]) -> float:
    """Seconds of inference.json's preprocessing (read + crop + resize + normalise) of the first case."""
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type="infer", bundle_root=str(BUNDLE), datalist=cases, **overrides,
    )
    pre = workflow.parser.get_parsed_content("preprocessing")
    t0 = time.perf_counter()
    out = pre(dict(cases[0]))
    elapsed = time.perf_counter() - t0
    return elapsed if out["image"].ndim == 4 else float("nan")


# ------------------------------------------------------------------------------------------------- report
def _pct(part: float, total: float) -> str:
    return f"{100 * part / total:.0f}%" if total > 0 else "-"


def to_markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        "# Seconds per BraTS-size case (inference.json / predict)",
        "",
        f"Measured {m['date']} on **{m['cpu_model']}** ({m['logical_cpus']} logical CPUs, flags "
        f"{', '.join(m['cpu_flags']) or 'none'}), {m['threads']} torch threads, torch {m['torch']}, MONAI "
        f"{m['monai']}; process niceness {m['nice']}, load average before the run {m['load_average_before']}"
        + (" (**other jobs shared the CPU: times are upper bounds**)" if m["nice"] > 0 or
           m["load_average_before"][0] > 0.5 else "") + ".",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Case: synthetic BraTS-size volume {cfg['shape']} (4 modalities, `make_demo_data`), "
        f"{report['brain_slices']} brain slices after `CropForeground` -> {cfg['spatial_size']} per slice; "
        f"preset {cfg['preset']} (untrained; time does not depend on the weights), sampler {cfg['sampler']} with "
        f"{cfg['num_inference_steps']} steps, {cfg['num_ensemble']} members, sw_batch_size {cfg['sw_batch_size']} "
        "slices per network call, image features shared across members (`context_repeats`).",
        "",
    ]
    if not report.get("complete", True):
        lines += ["**Incomplete run**: not every requested setting was measured.", ""]
    if report["extrapolated"]:
        lines += [
            f"**Extrapolated**: only the central {report['slices_measured']} of the {report['brain_slices']} brain "
            "slices were sampled (the others zeroed, so the inferer skips them); the per-case seconds below add "
            f"the network and sampler time of the missing slices linearly (x {report['slice_factor']:.2f}) to "
            "the measured run. Full run: `" + report["full_command"] + "`.",
            "",
        ]
    lines += [
        "| setting | precision | s / case | measured s | load | network | sampler (non-network) | post-processing | writing | "
        "other (engine start, checkpoint) | network GFLOP/s | conv limit GFLOP/s | Dice vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in report["results"].items():
        per_case = r["per_case_s"]
        lines.append(
            f"| {label} | {r['precision_used']} | **{per_case:.0f}** | {r['total_s']:.1f} | {_pct(r['load_s'], r['total_s'])} | "
            f"{_pct(r['network_s'], r['total_s'])} | {_pct(r['sampler_other_s'], r['total_s'])} | "
            f"{_pct(r['postprocess_s'], r['total_s'])} | {_pct(r['write_s'], r['total_s'])} | "
            f"{_pct(r['other_s'], r['total_s'])} | {r['network_gflops']:.0f} | {r['conv_limit_gflops']:.0f} | "
            f"{r['dice_vs_fp32']:.4f} |"
        )
    lines += [
        "",
        "s / case: end to end, from building the workflow to the written files (parsing and network set-up "
        "included). Shares are of the measured run. precision: what the network ran in (auto: float32 without "
        "timing where PyTorch reports no bfloat16 kernels for the CPU, else chosen by timing one call in float32 "
        "and bfloat16 at the first call; the probe's time is in the network share). load: reading the four NIfTI files and preprocessing; network: inside the "
        "network's forward calls; sampler: the rest of the inferer (noise, updates, slicing, fusion); "
        "post-processing: inverting the preprocessing and the label map; writing: `SaveImaged`. Network GFLOP/s: "
        "FLOPs of all network calls (`FlopCounterMode`) / network time; conv limit: the big 3x3 conv2d below, "
        "same precision. Dice vs fp32: the written segmentation against the float32 (channels-last) one; the network "
        "is untrained, so this measures only what bfloat16 rounding changes in the masks (a trained tiny network: "
        "`tests/test_precision.py`).",
        "",
        f"Loading the intact case alone (preprocessing): {report['load_intact_s']:.1f} s.",
        "",
        "## Convolution limit (3x3 conv2d alone, channels-last)",
        "",
        "| convolution | precision | s | GFLOP/s |",
        "|---|---|---|---|",
    ]
    for c in report["conv_limits"]:
        lines.append(f"| {c['conv']} | {c['precision']} | {c['seconds']:.4f} | {c['gflops']:.0f} |")
    lines += [
        "",
        "## Shared image features (one call: 1 slice x members, channels-last)",
        "",
        "| precision | image repeated per member, s | image once (`context_repeats`), s | saving |",
        "|---|---|---|---|",
    ]
    for s in report["sharing"]:
        lines.append(f"| {s['precision']} | {s['repeated_s']:.3f} | {s['shared_s']:.3f} | {100 * s['saving']:.0f}% |")
    lines += [
        "",
        "The image encoder takes the time embedding (its residual blocks add it), so its features depend on the "
        "timestep and cannot be cached across steps; they do not depend on the noisy mask before the first "
        "dynamic-conditioning level, so they are computed once per slice and step for all members "
        "(bit-identical outputs, `tests/test_shared_context.py`).",
        "",
    ]
    prof = report.get("op_profile")
    if prof:
        lines += [
            "",
            f"## One network call by operator ({prof['rows']} rows: slices x members, {prof['precision']}, "
            f"channels-last, {prof['seconds']:.2f} s)",
            "",
            "| operator | share of self CPU time |",
            "|---|---|",
        ]
        lines += [f"| `{o['op']}` | {100 * o['share']:.1f}% |" for o in prof["ops"]]
        lines += [
            "",
            "`torch.profiler` on one call of the untrained network at the case's size, in the precision the fastest "
            "setting ran in. SiLU, GroupNorm, additions and concatenation are memory-bound element-wise work "
            "that a fusing compiler could merge with the convolutions around them.",
        ]
    lines += [
        "",
        "## Target: one case in at most 60 s on 2 cores",
        "",
    ]
    lines += report["notes"]
    return "\n".join(lines) + "\n"


def notes(report: dict[str, Any]) -> list[str]:
    """What the numbers say about the 60 s target (computed from the measurement)."""
    best_label = min(report["results"], key=lambda k: report["results"][k]["per_case_s"])
    best = report["results"][best_label]
    if report["short"]:
        return ["`--short`: a tiny case and model, a check of the code paths, not a measurement of the target."]
    out = [f"Fastest setting: {best_label}, {best['per_case_s']:.0f} s per case "
           f"({'meets' if best['per_case_s'] <= 60 else 'misses'} the 60 s target)."]
    limit = best["conv_limit_gflops"]
    gflop_case = best["gflop"] * report["slice_factor"]
    out.append(
        f"The network work of one case is {gflop_case:.0f} GFLOP ({report['brain_slices']} slices x "
        f"{report['config']['num_ensemble']} members x {report['config']['num_inference_steps']} steps); at the "
        f"measured conv limit of {limit:.0f} GFLOP/s it takes at least {gflop_case / limit:.0f} s, the network "
        f"achieves {best['network_gflops']:.0f} GFLOP/s ({100 * best['network_gflops'] / limit:.0f}% of the limit)."
    )
    if best["per_case_s"] > 60:
        need = gflop_case / max(60.0 - best["per_case_s"] * (1 - best["network_s"] / best["total_s"]), 1e-9)
        out.append(
            f"Closing the gap needs fewer FLOPs per case or a faster network: at 60 s the network would have to run "
            f"at {need:.0f} GFLOP/s. Levers: fewer members or steps (see docs/steps_vs_accuracy.md), a smaller "
            "preset or in-plane size, and raising the network's share of the conv limit (its narrow "
            "full-resolution levels run far below it, see the narrow convolution above, and the element-wise "
            "operators of the profile above are not convolutions at all)."
        )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="tiny case (48x48x20) and preset XS at 32x32: a code check")
    p.add_argument("--max-slices", type=int, default=None, help="sample only the central N brain slices, extrapolate")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(DEFAULT_SETTINGS),
                   help=f"precision/layout settings (default {' '.join(DEFAULT_SETTINGS)})")
    p.add_argument("--num_ensemble", type=int, default=None, help="members per slice (default: the bundle's)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the micro-benchmarks (default 3)")
    p.add_argument("--out-dir", default=str(REPO / "docs"), help="where volume_speed.md/.json go (default docs/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/volume.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                else sys.argv[1:]))
    if args.short:
        shape, preset, size, steps, members = (48, 48, 20), "XS", [32, 32], 2, 2
    else:
        shape, preset, size, steps, members = BRATS_SHAPE, "B", [256, 256], None, None
    overrides: dict[str, Any] = {"preset": preset, "spatial_size": size}
    if steps is not None:
        overrides.update(num_inference_steps=steps, num_ensemble=members)
    if args.num_ensemble is not None:
        overrides["num_ensemble"] = args.num_ensemble
    report: dict[str, Any] = {"machine": machine_info(args.threads), "command": command.strip(), "short": args.short}
    with tempfile.TemporaryDirectory(prefix="volume_speed_") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        cases = make_case(tmp_path / "data", shape)
        print(f"case {shape} generated in {time.perf_counter() - t0:.0f} s", flush=True)
        case_dir = Path(cases[0]["image"][0]).parent
        ckpt = tmp_path / "model.pt"
        save_model(ckpt, preset, size)
        probe = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "inference.json"),
                               meta_file=str(BUNDLE / "configs" / "metadata.json"), workflow_type="infer",
                               bundle_root=str(BUNDLE), datalist=cases, **overrides)
        cfg = {k: probe.parser.get_parsed_content(k) for k in
               ("preset", "spatial_size", "sampler", "num_inference_steps", "num_ensemble", "sw_batch_size")}
        cfg["shape"] = list(shape)
        report["config"] = cfg
        report["load_intact_s"] = time_loading(cases, overrides)
        pre = probe.parser.get_parsed_content("preprocessing")(dict(cases[0]))["image"]
        n_brain = int(pre.ne(0).any(dim=(0, 1, 2)).sum())
        report["brain_slices"] = n_brain
        run_cases, measured = cases, n_brain
        if args.max_slices is not None and args.max_slices < n_brain:
            run_cases, measured = reduce_case(case_dir, tmp_path / "reduced", args.max_slices)
        report["slices_measured"] = measured
        report["extrapolated"] = measured < n_brain
        report["slice_factor"] = n_brain / measured
        report["full_command"] = re.sub(r"\s*--max-slices\s+\d+", "", report["command"])
        net = _network(preset, size)
        flops = flop_model(net, cfg["num_ensemble"], size)
        report["flops_per_row"], report["flops_per_image"] = flops
        print("conv limits ...", flush=True)
        report["conv_limits"] = conv_limits(args.short, args.repeats)
        limit = {c["precision"]: c["gflops"] for c in report["conv_limits"] if c["conv"].startswith("big")}
        print("shared image features ...", flush=True)
        report["sharing"] = sharing_saving(preset, size, cfg["num_ensemble"], max(1, args.repeats - 1))
        results: dict[str, dict[str, Any]] = {}
        report["op_profile"] = None
        for label in args.settings:
            amp, cl = SETTINGS[label]
            out_dir = tmp_path / f"pred_{label}"
            print(f"{label}: segmenting ...", flush=True)
            r = run_setting(run_cases, ckpt, out_dir, amp, cl, overrides, flops)
            per_slice_work = r["network_s"] + r["sampler_other_s"]
            # end to end: building the workflow (parsing, network) + the run, the missing slices extrapolated
            r["per_case_s"] = r["setup_s"] + r["total_s"] + per_slice_work * (report["slice_factor"] - 1.0)
            r["precision_used"] = r.pop("precision_used", None) or ("bfloat16" if amp else "float32")
            r["conv_limit_gflops"] = limit[r["precision_used"]]
            r["seg_file"] = str(next(out_dir.glob("*_seg.nii.gz")))
            results[label] = r
            print(f"{label}: {r['total_s']:.1f} s measured, {r['per_case_s']:.1f} s per case", flush=True)
            ref = next((r for k, r in results.items() if k.startswith("fp32")), None)
            for r in results.values():
                r["dice_vs_fp32"] = dice_files(Path(ref["seg_file"]), Path(r["seg_file"])) if ref else float("nan")
            report["results"] = {k: {f: v for f, v in r.items() if f != "seg_file"} for k, r in results.items()}
            if report["op_profile"] is None and len(results) == len(args.settings):
                best = min(results.values(), key=lambda v: v["per_case_s"])
                print("operator profile of one call ...", flush=True)
                report["op_profile"] = op_profile(preset, size, cfg["sw_batch_size"] * cfg["num_ensemble"],
                                                  cfg["sw_batch_size"], best["precision_used"] == "bfloat16")
            report["notes"] = notes(report)
            report["complete"] = len(results) == len(args.settings)
            write_report(report, Path(args.out_dir), args.short)  # after every setting: an interrupted run keeps
    return 0


def write_report(report: dict[str, Any], out: Path, short: bool) -> None:
    """Write ``volume_speed[_short].json`` and ``.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = "volume_speed_short" if short else "volume_speed"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(report))
    print(f"wrote {out / (stem + '.md')} and .json", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
