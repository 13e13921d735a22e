"""Fixtures for the HTTP layer: a fake engine behind the real app, raw httpx and the openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from openai import AsyncOpenAI

from app.main import create_app
from app.settings import Settings
from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import SPEC_PATH, OpenAPISchemas, load_spec


@pytest.fixture(scope="session")
def openapi() -> OpenAPISchemas:
    return OpenAPISchemas(load_spec(SPEC_PATH))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def app(engine: FakeEngine):
    return create_app(Settings(), engine=engine)


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def openai_client(app) -> AsyncIterator[AsyncOpenAI]:
    http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    async with AsyncOpenAI(
        api_key="unused", base_url="http://test/v1", http_client=http_client, max_retries=0
    ) as c:
        yield c
