"""Admission at the door: probes and metrics always pass; while the server is not serving (starting,
draining, failed) everything else gets 503 with Retry-After; each POST must win a request slot or
gets 429 at once, before its body is read. Admitted requests are tracked as in flight so a drain
can wait for them and the watchdog can end them."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from app.admission import Admission
from app.errors import not_ready
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.request_context import RequestContext

# Paths that observe the server rather than ask work of it.
UNGATED_PATHS = frozenset({"/health", "/ready", "/metrics"})


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        lifecycle: Lifecycle,
        admission: Admission,
        metrics: Metrics,
        request_timeout: float | None,
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.lifecycle = lifecycle
        self.admission = admission
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.lifecycle.accepting:
            self.metrics.rejections.labels(self.lifecycle.phase.value).inc()
            await not_ready(self.lifecycle.refusal()).to_response()(scope, receive, send)
            return
        context: RequestContext = scope["state"]["context"]
        holds_slot = scope["method"] == "POST"
        if holds_slot and (refusal := self.admission.try_admit()) is not None:
            self.metrics.rejections.labels("queue_full").inc()
            await refusal.to_response()(scope, receive, send)
            return
        if self.request_timeout is not None:
            context.deadline = asyncio.get_running_loop().time() + self.request_timeout
        self.lifecycle.enter(context)
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.leave(context)
            if holds_slot:
                self.admission.release(context)
