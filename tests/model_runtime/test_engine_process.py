"""The engine in a process of its own: the same outputs as the engine thread, the client's errors
raised before anything crosses the pipe, and every way the child can end."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from model_runtime.api import (
    ContextLengthExceeded,
    EngineStats,
    FinishReason,
    InvalidPrompt,
    RequestOutput,
    SamplingParams,
)
from model_runtime.async_engine import AsyncEngine
from model_runtime.config import EngineConfig
from model_runtime.engine_child import PipeInbox
from model_runtime.engine_front import EngineFront
from model_runtime.engine_loop import Abort, Stop
from model_runtime.engine_process import EngineProcess, engine_for

LONG = SamplingParams(temperature=0.0, max_tokens=4000, ignore_eos=True)


def config(path: Path) -> EngineConfig:
    return EngineConfig(model_path=path, served_model_name="tiny", device="cpu", max_model_len=8192)


@pytest.fixture
async def engine(tiny_model_path: Path) -> AsyncIterator[EngineProcess]:
    eng = EngineProcess(config(tiny_model_path))
    await eng.start()
    yield eng
    await eng.shutdown()


async def outputs(
    engine: EngineFront, request_id: str, prompt: list[int], params: SamplingParams
) -> list[RequestOutput]:
    return [o async for o in engine.generate(request_id, prompt, params)]


async def drain(stream: AsyncIterator[RequestOutput]) -> list[RequestOutput]:
    return [o async for o in stream]


def child_pid(engine: EngineProcess) -> int:
    assert engine._process is not None and engine._process.pid is not None
    return engine._process.pid


async def wait_until_idle(engine: EngineFront) -> EngineStats:
    for _ in range(300):
        stats = engine.stats()
        if stats.running == 0 and stats.waiting == 0 and stats.kv_blocks_free == stats.kv_blocks_total:
            return stats
        await asyncio.sleep(0.01)
    return engine.stats()


@pytest.mark.parametrize("overlap_steps", [False, True])
async def test_outputs_equal_the_engine_threads(tiny_model_path: Path, overlap_steps: bool) -> None:
    # With CUDA the engine runs in its own process with overlapped steps: forced on here too.
    engine = EngineProcess(replace(config(tiny_model_path), overlap_steps=overlap_steps))
    await engine.start()
    try:
        await outputs_equal_the_engine_threads(engine, tiny_model_path)
    finally:
        await engine.shutdown()


async def outputs_equal_the_engine_threads(engine: EngineProcess, tiny_model_path: Path) -> None:
    requests = [
        ("greedy", [5, 6, 7, 8], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)),
        (
            "seeded",
            [9, 10, 11],
            SamplingParams(temperature=0.9, top_p=0.9, seed=7, n=2, max_tokens=16, ignore_eos=True),
        ),
        ("stop", [5, 6, 7, 8], SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[7])),
    ]
    thread = AsyncEngine(engine.config)
    await thread.start()
    generated = 0
    try:
        for request_id, prompt, params in requests:
            theirs = await outputs(thread, request_id, prompt, params)
            ours = await outputs(engine, request_id, prompt, params)
            generated += sum(o.completion_tokens for o in ours if o.finished)
            for index in range(params.n):
                mine = [o for o in ours if o.index == index]
                reference = [o for o in theirs if o.index == index]
                assert [t for o in mine for t in o.token_ids] == [t for o in reference for t in o.token_ids]
                assert "".join(o.text for o in mine) == "".join(o.text for o in reference)
                assert [e for o in mine for e in o.logprobs or []] == [
                    e for o in reference for e in o.logprobs or []
                ]
                assert mine[-1].finish_reason is reference[-1].finish_reason
                assert (mine[-1].prompt_tokens, mine[-1].completion_tokens) == (
                    reference[-1].prompt_tokens,
                    reference[-1].completion_tokens,
                )
        info, reference_info = engine.model_info, thread.model_info
        assert (info.id, info.max_model_len, info.vocab_size) == (
            reference_info.id,
            reference_info.max_model_len,
            reference_info.vocab_size,
        )
        assert engine.encode("hello there") == thread.encode("hello there")
        assert engine.decode([5, 6, 7]) == thread.decode([5, 6, 7])
    finally:
        await thread.shutdown()
    stats = await wait_until_idle(engine)
    assert stats.kv_blocks_free == stats.kv_blocks_total
    assert stats.tokens_generated == generated and generated > 24 + 2 * 16


async def test_closing_a_stream_aborts_it_in_the_child_and_frees_its_blocks(engine: EngineProcess) -> None:
    stream = engine.generate("a", [5, 6, 7], LONG)
    await anext(stream)
    assert engine.stats().running == 1
    await stream.aclose()
    stats = await wait_until_idle(engine)
    assert stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks_total
    assert stats.tokens_generated < 4000


async def test_the_clients_errors_are_raised_before_anything_is_sent(engine: EngineProcess) -> None:
    with pytest.raises(ContextLengthExceeded):
        await anext(engine.generate("long", [5] * 8000, SamplingParams(max_tokens=500)))
    with pytest.raises(InvalidPrompt) as error:
        await engine.embed([[5, 6], []])
    assert error.value.param == "input"
    vectors = await engine.embed([[5, 6, 7], [8]])
    assert len(vectors) == 2 and abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-4
    assert engine.is_alive() and engine.stats().running == 0


async def test_a_killed_engine_process_fails_its_requests_and_refuses_new_ones(engine: EngineProcess) -> None:
    stream = engine.generate("a", [5, 6, 7], LONG)
    await anext(stream)
    os.kill(child_pid(engine), signal.SIGKILL)
    last = (await asyncio.wait_for(drain(stream), 30))[-1]
    assert last.finish_reason is FinishReason.ERROR and "exited unexpectedly" in (last.error or "")
    assert not engine.is_alive()
    with pytest.raises(RuntimeError):
        await anext(engine.generate("b", [5], LONG))
    with pytest.raises(RuntimeError):
        await engine.embed([[5]])


async def test_shutdown_ends_running_requests_and_the_process(engine: EngineProcess) -> None:
    stream = engine.generate("a", [5, 6, 7], LONG)
    await anext(stream)
    process = engine._process
    assert process is not None
    await engine.shutdown()
    last = (await asyncio.wait_for(drain(stream), 30))[-1]
    assert last.finish_reason is FinishReason.ERROR and "shutting down" in (last.error or "")
    assert process.exitcode == 0 and not engine.is_alive()


async def test_a_model_that_does_not_load_fails_start_and_leaves_no_process(tmp_path: Path) -> None:
    engine = EngineProcess(config(tmp_path))
    with pytest.raises(RuntimeError, match="could not load the model"):
        await engine.start()
    assert not engine.is_alive() and not multiprocessing.active_children()


async def test_the_engines_log_lines_reach_the_servers_handlers(
    tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    engine = EngineProcess(config(tiny_model_path))
    await engine.start()
    await engine.shutdown()
    loaded = [
        r for r in caplog.records if r.name == "model_runtime.engine" and "loaded tiny" in r.getMessage()
    ]
    assert loaded and loaded[0].process != os.getpid()


def test_a_step_in_progress_shows_in_the_stats(tiny_model_path: Path) -> None:
    # The watchdog's stall check reads this; the child writes the step's start into shared memory.
    engine = EngineProcess(config(tiny_model_path))
    engine._stats = EngineStats(
        waiting=0, running=1, kv_blocks_total=8, kv_blocks_free=7, steps=3, tokens_generated=3
    )
    assert engine.stats().step_running_s == 0.0
    engine._step_started.value = time.monotonic() - 5.0
    assert 5.0 <= engine.stats().step_running_s < 6.0


def test_the_childs_inbox_reads_the_pipe_and_its_end_as_one_stop() -> None:
    receiving, sending = multiprocessing.Pipe(duplex=False)
    inbox = PipeInbox(receiving)
    with pytest.raises(queue.Empty):
        inbox.get_nowait()
    sending.send(Abort("a"))
    sending.send(Abort("b"))
    sending.close()
    assert [inbox.get_nowait().request_id, inbox.get().request_id] == ["a", "b"]  # type: ignore[union-attr]
    assert isinstance(inbox.get_nowait(), Stop)
    with pytest.raises(queue.Empty):
        inbox.get_nowait()
    assert isinstance(inbox.get(), Stop)


def test_the_engine_has_its_own_process_by_default_only_on_cuda(tiny_model_path: Path) -> None:
    assert isinstance(engine_for(config(tiny_model_path)), AsyncEngine)
    assert isinstance(engine_for(config(tiny_model_path), own_process=True), EngineProcess)
