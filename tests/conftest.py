"""Set-up shared by every test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # CI has 2 shared cores: OpenMP threads spin-waiting on each other cost up to 10x there,
    # and float sums must not depend on the thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
