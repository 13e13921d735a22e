"""The GPU KV budget's arithmetic, without a GPU: what is free, less the activation peak, less what
another component on the device reserves, less the share the utilization leaves untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.config import EngineConfig
from model_runtime.engine import kv_blocks, kv_budget_bytes

GIB = 2**30


def test_the_reservation_comes_out_of_the_budget() -> None:
    without = kv_budget_bytes(60 * GIB, 80 * GIB, 2 * GIB, 0.9, 0)
    with_images = kv_budget_bytes(60 * GIB, 80 * GIB, 2 * GIB, 0.9, 5 * GIB)
    assert without == pytest.approx(50 * GIB)  # 60 - 2 - 8
    assert without - with_images == 5 * GIB


def test_blocks_shrink_by_the_reservation_over_the_block_size() -> None:
    per_block = 3 * 2**20
    reserved = 900 * 2**20
    without = kv_blocks(kv_budget_bytes(60 * GIB, 80 * GIB, GIB, 0.9, 0), per_block)
    with_images = kv_blocks(kv_budget_bytes(60 * GIB, 80 * GIB, GIB, 0.9, reserved), per_block)
    assert without - with_images == reserved // per_block


def test_a_reservation_that_leaves_too_little_is_refused() -> None:
    budget = kv_budget_bytes(20 * GIB, 80 * GIB, GIB, 0.9, 11 * GIB)
    with pytest.raises(RuntimeError, match="too small"):
        kv_blocks(budget, 2**20)


def test_two_blocks_are_the_least_that_serves() -> None:
    assert kv_blocks(2 * 2**20, 2**20) == 2
    with pytest.raises(RuntimeError, match="too small"):
        kv_blocks(2 * 2**20 - 1, 2**20)


def test_no_reservation_by_default() -> None:
    assert EngineConfig(model_path=Path("m"), served_model_name="m").reserved_gpu_memory_bytes == 0
