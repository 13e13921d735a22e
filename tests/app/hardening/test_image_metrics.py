"""Image generation requests show up in /metrics: count by status, latency, images produced."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.main import create_app
from app.settings import Settings
from model_runtime.images import AsyncImageWorker, ImageWorkerConfig
from tests.app.fake_engine import FakeEngine
from tests.app.hardening.helpers import http, metric_value
from tests.model_runtime.images.fake_image_model import FakeImageModel


@pytest.fixture
async def images() -> AsyncIterator[AsyncImageWorker]:
    model = FakeImageModel()
    worker = AsyncImageWorker(lambda: {"fake-images": model}, ImageWorkerConfig(gather_s=0.0))
    await worker.start()
    yield worker
    model.gate.set()
    await worker.shutdown()


async def test_image_requests_are_counted_and_timed(images: AsyncImageWorker) -> None:
    app = create_app(Settings(), engine=FakeEngine(), images=images)
    async with http(app) as client:
        ok = await client.post("/v1/images/generations", json={"prompt": "a circle", "n": 2})
        assert ok.status_code == 200, ok.text
        bad = await client.post("/v1/images/generations", json={"prompt": "a circle", "n": "two"})
        assert bad.status_code == 400
        text = (await client.get("/metrics")).text
    assert metric_value(text, "atenea_image_requests_total", 'status="200"') == 1
    assert metric_value(text, "atenea_image_requests_total", 'status="400"') == 1
    assert metric_value(text, "atenea_image_request_latency_seconds_count") == 2
    assert metric_value(text, "atenea_images_generated_total") == 2
