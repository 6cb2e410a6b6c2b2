# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Options as MONAI does them (``StrEnum`` + ``look_up_option``), with errors that name the argument."""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum

from monai.utils import StrEnum, look_up_option

__all__ = ["DataLayout", "OnError", "TimestepSampling", "look_up_named_option"]


class DataLayout(StrEnum):
    """The data-folder layouts built into :mod:`medsegdiff_monai.data.layouts` (more can be registered there).

    - ``AUTO``: detect the layout (:func:`~medsegdiff_monai.data.detect_layout`).
    - ``BRATS2021``: case folders ``BraTS2021_NNNNN``.
    - ``BRATS2020``: case folders ``BraTS20_Training_NNN`` / ``BraTS20_Validation_NNN``.
    - ``BRATS``: any folder-per-case layout named ``<case>/<case>_<modality>.nii.gz``.
    - ``MSD``: the Medical Segmentation Decathlon Task01_BrainTumour folder (4D images, ``dataset.json``).
    - ``IMAGE2D``: 2D images (PNG, JPEG, BMP, TIFF) and mask images in two folders, or a CSV of pairs (ISIC,
      REFUGE-2, DDTI style; :mod:`~medsegdiff_monai.data.image2d_layout`).
    """

    AUTO = "auto"
    BRATS2021 = "brats2021"
    BRATS2020 = "brats2020"
    BRATS = "brats"
    MSD = "msd"
    IMAGE2D = "image2d"


class OnError(StrEnum):
    """What to do with the cases of a data folder that have problems.

    - ``RAISE``: raise one :class:`~medsegdiff_monai.data.DataError` summarising every problem.
    - ``SKIP``: leave those cases out, with a warning naming them.
    """

    RAISE = "raise"
    SKIP = "skip"


class TimestepSampling(StrEnum):
    """How training draws the diffusion timestep of each sample.

    - ``UNIFORM``: ``t`` uniform in ``[0, T)`` (the paper, DDPM).
    - ``LOGIT_NORMAL``: ``t = floor(T * sigmoid(n))`` with ``n ~ N(mean, std)`` (Esser et al. 2024, "Scaling
      rectified flow transformers", section 3.1); a positive mean puts more samples at the noisy end, where a
      few-step sampler starts.
    """

    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit_normal"


def look_up_named_option(name: str, value: object, supported: type[Enum] | Collection[str]) -> str:
    """``monai.utils.look_up_option`` whose error names the argument (MONAI's message names only the value).

    Args:
        name: the argument's name, e.g. "sampler".
        value: the value given.
        supported: the ``StrEnum`` of supported values, or a collection of strings (e.g. the keys of a registry
            that can grow at run time; for a mapping, its keys).

    Returns:
        the value as a plain string.

    Raises:
        ValueError: ``"`name` must be one of (...), got value"``.
    """
    choices = tuple(m.value for m in supported) if isinstance(supported, type) else tuple(supported)
    try:  # a mapping's keys as a tuple: look_up_option would return the mapping's value
        found = look_up_option(value, supported if isinstance(supported, type) else choices)
    except (ValueError, TypeError):
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.") from None
    return str(found.value if isinstance(found, Enum) else found)
