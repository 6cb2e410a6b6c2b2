# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/speed.py --quick: every code path runs and the JSON report holds every measurement."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
MODELS = ("MONAI", "XS")  # --quick: the tiny baseline and preset XS
LABELS = ("fp32", "bf16-cl")  # --quick settings: float32 channels-first, bfloat16 autocast channels-last
TASKS = ("train", "sample")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out_dir = tmp_path_factory.mktemp("speed")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--profile", "always", "--out-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out_dir / "benchmark.json") as f:
        return json.load(f), out_dir


def test_header(report):
    data, _ = report
    meta = data["meta"]
    for key in ("date", "torch", "monai", "cpu_model", "threads", "load_average_before", "load_average_after"):
        assert key in meta, key
    assert meta["threads"] >= 1 and len(meta["load_average_before"]) == 3
    assert data["settings"]["quick"] is True
    assert data["command"].startswith("python benchmarks/speed.py --quick")


def test_models(report):
    data, _ = report
    assert set(data["models"]) == set(MODELS)
    for info in data["models"].values():
        assert _positive(info["params"])
        assert all(_positive(v) for v in info["forward_gflops"].values()) and info["forward_gflops"]
    assert data["models"]["MONAI"]["mode"] == "concat" and data["models"]["XS"]["mode"] == "crossattn"


def test_every_measurement(report):
    data, _ = report
    results = data["results"]
    assert len(results) == len(MODELS) * len(LABELS) * len(TASKS)
    for model in MODELS:
        for label in LABELS:
            for task in TASKS:
                hits = [r for r in results if (r["model"], r["label"], r["task"]) == (model, label, task)]
                assert len(hits) == 1, (model, label, task)
                r = hits[0]
                assert "error" not in r, r.get("error")
                assert _positive(r["median_s"]) and r["runs_s"] and all(_positive(t) for t in r["runs_s"])
                assert _positive(r["peak_rss_mib"]) and _positive(r["peak_rss_growth_mib"])
                assert r["peak_rss_growth_mib"] < r["peak_rss_mib"]
                if task == "sample":
                    assert r["steps"] == 5 and r["sampler"] == "ddpm" and r["ensemble"] == 5
                    assert r["per_step_s"] == pytest.approx(r["median_s"] / r["steps"], rel=1e-2, abs=1e-4)
                else:
                    assert r["batch"] == 2


def test_ratios_and_targets(report):
    data, _ = report
    ratios = {(r["model"], r["label"], r["task"]): r for r in data["ratios"]}
    assert set(ratios) == {("XS", label, task) for label in LABELS for task in TASKS}
    assert all(_positive(r["time_ratio"]) for r in ratios.values())
    targets = {t["task"]: t for t in data["targets"]}
    assert set(targets) == set(TASKS)
    for t in targets.values():
        assert t["stand_in"] is True and t["best_label"] in LABELS
        assert _positive(t["best_s"]) and isinstance(t["met"], bool)


def test_profiles_and_markdown(report):
    data, out_dir = report
    profiles = {p["task"]: p for p in data["profiles"]}
    assert set(profiles) == set(TASKS)
    for p in profiles.values():
        assert "error" not in p, p.get("error")
        assert p["top"] and all(_positive(op["self_cpu_s"]) or op["self_cpu_s"] == 0 for op in p["top"])
        assert _positive(p["total_self_cpu_s"])
        assert "Self CPU" in p["table"]
    markdown = (out_dir / "benchmark.md").read_text()
    for heading in ("## Targets", "## Training step", "## Sampling one slice", "## Peak memory", "## Models"):
        assert heading in markdown, heading
    assert "failed" not in markdown
