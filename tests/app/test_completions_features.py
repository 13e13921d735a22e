"""Legacy completions beyond a prompt: n per prompt, legacy logprobs, echo, best_of."""

from __future__ import annotations

from typing import Any

import httpx

from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas
from tests.app.sse import json_events

LEGACY = "/v1/completions"


def legacy(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "prompt": "a b", **fields}


async def test_n_per_prompt_numbers_choices_prompt_major(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    body = (await client.post(LEGACY, json=legacy(prompt=["a b", "c"], n=2, max_tokens=2))).json()
    openapi.validate("CreateCompletionResponse", body)
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, "a b"),
        (1, "a b"),
        (2, "c c"),
        (3, "c c"),
    ]
    prompts = sum(len(call.prompt_ids) for call in engine.calls)
    assert body["usage"]["prompt_tokens"] == prompts and body["usage"]["completion_tokens"] == 8


async def test_legacy_logprobs_shape(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    body = (await client.post(LEGACY, json=legacy(max_tokens=3, logprobs=2))).json()
    openapi.validate("CreateCompletionResponse", body)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] == "a b a"
    assert lp["text_offset"] == [0, 1, 3] and lp["token_logprobs"] == [-0.5] * 3
    assert all(len(top) == 2 for top in lp["top_logprobs"])
    response = await client.post(LEGACY, json=legacy(max_tokens=3, logprobs=0, stream=True))
    chunks = [c for e in json_events(response.text) for c in e["choices"] if c["logprobs"]]
    assert [c["logprobs"]["text_offset"][0] for c in chunks] == [0, 1, 3]


async def test_echo_puts_the_prompt_first(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    body = (await client.post(LEGACY, json=legacy(max_tokens=2, echo=True))).json()
    openapi.validate("CreateCompletionResponse", body)
    assert body["choices"][0]["text"] == "a b" + "a b"
    response = await client.post(LEGACY, json=legacy(max_tokens=2, echo=True, stream=True))
    texts = [c["text"] for e in json_events(response.text) for c in e["choices"]]
    assert texts[0] == "a b" and "".join(texts) == "a ba b"


async def test_echo_with_logprobs_covers_the_prompt(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    body = (await client.post(LEGACY, json=legacy(max_tokens=2, echo=True, logprobs=1))).json()
    choice = body["choices"][0]
    # The first prompt token has no logprob: null, as OpenAI's API answers (its spec's schema has
    # no null there, so this body is checked field by field).
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"] == "a ba b"
    assert lp["token_logprobs"] == [None, -1.0, -0.5, -0.5] and lp["top_logprobs"][0] is None
    assert lp["text_offset"] == [0, 1, 3, 4]
    response = await client.post(LEGACY, json=legacy(max_tokens=2, echo=True, logprobs=1, stream=True))
    first = json_events(response.text)[0]["choices"][0]
    assert first["text"] == "a b" and first["logprobs"]["tokens"] == ["a", " b"]


async def test_best_of_above_n_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(LEGACY, json=legacy(best_of=3, n=2))
    assert response.status_code == 400 and response.json()["error"]["param"] == "best_of"
    assert (await client.post(LEGACY, json=legacy(best_of=2, n=2))).status_code == 200
