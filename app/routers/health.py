"""GET /health (liveness: 200 while the engine runs) and GET /ready (readiness: 200 while requests
are accepted; 503 with Retry-After while starting, draining or failed). Both are public."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.errors import engine_unavailable, not_ready
from app.lifecycle import Lifecycle
from app.responses import json_response
from app.schemas.common import ErrorResponse, HealthStatus, ReadyStatus
from model_runtime import EngineClient

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthStatus, responses={503: {"model": ErrorResponse}})
async def health(request: Request) -> Response:
    engine: EngineClient | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.is_alive():
        raise engine_unavailable()
    stats = engine.stats()
    return json_response(
        HealthStatus(
            waiting=stats.waiting,
            running=stats.running,
            kv_blocks_total=stats.kv_blocks_total,
            kv_blocks_free=stats.kv_blocks_free,
            steps=stats.steps,
        )
    )


@router.get("/ready", response_model=ReadyStatus, responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> Response:
    lifecycle: Lifecycle = request.app.state.lifecycle
    engine: EngineClient | None = getattr(request.app.state, "engine", None)
    if not lifecycle.accepting:
        raise not_ready(lifecycle.refusal())
    if engine is None or not engine.is_alive():
        raise engine_unavailable()
    return json_response(ReadyStatus())
