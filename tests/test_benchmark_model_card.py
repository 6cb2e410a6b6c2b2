# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/model_card.py --quick: the card lists the presets and the official-width variant, and says what is
the paper's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_card.py"


def test_quick_card_has_the_official_width_variant(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--presets", "B", "B-w128", "--threads", "1", "--out-dir",
         str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "model_card.json").read_text())
    b, wide = card["presets"]["B"], card["presets"]["B-w128"]
    assert wide["channels"] == [128, 128, 256, 256, 512, 512] and wide["variant_of"] == "B"
    assert wide["downsamplings"] == b["downsamplings"] == 5 and b["variant_of"] is None
    # 2-8x the widths (8x at full resolution, where a convolution costs the most): 5x the parameters, and FLOPs
    # by more than an order of magnitude
    assert wide["params"] > 5 * b["params"] and wide["forward_gflops"] > 10 * b["forward_gflops"]
    md = (tmp_path / "model_card.md").read_text()
    assert "| B-w128 | 5 | 128, 128, 256, 256, 512, 512 |" in md
    assert "ResNet34" in md and "not the paper's MedSegDiff-B network" in md
