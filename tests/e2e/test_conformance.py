"""Real responses of the running server validated against the schemas of OpenAI's spec."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import pytest

from tests.app.openapi_schemas import SPEC_PATH, OpenAPISchemas, load_spec
from tests.e2e.conftest import MODEL, Server

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


@pytest.fixture(scope="module")
def openapi() -> OpenAPISchemas:
    return OpenAPISchemas(load_spec(SPEC_PATH))


def events(response: httpx.Response) -> list[dict]:
    data = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_models_and_chat_match_the_spec(server: Server, openapi: OpenAPISchemas) -> None:
    base = f"{server.base_url}/v1"
    openapi.validate("ListModelsResponse", httpx.get(f"{base}/models").json())
    openapi.validate("Model", httpx.get(f"{base}/models/{MODEL}").json())
    r = httpx.post(f"{base}/chat/completions", json=CHAT, timeout=60)
    openapi.validate("CreateChatCompletionResponse", r.json())
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60) as r:
        chunks = events(r)
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)


def test_completions_and_errors_match_the_spec(server: Server, openapi: OpenAPISchemas) -> None:
    base = f"{server.base_url}/v1"
    r = httpx.post(
        f"{base}/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 4}, timeout=60
    )
    openapi.validate("CreateCompletionResponse", r.json())
    for bad in ({**CHAT, "temperature": 9}, {**CHAT, "model": "missing"}, {**CHAT, "max_tokens": 10**6}):
        r = httpx.post(f"{base}/chat/completions", json=bad, timeout=60)
        assert r.status_code in (400, 404)
        openapi.validate("ErrorResponse", r.json())


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "maxLength": 20}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"n": 2, "temperature": 1.0, "seed": 1}, id="n"),
        pytest.param({"logprobs": True, "top_logprobs": 2}, id="logprobs"),
        pytest.param(
            {"tools": [WEATHER_TOOL], "tool_choice": "required", "max_tokens": 40}, id="tool-required"
        ),
        pytest.param({"response_format": SCHEMA_FORMAT, "max_tokens": 40}, id="json-schema"),
        pytest.param(
            {"presence_penalty": 1, "frequency_penalty": 1, "logit_bias": {"28": -100}}, id="penalties"
        ),
    ],
)
def test_chat_features_match_the_spec(server: Server, openapi: OpenAPISchemas, extra: dict) -> None:
    base = f"{server.base_url}/v1"
    body = {**CHAT, **extra}
    r = httpx.post(f"{base}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    openapi.validate("CreateChatCompletionResponse", r.json())
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{base}/chat/completions", json=stream, timeout=120) as r:
        chunks = events(r)
    assert chunks and chunks[-1]["usage"] is not None
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"logprobs": 3}, id="logprobs"),
        pytest.param({"echo": True, "n": 2}, id="echo-n"),
        pytest.param({"prompt": ["Hello", "Bye"], "n": 2, "temperature": 1.0}, id="prompts-n"),
    ],
)
def test_completion_features_match_the_spec(server: Server, openapi: OpenAPISchemas, extra: dict) -> None:
    base = f"{server.base_url}/v1"
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, **extra}
    r = httpx.post(f"{base}/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    openapi.validate("CreateCompletionResponse", r.json())
    with httpx.stream("POST", f"{base}/completions", json={**body, "stream": True}, timeout=120) as r:
        chunks = events(r)
    for chunk in chunks:
        # The spec has no stream schema for this endpoint: chunks share the response's shape,
        # except that finish_reason is null until a choice ends.
        for choice in chunk["choices"]:
            assert choice["finish_reason"] in (None, "stop", "length")
            if choice["finish_reason"] is None:
                choice = {**choice, "finish_reason": "length"}
            openapi.validate_with(
                openapi.schema("CreateCompletionResponse")["properties"]["choices"]["items"], choice
            )


def test_embeddings_match_the_spec(server: Server, openapi: OpenAPISchemas) -> None:
    base = f"{server.base_url}/v1"
    for body in (
        {"model": MODEL, "input": ["Hello there", "Goodbye"]},
        {"model": MODEL, "input": [[1, 2, 3]], "encoding_format": "base64", "dimensions": 64},
    ):
        r = httpx.post(f"{base}/embeddings", json=body, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()
        if body.get("encoding_format") == "base64":
            # The spec's schema only knows float arrays; a base64 string is little-endian float32.
            for item in data["data"]:
                raw = base64.b64decode(item["embedding"])
                item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            assert len(data["data"][0]["embedding"]) == body["dimensions"]
        openapi.validate("CreateEmbeddingResponse", data)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", {**CHAT, "logit_bias": {"999999": 5}}, "logit_bias"),
        ("chat/completions", {**CHAT, "top_logprobs": 25, "logprobs": True}, "top_logprobs"),
        (
            "chat/completions",
            {
                **CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"type": "nope"}}},
                    },
                },
            },
            "response_format",
        ),
        (
            "chat/completions",
            {
                **CHAT,
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
        ("chat/completions", {**CHAT, "n": 200}, "n"),
        ("completions", {"model": MODEL, "prompt": "x", "logprobs": 9}, "logprobs"),
        ("embeddings", {"model": MODEL, "input": ""}, "input"),
    ],
)
def test_feature_errors_match_the_spec(
    server: Server, openapi: OpenAPISchemas, path: str, body: dict, param: str
) -> None:
    r = httpx.post(f"{server.base_url}/v1/{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    openapi.validate("ErrorResponse", r.json())
    assert r.json()["error"]["param"].split(".")[0] == param
