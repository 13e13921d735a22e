"""The real server with its engine in a process of its own (`--engine-process`, the default with
CUDA), on the real default model, through the official client: the same answers as the engine
thread's, a drain that finishes streams, and an engine process that never outlives the server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from openai import OpenAI

from tests.e2e.conftest import MODEL, Server
from tests.e2e.own_server import OwnServer, own_server

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def engine_child(server: OwnServer) -> int:
    """The pid of the server's engine process (multiprocessing's resource tracker is a child too)."""
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    engines = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(engines) == 1, children
    return engines[0]


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie: exited, waiting for its parent to read its status
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


async def stream_events(server: OwnServer, max_tokens: int, once_streaming: Callable[[], None]) -> list[str]:
    """A chat stream's `data:` payloads; `once_streaming` runs when the first generated text is in."""
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    events: list[str] = []
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
                if len(events) == 2:  # the role chunk, then the first text
                    once_streaming()
    return events


def answer(base_url: str, stream: bool) -> tuple[str, str | None]:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="none")
    if not stream:
        done = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, temperature=0)
        return done.choices[0].message.content or "", done.choices[0].finish_reason
    text, reason = "", None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=40, temperature=0, stream=True
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
    return text, reason


def test_answers_equal_the_engine_threads_and_the_engine_ends_with_the_server(
    server: Server, tmp_path: Path
) -> None:
    expected = answer(server.base_url, stream=False)
    with own_server(tmp_path, "--engine-process") as own:
        assert "in a process of its own" in own.log_text()
        child = engine_child(own)
        assert answer(own.base_url, stream=False) == expected
        assert answer(own.base_url, stream=True) == expected
        health = httpx.get(f"{own.base_url}/health", timeout=5).json()
        assert health["kv_blocks_free"] == health["kv_blocks_total"] and health["running"] == 0
        # The engine's log lines reach the server's log.
        assert "loaded smollm2" in own.log_text()
        own.proc.kill()  # no shutdown at all: the engine must still not outlive the server
        own.proc.wait(timeout=30)
        assert gone(child, within=30)


async def test_sigterm_drains_streams_then_stops_the_engine(tmp_path: Path) -> None:
    with own_server(tmp_path, "--engine-process", "--shutdown-timeout", "20") as own:
        child = engine_child(own)
        events = await stream_events(own, 30, lambda: own.proc.send_signal(signal.SIGTERM))
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        code = await asyncio.to_thread(own.proc.wait, 30)
        assert code == 0, own.log_text()[-2000:]
        assert gone(child, within=5)


async def test_a_dead_engine_process_fails_its_streams_and_the_server(tmp_path: Path) -> None:
    with own_server(tmp_path, "--engine-process") as own:
        child = engine_child(own)
        events = await stream_events(own, 1000, lambda: os.kill(child, signal.SIGKILL))
        assert events[-1] == "[DONE]"
        assert "error" in json.loads(events[-2]), events[-3:]
        # The watchdog finds the engine gone and fails the server, which exits non-zero for its
        # supervisor to restart it.
        code = await asyncio.to_thread(own.proc.wait, 30)
        assert code != 0
        assert "the engine process exited unexpectedly" in own.log_text()
