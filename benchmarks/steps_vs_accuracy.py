# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Dice against sampling steps: how few denoising steps a trained bundle model needs, for DDPM, DDIM and DPM-Solver++.

Loads a trained bundle (its configs and ``models/model.pt``), takes a fixed set of axial slices from the
validation and test cases of its datalist (preprocessed exactly as the bundle's evaluation does), segments them
with the bundle's ensemble at every step count and sampler, each from the same seed, and writes a table (markdown
and JSON) and a plot of Dice against steps with the sampling time. The pooled Dice over the slice set is
``2 |P & G| / (|P| + |G|)`` of the thresholded ensemble mean against the ground truth, per region.

Usage::

    # after training the demo: python -m monai.bundle run training --config_file "['bundle/configs/train.json','bundle/configs/demo.json']"
    python benchmarks/steps_vs_accuracy.py --bundle_dir bundle --configs bundle/configs/demo.json
    python benchmarks/steps_vs_accuracy.py --quick   # CI: an untrained XS model, 2 slices, 1-2 steps (code check)

The bundle default should be the fastest setting whose Dice is within ``--tolerance`` (1 Dice point) of the
paper's setting (100 ancestral DDPM steps); the report names it. It also reports, per sampler, how much Dice it
loses between its best step count and 1000 steps: a correct sampler with consistent clipping loses nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import monai  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

import medsegdiff_monai  # noqa: E402
from medsegdiff_monai.inferers import DiffusionSegInferer  # noqa: E402
from medsegdiff_monai.networks.schedulers import SamplerType  # noqa: E402
from medsegdiff_monai.utils import load_checkpoint  # noqa: E402
from report_files import write_report_files  # noqa: E402
from speed_harness import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_bundle(bundle_dir: Path, configs: list[str], untrained: bool = False) -> ConfigParser:
    """The bundle's training config (with overlays) and its network with the trained weights loaded."""
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / "configs" / "train.json"), *configs])
    parser["bundle_root"] = str(bundle_dir)
    parser.parse()
    parser.get_parsed_content("prepare_data")  # the datalist, as the bundle's `initialize` writes it (if missing)
    network = parser.get_parsed_content("network")
    if not untrained:
        ckpt = bundle_dir / "models" / "model.pt"
        if not ckpt.is_file():
            raise SystemExit(f"no trained weights at {ckpt}: train the bundle first (see the module docstring)")
        state = load_checkpoint(ckpt, map_location="cpu")
        # the bundle's best-model saver writes the bare state dict, benchmarks/quality_handlers.py {"model": ...}
        # (both are what MONAI's CheckpointLoader reads with load_dict={"model": network})
        network.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
    network.eval()
    return parser


def pick_slices(parser: ConfigParser, splits: list[str], per_case: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``per_case`` axial slices of every case of ``splits``: at interior quantiles of the slices with tumour, plus one
    slice without tumour when there is one; preprocessed as the bundle's evaluation does."""
    datalist = parser.get_parsed_content("datalist")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    images, labels, where = [], [], []
    for split in splits:
        for item in medsegdiff_monai.data.load_datalist(datalist, split):
            if "label" not in item:
                continue
            data = preprocessing(item)
            image, label = torch.as_tensor(data["image"]), torch.as_tensor(data["label"])
            area = label.sum(dim=(0, 1, 2))  # (C, H, W, D) -> foreground voxels per axial slice
            tumour = torch.nonzero(area > 0).flatten().tolist()
            empty = torch.nonzero(area == 0).flatten().tolist()
            n_tumour = per_case - 1 if empty and per_case > 1 else per_case
            # interior quantiles of the tumour's extent (its first and last slices hold a few voxels each)
            chosen = [tumour[int((i + 0.5) * len(tumour) / n_tumour)] for i in range(n_tumour)] if tumour else []
            if empty and len(chosen) < per_case:
                chosen.append(empty[len(empty) // 2])
            for z in sorted(set(chosen)):
                images.append(image[..., z])
                labels.append(label[..., z])
                where.append((item.get("case_id", "?"), z))
    return torch.stack(images), torch.stack(labels), where


def pooled_dice(mask: torch.Tensor, label: torch.Tensor) -> list[float]:
    """Dice per channel, pooled over the slice set; (S, C, H, W) inputs."""
    inter = (mask * label).sum((0, 2, 3))
    total = mask.sum((0, 2, 3)) + label.sum((0, 2, 3))
    return [float(2 * i / t) if t > 0 else 1.0 for i, t in zip(inter, total)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    bundle_dir = Path(args.bundle_dir).resolve()
    parser = load_bundle(bundle_dir, args.configs, untrained=args.quick)
    network = parser.get_parsed_content("network")
    scheduler = parser.get_parsed_content("scheduler")
    num_ensemble = int(args.num_ensemble or parser.get_parsed_content("num_ensemble"))
    threshold = float(parser.get_parsed_content("threshold"))
    images, labels, where = pick_slices(parser, args.splits, args.slices_per_case)
    print(f"{len(where)} slices from {len({c for c, _ in where})} cases, {tuple(images.shape[2:])} pixels, "
          f"ensemble {num_ensemble}, threads {torch.get_num_threads()}", flush=True)

    with torch.no_grad():  # warm-up: the first calls of a process are slower (allocator, kernel selection)
        DiffusionSegInferer(scheduler, num_inference_steps=2, num_ensemble=num_ensemble)(images[: args.batch_slices], network)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            inferer = DiffusionSegInferer(
                scheduler, num_inference_steps=steps, sampler=sampler, num_ensemble=num_ensemble,
                threshold=threshold, output="mask", seed=args.seed,
            )
            t0 = time.perf_counter()
            with torch.no_grad():
                masks = torch.cat([inferer(chunk, network) for chunk in images.split(args.batch_slices)])
            seconds = time.perf_counter() - t0
            dice = pooled_dice(masks, labels)
            rows.append({
                "sampler": sampler, "steps": steps, "dice": dice, "mean_dice": sum(dice) / len(dice),
                "seconds": seconds, "seconds_per_slice": seconds / len(where),
            })
            print(f"{sampler:>8} {steps:>5} steps: Dice {rows[-1]['mean_dice']:.4f}, "
                  f"{rows[-1]['seconds_per_slice']:.3f} s per slice ({num_ensemble} members)", flush=True)

    machine = machine_info(torch.get_num_threads())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/steps_vs_accuracy.py " + " ".join(sys.argv[1:]),
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()},
        "machine": "{cpu_model} (flags {flags}), {logical_cpus} logical CPUs, {threads} torch threads".format(
            **dict(machine, flags=", ".join(machine["cpu_flags"]))),
        "splits": list(args.splits),
        "bundle": {"configs": ["train.json", *[Path(c).name for c in args.configs]],
                   "preset": parser.get_parsed_content("preset"),
                   "spatial_size": list(parser.get_parsed_content("spatial_size")),
                   "regions": parser.get_parsed_content("regions"),
                   "num_train_timesteps": int(scheduler.num_train_timesteps)},
        "num_ensemble": num_ensemble, "threshold": threshold, "seed": args.seed,
        "slices": [{"case_id": c, "slice": z} for c, z in where],
        "rows": rows,
        "recommended": recommend(rows, args.tolerance),
        "loss_at_most_steps": loss_at_most_steps(rows),
        "tolerance": args.tolerance,
    }


def loss_at_most_steps(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per sampler: its best Dice, the step count of it, and the Dice lost from there to its most steps."""
    out = {}
    for sampler in sorted({r["sampler"] for r in rows}):
        own = [r for r in rows if r["sampler"] == sampler]
        best, most = max(own, key=lambda r: r["mean_dice"]), max(own, key=lambda r: r["steps"])
        out[sampler] = {"best_steps": best["steps"], "best_dice": best["mean_dice"], "most_steps": most["steps"],
                        "dice_at_most_steps": most["mean_dice"], "loss": best["mean_dice"] - most["mean_dice"]}
    return out


def recommend(rows: list[dict[str, Any]], tolerance: float, reference_sampler: str = "ddpm") -> dict[str, Any] | None:
    """The fastest setting whose Dice is within ``tolerance`` of the reference: the paper's sampler (ancestral DDPM,
    ``reference_sampler``) at 100 steps, or at its most measured steps when 100 steps were not measured."""
    own = [r for r in rows if r["sampler"] == reference_sampler] or rows
    if not own:
        return None
    ref = next((r for r in own if r["steps"] == 100), max(own, key=lambda r: r["steps"]))
    ok = [r for r in rows if r["mean_dice"] >= ref["mean_dice"] - tolerance]
    best = min(ok, key=lambda r: (r["seconds"], -r["mean_dice"]))
    return dict(best, reference_sampler=ref["sampler"], reference_steps=ref["steps"], reference_dice=ref["mean_dice"])


def to_markdown(report: dict[str, Any]) -> str:
    b = report["bundle"]
    lines = [
        "# Sampling steps against Dice",
        "",
        f"Generated by `{report['command']}`; do not edit by hand.",
        "",
        f"- date: {report['date']}; torch {report['versions']['torch']}, MONAI {report['versions']['monai']}, "
        f"Python {report['versions']['python']}; {report['machine']}",
        f"- model: the bundle's `models/model.pt` trained with {' + '.join(b['configs'])} (preset {b['preset']}, "
        f"{b['spatial_size'][0]}x{b['spatial_size'][1]}, regions {b['regions']}, "
        f"{b['num_train_timesteps']} training timesteps)",
        f"- data: {len(report['slices'])} axial slices of the {' and '.join(report.get('splits', ['validation', 'test']))} "
        "cases (at interior quantiles of the slices with tumour, plus one without), preprocessed as the bundle's "
        "evaluation does",
        f"- ensemble of {report['num_ensemble']} members batched, mean fused, threshold {report['threshold']}, "
        f"seed {report['seed']}; Dice pooled over the slice set; time = wall time per slice for the whole ensemble",
        "",
        "| sampler | steps | Dice | seconds per slice |",
        "| --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['mean_dice']:.4f} | {r['seconds_per_slice']:.3f} |")
    losses = report.get("loss_at_most_steps") or loss_at_most_steps(report["rows"])
    lines += ["", "| sampler | best Dice (steps) | Dice at most steps | lost |", "| --- | --- | --- | --- |"]
    for sampler, v in losses.items():
        lines.append(f"| {sampler} | {v['best_dice']:.4f} ({v['best_steps']}) | {v['dice_at_most_steps']:.4f} "
                     f"({v['most_steps']}) | {100 * v['loss']:.2f} points |")
    rec = report["recommended"]
    if rec:
        lines += [
            "",
            f"Fastest setting within {report['tolerance']:.2f} Dice of the paper's setting ({rec['reference_sampler']}, "
            f"{rec['reference_steps']} steps: {rec['reference_dice']:.4f}): **{rec['sampler']}, {rec['steps']} steps** "
            f"(Dice {rec['mean_dice']:.4f}, {rec['seconds_per_slice']:.3f} s per slice).",
        ]
    lines += ["", "![Dice against sampling steps](steps_vs_accuracy.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for sampler in sorted({r["sampler"] for r in report["rows"]}):
        own = sorted((r for r in report["rows"] if r["sampler"] == sampler), key=lambda r: r["steps"])
        ax1.plot([r["steps"] for r in own], [r["mean_dice"] for r in own], "o-", label=sampler.upper())
        ax2.plot([r["steps"] for r in own], [r["seconds_per_slice"] for r in own], "o-", label=sampler.upper())
    for ax, name in ((ax1, "Dice"), (ax2, "seconds per slice (ensemble)")):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax2.set_yscale("log")
    fig.suptitle(f"{report['bundle']['preset']} preset, {report['num_ensemble']}-member ensemble, "
                 f"{len(report['slices'])} slices")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle_dir", default=str(REPO / "bundle"), help="the trained bundle (default: bundle/)")
    p.add_argument("--configs", nargs="*", default=[], help="overlays merged after train.json, e.g. demo.json")
    p.add_argument("--steps", nargs="+", type=int, default=[1, 2, 3, 5, 10, 20, 50, 100, 1000])
    samplers = [s.value for s in SamplerType]
    p.add_argument("--samplers", nargs="+", default=samplers, choices=samplers)
    p.add_argument("--splits", nargs="+", default=["validation", "test"])
    p.add_argument("--slices_per_case", type=int, default=6)
    p.add_argument("--num_ensemble", type=int, default=None, help="default: the bundle's")
    p.add_argument("--batch_slices", type=int, default=24, help="slices per inferer call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.01, help="Dice tolerance of the recommendation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_dir", default=str(REPO / "docs"))
    p.add_argument("--quick", action="store_true", help="untrained model, 1 slice per case, 1-2 steps")
    p.add_argument("--from_json", default=None, help="re-render the table, recommendation and plot of a report")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.slices_per_case = [2, 1], 1
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        report["tolerance"] = args.tolerance
        report["recommended"] = recommend(report["rows"], args.tolerance)
        report["loss_at_most_steps"] = loss_at_most_steps(report["rows"])
    else:
        report = run(args)
    write_report_files(args.out_dir, "steps_vs_accuracy", report, to_markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
