from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from parameterized import parameterized

from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from medsegdiff_monai.data import DataError, make_demo_data
from medsegdiff_monai.handlers import NaNLossGuard, NonFiniteLossError
from medsegdiff_monai.utils import latest_checkpoint, prepare_datalist


CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_bundle_root_from_the_working_directory(config, tmp_path, monkeypatch):
    """The repository root (a ``bundle/configs`` below) gives ``bundle``; any other folder is the bundle itself."""
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    for cwd, expected in [(tmp_path, tmp_path / "bundle"), (tmp_path / "bundle", tmp_path / "bundle")]:
        monkeypatch.chdir(cwd)
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        assert parser.get_parsed_content("bundle_root") == str(expected)
    parser = ConfigParser()  # --bundle_root wins
    parser.read_config(str(CONFIGS / config))
    parser["bundle_root"] = str(tmp_path / "elsewhere")
    assert parser.get_parsed_content("ckpt_dir") == str(tmp_path / "elsewhere" / "models")


@pytest.mark.parametrize("where", ["repository root", "bundle folder", "--bundle_root"])
def test_training_workflow_prepares_data_under_its_bundle_root(where, tmp_path, monkeypatch):
    """``monai.bundle run``'s workflow, from the repository root, inside the bundle, or with ``--bundle_root``:
    ``initialize`` (not parsing) writes the datalist under the bundle root it resolved."""
    import shutil

    from monai.bundle import ConfigWorkflow
    from monai.utils import set_determinism

    bundle = tmp_path / "repo" / "bundle"
    shutil.copytree(CONFIGS, bundle / "configs")
    data = tmp_path / "cases"
    make_demo_data(data, num_cases=3, shape=(16, 16, 8), seed=2)
    cwd, root, config, overrides = {
        "repository root": (tmp_path / "repo", bundle, "bundle/configs/train.json", {}),
        "bundle folder": (bundle, bundle, "configs/train.json", {}),
        "--bundle_root": (tmp_path, tmp_path / "other", str(bundle / "configs" / "train.json"),
                          {"bundle_root": str(tmp_path / "other")}),
    }[where]
    monkeypatch.chdir(cwd)
    workflow = ConfigWorkflow(config_file=config, workflow_type=None, logging_file=False, dataset_dir=str(data),
                              **overrides)
    assert workflow.parser.get_parsed_content("bundle_root") == str(root)
    assert not (root / "data").exists()
    try:
        workflow.initialize()
    finally:
        set_determinism(None)
    listing = json.loads((root / "data" / "datalist.json").read_text())
    assert listing["numTraining"] + listing["numValidation"] + listing["numTest"] == 3
    assert workflow.parser.get_parsed_content("ckpt_dir") == str(root / "models")


def test_parsing_the_training_config_writes_nothing(tmp_path):
    """Data preparation is the ``initialize`` step ``prepare_data``: building the components writes no file."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
    parser["bundle_root"] = str(tmp_path)
    for id_ in ("datalist", "train#preprocessing", "validate#preprocessing", "network_def", "train#inferer"):
        parser.get_parsed_content(id_)
    assert parser.get_parsed_content("datalist") == str(tmp_path / "data" / "datalist.json")
    assert list(tmp_path.iterdir()) == []
    assert "@prepare_data" in parser["initialize"]
    assert "@prepare_data" in json.loads((CONFIGS / "multi_gpu_train.json").read_text())["initialize"]


def test_prepare_datalist(tmp_path, caplog):
    demo, listing = tmp_path / "demo", tmp_path / "datalist.json"
    out = prepare_datalist(demo, listing, demo_dir=demo, num_demo_cases=5, demo_shape=(16, 16, 8))
    assert out == str(listing.resolve()) and len([p for p in demo.iterdir() if p.is_dir()]) == 5
    first = json.loads(listing.read_text())
    assert first["numTraining"] + first["numValidation"] + first["numTest"] == 5
    stamp = listing.stat().st_mtime_ns
    prepare_datalist(demo, listing, demo_dir=demo)  # present: used as it is
    assert listing.stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    make_demo_data(other, num_cases=3, shape=(16, 16, 8), seed=1)
    prepare_datalist(other, listing, demo_dir=demo)  # another folder: rebuilt for it
    assert json.loads(listing.read_text())["numTraining"] + json.loads(listing.read_text())["numValidation"] <= 3
    mine = tmp_path / "mine.json"
    mine.write_text('{"training": []}')
    prepare_datalist(other, mine)  # a datalist this package did not write is never overwritten
    assert mine.read_text() == '{"training": []}'
    with pytest.raises(DataError, match="dataset_dir not found"):
        prepare_datalist(tmp_path / "missing", tmp_path / "x.json", demo_dir=demo)


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for n in (2, 10, 9):
        torch.save({"epoch": torch.tensor(n)}, tmp_path / f"checkpoint_epoch={n}.pt")
    torch.save({}, tmp_path / "model.pt")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")


class _ScaledLoss(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, pred, target):
        return torch.nn.functional.mse_loss(pred, target) * self.scale


@parameterized.expand([(float("nan"),), (float("inf"),)])
def test_nan_guard_stops_before_optimizer_step(scale):
    net = torch.nn.Linear(3, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=_ScaledLoss(scale),
        train_handlers=[NaNLossGuard()],
    )
    with pytest.raises(NonFiniteLossError, match="iteration 1"):
        trainer.run()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), "the optimizer must not have stepped on a non-finite loss"


def test_nan_guard_passes_finite_loss():
    net = torch.nn.Linear(3, 1)
    data = [{"image": torch.randn(2, 3), "label": torch.randn(2, 1)} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=torch.nn.MSELoss(),
        train_handlers=[NaNLossGuard()],
    )
    trainer.run()
    assert trainer.state.iteration == 6 and math.isfinite(float(trainer.state.output[0]["loss"]))
