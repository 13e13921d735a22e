"""Raw HTTP against the real server, as curl and hand-written clients send it."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import MODEL, Server

LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Write a very long story."}],
    "max_tokens": 1500,
    "ignore_eos": True,
}


def test_health(server: Server) -> None:
    h = server.health()
    assert h["status"] == "ok" and h["kv_blocks_total"] > 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"model": "x", "messages": [', None),  # malformed JSON
        ("[1, 2]", None),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "model"),
        (json.dumps({"model": MODEL}), "messages"),
        (json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}), "messages.0.role"),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}),
            "top_p",
        ),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
            "max_tokens",
        ),
        (
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}
            ),
            "temperature",
        ),
        (
            json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}),
            "stop",
        ),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "bogus": 1}), "bogus"),
        # A lone UTF-16 surrogate is valid JSON but no valid text.
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "\ud800"}]}), "messages"),
    ],
)
def test_bad_requests_get_400_in_the_envelope(server: Server, body: str, param: str | None) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_unknown_route_is_404_in_the_envelope(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/v1/nothing-here", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_curl_style_stream_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][len("data:") :])
    assert first["choices"][0]["delta"]["role"] == "assistant"


def test_stream_disconnect_frees_the_sequence(server: Server) -> None:
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json={**LONG, "stream": True}, timeout=60
    ) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen == 5:
                # Checked while still reading: leaving the loop closes the connection.
                assert server.health()["running"] == 1
                break
    h = server.wait_idle(timeout=5)
    assert h["running"] == 0 and h["kv_blocks_free"] == h["kv_blocks_total"]


def test_non_stream_disconnect_frees_the_sequence(server: Server) -> None:
    def post() -> None:
        # The client gives up after 3 s and closes the connection.
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{server.base_url}/v1/chat/completions", json=LONG, timeout=3)

    t = threading.Thread(target=post)
    t.start()
    deadline = time.monotonic() + 2.5
    while server.health()["running"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["running"] == 1  # generating while the client waits
    t.join()
    h = server.wait_idle(timeout=5)
    assert h["running"] == 0 and h["kv_blocks_free"] == h["kv_blocks_total"]
    steps_after = server.health()["steps"]
    time.sleep(0.5)
    assert server.health()["steps"] == steps_after  # the engine is idle: no work for departed clients
