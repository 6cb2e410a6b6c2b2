# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Segmentation quality on real MRI at equal wall time: the bundle's recipes against MONAI's BasicUNet and SegResNet.

Data (see ``benchmarks/quality_data.py``): the MNI152 2009a T1 template from nilearn's wheel, cut into blocks of
consecutive axial slices written as BraTS 2021 cases; label = grey matter (probability > 0.5) written as BraTS
label 2, so the bundle's default ``--regions wt`` task is the grey-matter mask. Blocks are split into training,
validation and test by a fixed repeating pattern with unused slices between blocks. The T1 is the only real
modality: it is written to all four modality files.

Methods, each trained for the same wall-time budget (seconds of training loop; data loading, caching and network
building excluded) with ``--threads`` torch threads:

- ``basicunet``, ``segresnet``: MONAI's ``BasicUNet`` / ``SegResNet`` (2D, 4 input channels, 1 output), trained
  in this process on every axial slice of the training blocks, preprocessed by the bundle's own
  ``validate#preprocessing`` (crop to the image foreground, resize to ``--size``, channel-wise non-zero
  normalisation) with ``DiceCELoss(sigmoid=True)`` and AdamW (lr 1e-3, constant), batches of 16 slices, final weights;
- ``medsegdiff-demo`` (train.json + demo.json, preset XS) and ``medsegdiff-full`` (train.json alone, preset B), at
  ``spatial_size = [--size, --size]``: ``python -m monai.bundle run training`` in a subprocess. The number of epochs
  is set from the steady time per epoch measured in a 6-epoch calibration run (its second half; the first half's
  warm-up is paid once) so that the recipe's learning-rate schedule ends with the budget; a ``WallTimeBudget``
  handler (``benchmarks/quality_handlers.py``, added by a config overlay this script writes) stops the run if it
  overruns, and saves the final weights. The bundle's periodic validation
  is switched off (``val_interval`` > ``epochs``): every method is scored with its final weights. Then
  ``python -m monai.bundle run evaluating`` (evaluate.json, ``--eval_split test``) writes the NIfTI predictions.

Scoring (one function for all methods): every test block is one volume; the prediction in the input geometry (the
baselines' probabilities inverted through the same preprocessing with ``Invertd``, thresholded at 0.5; the bundle's
``<case>_seg.nii.gz``) against the grey-matter label: Dice and HD95 (mm, spacing from the affine) with
``monai.metrics``; mean and standard deviation over the test volumes. Inference time per volume: the network (or the
bundle's ensemble sampler, ``validate#inferer``) on all slices of a preprocessed volume, in this process.

All methods run with ``OMP_WAIT_POLICY=PASSIVE`` unless it is set (see the comment at the imports).

Usage::

    python benchmarks/quality.py --budget 150 [--budget 900]   # -> docs/quality.md, .json, .png
    python benchmarks/quality.py --short                        # CI: 12 s budgets, to a temporary folder
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting make a 2-thread run on 2 shared cores several times slower whenever other
# processes use the cores (measured on this project's machine: 8.3 s against 1.4 s per XS training step); passive
# waiting keeps the methods' wall times comparable on a shared machine. Set before torch is imported; the bundle
# subprocesses inherit it. Export OMP_WAIT_POLICY to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import monai  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.metrics import compute_dice, compute_hausdorff_distance  # noqa: E402
from monai.networks.nets import BasicUNet, SegResNet  # noqa: E402
from monai.transforms import Invertd  # noqa: E402

import medsegdiff_monai  # noqa: E402
from quality_data import DEFAULT_CACHE_DIR, prepare_mni_cases  # noqa: E402
from report_files import write_report_files  # noqa: E402
from speed_harness import cpu_model  # noqa: E402

__all__ = ["score_volume", "train_baseline", "run_bundle_recipe", "parse_sets", "prepare_work", "report_header",
           "load_reports", "merge_reports", "main"]

BASELINES = ("basicunet", "segresnet")
#: recipe name -> bundle config files (relative to the bundle's configs folder)
RECIPES: dict[str, list[str]] = {"medsegdiff-demo": ["train.json", "demo.json"], "medsegdiff-full": ["train.json"]}
METHODS = (*BASELINES, *RECIPES)
CONFIGS = REPO / "bundle" / "configs"


# ----------------------------------------------------------------------------------------------------------- scoring
def score_volume(pred: np.ndarray, label: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Dice and HD95 (mm) of one binary prediction against its label, both in the input geometry.

    Args:
        pred: prediction (X, Y, Z), non-zero = foreground.
        label: label (X, Y, Z), non-zero = foreground.
        affine: the volume's affine (the spacing is taken from it).

    Returns:
        ``{"dice", "hd95"}``; HD95 is NaN when the prediction or the label is empty.
    """
    p = torch.as_tensor(np.asarray(pred) > 0)[None, None].float()
    g = torch.as_tensor(np.asarray(label) > 0)[None, None].float()
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {tuple(p.shape[2:])} differs from the label's {tuple(g.shape[2:])}")
    spacing = [float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))]
    dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
    if p.sum() == 0 or g.sum() == 0:
        hd95 = float("nan")
    else:
        hd95 = float(compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)[0, 0])
    return {"dice": dice, "hd95": hd95}


def _label_and_affine(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(item["label"])
    return np.asanyarray(img.dataobj), np.asarray(img.affine)


def _summary(values: list[float]) -> dict[str, float | int]:
    finite = [v for v in values if math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else float("nan"),
        "sd": statistics.stdev(finite) if len(finite) > 1 else 0.0 if finite else float("nan"),
        "n": len(values),
        "n_finite": len(finite),
    }


# --------------------------------------------------------------------------------------------------------- machine
def report_header(script: str, threads: int) -> dict[str, Any]:
    """The fields every report of these benchmarks starts with: date, command, versions and the machine."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
                     "medsegdiff_monai": medsegdiff_monai.__version__},
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": threads,
    }


def _busy_jiffies() -> int | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait


def _own_cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class CpuShare:
    """Measure which share of the machine's CPUs other processes used while a block of code ran."""

    def __enter__(self) -> CpuShare:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_jiffies(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = time.perf_counter() - self.t0
        busy1 = _busy_jiffies()
        self.others = float("nan")
        if self.busy0 is not None and busy1 is not None and wall > 0:
            busy = (busy1 - self.busy0) / os.sysconf("SC_CLK_TCK")
            own = _own_cpu_seconds() - self.own0
            self.others = max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


# ------------------------------------------------------------------------------------------------------ bundle config
def bundle_parser(configs: Sequence[str], overrides: dict[str, Any]) -> ConfigParser:
    """The bundle's config (files from ``bundle/configs``) with command-line style overrides."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _common_overrides(
    root: Path, work: Path, size: int, extra: dict[str, Any] | None = None, seed: int = 0
) -> dict[str, Any]:
    return {"seed": seed, **(extra or {}),
        "bundle_root": str(work),
        "dataset_dir": str(root),
        "data_list_file_path": str(root / "datalist.json"),
        "ckpt_dir": str(work / "models"),
        "log_dir": str(work / "logs"),
        "output_dir": str(work / "eval"),
        "spatial_size": [size, size],
        "progress": False,
    }


def load_split(parser: ConfigParser, split: str) -> list[dict[str, Any]]:
    """Items of one split of the datalist the parser points at, absolute paths."""
    return medsegdiff_monai.data.load_datalist(parser.get_parsed_content("data_list_file_path"), split)


# ------------------------------------------------------------------------------------------------------- baselines
def make_baseline(name: str) -> torch.nn.Module:
    """MONAI's 2D ``BasicUNet`` or ``SegResNet`` with 4 image channels and one output channel (logits)."""
    if name == "basicunet":
        return BasicUNet(spatial_dims=2, in_channels=4, out_channels=1)
    if name == "segresnet":
        return SegResNet(spatial_dims=2, in_channels=4, out_channels=1)
    raise ValueError(f"unknown baseline {name!r}")


def _slices(preprocessing: Any, items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for item in items:
        d = preprocessing(item)
        img, lab = torch.as_tensor(d["image"]), torch.as_tensor(d["label"])  # (C, H, W, D)
        images.append(img.permute(3, 0, 1, 2))
        labels.append(lab.permute(3, 0, 1, 2))
    return torch.cat(images).float().contiguous(), torch.cat(labels).float().contiguous()


def train_baseline(
    name: str, preprocessing: Any, train_items: list[dict[str, Any]], budget: float, batch_size: int = 16,
    lr: float = 1e-3, seed: int = 0,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a baseline on every slice of the training volumes until the wall-time budget is used up.

    Args:
        name: "basicunet" or "segresnet".
        preprocessing: the bundle's ``validate#preprocessing``.
        train_items: the training datalist items.
        budget: seconds of training loop (the budget is checked after each step).
        batch_size: slices per step.
        lr: AdamW learning rate (constant).
        seed: seed of the weights and of the shuffling.

    Returns:
        the trained network (eval mode) and ``{"epochs", "steps", "train_seconds", "params"}``; ``epochs`` counts
        started passes over the training slices (the last may be partial).
    """
    monai.utils.set_determinism(seed=seed)
    images, labels = _slices(preprocessing, train_items)
    net = make_baseline(name)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(sigmoid=True)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    steps, epochs, t0, cpu0 = 0, 0, time.perf_counter(), time.process_time()
    done = False
    while not done:
        epochs += 1
        order = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(images[idx]), labels[idx])
            loss.backward()
            opt.step()
            steps += 1
            if time.perf_counter() - t0 >= budget:
                done = True
                break
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    net.eval()
    return net, {"epochs": epochs, "steps": steps, "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
                 "final_loss": float(loss.detach()),
                 "params": sum(p.numel() for p in net.parameters()), "train_slices": int(images.shape[0])}


def predict_baseline(
    net: torch.nn.Module, preprocessing: Any, item: dict[str, Any], threshold: float = 0.5
) -> tuple[np.ndarray, float]:
    """Segment every axial slice of one volume and bring the probability back to the input geometry.

    Returns:
        the binary mask (X, Y, Z) in the input geometry and the network's seconds for the volume.
    """
    d = preprocessing(item)
    image = d["image"]  # (4, H, W, D) MetaTensor with the applied transforms
    slices = torch.as_tensor(image).permute(3, 0, 1, 2).float()
    t0 = time.perf_counter()
    with torch.no_grad():
        prob = torch.sigmoid(net(slices))  # (D, 1, H, W)
    seconds = time.perf_counter() - t0
    d["pred"] = prob.permute(1, 2, 3, 0).contiguous()
    inv = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True)(d)
    mask = (torch.as_tensor(inv["pred"])[0] >= threshold).numpy()
    return mask, seconds


def run_baseline(name: str, parser: ConfigParser, budget: float, seed: int) -> dict[str, Any]:
    """Train, predict and score one baseline."""
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    net, stats = train_baseline(name, preprocessing, load_split(parser, "training"), budget, seed=seed)
    cases = []
    for item in load_split(parser, "test"):
        mask, seconds = predict_baseline(net, preprocessing, item)
        label, affine = _label_and_affine(item)
        cases.append({"case_id": item["case_id"], **score_volume(mask, label, affine), "infer_seconds": seconds})
    return {**stats, "cases": cases}


def run_references(parser: ConfigParser) -> list[dict[str, Any]]:
    """Two trainless references that put the numbers in context, scored like the methods.

    - ``resolution ceiling``: the label itself through the preprocessing (resized to the training size with
      nearest neighbours) and back with ``Invertd``, threshold 0.5: the best a model at that size can do;
    - ``intensity window``: ``a < T1 < b`` in the input geometry with the window of the best mean Dice on the
      training blocks (a, b on a 5-unit grid of the 0..255 T1): how much of the label the intensity alone gives.
    """
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    test = load_split(parser, "test")
    ceiling = []
    for item in test:
        d = preprocessing(item)
        d["pred"] = torch.as_tensor(d["label"]).float()
        inv = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True)(d)
        label, affine = _label_and_affine(item)
        ceiling.append({"case_id": item["case_id"], **score_volume(torch.as_tensor(inv["pred"])[0].numpy() >= 0.5,
                                                                     label, affine)})

    def t1(item: dict[str, Any]) -> np.ndarray:
        return np.asanyarray(nib.load(item["image"][0]).dataobj)

    # voxel counts per T1 value, all and inside the label, over the training blocks: Dice of every window at once
    hist_all, hist_in, n_label = np.zeros(257), np.zeros(257), 0
    for it in load_split(parser, "training"):
        x, g = np.clip(np.rint(t1(it)), 0, 256).astype(np.int64), _label_and_affine(it)[0] > 0
        hist_all += np.bincount(x.ravel(), minlength=257)
        hist_in += np.bincount(x[g], minlength=257)
        n_label += int(g.sum())
    c_all, c_in = np.concatenate([[0], np.cumsum(hist_all)]), np.concatenate([[0], np.cumsum(hist_in)])
    best = (-1.0, 0, 255)
    for a in range(0, 256, 5):
        for b in range(a + 5, 257, 5):  # a < x < b: values a + 1 .. b - 1
            inside, inter = c_all[b] - c_all[a + 1], c_in[b] - c_in[a + 1]
            best = max(best, (2 * inter / (inside + n_label) if inside + n_label else 0.0, a, b))
    _, a, b = best
    window = []
    for item in test:
        x = t1(item)
        label, affine = _label_and_affine(item)
        window.append({"case_id": item["case_id"], **score_volume((x > a) & (x < b), label, affine)})
    return [
        {"reference": "resolution ceiling (label resized to the training size and back)", "cases": ceiling},
        {"reference": f"intensity window {a} < T1 < {b} (fit on the training blocks), input geometry",
         "cases": window},
    ]


# ---------------------------------------------------------------------------------------------------------- bundle
def _bundle_cmd(run_id: str, configs: list[str], overrides: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(configs)]
    for k, v in overrides.items():
        # python-fire parses the values: Python literals (False, not JSON's false)
        cmd += [f"--{k}", v if isinstance(v, str) else repr(v)]
    return cmd


def _run(cmd: list[str], log: Path, threads: int, timeout: float) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(REPO))
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{cmd[:5]} failed with status {proc.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - t0


def _train_overlay(path: Path, budget: float, stats_file: Path) -> Path:
    overlay = {
        "wall_time_budget": {
            "_target_": "quality_handlers.WallTimeBudget",
            "budget": budget,
            "stats_file": str(stats_file),
            "network": "@eval_network",  # the EMA weights when the recipe keeps them (use_ema)
            "save_path": "$@ckpt_dir + '/model.pt'",
        },
        "train#trainer#train_handlers": "$@train#handlers + [@wall_time_budget]",
    }
    path.write_text(json.dumps(overlay, indent=2) + "\n")
    return path


def _train_bundle(
    configs: list[str], common: dict[str, Any], work: Path, epochs: int, budget: float, threads: int, seed: int
) -> dict[str, Any]:
    stats_file = work / "train_stats.json"
    overlay = _train_overlay(work / "wall_time_overlay.json", budget, stats_file)
    overrides = dict(common, epochs=epochs, val_interval=epochs + 1)
    cmd = _bundle_cmd("training", [str(CONFIGS / c) for c in configs] + [str(overlay)], overrides)
    _run(cmd, work / "train.log", threads, timeout=max(600.0, 4 * budget + 600))
    return json.loads(stats_file.read_text())


def _seconds_per_epoch(calibration_stats: dict[str, Any]) -> tuple[float, float]:
    """Steady seconds per epoch and the warm-up's extra seconds, from a calibration run's epoch times.

    The first epochs of a run are slower (allocator and oneDNN kernel caches warming up: 4.0, 3.4, 3.1 s, then
    2.3-2.5 s for preset B at 128x128 on 2 cores), so the steady time is the mean of the second half of the
    epochs, and the first half's excess over it is paid once per run.
    """
    times = list(calibration_stats["epoch_seconds"]) or [float(calibration_stats["train_seconds"])]
    steady = statistics.fmean(times[len(times) // 2 :])
    warmup = sum(max(0.0, t - steady) for t in times[: len(times) // 2])
    return steady, warmup


def run_bundle_recipe(
    recipe: str, root: Path, work: Path, size: int, budget: float, threads: int, seed: int,
    calibration_epochs: int = 6, timing_volumes: int = 2, extra_overrides: dict[str, Any] | None = None,
    min_epochs: int = 10, reuse: bool = False,
) -> dict[str, Any]:
    """Train one bundle recipe for a wall-time budget, evaluate it on the test blocks and score its predictions.

    Args:
        recipe: a key of :data:`RECIPES`.
        root: the data folder (with ``datalist.json``).
        work: an empty folder for the runs' checkpoints, logs and predictions.
        size: in-plane training size.
        budget: training seconds.
        threads: torch threads of the subprocesses.
        seed: the bundle's ``seed`` (``set_determinism`` in its ``initialize``: weights, noise, slice sampling).
        calibration_epochs: epochs of the run that measures the time per epoch (0: no calibration, the number of
            epochs is large and the budget stops the run; the learning-rate schedule then does not finish).
        timing_volumes: number of test volumes the sampler is timed on in this process (all volumes have the same
            shape, so the time per volume is the same; each timing repeats the evaluation's sampling).
        extra_overrides: more config overrides for training and evaluation (e.g. a smaller ensemble in CI).
        min_epochs: the fewest epochs planned: the demo recipe's ``OneCycleLR`` (10% warm-up over ``epochs + 1``
            steps) is not defined for fewer than 10. When they do not fit in the budget, the budget stops the run.
        reuse: score the run that ``work`` already holds (trained and evaluated by an earlier, interrupted call with
            the same arguments: ``run/train_stats.json``, ``run/eval/test/metrics.csv``) instead of running it again.

    Returns:
        training statistics, the number of epochs chosen and per-case scores.
    """
    configs = RECIPES[recipe]
    run_dir = work / "run"
    common = _common_overrides(root, run_dir, size, extra_overrides, seed)
    if reuse:
        if not (run_dir / "eval" / "test" / "metrics.csv").is_file():
            raise FileNotFoundError(f"{run_dir}: no finished run to reuse (eval/test/metrics.csv is missing)")
        stats = json.loads((run_dir / "train_stats.json").read_text())
        calib = work / "calibration" / "train_stats.json"
        per_epoch = _seconds_per_epoch(json.loads(calib.read_text()))[0] if calib.is_file() else float("nan")
        epochs, eval_seconds = stats["max_epochs"], float("nan")
    else:
        if calibration_epochs > 0:
            calib_dir = work / "calibration"
            calib_dir.mkdir(parents=True)
            cs = _train_bundle(configs, _common_overrides(root, calib_dir, size, extra_overrides, seed), calib_dir,
                               calibration_epochs, 0.0, threads, seed)
            per_epoch, warmup = _seconds_per_epoch(cs)
            epochs = max(min_epochs, int(max(budget - warmup, 0.0) // per_epoch))
        else:
            per_epoch, epochs = float("nan"), 10_000
        run_dir.mkdir(parents=True)
        stats = _train_bundle(configs, common, run_dir, epochs, budget, threads, seed)
        eval_cmd = _bundle_cmd("evaluating", [str(CONFIGS / c) for c in [*configs, "evaluate.json"]],
                               dict(common, eval_split="test"))
        eval_seconds = _run(eval_cmd, run_dir / "evaluate.log", threads, timeout=1800)

    # scoring the NIfTI predictions, and the sampler's time per volume in this process
    parser = bundle_parser(configs, common)
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)["model"])
    network.eval()
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    cases = []
    for i, item in enumerate(load_split(parser, "test")):
        pred = np.asanyarray(nib.load(run_dir / "eval" / "test" / f"{item['case_id']}_seg.nii.gz").dataobj)
        label, affine = _label_and_affine(item)
        seconds = float("nan")
        if i < timing_volumes:
            image = torch.as_tensor(preprocessing(item)["image"])[None].float()
            t0 = time.perf_counter()
            with torch.no_grad():
                inferer(image, network)
            seconds = time.perf_counter() - t0
        cases.append({"case_id": item["case_id"], **score_volume(pred, label, affine), "infer_seconds": seconds})
    bundle_dice = float("nan")
    metrics_csv = run_dir / "eval" / "test" / "metrics.csv"
    if metrics_csv.is_file():  # the bundle's own mean Dice (MONAI MeanDice on the same NIfTI-geometry masks)
        m = re.search(r"^mean_dice[,\s]+([0-9.eE+-]+)", metrics_csv.read_text(), re.MULTILINE)
        bundle_dice = float(m.group(1)) if m else bundle_dice
    return {
        "epochs": stats["epochs_completed"], "steps": stats["iterations"], "train_seconds": stats["train_seconds"],
        "train_cpu_seconds": stats.get("train_cpu_seconds", float("nan")), "epochs_planned": epochs,
        "calibrated_seconds_per_epoch": per_epoch,
        "stopped_by_budget": stats["stopped_by_budget"], "eval_process_seconds": eval_seconds,
        "bundle_reported_mean_dice": bundle_dice,
        "params": sum(p.numel() for p in network.parameters()),
        "recipe": {"configs": configs, "preset": parser.get_parsed_content("preset"),
                   "learning_rate": parser.get_parsed_content("learning_rate"),
                   "num_inference_steps": parser.get_parsed_content("num_inference_steps"),
                   "num_ensemble": parser.get_parsed_content("num_ensemble"),
                   "sampler": parser.get_parsed_content("sampler")},
        "cases": cases,
    }


def parse_sets(p: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as bundle overrides: VALUE is JSON when it parses, else a string."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def prepare_work(args: argparse.Namespace, prefix: str) -> tuple[Path, Path, dict[str, Any]]:
    """The work folder (``--work_dir`` or a new temporary one) and the grey-matter cases freshly written in it."""
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=prefix))
    root = work / "data"
    if root.exists():
        shutil.rmtree(root)
    return work, root, prepare_mni_cases(root, cache_dir=args.cache_dir, block_size=args.block_size, gap=args.gap)


# ------------------------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    earlier_reports = load_reports(args.merge_json)
    work, root, datalist = prepare_work(args, "medsegdiff-quality-")
    print(f"data: {len(datalist['blocks'])} blocks of {args.block_size} slices in {root} "
          f"({datalist['numTraining']} training, {datalist['numValidation']} validation, {datalist['numTest']} test)",
          flush=True)
    report: dict[str, Any] = {
        **report_header("quality.py", args.threads),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "size": args.size, "short": bool(args.short), "bundle_overrides": args.overrides,
        "data": {"source": datalist["source"], "block_size": args.block_size, "gap": args.gap,
                 "blocks": datalist["blocks"],
                 "num": {k: datalist[f"num{k.capitalize()}"] for k in ("training", "validation", "test")}},
        "rows": [],
    }
    base_parser = bundle_parser(RECIPES["medsegdiff-demo"], _common_overrides(root, work / "baselines", args.size))
    report["references"] = []
    for ref in run_references(base_parser):
        ref["dice"] = _summary([c["dice"] for c in ref["cases"]])
        ref["hd95"] = _summary([c["hd95"] for c in ref["cases"]])
        report["references"].append(ref)
        print(f"reference {ref['reference']}: Dice {ref['dice']['mean']:.4f}", flush=True)
    for budget in args.budget:
        for method in args.methods:
            print(f"{method}, budget {budget:g} s ...", flush=True)
            try:
                with CpuShare() as share:
                    if method in BASELINES:
                        row = run_baseline(method, base_parser, budget, args.seed)
                    else:
                        method_work = work / f"{method}_{budget:g}s"
                        if method_work.exists() and not args.reuse_runs:
                            shutil.rmtree(method_work)
                        row = run_bundle_recipe(method, root, method_work, args.size, budget, args.threads,
                                                args.seed, calibration_epochs=args.calibration_epochs,
                                                timing_volumes=args.timing_volumes, extra_overrides=args.overrides,
                                                reuse=args.reuse_runs)
            except Exception as e:  # keep the other methods' results; the failure is reported in the table
                print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
                label = "" if method in BASELINES else args.label  # --label/--set name recipe variants only
                report["rows"].append({"method": method, "label": label, "budget": budget, "seed": args.seed,
                                       "error": f"{type(e).__name__}: {e}"[:2000]})
                continue
            dice = _summary([c["dice"] for c in row["cases"]])
            hd95 = _summary([c["hd95"] for c in row["cases"]])
            infer = _summary([c["infer_seconds"] for c in row["cases"]])
            reused = args.reuse_runs and method not in BASELINES
            row = {"method": method, "label": "" if method in BASELINES else args.label, "budget": budget,
                   "overrides": {} if method in BASELINES else args.overrides, **row, "dice": dice, "hd95": hd95,
                   "infer_seconds": infer,
                   # a reused run was trained earlier: this process only scored it, so its CPU share is unknown
                   "other_processes_cpu_share": float("nan") if reused else share.others, "reused_run": reused,
                   "seed": args.seed}
            report["rows"].append(row)
            print(f"  {row['epochs']} epochs, {row['steps']} steps, Dice {dice['mean']:.4f} +- {dice['sd']:.4f}, "
                  f"HD95 {hd95['mean']:.2f} mm, {infer['mean']:.3f} s per volume; other processes used "
                  f"{100 * share.others:.0f}% of the CPUs", flush=True)
            (work / "quality.partial.json").write_text(json.dumps(report, indent=2))  # results so far
    # rows of earlier runs on the same data (other seeds, an interrupted run), in method order
    merge_reports(report, earlier_reports)
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report["work_dir"] = str(work)
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------------------- output
_METHOD_TEXT = {
    "basicunet": "MONAI BasicUNet (2D)",
    "segresnet": "MONAI SegResNet (2D)",
    "medsegdiff-demo": "bundle demo recipe (train.json + demo.json)",
    "medsegdiff-full": "bundle full recipe (train.json)",
}


def _row_key(row: dict[str, Any]) -> tuple[str, str, float, int]:
    return row["method"], row.get("label") or "", row["budget"], int(row.get("seed", 0))


def _command_seed(command: str) -> int:
    """The ``--seed`` of a report's command (default 0): rows of reports before 2026-12-04 do not record it."""
    m = re.search(r"--seed[ =](\d+)", command)
    return int(m.group(1)) if m else 0


def load_reports(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read report JSON files (read before a run starts: a run rewrites ``quality.partial.json`` in its work folder)."""
    return [dict(json.loads(Path(path).read_text()), path=str(path)) for path in paths]


def merge_reports(report: dict[str, Any], earlier_reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add the rows of earlier reports on the same data to ``report`` (in place), in method order.

    A row of ``report`` (method, label, budget, seed) replaces the same row of an earlier report; of two earlier
    reports, the later in ``earlier_reports`` wins. Each kept row records its report's date (``run_date``) and command
    (``run_command``); rows of reports written before rows recorded their seed take the seed of that report's
    command (``--seed``, default 0).

    Raises:
        SystemExit: when a report was made on another data split.
    """
    if not earlier_reports:
        return report
    report["rows"] = [dict(r, seed=r.get("seed", _command_seed(report["command"]))) for r in report["rows"]]
    rows = {_row_key(r): r for r in report["rows"]}
    merged = report.setdefault("merged_from", [])
    for earlier in earlier_reports:
        if earlier["data"]["blocks"] != report["data"]["blocks"]:
            raise SystemExit(f"{earlier.get('path', earlier['command'])}: another data split; cannot merge")
        kept = []
        for r in earlier["rows"]:
            r = dict(r, seed=r.get("seed", _command_seed(earlier["command"])),
                     run_date=r.get("run_date", earlier["date"]), run_command=r.get("run_command", earlier["command"]))
            if _row_key(r) not in rows or rows[_row_key(r)].get("run_date"):
                rows[_row_key(r)] = r
                kept.append(r)
        merged.append({"date": earlier["date"], "command": earlier["command"],
                       "rows": [[_method_text(r), r["budget"], r["seed"]] for r in kept]})
    order = {m: i for i, m in enumerate(METHODS)}
    report["rows"] = sorted(rows.values(), key=lambda r: (r["budget"], order.get(r["method"], 99), r.get("label") or "",
                                                          int(r.get("seed", 0))))
    return report


def _method_text(row: dict[str, Any]) -> str:
    text = _METHOD_TEXT.get(row["method"], row["method"])
    return f"{text}, {row['label']}" if row.get("label") else text


def _seed_groups(report: dict[str, Any]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """The scored rows by (method text, budget): one row per seed."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in report["rows"]:
        if "dice" in r:
            groups.setdefault((_method_text(r), r["budget"]), []).append(r)
    return groups


def _fmt(s: dict[str, Any], digits: int) -> str:
    if not math.isfinite(s["mean"]):
        return "n/a"
    text = f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"
    if s["n_finite"] < s["n"]:
        text += f" ({s['n'] - s['n_finite']} empty)"
    return text


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page."""
    d = report["data"]
    shares = [r.get("other_processes_cpu_share", math.nan) for r in report["rows"]]
    shares = [v for v in shares if math.isfinite(v)]
    busy = max(shares) if shares else float("nan")
    lines = [
        "# Segmentation quality on real MRI at equal wall time",
        "",
        f"Generated by `{report['command']}` (`benchmarks/quality.py`); do not edit by hand.",
        "",
    ]
    merged = report.get("merged_from") or []
    for m in [merged] if isinstance(merged, dict) else merged:  # a dict in reports written before 2026-12-04
        if m["rows"]:
            rows = ", ".join(f"{r[0]} ({r[1]:g} s" + (f", seed {r[2]})" if len(r) > 2 else ")") for r in m["rows"])
            lines += [f"Rows {rows} are from an earlier run on the same data, `{m['command']}` ({m['date']}), "
                      "merged in.", ""]
    lines += [
        f"- date: {report['date']}; torch {report['versions']['torch']}, MONAI {report['versions']['monai']}, "
        f"Python {report['versions']['python']}, medsegdiff_monai {report['versions']['medsegdiff_monai']}",
        f"- machine: {report['cpu']}, {report['logical_cpus']} logical CPUs, {report['torch_threads']} torch threads, "
        f"OMP_WAIT_POLICY={report.get('omp_wait_policy')}; "
        f"load average {report['load_average_before'][0]:.2f} before, {report['load_average_after'][0]:.2f} after; "
        f"other processes used up to {100 * busy:.0f}% of the CPUs during a method's run"
        + (" (**the machine was shared: the timings and the work done per budget are lower than on a quiet "
           "machine**)" if busy > 0.1 else ""),
        f"- data: MNI152 2009a symmetric T1 template ({d['source']['wheel']}, `{d['source']['image']}`), label = "
        f"grey-matter probability > {d['source']['label_threshold']} (`{d['source']['label']}`), written as BraTS "
        f"label 2 so the `wt` region is the grey matter; the T1 is written to all four modality files (only one "
        f"real modality). {len(d['blocks'])} blocks of {d['block_size']} axial slices, {d['gap']} unused slices "
        f"between blocks, fixed split: {d['num']['training']} training, {d['num']['validation']} validation "
        f"(unused: no model selection), {d['num']['test']} test blocks",
        f"- in-plane size: {report['size']}x{report['size']} for every method (the slices are resized to it and "
        "predictions resized back); budget = seconds of training "
        "loop, final weights for every method; baselines: DiceCELoss(sigmoid), AdamW lr 1e-3, batch 16 slices; "
        "bundle recipes: epochs set from a calibration run so the learning-rate schedule ends with the budget",
        "- Dice and HD95: per test block (volume) in the input geometry, mean ± sd over the test blocks; "
        "inference: seconds per volume for the network (bundle: the ensemble sampler of `validate#inferer`); "
        "training CPU s: CPU time the training process used during the budget (all threads; at most budget x "
        "threads, less when other processes share the cores)",
        "",
        "| method | seed | budget s | training s | epochs | steps | training CPU s | Dice | HD95 mm | "
        "inference s per volume |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {_method_text(r)} | {r.get('seed', 0)} | {r['budget']:g} | failed: "
                         f"{r['error'].splitlines()[0][:120]} | | | | | | |")
            continue
        cpu = r.get("train_cpu_seconds", float("nan"))
        lines.append(
            f"| {_method_text(r)} | {r.get('seed', 0)} | {r['budget']:g} | {r['train_seconds']:.0f} | {r['epochs']} | "
            f"{r['steps']} | {f'{cpu:.0f}' if math.isfinite(cpu) else 'n/a'} | "
            f"{_fmt(r['dice'], 4)} | {_fmt(r['hd95'], 2)} | {r['infer_seconds']['mean']:.3f} |"
        )
    groups = _seed_groups(report)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["", "Over seeds (mean ± sd of the per-seed means):", "",
                  "| method | budget s | seeds | Dice | HD95 mm |", "| --- | --- | --- | --- | --- |"]
        for (text, budget), rows in groups.items():
            dice = _summary([r["dice"]["mean"] for r in rows])
            hd95 = _summary([r["hd95"]["mean"] for r in rows])
            seeds = ", ".join(str(r.get("seed", 0)) for r in rows)
            if len(rows) > 1:
                lines.append(f"| {text} | {budget:g} | {seeds} | {_fmt(dice, 4)} | {_fmt(hd95, 2)} |")
            else:  # one seed has no spread over seeds: its mean alone, not "± 0"
                lines.append(f"| {text} | {budget:g} | {seeds} | {dice['mean']:.4f} | {hd95['mean']:.2f} |")
    if report.get("references"):
        lines += ["", "References without training (same scoring):", "", "| reference | Dice | HD95 mm |",
                  "| --- | --- | --- |"]
        for ref in report["references"]:
            lines.append(f"| {ref['reference']} | {_fmt(ref['dice'], 4)} | {_fmt(ref['hd95'], 2)} |")
    reused = [r for r in report["rows"] if r.get("reused_run")]
    if reused:
        lines += ["", "Trained and evaluated by an earlier, interrupted run of the same command in the same work "
                  "folder and scored by this one (`--reuse_runs`; the other processes' CPU share during their "
                  "training is not known): "
                  + ", ".join(f"{_method_text(r)} ({r['budget']:g} s)" for r in reused) + "."]
    recipes = [r for r in report["rows"] if "recipe" in r]
    planned = [r for r in recipes if r["epochs"] < r["epochs_planned"]]
    if planned:
        lines += ["", "Stopped by the budget before the planned epochs (so before the end of the learning-rate "
                  "schedule): " + ", ".join(f"{r['method']} at {r['budget']:g} s ({r['epochs']} of "
                                            f"{r['epochs_planned']})" for r in planned) + "."]
    if recipes:
        lines += ["", "Bundle recipes:", ""]
        seen = set()
        for r in recipes:
            rc = r["recipe"]
            if _method_text(r) in seen:
                continue
            seen.add(_method_text(r))
            sets = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in (r.get("overrides") or {}).items())
            lines.append(
                f"- {_method_text(r)}: {' + '.join(rc['configs'])}, preset {rc['preset']}, lr {rc['learning_rate']}, "
                f"{rc['num_ensemble']}-member ensemble, {rc['num_inference_steps']} {rc['sampler'].upper()} steps, "
                f"{r['params']:,} parameters" + (f"; overrides {sets}" if sets else "")
            )
    lines += ["", "![Dice per method and budget](quality.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar plot of the mean Dice per method, one group per budget; dots: the seeds' means; error bars: sd over the
    seeds (one seed: over the test blocks); dashed lines: the trainless references."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _seed_groups(report)
    methods = list(dict.fromkeys(text for text, _ in groups))
    budgets = list(dict.fromkeys(b for _, b in groups))
    width = 0.8 / max(len(methods), 1)
    # the legend goes below the axes, wrapped: variant names are long and would be cut at the right margin
    fig, ax = plt.subplots(figsize=(4.5 + 1.4 * len(budgets) * max(len(methods), 1) * 0.5, 3.6 + 0.3 * len(methods)))
    lowest = 1.0
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, b in enumerate(budgets):
            rows = groups.get((m, b))
            if not rows:
                continue
            means = [r["dice"]["mean"] for r in rows]
            x = j + (i - (len(methods) - 1) / 2) * width
            xs.append(x)
            ys.append(statistics.fmean(means))
            es.append(statistics.stdev(means) if len(means) > 1 else rows[0]["dice"]["sd"])
            if len(means) > 1:
                ax.plot([x] * len(means), means, "k.", markersize=4, zorder=3)
            lowest = min(lowest, *means)
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=textwrap.fill(m, 90))
    for k, ref in enumerate(report.get("references") or []):
        ax.axhline(ref["dice"]["mean"], color="grey", linestyle="--" if k == 0 else ":", linewidth=1,
                   label=textwrap.fill(f"{ref['reference']}: {ref['dice']['mean']:.3f}", 90))
    ax.set_xticks(range(len(budgets)))
    ax.set_xticklabels([f"{b:g} s" for b in budgets])
    ax.set_ylabel("Dice per test block")
    ax.set_ylim(max(0.0, math.floor((lowest - 0.08) * 20) / 20), 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1, frameon=False)
    ax.set_title(f"Grey matter on MNI152 T1 blocks, {report['size']}x{report['size']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, action="append", help="training seconds per method (repeatable; 150)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--size", type=int, default=None, help="in-plane size (default 64, the demo recipe's)")
    p.add_argument("--block_size", type=int, default=8)
    p.add_argument("--gap", type=int, default=2)
    p.add_argument("--calibration_epochs", type=int, default=6,
                   help="epochs of the run that times an epoch (the second half is timed; 0: none)")
    p.add_argument("--timing_volumes", type=int, default=2, help="test volumes the bundle's sampler is timed on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="where the nilearn wheel is kept")
    p.add_argument("--work_dir", default=None, help="keep data, checkpoints, logs and predictions here")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--out_dir", default=None, help="default docs/ (--short: a temporary folder)")
    p.add_argument("--short", action="store_true",
                   help="CI: 8 s budgets, no calibration run, 64x64, 2-member ensemble, no full recipe")
    p.add_argument("--from_json", default=None, help="re-render the markdown and plot of a report")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="bundle config override for the recipes, e.g. --set use_ema=true --set 'train#x=[1]' "
                        "(VALUE is JSON, else a string; repeatable); recorded in the report")
    p.add_argument("--label", default="", help="name of this variant in the table (e.g. the levers set with --set)")
    p.add_argument("--reuse_runs", action="store_true",
                   help="score the bundle runs that --work_dir holds from an interrupted run of the same command "
                        "(trained and evaluated, not yet scored) instead of training them again")
    p.add_argument("--merge_json", action="append", default=[],
                   help="add the rows of an earlier report on the same data (other seeds, methods or labels; "
                        "repeatable); with --from_json, merge into that report")
    args = p.parse_args(argv)
    args.overrides = parse_sets(p, args.sets)
    if args.short:  # a code check: every step of the benchmark, in about a minute and a half
        args.budget = args.budget or [8.0]
        args.calibration_epochs = 0
        args.timing_volumes = 1
        args.overrides = {"num_ensemble": 2, "num_overlay_slices": 1, **args.overrides}
        if args.methods == list(METHODS):
            args.methods = ["basicunet", "segresnet", "medsegdiff-demo"]  # the full recipe only adds time
    args.budget = args.budget or [150.0]
    args.size = args.size or 64
    out = Path(args.out_dir or (tempfile.mkdtemp(prefix="medsegdiff-quality-out-") if args.short else REPO / "docs"))
    if args.from_json:
        report = merge_reports(json.loads(Path(args.from_json).read_text()), load_reports(args.merge_json))
    else:
        report = run(args)
    write_report_files(out, "quality", report, to_markdown(report), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
