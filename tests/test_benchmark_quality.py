# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/quality.py: the block split of the real-MRI cases, the scoring, and the short (CI) run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    from quality import _seconds_per_epoch, merge_reports, run_bundle_recipe, score_volume
    from quality_data import split_blocks
finally:
    sys.path.remove(str(REPO / "benchmarks"))

PATTERN = ("training", "test", "training", "validation", "training", "test")


def _slices(blocks, split):
    return {z for b in blocks if b["split"] == split for z in range(b["z_start"], b["z_stop"])}


def _assert_held_out(blocks, gap):
    train = _slices(blocks, "training")
    for split in ("test", "validation"):
        held = _slices(blocks, split)
        assert held and not held & train
        # no held-out slice is within `gap` slices of a training slice
        assert all(abs(z - t) > gap for z in held for t in train)


def test_split_blocks():
    label = np.zeros((6, 5, 150), dtype=bool)
    label[..., 10:140] = True
    label[0, 0, 70] = False  # still >= 1 voxel: kept
    label[..., 95] = False  # one empty slice: its block is dropped
    blocks = split_blocks(label, block_size=8, gap=2, pattern=PATTERN, min_label_voxels=1)
    assert [b["z_start"] for b in blocks] == [10, 20, 30, 40, 50, 60, 70, 80, 100, 110, 120, 130]  # 90..97 dropped
    assert all(b["z_stop"] - b["z_start"] == 8 for b in blocks)
    assert [b["split"] for b in blocks] == [PATTERN[i % len(PATTERN)] for i in range(len(blocks))]
    assert [b["index"] for b in blocks] == list(range(len(blocks)))
    _assert_held_out(blocks, gap=2)
    covered = [z for b in blocks for z in range(b["z_start"], b["z_stop"])]
    assert len(covered) == len(set(covered)) and min(covered) >= 10 and max(covered) < 140
    with pytest.raises(ValueError, match="pattern"):
        split_blocks(label, pattern=("train",))


def test_score_volume():
    label = np.zeros((20, 20, 4), dtype=np.uint8)
    label[5:15, 5:15] = 2
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    assert score_volume(label, label, affine) == {"dice": 1.0, "hd95": 0.0}
    shifted = np.roll(label, 1, axis=0)  # one voxel along x = 2 mm
    s = score_volume(shifted, label, affine)
    assert s["dice"] == pytest.approx(0.9) and s["hd95"] == pytest.approx(2.0)
    empty = score_volume(np.zeros_like(label), label, affine)
    assert empty["dice"] == 0.0 and math.isnan(empty["hd95"])


def test_calibration_times_the_steady_epochs():
    """The planned epochs come from the steady epoch time; the slower first epochs are paid once, not per epoch
    (timing them in gave a 28% too long epoch and left 10% of a 900 s budget unused)."""
    steady, warmup = _seconds_per_epoch({"epoch_seconds": [4.0, 3.4, 3.1, 2.4, 2.3, 2.5], "train_seconds": 17.7})
    assert steady == pytest.approx(2.4) and warmup == pytest.approx(1.6 + 1.0 + 0.7)
    assert _seconds_per_epoch({"epoch_seconds": [], "train_seconds": 5.0}) == (5.0, 0.0)


def _report(command, rows, blocks=(1, 2)):
    return {"command": command, "date": command[-1], "data": {"blocks": list(blocks)}, "rows": rows}


def test_merge_reports_keeps_seeds_apart():
    """Runs of other seeds are merged as rows of their own (seed from the row or the report's command); a later
    report's row replaces an earlier one of the same method, label, budget and seed (an interrupted run's error)."""
    row = {"method": "basicunet", "label": "", "budget": 900.0}
    failed = {"method": "medsegdiff-full", "label": "x", "budget": 900.0, "error": "killed"}
    scored = {"method": "medsegdiff-full", "label": "x", "budget": 900.0, "dice": {"mean": 0.9}}
    main = _report("quality.py --seed 1 run1", [dict(row, dice={"mean": 0.8})])
    seed0 = _report("quality.py run0", [dict(row, dice={"mean": 0.7}), failed])
    rescored = _report("quality.py --reuse_runs run2", [scored])
    merged = merge_reports(main, [seed0, rescored])
    got = {(r["method"], r["seed"]): r for r in merged["rows"]}
    assert set(got) == {("basicunet", 0), ("basicunet", 1), ("medsegdiff-full", 0)}
    assert got[("basicunet", 1)]["dice"]["mean"] == 0.8 and got[("basicunet", 0)]["dice"]["mean"] == 0.7
    assert "error" not in got[("medsegdiff-full", 0)]
    with pytest.raises(SystemExit, match="another data split"):
        merge_reports(main, [_report("quality.py run3", [], blocks=(3,))])


def test_reuse_needs_a_finished_run(tmp_path):
    """``--reuse_runs`` scores only runs that were trained and evaluated; otherwise it names the folder."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_stats.json").write_text("{}")  # trained, but evaluation never finished
    with pytest.raises(FileNotFoundError, match="no finished run to reuse"):
        run_bundle_recipe("medsegdiff-full", tmp_path / "data", tmp_path, 64, 10.0, 1, 0, reuse=True)


@pytest.mark.slow
def test_quality_short(tmp_path):
    """The short mode: real data preparation, both baselines and the demo recipe, a few seconds each."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--short", "--out_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "quality.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["basicunet", "segresnet", "medsegdiff-demo"]
    n_test = report["data"]["num"]["test"]
    assert n_test >= 3
    for r in report["rows"] + report["references"]:
        assert len(r["cases"]) == n_test
        for c in r["cases"]:
            assert math.isfinite(c["dice"]) and 0.0 <= c["dice"] <= 1.0
    for r in report["rows"]:
        assert r["steps"] >= 1 and r["infer_seconds"]["n_finite"] >= 1
    demo = report["rows"][-1]
    assert demo["bundle_reported_mean_dice"] == pytest.approx(demo["dice"]["mean"], abs=1e-4)  # same masks, same Dice
    _assert_held_out(report["data"]["blocks"], gap=report["data"]["gap"])
    assert "| method | seed | budget s |" in (tmp_path / "quality.md").read_text()
    assert all(r["seed"] == 0 for r in report["rows"])
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"
