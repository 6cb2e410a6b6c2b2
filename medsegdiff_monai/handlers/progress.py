# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Log-friendly progress of a long evaluation: case i/N, its time, elapsed time and estimated time left."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["ProgressLogger"]


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLogger:
    """After every iteration, log ``case i/N <names>: <s> | elapsed <h:mm:ss> | ETA <h:mm:ss>``.

    Ignite's ``ProgressBar`` (also in the bundle's configs) redraws one tqdm line: right for a terminal, but a
    log file of a multi-hour evaluation gets control characters and no case names. This handler writes one plain
    log line per iteration instead. The estimate is the mean time of the cases computed so far times the cases
    left; cases read back by a resumed run (:class:`~medsegdiff_monai.engines.ResumableEvaluator`, whose
    ``last_resumed`` is True) are marked "resumed" and not counted in the mean, so they do not make the estimate
    optimistic.

    Args:
        name: the logger name (the bundle's ``logging.conf`` prints every logger at INFO).
        batch_transform: item names from ``engine.state.batch`` (e.g. ``lambda b: [x["case_id"] for x in b]``);
            None: no names.
        epoch_level: also log a summary at the end of each epoch.

    Example::

        ProgressLogger(batch_transform=lambda batch: [item["case_id"] for item in batch]).attach(evaluator)
    """

    def __init__(
        self,
        name: str = "ProgressLogger",
        batch_transform: Callable[[Any], Any] | None = None,
        epoch_level: bool = True,
    ) -> None:
        self.logger = logging.getLogger(name)
        self.batch_transform = batch_transform
        self.epoch_level = bool(epoch_level)
        self._start = self._last = 0.0
        self._computed_time = 0.0
        self._computed = 0
        self._resumed = 0

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine``'s epoch start, iteration completion and epoch completion."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._start = self._last = time.perf_counter()
        self._computed_time, self._computed, self._resumed = 0.0, 0, 0

    def eta(self, remaining: int) -> float | None:
        """Seconds left for ``remaining`` iterations at the mean time of the computed ones (None before any)."""
        if self._computed == 0:
            return None
        return self._computed_time / self._computed * remaining

    def iteration_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        took, self._last = now - self._last, now
        resumed = bool(getattr(engine, "last_resumed", False))
        if resumed:
            self._resumed += 1
        else:
            self._computed += 1
            self._computed_time += took
        total = engine.state.epoch_length
        i = (engine.state.iteration - 1) % total + 1 if total else engine.state.iteration
        names = ""
        if self.batch_transform is not None:
            got = self.batch_transform(engine.state.batch)
            names = " " + ", ".join(str(n) for n in (got if isinstance(got, (list, tuple)) else [got]))
        eta = self.eta(total - i) if total else None
        self.logger.info(
            f"case {i}/{total if total else '?'}{names}: {took:.1f} s{' (resumed)' if resumed else ''} | elapsed "
            f"{_hms(now - self._start)} | ETA {_hms(eta) if eta is not None else '?'}"
        )

    def epoch_completed(self, engine: Engine) -> None:
        self.logger.info(
            f"{self._computed + self._resumed} case batch(es) in {_hms(time.perf_counter() - self._start)}: "
            f"{self._computed} computed, {self._resumed} resumed from written predictions"
        )

    def __call__(self, engine: Engine) -> None:
        self.iteration_completed(engine)
