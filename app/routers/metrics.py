"""GET /metrics: Prometheus text format (behind the API key like every non-probe route)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
