# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""A synthetic, BraTS-like demo data set that the project generates itself (no download, no licence ties).

Each case is a skull-stripped, brain-shaped ellipsoid (background exactly 0) with grey/white matter texture,
ventricles, a smooth bias field and noise, and one tumour made of a necrotic core (label 1), an enhancing rim
(label 4) and surrounding edema (label 2), with contrasts that mimic MRI: the enhancing rim is bright on t1ce,
edema is bright on t2 and flair, the necrotic core is dark on t1/t1ce and bright on t2. Head size, tumour
position, size and shape vary per case. Case ``i`` depends only on ``(seed, i)``, so adding cases keeps the
earlier ones identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ..utils.enums import DataLayout, look_up_named_option
from .case_ids import brats_file_name
from .conventions import MODALITIES, MSD_MODALITY_ORDER, DataError
from .demo_image2d import make_demo_images

__all__ = ["make_demo_data", "make_demo_case", "DEMO_LAYOUTS"]

#: layouts :func:`make_demo_data` can write
DEMO_LAYOUTS: tuple[str, ...] = (str(DataLayout.BRATS2021), str(DataLayout.BRATS2020), str(DataLayout.MSD),
                                 str(DataLayout.IMAGE2D))

# tissue classes
_BG, _CSF, _GM, _WM, _NEC, _ENH, _EDEMA = range(7)
# mean intensity per modality (t1, t1ce, t2, flair) and tissue class (bg, csf, gm, wm, necrosis, enhancing, edema)
_INTENSITY = {
    "t1": (0, 250, 550, 700, 280, 620, 440),
    "t1ce": (0, 260, 560, 710, 300, 1250, 450),
    "t2": (0, 1500, 850, 600, 1350, 900, 1250),
    "flair": (0, 120, 650, 520, 450, 800, 1250),
}
_LABEL_OF_CLASS = {_NEC: 1, _EDEMA: 2, _ENH: 4}


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field: coarse Gaussian noise upsampled trilinearly."""
    coarse = rng.standard_normal((1, 1, *[max(2, int(s) // cells + 2) for s in shape])).astype(np.float32)
    up = F.interpolate(torch.from_numpy(coarse), size=tuple(int(s) for s in shape), mode="trilinear",
                       align_corners=True)
    return up[0, 0].numpy()


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """A BraTS-like affine: 1 mm isotropic, x and y flipped (LPS storage as in BraTS 2021), origin at a corner."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (0.0, float(shape[1] - 1), 0.0)
    return affine


def make_demo_case(
    shape: Sequence[int] = (96, 96, 64), seed: int | np.random.SeedSequence = 0, tumour: bool = True
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Generate one synthetic case in memory.

    Args:
        shape: volume shape (x, y, z); z is the axial direction.
        seed: an int or a ``numpy.random.SeedSequence``.
        tumour: whether the case has a tumour.

    Returns:
        ``({"t1": ..., "t1ce": ..., "t2": ..., "flair": ...}, seg)`` with int16 images and a uint8 segmentation
        with BraTS labels 0, 1, 2, 4.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8, got {shape}.")
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array([(s - 1) / 2 for s in shape], dtype=np.float32)
    centre += rng.uniform(-0.03, 0.03, 3).astype(np.float32) * np.array(shape)
    radii = np.array(shape, dtype=np.float32) * np.array([0.40, 0.44, 0.42]) * rng.uniform(0.88, 1.05, 3)
    rel = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    r = np.sqrt((rel**2).sum(0))
    r = r * (1.0 + 0.04 * _smooth_noise(rng, shape, 12))  # a slightly irregular outline
    brain = r < 1.0

    cls = np.full(shape, _BG, dtype=np.uint8)
    cls[brain] = _WM
    cortex = brain & ((r > 0.82) | (_smooth_noise(rng, shape, 6) > 0.9))
    cls[cortex] = _GM
    cls[brain & (r > 0.95)] = _CSF
    # two ventricles either side of the midline
    for side in (-1.0, 1.0):
        vc = np.array([side * 0.12, 0.05, 0.1], dtype=np.float32)
        vr = np.array([0.08, 0.28, 0.16], dtype=np.float32) * rng.uniform(0.8, 1.2)
        q = (((rel - vc[:, None, None, None]) / vr[:, None, None, None]) ** 2).sum(0)
        cls[brain & (q < 1.0)] = _CSF

    seg = np.zeros(shape, dtype=np.uint8)
    if tumour:
        # centre inside the brain, away from its rim, in voxel units
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        t_rel = direction * rng.uniform(0.1, 0.45)
        t_centre = centre + t_rel * radii
        t_radii = rng.uniform(0.07, 0.13, 3) * min(shape[0], shape[1]) * np.array([1.0, 1.0, 0.9])
        t_radii = np.maximum(t_radii, 2.5)
        q = np.sqrt((((grid - t_centre[:, None, None, None]) / t_radii[:, None, None, None]) ** 2).sum(0))
        q = q * (1.0 + 0.18 * _smooth_noise(rng, shape, 5))  # irregular, case-specific shape
        edema_extent = rng.uniform(1.5, 2.1)
        core_extent = rng.uniform(0.45, 0.65)
        tumour_cls = np.where(q < core_extent, _NEC, np.where(q < 1.0, _ENH, np.where(q < edema_extent, _EDEMA, 0)))
        tumour_cls = np.where(brain & (cls != _CSF) | (q < 1.0) & brain, tumour_cls, 0).astype(np.uint8)
        for c, lab in _LABEL_OF_CLASS.items():
            sel = tumour_cls == c
            cls[sel] = c
            seg[sel] = lab

    bias = 1.0 + 0.08 * _smooth_noise(rng, shape, 16)
    texture = 0.04 * _smooth_noise(rng, shape, 3)
    images: dict[str, np.ndarray] = {}
    for mod in MODALITIES:
        means = np.asarray(_INTENSITY[mod], dtype=np.float32) * rng.uniform(0.9, 1.1)
        img = means[cls] * (bias + texture)
        img = img + rng.normal(0.0, 0.025 * means[_WM], shape).astype(np.float32)
        img = np.where(brain, np.clip(img, 1.0, 32000.0), 0.0)
        images[mod] = np.rint(img).astype(np.int16)
    return images, seg


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _case_names(layout: str, num_cases: int, num_unlabeled: int) -> list[tuple[str, bool]]:
    names = []
    for i in range(num_cases):
        labeled = i < num_cases - num_unlabeled
        if layout == DataLayout.BRATS2021:
            names.append((f"BraTS2021_{i:05d}", labeled))
        elif layout == DataLayout.BRATS2020:
            names.append((f"BraTS20_{'Training' if labeled else 'Validation'}_{i + 1:03d}", labeled))
        else:
            names.append((f"BRATS_{i + 1:03d}", labeled))
    return names


def _msd_label(seg: np.ndarray) -> np.ndarray:
    out = np.zeros_like(seg)
    out[seg == 2] = 1  # edema
    out[seg == 1] = 2  # non-enhancing / necrotic
    out[seg == 4] = 3  # enhancing
    return out


def make_demo_data(
    output_dir: str | os.PathLike,
    num_cases: int = 8,
    seed: int = 0,
    shape: Sequence[int] = (96, 96, 64),
    overwrite: bool = False,
    layout: str = DataLayout.BRATS2021,
    num_unlabeled: int = 0,
    num_healthy: int = 0,
) -> list[str]:
    """Write a synthetic BraTS-like data set.

    With ``layout="brats2021"`` (the default) the files are exactly those of BraTS 2021:
    ``<output_dir>/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``, int16 images, uint8 labels
    0/1/2/4, a 1 mm BraTS-like affine. ``"brats2020"`` names cases ``BraTS20_Training_001`` (and unlabeled ones
    ``BraTS20_Validation_NNN``); ``"msd"`` writes the Task01_BrainTumour layout (``dataset.json``,
    ``imagesTr/BRATS_001.nii.gz`` 4D float32 in the order FLAIR, T1w, t1gd, T2w, ``labelsTr`` with MSD labels
    1 edema, 2 non-enhancing, 3 enhancing, and ``imagesTs`` for unlabeled cases). ``"image2d"`` writes the 2D
    dermoscopy-like images and masks of :func:`~medsegdiff_monai.data.demo_image2d.make_demo_images` instead
    (``images/``, ``masks/``; sizes up to ``shape[:2]``; ``num_unlabeled`` and ``num_healthy`` must be 0).

    Args:
        output_dir: the folder to write (created if needed).
        num_cases: number of cases.
        seed: the seed; the same seed writes the same data.
        shape: volume shape (x, y, z).
        overwrite: replace existing case files; otherwise an existing case folder (or MSD file) is an error.
        layout: one of :data:`DEMO_LAYOUTS`.
        num_unlabeled: the last ``num_unlabeled`` cases are written without segmentation.
        num_healthy: the first ``num_healthy`` cases have no tumour.

    Returns:
        the paths of the case folders (BraTS) or image files (MSD, image2d) written.

    Raises:
        FileExistsError: when a case exists and ``overwrite`` is False (nothing is written then).
        ValueError: on bad arguments.
    """
    layout = look_up_named_option("layout", layout, DEMO_LAYOUTS)
    if layout == DataLayout.IMAGE2D:
        if num_unlabeled or num_healthy:
            raise ValueError("make_demo_data: the image2d layout writes labeled lesion images only; num_unlabeled "
                             "and num_healthy must be 0.")
        return make_demo_images(output_dir, num_cases, seed, tuple(shape)[:2], overwrite)
    num_cases, num_unlabeled, num_healthy = int(num_cases), int(num_unlabeled), int(num_healthy)
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}.")
    if not 0 <= num_unlabeled <= num_cases or not 0 <= num_healthy <= num_cases:
        raise ValueError("num_unlabeled and num_healthy must be between 0 and num_cases.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8, got {shape}.")
    root = Path(output_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, expected a folder to write the demo data into.")
    names = _case_names(layout, num_cases, num_unlabeled)
    if layout == DataLayout.MSD:
        targets = [root / ("imagesTr" if lab else "imagesTs") / f"{n}.nii.gz" for n, lab in names]
        targets += [root / "dataset.json"]
    else:
        targets = [root / n for n, _ in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]}: already exists ({len(existing)} existing case(s)); pass overwrite=True / --overwrite "
            "to replace them."
        )
    affine = brats_affine(shape)
    children = np.random.SeedSequence(int(seed)).spawn(num_cases)
    written: list[str] = []
    training, test = [], []
    for i, ((name, labeled), child) in enumerate(zip(names, children)):
        images, seg = make_demo_case(shape, child, tumour=i >= num_healthy)
        if layout == DataLayout.MSD:
            stack = np.stack([images[m] for m in MSD_MODALITY_ORDER], axis=-1).astype(np.float32)
            sub = "imagesTr" if labeled else "imagesTs"
            (root / sub).mkdir(parents=True, exist_ok=True)
            _save(stack, affine, root / sub / f"{name}.nii.gz")
            if labeled:
                (root / "labelsTr").mkdir(parents=True, exist_ok=True)
                _save(_msd_label(seg), affine, root / "labelsTr" / f"{name}.nii.gz")
                training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
            else:
                test.append(f"./imagesTs/{name}.nii.gz")
            written.append(str(root / sub / f"{name}.nii.gz"))
        else:
            case_dir = root / name
            case_dir.mkdir(parents=True, exist_ok=True)
            for mod in MODALITIES:
                _save(images[mod], affine, case_dir / brats_file_name(name, mod))
            if labeled:
                _save(seg, affine, case_dir / brats_file_name(name, "seg"))
            written.append(str(case_dir))
    if layout == DataLayout.MSD:
        dataset = {
            "name": "BRATS",
            "description": "Synthetic demo data in the layout of MSD Task01_BrainTumour, made by medsegdiff-monai",
            "reference": "synthetic (medsegdiff_monai.data.make_demo_data)",
            "licence": "synthetic data generated by the project; see bundle/docs/data_license.txt",
            "release": "demo",
            "tensorImageSize": "4D",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": len(training),
            "numTest": len(test),
            "training": training,
            "test": test,
        }
        with open(root / "dataset.json", "w") as f:
            json.dump(dataset, f, indent=4)
    return written
