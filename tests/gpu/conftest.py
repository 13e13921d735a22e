from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _cuda_device() -> None:
    """These tests are selected only by `-m gpu`; without a device that is a failure, not a skip."""
    if not torch.cuda.is_available():
        pytest.fail("tests/gpu need a CUDA device")
