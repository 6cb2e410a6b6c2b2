# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""MONAI's NIfTI writer, writing atomically: an interrupted run never leaves a half-written prediction."""

from __future__ import annotations

import os
import uuid

from monai.config import PathLike
from monai.data import NibabelWriter

__all__ = ["AtomicNibabelWriter"]

_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".mgh")


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
        filename = os.fspath(filename)
        folder, name = os.path.split(filename)
        ext = next((e for e in _EXTENSIONS if name.lower().endswith(e)), os.path.splitext(name)[1])
        stem = name[: len(name) - len(ext)] if ext else name
        # a name, not tempfile.mkstemp: nibabel creates the file, so it gets the permissions of the umask
        tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:8]}.tmp{ext}")
        try:
            super().write(tmp, verbose=verbose, **obj_kwargs)
            os.replace(tmp, filename)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
