from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from monai.data import load_decathlon_datalist
from medsegdiff_monai.__main__ import main

COMMANDS = ("make_demo_data", "make_datalist", "check_data", "predict")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAGER": "cat"}
    return subprocess.run([sys.executable, "-m", "medsegdiff_monai", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_module_help_lists_commands():
    res = _run("--help")
    assert res.returncode == 0, res.stderr
    for cmd in COMMANDS:
        assert cmd in res.stdout
    assert "Write a synthetic BraTS-like demo data set" in res.stdout
    assert "Validate a BraTS or MSD data folder" in res.stdout


@pytest.mark.parametrize("command,words", [
    ("make_demo_data", ["OUTPUT_DIR", "--num_cases", "--seed", "--overwrite"]),
    ("make_datalist", ["DATA_DIR", "OUTPUT_JSON", "--val_fraction", "--test_fraction", "--seed", "--layout"]),
    ("check_data", ["DATA_DIR", "--quick"]),
    ("predict", ["INPUT_DIR", "OUTPUT_DIR", "--bundle_dir", "--ckpt_path", "--configs", "--overwrite"]),
])
def test_command_help(capsys, command, words):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for w in words:
        assert w in out
    assert "Args" not in out  # fire turned the docstring into per-flag help


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "medsegdiff-monai"]
    assert eps and eps[0].value == "medsegdiff_monai.__main__:main"
    exe = shutil.which("medsegdiff-monai", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if exe:  # installed (pip install -e .): it runs and fails cleanly
        res = subprocess.run([exe, "check_data", "/nonexistent/folder"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1
        assert res.stderr.strip() == "medsegdiff-monai: error: /nonexistent/folder: data folder not found."


def test_demo_datalist_check_round_trip(tmp_path, capsys):
    data, out = tmp_path / "demo", tmp_path / "lists" / "datalist.json"
    assert main(["make_demo_data", str(data), "--num_cases", "5", "--seed", "3", "--shape", "24,24,12"]) == 0
    assert sorted(p.name for p in data.iterdir()) == [f"BraTS2021_{i:05d}" for i in range(5)]
    assert main(["make_datalist", str(data), str(out), "--val_fraction", "0.2", "--test_fraction", "0.2",
                 "--seed", "1", "--layout", "auto"]) == 0
    dl = json.loads(out.read_text())
    assert (dl["numTraining"], dl["numValidation"], dl["numTest"]) == (3, 1, 1) and dl["split"]["seed"] == 1
    assert len(load_decathlon_datalist(out, data_list_key="validation")) == 1
    assert main(["check_data", str(data)]) == 0
    outtext = capsys.readouterr().out
    assert "BraTS2021_00004: ok" in outtext and "5 case(s) checked (brats2021 layout), 0 with problems" in outtext
    assert main(["check_data", str(data), "--quick"]) == 0


def test_user_errors_are_one_line(tmp_path):
    code, out, err = _run_in_process(["make_datalist", str(tmp_path / "nothing"), str(tmp_path / "x.json")])
    assert code == 1 and out == ""
    assert err == f"medsegdiff-monai: error: {tmp_path / 'nothing'}: data folder not found.\n"
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv,message", [
    (["make_datalist", "{d}", "{d}/dl.json", "--val_fraction", "1.5"], "val_fraction must be in [0, 1)"),
    (["make_datalist", "{d}", "{d}/dl.json", "--layout", "weird"], "`layout` must be one of ('auto', 'msd', 'brats2021', 'brats2020', 'image2d', 'brats'), got 'weird'"),
    (["make_demo_data", "{d}/new", "--shape", "32,32"], "--shape must be three integers"),
    (["make_demo_data", "{d}/new", "--num_cases", "0"], "num_cases must be at least 1"),
])
def test_bad_arguments_exit_1(tmp_path, argv, message):
    code, _, err = _run_in_process([a.format(d=tmp_path) for a in argv])
    assert code == 1 and message in err and err.count("\n") == 1
    assert not (tmp_path / "dl.json").exists() and not (tmp_path / "new").exists()


def _run_in_process(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_check_data_reports_each_case_and_fails(tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["make_demo_data", str(data), "--num_cases", "3", "--shape", "24,24,12"]) == 0
    (data / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz").unlink()
    capsys.readouterr()
    assert main(["check_data", str(data)]) == 1
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert "BraTS2021_00000: ok" in lines and "BraTS2021_00002: ok" in lines
    assert any(line.startswith("BraTS2021_00001: missing modality t1ce") for line in lines)
    assert cap.err.strip() == f"medsegdiff-monai: error: 1 of 3 case(s) in {data} have problems: BraTS2021_00001"


def test_unknown_command_is_a_usage_error():
    assert _run_in_process(["frobnicate"])[0] == 2


def test_refuses_to_overwrite_demo_data(tmp_path):
    assert main(["make_demo_data", str(tmp_path), "--num_cases", "1", "--shape", "16,16,8"]) == 0
    code, _, err = _run_in_process(["make_demo_data", str(tmp_path), "--num_cases", "1", "--shape", "16,16,8"])
    assert code == 1 and "already exists" in err
    assert main(["make_demo_data", str(tmp_path), "--num_cases", "1", "--shape", "16,16,8", "--overwrite"]) == 0


def _bundle_without_weights(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "..", "bundle", "configs"), bundle / "configs")
    (bundle / "models").mkdir()
    return bundle


def test_predict_refuses_bad_input_before_any_work(tmp_path, capsys):
    from medsegdiff_monai.data import make_demo_data

    bundle = _bundle_without_weights(tmp_path)
    cases, out = tmp_path / "cases", tmp_path / "out"
    make_demo_data(cases, num_cases=1, shape=(32, 32, 16))
    # no weights yet
    assert main(["predict", str(cases), str(out), "--bundle_dir", str(bundle)]) == 1
    assert "no model weights" in capsys.readouterr().err
    # not a bundle
    assert main(["predict", str(cases), str(out), "--bundle_dir", str(tmp_path)]) == 1
    assert "configs/inference.json is missing" in capsys.readouterr().err
    # weights present, but the input folder holds no case
    (bundle / "models" / "model.pt").write_bytes(b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), str(out), "--bundle_dir", str(bundle)]) == 1
    assert str(empty) in capsys.readouterr().err
    # an existing prediction is never written over
    out.mkdir()
    (out / "BraTS2021_00000_seg.nii.gz").write_bytes(b"keep")
    assert main(["predict", str(cases), str(out), "--bundle_dir", str(bundle)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "BraTS2021_00000_seg.nii.gz").read_bytes() == b"keep"
    assert not os.path.exists(out / "BraTS2021_00001_seg.nii.gz")
