"""The ASGI layers every request passes, outermost first:

request log (id, metrics, log line) -> CORS (only with --allowed-origins) -> API keys (only with
keys) -> admission (503 while not serving, 429 when full) -> body limit (413) -> the routes.

Keys are checked before admission and body reading, so an unauthenticated client can neither take
a slot nor make the server buffer a body; CORS sits outside the keys because browsers send
preflight requests without credentials.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app.admission import Admission
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.middleware.admission import AdmissionMiddleware
from app.middleware.auth import ApiKeyMiddleware
from app.middleware.body_limit import BodyLimitMiddleware
from app.middleware.request_log import RequestLogMiddleware
from app.settings import Settings

LOGGED_BODY_BYTES = 2048


def install_middleware(
    app: FastAPI,
    settings: Settings,
    api_keys: list[bytes],
    lifecycle: Lifecycle,
    admission: Admission,
    metrics: Metrics,
) -> None:
    # add_middleware puts each new layer outside the previous ones: innermost first.
    keep = LOGGED_BODY_BYTES if settings.log_content else 0
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes, keep_excerpt=keep)
    app.add_middleware(
        AdmissionMiddleware,
        lifecycle=lifecycle,
        admission=admission,
        metrics=metrics,
        request_timeout=settings.request_timeout,
    )
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.add_middleware(RequestLogMiddleware, metrics=metrics, log_content=settings.log_content)
