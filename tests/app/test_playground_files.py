"""GET / serves the playground's three static files and nothing else from the disk."""

from __future__ import annotations

import httpx
import pytest


async def test_root_serves_the_playground_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    # The page loads its script and style from the routes below, not from any build output.
    assert '<script src="/playground/playground.js"' in page
    assert 'href="/playground/playground.css"' in page


@pytest.mark.parametrize(
    ("name", "media_type"), [("playground.js", "text/javascript"), ("playground.css", "text/css")]
)
async def test_assets_are_served_with_their_media_type(
    client: httpx.AsyncClient, name: str, media_type: str
) -> None:
    response = await client.get(f"/playground/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["cache-control"] == "no-cache"


async def test_the_script_uses_the_public_api(client: httpx.AsyncClient) -> None:
    script = (await client.get("/playground/playground.js")).text
    for path in ('"/models"', '"/chat/completions"', '"/images/generations"'):
        assert path in script
    assert "Authorization" in script and "Bearer" in script


@pytest.mark.parametrize("path", ["/playground/secret.txt", "/playground/..%2Fmain.py", "/playground/"])
async def test_other_paths_are_404_in_the_error_envelope(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_the_playground_is_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/playground") for p in paths)
