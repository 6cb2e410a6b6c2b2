from __future__ import annotations

import json
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from parameterized import parameterized

from monai.bundle import ConfigParser
from monai.data import MetaTensor
from medsegdiff_monai.transforms import SaveOverlayD, SaveOverlayDict, SaveOverlayd, overlay_file_stem, select_slices
from medsegdiff_monai.visualize import display_plan, orient_slice

SHAPE = (24, 20, 12)  # H, W, D: slices along the last axis
DPI, PANEL = 20, 1.0  # 20 x 20 pixel panels keep the drawing fast
LPS = torch.tensor([[-1.0, 0, 0, 23], [0, -1, 0, 19], [0, 0, 1, 0], [0, 0, 0, 1]])  # BraTS-like storage


def _case(label_slices=(2, 6, 7, 10), label=True, uncertainty=False, case_id="BraTS_001"):
    """4-channel image, a WT/TC/ET label with a square on ``label_slices`` (the larger, the later), a shifted pred."""
    rng = np.random.default_rng(0)
    img = np.zeros((4, *SHAPE), np.float32)
    img[:, 2:22, 2:18] = rng.normal(0, 1, (4, 20, 16, SHAPE[2]))
    lab = np.zeros((3, *SHAPE), np.float32)
    for i, z in enumerate(label_slices):
        lab[0, 8 - i: 12 + i, 6 - i: 10 + i, z] = 1  # WT
        lab[1, 8 - i: 12 + i, 6 - i: 8, z] = 1  # TC: part of it
        lab[2, 8 - i: 12 + i, 6 - i: 7, z] = 1  # ET: part of TC
    lab[1:, :, :, 2] = 0  # TC/ET only on some slices
    pred = np.roll(lab, 1, axis=1) * 0.8  # probabilities
    d = {"image": MetaTensor(torch.from_numpy(img), affine=LPS), "pred": MetaTensor(torch.from_numpy(pred), affine=LPS)}
    if label:
        d["label"] = MetaTensor(torch.from_numpy(lab), affine=LPS)
    if uncertainty:
        d["unc"] = torch.rand(3, *SHAPE) * torch.from_numpy(lab)
    if case_id is not None:
        d["case_id"] = case_id
    return d


def _xf(tmp_path, **kwargs):
    return SaveOverlayd(output_dir=tmp_path / "overlays", dpi=DPI, panel_size=PANEL, **kwargs)


def test_writes_png_growing_with_num_slices(tmp_path):
    d = _case(uncertainty=True)
    heights = []
    for n in (1, 2, 4):
        out = _xf(tmp_path, uncertainty_key="unc", num_slices=n, output_postfix=f"n{n}")(d)
        assert out is d  # data returned unchanged
        png = mpimg.imread(tmp_path / "overlays" / f"BraTS_001_n{n}.png")  # a valid PNG
        # 4 columns (image, label, prediction, uncertainty) and a colour bar
        assert png.ndim == 3 and 4 * PANEL * DPI < png.shape[1] <= (4 * PANEL + 1) * DPI
        heights.append(png.shape[0])
    assert heights[0] < heights[1] < heights[2]
    assert abs((heights[2] - heights[1]) - 2 * (heights[1] - heights[0])) <= 1  # one row per slice


def test_slice_choice_largest_label_spread():
    # the largest label areas are on slices 10 > 7 > 6 > 2, but 6 is next to 7: 2, 7, 10 are drawn
    areas = np.zeros(12)
    areas[[2, 6, 7, 10]] = [16, 25, 36, 49]
    assert select_slices(areas, 3) == [2, 7, 10]
    assert select_slices(areas, 1) == [10]
    assert select_slices(areas, 4) == [2, 6, 7, 10]
    assert select_slices(areas, 6) == [1, 2, 3, 6, 7, 10]  # then the slices next to the tumour
    assert select_slices(np.zeros(12), 3) == [2, 6, 10]  # no foreground: evenly spaced
    areas[0] = 1  # a stray voxel far away is not worth a row
    assert select_slices(areas, 3) == [2, 7, 10]
    xf = SaveOverlayd()
    image, pred, label = (_case()[k][0].numpy() for k in ("image", "pred", "label"))
    assert xf.choose_slices(image, pred > 0.5, label > 0) == ([2, 7, 10], "ground truth")
    assert xf.choose_slices(image, pred > 0.5, np.zeros_like(label, bool)) == ([2, 7, 10], "prediction")
    assert xf.choose_slices(image, pred > 0.9, None) == ([2, 6, 10], "evenly spaced")


@pytest.mark.parametrize(
    "kwargs,case_kwargs,columns",
    [
        (dict(label_key=None), {}, 2),
        ({}, dict(label=False), 2),
        (dict(uncertainty_key="unc"), {}, 3),
        ({}, dict(label_slices=()), 3),
        ({}, dict(label_slices=(), label=False), 2),
    ],
    ids=["no_label_key", "label_missing", "uncertainty_missing", "no_tumour", "no_tumour_no_label"],
)
def test_optional_inputs(tmp_path, kwargs, case_kwargs, columns):
    _xf(tmp_path, **kwargs)(_case(**case_kwargs))
    png = mpimg.imread(tmp_path / "overlays" / "BraTS_001_overlay.png")
    assert png.shape[1] == columns * PANEL * DPI


def test_case_names(tmp_path):
    d = _case(case_id=None)
    d["image"].meta["filename_or_obj"] = "/data/BraTS_007/BraTS_007_flair.nii.gz"
    _xf(tmp_path)(d)  # named by the case id of the file, as the predictions are (case_id_from_path)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["BraTS_007_overlay.png"]
    xf = _xf(tmp_path, output_postfix="")
    xf({"image": torch.zeros(4, *SHAPE), "pred": torch.zeros(1, *SHAPE)})  # no name at all: numbered
    xf({"image": torch.zeros(4, 8, 8), "pred": torch.zeros(1, 8, 8), "case_id": "/joined/path/c2"})  # a 2D case
    assert (tmp_path / "overlays" / "case_0000.png").is_file() and (tmp_path / "overlays" / "c2.png").is_file()
    assert SaveOverlayD is SaveOverlayDict is SaveOverlayd


@parameterized.expand([("a/b/x.nii.gz", "x"), ("x.NII", "x"), ("case 1 (copy)", "case_1_copy"), ("", None),
                       (None, None)])
def test_overlay_file_stem(name, stem):
    assert overlay_file_stem(name) == stem


def test_radiological_display_independent_of_storage():
    # the same head stored LPS (BraTS) and RAS (both in-plane axes flipped) is drawn the same way
    vol = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    ras_affine = torch.diag(torch.tensor([1.0, 1, 1, 1]))
    lps_plan, ras_plan = display_plan(LPS.numpy(), (0, 1)), display_plan(ras_affine.numpy(), (0, 1))
    lps = orient_slice(vol[..., 3], lps_plan)
    ras = orient_slice(vol[::-1, ::-1, 3], ras_plan)
    assert np.array_equal(lps, ras) and lps.shape == (SHAPE[1], SHAPE[0])  # rows: anterior-posterior
    assert np.array_equal(lps, vol[..., 3].T)  # LPS storage: the transposed array, nothing flipped
    aniso = LPS.clone().numpy()
    aniso[1, 1] = -2.0  # 2 mm rows, 1 mm columns
    assert display_plan(aniso, (0, 1)).aspect == 2.0
    assert display_plan(aniso, (0, 1), radiological=False) == (False, False, False, 0.5)  # stored order


def test_bad_keys_and_shapes(tmp_path):
    d = _case()
    with pytest.raises(KeyError, match="the image key 'img' is not in the data"):
        _xf(tmp_path, image_key="img")(d)
    with pytest.raises(KeyError, match="the pred key 'seg' is not in the data"):
        _xf(tmp_path, pred_key="seg")(d)
    with pytest.raises(ValueError, match=r"pred 'pred' has 3 channel\(s\), channel 5 was asked for"):
        _xf(tmp_path, channel=5)(d)
    with pytest.raises(ValueError, match=r"image 'image' has 4 channel\(s\), channel 4 was asked for"):
        _xf(tmp_path, image_channel=4)(d)
    with pytest.raises(ValueError, match="label 'label' has spatial shape"):
        _xf(tmp_path)({**d, "label": d["label"][:, :10]})
    with pytest.raises(ValueError, match="DecollateBatchd"):
        _xf(tmp_path)({**d, "image": d["image"][None]})
    with pytest.raises(ValueError, match="num_slices"):
        SaveOverlayd(num_slices=0)


def test_missing_matplotlib_message(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install matplotlib.*bundle"):
        SaveOverlayd()


def test_bundle_postprocessing_config(tmp_path):
    """SaveOverlayd and RegionsToLabeld instantiated by ``_target_`` from JSON, as in a bundle's evaluation."""
    config = {
        "imports": ["$import medsegdiff_monai"],
        "output_dir": str(tmp_path / "eval"),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "medsegdiff_monai.transforms.SaveOverlayd", "image_key": "image", "pred_key": "pred",
                 "label_key": "label", "output_dir": "$@output_dir + '/overlays'", "num_slices": 2, "dpi": DPI,
                 "panel_size": PANEL},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {"_target_": "medsegdiff_monai.transforms.RegionsToLabeld", "keys": "pred", "regions": "wt_tc_et",
                 "convention": "brats", "convention_key": None},
            ],
        },
    }
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(config))
    parser = ConfigParser()
    parser.read_config(str(path))
    post = parser.get_parsed_content("postprocessing")
    out = post(_case())
    assert (tmp_path / "eval" / "overlays" / "BraTS_001_overlay.png").is_file()
    assert out["pred"].shape == (1, *SHAPE) and set(torch.unique(out["pred"]).tolist()) == {0, 1, 2, 4}
