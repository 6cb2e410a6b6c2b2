# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/sampling_trajectory.py --quick keeps working (an untrained model: the numbers are meaningless)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sampling_trajectory_quick(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sampling_trajectory.py"), "--quick", "--bundle_dir", str(bundle),
         "--configs", str(bundle / "configs" / "demo.json"), "--out_dir", str(tmp_path / "docs")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "docs" / "sampling_trajectory.json").read_text())
    # one scored estimate per network call, at the sampler's timesteps, from t = T - 1 down
    for steps, rows in report["trajectories"].items():
        assert [r["step"] for r in rows] == list(range(int(steps)))
        ts = [r["t"] for r in rows]
        assert ts[0] == 999 and ts == sorted(ts, reverse=True) and ts[-1] == 0
        for r in rows:
            assert 0.0 <= r["ensemble_dice"] <= 1.0 and 0.0 <= r["member_dice"] <= 1.0 and 0.0 <= r["undecided"] <= 1
    assert [r["t"] for r in report["reading"]] == [999, 500, 5]
    assert (tmp_path / "docs" / "sampling_trajectory.png").read_bytes()[:4] == b"\x89PNG"
    assert "| t | from the true mask | from an empty mask |" in (tmp_path / "docs" / "sampling_trajectory.md").read_text()
