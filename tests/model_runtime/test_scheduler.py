from model_runtime.api import FinishReason, SamplingParams
from model_runtime.kv_cache import BlockManager
from model_runtime.scheduler import Scheduler
from model_runtime.sequence import Sequence, SequenceStatus


def seq(name: str, n: int, first: int = 0) -> Sequence:
    return Sequence(name, list(range(first, first + n)), n, SamplingParams(), max_total_tokens=1000)


def run_step(scheduler: Scheduler) -> list[tuple[str, int, int]]:
    """Schedules a step, pretends the model ran it and sampled, returns (id, start, length)."""
    batch = scheduler.schedule()
    for chunk in batch.chunks:
        scheduler.advance(chunk)
        if chunk.samples:
            chunk.seq.token_ids.append(0)
    return [(c.seq.request_id, c.start, c.length) for c in batch.chunks]


def test_long_prompt_is_chunked_and_decodes_keep_running() -> None:
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=16)
    scheduler.add(seq("short", 3))
    assert run_step(scheduler) == [("short", 0, 3)]
    scheduler.add(seq("long", 40))
    # Every step: the decode first, then as much of the long prompt as the budget allows.
    assert run_step(scheduler) == [("short", 3, 1), ("long", 0, 15)]
    assert run_step(scheduler) == [("short", 4, 1), ("long", 15, 15)]
    assert run_step(scheduler) == [("short", 5, 1), ("long", 30, 10)]
    assert run_step(scheduler) == [("short", 6, 1), ("long", 40, 1)]


def test_max_num_seqs_bounds_the_running_set() -> None:
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for name in "abc":
        scheduler.add(seq(name, 2))
    assert [c[0] for c in run_step(scheduler)] == ["a", "b"]
    assert len(scheduler.waiting) == 1
    scheduler.finish(scheduler.running[0], FinishReason.STOP)
    assert [c[0] for c in run_step(scheduler)] == ["b", "c"]


def test_out_of_blocks_preempts_the_newest_and_recomputes_it_later() -> None:
    blocks = BlockManager(num_blocks=3, block_size=2)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = seq("a", 2), seq("b", 2, first=100)  # different prompts: nothing to share
    scheduler.add(a)
    scheduler.add(b)
    run_step(scheduler)  # a, b hold one block each and have sampled a third token
    # a needs a second block (the last free one); then b needs one and there is none: b goes.
    assert run_step(scheduler) == [("a", 2, 1)]
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert scheduler.num_preemptions == 1
    scheduler.finish(a, FinishReason.STOP)
    assert blocks.num_free_blocks == 3
    # b comes back: its full first block is still cached, so only the token after it is computed.
    assert run_step(scheduler) == [("b", 2, 1)]


def test_finish_frees_blocks_of_waiting_and_running_sequences() -> None:
    blocks = BlockManager(num_blocks=16, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=1, max_num_batched_tokens=100)
    a, b = seq("a", 5), seq("b", 5)
    scheduler.add(a)
    scheduler.add(b)
    run_step(scheduler)
    scheduler.finish(b, FinishReason.ABORT)  # still waiting
    scheduler.finish(a, FinishReason.ABORT)  # running
    assert blocks.num_free_blocks == 16 and not scheduler.has_work()


def test_a_cached_prefix_is_not_computed_again() -> None:
    blocks = BlockManager(num_blocks=32, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=100)
    first = seq("first", 10)
    scheduler.add(first)
    run_step(scheduler)  # computes 10 tokens: blocks [0..3], [4..7] are full and registered
    scheduler.finish(first, FinishReason.STOP)
    second = seq("second", 13)  # same first 10 tokens, then 3 more
    scheduler.add(second)
    assert run_step(scheduler) == [("second", 8, 5)]
    assert blocks.prefix_hit_tokens == 8
    # A prompt that is all cached still computes its last token, for the logits.
    third = seq("third", 8)
    scheduler.add(third)
    assert run_step(scheduler) == [("second", 13, 1), ("third", 4, 4)]


def test_cached_blocks_are_shared_then_reused_when_memory_is_needed() -> None:
    blocks = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=100)
    a = seq("a", 9)
    scheduler.add(a)
    run_step(scheduler)
    b = seq("b", 9)
    scheduler.add(b)
    run_step(scheduler)
    assert b.block_table[:2] == a.block_table[:2]  # shared, not copied
    assert blocks.num_free_blocks == 0
    scheduler.finish(a, FinishReason.STOP)
    scheduler.finish(b, FinishReason.STOP)
    assert blocks.num_free_blocks == 4
    other = seq("other", 16, first=500)  # needs every block: the cached ones are overwritten
    scheduler.add(other)
    assert run_step(scheduler) == [("other", 0, 16)]
    again = seq("again", 9)
    scheduler.finish(other, FinishReason.STOP)
    scheduler.add(again)
    assert run_step(scheduler) == [("again", 0, 9)]  # nothing left to reuse
