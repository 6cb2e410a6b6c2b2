# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The bundle's preprocessing and the Python API's pipelines are one chain: identical tensors on the demo data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monai.bundle import ConfigParser
from medsegdiff_monai.data import find_cases, make_demo_data
from medsegdiff_monai.transforms import get_eval_transforms, get_inference_transforms, get_train_transforms

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, num_cases=2, shape=(40, 36, 24), seed=3)
    return find_cases(root)


def _parser(files, tmp_path, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"bundle_root": str(tmp_path), "spatial_size": [24, 20], **overrides})
    return parser


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
            if hasattr(a[key], "applied_operations"):  # Invertd depends on the recorded operations too
                assert [op["class"] for op in a[key].applied_operations] == \
                    [op["class"] for op in b[key].applied_operations], key


@pytest.mark.parametrize("regions", ["wt", "wt_tc_et"])
def test_eval_and_inference_chains(cases, tmp_path, regions):
    train = _parser(["train.json"], tmp_path, regions=regions)
    evaluate = _parser(["train.json", "evaluate.json"], tmp_path, regions=regions)
    infer = _parser(["inference.json"], tmp_path, regions=regions)
    api_eval = get_eval_transforms((24, 20), regions=regions)
    api_orig = get_eval_transforms((24, 20), regions=regions, original_label_key="label_original")
    api_infer = get_inference_transforms((24, 20))
    for case in cases:
        _same(train.get_parsed_content("validate#preprocessing")(dict(case)), api_eval(dict(case)))
        out = evaluate.get_parsed_content("validate#preprocessing")(dict(case))
        _same(out, api_orig(dict(case)))
        assert list(out["label_original"].shape[1:]) == out["image"].meta["spatial_shape"].tolist()  # input geometry
        unlabeled = {k: v for k, v in case.items() if k != "label"}
        _same(infer.get_parsed_content("preprocessing")(dict(unlabeled)), api_infer(dict(unlabeled)))


@pytest.mark.parametrize("augment", [False, True])
def test_train_chain(cases, tmp_path, augment):
    parser = _parser(["train.json", "demo.json"], tmp_path, augment=augment)
    bundle = parser.get_parsed_content("train#preprocessing")
    # the augmentation instances of a second parse: sharing the bundle's would share their random states
    augmentation = _parser(["train.json", "demo.json"], tmp_path, augment=augment).get_parsed_content(
        "train#augmentation")
    assert not set(map(id, augmentation)) & set(map(id, bundle.transforms))
    api = get_train_transforms((24, 20), slices_per_volume=parser["slices_per_volume"],
                               pos=parser["tumour_slice_weight"], neg=1.0, regions=parser["regions"],
                               augmentation=augmentation)
    assert [type(t).__name__ for t in bundle.transforms] == [type(t).__name__ for t in api.transforms]
    assert len(bundle.transforms) == 13 + (5 if augment else 0)
    for case in cases:
        bundle.set_random_state(11)
        api.set_random_state(11)
        a, b = bundle(dict(case)), api(dict(case))
        assert len(a) == len(b) == parser["slices_per_volume"]
        for x, y in zip(a, b):
            _same(x, y)


def test_throughput_benchmark_measures_the_bundle_chain(cases, tmp_path):
    """``benchmarks/data_throughput.py`` times the bundle's ``train#preprocessing``, not a copy of it."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_throughput.py"
    spec = importlib.util.spec_from_file_location("data_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    measured, parser = module.bundle_train_transforms(bundle_root=tmp_path, spatial_size=[24, 20])
    assert parser["slices_per_volume"] == _parser(["train.json"], tmp_path)["slices_per_volume"]
    bundle = _parser(["train.json"], tmp_path).get_parsed_content("train#preprocessing")
    assert [type(t).__name__ for t in measured.transforms] == [type(t).__name__ for t in bundle.transforms]
    measured.set_random_state(4)
    bundle.set_random_state(4)
    for x, y in zip(measured(dict(cases[0])), bundle(dict(cases[0]))):
        _same(x, y)
    assert list(tmp_path.iterdir()) == []
