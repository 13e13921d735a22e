from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _cuda_device() -> Iterator[None]:
    """These tests are selected only by `-m gpu`; without a device that is a failure, not a skip.
    After each test its memory goes back to the device: an engine sizes its KV cache from the
    free memory it finds, which a previous test's leftovers would shrink."""
    if not torch.cuda.is_available():
        pytest.fail("tests/gpu need a CUDA device")
    yield
    gc.collect()
    torch.cuda.empty_cache()
