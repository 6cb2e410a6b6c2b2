# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Real-MRI cases for ``benchmarks/quality.py``: the MNI152 2009 T1 template cut into blocks of axial slices.

The data: nilearn 0.14.1's wheel (PyPI, ``pip download nilearn==0.14.1 --no-deps``) ships the ICBM 2009a
nonlinear symmetric template (Fonov et al. 2011; 1 mm, 197 x 233 x 189) with its tissue probability maps. The
files are read from the wheel (a zip) without installing nilearn. Only two are used: the T1 image and the grey
matter probability map; the label is ``grey matter probability > 0.5``. No other tissue map is read.

The cases: one volume gives few cases, so the volume is cut into blocks of ``block_size`` consecutive axial
slices, each written as its own case, separated by ``gap`` slices that belong to no case (so no slice of a
validation or test block is next to a training slice). Only blocks whose every slice holds at least
``min_label_voxels`` grey-matter voxels are kept. Blocks are assigned to training / validation / test by a fixed,
repeating ``pattern`` (not at random), so held-out blocks are spread from the bottom to the top of the brain.

The layout: BraTS 2021 (``<root>/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``) with the
template's affine. There is only one real modality: the T1 is written to all four modality files, so every model
sees four identical channels. The label is written with value 2 (BraTS "edema"), so the whole-tumour region
``wt`` = {1, 2, 4} of the bundle's default ``--regions wt`` task is exactly the grey-matter mask.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "NILEARN_VERSION",
    "T1_MEMBER",
    "GM_MEMBER",
    "DEFAULT_CACHE_DIR",
    "fetch_wheel",
    "load_template",
    "split_blocks",
    "write_cases",
    "prepare_mni_cases",
]

NILEARN_VERSION = "0.14.1"
_DATA = "nilearn/datasets/data/"
#: the T1 image in the wheel
T1_MEMBER = _DATA + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: the grey-matter probability map in the wheel (the only label used)
GM_MEMBER = _DATA + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
DEFAULT_CACHE_DIR = Path(os.environ.get("MEDSEGDIFF_CACHE", Path.home() / ".cache" / "medsegdiff-monai"))
#: the BraTS label value the grey-matter mask is written with (edema, inside the whole tumour region)
GM_LABEL_VALUE = 2
SPLITS = ("training", "validation", "test")


def fetch_wheel(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """The nilearn wheel in ``cache_dir``, downloaded with ``pip download`` when it is not there yet.

    Args:
        cache_dir: folder for the wheel.

    Returns:
        path of ``nilearn-<version>-py3-none-any.whl``.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"nilearn-{NILEARN_VERSION}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"nilearn=={NILEARN_VERSION}", "--no-deps", "-d", str(cache)],
            check=True,
        )
        found = sorted(cache.glob(f"nilearn-{NILEARN_VERSION}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download did not put a nilearn {NILEARN_VERSION} wheel in {cache}")
    return found[0]


def _read_member(wheel: Path, member: str) -> nib.Nifti1Image:
    with zipfile.ZipFile(wheel) as z:
        data = z.read(member)
    if member.endswith(".gz"):
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def load_template(wheel: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The T1 image, the grey-matter mask and their affine.

    Args:
        wheel: the nilearn wheel.

    Returns:
        ``(t1 float32 (X, Y, Z), grey matter mask bool (X, Y, Z), affine 4x4)``. The probability map is stored as
        uint8 0..255 without scaling in the wheel; it is divided by 255 before the 0.5 threshold.
    """
    t1_img = _read_member(Path(wheel), T1_MEMBER)
    gm_img = _read_member(Path(wheel), GM_MEMBER)
    if t1_img.shape != gm_img.shape or not np.allclose(t1_img.affine, gm_img.affine):
        raise ValueError("T1 and grey-matter map differ in shape or affine")
    t1 = np.asanyarray(t1_img.dataobj).astype(np.float32)
    prob = np.asanyarray(gm_img.dataobj).astype(np.float32)
    if prob.max() > 1.0:
        prob = prob / 255.0
    return t1, prob > 0.5, np.asarray(t1_img.affine, dtype=np.float64)


def split_blocks(
    label: np.ndarray,
    block_size: int = 8,
    gap: int = 2,
    pattern: Sequence[str] = ("training", "test", "training", "validation", "training", "test"),
    min_label_voxels: int = 200,
) -> list[dict[str, Any]]:
    """Cut the axial slices (last axis) into blocks and assign each block a split by a repeating pattern.

    Blocks are ``block_size`` consecutive slices from the first slice with at least ``min_label_voxels`` label
    voxels; consecutive blocks are ``gap`` slices apart (those slices belong to no block). A block is kept only when
    each of its slices has at least ``min_label_voxels`` label voxels; kept blocks get ``pattern[i % len(pattern)]``
    in order from bottom to top.

    Args:
        label: the label volume (X, Y, Z), axial slices along Z.
        block_size: slices per block.
        gap: unused slices between consecutive blocks (>= 0).
        pattern: split names, cycled over the kept blocks: "training", "validation" or "test".
        min_label_voxels: the least label voxels every slice of a kept block has.

    Returns:
        one dict per kept block: ``{"index", "split", "z_start", "z_stop"}`` (slices ``z_start .. z_stop - 1``).
    """
    if block_size < 1 or gap < 0:
        raise ValueError(f"block_size must be >= 1 and gap >= 0, got {block_size}, {gap}")
    bad = [p for p in pattern if p not in SPLITS]
    if bad or not pattern:
        raise ValueError(f"pattern must name splits among {SPLITS}, got {list(pattern)}")
    per_slice = np.asarray(label).reshape(-1, label.shape[-1]).astype(bool).sum(0)
    ok = np.nonzero(per_slice >= min_label_voxels)[0]
    blocks: list[dict[str, Any]] = []
    if ok.size == 0:
        return blocks
    z = int(ok[0])
    while z + block_size <= label.shape[-1]:
        if (per_slice[z : z + block_size] >= min_label_voxels).all():
            blocks.append({"index": len(blocks), "split": pattern[len(blocks) % len(pattern)],
                           "z_start": z, "z_stop": z + block_size})
        z += block_size + gap
    return blocks


def _case_id(i: int) -> str:
    return f"BraTS2021_{i:05d}"


def write_cases(
    root: str | os.PathLike,
    t1: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    blocks: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write each block as a BraTS 2021 case and a datalist with the blocks' fixed split.

    Each block's affine is the template's, shifted to the block's first slice, so world coordinates match the
    template. The four modality files hold the same T1 slab.

    Args:
        root: data folder to write to (case folders and ``datalist.json``).
        t1: the T1 volume.
        label: the binary label volume.
        affine: the volume's affine.
        blocks: from :func:`split_blocks`.

    Returns:
        the datalist (also written to ``<root>/datalist.json``), MONAI decathlon format with "training",
        "validation" and "test" lists (paths relative to ``root``) and a "blocks" list.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    datalist: dict[str, Any] = {
        "name": "MNI152 2009a T1, grey matter (probability > 0.5) as label 2, blocks of axial slices",
        "description": "one real modality: the T1 is written to t1, t1ce, t2 and flair; split fixed by block "
        "pattern (see benchmarks/quality_data.py)",
        "layout": "brats2021",
        "label_convention": "brats",
        "modality_order": "t1,t1ce,t2,flair",
        "channels": "t1,t1ce,t2,flair",
        "training": [],
        "validation": [],
        "test": [],
        "blocks": [],
    }
    for b in blocks:
        cid = _case_id(b["index"])
        folder = root / cid
        folder.mkdir(exist_ok=True)
        z0, z1 = b["z_start"], b["z_stop"]
        aff = affine.copy()
        aff[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, float(z0)]) + affine[:3, 3]
        image = np.ascontiguousarray(t1[..., z0:z1]).astype(np.int16)
        seg = (np.ascontiguousarray(label[..., z0:z1]) * GM_LABEL_VALUE).astype(np.uint8)
        files = {}
        for mod in ("t1", "t1ce", "t2", "flair"):
            files[mod] = f"{cid}/{cid}_{mod}.nii.gz"
            nib.save(nib.Nifti1Image(image, aff), str(root / files[mod]))
        files["seg"] = f"{cid}/{cid}_seg.nii.gz"
        nib.save(nib.Nifti1Image(seg, aff), str(root / files["seg"]))
        datalist[b["split"]].append({
            "case_id": cid,
            "image": [files[m] for m in ("t1", "t1ce", "t2", "flair")],
            "label": files["seg"],
            "label_convention": "brats",
            "modality_order": "t1,t1ce,t2,flair",
        })
        datalist["blocks"].append(dict(b, case_id=cid))
    for key in SPLITS:
        datalist[f"num{key.capitalize()}"] = len(datalist[key])
    (root / "datalist.json").write_text(json.dumps(datalist, indent=4) + "\n")
    return datalist


def prepare_mni_cases(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    block_size: int = 8,
    gap: int = 2,
    pattern: Sequence[str] = ("training", "test", "training", "validation", "training", "test"),
) -> dict[str, Any]:
    """Fetch the wheel (cached), cut the template into blocks and write the cases and ``<root>/datalist.json``.

    Args:
        root: data folder to write.
        cache_dir: where the nilearn wheel is kept.
        block_size: slices per block (see :func:`split_blocks`).
        gap: unused slices between blocks.
        pattern: the repeating split pattern.

    Returns:
        the datalist, with ``"source"`` naming the wheel members read.
    """
    wheel = fetch_wheel(cache_dir)
    t1, gm, affine = load_template(wheel)
    blocks = split_blocks(gm, block_size=block_size, gap=gap, pattern=pattern)
    datalist = write_cases(root, t1, gm, affine, blocks)
    datalist["source"] = {"wheel": wheel.name, "image": T1_MEMBER, "label": GM_MEMBER, "label_threshold": 0.5}
    (Path(root) / "datalist.json").write_text(json.dumps(datalist, indent=4) + "\n")
    return datalist
