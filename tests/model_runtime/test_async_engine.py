"""The engine thread behind its asyncio face: streaming, abort, and a thread that dies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from model_runtime.api import FinishReason, SamplingParams
from model_runtime.async_engine import AsyncEngine
from model_runtime.config import EngineConfig

PARAMS = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)


@pytest.fixture
async def engine(tiny_model_path: Path):  # type: ignore[no-untyped-def]
    eng = AsyncEngine(EngineConfig(model_path=tiny_model_path, served_model_name="tiny", device="cpu"))
    await eng.start()
    yield eng
    await eng.shutdown()


async def test_streams_until_finished(engine: AsyncEngine) -> None:
    outs = [o async for o in engine.generate("a", [5, 6, 7], SamplingParams(max_tokens=6, ignore_eos=True))]
    assert outs[-1].finished and outs[-1].finish_reason is FinishReason.LENGTH
    assert sum(len(o.token_ids) for o in outs) == 6 and not any(o.finished for o in outs[:-1])


async def test_closing_the_stream_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    stream = engine.generate("a", [5, 6, 7], PARAMS)
    await anext(stream)
    await stream.aclose()
    for _ in range(200):
        stats = engine.stats()
        if stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks_total:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().running == 0 and stats.kv_blocks_free == stats.kv_blocks_total


async def test_a_dead_engine_thread_fails_requests_and_refuses_new_ones(engine: AsyncEngine) -> None:
    class Fatal(BaseException):
        pass

    def die() -> list:
        raise Fatal()

    stream = engine.generate("a", [5, 6, 7], PARAMS)
    await anext(stream)
    engine.engine.step = die  # type: ignore[method-assign]
    last = [o async for o in stream][-1]
    assert last.finish_reason is FinishReason.ERROR and last.error
    assert not engine.is_alive()
    with pytest.raises(RuntimeError):
        await anext(engine.generate("b", [5], PARAMS))


async def test_a_consumer_that_falls_behind_gets_merged_outputs_losing_nothing(engine: AsyncEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, logprobs=1)
    prompt = [5, 6, 7, 8]
    keeping_up = [o async for o in engine.generate("fast", prompt, params)]
    behind = []
    async for out in engine.generate("slow", prompt, params):
        behind.append(out)
        await asyncio.sleep(0.05)  # several engine steps pass: their outputs wait in the queue
    assert len(behind) < len(keeping_up)
    for outs in (keeping_up, behind):
        assert outs[-1].finish_reason is FinishReason.LENGTH and outs[-1].completion_tokens == 40
    assert [t for o in behind for t in o.token_ids] == [t for o in keeping_up for t in o.token_ids]
    assert "".join(o.text for o in behind) == "".join(o.text for o in keeping_up)
    merged_logprobs = [e for o in behind for e in o.logprobs or []]
    assert merged_logprobs == [e for o in keeping_up for e in o.logprobs or []]
    assert len(merged_logprobs) == 40


async def test_samples_of_one_request_are_never_merged_into_each_other(engine: AsyncEngine) -> None:
    params = SamplingParams(temperature=1.0, seed=3, n=3, max_tokens=30, ignore_eos=True)
    outs = []
    async for out in engine.generate("n3", [5, 6, 7], params):
        outs.append(out)
        await asyncio.sleep(0.03)
    for index in range(3):
        mine = [o for o in outs if o.index == index]
        assert sum(len(o.token_ids) for o in mine) == 30 and mine[-1].completion_tokens == 30
        assert mine[-1].finished and not any(o.finished for o in mine[:-1])
