"""Admission: a full server answers 429 with Retry-After at once, before reading or tokenizing
anything; admitted requests are unaffected; a server that is not serving answers 503."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.lifecycle import Phase
from app.main import create_app
from app.settings import Settings
from tests.app.fake_engine import FakeEngine
from tests.app.hardening.helpers import CHAT, chat_body, check_error, http


@pytest.fixture
def slow_engine() -> FakeEngine:
    return FakeEngine(delay=0.05)


async def test_requests_beyond_the_queue_get_429_and_admitted_ones_finish(slow_engine: FakeEngine) -> None:
    # 2 running + 2 queued = 4 slots; 12 arrive at once.
    app = create_app(Settings(max_num_seqs=2, max_queued_requests=2), engine=slow_engine)
    encoded: list[str] = []
    encode = slow_engine.render_chat
    slow_engine.render_chat = lambda messages: encoded.append("x") or encode(messages)  # type: ignore[method-assign]
    async with http(app) as client:
        responses = await asyncio.gather(
            *(client.post(CHAT, json=chat_body(max_tokens=5)) for _ in range(12))
        )
        admitted = [r for r in responses if r.status_code == 200]
        rejected = [r for r in responses if r.status_code != 200]
        assert len(admitted) == 4 and len(rejected) == 8
        for response in admitted:
            assert response.json()["choices"][0]["message"]["content"]
        for response in rejected:
            error = check_error(response, 429, "rate_limit_exceeded")
            assert error["type"] == "requests"
            assert response.headers["retry-after"] == "1"
        # Rejected requests never reached the chat template (the tokenizer).
        assert len(encoded) == 4
        # The slots come back: the next request is admitted.
        assert (await client.post(CHAT, json=chat_body(max_tokens=2))).status_code == 200
        assert app.state.admission.requests == 0 and app.state.admission.tokens == 0


async def test_a_rejection_is_fast_while_the_server_is_busy(slow_engine: FakeEngine) -> None:
    app = create_app(Settings(max_num_seqs=1, max_queued_requests=0), engine=slow_engine)
    async with http(app) as client:
        busy = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=20)))
        while app.state.admission.requests == 0:
            await asyncio.sleep(0.005)
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            response = await client.post(CHAT, json=chat_body(content="x " * 20_000))
            timings.append(time.perf_counter() - started)
            check_error(response, 429, "rate_limit_exceeded")
        assert (await busy).status_code == 200
    timings.sort()
    assert timings[len(timings) // 2] < 0.05, timings


async def test_the_token_bound_rejects_before_queueing(slow_engine: FakeEngine) -> None:
    app = create_app(Settings(max_queued_tokens=40), engine=slow_engine)
    async with http(app) as client:
        first = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=30)))
        while app.state.admission.tokens == 0:
            await asyncio.sleep(0.005)
        second = await client.post(CHAT, json=chat_body(max_tokens=30))
        error = check_error(second, 429, "rate_limit_exceeded")
        assert error["type"] == "tokens"
        assert second.headers["retry-after"] == "1"
        assert (await first).status_code == 200
        # Alone, a request larger than the bound is still served: it is never refused forever.
        assert (await client.post(CHAT, json=chat_body(max_tokens=60))).status_code == 200
    assert len(slow_engine.calls) == 2


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.DRAINING, Phase.FAILED])
async def test_not_serving_is_503_with_retry_after(engine: FakeEngine, phase: Phase) -> None:
    app = create_app(Settings(), engine=engine)
    app.state.lifecycle.phase = phase
    async with http(app) as client:
        for response in (await client.post(CHAT, json=chat_body()), await client.get("/v1/models")):
            check_error(response, 503, "server_not_ready")
            assert response.headers["retry-after"] == "1"
        ready = await client.get("/ready")
        check_error(ready, 503, "server_not_ready")
        assert ready.headers["retry-after"] == "1"
        # Liveness and metrics still answer: the process is alive and observable.
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    assert engine.calls == []


async def test_ready_when_serving_and_503_when_the_engine_is_gone(engine: FakeEngine) -> None:
    app = create_app(Settings(), engine=engine)
    async with http(app) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        engine.alive = False
        gone = await client.get("/ready")
        check_error(gone, 503, "engine_unavailable")
        assert gone.headers["retry-after"] == "1"
