"""API keys: with keys set, every registered route but the public ones answers 401 in the envelope
without the right key, so a route added later is protected without anyone remembering to."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI, AuthenticationError
from starlette.routing import BaseRoute, Mount

from app.main import create_app
from app.middleware.auth import PUBLIC_PATHS, load_api_keys
from app.settings import Settings
from tests.app.fake_engine import FakeEngine

KEYS = ["sk-first", "sk-second"]


@pytest.fixture
def app(engine: FakeEngine) -> FastAPI:
    return create_app(Settings(api_key=KEYS), engine=engine)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


def flat_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    """(full path, route) for every route, through included routers (newer FastAPI keeps them as
    nodes with an `original_router` and a prefix) and mounts."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from flat_routes(original.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, Mount):
            yield prefix + route.path.rstrip("/") + "/anything", route
        else:
            yield prefix + getattr(route, "path", ""), route


def registered_requests(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) for every route and method the app registers, docs included."""
    found = []
    for path, route in flat_routes(app.routes):
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        methods = getattr(route, "methods", None) or {"GET"}
        found.extend((method, concrete) for method in sorted(methods))
    return found


def assert_invalid_api_key(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.status_code, response.text[:200])
    assert response.headers["www-authenticate"] == "Bearer"
    if response.request.method == "HEAD":
        return  # no body
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


async def test_every_registered_route_but_the_public_ones_needs_a_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    requests = [(m, p) for m, p in registered_requests(app) if p not in PUBLIC_PATHS]
    paths = {p for _, p in requests}
    # The walk covers the API, metrics and the generated docs; a new route joins it by existing.
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/openapi.json"} <= paths
    for method, path in requests:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-first"}):
            assert_invalid_api_key(await client.request(method, path, headers=headers, json={}))


async def test_unknown_paths_are_denied_too(client: httpx.AsyncClient) -> None:
    assert_invalid_api_key(await client.get("/v2/secret"))
    assert_invalid_api_key(await client.post("/health/../v1/completions", json={}))


async def test_public_paths_answer_without_a_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200


async def test_each_configured_key_is_accepted(client: httpx.AsyncClient) -> None:
    for key in KEYS:
        response = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        chat = await client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"bearer {key}"},
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200, chat.text


async def test_openai_sdk_sees_an_authentication_error(app: FastAPI) -> None:
    http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    async with AsyncOpenAI(
        api_key="sk-wrong", base_url="http://test/v1", http_client=http_client, max_retries=0
    ) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.models.list()
    assert caught.value.code == "invalid_api_key"
    async with AsyncOpenAI(
        api_key=KEYS[1],
        base_url="http://test/v1",
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)),
        max_retries=0,
    ) as client:
        assert [m.id async for m in client.models.list()] == ["fake-model"]


async def test_without_keys_the_api_is_open(engine: FakeEngine) -> None:
    app = create_app(Settings(), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        assert (await c.get("/v1/models")).status_code == 200


def test_key_file_lines_comments_and_duplicates(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team A\nsk-a\n\n  sk-b  \nsk-a\n")
    assert load_api_keys(["sk-flag"], str(keys)) == [b"sk-flag", b"sk-a", b"sk-b"]
    with pytest.raises(OSError):
        load_api_keys([], str(tmp_path / "missing"))


def test_defaults_bind_locally_and_leave_cors_off() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.allowed_origins == []
    assert settings.max_request_body_bytes == 8 * 2**20


async def test_cors_only_for_allowed_origins(engine: FakeEngine) -> None:
    origin = "https://app.example"
    closed = create_app(Settings(), engine=engine)
    opened = create_app(Settings(allowed_origins=[origin], api_key=KEYS), engine=engine)
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=closed), base_url="http://test") as c:
        response = await c.get("/v1/models", headers={"Origin": origin})
        assert "access-control-allow-origin" not in response.headers
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=opened), base_url="http://test") as c:
        # Browsers send the preflight without credentials: it must pass the key check.
        response = await c.options("/v1/chat/completions", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        other = await c.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
