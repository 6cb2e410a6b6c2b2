from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from parameterized import parameterized

from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, Invertd
from monai.utils import set_determinism
from medsegdiff_monai.data import DataError, find_cases, make_demo_data
from medsegdiff_monai.transforms import (
    CheckFinited,
    LabelToRegions,
    LabelToRegionsd,
    RegionsToLabel,
    RegionsToLabelD,
    RegionsToLabelDict,
    RegionsToLabeld,
    ReorderModalities,
    ReorderModalitiesd,
    SliceFgBgToIndicesd,
    get_eval_transforms,
    get_inference_transforms,
    get_train_transforms,
)

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("transforms")
    make_demo_data(root / "brats", num_cases=3, shape=SHAPE, seed=7)
    make_demo_data(root / "msd", num_cases=3, shape=SHAPE, seed=7, layout="msd")
    return {"brats": find_cases(root / "brats"), "msd": find_cases(root / "msd")}


# --- LabelToRegions -------------------------------------------------------------------------------------------------
_LAB_BRATS = [0, 1, 2, 4]  # background, necrotic core, edema, enhancing
_LAB_MSD = [0, 2, 1, 3]  # the same tissue in MSD values (1 edema, 2 non-enhancing, 3 enhancing)
_WT, _TC, _ET = [0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]


@parameterized.expand(
    [
        ("brats", _LAB_BRATS, "wt", [_WT]),
        ("brats", _LAB_BRATS, "wt_tc_et", [_WT, _TC, _ET]),
        ("msd", _LAB_MSD, "wt", [_WT]),
        ("msd", _LAB_MSD, "wt_tc_et", [_WT, _TC, _ET]),
        ("brats2023", [0, 1, 2, 3], "wt_tc_et", [_WT, _TC, _ET]),
        ("brats", _LAB_BRATS, ["et", "wt"], [_ET, _WT]),
    ]
)
def test_label_to_regions(convention, values, regions, expected):
    lab = torch.tensor(values, dtype=torch.float32).reshape(1, 4, 1, 1)
    out = LabelToRegions(regions, convention)(lab)
    assert out.shape == (len(expected), 4, 1, 1) and out.dtype == torch.float32
    assert out[..., 0, 0].tolist() == [[float(v) for v in e] for e in expected]
    # numpy in, numpy out
    out_np = LabelToRegions(regions, convention)(lab.numpy())
    assert isinstance(out_np, np.ndarray) and out_np.tolist() == out.tolist()


def test_label_to_regions_matches_monai_brats_regions():
    # MONAI's converter (BraTS only) gives TC, WT, ET; ours gives WT, TC, ET from the same definitions
    lab = torch.tensor(np.random.default_rng(0).choice([0, 1, 2, 4], size=(1, 8, 8, 4)), dtype=torch.float32)
    ours = LabelToRegions("wt_tc_et", "brats")(lab)
    monai = ConvertToMultiChannelBasedOnBratsClasses()(lab).float()
    assert torch.equal(ours, monai[[1, 0, 2]])


@parameterized.expand([("brats", [0, 1, 3], "3"), ("msd", [0, 4], "4"), ("brats", [0, 0.5, 2], "0.5")])
def test_label_to_regions_rejects_values(convention, values, bad):
    lab = torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)
    xf = LabelToRegionsd(keys="label", convention=convention)
    with pytest.raises(DataError, match=rf"case BraTS_x: label values {bad} are not in the '{convention}'"):
        xf({"label": lab, "case_id": "BraTS_x"})


def test_label_to_regionsd_item_key_and_meta():
    lab = MetaTensor(torch.tensor([0.0, 1, 2, 3]).reshape(1, 4, 1, 1), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    out = LabelToRegionsd(keys="label", regions="wt_tc_et", convention="brats")(
        {"label": lab, "label_convention": "/some/joined/path/msd"}  # per-item key wins, MONAI path-joining undone
    )["label"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, lab.affine)
    assert out[:, :, 0, 0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(DataError, match="label convention is unknown"):
        LabelToRegionsd(keys="label")({"label": lab, "case_id": "c1"})


# --- RegionsToLabel -------------------------------------------------------------------------------------------------
@parameterized.expand([("brats", [0, 1, 2, 4]), ("msd", [0, 1, 2, 3]), ("brats2023", [0, 1, 2, 3])])
def test_regions_to_label_round_trip(convention, values):
    rng = np.random.default_rng(len(convention))
    lab = rng.choice(values, size=(1, 9, 7, 5)).astype(np.float32)
    regions = LabelToRegions("wt_tc_et", convention)(lab)
    back = RegionsToLabel("wt_tc_et", convention)(regions)
    assert isinstance(back, np.ndarray) and back.dtype == np.uint8 and back.shape == lab.shape
    assert np.array_equal(back, lab.astype(np.uint8))
    # torch / MetaTensor in, same type out with the metadata kept; another channel order; another dtype
    meta_lab = MetaTensor(torch.from_numpy(lab), affine=torch.diag(torch.tensor([-1.0, -1, 2, 1])))
    masks = LabelToRegions(["et", "wt", "tc"], convention)(meta_lab)
    back_t = RegionsToLabel(["et", "wt", "tc"], convention, dtype="int16")(masks)
    assert isinstance(back_t, MetaTensor) and back_t.dtype == torch.int16
    assert torch.equal(back_t.affine, meta_lab.affine)
    assert torch.equal(back_t.as_tensor(), meta_lab.as_tensor().to(torch.int16))


def test_regions_to_label_wt_is_binary():
    lab = torch.tensor([0.0, 1, 2, 4]).reshape(1, 4, 1, 1)
    wt = LabelToRegions("wt", "brats")(lab)
    out = RegionsToLabel("wt")(wt)
    assert out.dtype == torch.uint8 and out.flatten().tolist() == [0, 1, 1, 1]
    assert RegionsToLabel("wt", convention=None, wt_value=255)(wt).flatten().tolist() == [0, 255, 255, 255]


@parameterized.expand(
    [
        # probabilities (WT, TC, ET) per voxel -> label; the default threshold is 0.5, inclusive
        ("brats", 0.5, [[0.1, 0.9, 0.9, 0.9, 0.5], [0.0, 0.2, 0.7, 0.8, 0.2], [0.0, 0.1, 0.3, 0.6, 0.49]],
         [0, 2, 1, 4, 2]),
        ("msd", 0.5, [[0.1, 0.9, 0.9, 0.9, 0.5], [0.0, 0.2, 0.7, 0.8, 0.2], [0.0, 0.1, 0.3, 0.6, 0.49]],
         [0, 1, 2, 3, 1]),
        ("brats", 0.05, [[0.1, 0.9, 0.9, 0.9, 0.5], [0.0, 0.2, 0.7, 0.8, 0.2], [0.0, 0.1, 0.3, 0.6, 0.49]],
         [2, 4, 4, 4, 4]),
        # not nested: ET alone counts as TC and WT, TC alone as WT
        ("brats", 0.5, [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]], [4, 1, 2, 4]),
        ("brats2023", 0.5, [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]], [3, 1, 2, 3]),
        ("msd", 0.5, [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]], [3, 2, 1, 3]),
    ]
)
def test_regions_to_label_threshold_and_hierarchy(convention, threshold, regions, expected):
    masks = torch.tensor(regions, dtype=torch.float32).reshape(3, -1, 1, 1)
    out = RegionsToLabel("wt_tc_et", convention, threshold=threshold)(masks)
    assert out.shape == (1, len(expected), 1, 1) and out.flatten().tolist() == expected


def test_regions_to_labeld_conventions_and_errors():
    masks = MetaTensor(torch.tensor([[0.0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]).reshape(3, 4, 1, 1),
                       affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    xf = RegionsToLabeld(keys="pred", regions="wt_tc_et")
    out = xf({"pred": masks, "label_convention": "/joined/path/msd", "case_id": "c1"})["pred"]  # the item's convention
    assert isinstance(out, MetaTensor) and out.flatten().tolist() == [0, 1, 2, 3]
    assert torch.equal(out.affine, masks.affine)
    forced = RegionsToLabeld(keys="pred", regions="wt_tc_et", convention="brats", convention_key=None)
    assert forced({"pred": masks, "label_convention": "msd"})["pred"].flatten().tolist() == [0, 2, 1, 4]
    with pytest.raises(DataError, match="case c1: the label convention of the output is unknown"):
        xf({"pred": masks, "case_id": "c1"})
    with pytest.raises(DataError, match=r"case c1: expected 3 region channel\(s\) \['wt', 'tc', 'et'\]"):
        xf({"pred": masks[:1], "case_id": "c1", "label_convention": "brats"})
    with pytest.raises(ValueError, match="other region sets do not determine"):
        RegionsToLabeld(keys="pred", regions=["wt", "et"])
    assert RegionsToLabelD is RegionsToLabelDict is RegionsToLabeld


# --- ReorderModalities ----------------------------------------------------------------------------------------------
def test_reorder_modalities_msd():
    img = torch.arange(4.0).reshape(4, 1, 1, 1)  # channel k holds the value k, in MSD order flair, t1, t1ce, t2
    out = ReorderModalities("FLAIR,T1w,t1gd,T2w")(img)
    assert out.flatten().tolist() == [1, 2, 3, 0]
    assert ReorderModalities("flair,t1,t1ce,t2", target_order="flair,t1ce")(img).flatten().tolist() == [0, 2]
    with pytest.raises(DataError, match="missing"):
        ReorderModalities("t1,t2", target_order="t1,flair")(img[:2])
    with pytest.raises(DataError, match="3 channel"):
        ReorderModalities("t1,t1ce,t2,flair")(img[:3])


def test_reorder_modalitiesd_keeps_metadata():
    img = MetaTensor(torch.arange(4.0).reshape(4, 1, 1, 1), affine=torch.diag(torch.tensor([-1.0, -1, 1, 1])))
    img.applied_operations = [{"class": "Dummy"}]
    d = ReorderModalitiesd(keys="image")({"image": img, "modality_order": "flair,t1,t1ce,t2"})
    assert isinstance(d["image"], MetaTensor) and d["image"].flatten().tolist() == [1, 2, 3, 0]
    assert torch.equal(d["image"].affine, img.affine) and d["image"].applied_operations == [{"class": "Dummy"}]
    with pytest.raises(DataError, match="case c9: the modality order of the image is unknown"):
        ReorderModalitiesd(keys="image")({"image": img, "case_id": "c9"})


def test_check_finite():
    img = torch.zeros(4, 3, 3, 2)
    img[3, 0, 0, 0] = float("nan")
    img[1, 1, 1, 1] = float("inf")
    with pytest.raises(DataError, match=r"case c2: image has 1 NaN and 1 infinite value\(s\) in channel\(s\) "
                                         r"1 \(t1ce\), 3 \(flair\)"):
        CheckFinited(keys="image")({"image": img, "case_id": "c2"})
    CheckFinited(keys="image")({"image": torch.zeros(4, 2, 2, 2)})


def test_slice_indices():
    lab = torch.zeros(2, 4, 6, 5)
    lab[1, 2, 3, 1] = 1  # tumour in slice 1 (second channel only: channel 0 is not treated as background)
    lab[0, 0, 0, 3] = 1  # and in slice 3
    d = SliceFgBgToIndicesd(keys="label")({"label": lab})
    fg = np.unravel_index(d["label_fg_indices"], (4, 6, 5))
    bg = np.unravel_index(d["label_bg_indices"], (4, 6, 5))
    assert fg[2].tolist() == [1, 3] and bg[2].tolist() == [0, 2, 4]
    assert set(fg[0].tolist()) == {2} and set(fg[1].tolist()) == {3}  # the in-plane centre


# --- pipelines ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("regions,channels", [("wt", 1), ("wt_tc_et", 3)])
@pytest.mark.parametrize("layout", ["brats", "msd"])
def test_eval_pipeline(cases, layout, regions, channels):
    d = get_eval_transforms((24, 20), regions=regions)(cases[layout][0])
    img, lab = d["image"], d["label"]
    assert isinstance(img, MetaTensor) and img.shape[:3] == (4, 24, 20) and img.dtype == torch.float32
    assert lab.shape == (channels, 24, 20, img.shape[3]) and lab.dtype == torch.float32
    assert set(torch.unique(lab).tolist()) <= {0.0, 1.0} and lab.sum() > 0
    assert img.shape[3] <= SHAPE[2]
    # per-channel normalisation over the brain: roughly zero mean, unit spread inside, exactly 0 far outside
    for c in range(4):
        inside = img[c][img[c] != 0]
        assert abs(float(inside.mean())) < 0.25 and 0.6 < float(inside.std()) < 1.4


def test_msd_and_brats_give_the_same_tensors(cases):
    # the demo writes the same voxels in both layouts: MSD's 4D FLAIR,T1w,t1gd,T2w image and 1/2/3 labels must
    # come out exactly like the BraTS t1,t1ce,t2,flair files and 1/2/4 labels
    xf = get_eval_transforms((32, 32), regions="wt_tc_et")
    for b, m in zip(cases["brats"], cases["msd"]):
        db, dm = xf(b), xf(m)
        assert torch.allclose(db["image"], dm["image"], atol=1e-5)
        assert torch.equal(db["label"], dm["label"])


@parameterized.expand([((17, 23),), ((64, 64),), ((13, 40),)])
def test_resized_masks_stay_binary(size):
    # a random multi-region label, resized by non-integer factors both ways, must stay {0, 1}
    rng = np.random.default_rng(0)
    img = np.zeros((4, 30, 27, 6), np.float32)
    img[:, 3:27, 2:25] = rng.uniform(1, 10, (4, 24, 23, 6))
    lab = rng.choice([0, 1, 2, 4], size=(1, 30, 27, 6)).astype(np.float32)
    lab[:, :3] = 0
    xf = get_eval_transforms(size, regions="wt_tc_et", check_files=False).transforms
    # skip the loading transforms: start at LabelToRegionsd
    start = [type(t).__name__ for t in xf].index("LabelToRegionsd")
    d = {"image": MetaTensor(img), "label": MetaTensor(lab), "label_convention": "brats"}
    for t in xf[start:]:
        d = t(d)
    assert d["label"].shape[1:3] == size
    assert set(torch.unique(d["label"]).tolist()) == {0.0, 1.0}


def test_invert_round_trip(tmp_path):
    # brain box 16 x 12 (x, y) in a 32 x 28 x 6 volume, resized to 32 x 24 = exactly x2: nearest is exact both ways
    rng = np.random.default_rng(1)
    affine = np.array([[-1.0, 0, 0, 10], [0, -1.2, 0, 40], [0, 0, 2.5, -7], [0, 0, 0, 1]])
    lab = np.zeros((32, 28, 6), np.uint8)
    lab[10:18, 12:18, 2:4] = rng.choice([1, 2, 4], size=(8, 6, 2))
    files = []
    for m in ("t1", "t1ce", "t2", "flair"):
        data = np.zeros((32, 28, 6), np.int16)
        data[8:24, 9:21] = rng.integers(100, 1000, size=(16, 12, 6))
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"c_{m}.nii.gz")
        files.append(str(tmp_path / f"c_{m}.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "c_seg.nii.gz")
    item = {"case_id": "c", "image": files, "label": str(tmp_path / "c_seg.nii.gz"), "label_convention": "brats",
            "modality_order": "t1,t1ce,t2,flair"}
    xf = get_eval_transforms((32, 24), regions="wt_tc_et")
    d = xf(item)
    assert d["image"].shape == (4, 32, 24, 6)
    d["pred"] = d["label"].clone()  # a perfect prediction in network space
    out = Invertd(keys="pred", transform=xf, orig_keys="image", nearest_interp=True)(d)["pred"]
    assert out.shape == (3, 32, 28, 6)
    assert np.allclose(out.affine.numpy(), affine)
    expected = LabelToRegions("wt_tc_et", "brats")(lab[None].astype(np.float32))
    assert np.array_equal(out.numpy(), expected)


def test_invert_inference_pipeline_real_geometry(cases):
    # inference transforms (no label), arbitrary resize factor: geometry comes back, mask nearly the same
    item = {k: v for k, v in cases["brats"][1].items() if k != "label"}
    xf = get_inference_transforms((20, 20))
    d = xf(item)
    assert "label" not in d
    ref = get_eval_transforms((20, 20))(cases["brats"][1])["label"]
    d["pred"] = ref
    out = Invertd(keys="pred", transform=xf, orig_keys="image", nearest_interp=True)(d)["pred"]
    seg = nib.load(cases["brats"][1]["label"])
    assert out.shape == (1, *seg.shape) and np.allclose(out.affine.numpy(), seg.affine)
    wt = np.isin(np.asarray(seg.dataobj), [1, 2, 4])
    p = out[0].numpy() > 0.5
    assert 2 * (wt & p).sum() / (wt.sum() + p.sum()) > 0.7


def test_train_pipeline_samples(cases):
    set_determinism(0)
    try:
        xf = get_train_transforms((16, 16), slices_per_volume=6, regions="wt_tc_et")
        out = xf(cases["brats"][0])
        assert isinstance(out, list) and len(out) == 6
        for s in out:
            assert s["image"].shape == (4, 16, 16) and s["label"].shape == (3, 16, 16)
            assert "label_fg_indices" not in s and "label_bg_indices" not in s
        only_tumour = get_train_transforms((16, 16), slices_per_volume=8, pos=1, neg=0)(cases["brats"][0])
        assert all(s["label"].sum() > 0 for s in only_tumour)
        only_empty = get_train_transforms((16, 16), slices_per_volume=8, pos=0, neg=1)(cases["brats"][0])
        assert all(s["label"].sum() == 0 for s in only_empty)
        xf.set_random_state(3)
        a = [s["image"] for s in xf(cases["brats"][0])]
        xf.set_random_state(3)
        b = [s["image"] for s in xf(cases["brats"][0])]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    finally:
        set_determinism(None)


def test_train_pipeline_with_cache_and_loader(cases):
    ds = CacheDataset(cases["brats"], get_train_transforms((16, 16), slices_per_volume=4), progress=False)
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    assert batch["image"].shape == (12, 4, 16, 16) and batch["label"].shape == (12, 1, 16, 16)


def test_bad_factory_arguments():
    with pytest.raises(ValueError, match="spatial_size"):
        get_eval_transforms((1, 2, 3))
    with pytest.raises(ValueError, match="slices_per_volume"):
        get_train_transforms(slices_per_volume=0)
    with pytest.raises(ValueError, match="unknown regions"):
        get_eval_transforms(regions="whole")


def test_bundle_config_chain_matches_factory(cases, tmp_path):
    """Every piece is instantiable by ``_target_`` from JSON; the chain equals get_train_transforms."""
    config = {
        "imports": ["$import medsegdiff_monai"],
        "keys": ["image", "label"],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "medsegdiff_monai.transforms.CheckInputFilesd", "keys": "@keys"},
                {"_target_": "LoadImaged", "keys": "@keys", "reader": "NibabelReader", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "@keys"},
                {"_target_": "medsegdiff_monai.transforms.ReorderModalitiesd", "keys": "image"},
                {"_target_": "medsegdiff_monai.transforms.CheckFinited", "keys": "image"},
                {"_target_": "medsegdiff_monai.transforms.LabelToRegionsd", "keys": "label", "regions": "wt"},
                {"_target_": "CropForegroundd", "keys": "@keys", "source_key": "image", "allow_smaller": True,
                 "start_coord_key": None, "end_coord_key": None},
                {"_target_": "Resized", "keys": "@keys", "spatial_size": [16, 16, -1],
                 "mode": ["trilinear", "nearest"]},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
                {"_target_": "EnsureTyped", "keys": "@keys", "dtype": "float32"},
                {"_target_": "medsegdiff_monai.transforms.SliceFgBgToIndicesd", "keys": "label"},
                {"_target_": "RandCropByPosNegLabeld", "keys": "@keys", "label_key": "label",
                 "spatial_size": [-1, -1, 1], "pos": 1, "neg": 1, "num_samples": 4,
                 "fg_indices_key": "label_fg_indices", "bg_indices_key": "label_bg_indices", "allow_smaller": True},
                {"_target_": "SqueezeDimd", "keys": "@keys", "dim": 3},
            ],
        },
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    parser = ConfigParser()
    parser.read_config(str(path))
    from_config = parser.get_parsed_content("preprocessing")
    factory = get_train_transforms((16, 16), slices_per_volume=4)
    assert [type(t).__name__ for t in from_config.transforms] == [type(t).__name__ for t in factory.transforms]
    from_config.set_random_state(5)
    factory.set_random_state(5)
    a, b = from_config(cases["brats"][2]), factory(cases["brats"][2])
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))


@pytest.mark.slow
def test_throughput_benchmark_quick(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_throughput.py"
    spec = importlib.util.spec_from_file_location("data_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--quick", "--json", str(tmp_path / "bench.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert [r["dataset"] for r in results] == ["Dataset (no cache)", "CacheDataset", "PersistentDataset (cold)",
                                               "PersistentDataset (warm)"]
    assert all(r["slices_per_s"] > 0 and r["slices"] > 0 for r in results)
