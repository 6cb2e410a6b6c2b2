# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Options as MONAI does them (``StrEnum`` + ``look_up_option``), with errors that name the argument."""

from __future__ import annotations

from enum import Enum

from monai.utils import look_up_option

__all__ = ["look_up_named_option"]


def look_up_named_option(name: str, value: object, supported: type[Enum]) -> str:
    """``monai.utils.look_up_option`` whose error names the argument (MONAI's message names only the value).

    Args:
        name: the argument's name, e.g. "sampler".
        value: the value given.
        supported: the ``StrEnum`` of supported values.

    Returns:
        the value as a plain string.

    Raises:
        ValueError: ``"`name` must be one of (...), got value"``.
    """
    try:
        return str(look_up_option(value, supported).value)  # type: ignore[union-attr]
    except (ValueError, TypeError):
        raise ValueError(f"`{name}` must be one of {tuple(m.value for m in supported)}, got {value!r}.") from None
