# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's CheckpointSaver with a state dict, so the best-metric model tracking survives a resumed training."""

from __future__ import annotations

from typing import Any

from monai.handlers import CheckpointSaver

__all__ = ["ResumableCheckpointSaver"]


class ResumableCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` that can be saved and restored as part of another checkpoint.

    MONAI 1.6.1's ``CheckpointSaver`` has ``load_state_dict`` (the tracking list of its best-metric checkpoint:
    which file holds which score) but no ``state_dict``; its only way to keep that list is
    ``key_metric_save_state=True``, which writes it *into* the best model file, so that file is no longer a plain
    network state dict (which ``monai.bundle.load`` and ``ckpt_export`` expect). This subclass adds
    ``state_dict``, so the training's latest checkpoint can hold the tracking list
    (``save_dict={"model": ..., "best_model_saver": <this handler>}``) and a resumed training keeps
    ``model.pt`` as the best over the whole run, instead of overwriting it with the first validation after the
    restart. Constructor arguments are those of ``CheckpointSaver``.
    """

    def state_dict(self) -> dict[str, Any]:
        """The tracking list of the best-metric checkpoint (empty without ``save_key_metric``)."""
        checkpoint = self._key_metric_checkpoint
        return checkpoint.state_dict() if checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the tracking list written by :meth:`state_dict` (an empty dict is a no-op)."""
        if state_dict:
            super().load_state_dict(state_dict)
