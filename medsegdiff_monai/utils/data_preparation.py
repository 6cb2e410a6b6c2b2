# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The bundle's explicit data-preparation step: the demo data set and the datalist, written before training.

``train.json`` runs :func:`prepare_datalist` in its ``initialize`` section (``"prepare_data"``), the place MONAI
bundles keep set-up work: parsing a config never writes files, and the step shows in the config.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .distributed import barrier, is_rank0

__all__ = ["prepare_datalist"]

logger = logging.getLogger(__name__)


def _generated_datalist_source(path: Path) -> Path | None:
    """The data folder a datalist written by this package was built from; None for any other file."""
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict) or not str(content.get("generated_by", "")).startswith("medsegdiff_monai"):
        return None
    data_dir = Path(str(content.get("data_dir", "")))
    return (path.parent / data_dir).resolve() if not data_dir.is_absolute() else data_dir.resolve()


def prepare_datalist(
    dataset_dir: str | os.PathLike,
    datalist_file: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    num_demo_cases: int = 10,
    demo_shape: Sequence[int] = (96, 96, 64),
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    demo_layout: str = "brats2021",
) -> str:
    """Make sure the datalist the bundle trains and evaluates on exists, and return its path.

    - When ``dataset_dir`` is ``demo_dir`` and holds no case yet, the synthetic demo data set is generated there
      (:func:`medsegdiff_monai.data.make_demo_data`, BraTS 2021 layout or ``demo_layout``): the bundle trains out
      of the box.
    - ``datalist_file`` is written with :func:`medsegdiff_monai.data.write_datalist` (split by case, seeded)
      when it does not exist, or when it is a datalist this package wrote for another data folder (switching
      ``--dataset_dir`` rebuilds it). A datalist written by anyone else is used as it is, never overwritten.
    - The input data folder is only read.

    Under ``torch.distributed`` only rank 0 writes; the other ranks wait for it.

    Args:
        dataset_dir: the data folder (BraTS 2020/2021 case folders, MSD Task01_BrainTumour, or 2D image and mask
            folders), or a CSV file of image,mask pairs.
        datalist_file: the datalist JSON to use or write.
        demo_dir: the folder of the demo data set, generated on first use when ``dataset_dir`` is this folder.
        num_demo_cases: number of demo cases to generate.
        demo_shape: volume shape of the demo cases (for ``demo_layout="image2d"``: ``demo_shape[:2]`` is the largest
            image's height and width).
        val_fraction: fraction of labeled cases for validation (see :func:`medsegdiff_monai.data.split_cases`).
        test_fraction: fraction of labeled cases held out for testing.
        seed: seed of the demo data and of the split.
        demo_layout: the layout of the generated demo data set: ``"brats2021"``, ``"brats2020"``, ``"msd"`` or
            ``"image2d"`` (images/ and masks/ folders of 2D images, for ``image2d.json``).

    Returns:
        the absolute path of the datalist file.

    Raises:
        medsegdiff_monai.data.DataError: naming the folder or case when the data cannot be used.
    """
    from medsegdiff_monai.data import DataError, make_demo_data, write_datalist

    data = Path(dataset_dir).expanduser().resolve()
    out = Path(datalist_file).expanduser().resolve()
    is_demo = demo_dir is not None and data == Path(demo_dir).expanduser().resolve()
    if is_rank0():
        if is_demo and not (data.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir())):
            logger.info(f"generating the synthetic demo data set ({num_demo_cases} cases) in {data}")
            make_demo_data(data, num_cases=num_demo_cases, seed=seed, shape=demo_shape, layout=demo_layout)
        if not data.is_dir() and not (data.is_file() and data.suffix.lower() == ".csv"):  # or a CSV of 2D pairs
            raise DataError(
                f"{data}: dataset_dir not found. Pass --dataset_dir with a BraTS 2020/2021 or MSD Task01_BrainTumour "
                "folder (with image2d.json: a folder of 2D images and masks, or a CSV of pairs), or leave it unset "
                "to use the synthetic demo data."
            )
        rebuild = not out.is_file()
        if not rebuild:
            source = _generated_datalist_source(out)
            if source is not None and source != data:
                logger.info(f"{out} was built for {source}; rebuilding it for {data}")
                rebuild = True
        if rebuild:
            dl = write_datalist(data, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                overwrite=True)
            logger.info(
                f"wrote {out}: {dl['numTraining']} training, {dl['numValidation']} validation, {dl['numTest']} test "
                f"case(s) from {data} ({dl['layout']} layout)"
            )
    barrier()
    return str(out)
