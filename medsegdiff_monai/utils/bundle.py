# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Small helpers the bundle configs call: where the bundle lives, its data, which checkpoint to resume from."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path


__all__ = ["find_bundle_root", "latest_checkpoint", "prepare_datalist"]

logger = logging.getLogger(__name__)


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
    """Return the newest readable checkpoint in ``ckpt_dir`` written by ``monai.handlers.CheckpointSaver``.

    ``CheckpointSaver(file_prefix=prefix, save_interval=1, n_saved=2)`` writes ``<prefix>_epoch=<N>.pt`` (or
    ``_iteration=``); the one with the largest ``N`` is the latest. Each candidate, newest first, is read
    (:func:`medsegdiff_monai.utils.check_checkpoint`): a truncated or corrupt one (a copy cut short, a full disk)
    is skipped with a warning naming it, and the next newest is used. When checkpoints exist but none can be
    read, this raises rather than returning ``None``, which would silently start the training from scratch.

    Args:
        ckpt_dir: the folder the checkpoints are written to.
        prefix: ``file_prefix`` given to the ``CheckpointSaver``.

    Returns:
        the path of the newest readable checkpoint, or ``None`` when there is none (a fresh run).

    Raises:
        medsegdiff_monai.utils.CheckpointError: when every checkpoint found is unreadable; the message names them
            (pass ``--resume false`` to train from scratch anyway).
    """
    from .checkpoint import CheckpointError, check_checkpoint

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
    unreadable = []
    for _, _, path in sorted(found, reverse=True):
        try:
            check_checkpoint(path)
        except CheckpointError as err:
            logger.warning(f"not resuming from {path}, skipped: {err}")
            unreadable.append(path)
            continue
        if unreadable:
            logger.warning(f"resuming from {path}, the newest readable checkpoint")
        return str(path)
    names = ", ".join(p.name for p in unreadable)
    raise CheckpointError(
        unreadable[0],
        f"{folder}: no checkpoint to resume from can be read ({names}: truncated or corrupt). Pass --resume false "
        "to train from scratch, or restore or delete these files.",
    )


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _generated_datalist_source(path: Path) -> Path | None:
    """The data folder a datalist written by this package was built from; None for any other file."""
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict) or not str(content.get("generated_by", "")).startswith("medsegdiff_monai"):
        return None
    data_dir = Path(str(content.get("data_dir", "")))
    return (path.parent / data_dir).resolve() if not data_dir.is_absolute() else data_dir.resolve()


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    datalist_file: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    num_demo_cases: int = 10,
    demo_shape: Sequence[int] = (96, 96, 64),
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> str:
    """Make sure the datalist the bundle trains and evaluates on exists, and return its path.

    - When ``dataset_dir`` is ``demo_dir`` and holds no case yet, the synthetic demo data set is generated there
      (:func:`medsegdiff_monai.data.make_demo_data`, BraTS 2021 layout): the bundle trains out of the box.
    - ``datalist_file`` is written with :func:`medsegdiff_monai.data.write_datalist` (split by case, seeded)
      when it does not exist, or when it is a datalist this package wrote for another data folder (switching
      ``--dataset_dir`` rebuilds it). A datalist written by anyone else is used as it is, never overwritten.
    - The input data folder is only read.

    Under ``torch.distributed`` only rank 0 writes; the other ranks wait for it.

    Args:
        dataset_dir: the data folder (BraTS 2020/2021 case folders, or MSD Task01_BrainTumour).
        datalist_file: the datalist JSON to use or write.
        demo_dir: the folder of the demo data set, generated on first use when ``dataset_dir`` is this folder.
        num_demo_cases: number of demo cases to generate.
        demo_shape: volume shape of the demo cases.
        val_fraction: fraction of labeled cases for validation (see :func:`medsegdiff_monai.data.split_cases`).
        test_fraction: fraction of labeled cases held out for testing.
        seed: seed of the demo data and of the split.

    Returns:
        the absolute path of the datalist file.

    Raises:
        medsegdiff_monai.data.DataError: naming the folder or case when the data cannot be used.
    """
    from medsegdiff_monai.data import DataError, make_demo_data, write_datalist

    data = Path(dataset_dir).expanduser().resolve()
    out = Path(datalist_file).expanduser().resolve()
    is_demo = demo_dir is not None and data == Path(demo_dir).expanduser().resolve()
    if _is_rank0():
        if is_demo and not (data.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir())):
            logger.info(f"generating the synthetic demo data set ({num_demo_cases} cases) in {data}")
            make_demo_data(data, num_cases=num_demo_cases, seed=seed, shape=demo_shape)
        if not data.is_dir():
            raise DataError(
                f"{data}: dataset_dir not found. Pass --dataset_dir with a BraTS 2020/2021 or MSD Task01_BrainTumour "
                "folder, or leave it unset to use the synthetic demo data."
            )
        rebuild = not out.is_file()
        if not rebuild:
            source = _generated_datalist_source(out)
            if source is not None and source != data:
                logger.info(f"{out} was built for {source}; rebuilding it for {data}")
                rebuild = True
        if rebuild:
            dl = write_datalist(data, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                overwrite=True)
            logger.info(
                f"wrote {out}: {dl['numTraining']} training, {dl['numValidation']} validation, {dl['numTest']} test "
                f"case(s) from {data} ({dl['layout']} layout)"
            )
    _barrier()
    return str(out)
