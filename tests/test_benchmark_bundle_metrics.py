# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/bundle_metrics.py: reading the bundle's metrics.csv and writing metadata.json's eval_metrics."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

bundle_metrics = pytest.importorskip("bundle_metrics")


def test_reads_the_means_under_the_metadata_names(tmp_path):
    (tmp_path / "metrics.csv").write_text("mean_dice,0.912345\nmean_iou,0.84\nhd95,2.2360679\n")
    assert bundle_metrics.read_metrics(tmp_path) == {"mean_dice": 0.9123, "mean_iou": 0.84, "hd95_mm": 2.2361}


def test_a_missing_metric_names_the_file(tmp_path):
    (tmp_path / "metrics.csv").write_text("mean_dice,0.9\n")
    with pytest.raises(ValueError, match=r"metrics.csv: no \['hd95', 'mean_iou'\]"):
        bundle_metrics.read_metrics(tmp_path)


def test_update_keeps_the_rest_of_the_metadata_and_its_format(tmp_path):
    meta = tmp_path / "metadata.json"
    shutil.copy(REPO / "bundle" / "configs" / "metadata.json", meta)
    before = json.loads(meta.read_text())
    bundle_metrics.update_metadata(meta, {"mean_dice": 0.5, "mean_iou": 0.4, "hd95_mm": 3.0})
    text = meta.read_text()
    after = json.loads(text)
    assert after["eval_metrics"] == {"mean_dice": 0.5, "mean_iou": 0.4, "hd95_mm": 3.0}
    assert {k: v for k, v in after.items() if k != "eval_metrics"} == {
        k: v for k, v in before.items() if k != "eval_metrics"}
    assert list(after) == list(before)  # key order kept
    assert text == json.dumps(after, indent=4) + "\n"  # the bundle's JSON format
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]
