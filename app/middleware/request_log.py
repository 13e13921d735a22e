"""The outermost layer: gives each request its id and context, answers with `X-Request-Id`, counts
it in the metrics by route and status, and writes its one log line when it ends."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.excerpts import excerpt
from app.metrics import Metrics
from app.request_context import (
    RequestContext,
    request_id_from,
    reset_current_request,
    set_current_request,
)
from app.responses import CLIENT_CLOSED_REQUEST

logger = logging.getLogger("atenea.requests")

REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED_ROUTE = "unmatched"  # a path no route matched: not its own label, or labels are unbounded


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_content: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_content = log_content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(
            request_id=request_id_from(_header(scope, REQUEST_ID_HEADER)),
            method=scope["method"],
            path=scope["path"],
            output_parts=[] if self.log_content else None,
        )
        scope.setdefault("state", {})["context"] = context
        status: int | None = None
        header = (REQUEST_ID_HEADER, context.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        token = set_current_request(context)
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED_REQUEST  # cancelled: nobody is waiting for an answer
            raise
        except BaseException:
            status = status or 500  # the server's error handler answers 500
            raise
        finally:
            # No answer and no error: the client left before one was sent.
            status = status or CLIENT_CLOSED_REQUEST
            route = scope.get("route")
            context.route = getattr(route, "path", None) or UNMATCHED_ROUTE
            duration = time.perf_counter() - context.started
            self.metrics.observe_request(context.method, context.route, status, duration)
            self._log(context, status, duration)
            reset_current_request(token)

    def _log(self, context: RequestContext, status: int, duration: float) -> None:
        fields: dict[str, object] = {
            "method": context.method,
            "route": context.route,
            "status": status,
            "prompt_tokens": context.prompt_tokens,
            "completion_tokens": context.completion_tokens,
            "ttft_ms": None if context.ttft is None else round(context.ttft * 1000, 1),
            "duration_ms": round(duration * 1000, 1),
        }
        if context.route == UNMATCHED_ROUTE:
            fields["path"] = excerpt(context.path)
        if context.end_reason is not None:
            fields["ended_by"] = context.end_reason.value
        if self.log_content:
            # Only when the operator asked (--log-content): prompts and answers are the users' data.
            fields["body"] = context.body_excerpt
            fields["output"] = "".join(context.output_parts or [])
        text = " ".join(
            f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
            for key, value in fields.items()
        )
        logger.info("request %s", text, extra={"fields": fields})
