# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's CheckpointSaver writing atomically, and with a state dict so the best-metric tracking survives a resume."""

from __future__ import annotations

from typing import Any

from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "ResumableCheckpointSaver"]


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose files are written atomically.

    ignite's ``DiskSaver`` can write a checkpoint to a temporary file in the same folder and ``os.replace`` it
    to its final name (``atomic=True``, ignite's default), so an interrupted save (a killed job, a full disk)
    never leaves a half-written file under the final name. MONAI 1.6.1's ``CheckpointSaver`` builds its
    ``DiskSaver`` with ``atomic=False`` (its comment: the temporary file is readable by its owner only); ignite
    0.5 restores group and others read permission after the rename, so this subclass switches the atomic write
    back on for every checkpoint the saver writes (final, best-metric and interval). A failed save removes its
    temporary file and re-raises; a killed one may leave a ``tmp*`` file in ``save_dir``, never a ``*.pt``.

    Note that ignite's ``Checkpoint`` removes the oldest file *before* writing the new one: with ``n_saved=1``
    an interrupted save leaves no checkpoint at all, atomic or not. Keep ``n_saved >= 2`` for the checkpoints a
    training resumes from. Constructor arguments are those of ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is None:
                continue
            saver = checkpoint.save_handler
            if not hasattr(saver, "_atomic"):  # the private switch of ignite's DiskSaver
                raise RuntimeError(f"{type(saver).__name__} has no atomic mode: this ignite version is not supported")
            saver._atomic = True


class ResumableCheckpointSaver(AtomicCheckpointSaver):
    """:class:`AtomicCheckpointSaver` that can be saved and restored as part of another checkpoint.

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
