"""How answers leave the server: typed JSON bodies, SSE streams, and the nobody-is-listening reply."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from app.errors import APIError

DONE = "[DONE]"

# nginx's "client closed request": shows up in access logs, never reaches the departed client.
CLIENT_CLOSED_REQUEST = 499

# Comment lines keep idle proxies from closing a stream while a long prompt is prefilled;
# SSE clients (the OpenAI SDKs included) ignore them.
PING_SECONDS = 15


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def sse_response(events: AsyncIterator[str]) -> EventSourceResponse:
    """Each string is one `data:` event. sse-starlette listens for the client's disconnect and
    cancels the iterator, whose cleanup aborts the generation."""
    return EventSourceResponse(events, sep="\n", ping=PING_SECONDS)


def error_event(error: APIError) -> str:
    """A failure after the stream started: `data: {"error": {...}}`, then the caller sends [DONE]."""
    return error.envelope().model_dump_json()


def client_gone() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)
