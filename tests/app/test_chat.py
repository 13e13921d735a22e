"""POST /v1/chat/completions: the answer, and the stream's chunk rules."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas
from tests.app.sse import json_events

MESSAGES = [{"role": "user", "content": "tell me a story"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": MESSAGES, **fields}


async def test_chat_completion(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    response = await client.post("/v1/chat/completions", json=chat(max_tokens=3))
    assert response.status_code == 200
    body = response.json()
    openapi.validate("CreateChatCompletionResponse", body)
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-model"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "user: tell me", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    prompt_tokens = len(engine.calls[0].prompt_ids)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 3,
        "total_tokens": prompt_tokens + 3,
    }
    assert engine.aborted == [] and engine.closed_early == []


async def test_chat_messages_reach_the_template(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "really"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "name": "ann",
        },
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go"},
    ]
    response = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": messages})
    assert response.status_code == 200
    rendered = engine.rendered[0]
    assert [(m.role, m.content) for m in rendered] == [
        ("system", "be brief"),
        ("system", "really"),  # developer is the newer name of system
        ("user", "a\nb"),
        ("assistant", "ok"),
        ("user", "go"),
    ]
    assert rendered[2].extra == {"name": "ann"}


async def test_sampling_params_from_request(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=chat(
            max_tokens=7,
            temperature=0.5,
            top_p=0.9,
            seed=42,
            stop=["x", "y"],
            top_k=20,
            min_p=0.05,
            ignore_eos=True,
            stop_token_ids=[3],
            user="someone",
        ),
    )
    assert response.status_code == 200, response.text
    params = engine.calls[0].params
    assert (params.max_tokens, params.temperature, params.top_p, params.seed) == (7, 0.5, 0.9, 42)
    assert (params.stop, params.top_k, params.min_p, params.ignore_eos) == (("x", "y"), 20, 0.05, True)
    assert params.stop_token_ids == (3,)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"max_tokens": None, "temperature": 1.0, "top_p": 1.0, "top_k": None, "min_p": 0.0, "stop": ()}),
        ({"max_tokens": 5, "max_completion_tokens": 9}, {"max_tokens": 9}),  # the newer name wins
        ({"max_completion_tokens": 4}, {"max_tokens": 4}),
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": None, "top_p": None}, {"temperature": 1.0, "top_p": 1.0}),
        ({"top_p": 0}, {"temperature": 0.0, "top_p": 1.0}),  # the p -> 0 limit is greedy
        ({"top_k": -1}, {"top_k": None}),
        ({"top_k": 0}, {"top_k": None}),
        ({"stop": "END"}, {"stop": ("END",)}),
        ({"stop": None}, {"stop": ()}),
    ],
)
async def test_parameter_mapping(
    client: httpx.AsyncClient, engine: FakeEngine, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = await client.post("/v1/chat/completions", json=chat(**fields))
    assert response.status_code == 200, response.text
    params = engine.calls[0].params
    assert {name: getattr(params, name) for name in expected} == expected


async def test_stop_string_finishes_with_stop(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat(stop="me", max_tokens=10))
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "user: tell "
    assert choice["finish_reason"] == "stop"


async def test_stop_token_id_finishes_with_stop(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    (hi,) = engine.encode("hi")
    response = await client.post(
        "/v1/chat/completions", json=chat(messages=[{"role": "user", "content": "hi"}], stop_token_ids=[hi])
    )
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("user:", "stop")


def _check_stream(events: list[dict[str, Any]], include_usage: bool, openapi: OpenAPISchemas) -> str:
    """OpenAI's chunk rules; returns the streamed text."""
    for event in events:
        openapi.validate("CreateChatCompletionStreamResponse", event)
        assert event["object"] == "chat.completion.chunk"
        assert ("usage" in event) is include_usage
    assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1
    assert events[0]["id"].startswith("chatcmpl-")

    usage_chunks = [e for e in events if e.get("usage") is not None]
    if include_usage:
        assert usage_chunks == [events[-1]] and events[-1]["choices"] == []
        choice_events = events[:-1]
    else:
        assert usage_chunks == []
        choice_events = events
    assert all(len(e["choices"]) == 1 for e in choice_events)
    choices = [e["choices"][0] for e in choice_events]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["delta"] for c in choices[1:])
    finishes = [c for c in choices if c["finish_reason"] is not None]
    assert finishes == [choices[-1]] and choices[-1]["delta"] == {}
    assert all(c["index"] == 0 and c["logprobs"] is None for c in choices)
    return "".join(c["delta"].get("content", "") for c in choices)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_chunk_rules(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas, include_usage: bool
) -> None:
    fields: dict[str, Any] = {"stream": True, "max_tokens": 4}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    response = await client.post("/v1/chat/completions", json=chat(**fields))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = json_events(response.text)
    text = _check_stream(events, include_usage, openapi)
    assert text == "user: tell me a"
    assert events[-1 if not include_usage else -2]["choices"][0]["finish_reason"] == "length"
    if include_usage:
        prompt_tokens = len(engine.calls[0].prompt_ids)
        assert events[-1]["usage"] == {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 4,
            "total_tokens": prompt_tokens + 4,
        }


async def test_stream_include_usage_false_sends_no_usage(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=chat(stream=True, max_tokens=2, stream_options={"include_usage": False})
    )
    _check_stream(json_events(response.text), False, openapi)


async def test_stream_text_equals_non_stream_text(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    plain = await client.post("/v1/chat/completions", json=chat(max_tokens=6, stop=" a st"))
    streamed = await client.post("/v1/chat/completions", json=chat(max_tokens=6, stop=" a st", stream=True))
    text = _check_stream(json_events(streamed.text), False, openapi)
    assert text == plain.json()["choices"][0]["message"]["content"] == "user: tell me"


@pytest.mark.parametrize("failure", ["fail_after", "raise_after"])
async def test_mid_stream_failure_is_one_error_event_then_done(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas, failure: str
) -> None:
    setattr(engine, failure, 2)
    response = await client.post("/v1/chat/completions", json=chat(stream=True, max_tokens=10))
    assert response.status_code == 200
    events = json_events(response.text)
    errors = [e for e in events if "error" in e]
    assert errors == [events[-1]]
    openapi.validate("ErrorResponse", errors[0])
    assert errors[0]["error"]["type"] == "server_error"
    if failure == "fail_after":
        assert errors[0]["error"]["message"] == "fake engine failure"
    chunks = events[:-1]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "user:"},
        {"content": " tell"},
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_non_stream_failure_is_500_envelope(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    engine.fail_after = 1
    response = await client.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert response.status_code == 500
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["message"] == "fake engine failure"


async def test_server_side_abort_is_503_not_a_finish_reason(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.abort_after = 1
    response = await client.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "request_aborted"
    streamed = await client.post("/v1/chat/completions", json=chat(max_tokens=5, stream=True))
    events = json_events(streamed.text)
    assert events[-1]["error"]["code"] == "request_aborted"
    assert all(c["choices"][0]["finish_reason"] is None for c in events[:-1])
