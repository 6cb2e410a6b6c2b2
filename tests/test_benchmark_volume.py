# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/volume.py --short: the volume benchmark runs the bundle's inference path and reports every phase."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "volume.py"


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_short_run_reports_every_phase(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--short", "--max-slices", "6", "--settings", "fp32-cl", "bf16-cl",
         "--threads", "1", "--repeats", "1", "--out-dir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "volume_speed_short.json").read_text())
    assert report["machine"]["cpu_model"] and report["machine"]["date"]
    assert report["config"]["shape"] == [48, 48, 20] and report["config"]["preset"] == "XS"
    assert report["slices_measured"] == 6 < report["brain_slices"] and report["extrapolated"]
    assert report["flops_per_row"] > 0 and report["flops_per_image"] > 0
    assert {c["precision"] for c in report["conv_limits"]} == {"float32", "bfloat16"}
    assert all(_positive(c["gflops"]) for c in report["conv_limits"])
    assert [s["precision"] for s in report["sharing"]] == ["float32", "bfloat16"]
    assert set(report["results"]) == {"fp32-cl", "bf16-cl"}
    for r in report["results"].values():
        phases = ["load_s", "network_s", "sampler_other_s", "postprocess_s", "write_s"]
        assert all(_positive(r[k]) for k in phases + ["total_s", "network_gflops"])
        assert sum(r[k] for k in phases) + r["other_s"] == pytest.approx(r["total_s"], rel=1e-6)
        assert r["per_case_s"] > r["total_s"]  # extrapolated from 6 slices to all brain slices
        # 6 slices x 2 members x 2 steps rows, ceil(6 / sw_batch_size) calls per step
        assert r["network_rows"] == 6 * 2 * 2 and r["network_calls"] == 2 * 2
        assert 0.9 <= r["dice_vs_fp32"] <= 1.0
    prof = report["op_profile"]  # one call by operator: shares of the profiled time, convolutions among them
    assert _positive(prof["seconds"]) and prof["rows"] == report["config"]["sw_batch_size"] * 2
    assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0, abs=1e-6)
    assert any("conv" in o["op"] for o in prof["ops"]) and prof["ops"][-1]["op"] == "other"
    md = (tmp_path / "volume_speed_short.md").read_text()
    assert "by operator" in md
    assert "Extrapolated" in md and "| fp32-cl |" in md and report["machine"]["cpu_model"] in md
