# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Where a many-step sampler loses Dice on a trained bundle model: the x0 estimate along the trajectory.

``steps_vs_accuracy.py`` shows that a model can score lower with 100 sampling steps than with 2. This script shows
where along the trajectory the Dice goes, and why, with two measurements on the same slices:

1. **Trajectories.** For each step count, the x0 estimate of every step of the sampler (the network's prediction at
   that step), scored against the label: Dice of the thresholded ensemble mean, mean Dice of the single members, and
   the share of undecided pixels (probability within 0.1-0.9).
2. **What the model reads at each noise level.** The network alone at timestep ``t`` on ``x_t`` noised from the
   **true** mask (the training distribution) and from an **empty** mask (a wrong mask): where the two diverge, the
   model takes the mask from ``x_t`` rather than from the image. A sampler's own ``x_t`` passes through that range
   carrying the model's earlier, imperfect estimates.

The default compares a 2-step and a 100-step ancestral DDPM sampler with 5 members; everything else (model, slices,
preprocessing) is as in ``steps_vs_accuracy.py``.

Usage::

    python benchmarks/sampling_trajectory.py --bundle_dir RUN --configs RUN/configs/demo.json --out_dir docs/x
    python benchmarks/sampling_trajectory.py --quick ...   # untrained model, a code check (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_files import write_report_files  # noqa: E402
from speed_harness import machine_info  # noqa: E402
from steps_vs_accuracy import REPO, load_bundle, pick_slices, pooled_dice  # noqa: E402

from medsegdiff_monai.networks.nets import DiffusionSegmenter  # noqa: E402

LEVELS = (999, 900, 700, 500, 300, 200, 100, 50, 20, 5)


def trajectory(network: torch.nn.Module, scheduler: Any, images: torch.Tensor, labels: torch.Tensor, steps: int,
               sampler: str, members: int, seed: int) -> list[dict[str, float]]:
    """Score the x0 estimate of every step of one sampling run of ``images`` (S, C, H, W)."""
    seg = DiffusionSegmenter(network, scheduler, num_inference_steps=steps, sampler=sampler, num_ensemble=members)
    estimates: list[tuple[int, torch.Tensor]] = []
    predict_x0 = seg.solver.predict_x0

    def recording(i: int, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # the segmenter has no per-step callback; wrapping this instance's method records each step's estimate
        x0 = predict_x0(i, model_output, x)
        estimates.append((int(seg.solver.timesteps[i]), x0.clone()))
        return x0

    seg.solver.predict_x0 = recording  # type: ignore[method-assign]
    with torch.no_grad():
        seg.sample(images, torch.Generator().manual_seed(seed))
    rows = []
    for i, (t, x0) in enumerate(estimates):
        prob = ((x0 + 1) / 2).clamp(0, 1).reshape(len(images), members, -1, *images.shape[2:])
        member_dice = [sum(pooled_dice((prob[:, m] >= 0.5).float(), labels)) / labels.shape[1] for m in range(members)]
        rows.append({
            "step": i, "t": t,
            "ensemble_dice": sum(pooled_dice((prob.mean(1) >= 0.5).float(), labels)) / labels.shape[1],
            "member_dice": sum(member_dice) / members,
            "undecided": float(((prob - 0.5).abs() < 0.4).float().mean()),
        })
    return rows


def reading(network: torch.nn.Module, scheduler: Any, images: torch.Tensor, labels: torch.Tensor,
            levels: list[int], seed: int) -> list[dict[str, float]]:
    """Dice of the network's x0 estimate at each timestep, from ``x_t`` of the true mask and of an empty mask."""
    x0_true = labels.float() * 2 - 1
    noise = torch.randn(x0_true.shape, generator=torch.Generator().manual_seed(seed))
    pred_type = scheduler.prediction_type
    rows = []
    for t in levels:
        tt = torch.full((len(images),), int(t))
        out = {}
        for name, x0 in (("true_mask", x0_true), ("empty_mask", torch.full_like(x0_true, -1.0))):
            xt = scheduler.add_noise(x0, noise, tt)
            with torch.no_grad():
                pred = network(xt, tt, context=images)
            if pred_type != "sample":  # epsilon / v: the x0 the sampler would take from it
                a = scheduler.alphas_cumprod[tt].reshape(-1, 1, 1, 1)
                pred = (xt - (1 - a).sqrt() * pred) / a.sqrt() if pred_type == "epsilon" else \
                    a.sqrt() * xt - (1 - a).sqrt() * pred
            out[name] = sum(pooled_dice((pred >= 0).float(), labels)) / labels.shape[1]
        rows.append({"t": int(t), **out})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    bundle_dir = Path(args.bundle_dir).resolve()
    parser = load_bundle(bundle_dir, args.configs, untrained=args.quick)
    network = parser.get_parsed_content("network")
    scheduler = parser.get_parsed_content("scheduler")
    images, labels, where = pick_slices(parser, args.splits, args.slices_per_case)
    labels = labels.float()
    print(f"{len(where)} slices, {tuple(images.shape[2:])} pixels, {args.num_ensemble} members", flush=True)
    runs = {}
    for steps in args.steps:
        runs[str(steps)] = trajectory(network, scheduler, images, labels, steps, args.sampler, args.num_ensemble,
                                      args.seed)
        last = runs[str(steps)][-1]
        print(f"{args.sampler} {steps} steps: final ensemble Dice {last['ensemble_dice']:.4f}", flush=True)
    machine = machine_info(torch.get_num_threads())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/sampling_trajectory.py " + " ".join(sys.argv[1:]),
        "machine": "{cpu_model}, {logical_cpus} logical CPUs, {threads} torch threads".format(**machine),
        "bundle": {"dir": str(bundle_dir), "configs": ["train.json", *[Path(c).name for c in args.configs]],
                   "preset": parser.get_parsed_content("preset"),
                   "prediction_type": scheduler.prediction_type, "trained": not args.quick},
        "sampler": args.sampler, "num_ensemble": args.num_ensemble, "seed": args.seed, "splits": list(args.splits),
        "slices": [{"case_id": c, "slice": z} for c, z in where],
        "trajectories": runs,
        "reading": reading(network, scheduler, images, labels, args.levels, args.seed),
    }


def to_markdown(report: dict[str, Any]) -> str:
    b = report["bundle"]
    lines = [
        "# Dice along the sampling trajectory",
        "",
        f"Generated by `{report['command']}`; do not edit by hand.",
        "",
        f"- date: {report['date']}; {report['machine']}",
        f"- model: `{b['dir']}` ({' + '.join(b['configs'])}, preset {b['preset']}, prediction type "
        f"{b['prediction_type']}{'' if b['trained'] else ', **untrained**: a code check, not a measurement'})",
        f"- {len(report['slices'])} slices of the {' and '.join(report['splits'])} cases; sampler "
        f"{report['sampler']}, {report['num_ensemble']} members, seed {report['seed']}",
        "",
        "## x0 estimate at each step",
        "",
        "Dice of the thresholded ensemble mean and mean Dice of the members, of the network's x0 estimate at each "
        "step (t = the timestep of the call); undecided = share of pixels with probability in (0.1, 0.9).",
        "",
    ]
    for steps, rows in report["trajectories"].items():
        lines += [f"### {steps} steps", "", "| step | t | ensemble Dice | member Dice | undecided |",
                  "| --- | --- | --- | --- | --- |"]
        stride = max(1, len(rows) // 20)
        shown = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
        for r in shown:
            lines.append(f"| {r['step']} | {r['t']} | {r['ensemble_dice']:.4f} | {r['member_dice']:.4f} | "
                         f"{r['undecided']:.3f} |")
        lines.append("")
    lines += [
        "## What the network reads at each noise level",
        "",
        "Dice of the network's x0 estimate (one call at timestep t) from x_t noised from the true mask and from an "
        "empty mask (same noise). Where they diverge, the estimate follows x_t, not the image.",
        "",
        "| t | from the true mask | from an empty mask |",
        "| --- | --- | --- |",
    ]
    for r in report["reading"]:
        lines.append(f"| {r['t']} | {r['true_mask']:.4f} | {r['empty_mask']:.4f} |")
    lines += ["", "![Dice along the trajectory](sampling_trajectory.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for steps, rows in report["trajectories"].items():
        ts = [r["t"] for r in rows]
        ax1.plot(ts, [r["ensemble_dice"] for r in rows], "o-" if len(rows) < 10 else "-", label=f"{steps} steps, ensemble")
        ax1.plot(ts, [r["member_dice"] for r in rows], "x--" if len(rows) < 10 else "--", label=f"{steps} steps, members")
    ax1.set_xlabel("timestep t of the call (sampling runs right to left)")
    ax1.set_ylabel("Dice of the x0 estimate")
    ax1.invert_xaxis()
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    rd = report["reading"]
    ax2.plot([r["t"] for r in rd], [r["true_mask"] for r in rd], "o-", label="x_t from the true mask")
    ax2.plot([r["t"] for r in rd], [r["empty_mask"] for r in rd], "s-", label="x_t from an empty mask")
    ax2.set_xlabel("timestep t")
    ax2.set_ylabel("Dice of the x0 estimate")
    ax2.invert_xaxis()
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{report['sampler'].upper()}, {report['num_ensemble']} members, {len(report['slices'])} slices")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle_dir", default=str(REPO / "bundle"), help="the trained bundle (default: bundle/)")
    p.add_argument("--configs", nargs="*", default=[], help="overlays merged after train.json, e.g. demo.json")
    p.add_argument("--steps", nargs="+", type=int, default=[2, 100])
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim", "dpmpp_2m"])
    p.add_argument("--num_ensemble", type=int, default=5)
    p.add_argument("--splits", nargs="+", default=["test"])
    p.add_argument("--slices_per_case", type=int, default=2)
    p.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), help="timesteps of the reading test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_dir", default=str(REPO / "docs" / "sampling_trajectory"))
    p.add_argument("--quick", action="store_true", help="untrained model, 1 slice per case, 2 and 3 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.slices_per_case, args.num_ensemble, args.levels = [2, 3], 1, 2, [999, 500, 5]
    report = run(args)
    write_report_files(args.out_dir, "sampling_trajectory", report, to_markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
