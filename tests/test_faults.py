# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Faults at scale: damaged checkpoints (evaluation, inference, resume) and interrupted writes."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from monai.bundle import ConfigParser
from monai.handlers import CheckpointSaver
from medsegdiff_monai.__main__ import main
from medsegdiff_monai.handlers import AtomicCheckpointSaver, CheckedCheckpointLoader
from medsegdiff_monai.utils import CheckpointError, check_checkpoint, latest_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _saved_state_dict(path: Path, net: torch.nn.Module | None = None) -> Path:
    torch.save((net or torch.nn.Conv2d(8, 8, 3)).state_dict(), path)
    return path


def _idle_engine() -> Engine:
    return Engine(lambda engine, batch: None)


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_check_checkpoint_names_the_damaged_file(tmp_path, damage):
    path = _saved_state_dict(tmp_path / "model.pt")
    check_checkpoint(path)  # intact: no error
    if damage == "truncated":
        _truncate(path)
    elif damage == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\n")  # e.g. a Git LFS pointer
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        check_checkpoint(path)
    assert str(path) in str(err.value) and err.value.path == str(path)
    assert "weights_only=False" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the command line reports ValueErrors as one line


def test_check_checkpoint_missing_file_is_not_corruption(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        check_checkpoint(tmp_path / "model.pt")


def test_loader_handler_names_a_truncated_checkpoint(tmp_path):
    net = torch.nn.Conv2d(8, 8, 3)
    path = _saved_state_dict(tmp_path / "model.pt", net)
    engine = _idle_engine()
    CheckedCheckpointLoader(load_path=str(path), load_dict={"model": net}).attach(engine)
    engine.run([0])  # intact: loads
    _truncate(path)
    engine = _idle_engine()
    CheckedCheckpointLoader(load_path=str(path), load_dict={"model": net}).attach(engine)
    with pytest.raises(CheckpointError, match=f"{path}: checkpoint is truncated or corrupt"):
        engine.run([0])


@pytest.mark.parametrize("config,handlers", [
    (["train.json", "demo.json", "evaluate.json"], "validate#handlers"),
    (["inference.json", "demo.json"], "handlers"),
])
def test_bundle_evaluation_and_inference_name_a_truncated_model(tmp_path, config, handlers):
    """The checkpoint loader of evaluate.json and inference.json, as the bundle builds it."""
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    _truncate(_saved_state_dict(ckpt_dir / "model.pt"))
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in config])
    parser.update({"bundle_root": str(tmp_path), "ckpt_dir": str(ckpt_dir), "device": "$torch.device('cpu')"})
    loader = parser.get_parsed_content(f"{handlers}#0")
    assert isinstance(loader, CheckedCheckpointLoader)
    with pytest.raises(CheckpointError, match=f"{ckpt_dir / 'model.pt'}: checkpoint is truncated or corrupt"):
        loader(_idle_engine())


def test_cli_predict_names_a_truncated_model_before_any_work(tmp_path, capsys):
    from medsegdiff_monai.data import make_demo_data

    bundle = tmp_path / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    (bundle / "models").mkdir()
    model = bundle / "models" / "model.pt"
    _truncate(_saved_state_dict(model))
    cases, out = tmp_path / "cases", tmp_path / "out"
    make_demo_data(cases, num_cases=1, shape=(16, 16, 8))
    assert main(["predict", str(cases), str(out), "--bundle_dir", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medsegdiff-monai: error: {model}: checkpoint is truncated or corrupt")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def _checkpoints(folder: Path, epochs) -> list[Path]:
    paths = []
    for n in epochs:
        paths.append(folder / f"checkpoint_checkpoint_epoch={n}.pt")
        torch.save({"model": {"w": torch.full((4,), float(n))}}, paths[-1])
    return paths


def test_latest_checkpoint_skips_a_truncated_newest(tmp_path, caplog):
    older, newest = _checkpoints(tmp_path, (3, 4))
    assert latest_checkpoint(tmp_path) == str(newest)
    _truncate(newest)
    with caplog.at_level(logging.WARNING, logger="medsegdiff_monai.utils.checkpoint_lookup"):
        assert latest_checkpoint(tmp_path) == str(older)
    assert str(newest) in caplog.text and "truncated or corrupt" in caplog.text


def test_latest_checkpoint_never_silently_starts_from_scratch(tmp_path):
    paths = _checkpoints(tmp_path, (3, 4))
    for path in paths:
        _truncate(path)
    with pytest.raises(CheckpointError, match="--resume false") as err:
        latest_checkpoint(tmp_path)
    assert all(p.name in str(err.value) for p in paths)


def test_train_config_keeps_two_checkpoints_written_atomically():
    """With n_saved=1, ignite deletes the only checkpoint before writing the next: nothing to fall back on."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    saver = parser.get("train#checkpoint_saver")
    assert saver["_target_"] == "medsegdiff_monai.handlers.AtomicCheckpointSaver" and saver["n_saved"] >= 2
    assert parser.get("train#checkpoint_loader#_target_") == "medsegdiff_monai.handlers.CheckedCheckpointLoader"


def _fail_third_save(monkeypatch, engine):
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        fh = open(f, "r+b") if isinstance(f, (str, os.PathLike)) else f
        fh.seek(0)
        fh.truncate(fh.tell() + 100)  # a half-written file, as a full disk leaves it
        if fh is not f:
            fh.close()
        raise OSError(28, "No space left on device")

    engine.add_event_handler(Events.EPOCH_STARTED(once=3), lambda: monkeypatch.setattr(torch, "save",
                                                                                        save_half_then_fail))


@pytest.mark.parametrize("saver_cls,atomic", [(AtomicCheckpointSaver, True), (CheckpointSaver, False)])
def test_interrupted_checkpoint_save_leaves_no_partial_file(tmp_path, monkeypatch, saver_cls, atomic):
    net = torch.nn.Linear(4, 4)
    engine = _idle_engine()
    saver_cls(save_dir=str(tmp_path), save_dict={"model": net, "trainer": engine}, file_prefix="checkpoint",
              save_interval=1, n_saved=2).attach(engine)
    _fail_third_save(monkeypatch, engine)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    if atomic:
        assert names == ["checkpoint_checkpoint_epoch=2.pt"]  # no epoch 3, no temporary file left
        assert latest_checkpoint(tmp_path) == str(tmp_path / names[0])
    else:  # MONAI 1.6.1's CheckpointSaver: a half-written file under the final name (noticed if MONAI fixes it)
        assert "checkpoint_checkpoint_epoch=3.pt" in names
        with pytest.raises(CheckpointError):
            check_checkpoint(tmp_path / "checkpoint_checkpoint_epoch=3.pt")


def test_best_model_saver_writes_atomically(tmp_path):
    from medsegdiff_monai.handlers import ResumableCheckpointSaver

    saver = ResumableCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(2, 2)},
                                     save_key_metric=True, key_metric_filename="model.pt")
    assert saver._key_metric_checkpoint.save_handler._atomic


def _save_seg(folder: Path, writer, value: int):
    import numpy as np

    from monai.data import MetaTensor
    from monai.transforms import SaveImaged

    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    img = MetaTensor(torch.full((1, 6, 5, 4), value, dtype=torch.uint8), affine=affine,
                     meta={"filename_or_obj": str(folder / "BraTS2021_00000_t1.nii.gz")})
    from medsegdiff_monai.data import case_name_formatter

    save = SaveImaged(keys="pred", output_dir=str(folder), output_postfix="seg", output_dtype=np.uint8,
                      resample=False, separate_folder=False, writer=writer, output_name_formatter=case_name_formatter)
    save({"pred": img})
    return folder / "BraTS2021_00000_seg.nii.gz"


def test_atomic_nifti_writer_writes_a_loadable_file(tmp_path):
    import nibabel as nib

    path = _save_seg(tmp_path, "medsegdiff_monai.data.AtomicNibabelWriter", 1)
    img = nib.load(path)
    assert img.shape == (6, 5, 4) and img.get_fdata().min() == 1 and img.header.get_zooms() == (1.0, 1.0, 3.0)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # gzip-compressed, no temporary file left
    assert path.read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("writer,atomic", [("medsegdiff_monai.data.AtomicNibabelWriter", True),
                                           ("NibabelWriter", False)])
def test_interrupted_nifti_write_leaves_no_partial_file(tmp_path, monkeypatch, writer, atomic):
    import nibabel as nib
    import nibabel.filebasedimages

    path = _save_seg(tmp_path, writer, 1)
    previous = path.read_bytes()
    real_to_file_map = nibabel.filebasedimages.FileBasedImage.to_filename

    def write_half_then_fail(self, filename, **kwargs):
        real_to_file_map(self, filename, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nibabel.filebasedimages.FileBasedImage, "to_filename", write_half_then_fail)
    with pytest.raises(RuntimeError, match="No space left"):  # SaveImage wraps its writers' errors
        _save_seg(tmp_path, writer, 2)
    monkeypatch.undo()
    names = [p.name for p in tmp_path.iterdir()]
    if atomic:
        assert names == [path.name] and path.read_bytes() == previous  # the previous prediction, intact
        assert nib.load(path).get_fdata().max() == 1
    else:  # MONAI's NibabelWriter: a truncated file under the final name (noticed if MONAI fixes it)
        assert path.read_bytes() != previous
        with pytest.raises(Exception):
            nib.load(path).get_fdata()


def test_bundle_saves_predictions_atomically(tmp_path):
    """Every NIfTI saver the configs build (``SaveCased``, ``SaveSegmentationd``, any ``SaveImaged``) is atomic."""
    from monai.transforms import SaveImaged

    from medsegdiff_monai.data import AtomicNibabelWriter

    for files, key, expected in [(["train.json", "evaluate.json"], "validate#postprocessing", 2),
                                 (["inference.json"], "postprocessing", 1)]:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        parser["bundle_root"] = str(tmp_path)
        savers = [t for t in parser.get_parsed_content(key).transforms if isinstance(t, SaveImaged)]
        assert len(savers) == expected, files
        assert all(t.saver.writers == (AtomicNibabelWriter,) for t in savers), files


# --- evaluation at BraTS scale: HD95 in mm, per-region reports ---------------------------------------------------


def _point(shape, at, spacing, channels=1):
    """A channel-first MetaTensor with one foreground voxel per channel, on a grid of the given spacing (mm)."""
    import numpy as np

    from monai.data import MetaTensor

    x = torch.zeros((channels, *shape))
    for c in range(channels):
        x[(c, *at)] = 1
    return MetaTensor(x, affine=torch.as_tensor(np.diag([*spacing, 1.0])))


def _run_metric(handler, preds, labels):
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine, "hd95")
    engine.run([{"pred": preds, "label": labels}])
    return engine.state.metrics["hd95"], engine.state.metric_details["hd95"]


def _hd95(**kwargs):
    from monai.handlers import from_engine

    from medsegdiff_monai.handlers import PhysicalHausdorffDistance

    return PhysicalHausdorffDistance(include_background=True, percentile=95,
                                     output_transform=from_engine(["pred", "label"]), **kwargs)


def test_hd95_is_in_millimetres_for_anisotropic_voxels():
    """1 x 1 x 3 mm voxels: a 2-voxel shift is 6 mm along z and 2 mm in-plane, per case, in one evaluation."""
    from monai.handlers import HausdorffDistance, from_engine

    spacing = (1.0, 1.0, 3.0)
    label = _point((12, 12, 12), (5, 5, 5), spacing)
    shifted_z = _point((12, 12, 12), (5, 5, 7), spacing)
    shifted_x = _point((12, 12, 12), (7, 5, 5), spacing)
    mean, details = _run_metric(_hd95(), [shifted_z, shifted_x], [label, label])
    assert details.flatten().tolist() == pytest.approx([6.0, 2.0])
    assert mean == pytest.approx(4.0)
    # MONAI 1.6.1's handler ignores the spacing: 2 voxels for both (noticed if MONAI starts passing it)
    stock = HausdorffDistance(include_background=True, percentile=95, output_transform=from_engine(["pred", "label"]))
    assert _run_metric(stock, [shifted_z, shifted_x], [label, label])[1].flatten().tolist() == pytest.approx([2, 2])


def test_hd95_uses_each_cases_own_spacing_and_plain_tensors_stay_in_voxels():
    from monai.data import list_data_collate

    fine, coarse = (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)
    cases = [(_point((10, 10, 10), (3, 3, 5), sp), _point((10, 10, 10), (3, 3, 3), sp)) for sp in (fine, coarse)]
    _, details = _run_metric(_hd95(), [p for p, _ in cases], [lab for _, lab in cases])
    assert details.flatten().tolist() == pytest.approx([2.0, 4.0])
    batched = [list_data_collate([c[i] for c in cases]) for i in (0, 1)]  # batch-first, affine (2, 4, 4)
    assert batched[1].affine.shape == (2, 4, 4)
    assert _run_metric(_hd95(), *batched)[1].flatten().tolist() == pytest.approx([2.0, 4.0])
    plain = [p.as_tensor() for p, _ in cases], [lab.as_tensor() for _, lab in cases]
    assert _run_metric(_hd95(), *plain)[1].flatten().tolist() == pytest.approx([2.0, 2.0])


def test_evaluate_config_reports_hd95_in_mm_and_region_columns():
    import json

    config = json.loads((CONFIGS / "evaluate.json").read_text())
    assert config["validate#additional_metrics"]["hd95"]["_target_"] == (
        "medsegdiff_monai.handlers.PhysicalHausdorffDistance")
    saver = [h for h in config["validate#handlers"] if "MetricsSaver" in h["_target_"]]
    assert saver and saver[0]["_target_"] == "medsegdiff_monai.handlers.RegionMetricsSaver"


def test_per_region_metrics_are_written_as_named_columns(tmp_path):
    """--regions wt_tc_et: one column per region in <metric>_raw.csv and one row per region in the summary."""
    import csv

    from monai.handlers import MeanDice, from_engine

    from medsegdiff_monai.data import region_names
    from medsegdiff_monai.handlers import RegionMetricsSaver

    regions = [r.upper() for r in region_names("wt_tc_et")]
    spacing = (1.0, 1.0, 3.0)
    label = _point((12, 12, 12), (5, 5, 5), spacing, channels=3)
    pred = label.clone()
    pred[2] = 0
    pred[(2, 5, 5, 7)] = 1  # ET: 2 voxels off along z, 6 mm; WT, TC exact
    batch = [{"pred": [pred], "label": [label], "case_id": ["BraTS2021_00007"]}]
    engine = Engine(lambda e, b: b)
    MeanDice(include_background=True, output_transform=from_engine(["pred", "label"])).attach(engine, "mean_dice")
    _hd95().attach(engine, "hd95")
    RegionMetricsSaver(save_dir=str(tmp_path), metrics="*", metric_details="*", summary_ops=["mean"],
                       batch_transform=lambda b: [{"filename_or_obj": c} for c in b["case_id"]],
                       class_labels=regions).attach(engine)
    engine.run(batch)
    with open(tmp_path / "hd95_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "WT", "TC", "ET", "mean"] and rows[0]["filename"] == "BraTS2021_00007"
    assert [float(rows[0][r]) for r in ("WT", "TC", "ET")] == pytest.approx([0.0, 0.0, 6.0])
    with open(tmp_path / "mean_dice_raw.csv") as f:
        dice = next(csv.DictReader(f))
    assert [float(dice[r]) for r in ("WT", "TC", "ET")] == pytest.approx([1.0, 1.0, 0.0])
    summary = (tmp_path / "hd95_summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary] == ["class", "WT", "TC", "ET", "mean"]
    assert (tmp_path / "metrics.csv").read_text().startswith("mean_dice,")
