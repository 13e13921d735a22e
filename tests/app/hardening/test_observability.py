"""Request ids, the one log line per request, JSON logs, and /metrics."""

from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonFormatter, RequestIdFilter
from app.main import create_app
from app.settings import Settings
from tests.app.fake_engine import FakeEngine
from tests.app.hardening.helpers import CHAT, chat_body, http, metric_value

SECRET_PROMPT = "zebra-quartz-prompt"


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "atenea.requests"]


async def test_request_id_is_echoed_or_generated(engine: FakeEngine) -> None:
    app = create_app(Settings(), engine=engine)
    async with http(app) as client:
        sent = await client.post(CHAT, json=chat_body(), headers={"X-Request-Id": "client-abc-123"})
        assert sent.headers["x-request-id"] == "client-abc-123"
        generated = {(await client.get("/v1/models")).headers["x-request-id"] for _ in range(3)}
        assert len(generated) == 3 and all(len(i) == 32 for i in generated)
        # Errors carry it too, and an unusable id (too long, odd characters) is replaced.
        bad = await client.get("/nope", headers={"X-Request-Id": "x" * 500})
        assert bad.status_code == 404 and len(bad.headers["x-request-id"]) == 32
        spaced = await client.post(CHAT, json={}, headers={"X-Request-Id": "a b"})
        assert spaced.status_code == 400 and spaced.headers["x-request-id"] != "a b"


async def test_one_log_line_per_request_with_id_route_status_tokens(
    engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # The filter `atenea serve` puts on its handler, on a handler of our own.
    stamped: list[str] = []
    handler = logging.Handler()
    handler.addFilter(RequestIdFilter())
    handler.emit = lambda record: stamped.append(f"{record.request_id} {record.getMessage()}")  # type: ignore[attr-defined,method-assign]
    logging.getLogger("atenea.requests").addHandler(handler)
    app = create_app(Settings(), engine=engine)
    try:
        async with http(app) as client:
            await client.post(
                CHAT, json=chat_body(SECRET_PROMPT, max_tokens=3), headers={"X-Request-Id": "req-1"}
            )
            await client.post(CHAT, json={"model": "fake-model"}, headers={"X-Request-Id": "req-2"})
    finally:
        logging.getLogger("atenea.requests").removeHandler(handler)
    assert [line.split()[0] for line in stamped] == ["req-1", "req-2"]
    first, second = request_lines(caplog)
    fields = first.fields  # type: ignore[attr-defined]
    assert fields["route"] == "/v1/chat/completions" and fields["status"] == 200
    assert fields["completion_tokens"] == 3 and fields["prompt_tokens"] > 0
    assert fields["ttft_ms"] is not None and fields["duration_ms"] >= fields["ttft_ms"]
    assert second.fields["status"] == 400  # type: ignore[attr-defined]
    # Prompts and outputs stay out of the logs unless asked for.
    assert all(SECRET_PROMPT not in r.getMessage() for r in caplog.records)


async def test_log_content_when_asked(engine: FakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(Settings(log_content=True), engine=engine)
    async with http(app) as client:
        await client.post(CHAT, json=chat_body(SECRET_PROMPT, max_tokens=3))
    (line,) = request_lines(caplog)
    assert SECRET_PROMPT in line.fields["body"]  # type: ignore[attr-defined]
    assert SECRET_PROMPT in line.fields["output"]  # type: ignore[attr-defined]


def test_json_log_lines() -> None:
    record = logging.LogRecord("atenea.requests", logging.INFO, __file__, 1, "request %s", ("x",), None)
    record.request_id = "req-9"
    record.fields = {"status": 200, "route": "/v1/completions"}
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-9" and line["status"] == 200 and line["level"] == "info"
    assert line["message"] == "request x" and line["time"].endswith("Z")


async def test_metrics_count_requests_tokens_and_latencies(engine: FakeEngine) -> None:
    app = create_app(Settings(), engine=engine)
    async with http(app) as client:
        for _ in range(3):
            await client.post(CHAT, json=chat_body("a b c d", max_tokens=4))
        await client.post(CHAT, json={"model": "nope", "messages": []})
        await client.get("/nowhere")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = 'route="/v1/chat/completions"'
    assert metric_value(text, "atenea_http_requests_total", f'{route},status="200"') == 3
    assert metric_value(text, "atenea_http_requests_total", f'{route},status="400"') == 1
    assert metric_value(text, "atenea_http_requests_total", 'route="unmatched",status="404"') == 1
    assert metric_value(text, "atenea_generation_tokens_total") == 12
    assert metric_value(text, "atenea_prompt_tokens_total") == 3 * len(engine.calls[0].prompt_ids)
    assert metric_value(text, "atenea_time_to_first_token_seconds_count") == 3
    assert metric_value(text, "atenea_inter_token_latency_seconds_count") == 9
    assert metric_value(text, "atenea_e2e_request_latency_seconds_count", route) == 4
    for gauge in (
        "atenea_num_requests_waiting",
        "atenea_num_requests_running",
        "atenea_kv_blocks_used",
        "atenea_kv_blocks_total",
        "atenea_prefix_cache_hit_rate",
        "atenea_requests_in_progress",
    ):
        assert metric_value(text, gauge) is not None, gauge
    # Defined for the image service, present from the start.
    assert "atenea_image_request_latency_seconds" in text


def test_image_requests_feed_the_image_metrics() -> None:
    from app.metrics import IMAGE_ROUTE, Metrics

    metrics = Metrics()
    metrics.observe_request("POST", IMAGE_ROUTE, 200, 3.5)
    metrics.observe_request("POST", "/v1/chat/completions", 200, 1.0)
    metrics.count_images(2)
    text = metrics.render().decode()
    assert metric_value(text, "atenea_image_requests_total", 'status="200"') == 1
    assert metric_value(text, "atenea_images_generated_total") == 2
    assert metric_value(text, "atenea_image_request_latency_seconds_count") == 1
