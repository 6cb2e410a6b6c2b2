# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The bundle's post-processing components: ThresholdToMaskd, SaveCased, SaveSegmentationd and CaseIds."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medsegdiff_monai.handlers import CaseIds
from medsegdiff_monai.transforms import SaveCased, SaveSegmentationd, ThresholdToMaskd


def _meta_tensor(array: torch.Tensor, name: str) -> MetaTensor:
    affine = torch.diag(torch.tensor([2.0, 1.5, 1.0, 1.0], dtype=torch.float64))
    return MetaTensor(array, affine=affine, meta={"filename_or_obj": name})


def test_threshold_to_mask_keeps_the_probabilities_and_includes_the_threshold():
    prob = torch.tensor([[[0.2, 0.5], [0.49, 0.9]]])
    out = ThresholdToMaskd("pred", names="mask", threshold=0.5)({"pred": prob})
    torch.testing.assert_close(out["pred"], prob)  # not thresholded in place
    torch.testing.assert_close(out["mask"], torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))


def test_threshold_to_mask_needs_one_name_per_key():
    with pytest.raises(ValueError, match="one name per key"):
        ThresholdToMaskd(["a", "b"], names="mask")


def test_save_segmentation_writes_the_brats_label_map_named_by_case(tmp_path):
    # WT = TC = ET at voxel 0, WT and TC at voxel 1, WT only at voxel 2, nothing at voxel 3
    wt = torch.tensor([0.9, 0.8, 0.7, 0.1])
    tc = torch.tensor([0.9, 0.6, 0.2, 0.0])
    et = torch.tensor([0.7, 0.3, 0.1, 0.0])
    pred = torch.stack([wt, tc, et]).reshape(3, 4, 1, 1).repeat(1, 1, 2, 3)  # (3, 4, 2, 3)
    name = str(tmp_path / "BraTS2021_00007" / "BraTS2021_00007_t1.nii.gz")
    item = {"pred": _meta_tensor(pred, name), "label_convention": "brats"}
    out = SaveSegmentationd("pred", output_dir=str(tmp_path / "out"), regions="wt_tc_et")(item)

    path = tmp_path / "out" / "BraTS2021_00007_seg.nii.gz"
    assert sorted(os.listdir(tmp_path / "out")) == ["BraTS2021_00007_seg.nii.gz"]
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.uint8
    labels = np.asarray(img.dataobj)
    assert labels.shape == (4, 2, 3)
    np.testing.assert_array_equal(labels[:, 0, 0], [4, 1, 2, 0])
    assert (labels == labels[:, :1, :1]).all()
    np.testing.assert_allclose(img.affine[:3, :3], np.diag([2.0, 1.5, 1.0]))
    torch.testing.assert_close(out["pred"].as_tensor(), pred)  # the region masks stay for the metrics


def test_save_segmentation_writes_the_msd_convention_of_the_item(tmp_path):
    pred = torch.ones(3, 2, 2, 2)
    item = {"pred": _meta_tensor(pred, str(tmp_path / "imagesTr" / "BRATS_003.nii.gz")), "label_convention": "msd"}
    SaveSegmentationd("pred", output_dir=str(tmp_path), regions="wt_tc_et")(item)
    assert np.asarray(nib.load(str(tmp_path / "BRATS_003_seg.nii.gz")).dataobj).max() == 3  # MSD enhancing


def test_save_cased_writes_float_maps_with_the_postfix(tmp_path):
    unc = torch.rand(1, 3, 2, 2)
    item = {"unc": _meta_tensor(unc, "/data/BraTS2021_00001/BraTS2021_00001_flair.nii.gz")}
    SaveCased("unc", output_dir=str(tmp_path), output_postfix="uncertainty")(item)
    img = nib.load(str(tmp_path / "BraTS2021_00001_uncertainty.nii.gz"))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj), unc[0].numpy(), rtol=1e-6)
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".nii.gz")] == []  # no temporary left behind


def test_case_ids_from_file_names_with_fallback_and_error():
    batch = [
        {"image": _meta_tensor(torch.zeros(1, 1, 1), "/d/BraTS2021_00002/BraTS2021_00002_t1ce.nii.gz")},
        {"image": torch.zeros(1, 1, 1), "case_id": "caseB"},
    ]
    assert CaseIds()(batch) == ["BraTS2021_00002", "caseB"]
    assert CaseIds(meta_key="filename_or_obj")(batch) == [
        {"filename_or_obj": "BraTS2021_00002"}, {"filename_or_obj": "caseB"}]
    assert CaseIds()(batch[0]) == ["BraTS2021_00002"]  # one item, not a list
    with pytest.raises(ValueError, match="no file name"):
        CaseIds()([{"image": torch.zeros(1)}])
