# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Small helpers the bundle configs call: where the bundle lives and which checkpoint to resume from."""

from __future__ import annotations

import ast
import inspect
import os
import re
import sys
from pathlib import Path

__all__ = ["find_bundle_root", "latest_checkpoint"]


def _root_of_config_dir(config_dir: Path) -> Path:
    # the same rule as monai.bundle.ConfigWorkflow.run: "<root>/configs/x.json" -> "<root>"
    return config_dir.parent if config_dir.name == "configs" else config_dir


def _config_files_from_argv(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        value = value.strip()
        if value.startswith("["):  # fire's list syntax: "['a.json','b.json']"
            try:
                return [str(v) for v in ast.literal_eval(value)]
            except (ValueError, SyntaxError):
                return [v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip()]
        return [value]
    return []


def find_bundle_root(default: str | None = None) -> str:
    """Find the folder of the bundle whose configs are being run, so that paths resolve from it.

    MONAI bundles conventionally set ``"bundle_root": "."`` and must be run from inside the bundle folder. This
    bundle resolves its root wherever it is unpacked and wherever it is run from, in this order:

    1. the ``config_root_path`` of the ``monai.bundle.ConfigWorkflow`` that is parsing the config (found on the
       call stack: ``python -m monai.bundle run``, ``monai.bundle.load`` and ``torchrun`` go through it);
    2. the first ``--config_file`` on the command line (``ckpt_export``, ``verify_net_in_out`` parse configs
       without a workflow);
    3. ``default`` if given, else the working directory if it holds ``configs/``, else ``./bundle``.

    An explicit ``--bundle_root DIR`` on the command line always wins: it overrides this expression.

    Args:
        default: the folder to fall back on when neither a workflow nor a ``--config_file`` names one.

    Returns:
        the absolute path of the bundle root.
    """
    from monai.bundle.workflows import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigWorkflow) and getattr(candidate, "config_root_path", None) is not None:
                return str(_root_of_config_dir(Path(candidate.config_root_path)).resolve())
            frame = frame.f_back
    finally:
        del frame

    files = _config_files_from_argv(sys.argv)
    if files:
        return str(_root_of_config_dir(Path(files[0]).resolve().parent))
    if default is not None:
        return str(Path(default).resolve())
    cwd = Path.cwd()
    if (cwd / "configs").is_dir():
        return str(cwd)
    return str((cwd / "bundle").resolve())


_EPOCH = re.compile(r"=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """Return the newest resumable checkpoint in ``ckpt_dir`` written by ``monai.handlers.CheckpointSaver``.

    ``CheckpointSaver(file_prefix=prefix, save_interval=1, n_saved=1)`` writes ``<prefix>_epoch=<N>.pt`` (or
    ``_iteration=``); the one with the largest ``N`` is the latest.

    Args:
        ckpt_dir: the folder the checkpoints are written to.
        prefix: ``file_prefix`` given to the ``CheckpointSaver``.

    Returns:
        the path of the latest checkpoint, or ``None`` when there is none (a fresh run).
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{prefix}_*.pt"):
        match = _EPOCH.search(path.name)
        if match:
            found.append((int(match.group(1)), path.stat().st_mtime, path))
    if not found:
        return None
    return str(max(found)[2])
