# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""``torch.distributed`` helpers that also work without a process group (a single process is rank 0)."""

from __future__ import annotations

__all__ = ["is_rank0", "barrier"]


def is_rank0() -> bool:
    """True in a single process and on rank 0 of an initialised process group."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """``torch.distributed.barrier()`` when a process group is initialised; nothing otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
