"""Request bodies over the cap get 413 before anything parses them. A declared Content-Length is
checked first; a chunked body is counted as it arrives. The body is read here in full (it is needed
whole to parse JSON anyway) and handed on unchanged."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import APIError, payload_too_large
from app.request_context import current_request


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, keep_excerpt: int = 0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.keep_excerpt = keep_excerpt  # bytes of the body kept for the log (--log-content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left while sending; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self.keep_excerpt and (context := current_request()) is not None:
            context.body_excerpt = body[: self.keep_excerpt].decode("utf-8", "replace")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error: APIError = payload_too_large(self.max_bytes)
        # The rest of the body is never read: the server closes the connection after answering.
        error.headers["Connection"] = "close"
        await error.to_response()(scope, receive, send)
