from __future__ import annotations

import math
import sys

import pytest
import torch
from parameterized import parameterized

from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedTrainer
from medsegdiff_monai.handlers import NaNLossGuard, NonFiniteLossError
from medsegdiff_monai.utils import find_bundle_root, latest_checkpoint
from medsegdiff_monai.utils.bundle import _config_files_from_argv


@parameterized.expand(
    [
        (["run", "training", "--config_file", "a/configs/train.json"], ["a/configs/train.json"]),
        (["run", "--config_file=b/c.json"], ["b/c.json"]),
        (["run", "--config_file", "['x/configs/train.json','x/configs/demo.json']"], ["x/configs/train.json", "x/configs/demo.json"]),
        (["run", "training"], []),
    ]
)
def test_config_files_from_argv(argv, expected):
    assert _config_files_from_argv(argv) == expected


def test_find_bundle_root_from_argv(tmp_path, monkeypatch):
    (tmp_path / "mybundle" / "configs").mkdir(parents=True)
    cfg = tmp_path / "mybundle" / "configs" / "train.json"
    monkeypatch.setattr(sys, "argv", ["x", "run", "--config_file", str(cfg)])
    assert find_bundle_root() == str((tmp_path / "mybundle").resolve())


def test_find_bundle_root_fallbacks(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root() == str((tmp_path / "bundle").resolve())
    (tmp_path / "configs").mkdir()
    assert find_bundle_root() == str(tmp_path.resolve())
    assert find_bundle_root(default=str(tmp_path / "elsewhere")) == str((tmp_path / "elsewhere").resolve())


def test_find_bundle_root_from_workflow(tmp_path, monkeypatch, capsys):
    """A workflow run from an unrelated working directory resolves the bundle it was loaded from."""
    root = tmp_path / "unpacked" / "some_bundle"
    (root / "configs").mkdir(parents=True)
    cfg = root / "configs" / "inference.json"
    cfg.write_text('{"bundle_root": "$medsegdiff_monai.utils.find_bundle_root()", "imports": ["$import medsegdiff_monai"], "run": ["$print(@bundle_root)"]}')
    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.chdir(tmp_path)
    (root / "configs" / "metadata.json").write_text("{}")
    wf = ConfigWorkflow(config_file=str(cfg), workflow_type=None, logging_file=False)
    wf.initialize()
    wf.run()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(root.resolve())


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
