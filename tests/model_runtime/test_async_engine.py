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
