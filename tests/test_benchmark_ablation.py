# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""benchmarks/ablation.py (Table II): the per-variant summary over seeds and its table."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ablation = pytest.importorskip("ablation")


def _run(variant, seed, dice, hd95=5.0, steps=100):
    return {"variant": variant, "seed": seed, "dice": dice, "hd95": hd95, "steps": steps, "params": 10,
            "other_processes_cpu_share": 0.1}


def test_summary_is_mean_and_spread_over_seeds_in_table_order():
    full, vanilla = "+ dynamic conditioning + FF-Parser", "vanilla"
    runs = [_run(full, 1, 0.80), _run(vanilla, 0, 0.70), _run(full, 0, 0.90), _run(vanilla, 1, 0.60),
            {"variant": vanilla, "seed": 2, "error": "RuntimeError: boom"}]
    rows = ablation.summarize(runs)
    assert [r["variant"] for r in rows] == [vanilla, full]  # the order of VARIANTS, not of the runs
    assert rows[0]["dice"]["mean"] == pytest.approx(0.65) and rows[0]["failed"] == 1
    assert rows[0]["dice"]["sd"] == pytest.approx(statistics.stdev([0.7, 0.6]))
    assert rows[1]["seeds"] == [0, 1] and rows[1]["dice_per_seed"] == [0.90, 0.80]
    report = {"date": "d", "cpu": "cpu", "logical_cpus": 2, "torch_threads": 2, "command": "c",
              "versions": {"torch": "t", "monai": "m"}, "preset": "XS", "size": 64, "budget": 150.0,
              "seeds": [0, 1, 2], "data": {"num": {"training": 7, "test": 5}, "block_size": 8},
              "runs": runs, "summary": rows}
    text = ablation.to_markdown(report)
    assert "| vanilla | 0.6500 ± 0.0707 |" in text and "(1 failed)" in text
    assert "| + dynamic conditioning + FF-Parser | 0.8500 ± 0.0707 |" in text


def test_variants_switch_the_network_arguments():
    from medsegdiff_monai.networks.nets import MedSegDiffUNet

    for overrides in ablation.VARIANTS.values():
        kwargs = {k.split("#")[-1]: v for k, v in overrides.items()}
        net = MedSegDiffUNet.from_preset("XS", image_size=32, **kwargs)
        has_fusion = any(type(m).__name__ == "AttentiveFusion" for m in net.modules())
        has_parser = any(type(m).__name__ == "FFParser" for m in net.modules())
        assert has_fusion == kwargs.get("dynamic_conditioning", True)
        assert has_parser == (has_fusion and kwargs.get("ff_parser", True))


def test_a_kept_run_is_a_bundle_that_builds_the_variant_it_trained(tmp_path):
    from monai.bundle import ConfigParser

    from medsegdiff_monai.networks.blocks import FFParser

    run_dir = tmp_path / "03" / "run"
    ablation.keep_run(run_dir, tmp_path / "data", 64, ablation.VARIANTS["+ dynamic conditioning"], seed=2)
    parser = ConfigParser()
    parser.read_config([str(run_dir / "configs" / n) for n in ("train.json", "demo.json", "benchmark_overrides.json")])
    assert parser["seed"] == 2 and parser["spatial_size"] == [64, 64]
    assert parser["bundle_root"] == str(run_dir) and parser["ckpt_dir"] == str(run_dir / "models")
    assert parser["data_list_file_path"] == str(tmp_path / "data" / "datalist.json")
    network = parser.get_parsed_content("network")
    assert not any(isinstance(m, FFParser) for m in network.modules())  # the variant's switch, not the default
    parser["network_def"]["network"].pop("ff_parser")
    parser.parse()
    assert any(isinstance(m, FFParser) for m in parser.get_parsed_content("network").modules())
