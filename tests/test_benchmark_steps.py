# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/steps_vs_accuracy.py --quick keeps working (an untrained model: the numbers are meaningless)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_steps_vs_accuracy_quick(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "steps_vs_accuracy.py"), "--quick", "--bundle_dir", str(bundle),
         "--configs", str(bundle / "configs" / "demo.json"), "--out_dir", str(tmp_path / "docs")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "docs" / "steps_vs_accuracy.json").read_text())
    samplers = ("ddpm", "ddim", "dpmpp_2m")
    assert {(r["sampler"], r["steps"]) for r in report["rows"]} == {(s, n) for s in samplers for n in (2, 1)}
    assert set(report["loss_at_most_steps"]) == set(samplers)
    for r in report["rows"]:
        assert 0.0 <= r["mean_dice"] <= 1.0 and r["seconds"] > 0
    rec = report["recommended"]
    assert (rec["reference_sampler"], rec["reference_steps"]) == ("ddpm", 2)  # no 100-step row in quick mode
    assert rec["mean_dice"] >= rec["reference_dice"] - report["tolerance"]
    assert (rec["sampler"], rec["steps"]) in {(r["sampler"], r["steps"]) for r in report["rows"]}
    assert (tmp_path / "docs" / "steps_vs_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| sampler | steps | Dice |" in (tmp_path / "docs" / "steps_vs_accuracy.md").read_text()


def test_recommendation_is_fastest_within_tolerance_of_100_steps():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from steps_vs_accuracy import recommend
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def row(sampler, steps, dice, seconds):
        return {"sampler": sampler, "steps": steps, "mean_dice": dice, "seconds": seconds}

    rows = [row("ddpm", 1000, 0.95, 100.0), row("ddpm", 100, 0.90, 10.0), row("ddpm", 10, 0.895, 1.0),
            row("ddpm", 5, 0.85, 0.5), row("ddim", 100, 0.92, 10.0), row("ddim", 10, 0.915, 0.9),
            row("ddim", 5, 0.90, 0.45)]
    # the reference is the paper's setting, DDPM at 100 steps (Dice 0.90)
    rec = recommend(rows, 0.01)
    assert (rec["sampler"], rec["steps"], rec["reference_sampler"], rec["reference_steps"]) == ("ddim", 5, "ddpm", 100)
    assert (recommend(rows, 0.06)["sampler"], recommend(rows, 0.06)["steps"]) == ("ddim", 5)
    rows[-1]["mean_dice"] = 0.5  # DDIM at 5 steps fails: DDPM at 5 steps is not within 0.01 either
    assert (recommend(rows, 0.01)["sampler"], recommend(rows, 0.01)["steps"]) == ("ddim", 10)
