# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The error policy for cases with problems: raise one error that names them, or skip them with a warning."""

from __future__ import annotations

import warnings
from typing import Any

from ..utils.enums import OnError, look_up_named_option
from .conventions import DataError

__all__ = ["problem_summary", "apply_error_policy"]


def problem_summary(problems: dict[str, list[str]], limit: int = 3) -> str:
    """One line naming the cases with problems and the first ``limit`` problems.

    Args:
        problems: case id -> its problems.
        limit: how many problems to spell out; the rest are counted.
    """
    lines = [f"case {cid}: {p}" for cid, probs in problems.items() for p in probs]
    text = " | ".join(lines[:limit])
    if len(lines) > limit:
        text += f" | ... and {len(lines) - limit} more (run `medsegdiff-monai check_data` for the full report)"
    return f"{len(problems)} case(s) have problems: {text}"


def apply_error_policy(
    cases: list[dict[str, Any]], problems: dict[str, list[str]], on_error: str = OnError.RAISE
) -> list[dict[str, Any]]:
    """Apply ``on_error`` to the cases of a data folder.

    Args:
        cases: items with a ``"case_id"``.
        problems: case id -> its problems (cases without problems absent or with an empty list).
        on_error: ``"raise"`` or ``"skip"`` (:class:`~medsegdiff_monai.utils.enums.OnError`).

    Returns:
        the cases without problems (all of them when there is none).

    Raises:
        DataError: with ``on_error="raise"`` when any case has a problem (:func:`problem_summary`).
        ValueError: on another ``on_error``.
    """
    on_error = look_up_named_option("on_error", on_error, OnError)
    problems = {cid: probs for cid, probs in problems.items() if probs}
    if not problems:
        return cases
    if on_error == OnError.RAISE:
        raise DataError(problem_summary(problems))
    warnings.warn(f"skipping {problem_summary(problems, limit=len(problems) * 10)}", stacklevel=3)
    return [c for c in cases if c["case_id"] not in problems]
