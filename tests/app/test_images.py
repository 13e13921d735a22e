"""POST /v1/images/generations over HTTP: a real image worker with a fake model behind the real app,
plus one real (tiny, random) diffusers pipeline loaded the way `--image-model PATH` loads it."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from PIL import Image

from app.image_runtime import start_image_worker
from app.main import create_app
from app.settings import Settings
from model_runtime.images import AsyncImageWorker, ImageWorkerConfig
from tests.app.fake_engine import FakeEngine
from tests.app.openapi_schemas import OpenAPISchemas
from tests.model_runtime.images.fake_image_model import FAIL_WORD, FakeImageModel
from tests.model_runtime.images.tiny_pipeline import build_tiny_pipeline

GENERATIONS = "/v1/images/generations"


@pytest.fixture
def image_model() -> FakeImageModel:
    return FakeImageModel()


@pytest.fixture
async def images(image_model: FakeImageModel) -> AsyncIterator[AsyncImageWorker]:
    worker = AsyncImageWorker(lambda: {"fake-images": image_model}, ImageWorkerConfig(gather_s=0.0))
    await worker.start()
    yield worker
    image_model.gate.set()
    await worker.shutdown()


@pytest.fixture
def app(engine: FakeEngine, images: AsyncImageWorker):  # type: ignore[no-untyped-def]
    return create_app(Settings(), engine=engine, images=images)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_b64_json_images(client: httpx.AsyncClient, openapi: OpenAPISchemas) -> None:
    response = await client.post(
        GENERATIONS, json={"prompt": "a red circle", "n": 2, "response_format": "b64_json", "seed": 3}
    )
    assert response.status_code == 200
    body = response.json()
    openapi.validate("ImagesResponse", body)
    assert [set(d) for d in body["data"]] == [{"b64_json", "revised_prompt"}] * 2
    first, second = (decode(d["b64_json"]) for d in body["data"])
    assert first.format == "PNG" and first.size == (16, 16)
    assert first.getpixel((0, 0)) == (3, 3, 3) and second.getpixel((0, 0)) == (4, 4, 4)  # seeds 3, 4


async def test_url_images_are_served_by_the_server(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    response = await client.post(GENERATIONS, json={"prompt": "a red circle", "output_format": "webp"})
    assert response.status_code == 200
    body = response.json()
    openapi.validate("ImagesResponse", body)
    url = body["data"][0]["url"]
    assert url.startswith("http://test/v1/images/files/") and url.endswith(".webp")
    image = await client.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(image.content)).size == (16, 16)


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_output_formats(client: httpx.AsyncClient, fmt: str, pil: str) -> None:
    response = await client.post(
        GENERATIONS, json={"prompt": "x", "response_format": "b64_json", "output_format": fmt}
    )
    assert decode(response.json()["data"][0]["b64_json"]).format == pil
    assert response.json()["output_format"] == fmt


async def test_a_declared_size_is_used(client: httpx.AsyncClient) -> None:
    response = await client.post(
        GENERATIONS, json={"prompt": "x", "size": "32x16", "response_format": "b64_json"}
    )
    assert decode(response.json()["data"][0]["b64_json"]).size == (32, 16)


async def test_unknown_image_files_are_404(client: httpx.AsyncClient) -> None:
    for name in ["nothere.png", "AAAAAAAAAAAAAAAAAAAAAA.png", "..%2F..%2Fetc%2Fpasswd", "%2e%2e.png"]:
        response = await client.get(f"/v1/images/files/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "x" * 4001}, "prompt", "maximum is 4000"),
        ({}, "prompt", "prompt"),
        ({"prompt": 5}, "prompt", ""),
        ({"prompt": "x", "n": 0}, "n", ""),
        ({"prompt": "x", "n": 11}, "n", ""),
        ({"prompt": "x", "n": "2"}, "n", ""),
        ({"prompt": "x", "size": "1024x1024"}, "size", "Supported sizes: '16x16', '32x16'"),
        ({"prompt": "x", "size": "big"}, "size", "Supported sizes"),
        ({"prompt": "x", "response_format": "jpeg"}, "response_format", ""),
        ({"prompt": "x", "output_format": "gif"}, "output_format", ""),
        ({"prompt": "x", "quality": "ultra"}, "quality", ""),
        ({"prompt": "x", "style": "baroque"}, "style", ""),
        ({"prompt": "x", "output_compression": 101}, "output_compression", ""),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", "between 1 and 50"),
        ({"prompt": "x", "stream": True}, "stream", "not supported"),
        ({"prompt": "x", "background": "transparent"}, "background", "not supported"),
        ({"prompt": "x", "colour": "red"}, "colour", ""),
    ],
)
async def test_bad_requests_are_400_in_the_openai_envelope(
    client: httpx.AsyncClient, openapi: OpenAPISchemas, image_model: FakeImageModel, body, param, fragment
) -> None:  # type: ignore[no-untyped-def]
    response = await client.post(GENERATIONS, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    openapi.validate("ErrorResponse", error)
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert fragment in error["error"]["message"]
    assert image_model.calls == []


async def test_accepted_openai_parameters(client: httpx.AsyncClient) -> None:
    response = await client.post(
        GENERATIONS,
        json={
            "prompt": "x",
            "model": "fake-images",
            "size": "auto",
            "quality": "standard",
            "style": "natural",
            "user": "u-1",
            "background": "auto",
            "moderation": "auto",
            "output_compression": 80,
            "negative_prompt": "blurry",
            "num_inference_steps": 7,
        },
    )
    assert response.status_code == 200, response.text


async def test_the_language_model_on_the_image_endpoint_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(GENERATIONS, json={"prompt": "x", "model": "fake-model"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    assert "language model" in response.json()["error"]["message"]


async def test_an_image_model_on_the_text_endpoints_is_400(client: httpx.AsyncClient) -> None:
    chat = await client.post(
        "/v1/chat/completions", json={"model": "fake-images", "messages": [{"role": "user", "content": "hi"}]}
    )
    completion = await client.post("/v1/completions", json={"model": "fake-images", "prompt": "hi"})
    for response in (chat, completion):
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "model"
        assert "/v1/images/generations" in response.json()["error"]["message"]
    unknown = await client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_an_unknown_image_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(GENERATIONS, json={"prompt": "x", "model": "dall-e-3"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


async def test_image_models_are_listed_beside_the_language_model(
    client: httpx.AsyncClient, openapi: OpenAPISchemas
) -> None:
    body = (await client.get("/v1/models")).json()
    openapi.validate("ListModelsResponse", body)
    assert [m["id"] for m in body["data"]] == ["fake-model", "fake-images"]
    card = await client.get("/v1/models/fake-images")
    assert card.status_code == 200 and card.json()["id"] == "fake-images"


async def test_a_failed_generation_is_a_server_error(client: httpx.AsyncClient) -> None:
    response = await client.post(GENERATIONS, json={"prompt": f"please {FAIL_WORD}"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


async def test_a_client_that_leaves_drops_its_pending_work(
    app, images: AsyncImageWorker, image_model: FakeImageModel
) -> None:  # type: ignore[no-untyped-def]
    image_model.gate.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        request = asyncio.create_task(c.post(GENERATIONS, json={"prompt": "abandoned"}))
        for _ in range(500):
            if image_model.calls:
                break
            await asyncio.sleep(0.01)
        request.cancel()  # the connection goes away mid-run
        await asyncio.gather(request, return_exceptions=True)
    for _ in range(500):
        if image_model.calls[0].stopped:
            break
        await asyncio.sleep(0.01)
    assert image_model.calls[0].stopped


async def test_without_an_image_model(engine: FakeEngine) -> None:
    app = create_app(Settings(image_model="none"), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        response = await c.post(GENERATIONS, json={"prompt": "x"})
        assert response.status_code == 400 and "no image model" in response.json()["error"]["message"]
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["fake-model"]


async def test_image_model_path_serves_a_diffusers_folder(engine: FakeEngine, tmp_path: Path) -> None:
    """`--image-model PATH` (ATENEA_IMAGE_MODEL) with a tiny random Stable Diffusion pipeline, through
    the official client."""
    folder = build_tiny_pipeline(tmp_path / "tiny-sd")
    settings = Settings(image_model=str(folder))
    images = await start_image_worker(settings)
    assert images is not None
    try:
        app = create_app(settings, engine=engine, images=images)
        http_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        async with AsyncOpenAI(
            api_key="unused", base_url="http://test/v1", http_client=http_client, max_retries=0
        ) as client:
            result = await client.images.generate(
                model="tiny-sd", prompt="a red circle", n=2, response_format="b64_json",
                extra_body={"num_inference_steps": 2, "seed": 1},
            )  # fmt: skip
            assert len(result.data) == 2
            assert {decode(d.b64_json or "").size for d in result.data} == {(16, 16)}
            with pytest.raises(BadRequestError, match="16x16"):
                await client.images.generate(model="tiny-sd", prompt="x", size="512x512")
            with pytest.raises(NotFoundError):
                await client.images.generate(model="atenea-shapes", prompt="x")
    finally:
        await images.shutdown()
