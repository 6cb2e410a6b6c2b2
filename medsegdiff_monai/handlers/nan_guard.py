# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Stop training on a non-finite loss before the optimizer step can write NaN into the weights."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine

from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

__all__ = ["NonFiniteLossError", "NaNLossGuard"]


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss is NaN or infinite."""


class NaNLossGuard:
    """Raise a clear error as soon as the loss is NaN or infinite, before ``loss.backward()`` and the optimizer.

    ignite's ``TerminateOnNan`` checks after the whole iteration, when the optimizer has already written NaN into
    the weights, and ends the run quietly with a successful exit. This handler listens to MONAI's
    ``IterationEvents.LOSS_COMPLETED`` (fired by ``SupervisedTrainer`` between the loss and the backward pass),
    so the weights and every checkpoint written so far stay finite, and the run exits with an error that says
    where it happened and what to try. Do not combine it with ``CheckpointSaver(save_final=True)``, which saves
    on any exception.

    Args:
        loss_key: key of the loss in ``engine.state.output``.
    """

    def __init__(self, loss_key: str = CommonKeys.LOSS) -> None:
        self.loss_key = loss_key

    def attach(self, engine: Engine) -> None:
        """Register the check on ``engine`` (a MONAI ``SupervisedTrainer``)."""
        if not engine.has_event_handler(self, IterationEvents.LOSS_COMPLETED):
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[self.loss_key]  # type: ignore[index]
        value = float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
                "training stopped before the optimizer step, so the weights and saved checkpoints are unaffected. "
                "Check the input intensities (normalised per channel?) and labels, or lower the learning rate."
            )
