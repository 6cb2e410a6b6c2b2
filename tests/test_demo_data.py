from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized

from medsegdiff_monai.data import check_dataset, make_demo_case, make_demo_data

SHAPE = (32, 32, 16)
MODS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(root, num_cases=4, seed=0, shape=SHAPE)
    return root


def test_exact_brats2021_layout(demo):
    assert sorted(p.name for p in demo.iterdir()) == [f"BraTS2021_{i:05d}" for i in range(4)]
    for case in demo.iterdir():
        assert sorted(p.name for p in case.iterdir()) == sorted(
            f"{case.name}_{m}.nii.gz" for m in (*MODS, "seg")
        )


def test_dtypes_labels_affine(demo):
    case = demo / "BraTS2021_00001"
    seg = nib.load(case / "BraTS2021_00001_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8 and seg.shape == SHAPE
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) == {0, 1, 2, 4}
    aff = seg.affine
    assert np.allclose(np.abs(np.diag(aff)[:3]), 1.0) and np.allclose(np.diag(aff)[:3], [-1, -1, 1])
    assert seg.header.get_xyzt_units()[0] == "mm"
    for m in MODS:
        img = nib.load(case / f"BraTS2021_00001_{m}.nii.gz")
        assert img.get_data_dtype() == np.int16 and img.shape == SHAPE and np.allclose(img.affine, aff)
        data = np.asarray(img.dataobj)
        assert data.min() >= 0 and data[0, 0, 0] == 0 and (data > 0).mean() > 0.2  # brain on a zero background


def test_check_dataset_clean(demo):
    layout, report = check_dataset(demo)
    assert layout == "brats2021" and report and all(p == [] for p in report.values())


def test_deterministic_by_seed(tmp_path):
    a, seg_a = make_demo_case(SHAPE, np.random.SeedSequence(0).spawn(3)[2])
    b, seg_b = make_demo_case(SHAPE, np.random.SeedSequence(0).spawn(3)[2])
    c, seg_c = make_demo_case(SHAPE, np.random.SeedSequence(1).spawn(3)[2])
    assert all(np.array_equal(a[m], b[m]) for m in MODS) and np.array_equal(seg_a, seg_b)
    assert not np.array_equal(seg_a, seg_c)
    # case i does not depend on how many cases are written
    make_demo_data(tmp_path / "two", num_cases=2, seed=4, shape=SHAPE)
    make_demo_data(tmp_path / "three", num_cases=3, seed=4, shape=SHAPE)
    for m in (*MODS, "seg"):
        x = np.asarray(nib.load(tmp_path / "two" / "BraTS2021_00001" / f"BraTS2021_00001_{m}.nii.gz").dataobj)
        y = np.asarray(nib.load(tmp_path / "three" / "BraTS2021_00001" / f"BraTS2021_00001_{m}.nii.gz").dataobj)
        assert np.array_equal(x, y)


def test_cases_vary():
    segs = [make_demo_case(SHAPE, s)[1] for s in range(4)]
    centres = [np.argwhere(s > 0).mean(0) for s in segs]
    volumes = [int((s > 0).sum()) for s in segs]
    assert len({tuple(np.round(c)) for c in centres}) == 4 and len(set(volumes)) == 4


def _mean(img, mask):
    return float(img[mask].mean())


@parameterized.expand([(0,), (1,), (2,)])
def test_tumour_is_visible(seed):
    imgs, seg = make_demo_case((48, 48, 32), seed)
    brain = (imgs["t1"] > 0) & (seg == 0)
    edema, enh, nec = seg == 2, seg == 4, seg == 1
    assert _mean(imgs["flair"], edema) > 1.5 * _mean(imgs["flair"], brain)  # edema bright on flair
    assert _mean(imgs["t2"], edema) > 1.2 * _mean(imgs["t2"], brain)  # and on t2
    assert _mean(imgs["t1ce"], enh) > 1.5 * _mean(imgs["t1ce"], brain)  # enhancing rim bright on t1ce
    assert _mean(imgs["t1ce"], nec) < 0.7 * _mean(imgs["t1ce"], enh)  # necrotic core dark on t1ce


def test_learnable_by_a_linear_voxel_classifier():
    # a per-voxel least-squares classifier on the four normalised channels, fit on two cases, finds the whole
    # tumour of a third: the task is learnable from the images (a small network has far more capacity)
    def features(seed):
        imgs, seg = make_demo_case((48, 48, 32), seed)
        brain = imgs["t1"] > 0
        x = np.stack([(imgs[m][brain] - imgs[m][brain].mean()) / imgs[m][brain].std() for m in MODS], 1)
        x = np.concatenate([x, x**2, np.ones((len(x), 1))], 1)
        return x, (seg[brain] > 0).astype(np.float64)

    xs, ys = zip(*(features(s) for s in (10, 11)))
    w, *_ = np.linalg.lstsq(np.concatenate(xs), np.concatenate(ys), rcond=None)
    x, y = features(12)
    pred = x @ w > 0.5
    dice = 2 * (pred & (y > 0)).sum() / (pred.sum() + y.sum())
    assert dice > 0.8


def test_healthy_and_unlabeled_cases(tmp_path):
    make_demo_data(tmp_path, num_cases=3, shape=SHAPE, num_healthy=1, num_unlabeled=1)
    seg0 = np.asarray(nib.load(tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").dataobj)
    assert seg0.max() == 0
    assert not (tmp_path / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz").exists()


def test_refuses_to_overwrite(tmp_path):
    make_demo_data(tmp_path, num_cases=2, shape=SHAPE, seed=0)
    f = tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz"
    before = f.read_bytes()
    with pytest.raises(FileExistsError, match="BraTS2021_00000.*overwrite"):
        make_demo_data(tmp_path, num_cases=3, shape=SHAPE, seed=1)
    assert f.read_bytes() == before and not (tmp_path / "BraTS2021_00002").exists()  # nothing written
    make_demo_data(tmp_path, num_cases=2, shape=SHAPE, seed=1, overwrite=True)
    assert f.read_bytes() != before


def test_msd_layout(tmp_path):
    make_demo_data(tmp_path, num_cases=3, shape=SHAPE, layout="msd", num_unlabeled=1)
    ds = json.loads((tmp_path / "dataset.json").read_text())
    assert ds["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert [t["image"] for t in ds["training"]] == ["./imagesTr/BRATS_001.nii.gz", "./imagesTr/BRATS_002.nii.gz"]
    assert ds["test"] == ["./imagesTs/BRATS_003.nii.gz"]
    img = nib.load(tmp_path / "imagesTr" / "BRATS_001.nii.gz")
    assert img.shape == (*SHAPE, 4) and img.get_data_dtype() == np.float32
    lab = np.asarray(nib.load(tmp_path / "labelsTr" / "BRATS_001.nii.gz").dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 3}
    with pytest.raises(FileExistsError):
        make_demo_data(tmp_path, num_cases=3, shape=SHAPE, layout="msd")


def test_default_size_is_fast(tmp_path):
    start = time.perf_counter()
    make_demo_data(tmp_path, num_cases=4, seed=0)  # default shape 96 x 96 x 64
    assert time.perf_counter() - start < 20.0  # about 1 s on 2 cores; generous for loaded CI machines
    assert nib.load(tmp_path / "BraTS2021_00003" / "BraTS2021_00003_flair.nii.gz").shape == (96, 96, 64)


@parameterized.expand([(dict(num_cases=0),), (dict(layout="nii"),), (dict(shape=(4, 4, 4)),),
                       (dict(num_unlabeled=5),)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_demo_data(Path("/nonexistent/never/written"), **{"num_cases": 2, **kwargs})


def test_data_license_text():
    text = (Path(__file__).resolve().parents[1] / "bundle" / "docs" / "data_license.txt").read_text()
    assert "SYNTHETIC" in text and "BraTS 2021" in text and "Task01_BrainTumour" in text
    assert "CC BY-SA 4.0" in text and "make_demo_data" in text
