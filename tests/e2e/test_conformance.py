"""Real responses of the running server validated against the schemas of OpenAI's spec."""

from __future__ import annotations

import json

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
