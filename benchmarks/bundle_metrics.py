# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The bundle's ``eval_metrics``: train the demo recipe, evaluate it on its held-out split, record the means.

Trains ``train.json`` + ``demo.json`` (the README's quick start) in a temporary copy of ``bundle/`` (the repository's
bundle folder is never written to), runs ``evaluate.json`` on the datalist's ``test`` split (cases neither trained on
nor used to pick the checkpoint) and reads the bundle's own ``metrics.csv``: the mean over cases of the Dice, IoU and
HD95 (mm) of the NIfTI predictions in the input geometry. Writes ``docs/bundle_metrics.json`` (with the data, the
machine and the times) and, with ``--update_metadata``, the ``eval_metrics`` of ``bundle/configs/metadata.json``.

Usage::

    python benchmarks/bundle_metrics.py --update_metadata      # ~6 min on 2 cores
    python benchmarks/bundle_metrics.py --bundle_dir DIR       # evaluate an already trained bundle copy only
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from quality import _bundle_cmd, _run  # noqa: E402
from speed_harness import machine_info  # noqa: E402

__all__ = ["METRIC_NAMES", "read_metrics", "update_metadata", "main"]

#: bundle metric name (``metrics.csv``) -> ``eval_metrics`` key of metadata.json
METRIC_NAMES = {"mean_dice": "mean_dice", "mean_iou": "mean_iou", "hd95": "hd95_mm"}
DEMO_CONFIGS = ["configs/train.json", "configs/demo.json"]


def read_metrics(eval_dir: Path) -> dict[str, float]:
    """The means of the bundle's ``metrics.csv`` (``name,value`` rows) under metadata.json's names.

    Raises:
        ValueError: when the file lacks one of :data:`METRIC_NAMES`.
    """
    path = eval_dir / "metrics.csv"
    with open(path, newline="") as f:
        rows = {r[0]: float(r[1]) for r in csv.reader(f) if len(r) >= 2}
    missing = sorted(set(METRIC_NAMES) - set(rows))
    if missing:
        raise ValueError(f"{path}: no {missing} (has {sorted(rows)}).")
    return {meta: round(rows[name], 4) for name, meta in METRIC_NAMES.items()}


def update_metadata(metadata_file: Path, metrics: dict[str, float]) -> None:
    """Replace ``eval_metrics`` of a metadata.json (4-space indent, key order kept), atomically."""
    meta = json.loads(metadata_file.read_text())
    meta["eval_metrics"] = metrics
    tmp = metadata_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=4) + "\n")
    os.replace(tmp, metadata_file)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle_dir", default=None, help="a trained bundle copy (default: train the demo in a new one)")
    p.add_argument("--split", default="test", help="the datalist split to evaluate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "docs" / "bundle_metrics.json"))
    p.add_argument("--update_metadata", action="store_true", help="write eval_metrics of bundle/configs/metadata.json")
    args = p.parse_args(argv)

    report: dict[str, Any] = {"command": "python benchmarks/bundle_metrics.py " + " ".join(argv or sys.argv[1:]),
                              "machine": machine_info(args.threads)}
    if args.bundle_dir:
        bundle = Path(args.bundle_dir).resolve()
    else:
        bundle = Path(tempfile.mkdtemp(prefix="medsegdiff-metrics-")) / "bundle"
        shutil.copytree(REPO / "bundle", bundle, ignore=shutil.ignore_patterns("data", "eval", "logs", "predictions",
                                                                               "*.pt"))
    configs = [str(bundle / c) for c in DEMO_CONFIGS]
    if not args.bundle_dir:
        print(f"training the demo recipe in {bundle} ...", flush=True)
        report["train_seconds"] = round(_run(_bundle_cmd("training", configs, {"bundle_root": str(bundle)}),
                                             bundle / "training.log", args.threads, timeout=7200), 1)
    print(f"evaluating the {args.split} split ...", flush=True)
    report["eval_seconds"] = round(_run(_bundle_cmd("evaluating", [*configs, str(bundle / "configs" / "evaluate.json")],
                                                    {"bundle_root": str(bundle), "eval_split": args.split}),
                                        bundle / "evaluating.log", args.threads, timeout=3600), 1)
    datalist = json.loads((bundle / "data" / "datalist.json").read_text())
    report["data"] = {
        "name": "the bundle's synthetic demo data (medsegdiff_monai.data.make_demo_data via prepare_datalist, seed 0)",
        "split": args.split, "cases": [c["case_id"] for c in datalist[args.split]],
        "num_training": len(datalist["training"]), "layout": datalist.get("layout"),
    }
    report["configs"] = DEMO_CONFIGS + ["configs/evaluate.json"]
    report["eval_metrics"] = read_metrics(bundle / "eval" / args.split)
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["eval_metrics"]), f"-> {args.out}", flush=True)
    if args.update_metadata:
        update_metadata(REPO / "bundle" / "configs" / "metadata.json", report["eval_metrics"])
        print("eval_metrics written to bundle/configs/metadata.json", flush=True)
    return report


if __name__ == "__main__":
    main()
