# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""An Ignite handler that gives a bundle training run a wall-time budget (used by ``benchmarks/quality.py``).

The bundle has no wall-time stop; ``benchmarks/quality.py`` adds this handler to ``train#trainer#train_handlers``
through a config overlay it writes, so the bundle's own configs are not edited.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events

__all__ = ["WallTimeBudget"]


class WallTimeBudget:
    """Stop training after ``budget`` seconds, save the final weights and write timing statistics.

    The clock starts at the trainer's ``STARTED`` event (after the data set is cached and the network built), the
    budget is checked after every iteration; at the end (``COMPLETED``, also fired after a terminate) the network's
    state dict is saved as ``{"model": ...}`` (the format ``CheckpointLoader`` in ``evaluate.json`` reads) and a
    JSON file records the epochs and iterations done, the training seconds and the time of each epoch (handlers
    included), and the CPU seconds the process used meanwhile (all threads; on a shared machine this is the work
    the budget bought).

    Args:
        budget: wall-time budget in seconds; None or <= 0: no stop (statistics only).
        stats_file: the JSON file to write.
        network: the network whose final weights to save; None: no save.
        save_path: where to save the weights (e.g. ``<ckpt_dir>/model.pt``).
    """

    def __init__(
        self,
        budget: float | None,
        stats_file: str | os.PathLike,
        network: torch.nn.Module | None = None,
        save_path: str | os.PathLike | None = None,
    ) -> None:
        self.budget = float(budget) if budget else 0.0
        self.stats_file = Path(stats_file)
        self.network = network
        self.save_path = Path(save_path) if save_path else None
        self.start = 0.0
        self.cpu_start = 0.0
        self.epoch_ends: list[float] = []
        self.stopped_by_budget = False

    def attach(self, engine: Engine) -> None:
        """Register the handler's events on a trainer.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def _check(self, engine: Engine) -> None:
        if self.budget > 0 and time.perf_counter() - self.start >= self.budget:
            self.stopped_by_budget = True
            engine.terminate()

    def _epoch(self, engine: Engine) -> None:
        self.epoch_ends.append(time.perf_counter() - self.start)

    def _completed(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self.start
        if self.network is not None and self.save_path is not None:
            self.save_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.network.state_dict()}, self.save_path)
        ends = self.epoch_ends
        stats = {
            "train_seconds": seconds,
            "train_cpu_seconds": time.process_time() - self.cpu_start,
            "epochs_completed": len(ends),
            "iterations": int(engine.state.iteration),
            "max_epochs": int(engine.state.max_epochs or 0),
            "stopped_by_budget": self.stopped_by_budget,
            "epoch_seconds": [b - a for a, b in zip([0.0] + ends[:-1], ends)],
            "torch_threads": torch.get_num_threads(),
        }
        self.stats_file.parent.mkdir(parents=True, exist_ok=True)
        self.stats_file.write_text(json.dumps(stats, indent=2) + "\n")
