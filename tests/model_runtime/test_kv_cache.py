from model_runtime.api import SamplingParams
from model_runtime.kv_cache import BlockManager
from model_runtime.sequence import Sequence


def seq(n: int) -> Sequence:
    return Sequence("r", list(range(n)), n, SamplingParams(), max_total_tokens=1000)


def test_allocate_grows_block_table_by_whole_blocks() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    s = seq(5)
    assert blocks.blocks_needed(s, 5) == 2
    blocks.allocate(s, 5)
    assert len(s.block_table) == 2 and blocks.num_free_blocks == 6
    blocks.allocate(s, 8)  # still fits in two blocks
    assert len(s.block_table) == 2
    blocks.allocate(s, 9)
    assert len(s.block_table) == 3 and len(set(s.block_table)) == 3


def test_free_returns_every_block() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    a, b = seq(9), seq(4)
    blocks.allocate(a, 9)
    blocks.allocate(b, 4)
    assert blocks.num_free_blocks == 4
    blocks.free(a)
    blocks.free(b)
    assert blocks.num_free_blocks == 8 and a.block_table == [] and a.num_computed_tokens == 0


def test_cannot_allocate_past_the_budget() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    s = seq(9)
    assert not blocks.can_allocate(s, 9)
    assert blocks.can_allocate(s, 8)
