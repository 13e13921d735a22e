"""GET /health: 200 while the engine runs, 503 otherwise (load balancers and k8s probes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.errors import engine_unavailable
from app.responses import json_response
from app.schemas.common import ErrorResponse, HealthStatus
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
