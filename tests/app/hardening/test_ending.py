"""Requests the server ends: past --request-timeout, at the drain's deadline, or when the engine
fails. Each ends with a clean error in the envelope (a JSON answer, or an error event then [DONE]
in a stream) and its sequence is aborted in the engine."""

from __future__ import annotations

import asyncio
import json

from app.main import create_app
from app.request_context import EndReason
from app.settings import Settings
from tests.app.fake_engine import FakeEngine
from tests.app.hardening.helpers import CHAT, COMPLETIONS, chat_body, check_error, http
from tests.app.sse import json_events


async def test_timeout_ends_a_request_with_408_and_aborts_it() -> None:
    engine = FakeEngine(delay=0.05)
    app = create_app(Settings(request_timeout=0.3), engine=engine)
    async with http(app) as client:
        response = await client.post(CHAT, json=chat_body(max_tokens=100, ignore_eos=True))
        error = check_error(response, 408, "request_timeout")
        assert error["type"] == "timeout_error"
        # A quick request under the same limit is untouched.
        assert (await client.post(CHAT, json=chat_body(max_tokens=2))).status_code == 200
    (timed_out, _) = engine.calls
    assert timed_out.request_id in engine.closed_early
    assert 3 <= engine.tokens_sent[timed_out.request_id] < 100


async def test_timeout_in_a_stream_is_an_error_event_then_done() -> None:
    engine = FakeEngine(delay=0.05)
    app = create_app(Settings(request_timeout=0.3), engine=engine)
    async with http(app) as client:
        for path, body in (
            (CHAT, chat_body(max_tokens=100, stream=True)),
            (
                COMPLETIONS,
                {"model": "fake-model", "prompt": ["a b", "c d"], "max_tokens": 100, "stream": True},
            ),
        ):
            response = await client.post(path, json=body)
            assert response.status_code == 200
            events = json_events(response.text)
            assert events[-1]["error"]["code"] == "request_timeout"
            assert all("error" not in e for e in events[:-1])
    assert len(engine.closed_early) == 3  # every choice of both requests was stopped


async def test_drain_lets_requests_finish_then_exits_zero() -> None:
    engine = FakeEngine(delay=0.02)
    app = create_app(Settings(shutdown_timeout=5), engine=engine)
    lifecycle = app.state.lifecycle
    exits: list[int] = []
    lifecycle.request_exit = exits.append
    async with http(app) as client:
        running = [asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=10))) for _ in range(4)]
        while len(lifecycle.in_flight) < 4:
            await asyncio.sleep(0.005)
        lifecycle.begin_drain()
        check_error(await client.post(CHAT, json=chat_body()), 503, "server_not_ready")
        for response in await asyncio.gather(*running):
            assert response.status_code == 200
            assert response.json()["choices"][0]["finish_reason"] == "length"
        await asyncio.wait_for(lifecycle._drain_task, 2)
    assert exits == [0]


async def test_drain_deadline_ends_the_rest_with_an_error_event() -> None:
    engine = FakeEngine(delay=0.05)
    app = create_app(Settings(shutdown_timeout=0.3), engine=engine)
    lifecycle = app.state.lifecycle
    exits: list[int] = []
    lifecycle.request_exit = exits.append
    async with http(app) as client:
        quick = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=2)))
        slow = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=100, stream=True)))
        slow_json = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=100)))
        while len(lifecycle.in_flight) < 3:
            await asyncio.sleep(0.005)
        lifecycle.begin_drain()
        assert (await quick).status_code == 200
        events = json_events((await slow).text)
        assert events[-1]["error"]["code"] == "server_shutting_down"
        ended = await slow_json
        check_error(ended, 503, "server_shutting_down")
        assert ended.headers["retry-after"] == "1"
        await asyncio.wait_for(lifecycle._drain_task, 2)
    assert exits == [0]
    assert len(engine.closed_early) == 2


async def test_engine_failure_fails_in_flight_requests_and_exits_nonzero() -> None:
    engine = FakeEngine(delay=0.05)
    app = create_app(Settings(), engine=engine)
    lifecycle = app.state.lifecycle
    exits: list[int] = []
    lifecycle.request_exit = exits.append
    async with http(app) as client:
        stream = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=100, stream=True)))
        while not lifecycle.in_flight:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        await lifecycle.fail("test: the engine stopped")
        events = json_events((await stream).text)
        assert events[-1]["error"]["code"] == "engine_unavailable"
        check_error(await client.get("/ready"), 503, "server_not_ready")
    assert exits == [1]


def test_end_reasons_have_distinct_codes() -> None:
    from app.request_engine import ended_error

    codes = {ended_error(reason).detail.code for reason in EndReason}
    assert codes == {"request_timeout", "server_shutting_down", "engine_unavailable"}
    assert json.loads(ended_error(EndReason.SHUTDOWN).envelope().model_dump_json())["error"]["type"] == (
        "server_error"
    )
