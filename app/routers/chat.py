"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import EngineDep
from app.schemas.chat import ChatCompletionRequest, ChatCompletionResponse
from app.schemas.common import GENERATION_RESPONSES
from app.services import chat

router = APIRouter(prefix="/v1", tags=["chat"])


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses=GENERATION_RESPONSES,
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, engine: EngineDep
) -> Response:
    return await chat.create_chat_completion(body, engine, request)
