# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""End-to-end runs of the bundle, as a user runs them, on a copy of ``bundle/`` (the repository is never written).

One demo training (``train.json`` + ``demo.json``, the README's quick start) is shared by the tests that need a
trained model: evaluation, inference through the command line, model-zoo download and load, TorchScript export.
Resuming after an interruption and ``torchrun`` on two CPU processes get their own short runs.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = "['configs/train.json','configs/demo.json']"
pytestmark = pytest.mark.slow


def run_bundle(bundle: Path, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` from inside the bundle copy (paths resolve from bundle_root)."""
    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=bundle, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if check:
        assert out.returncode == 0, f"monai.bundle {args[:2]} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


def copy_bundle(dst: Path) -> Path:
    shutil.copytree(REPO / "bundle", dst, ignore=shutil.ignore_patterns("data", "eval", "logs", "predictions", "*.pt"))
    return dst


def best_metric(log: str, name: str) -> float:
    found = re.findall(rf"Key metric: {name} best value: ([0-9.]+)", log)
    assert found, f"no {name} in the log"
    return float(found[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """The demo training of the README, run once: (bundle copy, its log)."""
    bundle = copy_bundle(tmp_path_factory.mktemp("demo") / "bundle")
    t0 = time.perf_counter()
    out = run_bundle(bundle, "run", "training", "--config_file", DEMO)
    print(f"demo training: {time.perf_counter() - t0:.0f} s")
    return bundle, out.stdout + out.stderr


def test_demo_training_learns_and_saves(trained):
    bundle, log = trained
    assert (bundle / "data" / "datalist.json").is_file()  # demo data generated on first use
    assert (bundle / "models" / "model.pt").is_file()
    assert list((bundle / "models").glob("checkpoint_checkpoint_epoch=100.pt"))
    assert list((bundle / "logs").glob("events.out.tfevents.*"))
    # whole-volume validation Dice on held-out synthetic cases; measured 0.93-0.94, chance level is far below
    assert best_metric(log, "val_mean_dice") > 0.8


def test_evaluate_writes_metrics_predictions_and_pictures(trained):
    bundle, _ = trained
    out = run_bundle(bundle, "run", "evaluating", "--config_file",
                     "['configs/train.json','configs/demo.json','configs/evaluate.json']")
    eval_dir = bundle / "eval" / "validation"
    import json

    datalist = json.loads((bundle / "data" / "datalist.json").read_text())
    cases = [c["case_id"] for c in datalist["validation"]]
    with open(eval_dir / "mean_dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["filename"] for r in rows) == sorted(cases)
    means = dict(line.strip().split(",") for line in open(eval_dir / "metrics.csv") if line.strip())
    assert float(means["mean_dice"]) > 0.8 and float(means["mean_iou"]) > 0.65
    assert 0.0 <= float(means["hd95"]) < 30.0
    assert best_metric(out.stdout + out.stderr, "mean_dice") == pytest.approx(float(means["mean_dice"]), abs=1e-4)
    for case in datalist["validation"]:
        src = nib.load(bundle / "data" / case["label"])
        seg = nib.load(eval_dir / f"{case['case_id']}_seg.nii.gz")
        unc = nib.load(eval_dir / f"{case['case_id']}_uncertainty.nii.gz")
        assert seg.shape == src.shape and unc.shape == src.shape  # the input's geometry
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)
        values = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert values <= {0, 1} and 1 in values
        u = np.asarray(unc.dataobj)
        assert 0.0 <= u.min() and u.max() <= 0.25  # ensemble variance of probabilities
        # the per-case Dice in the CSV is the Dice of the written file against the original label
        gt, pred = np.asarray(src.dataobj) > 0, np.asarray(seg.dataobj) > 0
        dice = 2 * (gt & pred).sum() / (gt.sum() + pred.sum())
        row = next(r for r in rows if r["filename"] == case["case_id"])
        assert float(row["WT"]) == pytest.approx(dice, abs=1e-4)
        png = eval_dir / "overlays" / f"{case['case_id']}_overlay.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_cli_predict_on_unlabeled_cases(trained, tmp_path):
    bundle, _ = trained
    cases = tmp_path / "cases"
    for case in ("BraTS2021_00000", "BraTS2021_00003"):
        shutil.copytree(bundle / "data" / "demo" / case, cases / case, ignore=shutil.ignore_patterns("*_seg.nii.gz"))
    before = _digest(cases)
    out_dir = tmp_path / "predictions"
    cmd = [sys.executable, "-m", "medsegdiff_monai", "predict", str(cases), str(out_dir), "--bundle_dir", str(bundle),
           "--configs", str(bundle / "configs" / "demo.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for case in ("BraTS2021_00000", "BraTS2021_00003"):
        img = nib.load(cases / case / f"{case}_flair.nii.gz")
        seg = nib.load(out_dir / f"{case}_seg.nii.gz")
        assert seg.shape == img.shape
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
        gt = np.asarray(nib.load(bundle / "data" / "demo" / case / f"{case}_seg.nii.gz").dataobj) > 0
        pred = np.asarray(seg.dataobj) > 0
        assert 2 * (gt & pred).sum() / (gt.sum() + pred.sum()) > 0.7  # these are training cases of the demo model
    assert _digest(cases) == before  # inputs untouched
    written = _digest(out_dir)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert _digest(out_dir) == written  # nothing written over


def test_inference_is_reproducible_per_case(trained, tmp_path):
    """With the bundle's seed, a case's prediction is the same alone, with other cases, and in any order.

    In float32: the default precision "auto" picks bfloat16 by a timing, so only float32 is bit-reproducible (README).
    """
    bundle, _ = trained
    cases = ["BraTS2021_00000", "BraTS2021_00003", "BraTS2021_00005"]
    runs = {"forward": cases, "reversed": cases[::-1], "alone": cases[1:2]}
    from medsegdiff_monai.data import find_cases

    found = {c["case_id"]: c for c in find_cases(bundle / "data" / "demo")}
    for name, order in runs.items():
        listing = tmp_path / f"{name}.json"
        items = [{k: v for k, v in found[c].items() if k != "label"} for c in order]  # unlabeled
        listing.write_text(json.dumps(items))
        run_bundle(bundle, "run", "--config_file", "['configs/inference.json','configs/demo.json']",
                   "--datalist", f"$__import__('json').load(open('{listing}'))",
                   "--output_dir", str(tmp_path / name), "--amp_dtype", "$None")

    def seg(name, case):
        return np.asarray(nib.load(tmp_path / name / f"{case}_seg.nii.gz").dataobj)

    for case in cases:
        np.testing.assert_array_equal(seg("forward", case), seg("reversed", case))
    np.testing.assert_array_equal(seg("forward", cases[1]), seg("alone", cases[1]))


def test_zoo_download_and_load(trained, tmp_path):
    """Zip the trained bundle, serve it on 127.0.0.1, fetch it with monai.bundle.download, build it with load."""
    from monai.bundle import download, load

    bundle, _ = trained
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "medsegdiff_brats.zip", "w") as zf:
        for path in bundle.rglob("*"):
            rel = path.relative_to(bundle)
            if rel.parts[0] in ("data", "eval", "logs") or path.name.startswith("checkpoint"):
                continue
            zf.write(path, Path("medsegdiff_brats") / rel)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/medsegdiff_brats.zip"
        download(name="medsegdiff_brats", url=url, bundle_dir=str(tmp_path / "zoo"), progress=False)
    finally:
        server.shutdown()
    fetched = tmp_path / "zoo" / "medsegdiff_brats"
    assert (fetched / "configs" / "inference.json").is_file() and (fetched / "models" / "model.pt").is_file()

    # the demo model is the "XS" preset at 64x64 without self-conditioning; inference.json's default is "B" at 256
    # with it: override the nested network
    net = load(name="medsegdiff_brats", bundle_dir=str(tmp_path / "zoo"), workflow_type="inference",
               net_override={"network#name": "XS", "network#image_size": [64, 64], "network#self_condition": False},
               progress=False)
    trained_state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    loaded = net.state_dict()
    assert loaded.keys() == trained_state.keys()
    for k, v in trained_state.items():
        assert torch.equal(loaded[k], v), k
    torch.manual_seed(0)
    prob = net.eval()(torch.randn(2, 4, 64, 64))
    assert prob.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("sampler", [None, "dpmpp_2m"])
def test_ckpt_export_torchscript_loads_and_matches(trained, tmp_path, sampler):
    """The exported TorchScript module samples by itself, with the bundle's default sampler or ``--sampler``."""
    bundle, _ = trained
    ts = tmp_path / "model.ts"
    extra = [] if sampler is None else ["--sampler", sampler]
    run_bundle(bundle, "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", "models/model.pt",
               "--meta_file", "configs/metadata.json", "--config_file", "['configs/inference.json','configs/demo.json']",
               *extra)
    from monai.data import load_net_with_metadata
    from monai.bundle import ConfigParser

    scripted, meta, _ = load_net_with_metadata(str(ts))
    assert meta["version"]
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "demo.json")])
    parser["bundle_root"] = str(bundle)
    if sampler is not None:
        parser["sampler"] = sampler
    parser["amp_dtype"] = None  # the scripted module runs in float32 ("auto" is eager-only): compare like with like
    eager = parser.get_parsed_content("network_def")
    assert eager.sampler == (sampler or parser["sampler"])
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    image = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    expected = eager.eval()(image)
    torch.manual_seed(0)
    got = scripted(image)
    assert got.shape == (1, 1, 64, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_training_resumes_after_interruption(tmp_path):
    """Kill the training after its first saved epoch; the same command continues from the latest checkpoint."""
    bundle = copy_bundle(tmp_path / "bundle")
    args = ["run", "training", "--config_file", DEMO, "--epochs", "3", "--val_interval", "100"]
    proc = subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=bundle, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not list((bundle / "models").glob("checkpoint_checkpoint_epoch=*.pt")) and time.time() < deadline:
            assert proc.poll() is None, "training ended before it saved a checkpoint"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = sorted((bundle / "models").glob("checkpoint_checkpoint_epoch=*.pt"))
    epoch = int(re.search(r"epoch=(\d+)", saved[-1].name).group(1))
    assert epoch < 3, "the run was not interrupted"
    out = run_bundle(bundle, *args)
    log = out.stdout + out.stderr
    assert f"Restored all variables from {saved[-1]}" in log
    # the epochs done before the interruption are not run again; the rest are
    for e in range(1, 4):
        assert (f"Epoch[{e}] Complete" in log) == (e > epoch), e
    assert (bundle / "models" / "checkpoint_checkpoint_epoch=3.pt").is_file()


def test_torchrun_two_cpu_processes(tmp_path):
    """multi_gpu_train.json with torchrun --nproc_per_node=2 on CPU (gloo): trains (with self-conditioning),
    validates, saves on rank 0."""
    bundle = copy_bundle(tmp_path / "bundle")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "training", "--config_file",
           "['configs/train.json','configs/demo.json','configs/multi_gpu_train.json']",
           "--epochs", "2", "--val_interval", "2",
           # the full recipe's self-conditioning inside DistributedDataParallel: a gradient-free call every step
           "--self_condition", "True", "--self_condition_prob", "1.0"]
    proc = subprocess.Popen(cmd, cwd=bundle, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers: no orphans holding the cores
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 600 s:\n{log[-6000:]}")
    assert proc.returncode == 0, log[-6000:]
    assert (bundle / "models" / "model.pt").is_file()
    assert (bundle / "models" / "checkpoint_checkpoint_epoch=2.pt").is_file()
    # 6 training volumes over 2 ranks x batch 2: 2 iterations per epoch on each rank
    assert "Epoch[2] Complete" in log
    assert best_metric(log, "val_mean_dice") >= 0.0


def test_mlflow_tracking(tmp_path):
    """``--tracking mlflow`` (MONAI's default MLflow settings) logs the loss, learning rate and validation Dice."""
    pytest.importorskip("mlflow")
    import sqlite3

    bundle = copy_bundle(tmp_path / "bundle")
    run_bundle(bundle, "run", "training", "--config_file", DEMO, "--epochs", "2", "--val_interval", "2",
               "--tracking", "mlflow")
    with sqlite3.connect(bundle / "eval" / "mlruns.db") as db:
        logged = dict(db.execute("select key, count(*) from metrics group by key").fetchall())
    assert logged.get("train_loss", 0) == 6 and logged.get("val_mean_dice", 0) == 1  # 3 iterations x 2 epochs
    assert "lr_group_0" in logged
