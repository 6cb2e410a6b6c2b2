# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""End-to-end: the image2d overlay trains, evaluates and infers on the synthetic 2D demo folder, as the README says,
on a copy of ``bundle/`` (tiny: 64x64 network input, 2 epochs, 2 ensemble members, 2 sampling steps)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_bundle_e2e import copy_bundle, run_bundle

pytestmark = pytest.mark.slow

TRAIN = "['configs/train.json','configs/demo.json','configs/image2d.json']"
EVAL = "['configs/train.json','configs/demo.json','configs/evaluate.json','configs/image2d.json']"
FAST = ("--num_ensemble", "2", "--num_inference_steps", "2", "--progress", "false")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def test_image2d_train_evaluate_predict(tmp_path):
    bundle = copy_bundle(tmp_path / "bundle")
    t0 = time.perf_counter()
    run_bundle(bundle, "run", "training", "--config_file", TRAIN, "--epochs", "2", "--val_interval", "2", *FAST)
    assert (bundle / "data" / "demo_image2d" / "images").is_dir()  # generated on first use, ISIC-like layout
    datalist = json.loads((bundle / "data" / "datalist_image2d.json").read_text())
    assert datalist["layout"] == "image2d" and datalist["numTraining"] == 6 and datalist["numValidation"] == 2
    assert (bundle / "models" / "model.pt").is_file()

    run_bundle(bundle, "run", "evaluating", "--config_file", EVAL, *FAST)
    eval_dir = bundle / "eval" / "validation"
    means = dict(line.split(",") for line in (eval_dir / "metrics.csv").read_text().splitlines() if line.strip())
    dice, iou = float(means["mean_dice"]), float(means["mean_iou"])
    assert 0.0 <= iou <= dice <= 1.0 and float(means["hd95"]) >= 0.0
    with open(eval_dir / "mean_dice_raw.csv") as f:
        rows = {r["filename"]: float(r["MASK"]) for r in csv.DictReader(f)}
    with open(eval_dir / "mean_iou_raw.csv") as f:
        assert sorted(r["filename"] for r in csv.DictReader(f)) == sorted(rows)
    assert sorted(rows) == sorted(c["case_id"] for c in datalist["validation"])
    for case in datalist["validation"]:
        gt = np.asarray(Image.open(bundle / "data" / case["label"])) > 0
        seg = np.asarray(Image.open(eval_dir / f"{case['case_id']}_seg.png"))
        assert seg.shape == gt.shape and set(np.unique(seg).tolist()) <= {0, 255}  # the image's original size
        # the per-image Dice in the CSV is the Dice of the written PNG against the original mask
        assert rows[case["case_id"]] == pytest.approx(_dice(seg > 0, gt), abs=1e-4)
        unc = np.asarray(Image.open(eval_dir / f"{case['case_id']}_uncertainty.tif"))
        assert unc.shape == gt.shape and 0.0 <= unc.min() and unc.max() <= 0.25
        png = eval_dir / "overlays" / f"{case['case_id']}_overlay.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # predict a folder of images only (RGB and greyscale, non-square) with the command line
    images = tmp_path / "new_images"
    images.mkdir()
    for case in datalist["test"] + datalist["validation"]:
        shutil.copy(bundle / "data" / case["image"], images)
    inputs = {p.stem: Image.open(p) for p in images.iterdir()}
    assert {im.mode for im in inputs.values()} >= {"RGB"} and any(im.width != im.height for im in inputs.values())
    out_dir = tmp_path / "predictions"
    cmd = [sys.executable, "-m", "medsegdiff_monai", "predict", str(images), str(out_dir), "--bundle_dir", str(bundle),
           "--configs", "['" + str(bundle / "configs" / "demo.json") + "','" + str(bundle / "configs" / "image2d.json")
           + "']", "--num_ensemble", "2", "--num_inference_steps", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{stem}_seg.png" for stem in inputs)
    for stem, im in inputs.items():
        seg = Image.open(out_dir / f"{stem}_seg.png")
        assert seg.size == im.size and seg.mode == "L"
        assert set(np.unique(np.asarray(seg)).tolist()) <= {0, 255}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 1 and "_seg.png" in again.stderr and "--overwrite" in again.stderr
    assert not any(p.name.startswith(".") for p in out_dir.iterdir())  # no temporary file left
    print(f"image2d train + evaluate + predict: {time.perf_counter() - t0:.0f} s")
