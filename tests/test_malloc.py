# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""keep_freed_memory: large tensors come from the reusable heap instead of a fresh ``mmap`` each time."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from medsegdiff_monai.utils import keep_freed_memory

PROBE = r"""
import ctypes, sys, torch
from medsegdiff_monai.utils import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
info = ctypes.CDLL("libc.so.6").mallinfo2
info.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = info().hblks
held = [torch.ones(2 * 1024 * 1024) for _ in range(4)]  # 4 tensors of 8 MiB, held
print(info().hblks - before)  # how many of them glibc served with mmap
"""


def _glibc_has_mallinfo2() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc >= 2.33
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_has_mallinfo2(), reason="glibc >= 2.33")
def test_large_tensors_come_from_the_heap():
    mapped = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        mapped[mode] = int(out.stdout.strip().splitlines()[-1])
    assert mapped["default"] == 4, mapped  # glibc's default: every block above 128 KiB is its own mmap
    assert mapped["keep"] == 0, mapped  # with the setting: the heap, where freed blocks are reused


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mmap_threshold"):
        keep_freed_memory(mmap_threshold=64 * 1024 * 1024)
    with pytest.raises(ValueError, match="trim_threshold"):
        keep_freed_memory(trim_threshold=0)
