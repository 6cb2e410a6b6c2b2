# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""2D image-folder data sets: layout detection, pairing by name and by CSV, kept splits, errors naming the file,
mask channels, the PNG writer and the image2d bundle overlay's components."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, CopyItemsd, Invertd, LoadImaged, SqueezeDimd
from PIL import Image

from medsegdiff_monai.__main__ import main
from medsegdiff_monai.data import (
    AtomicPILWriter,
    ConvertImageMode,
    DataError,
    build_datalist,
    check_dataset,
    detect_layout,
    find_cases,
    load_datalist,
    make_demo_data,
    write_datalist,
)
from medsegdiff_monai.transforms import (
    ChannelsToMaskd,
    CheckImagePaird,
    MaskToChannelsd,
    SaveCased,
    SaveMapTIFFd,
    SaveMaskPNGd,
    SaveSegmentationd,
    ThresholdToMaskd,
    get_image2d_eval_transforms,
    get_image2d_inference_transforms,
    get_image2d_train_transforms,
)
from medsegdiff_monai.utils import prepare_datalist

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


def _image(path: Path, size=(20, 30), mode="RGB", value=None) -> Path:
    """Write an image of (height, width) ``size``; masks get a square of 255 (or ``value``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "RGB":
        arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.zeros((h, w), np.uint8)
        arr[h // 4 : h // 2, w // 4 : w // 2] = 255 if value is None else value
    Image.fromarray(arr).save(path)
    return path


def _pairs(root: Path, names, image_dir="images", mask_dir="masks", mask_suffix="_segmentation", ext=".jpg"):
    for n in names:
        _image(root / image_dir / f"{n}{ext}")
        _image(root / mask_dir / f"{n}{mask_suffix}.png", mode="L")


@pytest.mark.parametrize("suffix", ["", "_mask", "_segmentation", "_Segmentation", "_gt", "_GT"])
@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"])
def test_pairs_by_name_and_suffix(tmp_path, suffix, ext):
    _pairs(tmp_path, ["a1", "b2"], mask_suffix=suffix, ext=ext)
    assert detect_layout(tmp_path) == "image2d"
    cases = find_cases(tmp_path)
    assert [c["case_id"] for c in cases] == ["a1", "b2"]
    assert cases[0]["image"] == str(tmp_path / "images" / f"a1{ext}")
    assert cases[0]["label"] == str(tmp_path / "masks" / f"a1{suffix}.png")


def test_isic_style_folders_keep_their_split(tmp_path):
    _pairs(tmp_path, ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"],
           "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth")
    _pairs(tmp_path, ["ISIC_0000010"], "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth")
    _image(tmp_path / "ISIC2018_Task1-2_Test_Input" / "ISIC_0000020.jpg")  # test images without ground truth
    dl = build_datalist(tmp_path, val_fraction=0.5, test_fraction=0.3)
    assert dl["layout"] == "image2d" and dl["split"]["by"] == "given by the data set"
    assert [c["case_id"] for c in dl["validation"]] == ["ISIC_0000010"]  # the validation folder, none drawn
    assert len(dl["training"]) == 5
    assert [c["case_id"] for c in dl["test"]] == ["ISIC_0000020"] and "label" not in dl["test"][0]


def test_train_test_subfolders_keep_their_split_and_draw_validation_seeded(tmp_path):
    _pairs(tmp_path / "train", [f"t{i}" for i in range(10)], "image", "mask", "")
    _pairs(tmp_path / "test", ["x0", "x1"], "image", "mask", "")
    first = build_datalist(tmp_path, val_fraction=0.2, seed=1)
    assert first == build_datalist(tmp_path, val_fraction=0.2, seed=1)
    assert len(first["training"]) == 8 and len(first["validation"]) == 2
    assert [c["case_id"] for c in first["test"]] == ["x0", "x1"] and all("label" in c for c in first["test"])
    other = build_datalist(tmp_path, val_fraction=0.2, seed=2)
    assert {c["case_id"] for c in other["validation"]} != {c["case_id"] for c in first["validation"]}


def test_flat_folders_split_seeded(tmp_path):
    _pairs(tmp_path, [f"p{i:02d}" for i in range(20)], mask_suffix="_Segmentation")
    first = build_datalist(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert first == build_datalist(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=3)  # same seed, same split
    assert [len(first[k]) for k in ("training", "validation", "test")] == [14, 4, 2]
    assert first["split"]["by"] == "case (patient)" and first["split"]["seed"] == 3
    ids = [c["case_id"] for k in ("training", "validation", "test") for c in first[k]]
    assert sorted(ids) == [f"p{i:02d}" for i in range(20)]  # every image once
    other = build_datalist(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert {c["case_id"] for c in other["validation"]} != {c["case_id"] for c in first["validation"]}


def test_nested_subfolders_and_masks_in_another_format(tmp_path):
    """REFUGE-like: images in category subfolders (jpg), masks as bmp in matching subfolders."""
    for sub, n in (("Glaucoma", "g0001"), ("Non-Glaucoma", "n0001")):
        _image(tmp_path / "Images" / sub / f"{n}.jpg")
        _image(tmp_path / "Disc_Cup_Masks" / sub / f"{n}.bmp", mode="L", value=128)
    assert [c["case_id"] for c in find_cases(tmp_path)] == ["g0001", "n0001"]


def test_masks_next_to_their_images_and_images_only(tmp_path):
    _image(tmp_path / "both" / "ISIC_1.jpg")
    _image(tmp_path / "both" / "ISIC_1_segmentation.png", mode="L")
    _image(tmp_path / "both" / "ISIC_2.jpg")
    cases = find_cases(tmp_path / "both")
    assert [(c["case_id"], "label" in c) for c in cases] == [("ISIC_1", True), ("ISIC_2", False)]
    dl = build_datalist(tmp_path / "both", val_fraction=0.0)
    assert [c["case_id"] for c in dl["test"]] == ["ISIC_2"]  # unlabeled images go to test


def test_csv_of_pairs(tmp_path):
    _image(tmp_path / "img" / "p1.png")
    _image(tmp_path / "seg" / "p1_lesion.png", mode="L")
    _image(tmp_path / "img" / "p2.png")
    _image(tmp_path / "seg" / "p2_lesion.png", mode="L")
    _image(tmp_path / "img" / "p3.png")
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("image,mask,split\nimg/p1.png,seg/p1_lesion.png,train\nimg/p2.png,seg/p2_lesion.png,val\n"
                        "img/p3.png,,test\n")
    assert detect_layout(csv_file) == "image2d"
    out = tmp_path / "lists" / "datalist.json"
    dl = write_datalist(csv_file, out)
    assert dl["source"] == "csv"
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [1, 1, 1]
    items = load_datalist(out, "training")
    assert items[0]["image"] == str(tmp_path / "img" / "p1.png") and items[0]["case_id"] == "p1"
    with pytest.raises(DataError, match="CSV of pairs"):
        write_datalist(csv_file, csv_file, overwrite=True)


def _problem(tmp_path: Path, kind: str) -> tuple[Path, str]:
    root = tmp_path / "data"
    if kind == "csv_columns":
        root.mkdir()
        (root / "pairs.csv").write_text("path,segmentation\na.png,b.png\n")
        return root / "pairs.csv", "expected a header row with the columns image and mask"
    if kind == "csv_missing_file":
        root.mkdir()
        (root / "pairs.csv").write_text("image,mask\nnone.png,none_mask.png\n")
        return root / "pairs.csv", f"image file {root / 'none.png'} not found"
    _pairs(root, ["c1", "c2"])
    if kind == "unpaired_image":
        _image(root / "images" / "c3.jpg")
        return root, f"image {root / 'images' / 'c3.jpg'} has no mask"
    if kind == "unpaired_mask":
        _image(root / "masks" / "c9_segmentation.png", mode="L")
        return root, f"mask {root / 'masks' / 'c9_segmentation.png'} has no image"
    if kind == "unreadable":
        (root / "images" / "c2.jpg").write_bytes(b"not an image at all")
        return root, f"{root / 'images' / 'c2.jpg'}: not a readable image"
    if kind == "size":
        _image(root / "masks" / "c2_segmentation.png", size=(21, 30), mode="L")
        return root, f"{root / 'masks' / 'c2_segmentation.png'}: mask is 21x30 .* its image .* is 20x30"
    if kind == "empty_images":
        for f in (root / "images").iterdir():
            f.unlink()
        return root, f"{root / 'images'}: no image files"
    if kind == "empty_masks":
        for f in (root / "masks").iterdir():
            f.unlink()
        return root, f"{root / 'masks'}: no mask files"
    if kind == "two_mask_folders":
        _pairs(root, ["c1"], mask_dir="labels")
        return root, "could pair with mask folders"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["unpaired_image", "unpaired_mask", "unreadable", "size", "empty_images",
                                  "empty_masks", "two_mask_folders", "csv_columns", "csv_missing_file"])
def test_bad_input_is_named(tmp_path, capsys, kind):
    source, message = _problem(tmp_path, kind)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_datalist(source, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    assert main(["make_datalist", str(source), str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsegdiff-monai: error: ") and "\n" not in err
    assert main(["check_data", str(source)]) == 1


def test_check_data_reports_truncated_file_and_skip_bad_cases(tmp_path, capsys):
    _pairs(tmp_path, ["c1", "c2", "c3"], ext=".png")
    good = (tmp_path / "images" / "c2.png").read_bytes()
    (tmp_path / "images" / "c2.png").write_bytes(good[: len(good) // 2])  # the header reads, the pixels do not
    layout, report = check_dataset(tmp_path)
    assert layout == "image2d" and report["c1"] == [] and report["c3"] == []
    assert "c2.png: not a readable image" in report["c2"][0]
    with pytest.raises(DataError, match="c2.png: not a readable image"):
        CheckImagePaird()({"case_id": "c2", "image": str(tmp_path / "images" / "c2.png")})
    _image(tmp_path / "images" / "c4.png")  # no mask
    with pytest.warns(UserWarning, match="c4"):
        dl = build_datalist(tmp_path, on_error="skip", val_fraction=0.0)
    assert sorted(c["case_id"] for c in dl["training"]) == ["c1", "c2", "c3"]  # names only: c2's header is fine


def test_cli_demo_and_datalist(tmp_path, capsys):
    data = tmp_path / "demo"
    assert main(["make_demo_data", str(data), "--layout", "image2d", "--num_cases", "6", "--shape", "40,56"]) == 0
    sizes = {Image.open(p).size for p in (data / "images").iterdir()}
    assert len(sizes) > 1 and all(16 <= w <= 56 and 16 <= h <= 40 for w, h in sizes)
    modes = {Image.open(p).mode for p in (data / "images").iterdir()}
    assert modes == {"RGB", "L"}
    assert main(["make_datalist", str(data), str(tmp_path / "dl.json"), "--val_fraction", "0.34"]) == 0
    assert "layout image2d" in capsys.readouterr().out
    dl = json.loads((tmp_path / "dl.json").read_text())
    assert dl["numTraining"] == 4 and dl["numValidation"] == 2 and dl["channels"] == "mixed"
    assert main(["make_demo_data", str(data), "--layout", "image2d", "--shape", "40,56,3"]) == 1
    assert "two integers" in capsys.readouterr().err
    assert main(["make_demo_data", str(data), "--layout", "image2d", "--num_cases", "6"]) == 1  # exists
    assert make_demo_data(tmp_path / "again", num_cases=6, shape=(40, 56), layout="image2d")  # same data, any way
    assert all((tmp_path / "again" / "images" / p.name).read_bytes() == p.read_bytes()
               for p in (data / "images").iterdir())


def test_mask_to_channels_binary_threshold_and_classes():
    mask = torch.tensor([[[0, 1, 128, 255]]], dtype=torch.uint8)  # (1, 1, 4)
    binary = MaskToChannelsd(image_key=None)({"label": mask})["label"]
    assert binary.dtype == torch.float32 and binary.tolist() == [[[0.0, 1.0, 1.0, 1.0]]]
    assert MaskToChannelsd(threshold=127, image_key=None)({"label": mask})["label"].tolist() == [[[0, 0, 1, 1]]]
    refuge = MaskToChannelsd(classes=[[0, 128], [0]], image_key=None)({"label": mask})["label"]  # disc, cup
    assert refuge.tolist() == [[[1, 0, 1, 0]], [[1, 0, 0, 0]]]
    grey_rgb = MetaTensor(mask.repeat(3, 1, 1))
    out = MaskToChannelsd(image_key=None)({"label": grey_rgb})["label"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 1, 4)
    colour = mask.repeat(3, 1, 1)
    colour[1] = 0
    with pytest.raises(DataError, match="case c: mask 'label' is a colour image"):
        MaskToChannelsd(image_key=None)({"case_id": "c", "label": colour})
    with pytest.raises(DataError, match="case c: mask 'label' has the spatial shape"):
        MaskToChannelsd()({"case_id": "c", "label": mask, "image": torch.zeros(3, 1, 5)})
    with pytest.raises(ValueError, match="not both"):
        MaskToChannelsd(classes=[1], threshold=0.5)


def test_channels_to_mask_values():
    pred = torch.tensor([[[0.2, 0.7, 0.9]], [[0.1, 0.2, 0.8]]])  # disc, cup
    assert ChannelsToMaskd()({"pred": pred})["pred"].tolist() == [[[0, 1, 2]]]
    assert ChannelsToMaskd(values=[128, 255])({"pred": pred})["pred"].tolist() == [[[0, 128, 255]]]
    one = ChannelsToMaskd()({"pred": pred[:1]})["pred"]
    assert one.dtype == torch.uint8 and one.tolist() == [[[0, 255, 255]]]
    with pytest.raises(ValueError, match="2 channel"):
        ChannelsToMaskd(values=[1])({"pred": pred})


def test_convert_image_mode():
    grey = Image.fromarray(np.full((4, 6), 7, np.uint8))
    assert ConvertImageMode(3)(grey).mode == "RGB" and ConvertImageMode(1)(grey) is grey
    rgba = Image.fromarray(np.zeros((4, 6, 4), np.uint8))
    assert ConvertImageMode(3)(rgba).mode == "RGB" and ConvertImageMode(1)(rgba).mode == "L"
    deep = Image.fromarray(np.array([[0, 1000], [2000, 4000]], np.uint16))
    assert np.asarray(ConvertImageMode(1)(deep)).tolist() == [[0, 63], [127, 255]]  # scaled, not clipped
    with pytest.raises(ValueError, match="1 or 3"):
        ConvertImageMode(4)


def test_png_writer_keeps_rows_and_writes_atomically(tmp_path):
    arr = np.zeros((1, 5, 8), np.uint8)  # (C, H, W): 5 rows, 8 columns
    arr[0, 1, 6] = 255
    writer = AtomicPILWriter(output_dtype=np.uint8)
    writer.set_data_array(arr, channel_dim=0)
    writer.write(tmp_path / "m.png")
    back = np.asarray(Image.open(tmp_path / "m.png"))
    assert back.shape == (5, 8) and back[1, 6] == 255 and back.sum() == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temporary file left


def _parser(files, tmp_path, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"bundle_root": str(tmp_path), **overrides})
    return parser


STACKS = [["train.json", "image2d.json"], ["train.json", "demo.json", "image2d.json"],
          ["train.json", "evaluate.json", "image2d.json"], ["inference.json", "image2d.json"]]


@pytest.mark.parametrize("files", STACKS)
def test_image2d_overlay_builds_on_every_stack(files, tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")
    parser = _parser(files, tmp_path, image_channels=1, mask_classes=[[0, 128], [0]])
    network = parser.get_parsed_content("network")
    assert network.in_channels == 1 and network.out_channels == 2
    inferer = parser.get_parsed_content("inferer" if "inference.json" in files else "validate#inferer")
    assert inferer.slice_axis is None  # the 2D mode: images go to the network whole
    if "inference.json" in files:
        pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
        assert not any(isinstance(t, LoadImaged) and "label" in t.keys for t in pre.transforms)
        assert any(isinstance(t, SaveMaskPNGd) for t in post.transforms)
    else:
        for id_ in ("train#preprocessing", "validate#preprocessing"):
            pre = parser.get_parsed_content(id_)
            assert any(isinstance(t, MaskToChannelsd) for t in pre.transforms), id_  # the 2D chain, not BraTS
            assert not any(isinstance(t, SqueezeDimd) for t in pre.transforms), id_  # no slicing
    if "evaluate.json" in files:
        assert parser["validate#evaluator"]["postprocessing"].replace("::", "#") == "@validate#postprocessing"
        post = parser.get_parsed_content("validate#postprocessing").transforms
        kinds = [type(t) for t in post]
        assert SaveMaskPNGd in kinds and SaveMapTIFFd in kinds  # the PNG masks, not evaluate.json's NIfTI
        assert SaveSegmentationd not in kinds and SaveCased not in kinds
        assert parser.get_parsed_content("class_labels") == ["CLASS1", "CLASS2"]
        assert parser.get_parsed_content("validate#handlers") is not None
        pre = parser.get_parsed_content("validate#preprocessing")
        assert any(isinstance(t, CopyItemsd) for t in pre.transforms)  # label_original kept for the metrics
    # no lambda and no inline transform list: components only (the bundle's conventions)
    text = (CONFIGS / "image2d.json").read_text()
    assert "lambda" not in text and "$@" not in text.replace("$@eval_dir", "").replace("$@bundle_root", "")
    assert not (tmp_path / "data").exists()  # parsing writes nothing: data preparation is in initialize


def _item(tmp_path: Path, size=(37, 50)) -> dict:
    _image(tmp_path / "images" / "a.png", size=size)
    _image(tmp_path / "masks" / "a.png", size=size, mode="L")
    return {"case_id": "a", "image": str(tmp_path / "images" / "a.png"), "label": str(tmp_path / "masks" / "a.png")}


def test_image2d_config_preprocessing_is_the_package_factory(tmp_path):
    """The bundle's parsed 2D preprocessing and the pipelines.py factories give identical tensors."""
    item = _item(tmp_path)
    parser = _parser(["train.json", "demo.json", "evaluate.json", "image2d.json"], tmp_path)
    bundle_eval = parser.get_parsed_content("validate#preprocessing")(dict(item))
    api_eval = get_image2d_eval_transforms((64, 64), original_label_key="label_original")(dict(item))
    for key in ("image", "label", "label_original"):
        torch.testing.assert_close(torch.as_tensor(bundle_eval[key]), torch.as_tensor(api_eval[key]))
    bundle_train = parser.get_parsed_content("train#preprocessing")(dict(item))  # augmentation off by default
    api_train = get_image2d_train_transforms((64, 64))(dict(item))
    for key in ("image", "label"):
        torch.testing.assert_close(torch.as_tensor(bundle_train[key]), torch.as_tensor(api_train[key]))
    inf = _parser(["inference.json", "demo.json", "image2d.json"], tmp_path)
    bundle_inf = inf.get_parsed_content("preprocessing")(dict(item))
    api_inf = get_image2d_inference_transforms((64, 64))(dict(item))
    torch.testing.assert_close(torch.as_tensor(bundle_inf["image"]), torch.as_tensor(api_inf["image"]))
    assert not isinstance(bundle_inf["label"], torch.Tensor)  # inference reads no mask
    with pytest.raises(ValueError, match="label_key is required"):
        get_image2d_train_transforms(label_key=None)


def test_image2d_preprocessing_resizes_and_inverts_to_the_original_size(tmp_path):
    item = _item(tmp_path)
    pre = get_image2d_eval_transforms((64, 64), original_label_key="label_original")
    out = pre(dict(item))
    assert out["image"].shape == (3, 64, 64) and out["label"].shape == (1, 64, 64)
    assert out["label_original"].shape == (1, 37, 50)
    assert torch.isclose(out["image"].mean(), torch.tensor(0.0), atol=1e-4)  # normalised per channel
    out["pred"] = MetaTensor(out["label"].clone())
    inverted = Invertd("pred", pre, orig_keys="image", nearest_interp=True)(out)["pred"]
    assert inverted.shape == (1, 37, 50)
    assert (inverted > 0.5).eq(out["label_original"] > 0.5).float().mean() > 0.97  # the mask comes back
    loaded = Compose(pre.transforms[:4])(dict(item))  # check, load image, load mask, channel first
    picture = np.asarray(Image.open(item["image"])).transpose(2, 0, 1)  # (C, H, W): rows stay rows
    np.testing.assert_array_equal(np.asarray(loaded["image"]), picture)
    grey = get_image2d_eval_transforms((16, 16), image_channels=1, check_files=False)(dict(item))
    assert grey["image"].shape == (1, 16, 16)
    mask = np.asarray(Image.open(item["label"]))
    two = get_image2d_eval_transforms((37, 50), mask_classes=[[255], [0]])(dict(item))["label"]
    assert two.shape == (2, 37, 50) and two[0].numpy().sum() == (mask == 255).sum()
    high = get_image2d_eval_transforms((37, 50), mask_threshold=254)(dict(item))["label"]
    assert high.numpy().sum() == (mask > 254).sum()
    _image(tmp_path / "masks" / "a.png", size=(30, 50), mode="L")
    with pytest.raises(RuntimeError) as err:  # Compose wraps the DataError that names the mask file
        pre(dict(item))
    assert isinstance(err.value.__cause__, DataError) and "masks/a.png: mask is 30x50" in str(err.value.__cause__)


def test_png_masks_written_at_the_original_size_round_trip(tmp_path):
    """Predictions at network size, inverted to the image's size, written as PNG and read back unchanged."""
    item = _item(tmp_path, size=(41, 29))
    pre = get_image2d_eval_transforms((32, 32), original_label_key="label_original")
    out = pre(dict(item))
    out["pred"] = MetaTensor(out["label"].clone(), meta=out["label"].meta,
                             applied_operations=out["label"].applied_operations)
    post = Compose([
        Invertd("pred", pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        ThresholdToMaskd("pred", names="pred_mask", threshold=0.5),
        SaveMaskPNGd("pred_mask", output_dir=str(tmp_path / "out")),
    ])
    done = post(out)
    assert done["pred_mask"].shape == (1, 41, 29)  # unchanged for the metrics
    written = tmp_path / "out" / "a_seg.png"
    back = np.asarray(Image.open(written))
    assert Image.open(written).mode == "L" and back.shape == (41, 29)  # rows x columns of the image
    np.testing.assert_array_equal(back, (done["pred_mask"][0].numpy() > 0).astype(np.uint8) * 255)
    original = np.asarray(Image.open(item["label"])) > 0
    assert ((back > 0) == original).mean() > 0.95
    classes = {"pred": MetaTensor(torch.stack([done["pred_mask"][0], torch.zeros(41, 29)]),
                                  meta={"filename_or_obj": item["image"]})}
    SaveMaskPNGd("pred", output_dir=str(tmp_path / "classes"), values=[128, 0])(classes)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "classes" / "a_seg.png"))).tolist()) == {0, 128}
    unc = {"u": MetaTensor(torch.rand(2, 41, 29), meta={"filename_or_obj": item["image"]})}
    SaveMapTIFFd("u", output_dir=str(tmp_path / "out"))(unc)
    back_unc = np.asarray(Image.open(tmp_path / "out" / "a_uncertainty.tif"))
    np.testing.assert_allclose(back_unc, unc["u"].amax(0).numpy(), rtol=1e-6)  # the channel maximum, float32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_seg.png", "a_uncertainty.tif"]


def test_prepare_datalist_generates_the_2d_demo_and_reads_a_csv(tmp_path):
    demo = tmp_path / "demo"
    out = prepare_datalist(demo, tmp_path / "dl.json", demo_dir=demo, num_demo_cases=5, demo_shape=(40, 48),
                           demo_layout="image2d")
    dl = json.loads(Path(out).read_text())
    assert dl["layout"] == "image2d" and (demo / "images").is_dir() and (demo / "masks").is_dir()
    assert dl["numTraining"] + dl["numValidation"] + dl["numTest"] == 5
    rows = ["image,mask"] + [f"images/{c['case_id']}{Path(c['image']).suffix},{c['label'][len('demo/'):]}"
                             for c in dl["training"] + dl["validation"] + dl["test"]]
    (demo / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = prepare_datalist(demo / "pairs.csv", tmp_path / "dl.json")  # rebuilt: another data source
    again = json.loads(Path(out).read_text())
    assert again["source"] == "csv" and again["numTraining"] + again["numValidation"] + again["numTest"] == 5
    with pytest.raises(DataError, match="dataset_dir not found"):
        prepare_datalist(tmp_path / "none.csv", tmp_path / "other.json")


def test_overlay_draws_a_photograph_in_colour_with_class_names(tmp_path):
    pytest.importorskip("matplotlib")
    from medsegdiff_monai.transforms import SaveOverlayd

    image = 0.1 * torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    image[0] += 1.0  # a red picture
    mask = torch.zeros(1, 32, 48)
    mask[:, 8:20, 10:30] = 1
    overlay = SaveOverlayd(output_dir=tmp_path, image_channel=None, channel_names=["lesion"], radiological=False)
    overlay({"case_id": "p", "image": image, "pred": mask, "label": mask})
    picture = np.asarray(Image.open(tmp_path / "p_overlay.png").convert("RGB")).astype(int)
    left = picture[:, : picture.shape[1] // 3]  # the image panel
    assert (np.abs(left[..., 0] - left[..., 1]) > 100).mean() > 0.05  # not grey: the red image shows red
    with pytest.raises(ValueError, match="3 channel"):  # a channel index still works as before
        SaveOverlayd(output_dir=tmp_path, image_channel=3)({"image": image, "pred": mask})
