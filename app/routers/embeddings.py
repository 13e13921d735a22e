"""POST /v1/embeddings, and the tokenizer extensions POST /tokenize and POST /detokenize."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.deps import EncoderDep, EngineDep
from app.responses import json_response
from app.schemas.common import ErrorResponse
from app.schemas.embeddings import (
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.services import embeddings

router = APIRouter(tags=["embeddings"])
ERRORS: dict[int | str, dict[str, object]] = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
async def create_embeddings(body: EmbeddingRequest, engine: EngineDep, encoder: EncoderDep) -> Response:
    return json_response(await embeddings.create_embeddings(body, engine, encoder))


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, engine: EngineDep, encoder: EncoderDep) -> Response:
    return json_response(embeddings.tokenize(body, engine, encoder))


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, engine: EngineDep, encoder: EncoderDep) -> Response:
    return json_response(embeddings.detokenize(body, engine, encoder))
