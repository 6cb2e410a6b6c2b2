# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


def _torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """Tiny networks and element-wise ops: one thread is as fast and immune to a busy machine's thread stalls."""
    yield from _torch_threads(1)


@pytest.fixture
def two_threads():
    """Both cores, for the learning tests that train a real network."""
    yield from _torch_threads(2)
