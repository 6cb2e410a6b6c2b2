# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Splitting cases into training, validation and test lists: by case (patient), never by slice, seeded."""

from __future__ import annotations

import random
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from monai.data import partition_dataset

from .conventions import DataError

__all__ = ["check_fraction", "check_fractions", "keep_given_split", "split_cases"]


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in [0, 1).

    Raises:
        ValueError: naming ``name`` when ``value`` is outside [0, 1).
    """
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return value


def check_fractions(val_fraction: float, test_fraction: float) -> tuple[float, float]:
    """Validate the validation and test fractions of a split: each in [0, 1), their sum below 1.

    Raises:
        ValueError: naming the fraction that is out of range, or their sum.
    """
    val_fraction, test_fraction = check_fraction("val_fraction", val_fraction), check_fraction(
        "test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}.")
    return val_fraction, test_fraction


def split_cases(
    cases: Sequence[dict[str, Any]], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Split cases into training, validation and test lists, by case (patient), reproducibly.

    Labeled cases are sorted by ``case_id``, shuffled with ``random.Random(seed)`` and cut into
    ``round(n * test_fraction)`` test, ``round(n * val_fraction)`` validation and the rest training cases (at least
    one training case is kept when there is any labeled case). Unlabeled cases (no ``"label"``) always go to
    ``"test"``, for inference. The result does not depend on the order of ``cases``.

    Args:
        cases: items with a unique ``"case_id"``.
        val_fraction: fraction of labeled cases for validation, in [0, 1).
        test_fraction: fraction of labeled cases held out for testing, in [0, 1).
        seed: the shuffle seed.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted by case id.

    Raises:
        ValueError: on fractions outside [0, 1) or summing to 1 or more.
        DataError: on repeated case ids.
    """
    val_fraction, test_fraction = check_fractions(val_fraction, test_fraction)
    ids = [c["case_id"] for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"case ids occur more than once: {dup}.")
    key = itemgetter("case_id")
    labeled = sorted((c for c in cases if c.get("label")), key=key)
    unlabeled = sorted((c for c in cases if not c.get("label")), key=key)
    n = len(labeled)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    while n and n_test + n_val > n - 1:  # keep at least one training case
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    test, val, train = [], [], []
    if n:
        # shuffled with random.Random (not partition_dataset's numpy RandomState) so that a seed gives the same
        # split as the datalists written before; partition_dataset then cuts the shuffled list by counts
        order = list(labeled)
        random.Random(int(seed)).shuffle(order)
        test, val, train = partition_dataset(order, ratios=[n_test, n_val, n - n_test - n_val], shuffle=False)
    return {"training": sorted(train, key=key), "validation": sorted(val, key=key),
            "test": sorted(test, key=key) + unlabeled}


def keep_given_split(
    cases: Sequence[dict[str, Any]], val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Keep the split a data set gives (each case's ``"split"``: ``"training"``, ``"validation"`` or ``"test"``).

    Cases without a ``"split"`` count as training cases. When no case is given for validation,
    ``round(n * val_fraction)`` of the labeled training cases are drawn for it with :func:`split_cases` (seeded);
    test cases stay test cases, labeled or not, and no training case is moved to test except unlabeled ones.

    Args:
        cases: items with a unique ``"case_id"`` and an optional ``"split"``.
        val_fraction: fraction of labeled training cases drawn for validation when none is given, in [0, 1).
        seed: the shuffle seed.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted by case id.
    """
    key = itemgetter("case_id")
    given = {name: [c for c in cases if c.get("split") == name] for name in ("validation", "test")}
    train = [c for c in cases if c.get("split", "training") == "training"]
    split = split_cases(train, 0.0 if given["validation"] else val_fraction, 0.0, seed)
    return {"training": split["training"],
            "validation": sorted(split["validation"] + given["validation"], key=key),
            "test": sorted(split["test"] + given["test"], key=key)}
