"""POST /v1/embeddings, /tokenize and /detokenize through the real app (fake engine)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas

EMBED = "/v1/embeddings"


def embed(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "input": "hello world", **fields}


@pytest.mark.parametrize("value", ["one two", ["a", "b c"], [5, 6, 7], [[1, 2], [3]]])
async def test_every_input_shape(client: httpx.AsyncClient, openapi: OpenAPISchemas, value: Any) -> None:
    body = (await client.post(EMBED, json=embed(input=value))).json()
    openapi.validate("CreateEmbeddingResponse", body)
    expected = 1 if isinstance(value, str) or isinstance(value[0], int) else len(value)
    assert [d["index"] for d in body["data"]] == list(range(expected))
    for d in body["data"]:
        assert math.isclose(math.sqrt(sum(x * x for x in d["embedding"])), 1.0, rel_tol=1e-6)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


async def test_base64_and_dimensions(client: httpx.AsyncClient) -> None:
    floats = (await client.post(EMBED, json=embed())).json()["data"][0]["embedding"]
    b64 = (await client.post(EMBED, json=embed(encoding_format="base64"))).json()["data"][0]["embedding"]
    raw = base64.b64decode(b64)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(floats, rel=1e-6)
    short = (await client.post(EMBED, json=embed(dimensions=2))).json()["data"][0]["embedding"]
    assert len(short) == 2 and math.isclose(math.hypot(*short), 1.0, rel_tol=1e-6)
    assert short[0] / short[1] == pytest.approx(floats[0] / floats[1])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": [[1], []]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": 5}, "dimensions"),  # more than the model has
        ({"model": "other"}, "model"),
    ],
)
async def test_bad_embedding_requests(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, fields: dict[str, Any], param: str
) -> None:
    response = await client.post(EMBED, json=embed(**fields))
    assert response.status_code in (400, 404), response.text
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param


async def test_sdk_parses_embeddings(openai_client: AsyncOpenAI) -> None:
    result = await openai_client.embeddings.create(model="fake-model", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 4
    encoded = await openai_client.embeddings.create(model="fake-model", input="a", encoding_format="base64")
    assert isinstance(encoded.data[0].embedding, str)


async def test_tokenize_and_detokenize_round_trip(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    body = (await client.post("/tokenize", json={"prompt": "to be or not"})).json()
    assert body["count"] == 4 == len(body["tokens"]) and body["max_model_len"] == engine.max_model_len
    back = (await client.post("/detokenize", json={"tokens": body["tokens"]})).json()
    assert back == {"prompt": "to be or not"}
    chat = (await client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})).json()
    assert chat["tokens"] == engine.encode("user: hi")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, "messages"),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": [1], "model": "other"}, "model"),
    ],
)
async def test_bad_tokenizer_requests(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param
