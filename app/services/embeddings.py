"""Embeddings from the dedicated embedding model or the served model, and the tokenizer endpoints."""

from __future__ import annotations

import base64
import math
import struct

from app.errors import APIError
from app.schemas.embeddings import (
    DetokenizeRequest,
    DetokenizeResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    TokenizeRequest,
    TokenizeResponse,
)
from app.services.models import embedding_model_named, served_model
from model_runtime import Embeddings, EncoderClient, EngineClient, InvalidPrompt


def _fit(vector: list[float], dimensions: int | None) -> list[float]:
    """OpenAI's `dimensions`: the first d components, normalised again to unit length."""
    if dimensions is None or dimensions == len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def create_embeddings(
    body: EmbeddingRequest, engine: EngineClient, encoder: EncoderClient | None = None
) -> EmbeddingResponse:
    """With `model` naming the dedicated embedding model, that model tokenizes, checks and embeds
    (on its own thread); otherwise the served language model does, as it always has."""
    if embedding_model_named(encoder, body.model) is not None:
        assert encoder is not None
        model = encoder.info.id
        result = await encoder.embed(body.inputs())
    else:
        model = served_model(engine, body.model).id
        inputs = [engine.encode(i) if isinstance(i, str) else i for i in body.inputs()]
        result = Embeddings(await engine.embed(inputs), sum(len(i) for i in inputs))
    vectors = result.vectors
    width = len(vectors[0])
    if body.dimensions is not None and body.dimensions > width:
        raise APIError(
            400,
            f"'dimensions' must be at most {width} for this model, got {body.dimensions}.",
            param="dimensions",
            code="invalid_value",
        )
    data = []
    for index, vector in enumerate(vectors):
        fitted = _fit(vector, body.dimensions)
        data.append(
            Embedding(index=index, embedding=_base64(fitted) if body.encoding_format == "base64" else fitted)
        )
    tokens = result.prompt_tokens
    return EmbeddingResponse(
        data=data, model=model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _embedding_model(encoder: EncoderClient | None, model: str | None) -> EncoderClient | None:
    """The dedicated embedding model when `model` names it; None for the language model."""
    if model is None or embedding_model_named(encoder, model) is None:
        return None
    return encoder


def tokenize(
    body: TokenizeRequest, engine: EngineClient, encoder: EncoderClient | None = None
) -> TokenizeResponse:
    """With `model` naming the dedicated embedding model, its tokenizer's ids (special tokens
    included, as /v1/embeddings counts them); otherwise the language model's, as before."""
    embedding = _embedding_model(encoder, body.model)
    if embedding is not None:
        if body.messages is not None:
            raise APIError(
                400,
                f"The model `{embedding.info.id}` is an embedding model and has no chat template; "
                "send 'prompt'.",
                param="messages",
                code="model_not_supported",
            )
        tokens = embedding.encode(body.prompt or "")
        return TokenizeResponse(count=len(tokens), max_model_len=embedding.info.max_model_len, tokens=tokens)
    info = served_model(engine, body.model) if body.model is not None else engine.model_info
    if body.messages is not None:
        tokens = engine.render_chat([m.to_chat_message() for m in body.messages])
    else:
        tokens = engine.encode(body.prompt or "")
    return TokenizeResponse(count=len(tokens), max_model_len=info.max_model_len, tokens=tokens)


def detokenize(
    body: DetokenizeRequest, engine: EngineClient, encoder: EncoderClient | None = None
) -> DetokenizeResponse:
    embedding = _embedding_model(encoder, body.model)
    if embedding is not None:
        vocab = embedding.info.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise InvalidPrompt(
                f"token ids must be in [0, {vocab}) for the embedding model {embedding.info.id}",
                param="tokens",
            )
        return DetokenizeResponse(prompt=embedding.decode(body.tokens))
    info = served_model(engine, body.model) if body.model is not None else engine.model_info
    vocab = info.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise InvalidPrompt(f"token ids must be in [0, {vocab})", param="tokens")
    return DetokenizeResponse(prompt=engine.decode(body.tokens))
