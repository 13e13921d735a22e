"""GET /v1/models and GET /v1/models/{model_id}: the language model and the image models."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.deps import EngineDep, ImagesDep
from app.responses import json_response
from app.schemas.common import ErrorResponse
from app.schemas.models import ModelCard, ModelList
from app.services.models import image_model_named, served_model

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(engine: EngineDep, images: ImagesDep) -> Response:
    cards = [ModelCard.of(engine.model_info)]
    if images is not None:
        cards.extend(ModelCard.of(info) for info in images.models)
    return json_response(ModelList(data=cards))


# `:path` because Hugging Face style ids contain slashes ("meta-llama/Llama-2-7b-chat-hf").
@router.get("/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def retrieve_model(model_id: str, engine: EngineDep, images: ImagesDep) -> Response:
    image_info = image_model_named(images, model_id)
    if image_info is not None:
        return json_response(ModelCard.of(image_info))
    return json_response(ModelCard.of(served_model(engine, model_id)))
