"""POST /v1/completions (legacy)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import EngineDep
from app.schemas.common import GENERATION_RESPONSES
from app.schemas.completions import CompletionRequest, CompletionResponse
from app.services import completions

router = APIRouter(prefix="/v1", tags=["completions"])


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses=GENERATION_RESPONSES,
)
async def create_completion(body: CompletionRequest, request: Request, engine: EngineDep) -> Response:
    return await completions.create_completion(body, engine, request)
