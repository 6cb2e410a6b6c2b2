# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Which checkpoint a training resumes from: the newest readable one ``CheckpointSaver`` wrote."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .checkpoint import CheckpointError, check_checkpoint

__all__ = ["latest_checkpoint"]

logger = logging.getLogger(__name__)

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
