"""Small helpers shared by the hardening tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from model_runtime import ChatMessage, InvalidPrompt
from tests.app.fake_engine import FakeEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat_body(content: str = "one two three", **extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


@asynccontextmanager
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        yield client


def check_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    return error


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text, e.g. metric_value(t, "x_total", 'route="/a"')."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        if metric == name and all(part in rest for part in labels.split(",") if part):
            return float(value)
    return None


class StrictTokenizerEngine(FakeEngine):
    """The fake engine, refusing what the real tokenizer refuses: text with lone surrogates."""

    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidPrompt("the prompt is not valid Unicode text") from exc
        return super().encode(text)

    def render_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        for message in messages:
            self.encode(message.content)
        return super().render_chat(messages)
