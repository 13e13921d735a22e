"""How answers leave the server: typed JSON bodies, SSE streams, and the nobody-is-listening reply."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.responses import Response
from starlette.types import Message, Send

from app.errors import APIError

DONE = "[DONE]"

# nginx's "client closed request": shows up in access logs, never reaches the departed client.
CLIENT_CLOSED_REQUEST = 499

# Comment lines keep idle proxies from closing a stream while a long prompt is prefilled;
# SSE clients (the OpenAI SDKs included) ignore them.
PING_SECONDS = 15


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def sse_response(events: AsyncGenerator[str, None]) -> EventSourceResponse:
    """Each string is one `data:` event. sse-starlette listens for the client's disconnect and
    cancels the iterator, whose cleanup aborts the generation."""
    return _EventStream(_framed(events), sep="\n", ping=PING_SECONDS)


async def _framed(events: AsyncGenerator[str, None]) -> AsyncGenerator[bytes, None]:
    """Each event as its finished `data:` line. sse-starlette sends bytes as they are, where a
    string goes through its event encoder (split into lines, each field checked) every time:
    about 5% of the event loop's work at 64 streams. Our events are compact JSON or [DONE], with
    no raw line break, so one line holds each. Closing this closes `events`, which aborts the
    generation at once rather than whenever the garbage collector gets to it."""
    async with aclosing(events):
        async for event in events:
            yield b"data: " + event.encode() + b"\n\n"


class _EventStream(EventSourceResponse):
    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # No send timeout is set, so sse-starlette's cancel scope around every send (another 9%
        # of the event loop's work at 64 streams, in anyio) would guard nothing.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def error_event(error: APIError) -> str:
    """A failure after the stream started: `data: {"error": {...}}`, then the caller sends [DONE]."""
    return error.envelope().model_dump_json()


def client_gone() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)
