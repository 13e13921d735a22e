"""Routing, engine and unexpected failures all answer in OpenAI's envelope."""

from __future__ import annotations

import json

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas

CHAT = "/v1/chat/completions"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def check_envelope(response: httpx.Response, status: int, openapi: OpenAPISchemas) -> dict[str, str | None]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    openapi.validate("ErrorResponse", body)
    assert set(body) == {"error"}
    error: dict[str, str | None] = body["error"]
    return error


async def test_unknown_route_is_404(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    error = check_envelope(await client.post("/v1/engines/davinci/completions", json={}), 404, openapi)
    assert error["message"] == "Invalid URL (POST /v1/engines/davinci/completions)"
    assert (error["type"], error["code"]) == ("invalid_request_error", "not_found")


async def test_wrong_method_is_405(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    response = await client.get(CHAT)
    error = check_envelope(response, 405, openapi)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


async def test_chat_template_error_is_400(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    body = {**BODY, "messages": [{"role": "user", "content": "{% raise %}"}]}
    error = check_envelope(await client.post(CHAT, json=body), 400, openapi)
    assert (error["param"], error["type"]) == ("messages", "invalid_request_error")


async def test_context_length_exceeded_is_400(
    client: httpx.AsyncClient, engine: FakeEngine, openapi: OpenAPISchemas
) -> None:
    error = check_envelope(await client.post(CHAT, json={**BODY, "max_tokens": 500}), 400, openapi)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "maximum context length" in str(error["message"])
    assert engine.calls == [], "nothing may be generated for a request that cannot fit"


async def test_context_length_exceeded_before_a_stream_starts(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    response = await client.post(CHAT, json={**BODY, "max_tokens": 500, "stream": True})
    assert check_envelope(response, 400, openapi)["code"] == "context_length_exceeded"


async def test_unexpected_exception_is_500_envelope(engine: FakeEngine, openapi: OpenAPISchemas) -> None:
    def explode(messages: object) -> list[int]:
        raise RuntimeError("boom")

    engine.render_chat = explode  # type: ignore[method-assign]
    app = create_app(Settings(), engine=engine)
    # Starlette re-raises after answering so the server logs it; the client still gets the 500.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        error = check_envelope(await client.post(CHAT, json=BODY), 500, openapi)
    assert error["type"] == "server_error"
    assert "boom" not in str(error["message"])  # internals stay in the log


async def test_no_engine_is_503(openapi: OpenAPISchemas) -> None:
    app = create_app(Settings(), engine=FakeEngine())
    app.state.engine = None  # e.g. after shutdown began
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for response in (
            await client.get("/v1/models"),
            await client.post(CHAT, json=BODY),
            await client.get("/health"),
        ):
            assert check_envelope(response, 503, openapi)["code"] == "engine_unavailable"


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8"])
async def test_json_body_with_or_without_content_type(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(CHAT, content=json.dumps(BODY).encode(), headers=headers)
    assert response.status_code == 200, response.text
