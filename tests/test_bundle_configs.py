# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The bundle's static checks: metadata schema and model-zoo rules, config parsing, formatting, file sizes."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
SCHEMA = Path(__file__).parent / "data" / "meta_schema_20240725.json"  # the model zoo's schema, byte-identical
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
ZOO_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
JSON_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.json"))
REQUIRED = {"metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "demo.json"}


def test_bundle_has_the_model_zoo_files():
    assert REQUIRED <= set(JSON_CONFIGS)
    for rel in ("configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE", "models"):
        assert (BUNDLE / rel).exists(), rel


def test_metadata_validates_against_the_zoo_schema():
    assert hashlib.md5(SCHEMA.read_bytes()).hexdigest() == SCHEMA_MD5
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["schema"] == ZOO_SCHEMA_URL
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(str(e) for e in jsonschema.Draft201909Validator(schema).iter_errors(meta))
    assert not errors, errors
    # and MONAI's own command, as the model zoo's CI runs it
    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
         "--filepath", str(SCHEMA)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "metadata is verified with no error" in out.stdout + out.stderr


def test_metadata_follows_the_zoo_rules():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["name"]
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert all(c.isdigit() or c == "." for c in meta[key]), f"{key} must be an exact version: {meta[key]}"
    for pkg, ver in meta["required_packages_version"].items():
        assert all(c.isdigit() or c == "." for c in ver), f"{pkg}: {ver}"
    fmt = meta["network_data_format"]
    assert set(fmt["inputs"]) == {"image"} and set(fmt["outputs"]) == {"pred"}
    # the inputs of the default preset ("B": 5 downsamplings) must be multiples of 32
    assert fmt["inputs"]["image"]["spatial_shape"] == ["32*n", "32*n"]


@pytest.mark.parametrize("name", JSON_CONFIGS)
def test_configs_are_4_space_json_without_duplicate_keys(name, monkeypatch):
    text = (CONFIGS / name).read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{name}: not 4-space formatted JSON"
    monkeypatch.setenv("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")
    ConfigParser.load_config_file(CONFIGS / name)


def test_duplicate_keys_are_caught(tmp_path, monkeypatch):
    """The check above can fail: MONAI rejects a duplicated key under MONAI_FAIL_ON_DUPLICATE_CONFIG=1."""
    bad = tmp_path / "bad.json"
    bad.write_text('{\n    "a": 1,\n    "a": 2\n}\n')
    monkeypatch.setenv("MONAI_FAIL_ON_DUPLICATE_CONFIG", "1")
    with pytest.raises(ValueError, match="Duplicate key"):
        ConfigParser.load_config_file(bad)


def test_logging_conf_uses_standard_handlers_only():
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(CONFIGS / "logging.conf")
    for section in conf.sections():
        if section.startswith("handler_"):
            assert conf[section]["class"].split(".")[0] in ("StreamHandler", "FileHandler", "logging"), section


def test_no_bundle_file_over_25_mb():
    for root, _, files in os.walk(BUNDLE):
        for f in files:
            path = Path(root) / f
            assert path.stat().st_size < 25 * 1024**2, path


@pytest.mark.parametrize(
    "files, ids",
    [
        (["train.json"], ["network_def", "train#preprocessing", "validate#preprocessing", "train#inferer",
                          "validate#inferer", "train#prepare_batch", "optimizer", "lr_scheduler", "loss"]),
        (["train.json", "demo.json"], ["network_def", "lr_scheduler"]),
        (["train.json", "evaluate.json"], ["validate#preprocessing", "validate#postprocessing",
                                           "validate#key_metric", "validate#additional_metrics"]),
        (["inference.json"], ["network_def", "preprocessing", "postprocessing", "inferer"]),
    ],
)
def test_config_components_instantiate(files, ids, tmp_path):
    """Every component of the configs builds (no data needed): catches wrong targets and argument names."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser["bundle_root"] = str(tmp_path)
    parser.parse()
    for id_ in ids:
        assert parser.get_parsed_content(id_) is not None, id_


def test_timestep_sampling_reaches_the_prepare_batch(tmp_path):
    """``--timestep_sampling`` and its parameters set the trainer's prepare_batch; the default is the paper's."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    default = parser.get_parsed_content("train#prepare_batch")
    assert default.timestep_sampling == "uniform"
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "timestep_sampling": "logit_normal", "timestep_logit_mean": 1.0,
                   "timestep_logit_std": 0.5})
    pb = parser.get_parsed_content("train#prepare_batch")
    assert (pb.timestep_sampling, pb.logit_mean, pb.logit_std) == ("logit_normal", 1.0, 0.5)


def test_inference_network_def_is_an_image_to_segmentation_module():
    """``network_def`` of inference.json maps an image batch to probabilities (what verify_net_in_out checks)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "num_ensemble": 2, "num_inference_steps": 2})
    net = parser.get_parsed_content("network_def")
    torch.manual_seed(0)
    out = net(torch.randn(1, 4, 32, 32))
    assert out.shape == (1, 1, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    train["bundle_root"] = str(BUNDLE)
    # the checkpoint the training writes (model.pt: the bare MedSegDiffUNet) loads into network_def unchanged
    net.load_state_dict(train.get_parsed_content("network_def").state_dict())


@pytest.mark.parametrize(
    "files", [["train.json"], ["train.json", "demo.json"], ["train.json", "evaluate.json"], ["inference.json"]]
)
def test_network_names_mean_the_same_in_every_config(files, tmp_path):
    """``network_def`` is the image -> segmentation module and ``network`` its denoiser, in every config; the
    evaluator and the inference engine sample ``network`` with ``DiffusionSegInferer``."""
    from medsegdiff_monai.inferers import DiffusionSegInferer
    from medsegdiff_monai.networks.nets import DiffusionSegmenter, MedSegDiffUNet

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser["bundle_root"] = str(tmp_path)
    network_def, network = parser.get_parsed_content("network_def"), parser.get_parsed_content("network")
    assert isinstance(network_def, DiffusionSegmenter) and isinstance(network, MedSegDiffUNet)
    assert network_def.network is network
    assert network_def.sampler == parser.get_parsed_content("sampler")
    inferer_id = "inferer" if "inference.json" in files else "validate#inferer"
    inferer = parser.get_parsed_content(inferer_id)
    assert isinstance(inferer, DiffusionSegInferer) and inferer.sampler == network_def.sampler
    assert inferer.num_inference_steps == network_def.num_inference_steps


def test_self_condition_reaches_network_trainer_and_sampler(tmp_path):
    """``--self_condition`` builds the self-conditioning network (also in inference.json, so the trained
    checkpoint loads there), and the training inferer conditions half of the steps; on in the full recipe
    (train.json), off in the demo recipe (measured without it)."""
    for value in (False, True):
        train, infer = ConfigParser(), ConfigParser()
        train.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
        infer.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "demo.json")])
        assert train.get_parsed_content("self_condition") is False
        for parser in (train, infer):
            parser.update({"bundle_root": str(tmp_path), "preset": "XS", "self_condition": value})
        net = train.get_parsed_content("network")
        assert net.self_condition is value and train.get_parsed_content("network_def").self_condition is value
        assert train.get_parsed_content("train#inferer").self_condition_prob == 0.5
        infer.get_parsed_content("network").load_state_dict(net.state_dict())
    full = ConfigParser()
    full.read_config(str(CONFIGS / "train.json"))
    assert full.get_parsed_content("self_condition") is True


@pytest.mark.parametrize("overlay", [None, "demo.json"])
def test_inference_reads_the_model_training_writes(overlay, tmp_path):
    """inference.json samples with the diffusion settings and the network train.json trains: a model trained
    with x0 prediction and read back as an epsilon model segments nothing (the bug this test was written for)."""
    keys = ("regions", "preset", "num_train_timesteps", "noise_schedule", "prediction_type", "self_condition",
            "sampler", "num_inference_steps", "num_ensemble", "threshold")
    extra = [str(CONFIGS / overlay)] if overlay else []
    train, infer = ConfigParser(), ConfigParser()
    train.read_config([str(CONFIGS / "train.json"), *extra])
    infer.read_config([str(CONFIGS / "inference.json"), *extra])
    for parser in (train, infer):
        parser["bundle_root"] = str(tmp_path)
    for key in keys:
        assert infer.get_parsed_content(key) == train.get_parsed_content(key), key
    t_sched, i_sched = train.get_parsed_content("scheduler"), infer.get_parsed_content("scheduler")
    assert i_sched.prediction_type == t_sched.prediction_type
    torch.testing.assert_close(i_sched.alphas_cumprod, t_sched.alphas_cumprod)
    t_net, i_net = train.get_parsed_content("network"), infer.get_parsed_content("network")
    assert {k: v.shape for k, v in t_net.state_dict().items()} == {k: v.shape for k, v in i_net.state_dict().items()}


def test_verify_net_in_out():
    """MONAI's own check of the network's input/output against metadata.json (n=1: 32x32, the "B" preset)."""
    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
         "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"),
         "--num_ensemble", "2", "--num_inference_steps", "2"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "data shape of network is verified with no error" in out.stdout + out.stderr


@pytest.mark.parametrize("use_ema", [False, True])
def test_ema_weights_are_the_ones_validated_and_saved(use_ema, tmp_path):
    """With ``use_ema`` the evaluator, the best-model saver and the checkpoints use Ignite's EMA copy."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
    parser["bundle_root"] = str(tmp_path)
    parser["use_ema"] = use_ema
    network, ema, eval_network = (parser.get_parsed_content(k) for k in ("network", "ema", "eval_network"))
    if use_ema:
        assert ema.ema_model is eval_network and eval_network is not network
        with torch.no_grad():  # the copy follows the network by the configured momentum
            p, e = next(network.parameters()), next(eval_network.parameters())
            p.add_(1.0)
            before = e.clone()
            engine = type("E", (), {"state": type("S", (), {"ema_momentum": parser["ema_momentum"]})()})()
            ema._update_ema_model(engine, "ema_momentum")
            torch.testing.assert_close(e, before + parser["ema_momentum"] * (p - before))
    else:
        assert ema is None and eval_network is network
    assert parser.get_parsed_content("validate#best_saver").save_dict["model"] is eval_network
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["validate"]["evaluator"]["network"] == "@eval_network"
    assert train["train"]["checkpoint_dict"]["ema_model"] == "@eval_network"  # resumed, not re-copied
    assert any("@ema.attach(@train#trainer)" in step for step in train["run"])
    multi = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    assert any("@ema.attach(@train#trainer)" in step for step in multi["run"])


def test_augmentation_keeps_masks_binary(tmp_path):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
    parser["bundle_root"] = str(tmp_path)
    parser["augment"] = True
    from monai.transforms import Compose

    aug = Compose(parser.get_parsed_content("train#augmentation")).set_random_state(0)
    assert len(aug.transforms) == 5
    image = torch.randn(4, 32, 32)
    label = torch.zeros(1, 32, 32)
    label[:, 8:20, 10:24] = 1
    changed = 0
    for _ in range(10):
        out = aug({"image": image.clone(), "label": label.clone()})
        assert out["image"].shape == (4, 32, 32) and out["label"].shape == (1, 32, 32)
        assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 1.0}
        changed += not torch.equal(torch.as_tensor(out["image"]), image)
    assert changed >= 5
    parser["augment"] = False
    assert parser.get_parsed_content("train#augmentation") == []
