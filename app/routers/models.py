"""GET /v1/models and GET /v1/models/{model_id}."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.deps import EngineDep
from app.responses import json_response
from app.schemas.common import ErrorResponse
from app.schemas.models import ModelCard, ModelList
from app.services.models import served_model

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(engine: EngineDep) -> Response:
    return json_response(ModelList(data=[ModelCard.of(engine.model_info)]))


# `:path` because Hugging Face style ids contain slashes ("meta-llama/Llama-2-7b-chat-hf").
@router.get("/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def retrieve_model(model_id: str, engine: EngineDep) -> Response:
    return json_response(ModelCard.of(served_model(engine, model_id)))
