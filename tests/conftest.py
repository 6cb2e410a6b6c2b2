# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny networks and element-wise ops: one thread is as fast and immune to a busy machine's thread stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
