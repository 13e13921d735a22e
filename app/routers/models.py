"""GET /v1/models and GET /v1/models/{model_id}: the language model, the image models and the
dedicated embedding model; and the answer to a route asked for a model of another kind."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import EncoderDep, EngineDep, ImagesDep
from app.responses import json_response
from app.schemas.common import ErrorResponse
from app.schemas.models import ModelCard, ModelList
from app.services.models import (
    ModelNotServed,
    embedding_model_named,
    embeddings_only,
    image_model_named,
    images_only,
    served_model,
)

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(engine: EngineDep, images: ImagesDep, encoder: EncoderDep) -> Response:
    cards = [ModelCard.of(engine.model_info)]
    if images is not None:
        cards.extend(ModelCard.of(info) for info in images.models)
    if encoder is not None:
        cards.append(ModelCard.of(encoder.info))
    return json_response(ModelList(data=cards))


# `:path` because Hugging Face style ids contain slashes ("meta-llama/Llama-2-7b-chat-hf").
@router.get("/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def retrieve_model(
    model_id: str, engine: EngineDep, images: ImagesDep, encoder: EncoderDep
) -> Response:
    image_info = image_model_named(images, model_id)
    if image_info is not None:
        return json_response(ModelCard.of(image_info))
    embedding_info = embedding_model_named(encoder, model_id)
    if embedding_info is not None:
        return json_response(ModelCard.of(embedding_info))
    return json_response(ModelCard.of(served_model(engine, model_id)))


async def model_not_served(request: Request, exc: Exception) -> Response:
    """A language-model route was asked for a model it does not serve: a 400 saying which endpoint
    to use when the id is one of the image models or the embedding model, else the 404 as it was."""
    assert isinstance(exc, ModelNotServed)
    state = request.app.state
    if image_model_named(getattr(state, "images", None), exc.model) is not None:
        return images_only(exc.model).to_response()
    if embedding_model_named(getattr(state, "encoder", None), exc.model) is not None:
        return embeddings_only(exc.model).to_response()
    return exc.to_response()
