"""POST /v1/completions (legacy): prompt forms, choices, streaming."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas
from tests.app.sse import json_events


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", **fields}


def chunk_validator(openapi: OpenAPISchemas):
    """OpenAI streams legacy chunks in the response's shape, with `finish_reason: null` until a choice
    ends and `usage: null` but on the last chunk, though the schema leaves null out; allow exactly that."""
    schema = copy.deepcopy(openapi.schema("CreateCompletionResponse"))
    schema["properties"]["choices"]["items"]["properties"]["finish_reason"]["nullable"] = True
    schema["properties"]["usage"]["nullable"] = True
    return lambda event: openapi.validate_with(schema, event)


async def test_string_prompt(client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas) -> None:
    response = await client.post("/v1/completions", json=completion(prompt="once upon a time", max_tokens=3))
    assert response.status_code == 200
    body = response.json()
    openapi.validate("CreateCompletionResponse", body)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "once upon a", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert engine.calls[0].prompt_ids == engine.encode("once upon a time")


async def test_default_max_tokens_is_16(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    response = await client.post("/v1/completions", json=completion(prompt="a b c"))
    assert engine.calls[0].params.max_tokens == 16
    assert response.json()["usage"]["completion_tokens"] == 16
    await client.post("/v1/completions", json=completion(prompt="a b c", max_tokens=None))
    assert engine.calls[1].params.max_tokens is None  # explicit null: until the context ends


async def test_list_of_strings_is_one_choice_per_prompt(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    response = await client.post(
        "/v1/completions", json=completion(prompt=["red fox", "blue sky sea"], max_tokens=2)
    )
    body = response.json()
    openapi.validate("CreateCompletionResponse", body)
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "red fox"), (1, "blue sky")]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    assert len({call.request_id for call in engine.calls}) == 2


async def test_token_id_prompt(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    ids = engine.encode("one two three")
    response = await client.post("/v1/completions", json=completion(prompt=ids, max_tokens=2))
    assert response.json()["choices"][0]["text"] == "one two"
    assert [call.prompt_ids for call in engine.calls] == [ids]


async def test_list_of_token_id_prompts(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    first, second = engine.encode("one two"), engine.encode("three")
    response = await client.post("/v1/completions", json=completion(prompt=[first, second], max_tokens=2))
    assert [c["text"] for c in response.json()["choices"]] == ["one two", "three three"]
    assert sorted(call.prompt_ids for call in engine.calls) == sorted([first, second])


async def test_out_of_range_token_id_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json=completion(prompt=[99999]))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


async def test_context_length_exceeded_names_prompt(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    response = await client.post("/v1/completions", json=completion(prompt="word " * 200))
    assert response.status_code == 400
    error = response.json()
    openapi.validate("ErrorResponse", error)
    assert error["error"]["code"] == "context_length_exceeded"
    assert error["error"]["param"] == "prompt"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream(client: httpx.AsyncClient, openapi: OpenAPISchemas, include_usage: bool) -> None:
    fields: dict[str, Any] = {"prompt": ["red fox", "blue sky sea"], "max_tokens": 3, "stream": True}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    response = await client.post("/v1/completions", json=completion(**fields))
    assert response.status_code == 200
    events = json_events(response.text)
    validate = chunk_validator(openapi)
    for event in events:
        validate(event)
        assert event["object"] == "text_completion"
        assert ("usage" in event) is include_usage
    assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1
    if include_usage:
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
        assert all(e["usage"] is None for e in events[:-1])
        events = events[:-1]
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    for event in events:
        (choice,) = event["choices"]
        assert not finishes[choice["index"]], "nothing may follow a choice's finish"
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            finishes[choice["index"]].append(choice["finish_reason"])
    assert texts == {0: "red fox red", 1: "blue sky sea"}
    assert finishes == {0: ["length"], 1: ["length"]}


async def test_stream_error_event(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    engine.fail_after = 1
    response = await client.post(
        "/v1/completions", json=completion(prompt="a b c", max_tokens=5, stream=True)
    )
    events = json_events(response.text)
    openapi.validate("ErrorResponse", events[-1])
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["a"]


async def test_one_failing_prompt_aborts_the_others(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.delay = 0.01
    engine.fail_word = "boom"
    response = await client.post(
        "/v1/completions", json=completion(prompt=["boom", "c d e f"], max_tokens=50)
    )
    assert response.status_code == 500
    failed, other = (call.request_id for call in engine.calls)
    assert engine.aborted == [other] and engine.closed_early == [other]
    assert engine.tokens_sent[other] < 10
