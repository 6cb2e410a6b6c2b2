# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Cheap, read-only checks of NIfTI files that name the file and say what is wrong.

MONAI's ``LoadImaged`` reports a missing, corrupt or mismatched file as "cannot find a suitable reader" or
"spatial_shape of all images should be the same" without naming the files. The functions here read only the
NIfTI header (and, for ``.nii.gz``, the gzip trailer) so a pipeline can check every case before loading it.
Nothing here ever writes to a file.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .conventions import DataError

__all__ = ["NiftiInfo", "NIFTI_SUFFIXES", "is_nifti_name", "inspect_nifti", "read_nifti", "case_file_problems"]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def is_nifti_name(name: str | os.PathLike) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` and is not a hidden or macOS ``._`` resource file."""
    base = os.path.basename(os.fspath(name))
    return base.lower().endswith(NIFTI_SUFFIXES) and not base.startswith(".")


@dataclass(frozen=True)
class NiftiInfo:
    """What the header of a NIfTI file says.

    Attributes:
        path: the file.
        shape: the full data shape, e.g. ``(240, 240, 155)`` or ``(240, 240, 155, 4)``.
        affine: the 4x4 voxel-to-world matrix nibabel derives from the header.
        dtype: the on-disk data type.
    """

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: np.dtype

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The first three dimensions."""
        return self.shape[:3]


def _gzip_truncated(path: str, expected_bytes: int) -> bool:
    """Whether a ``.gz`` file is shorter than its header promises, judged from the gzip trailer.

    The last four bytes of a gzip member hold the uncompressed size modulo 2**32. A truncated download ends
    mid-stream, so its "trailer" is arbitrary data. A multi-member file (bgzip) or one with bytes after the data
    also has another trailer, so a trailer that differs from the header's size is confirmed by decompressing the
    whole file before the file is called truncated.
    """
    if expected_bytes >= 2**32:
        return False  # the trailer cannot tell; the full read (LoadImaged or check_data) will
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return True
        f.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", f.read(4))
    if isize == expected_bytes % 2**32:
        return False  # the usual case: one gzip member holding exactly header + data
    try:
        total = 0
        with gzip.open(path, "rb") as g:
            while chunk := g.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile):
        return True
    return total < expected_bytes


def inspect_nifti(path: str | os.PathLike) -> NiftiInfo:
    """Read the header of a NIfTI file and check that the file holds all the data the header promises.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        the header's shape, affine and data type.

    Raises:
        DataError: naming the file when it is missing, a folder, not named or not readable as NIfTI, or shorter
            than its header says (a truncated download).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found.")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected a NIfTI file.")
    if not path.lower().endswith(NIFTI_SUFFIXES):
        raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz).")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path}: file is empty.")
    try:
        img = nib.load(path)
        header = img.header
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
        dtype = np.dtype(header.get_data_dtype())
        # the loaded header's vox_offset is reset by nibabel; the array proxy keeps the file's real offset
        offset = int(getattr(img.dataobj, "offset", 0))
    except Exception as e:  # nibabel raises ImageFileError, gzip errors, EOFError, struct errors...
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__}).")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.lower().endswith(".gz"):
        truncated = _gzip_truncated(path, expected)
    else:
        truncated = size < expected
    if truncated:
        raise DataError(f"{path}: truncated or corrupt file (the header promises {expected} bytes of header and data).")
    return NiftiInfo(path=path, shape=shape, affine=affine, dtype=dtype)


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, NiftiInfo]:
    """Read a NIfTI file's data (read-only) with the errors of :func:`inspect_nifti`.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        the data as stored (scaling applied) and the header information.

    Raises:
        DataError: naming the file when it cannot be read completely.
    """
    info = inspect_nifti(path)
    try:
        data = np.asanyarray(nib.load(info.path).dataobj)
    except Exception as e:
        raise DataError(f"{info.path}: cannot read the image data ({type(e).__name__}: {e}).") from e
    return data, info


def _as_list(files: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [os.fspath(files)]
    return [os.fspath(f) for f in files]


def case_file_problems(
    image: str | os.PathLike | Sequence[str | os.PathLike],
    label: str | os.PathLike | None = None,
    num_channels: int | None = None,
    atol: float = 1e-3,
) -> list[str]:
    """Check the headers of one case's files against each other, without reading the image data.

    Checks that every file is a complete NIfTI; that the modality files, stacked as channels, all have the same
    3D shape and affine (a single file may be 4D, channels last, as in MSD); that the channel count is
    ``num_channels``; and that the label is 3D with the image's spatial shape and affine.

    Args:
        image: one file (3D, or 4D with channels last) or one 3D file per modality.
        label: the segmentation file, if any.
        num_channels: the number of channels the image must have, if known.
        atol: tolerance when comparing affines (world units, usually mm).

    Returns:
        one message per problem, each naming the file(s) concerned; empty when the case is fine.
    """
    problems: list[str] = []
    image_files = _as_list(image)
    infos: list[NiftiInfo] = []
    if not image_files:
        problems.append("no image file given.")
    for f in image_files:
        try:
            infos.append(inspect_nifti(f))
        except DataError as e:
            problems.append(str(e))
    channels = 0
    for info in infos:
        if len(image_files) > 1 and len(info.shape) != 3:
            problems.append(f"{info.path}: expected a 3D volume per modality, got shape {info.shape}.")
        elif len(info.shape) not in (3, 4):
            problems.append(f"{info.path}: expected a 3D or 4D image, got shape {info.shape}.")
        channels += info.shape[3] if len(info.shape) == 4 else 1
    if infos and len({i.spatial_shape for i in infos}) > 1:
        shapes = ", ".join(f"{os.path.basename(i.path)} {i.spatial_shape}" for i in infos)
        problems.append(f"modalities have different shapes: {shapes}.")
    elif infos and any(not np.allclose(i.affine, infos[0].affine, atol=atol) for i in infos[1:]):
        names = ", ".join(os.path.basename(i.path) for i in infos)
        problems.append(f"modalities have different affines (orientation/spacing/origin): {names}.")
    if num_channels is not None and len(infos) == len(image_files) and infos and channels != num_channels:
        problems.append(
            f"image has {channels} channel(s), expected {num_channels} ({', '.join(image_files)})."
        )
    if label is not None:
        try:
            linfo = inspect_nifti(label)
        except DataError as e:
            problems.append(str(e))
        else:
            lshape = linfo.shape
            if len(lshape) == 4 and lshape[3] == 1:
                lshape = lshape[:3]
            if len(lshape) != 3:
                problems.append(f"{linfo.path}: expected a 3D segmentation, got shape {linfo.shape}.")
            elif infos and lshape != infos[0].spatial_shape:
                problems.append(
                    f"{linfo.path}: segmentation shape {lshape} differs from the image shape "
                    f"{infos[0].spatial_shape} ({os.path.basename(infos[0].path)})."
                )
            elif infos and not np.allclose(linfo.affine, infos[0].affine, atol=atol):
                problems.append(
                    f"{linfo.path}: segmentation affine differs from the image affine "
                    f"({os.path.basename(infos[0].path)})."
                )
    return problems
