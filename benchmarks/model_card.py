# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Model card of the MedSegDiffUNet presets: parameters, forward GFLOPs, depth and widths.

Usage::

    python benchmarks/model_card.py            # 256x256, writes docs/model_card.md and docs/model_card.json
    python benchmarks/model_card.py --quick    # 64x64, fast CI check; prints only (or --out-dir DIR to write)
    python benchmarks/model_card.py --timing B B-w128  # also time forward / training step of these on this CPU

Besides the presets, the card lists ``VARIANTS``: constructor overrides of a preset that users ask for, such as
the official code's widths (``B-w128``: preset B with ``channels=(128, 128, 256, 256, 512, 512)``).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of convolutions, matrix
products and attention); it does not count FFTs (FF-Parser), normalisations, activations or other element-wise work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from medsegdiff_monai.networks.blocks import AttentiveFusion, FFParser  # noqa: E402
from medsegdiff_monai.networks.nets import MEDSEGDIFF_PRESETS, MedSegDiffUNet  # noqa: E402
from speed_harness import cpu_model  # noqa: E402

IN_CHANNELS = 4  # BraTS: t1, t1ce, t2, flair
OUT_CHANNELS = 1  # whole-tumour mask

#: card row -> (preset, constructor overrides): variants built from a preset with ``from_preset(name, **overrides)``
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # the official MedSegDiff code's UNet width: model_channels 128, channel_mult (1, 1, 2, 2, 4, 4) at 256x256
    "B-w128": ("B", {"channels": (128, 128, 256, 256, 512, 512)}),
}

FIDELITY_NOTE = (
    "What the presets take from the paper (arXiv:2211.00611): the downsampling counts of S/B/L/++ (4/5/6/6), "
    "residual blocks of GroupNorm, SiLU and convolution with the time embedding (Linear, SiLU, Linear) added after "
    "the first block, two encoders with attentive fusion (eq. 3) at the middle stages and the FF-Parser on the "
    "mask branch into each fusion. What they do not: the widths (the paper gives none; this project is narrow, 16-32 "
    "channels, at full resolution, where a 3x3 convolution costs the most per channel, and wide at low resolution; "
    "the official code uses 128 base channels, row B-w128, built with "
    "`MedSegDiffUNet.from_preset(\"B\", channels=(128, 128, 256, 256, 512, 512))` or `\"channels\"` in a bundle's "
    "`network_def`) and the residual blocks per stage (the paper follows ResNet34, 3, 4, 6 and 3 blocks; the presets "
    "use 1-2 per level). So \"B\" means the paper's depth, not the paper's MedSegDiff-B network."
)

FLOP_NOTE = (
    "FLOPs: torch.utils.flop_counter.FlopCounterMode, forward pass, batch 1, 2 FLOPs per multiply-add of "
    "convolutions, matrix products and attention. FFTs (FF-Parser), normalisations, activations and other "
    "element-wise operations are not counted."
)


def _count_params(module: torch.nn.Module, cls: type | None = None) -> int:
    if cls is None:
        return sum(p.numel() for p in module.parameters())
    return sum(p.numel() for m in module.modules() if isinstance(m, cls) for p in m.parameters())


def _forward_gflops(net: MedSegDiffUNet, size: int) -> float:
    x = torch.zeros(1, OUT_CHANNELS, size, size)
    image = torch.zeros(1, IN_CHANNELS, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.tensor([500]), image)
    return counter.get_total_flops() / 1e9


def _timing(net: MedSegDiffUNet, size: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` wall times: forward at batch 1 and 5 (no grad), training step (fwd+bwd+AdamW) at batch 2."""
    out: dict[str, float] = {}
    net.eval()
    with torch.no_grad():
        for batch in (1, 5):
            x = torch.randn(batch, OUT_CHANNELS, size, size)
            image = torch.randn(batch, IN_CHANNELS, size, size)
            t = torch.tensor([500.0])
            net(x, t, image)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                net(x, t, image)
                best = min(best, time.perf_counter() - start)
            out[f"forward_batch{batch}_s"] = round(best, 3)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(2, OUT_CHANNELS, size, size)
    image = torch.randn(2, IN_CHANNELS, size, size)
    t = torch.tensor([10, 900])
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss = (net(x, t, image) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:  # first step allocates the optimiser state
            best = min(best, time.perf_counter() - start)
    out["train_step_batch2_s"] = round(best, 3)
    out["sampling_10_steps_batch5_s"] = round(10 * out["forward_batch5_s"], 3)
    return out


def build_card(size: int, timing: list[str] | None = None, presets: list[str] | None = None) -> dict[str, Any]:
    """Collect the model card of the presets at ``size`` x ``size``; time the presets named in ``timing``."""
    card: dict[str, Any] = {
        "input": {
            "spatial_size": [size, size],
            "image_channels": IN_CHANNELS,
            "mask_channels": OUT_CHANNELS,
            "batch": 1,
        },
        "flop_note": FLOP_NOTE,
        "torch": torch.__version__,
        "presets": {},
    }
    if timing:
        card["timing_machine"] = {
            "threads": torch.get_num_threads(),
            "processor": cpu_model(),
            "note": "best of 3 wall times, float32, channels-last convolution weights (the default), training step = "
            "forward + eps-MSE backward + torch.optim.AdamW step; sampling estimate = 10 x forward at batch 5",
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
        }
    for name in presets or [*MEDSEGDIFF_PRESETS, *VARIANTS]:
        preset, overrides = VARIANTS.get(name, (name, {}))
        cfg = {**MEDSEGDIFF_PRESETS[preset], **overrides}
        net = MedSegDiffUNet.from_preset(
            preset, spatial_dims=2, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **overrides
        )
        entry: dict[str, Any] = {
            "downsamplings": net.num_downsamplings,
            "channels": list(net.channels),
            "num_res_blocks": list(net.num_res_blocks),
            "attention_levels": [k for k, a in enumerate(net.attention_levels) if a],
            "conditioning_levels": list(net.conditioning_levels),
            "ff_parser_input_size": list(net.ff_parser_input_size),
            "params": _count_params(net),
            "params_ff_parser": _count_params(net, FFParser),
            "params_attentive_fusion": _count_params(net, AttentiveFusion),
            "forward_gflops": round(_forward_gflops(net, size), 3),
            "min_input_divisor": net.size_divisor,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "variant_of": preset if name in VARIANTS else None,
        }
        if timing and name in timing:
            entry["timing"] = _timing(net, size)
        card["presets"][name] = entry
        del net
    return card


def to_markdown(card: dict[str, Any]) -> str:
    size = card["input"]["spatial_size"]
    lines = [
        "# MedSegDiffUNet model card",
        "",
        "Generated by `python benchmarks/model_card.py`; do not edit by hand.",
        "",
        f"Input: {size[0]}x{size[1]}, {card['input']['image_channels']} image channels, "
        f"{card['input']['mask_channels']} mask channel, batch 1, torch {card['torch']}.",
        "",
        "| preset | downsamplings | widths per level | res blocks per level | attention levels | "
        "conditioning levels | params (M) | FF-Parser params (M) | forward GFLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in card["presets"].items():
        lines.append(
            f"| {name} | {e['downsamplings']} | {', '.join(map(str, e['channels']))} | "
            f"{', '.join(map(str, e['num_res_blocks']))} | {', '.join(map(str, e['attention_levels'])) or '-'} | "
            f"{', '.join(map(str, e['conditioning_levels']))} | {e['params'] / 1e6:.2f} | "
            f"{e['params_ff_parser'] / 1e6:.2f} | {e['forward_gflops']:.2f} |"
        )
    lines += ["", card["flop_note"], ""]
    lines += [
        "Levels are numbered from 0 (full resolution). Every spatial size of the input must be divisible by "
        "2 ** downsamplings. The FF-Parser maps are sized for a 256x256 input (2-D presets S/B/L/++; XS: 64x64) and "
        "resampled in frequency for any other size (the bundle builds them for its training size, `image_size`). "
        "XS is meant for small (32-64 pixel) demo and test inputs; at 256x256 its shallow depth makes it no cheaper "
        "than S.",
        "",
        FIDELITY_NOTE,
        "",
    ]
    if "timing_machine" in card:
        m = card["timing_machine"]
        lines += [
            f"## Timings ({m['threads']} threads, {m['processor']})",
            "",
            m["note"] + f"; 1/5/15-min load average before the run: {m['load_average_before']} (other jobs sharing "
            "the cores slow these down).",
            "",
            "| preset | forward batch 1 (s) | forward batch 5 (s) | train step batch 2 (s) | "
            "10 sampler steps batch 5 (s) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, e in card["presets"].items():
            if "timing" not in e:
                continue
            t = e["timing"]
            lines.append(
                f"| {name} | {t['forward_batch1_s']} | {t['forward_batch5_s']} | {t['train_step_batch2_s']} | "
                f"{t['sampling_10_steps_batch5_s']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64x64 input, print only unless --out-dir is given")
    parser.add_argument("--size", type=int, default=None, help="input size (default 256, or 64 with --quick)")
    parser.add_argument("--out-dir", default=None, help="where to write model_card.md/.json (default: docs/)")
    parser.add_argument(
        "--timing",
        nargs="*",
        default=None,
        metavar="PRESET",
        help="also time forward and training step of these presets (no names: all) on this machine",
    )
    parser.add_argument("--presets", nargs="*", default=None, choices=[*MEDSEGDIFF_PRESETS, *VARIANTS],
                        help="subset of the presets and variants (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = args.size or (64 if args.quick else 256)
    timing = None if args.timing is None else (args.timing or [*MEDSEGDIFF_PRESETS, *VARIANTS])
    card = build_card(size, timing=timing, presets=args.presets)
    markdown = to_markdown(card)
    print(markdown)
    out_dir = args.out_dir
    if out_dir is None and not args.quick:
        out_dir = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs"))
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "model_card.md"), "w") as f:
            f.write(markdown)
        with open(os.path.join(out_dir, "model_card.json"), "w") as f:
            json.dump(card, f, indent=4)
            f.write("\n")
        print(f"wrote {os.path.join(out_dir, 'model_card.md')} and model_card.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
