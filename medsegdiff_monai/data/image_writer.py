# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's NIfTI and PNG writers, writing atomically: an interrupted run never leaves a half-written prediction."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from monai.config import PathLike
from monai.data import NibabelWriter, PILWriter

__all__ = ["AtomicNibabelWriter", "AtomicPILWriter"]

_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".mgh")


def _write_atomically(filename: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a hidden name next to ``filename`` (same extension), then rename it to ``filename``."""
    filename = os.fspath(filename)
    folder, name = os.path.split(filename)
    ext = next((e for e in _EXTENSIONS if name.lower().endswith(e)), os.path.splitext(name)[1])
    stem = name[: len(name) - len(ext)] if ext else name
    # a name, not tempfile.mkstemp: the library creates the file, so it gets the permissions of the umask
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, filename)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` that writes to a temporary file in the same folder, then renames it.

    MONAI's writer calls ``nib.save`` on the final name, so a killed job or a full disk leaves a truncated
    ``<case>_seg.nii.gz`` that looks like a finished prediction (and that ``predict`` then refuses to write
    over). Here ``nib.save`` writes ``.<name>.<random>.tmp.nii.gz`` next to it (same folder, so same file
    system, and the same extension, from which nibabel picks the format and compression), and ``os.replace``
    moves it to the final name, which is atomic: the final name holds either the previous file or the complete
    new one. A failed write removes the temporary file and re-raises. The hidden temporary name matches neither
    ``*_seg.nii.gz`` nor the BraTS case patterns. Use it as ``SaveImaged(..., writer=AtomicNibabelWriter)``
    (in a bundle config: ``"writer": "medsegdiff_monai.data.AtomicNibabelWriter"``); arguments are those of
    ``NibabelWriter``.
    """

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        """Write the data to ``filename`` atomically (see the class docstring).

        Args:
            filename: the final file name; its extension selects the format as in ``NibabelWriter``.
            verbose: log the progress.
            obj_kwargs: passed to ``NibabelWriter.write`` (``create_backend_obj``).
        """
        _write_atomically(filename, lambda tmp: super(AtomicNibabelWriter, self).write(tmp, verbose=verbose,
                                                                                    **obj_kwargs))


class AtomicPILWriter(PILWriter):
    """:class:`monai.data.PILWriter` (PNG, TIFF, ...) that writes atomically (as :class:`AtomicNibabelWriter`) and
    keeps the array's axes: rows are the first spatial axis, as ``PILReader(reverse_indexing=False)`` reads them.

    MONAI's ``PILWriter`` swaps the first two axes by default (``reverse_indexing=True``), the counterpart of
    ``PILReader``'s default; the 2D pipelines of this package read images with ``reverse_indexing=False`` (arrays
    (C, H, W), as the picture is seen), so the writer must not swap them back. Pillow picks the format from the
    extension (``.png``; float32 data as a mode "F" ``.tif``). Use it as ``SaveImaged(..., output_ext=".png",
    writer=AtomicPILWriter)`` (in a bundle config: ``"writer": "medsegdiff_monai.data.AtomicPILWriter"``).
    """

    def write(self, filename: PathLike, verbose: bool = False, **kwargs) -> None:
        """Write the data to ``filename`` atomically, rows first.

        Args:
            filename: the final file name; its extension selects the format.
            verbose: log the progress.
            kwargs: passed to ``PILWriter.write`` (``reverse_indexing`` defaults to False here).
        """
        kwargs.setdefault("reverse_indexing", False)
        _write_atomically(filename, lambda tmp: super(AtomicPILWriter, self).write(tmp, verbose=verbose, **kwargs))
