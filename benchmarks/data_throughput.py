# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Throughput of the bundle's 2D training data pipeline (slices per second) on the synthetic demo data.

The chain measured is the bundle's own ``train#preprocessing``, parsed from ``bundle/configs/train.json`` (which
instantiates :func:`medsegdiff_monai.transforms.get_train_transforms` with the bundle's ``spatial_size``,
``slices_per_volume``, ``tumour_slice_weight``, ``regions`` and ``train#augmentation``); ``--spatial_size`` and
``--slices_per_volume`` override the config's values as ``--spatial_size`` would on the bundle's command line.

Compares ``monai.data.Dataset`` (no cache: every volume is read, cropped, normalised and resized each epoch),
``CacheDataset`` (the deterministic part kept in memory) and ``PersistentDataset`` (kept on disk; the first
epoch writes the cache). Usage::

    python benchmarks/data_throughput.py --quick          # CI: small volumes, a few seconds
    python benchmarks/data_throughput.py                  # BraTS-sized volumes (240 x 240 x 155)
    python benchmarks/data_throughput.py --data_dir /data/BraTS2021 --num_workers 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.utils import set_determinism
from medsegdiff_monai.data import find_cases, make_demo_data

BUNDLE_TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"


def bundle_train_transforms(config_file: str | Path = BUNDLE_TRAIN_CONFIG, bundle_root: str | Path = ".",
                            **overrides):
    """The bundle's ``train#preprocessing`` and the parser it came from, with ``overrides`` of top-level keys.

    Args:
        config_file: the bundle's training config (or a list of configs, merged in order, as ``--config_file``).
        bundle_root: the ``bundle_root`` to parse with (nothing is written there: the chain writes no file).
        overrides: config ids and values, e.g. ``spatial_size=[64, 64]``; None values are ignored.

    Returns:
        ``(transform, parser)``: the ``Compose`` the bundle trains with, and its parser (for the values used).
    """
    parser = ConfigParser()
    files = [config_file] if isinstance(config_file, (str, Path)) else list(config_file)
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(bundle_root), **{k: v for k, v in overrides.items() if v is not None}})
    return parser.get_parsed_content("train#preprocessing"), parser


def _epochs(loader: DataLoader, epochs: int) -> tuple[int, float, list[float]]:
    slices, per_epoch = 0, []
    start = time.perf_counter()
    for _ in range(epochs):
        t0 = time.perf_counter()
        for batch in loader:
            slices += int(batch["image"].shape[0])
        per_epoch.append(time.perf_counter() - t0)
    return slices, time.perf_counter() - start, per_epoch


def run(args: argparse.Namespace) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="medsegdiff-bench-"))
    try:
        if args.data_dir:
            data_dir = Path(args.data_dir)
        else:
            data_dir = tmp / "demo"
            t0 = time.perf_counter()
            make_demo_data(data_dir, num_cases=args.num_cases, seed=0, shape=args.shape)
            print(f"generated {args.num_cases} demo cases of {tuple(args.shape)} in {time.perf_counter() - t0:.1f} s")
        cases = [c for c in find_cases(data_dir) if "label" in c][: args.num_cases]
        xf, parser = bundle_train_transforms(
            args.config_file, tmp, spatial_size=args.spatial_size, slices_per_volume=args.slices_per_volume)
        args.spatial_size, args.slices_per_volume = list(parser["spatial_size"]), int(parser["slices_per_volume"])
        print(f"{len(cases)} volumes, {args.slices_per_volume} slices per volume, network size "
              f"{tuple(args.spatial_size)} ({Path(args.config_file).name} train#preprocessing: "
              f"{len(xf.transforms)} transforms), batch {args.batch_size}, workers {args.num_workers}, "
              f"torch threads {torch.get_num_threads()}, {args.epochs} epoch(s)")
        results = []

        def loader(ds):
            return DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers)

        def record(name: str, setup: float, slices: int, seconds: float, per_epoch: list[float]) -> None:
            row = {"dataset": name, "setup_s": round(setup, 3), "slices": slices, "seconds": round(seconds, 3),
                   "slices_per_s": round(slices / seconds, 1),
                   "first_epoch_s": round(per_epoch[0], 3), "later_epochs_s": [round(e, 3) for e in per_epoch[1:]]}
            results.append(row)
            print(f"  {name:<26} setup {setup:6.2f} s   {slices:5d} slices in {seconds:6.2f} s   "
                  f"{slices / seconds:8.1f} slices/s   epochs {[round(e, 2) for e in per_epoch]}")

        set_determinism(0)
        ds = Dataset(cases, xf)
        record("Dataset (no cache)", 0.0, *_epochs(loader(ds), args.epochs))

        t0 = time.perf_counter()
        ds = CacheDataset(cases, xf, progress=False, num_workers=max(args.num_workers, 1))
        setup = time.perf_counter() - t0
        record("CacheDataset", setup, *_epochs(loader(ds), args.epochs))

        cache_dir = tmp / "persistent"
        ds = PersistentDataset(cases, xf, cache_dir=cache_dir)
        record("PersistentDataset (cold)", 0.0, *_epochs(loader(ds), 1))
        ds = PersistentDataset(cases, xf, cache_dir=cache_dir)
        record("PersistentDataset (warm)", 0.0, *_epochs(loader(ds), args.epochs))
        size = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        print(f"  PersistentDataset cache on disk: {size / 2**20:.1f} MiB for {len(cases)} volumes")
        return results
    finally:
        set_determinism(None)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI mode: 4 small volumes (48 x 48 x 32), 2 epochs")
    p.add_argument("--data_dir", default=None, help="a BraTS/MSD folder instead of generated demo data")
    p.add_argument("--num_cases", type=int, default=8)
    p.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], help="demo volume shape")
    p.add_argument("--config_file", default=str(BUNDLE_TRAIN_CONFIG),
                   help="the bundle training config whose train#preprocessing is measured")
    p.add_argument("--spatial_size", type=int, nargs=2, default=None,
                   help="network input (H, W); default: the config's spatial_size")
    p.add_argument("--slices_per_volume", type=int, default=None, help="default: the config's slices_per_volume")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in the main process (default 1, as in DataLoader workers; 0 keeps "
                        "torch's choice). The many small tensor operations of the transforms slow down badly with "
                        "several threads on a busy machine")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.num_cases, args.shape, args.spatial_size, args.epochs = 4, [48, 48, 32], [64, 64], 2
    warnings.filterwarnings("ignore", message="Num foregrounds")
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
