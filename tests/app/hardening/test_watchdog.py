"""The watchdog over the real engine thread (a tiny random model): a thread that dies or a step
that never ends turns readiness 503, gives in-flight requests an error, and asks for a non-zero
exit; a request timeout frees the KV blocks of its sequence."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from model_runtime.async_engine import AsyncEngine
from model_runtime.config import EngineConfig
from tests.app.hardening.helpers import check_error, http
from tests.app.sse import json_events

BODY = {"model": "tiny", "prompt": "hello there", "max_tokens": 400, "ignore_eos": True}


@pytest.fixture
async def engine(tiny_model_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = AsyncEngine(EngineConfig(model_path=tiny_model_path, served_model_name="tiny", device="cpu"))
    await eng.start()
    yield eng
    await eng.shutdown()


async def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_dead_engine_thread_fails_the_server(engine: AsyncEngine) -> None:
    app = create_app(Settings(), engine=engine)
    exits: list[int] = []
    app.state.lifecycle.request_exit = exits.append
    real_step = engine.engine.step
    calls = 0

    def dying_step():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls > 3:
            raise SystemExit("simulated crash of the engine thread")  # not an Exception: kills it
        return real_step()

    engine.engine.step = dying_step  # type: ignore[method-assign]
    async with app.router.lifespan_context(app), http(app) as client:
        response = await client.post("/v1/completions", json={**BODY, "stream": True})
        events = json_events(response.text)
        assert "error" in events[-1]
        await wait_for(lambda: exits == [1])
        check_error(await client.get("/ready"), 503, "server_not_ready")
        check_error(await client.post("/v1/completions", json=BODY), 503, "server_not_ready")


async def test_a_stalled_step_fails_the_server(engine: AsyncEngine) -> None:
    app = create_app(Settings(engine_stall_timeout=0.5), engine=engine)
    exits: list[int] = []
    app.state.lifecycle.request_exit = exits.append
    release = threading.Event()
    real_step = engine.engine.step

    def stuck_step():  # type: ignore[no-untyped-def]
        release.wait(30)  # a step that does not come back (until the test lets it)
        return real_step()

    engine.engine.step = stuck_step  # type: ignore[method-assign]
    try:
        async with app.router.lifespan_context(app), http(app) as client:
            stream = await client.post("/v1/completions", json={**BODY, "stream": True})
            assert json_events(stream.text)[-1]["error"]["code"] == "engine_unavailable"
            await wait_for(lambda: exits == [1])
            check_error(await client.get("/ready"), 503, "server_not_ready")
    finally:
        release.set()


async def test_timeout_frees_the_sequence_and_its_kv_blocks(engine: AsyncEngine) -> None:
    app = create_app(Settings(request_timeout=0.5), engine=engine)
    real_step = engine.engine.step

    def slow_step():  # type: ignore[no-untyped-def]
        time.sleep(0.01)  # 400 tokens take 4 s, well past the limit
        return real_step()

    engine.engine.step = slow_step  # type: ignore[method-assign]
    async with http(app) as client:
        response = await client.post("/v1/completions", json=BODY)
        check_error(response, 408, "request_timeout")

        def idle() -> bool:
            stats = engine.stats()
            return stats.running == 0 and stats.waiting == 0 and stats.kv_blocks_free == stats.kv_blocks_total

        await wait_for(idle, 2.0)
