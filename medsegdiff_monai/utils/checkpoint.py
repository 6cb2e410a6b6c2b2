# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Tell a truncated or corrupt checkpoint apart from any other failure, with a message that names the file."""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

__all__ = ["CheckpointError", "load_checkpoint", "check_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read: truncated, corrupt, or not a PyTorch checkpoint of tensors."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(message)
        self.path = os.fspath(path)


def _reason(err: BaseException) -> str:
    # torch's own messages go on for several sentences (and its weights-only one suggests weights_only=False,
    # which is the wrong advice for a damaged file): keep the first sentence
    text = " ".join(str(err).split()).split(". ")[0].strip(" .")
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)`` whose failure on a damaged file is a :class:`CheckpointError`.

    ``torch.load`` fails on a truncated file with errors as different as ``RuntimeError`` (zip central directory
    missing), ``OSError``, ``EOFError`` or ``KeyError``, none naming the file, and on a file that is not a
    checkpoint with a message recommending ``weights_only=False``. This function turns all of them into one
    error that names the file, its size and what to do. A missing file, a folder or a permission problem keeps
    its own ``OSError``.

    Args:
        path: the checkpoint file.
        map_location: passed to ``torch.load``.

    Returns:
        the loaded object (a state dict, or a dict of state dicts as ``monai.handlers.CheckpointSaver`` writes).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file cannot be read as a weights-only PyTorch checkpoint.
    """
    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # torch.load raises anything from RuntimeError to KeyError on a damaged file
        size = os.path.getsize(path)
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower() and zipfile.is_zipfile(path):
            # a complete file whose pickle holds objects other than tensors and containers: not damaged
            raise CheckpointError(
                path,
                f"{path}: not a checkpoint of weights ({size} bytes): it holds Python objects that "
                f"torch.load(weights_only=True) refuses to load ({_reason(err)}). Use a checkpoint written by the "
                "bundle's training (models/model.pt or checkpoint_epoch=N.pt).",
            ) from err
        raise CheckpointError(
            path,
            f"{path}: checkpoint is truncated or corrupt, or not a PyTorch file ({size} bytes): cannot be read "
            f"({_reason(err)}). An interrupted save or copy leaves such a file: copy it again, or retrain.",
        ) from err


def check_checkpoint(path: str | os.PathLike) -> None:
    """Raise a :class:`CheckpointError` naming ``path`` unless it loads as a weights-only PyTorch checkpoint.

    The file is read completely (on the CPU) and the result dropped: use it before a long run, so a damaged file
    fails in seconds and with its name, not in the middle of an engine.

    Args:
        path: the checkpoint file.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        CheckpointError: when the file cannot be read.
    """
    load_checkpoint(path, map_location="cpu")
