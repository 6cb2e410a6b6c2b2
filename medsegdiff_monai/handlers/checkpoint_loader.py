# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's CheckpointLoader with a clear error, naming the file, when the checkpoint is truncated or corrupt."""

from __future__ import annotations

from ignite.engine import Engine

from monai.handlers import CheckpointLoader

from medsegdiff_monai.utils.checkpoint import check_checkpoint

__all__ = ["CheckedCheckpointLoader"]


class CheckedCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` that checks the file before loading it.

    MONAI 1.6.1's loader calls ``torch.load`` inside the engine's ``STARTED`` event, so a truncated or corrupt
    file ends the run with an engine traceback from deep inside ``torch.load`` that does not name the file (and,
    for some damage, recommends ``weights_only=False``). This subclass first reads the file with
    :func:`medsegdiff_monai.utils.check_checkpoint`, which raises a
    :class:`~medsegdiff_monai.utils.CheckpointError` (a ``ValueError``) naming the file and saying it is
    truncated or corrupt; then MONAI's loading runs unchanged. The check reads the file once more than MONAI
    does (MONAI's ``__call__`` gives no way to pass it an already loaded checkpoint): a fraction of a second
    for this bundle's checkpoints, against minutes of evaluation or training.

    Constructor arguments are those of ``CheckpointLoader``; like it, the handler loads on the engine's
    ``STARTED`` event, before the first batch is read.

    Raises:
        medsegdiff_monai.utils.CheckpointError: from ``__call__``, when ``load_path`` is truncated, corrupt or
            not a checkpoint.
        FileNotFoundError: from ``__call__``, when ``load_path`` does not exist.
    """

    def __call__(self, engine: Engine) -> None:
        """Check the file, then load it into ``load_dict`` as ``CheckpointLoader`` does."""
        check_checkpoint(self.load_path)
        super().__call__(engine)
