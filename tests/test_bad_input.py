"""Bad input: every error names the file or case and says what is wrong; input files are never modified."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsegdiff_monai.__main__ import main
from medsegdiff_monai.data import DataError, check_dataset, find_cases, inspect_nifti, make_demo_data, write_datalist
from medsegdiff_monai.transforms import get_eval_transforms, get_train_transforms

SHAPE = (24, 24, 12)
CASE = "BraTS2021_00001"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template") / "data"
    make_demo_data(root, num_cases=3, shape=SHAPE, seed=2)
    return root


@pytest.fixture
def data(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    return root


def _file(root: Path, mod: str, case: str = CASE) -> Path:
    return root / case / f"{case}_{mod}.nii.gz"


def _item(root: Path) -> dict:
    return next(c for c in find_cases(root, on_error="skip") if c["case_id"] == CASE)


def _check_report(root: Path) -> list[str]:
    _, report = check_dataset(root)
    assert all(p == [] for c, p in report.items() if c != CASE)  # only the broken case is reported
    return report[CASE]


def _cli_check(root: Path, capsys) -> str:
    assert main(["check_data", str(root)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and CASE in err  # one line, no traceback
    return captured.out


def test_missing_modality(data, capsys):
    _file(data, "flair").unlink()
    with pytest.raises(DataError, match=rf"case {CASE}: missing modality flair: .*{CASE}_flair.nii.gz not found"):
        find_cases(data)
    assert any("missing modality flair" in p for p in _check_report(data))
    assert f"{CASE}: missing modality flair" in _cli_check(data, capsys)
    # the pipeline's own check, for a hand-written datalist item with three files
    item = {"case_id": CASE, "image": [str(_file(data, m)) for m in ("t1", "t1ce", "t2")],
            "label": str(_file(data, "seg")), "label_convention": "brats", "modality_order": "t1,t1ce,t2,flair"}
    with pytest.raises(RuntimeError) as err:
        get_eval_transforms((16, 16))(item)
    assert isinstance(err.value.__cause__, DataError)
    assert f"case {CASE}: image has 3 channel(s), expected 4" in str(err.value.__cause__)


def test_modalities_of_different_shapes(data, capsys):
    nib.save(nib.Nifti1Image(np.ones((24, 24, 10), np.int16), np.diag([-1.0, -1, 1, 1])), _file(data, "t2"))
    msg = (rf"modalities have different shapes: {CASE}_t1.nii.gz \(24, 24, 12\), {CASE}_t1ce.nii.gz \(24, 24, 12\), "
           rf"{CASE}_t2.nii.gz \(24, 24, 10\), {CASE}_flair.nii.gz \(24, 24, 12\)")
    with pytest.raises(RuntimeError) as err:
        get_train_transforms((16, 16))(_item(data))
    assert err.value.__cause__ is not None
    assert str(err.value.__cause__).startswith(f"case {CASE}: ")
    assert re.search(msg, str(err.value.__cause__))
    assert any("modalities have different shapes" in p for p in _check_report(data))
    assert "different shapes" in _cli_check(data, capsys)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an image\n" * 50)


def _gzipped_text(path: Path) -> None:
    path.write_bytes(gzip.compress(b"hello " * 1000))


@pytest.mark.parametrize("damage,message", [(_truncate, "truncated or corrupt"),
                                            (_garbage, "not a readable NIfTI file"),
                                            (_gzipped_text, "not a readable NIfTI file")])
def test_corrupt_or_non_nifti_file(data, damage, message):
    target = _file(data, "t1ce")
    damage(target)
    with pytest.raises(DataError, match=rf"{target}: {message}"):
        inspect_nifti(target)
    with pytest.raises(RuntimeError) as err:
        get_eval_transforms((16, 16))(_item(data))
    assert f"case {CASE}: {target}: {message}" in str(err.value.__cause__)
    assert any(message in p and str(target) in p for p in _check_report(data))


def test_non_nifti_file_name(data):
    item = _item(data)
    item["image"][2] = str(data / "notes.txt")
    (data / "notes.txt").write_text("hello")
    with pytest.raises(RuntimeError) as err:
        get_eval_transforms((16, 16))(item)
    assert f"{data / 'notes.txt'}: not a NIfTI file name (expected .nii or .nii.gz)" in str(err.value.__cause__)


@pytest.mark.parametrize("extra_value,convention,bad", [(3, "brats", "3"), (None, "msd", "4")])
def test_label_values_outside_convention(data, extra_value, convention, bad):
    seg_file = _file(data, "seg")
    if extra_value is not None:  # a stray value; else: BraTS labels (0, 1, 2, 4) declared as MSD (0-3)
        img = nib.load(seg_file)
        seg = np.asarray(img.dataobj).copy()
        seg[seg == 2] = extra_value
        nib.save(nib.Nifti1Image(seg, img.affine), seg_file)
    item = next(c for c in find_cases(data, label_convention=convention) if c["case_id"] == CASE)
    with pytest.raises(RuntimeError) as err:
        get_eval_transforms((16, 16))(item)
    assert f"case {CASE}: label values {bad} are not in the '{convention}' convention" in str(err.value.__cause__)
    _, report = check_dataset(data, label_convention=convention)
    assert any(f"{seg_file}: label values {bad} are not in the '{convention}'" in p for p in report[CASE])


@pytest.mark.parametrize("kind,message", [("missing", "data folder not found"), ("empty", "no cases found"),
                                          ("file", "is a file"), ("single_case", "single case folder"),
                                          ("wrapped", "Did you mean its subfolder"), ("text_only", "no cases found")])
def test_empty_or_wrong_folder(tmp_path, capsys, kind, message):
    target = tmp_path / "x"
    if kind in ("empty", "text_only"):
        target.mkdir()
        if kind == "text_only":
            (target / "case1").mkdir()
            (target / "case1" / "readme.txt").write_text("no images here")
    elif kind == "file":
        target.write_text("x")
    elif kind == "single_case":
        make_demo_data(tmp_path / "d", num_cases=1, shape=SHAPE)
        target = tmp_path / "d" / "BraTS2021_00000"
    elif kind == "wrapped":
        make_demo_data(target / "BraTS2021_Training_Data", num_cases=1, shape=SHAPE)
    with pytest.raises(DataError, match=f"{target}: .*{message}"):
        find_cases(target)
    with pytest.raises(DataError, match=message):
        write_datalist(target, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    assert main(["make_datalist", str(target), str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsegdiff-monai: error: ") and message in err and "\n" not in err
    assert main(["check_data", str(target)]) == 1


def test_case_folder_name_does_not_match_files(data, capsys):
    (data / CASE).rename(data / "BraTS2021_00009")
    with pytest.raises(DataError, match=r"case BraTS2021_00009: case folder name does not match its files: "
                                        rf"folder 'BraTS2021_00009' holds {CASE}_flair.nii.gz"):
        find_cases(data)
    _, report = check_dataset(data)
    assert any("does not match its files" in p for p in report["BraTS2021_00009"])


def test_misnamed_segmentation_file(data):
    # as in the published BraTS 2020 training case 355, whose segmentation has another name
    _file(data, "seg").rename(data / CASE / "W39_1998.09.19_Segm.nii.gz")
    with pytest.raises(DataError, match=rf"unexpected segmentation file .*W39_1998.09.19_Segm.nii.gz: rename it to "
                                        rf"{CASE}_seg.nii.gz"):
        find_cases(data)


@pytest.mark.parametrize("value,message", [(float("nan"), "1 NaN and 0 infinite"),
                                           (float("inf"), "0 NaN and 1 infinite"),
                                           (float("-inf"), "0 NaN and 1 infinite")])
def test_nan_or_infinite_intensities(data, value, message):
    f = _file(data, "flair")
    img = nib.load(f)
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[12, 12, 6] = value
    nib.save(nib.Nifti1Image(arr, img.affine), f)
    with pytest.raises(RuntimeError) as err:
        get_train_transforms((16, 16))(_item(data))
    assert f"case {CASE}: image has {message} value(s) in channel(s) 3 (flair)" in str(err.value.__cause__)
    assert any(f"{f}: image holds {message}" in p for p in _check_report(data))


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@pytest.mark.parametrize("layout", ["brats2021", "msd"])
def test_inputs_are_never_modified(tmp_path, capsys, layout):
    root = tmp_path / "data"
    make_demo_data(root, num_cases=3, shape=SHAPE, layout=layout, num_unlabeled=1)
    before = _snapshot(root)
    check_dataset(root)
    items = find_cases(root)
    for item in items:
        get_eval_transforms((16, 16), label_key="label" if "label" in item else None)(item)
        if "label" in item:
            get_train_transforms((16, 16), slices_per_volume=2)(item)
    write_datalist(root, tmp_path / "dl.json")
    assert main(["check_data", str(root)]) == 0
    assert main(["make_datalist", str(root), str(tmp_path / "dl2.json")]) == 0
    assert main(["make_demo_data", str(root), "--num_cases", "3", "--shape", "24,24,12",
                 "--layout", layout]) == 1  # refuses to write over the cases
    if layout == "msd":
        assert main(["make_datalist", str(root), str(root / "dataset.json"), "--overwrite"]) == 1
    capsys.readouterr()
    assert _snapshot(root) == before


def test_valid_multi_member_gzip_is_not_called_truncated(data, monkeypatch):
    # bgzip-style files end with the trailer of their last member only; they must still be accepted
    target = _file(data, "t1")
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert inspect_nifti(target).shape == SHAPE
    # a normal file is judged from its trailer alone, without decompressing it
    import medsegdiff_monai.data.nifti as nifti_module

    monkeypatch.setattr(nifti_module.gzip, "open", lambda *a, **k: pytest.fail("decompressed a valid file"))
    assert inspect_nifti(_file(data, "t2")).shape == SHAPE
