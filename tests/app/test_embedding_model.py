"""`--embedding-model`: a tiny random BERT behind the real app, beside the fake language model."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from app.main import create_app
from app.settings import Settings
from model_runtime.encoder import AsyncEncoder, Encoder, resolve_encoder
from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas
from tests.model_runtime.tiny_encoder import HIDDEN, MAX_POSITIONS, WORDS, write_tiny_bert

EMBED = "/v1/embeddings"
MODEL = "tiny-bert"


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "Tiny-BERT")


@pytest.fixture(scope="module")
def reference(bert: Path) -> Encoder:
    return Encoder(resolve_encoder(str(bert)), "cpu")


@pytest.fixture
async def encoder(bert: Path) -> AsyncIterator[AsyncEncoder]:
    encoder = AsyncEncoder(resolve_encoder(str(bert)), "cpu")
    await encoder.start()
    yield encoder
    await encoder.shutdown()


@pytest.fixture
def app(engine: FakeEngine, encoder: AsyncEncoder):
    return create_app(Settings(), engine=engine, encoder=encoder)


def embed(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "the cat sat on a mat", **fields}


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def test_models_list_the_embedding_model(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    body = (await client.get("/v1/models")).json()
    openapi.validate("ListModelsResponse", body)
    assert [card["id"] for card in body["data"]] == ["fake-model", MODEL]
    card = await client.get(f"/v1/models/{MODEL}")
    assert card.status_code == 200
    openapi.validate("Model", card.json())
    assert card.json()["id"] == MODEL


async def test_sdk_embeds_with_the_embedding_model(openai_client: AsyncOpenAI, reference: Encoder) -> None:
    texts = ["the cat sat on a mat", "dog ran"]
    result = await openai_client.embeddings.create(model=MODEL, input=texts)
    assert result.model == MODEL
    expected = reference.embed(texts).vectors
    for item, vector in zip(result.data, expected, strict=True):
        assert len(item.embedding) == HIDDEN
        assert item.embedding == pytest.approx(vector, abs=1e-6)
        assert math.isclose(norm(item.embedding), 1.0, rel_tol=1e-5)
    # The BERT tokenizer's tokens, [CLS] and [SEP] included: 8 + 4.
    assert result.usage.prompt_tokens == result.usage.total_tokens == 12


@pytest.mark.parametrize("value", ["red blue", ["a song", "hello world park"], [5, 6, 7], [[5, 6], [7]]])
async def test_every_input_shape(client: httpx.AsyncClient, openapi: OpenAPISchemas, value: Any) -> None:
    response = await client.post(EMBED, json=embed(input=value))
    assert response.status_code == 200, response.text
    body = response.json()
    openapi.validate("CreateEmbeddingResponse", body)
    expected = 1 if isinstance(value, str) or isinstance(value[0], int) else len(value)
    assert [d["index"] for d in body["data"]] == list(range(expected))
    assert all(len(d["embedding"]) == HIDDEN for d in body["data"])


async def test_token_ids_are_embedded_as_given(client: httpx.AsyncClient, reference: Encoder) -> None:
    ids = reference.encode("hello world")
    from_ids = (await client.post(EMBED, json=embed(input=ids))).json()
    from_text = (await client.post(EMBED, json=embed(input="hello world"))).json()
    assert from_ids["data"][0]["embedding"] == pytest.approx(from_text["data"][0]["embedding"], abs=1e-6)
    assert from_ids["usage"]["prompt_tokens"] == len(ids) == 4


async def test_dimensions_and_base64(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    full = (await client.post(EMBED, json=embed())).json()["data"][0]["embedding"]
    short_body = (await client.post(EMBED, json=embed(dimensions=8))).json()
    openapi.validate("CreateEmbeddingResponse", short_body)
    short = short_body["data"][0]["embedding"]
    assert len(short) == 8 and math.isclose(norm(short), 1.0, rel_tol=1e-6)
    scale = norm(full[:8])
    assert short == pytest.approx([x / scale for x in full[:8]], rel=1e-5)
    encoded = (await client.post(EMBED, json=embed(encoding_format="base64"))).json()
    # (OpenAI's description types `embedding` as an array only, so base64 is checked by hand.)
    assert encoded["object"] == "list" and encoded["data"][0]["object"] == "embedding"
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack(f"<{HIDDEN}f", raw)) == pytest.approx(full, rel=1e-6)


async def test_the_language_model_still_embeds(client: httpx.AsyncClient) -> None:
    body = (await client.post(EMBED, json=embed(model="fake-model"))).json()
    assert body["model"] == "fake-model" and len(body["data"][0]["embedding"]) == 4


@pytest.mark.parametrize(
    ("fields", "status", "param", "code"),
    [
        ({"input": [5, len(WORDS)]}, 400, "input", "invalid_request_error"),
        ({"input": [[5], [len(WORDS) + 100]]}, 400, "input", "invalid_request_error"),
        ({"input": " ".join(["cat"] * MAX_POSITIONS)}, 400, "input", "context_length_exceeded"),
        ({"input": [5] * (MAX_POSITIONS + 1)}, 400, "input", "context_length_exceeded"),
        ({"dimensions": HIDDEN + 1}, 400, "dimensions", "invalid_value"),
        ({"model": "other"}, 404, "model", "model_not_found"),
    ],
)
async def test_bad_requests_get_the_openai_envelope(
    client: httpx.AsyncClient,
    openapi: OpenAPISchemas,
    fields: dict[str, Any],
    status: int,
    param: str,
    code: str,
) -> None:
    response = await client.post(EMBED, json=embed(**fields))
    assert response.status_code == status, response.text
    openapi.validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


async def test_tokenize_with_the_embedding_model_uses_its_tokenizer(
    client: httpx.AsyncClient, bert: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert, local_files_only=True)
    text = "the cat sat on a mat"
    expected = tokenizer(text)["input_ids"]
    assert expected[0] == WORDS.index("[CLS]") and expected[-1] == WORDS.index("[SEP]")
    response = await client.post("/tokenize", json={"model": MODEL, "prompt": text})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {"count": len(expected), "max_model_len": MAX_POSITIONS, "tokens": expected}
    # The same count /v1/embeddings bills for that text.
    usage = (await client.post(EMBED, json=embed(input=text))).json()["usage"]
    assert usage["prompt_tokens"] == body["count"]

    back = await client.post("/detokenize", json={"model": MODEL, "tokens": body["tokens"]})
    assert back.status_code == 200, back.text
    assert back.json() == {"prompt": text} == {"prompt": tokenizer.decode(expected, skip_special_tokens=True)}


async def test_tokenizer_endpoints_still_serve_the_language_model(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    for model in ("fake-model", None):
        fields = {} if model is None else {"model": model}
        body = (await client.post("/tokenize", json={"prompt": "to be or not", **fields})).json()
        assert body["tokens"] == engine.encode("to be or not")
        assert body["max_model_len"] == engine.max_model_len
        back = (await client.post("/detokenize", json={"tokens": body["tokens"], **fields})).json()
        assert back == {"prompt": "to be or not"}


@pytest.mark.parametrize(
    ("path", "fields", "param", "code"),
    [
        ("/detokenize", {"tokens": [2, len(WORDS)]}, "tokens", "invalid_request_error"),
        ("/detokenize", {"tokens": [-1]}, "tokens", "invalid_request_error"),
        ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}, "messages", "model_not_supported"),
    ],
)
async def test_bad_tokenizer_requests_for_the_embedding_model(
    client: httpx.AsyncClient,
    openapi: OpenAPISchemas,
    path: str,
    fields: dict[str, Any],
    param: str,
    code: str,
) -> None:
    response = await client.post(path, json={"model": MODEL, **fields})
    assert response.status_code == 400, response.text
    openapi.validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/images/generations", {"prompt": "a cat"}),
    ],
)
async def test_other_endpoints_refuse_the_embedding_model(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    openapi.validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_supported")
    assert "embedding model" in error["message"] and "/v1/embeddings" in error["message"]


async def test_sdk_chat_with_the_embedding_model_is_a_bad_request(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.code == "model_not_supported"
    # The language model is still answered.
    chat = await openai_client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert chat.model == "fake-model"


async def test_without_the_flag_no_embedding_model_is_served(engine: FakeEngine) -> None:
    app = create_app(Settings(), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["fake-model"]
        assert (await c.post(EMBED, json=embed())).status_code == 404
        chat = await c.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert chat.status_code == 404


async def test_lifespan_loads_the_flagged_model_and_stops_it(
    monkeypatch: pytest.MonkeyPatch, bert: Path, tmp_path: Path
) -> None:
    from model_runtime import EngineConfig
    from tests.app.test_lifespan import FakeAsyncEngine

    monkeypatch.setattr("model_runtime.engine_for", FakeAsyncEngine, raising=False)
    config = EngineConfig(model_path=tmp_path, served_model_name="served")
    settings = Settings(image_model="none", embedding_model=str(bert), device="cpu")
    app = create_app(settings, engine_config=config)
    async with app.router.lifespan_context(app):
        encoder = app.state.encoder
        assert encoder.is_alive() and encoder.info.id == MODEL
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["served", MODEL]
            body = (await c.post(EMBED, json=embed(input=["hello", "dog ran"]))).json()
            assert [len(d["embedding"]) for d in body["data"]] == [HIDDEN, HIDDEN]
    assert app.state.encoder is None and not encoder.is_alive()

    # One id for two models would make `model` ambiguous: refused at start, the engine stopped.
    clash = create_app(settings.model_copy(update={"embedding_model_name": "served"}), engine_config=config)
    with pytest.raises(ValueError, match="already another served model's"):
        async with clash.router.lifespan_context(clash):
            pass
    assert FakeAsyncEngine.instances[-1].events == ["start", "shutdown"]
