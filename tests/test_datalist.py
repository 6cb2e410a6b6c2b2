from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from parameterized import parameterized

from monai.data import load_decathlon_datalist
from medsegdiff_monai.data import (
    LAYOUT_REGISTRY,
    DataError,
    Layout,
    LayoutCases,
    available_layouts,
    brats_file_name,
    build_datalist,
    case_id_from_path,
    parse_brats_file_name,
    register_layout,
    strip_nifti_suffix,
    detect_layout,
    find_cases,
    load_datalist,
    make_demo_data,
    split_cases,
    write_datalist,
)

SHAPE = (24, 24, 12)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One folder per layout, written once for the module (tests copy a layout before changing it)."""
    root = tmp_path_factory.mktemp("datalist")
    make_demo_data(root / "brats2021", num_cases=6, shape=SHAPE, num_unlabeled=1)
    make_demo_data(root / "brats2020", num_cases=4, shape=SHAPE, layout="brats2020", num_unlabeled=1)
    make_demo_data(root / "msd", num_cases=5, shape=SHAPE, layout="msd", num_unlabeled=2)
    return root


@pytest.mark.parametrize("layout", ["brats2021", "brats2020", "msd"])
def test_detect_layout(data_root, layout):
    assert detect_layout(data_root / layout) == layout


def test_detect_generic_brats(data_root, tmp_path):
    # case folders named freely but files following <case>_<modality>.nii.gz -> generic "brats" layout
    dst = tmp_path / "mine"
    shutil.copytree(data_root / "brats2021" / "BraTS2021_00000", dst / "BraTS2021_00000")
    src = data_root / "brats2021" / "BraTS2021_00001"
    (dst / "patientA").mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / "patientA" / f.name.replace("BraTS2021_00001", "patientA"))
    assert detect_layout(dst) == "brats"
    assert [c["case_id"] for c in find_cases(dst)] == ["BraTS2021_00000", "patientA"]


def test_find_cases_brats2021(data_root):
    cases = find_cases(data_root / "brats2021")
    assert [c["case_id"] for c in cases] == [f"BraTS2021_{i:05d}" for i in range(6)]
    first = cases[0]
    assert [os.path.basename(p) for p in first["image"]] == [
        f"BraTS2021_00000_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")
    ]
    assert os.path.isabs(first["label"]) and first["label"].endswith("BraTS2021_00000_seg.nii.gz")
    assert first["label_convention"] == "brats" and first["modality_order"] == "t1,t1ce,t2,flair"
    assert "label" not in cases[-1]  # the unlabeled case


def test_find_cases_brats2020_validation(data_root):
    cases = find_cases(data_root / "brats2020")
    ids = [c["case_id"] for c in cases]
    assert ids == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003", "BraTS20_Validation_004"]
    assert "label" not in cases[-1] and all("label" in c for c in cases[:3])


def test_find_cases_msd(data_root):
    cases = find_cases(data_root / "msd")
    assert [c["case_id"] for c in cases] == [f"BRATS_{i:03d}" for i in range(1, 6)]
    assert all(c["modality_order"] == "flair,t1,t1ce,t2" and c["label_convention"] == "msd" for c in cases)
    assert isinstance(cases[0]["image"], str) and "imagesTr" in cases[0]["image"]
    assert [("label" in c) for c in cases] == [True, True, True, False, False]


def _add_macos_forks(root: Path) -> None:
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        for f in list((root / sub).glob("BRATS_*.nii.gz")):
            (root / sub / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07 mac resource fork")


@pytest.mark.parametrize("with_dataset_json", [True, False])
def test_msd_ignores_macos_files(data_root, tmp_path, with_dataset_json):
    root = tmp_path / "Task01_BrainTumour"
    shutil.copytree(data_root / "msd", root)
    _add_macos_forks(root)
    (root / ".DS_Store").write_bytes(b"junk")
    if not with_dataset_json:
        (root / "dataset.json").unlink()
    cases = find_cases(root)
    assert [c["case_id"] for c in cases] == [f"BRATS_{i:03d}" for i in range(1, 6)]
    assert not any("._" in json.dumps(c) for c in cases)


def test_msd_dataset_json_modality_order_is_used(data_root, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(data_root / "msd", root)
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "T1w", "1": "t1gd", "2": "T2w", "3": "FLAIR"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert find_cases(root)[0]["modality_order"] == "t1,t1ce,t2,flair"


def test_split_by_case_seeded():
    cases = [{"case_id": f"c{i:02d}", "image": "x", "label": "y"} for i in range(20)]
    cases += [{"case_id": f"u{i}", "image": "x"} for i in range(3)]
    a = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_cases(list(reversed(cases)), val_fraction=0.2, test_fraction=0.1, seed=3)
    c = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert a == b  # independent of the input order
    assert a != c  # but depends on the seed
    ids = {k: [x["case_id"] for x in v] for k, v in a.items()}
    assert len(ids["training"]) == 14 and len(ids["validation"]) == 4 and len(ids["test"]) == 5
    all_ids = ids["training"] + ids["validation"] + ids["test"]
    assert len(all_ids) == len(set(all_ids)) == 23  # every case exactly once, never split
    assert {"u0", "u1", "u2"} <= set(ids["test"])
    assert all("label" not in x for x in a["test"] if x["case_id"].startswith("u"))


def test_split_pinned():
    # the split of a seed never changes: datalists written by earlier versions stay reproducible
    cases = [{"case_id": f"c{i:02d}", "image": "x", "label": "y"} for i in range(10)]
    ids = {k: [x["case_id"] for x in v] for k, v in split_cases(cases, 0.2, 0.2, seed=0).items()}
    assert ids == {"training": ["c00", "c02", "c03", "c04", "c06", "c09"], "validation": ["c01", "c05"],
                   "test": ["c07", "c08"]}
    ids = {k: [x["case_id"] for x in v] for k, v in split_cases(cases, 0.3, 0.0, seed=7).items()}
    assert ids["validation"] == ["c01", "c03", "c08"] and ids["test"] == []


@parameterized.expand([(1, 0.2, 0.0, (1, 0, 0)), (2, 0.5, 0.0, (1, 1, 0)), (3, 0.4, 0.4, (1, 1, 1)),
                       (8, 0.2, 0.0, (6, 2, 0)), (10, 0.0, 0.0, (10, 0, 0))])
def test_split_counts(n, val, test, expected):
    cases = [{"case_id": str(i), "image": "x", "label": "y"} for i in range(n)]
    s = split_cases(cases, val, test, seed=0)
    assert (len(s["training"]), len(s["validation"]), len(s["test"])) == expected


@parameterized.expand([(-0.1, 0.0), (1.0, 0.0), (0.6, 0.5)])
def test_split_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        split_cases([{"case_id": "a", "image": "x", "label": "y"}], val, test)


def test_split_duplicate_ids():
    with pytest.raises(DataError, match="more than once"):
        split_cases([{"case_id": "a", "image": "x", "label": "y"}] * 2)


@pytest.mark.parametrize("layout", ["brats2021", "msd"])
def test_write_datalist_monai_reads_it(data_root, tmp_path, layout):
    out = tmp_path / "lists" / "datalist.json"
    dl = write_datalist(data_root / layout, out, val_fraction=0.25, seed=1)
    on_disk = json.loads(out.read_text())
    assert on_disk == dl
    assert on_disk["layout"] == layout
    assert on_disk["label_convention"] == ("msd" if layout == "msd" else "brats")
    assert on_disk["channels"] == "t1,t1ce,t2,flair"
    for key in ("training", "validation", "test"):
        for item in on_disk[key]:
            paths = item["image"] if isinstance(item["image"], list) else [item["image"]]
            assert all(not os.path.isabs(p) for p in paths)  # relative to the JSON's folder
    items = load_decathlon_datalist(out, data_list_key="training")
    assert items and all(os.path.isfile(p) for it in items for p in (it["image"] if isinstance(it["image"], list)
                                                                       else [it["image"]]) + [it["label"]])
    assert on_disk["numTraining"] == len(on_disk["training"])
    assert all("label" not in it for it in on_disk["test"])  # only unlabeled cases in test here
    assert out.read_text().startswith("{\n    \"")  # 4-space JSON


def test_write_datalist_absolute_and_overwrite(data_root, tmp_path):
    out = tmp_path / "dl.json"
    dl = write_datalist(data_root / "brats2021", out, absolute_paths=True)
    assert os.path.isabs(dl["training"][0]["label"])
    with pytest.raises(FileExistsError, match="already exists"):
        write_datalist(data_root / "brats2021", out)
    write_datalist(data_root / "brats2021", out, overwrite=True, seed=5)
    assert json.loads(out.read_text())["split"]["seed"] == 5


def test_write_datalist_never_over_input(data_root, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(data_root / "msd", root)
    before = (root / "dataset.json").read_bytes()
    with pytest.raises(DataError, match="dataset.json"):
        write_datalist(root, root / "dataset.json", overwrite=True)
    with pytest.raises(DataError, match="one of the data set's files"):
        write_datalist(root, root / "labelsTr" / "BRATS_001.nii.gz", overwrite=True)
    assert (root / "dataset.json").read_bytes() == before


def test_load_datalist_restores_case_id_and_empty_lists(data_root, tmp_path):
    # a datalist inside the data folder: MONAI joins "case_id" with base_dir because a folder of that name exists
    root = tmp_path / "brats"
    shutil.copytree(data_root / "brats2021", root)
    out = root / "datalist.json"
    write_datalist(root, out, val_fraction=0.0)
    raw = load_decathlon_datalist(out, data_list_key="training")
    assert os.path.isabs(raw[0]["case_id"])  # the MONAI behaviour this package works around
    items = load_datalist(out, "training")
    assert items[0]["case_id"] == "BraTS2021_00000"
    assert load_datalist(out, "validation") == []
    with pytest.raises(DataError, match="no 'nonsense' list"):
        load_datalist(out, "nonsense")


def test_build_datalist_skip_bad_cases(data_root, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(data_root / "brats2021", root)
    (root / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz").unlink()
    with pytest.raises(DataError, match="BraTS2021_00002.*missing modality t2"):
        build_datalist(root)
    with pytest.warns(UserWarning, match="skipping"):
        dl = build_datalist(root, on_error="skip", val_fraction=0.0)
    ids = [it["case_id"] for k in ("training", "validation", "test") for it in dl[k]]
    assert "BraTS2021_00002" not in ids and len(ids) == 5


def test_layout_argument_checks(data_root):
    with pytest.raises(ValueError, match="`layout` must be one of .*got .nifti."):
        find_cases(data_root / "brats2021", layout="nifti")
    with pytest.raises(DataError, match="not named like a brats2020 case"):
        find_cases(data_root / "brats2021", layout="brats2020")


@pytest.mark.parametrize("with_dataset_json", [True, False])
def test_msd_missing_label_is_named(data_root, tmp_path, with_dataset_json):
    root = tmp_path / "msd"
    shutil.copytree(data_root / "msd", root)
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    if not with_dataset_json:
        (root / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"case BRATS_002: label .*labelsTr/BRATS_002.nii.gz not found"):
        find_cases(root)


@parameterized.expand([
    ("/d/BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000"),
    (["/d/BraTS20_Training_001_t1.nii", "/d/BraTS20_Training_001_flair.nii"], "BraTS20_Training_001"),
    ("/d/imagesTr/BRATS_001.nii.gz", "BRATS_001"),
    ("BraTS-GLI-00000-000_t2f.NII.GZ", "BraTS-GLI-00000-000"),
    (Path("x/patient_7.nii"), "patient_7"),
])
def test_case_id_from_path(path, case_id):
    assert case_id_from_path(path) == case_id


def test_brats_file_names_round_trip():
    assert brats_file_name("BraTS2021_00000", "seg") == "BraTS2021_00000_seg.nii.gz"
    assert parse_brats_file_name("/a/BraTS2021_00000_T1CE.nii") == ("BraTS2021_00000", "t1ce")
    assert parse_brats_file_name("W39_1998.09.19_Segm.nii.gz") is None
    assert strip_nifti_suffix("a/b/x.NII.gz") == "x" and strip_nifti_suffix("notes.txt") == "notes.txt"


def test_register_layout(data_root, tmp_path):
    # a new layout: one flat folder of <case>.nii.gz images, detected before the built-in BraTS layouts
    root = tmp_path / "flat"
    root.mkdir()
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        shutil.copy(data_root / "brats2021" / case / f"{case}_flair.nii.gz", root / f"{case}.nii.gz")

    def discover(folder, label_convention):
        cases = [{"case_id": case_id_from_path(f), "image": str(f), "label_convention": label_convention or "brats",
                  "modality_order": "flair"} for f in sorted(folder.glob("*.nii.gz"))]
        return LayoutCases(cases, {}, label_convention or "brats", ("flair",))

    assert detect_layout(data_root / "brats2021") == "brats2021"
    with pytest.raises(DataError, match="no cases found"):
        detect_layout(root)
    register_layout(Layout("flat", lambda folder: any(folder.glob("*.nii.gz")), discover, priority=5))
    try:
        assert available_layouts()[:2] == ("auto", "flat")
        assert detect_layout(root) == "flat"
        assert [c["case_id"] for c in find_cases(root)] == ["BraTS2021_00000", "BraTS2021_00001"]
        assert detect_layout(data_root / "msd") == "msd"  # the others are still found
        with pytest.raises(ValueError, match="already registered"):
            register_layout(Layout("flat", bool, discover))
    finally:
        del LAYOUT_REGISTRY["flat"]
    assert "flat" not in available_layouts()
