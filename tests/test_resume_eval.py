# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Evaluation at scale: progress with an estimate of the time left, and resuming without recomputing cases."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from medsegdiff_monai.data import make_demo_data, write_datalist
from medsegdiff_monai.engines import ResumableEvaluator
from medsegdiff_monai.handlers import ProgressLogger
from medsegdiff_monai.networks.nets import MedSegDiffUNet

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
METRIC_FILES = ("mean_dice_raw.csv", "mean_iou_raw.csv", "hd95_raw.csv", "metrics.csv")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle root with 3 tiny synthetic validation cases and an untrained XS model (non-zero output layer)."""
    root = tmp_path_factory.mktemp("bundle")
    make_demo_data(root / "data" / "demo", num_cases=4, shape=(24, 24, 8), seed=3)
    write_datalist(root / "data" / "demo", root / "data" / "datalist.json", val_fraction=0.75)
    torch.manual_seed(0)
    net = MedSegDiffUNet.from_preset("XS", in_channels=4, out_channels=1, image_size=[32, 32])
    torch.nn.init.normal_(net.out[-1].conv.weight, std=0.05)
    torch.nn.init.constant_(net.out[-1].conv.bias, -0.2)
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _evaluator(root: Path, resume: bool) -> ResumableEvaluator:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in ("train.json", "demo.json", "evaluate.json")])
    parser.update({
        "bundle_root": str(root), "device": "$torch.device('cpu')", "spatial_size": [32, 32], "resume": resume,
        "num_inference_steps": 1, "num_ensemble": 2, "num_overlay_slices": 1, "progress": False,
    })
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert isinstance(evaluator, ResumableEvaluator)
    return evaluator


def _calls(evaluator) -> list[int]:
    calls: list[int] = []
    evaluator.network.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def _metrics(eval_dir: Path) -> dict[str, str]:
    return {name: (eval_dir / name).read_text() for name in METRIC_FILES}


def test_resumed_evaluation_recomputes_nothing_and_gives_the_same_metrics(bundle, caplog):
    eval_dir = bundle / "eval" / "validation"
    first = _evaluator(bundle, resume=False)
    calls = _calls(first)
    with caplog.at_level(logging.INFO, logger="ProgressLogger"):
        first.run()
    assert len(calls) == 3  # 3 cases x 1 step (each volume's slices in one call)
    lines = [r.getMessage() for r in caplog.records if r.name == "ProgressLogger"]
    assert lines[0].startswith("case 1/3 BraTS2021_") and "| elapsed 0:00:" in lines[0] and "| ETA 0:00:" in lines[0]
    assert lines[2].startswith("case 3/3 ") and lines[2].endswith("ETA 0:00:00")
    assert lines[3].endswith("3 computed, 0 resumed from written predictions")
    reference = _metrics(eval_dir)
    dice = float(reference["metrics.csv"].split("mean_dice,")[1].split()[0])
    assert 0.0 < dice < 1.0  # a non-trivial prediction, so equal metrics below mean something
    written = {p.name: p.stat().st_mtime_ns for p in eval_dir.glob("*.nii.gz")}
    assert len(written) == 6  # seg + uncertainty per case
    for name in METRIC_FILES:
        (eval_dir / name).unlink()

    resumed = _evaluator(bundle, resume=True)
    calls = _calls(resumed)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ProgressLogger"):
        resumed.run()
    assert calls == [] and resumed.num_resumed == 3
    assert _metrics(eval_dir) == reference  # per-case and summary metrics recomputed from the written files
    assert {p.name: p.stat().st_mtime_ns for p in eval_dir.glob("*.nii.gz")} == written  # nothing rewritten
    lines = [r.getMessage() for r in caplog.records if r.name == "ProgressLogger"]
    assert "(resumed)" in lines[0] and lines[0].endswith("ETA ?")  # no computed case yet: no estimate
    assert lines[3].endswith("0 computed, 3 resumed from written predictions")

    # a damaged prediction is computed again (and only that case)
    victim = sorted(eval_dir.glob("*_seg.nii.gz"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    again = _evaluator(bundle, resume=True)
    calls = _calls(again)
    again.run()
    assert len(calls) == 1 and again.num_resumed == 2
    assert _metrics(eval_dir) == reference


def test_resume_needs_the_output_dir():
    with pytest.raises(ValueError, match="needs `output_dir`"):
        ResumableEvaluator(device="cpu", val_data_loader=[{}], network=torch.nn.Identity(), resume=True)


def test_progress_logger_estimate(caplog, monkeypatch):
    """ETA = mean time of the computed cases x cases left; resumed cases are not counted in the mean."""
    clock = iter([0.0, 10.0, 10.5, 30.0, 30.0])  # epoch start, then the end of each of 4 iterations
    monkeypatch.setattr("medsegdiff_monai.handlers.progress.time.perf_counter", lambda: next(clock))
    resumed = [False, True, False, False]
    engine = Engine(lambda e, b: None)
    engine.last_resumed = False

    @engine.on(Events.ITERATION_STARTED)
    def _flag(e):
        e.last_resumed = resumed[e.state.iteration - 1]

    ProgressLogger(batch_transform=lambda b: [f"case{b}"], epoch_level=False).attach(engine)
    with caplog.at_level(logging.INFO, logger="ProgressLogger"):
        engine.run([0, 1, 2, 3], max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "ProgressLogger"]
    assert lines[0] == "case 1/4 case0: 10.0 s | elapsed 0:00:10 | ETA 0:00:30"
    assert lines[1] == "case 2/4 case1: 0.5 s (resumed) | elapsed 0:00:10 | ETA 0:00:20"
    assert lines[2] == "case 3/4 case2: 19.5 s | elapsed 0:00:30 | ETA 0:00:15"
    assert lines[3] == "case 4/4 case3: 0.0 s | elapsed 0:00:30 | ETA 0:00:00"
