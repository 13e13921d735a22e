"""A client that leaves, streaming or not, aborts its generation at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings
from tests.app.asgi_driver import Exchange, post
from tests.app.fake_engine import FakeEngine

CHAT = "/v1/chat/completions"
LEGACY = "/v1/completions"


@pytest.fixture
def slow_engine(engine: FakeEngine) -> FakeEngine:
    engine.delay = 0.02
    engine.max_model_len = 10_000
    return engine


def chat(**fields: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 500,
        **fields,
    }


def data_events(exchange: Exchange) -> int:
    return exchange.body.count(b"data:")


def assert_aborted_early(engine: FakeEngine, expected_requests: int = 1) -> None:
    ids = [call.request_id for call in engine.calls]
    assert len(ids) == expected_requests
    assert sorted(engine.aborted) == sorted(ids), "every request must be aborted"
    assert sorted(engine.closed_early) == sorted(ids), "every generator must be closed"
    assert all(engine.tokens_sent[i] < 50 for i in ids), engine.tokens_sent


async def test_stream_disconnect_aborts(app, slow_engine: FakeEngine) -> None:
    exchange = await post(app, CHAT, chat(stream=True), hang_up_when=lambda e: data_events(e) >= 3)
    assert exchange.status == 200
    assert b"[DONE]" not in exchange.body
    assert_aborted_early(slow_engine)


async def test_stream_broken_pipe_aborts(app, slow_engine: FakeEngine) -> None:
    # The server notices first: send() fails on the dead socket before any http.disconnect arrives.
    with pytest.raises(OSError):
        await post(app, CHAT, chat(stream=True), send_fails_when=lambda e: data_events(e) >= 3)
    assert_aborted_early(slow_engine)


async def test_legacy_stream_with_several_prompts_disconnect_aborts_all(app, slow_engine: FakeEngine) -> None:
    body = {"model": "fake-model", "prompt": ["a b", "c d", "e f"], "max_tokens": 500, "stream": True}
    await post(app, LEGACY, body, hang_up_when=lambda e: data_events(e) >= 4)
    assert_aborted_early(slow_engine, expected_requests=3)


@pytest.mark.parametrize(
    ("path", "body", "requests"),
    [
        (CHAT, chat(), 1),
        (LEGACY, {"model": "fake-model", "prompt": ["a", "b"], "max_tokens": 500}, 2),
    ],
)
async def test_non_stream_disconnect_aborts(
    app, slow_engine: FakeEngine, path: str, body: dict[str, Any], requests: int
) -> None:
    started = time.monotonic()
    exchange = await post(app, path, body, hang_up_after=0.2)
    assert time.monotonic() - started < 2, "the handler must return soon after the client left"
    assert exchange.status == 499  # nobody reads it; it is for the access log
    assert_aborted_early(slow_engine, expected_requests=requests)


async def test_finished_request_is_not_aborted(app, engine: FakeEngine) -> None:
    exchange = await post(app, CHAT, chat(max_tokens=3))
    assert exchange.status == 200
    streamed = await post(app, CHAT, chat(max_tokens=3, stream=True))
    assert streamed.body.rstrip().endswith(b"data: [DONE]")
    assert engine.aborted == [] and engine.closed_early == []


@contextlib.asynccontextmanager
async def running_server(app: Any) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_real_server_stream_close_aborts(slow_engine: FakeEngine) -> None:
    """Through uvicorn and a real socket: read a few events, close the response."""
    app = create_app(Settings(), engine=slow_engine)
    async with running_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream("POST", CHAT, json=chat(stream=True)) as response:
            assert response.status_code == 200
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data:")
                if events == 3:
                    break
        for _ in range(100):
            if slow_engine.aborted:
                break
            await asyncio.sleep(0.02)
    assert_aborted_early(slow_engine)


async def test_real_server_non_stream_timeout_aborts(slow_engine: FakeEngine) -> None:
    """Through uvicorn: a client that gives up on a non-streamed request (timeout) aborts it."""
    app = create_app(Settings(), engine=slow_engine)
    async with running_server(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(CHAT, json=chat())
        for _ in range(100):
            if slow_engine.aborted:
                break
            await asyncio.sleep(0.02)
    assert_aborted_early(slow_engine)


async def test_closing_a_stream_closes_its_events_at_once() -> None:
    """sse-starlette closes the iterator it was given when a send fails; the framing around our
    events must pass that on in the same call (the events' cleanup aborts the generation), not
    leave the events to the garbage collector's next round."""
    from app.responses import _framed

    closed = []

    async def events() -> AsyncGenerator[str, None]:
        try:
            yield '{"a": 1}'
            yield "[DONE]"
        finally:
            closed.append(True)

    framed = _framed(events())
    assert await anext(framed) == b'data: {"a": 1}\n\n'
    await framed.aclose()
    assert closed == [True]
