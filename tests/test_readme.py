# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The README's Python quick start runs as written, and its commands match what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_python_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    prob, out = namespace["prob"], namespace["out"]
    assert prob.shape == (1, 1, 64, 64) and 0.0 <= float(prob.min()) and float(prob.max()) <= 1.0
    assert set(out) >= {"prob", "mask", "uncertainty", "samples"}
    assert out["samples"].shape == (1, 2, 1, 64, 64)
    assert torch.equal(out["prob"], prob)  # seeded: the same ensemble twice
    assert namespace["trainer"].state.iteration == 1


def test_ci_runs_the_readme_commands():
    ci = (REPO / ".ci" / "run").read_text()
    install = 'pip install torch==2.13.0 -e ".[test]"'
    assert install in README and install in ci
    assert "python -m pytest -ra" in README and ci.rstrip().endswith("python -m pytest -ra")
    assert "python -m monai.bundle run training --config_file bundle/configs/train.json" in README


def test_architecture_section_names_existing_files():
    # the architecture map matches the code: every module it names exists where it says
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ", 1) for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10
    for where, holds in rows:
        for path in re.findall(r"`([^`]+)`", where):
            base = REPO / ("" if path.startswith(("bundle", "benchmarks")) else "medsegdiff_monai") / path
            assert list(base.parent.glob(base.name)), (where, path)
            folder = base if base.is_dir() else base.parent
            for name in re.findall(r"`([\w/]+\.(?:py|json|conf))`", holds):  # files named in the description
                assert list(folder.rglob(name)), (where, name)


def test_readme_image2d_commands_are_the_tested_ones():
    """The README's 2D commands are the ones the image2d end-to-end test runs, and every config it names exists."""
    from test_image2d_e2e import EVAL, TRAIN

    for configs in (TRAIN, EVAL):
        assert f'--config_file "{configs.replace("configs/", "bundle/configs/")}"' in README
    named = set(re.findall(r"bundle/configs/([a-z0-9_]+\.json)", README))
    assert "image2d.json" in named
    for name in named:
        assert (REPO / "bundle" / "configs" / name).is_file(), name
    from medsegdiff_monai import transforms

    named_components = re.findall(r"`(get_image2d_\w+|SaveMaskPNGd|SaveMapTIFFd)`", README)
    assert len(set(named_components)) == 5
    for component in named_components:  # the components the README names exist
        assert hasattr(transforms, component), component
