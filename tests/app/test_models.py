from __future__ import annotations

import httpx

from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas


async def test_list_models(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    openapi.validate("ListModelsResponse", body)
    assert body == {
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "atenea"}],
    }


async def test_retrieve_model(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    response = await client.get("/v1/models/fake-model")
    assert response.status_code == 200
    openapi.validate("Model", response.json())
    assert response.json()["id"] == "fake-model"


async def test_retrieve_model_with_slash_in_id(app, client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.model_id = "meta-llama/Llama-2-7b-chat-hf"
    response = await client.get("/v1/models/meta-llama/Llama-2-7b-chat-hf")
    assert response.status_code == 200
    assert response.json()["id"] == "meta-llama/Llama-2-7b-chat-hf"


async def test_retrieve_unknown_model_is_404(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    response = await client.get("/v1/models/gpt-4o")
    assert response.status_code == 404
    body = response.json()
    openapi.validate("ErrorResponse", body)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "model_not_found"
    assert "gpt-4o" in body["error"]["message"]


async def test_health(client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas) -> None:
    response = await client.get("/health")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok"
    stats = engine.stats()
    assert (body["running"], body["kv_blocks_free"]) == (stats.running, stats.kv_blocks_free)
    engine.alive = False
    response = await client.get("/health")
    assert response.status_code == 503
    openapi.validate("ErrorResponse", response.json())


async def test_requests_to_a_dead_engine_get_503(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.alive = False
    body = {"model": engine.model_info.id, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"
