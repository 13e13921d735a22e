"""/v1/embeddings and the /tokenize, /detokenize extensions: requests and responses."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.schemas.chat import ChatMessageParam
from app.schemas.common import RequestModel

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(RequestModel):
    input: EmbeddingInput
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None  # informational

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: EmbeddingInput) -> EmbeddingInput:
        if isinstance(value, str):
            if not value:
                raise PydanticCustomError("value_error", "The input must not be an empty string.")
            return value
        if not value:
            raise PydanticCustomError("too_short", "The input list must not be empty.")
        if len(value) > MAX_INPUTS:
            raise PydanticCustomError("too_long", f"At most {MAX_INPUTS} inputs are allowed in one request.")
        for item in value:
            if item == "" or item == []:
                raise PydanticCustomError("value_error", "No input may be empty.")
        ids = [
            t for item in value for t in (item if isinstance(item, list) else [item]) if isinstance(t, int)
        ]
        if any(t < 0 for t in ids):
            raise PydanticCustomError("value_error", "Token ids must be non-negative.")
        return value

    def inputs(self) -> list[str | list[int]]:
        """One element per embedding, in order."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [list(value)]  # type: ignore[arg-type]  # one token-id input
        return list(value)  # type: ignore[arg-type]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 with encoding_format=base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TokenizeRequest(RequestModel):
    """vLLM's /tokenize: a prompt, or chat messages rendered through the chat template."""

    model: str | None = None
    prompt: str | None = None
    # Declared after `prompt` and validated when absent, so one check sees both.
    messages: list[ChatMessageParam] | None = Field(None, validate_default=True)

    @field_validator("messages")
    @classmethod
    def _check_one_input(
        cls, messages: list[ChatMessageParam] | None, info: ValidationInfo
    ) -> list[ChatMessageParam] | None:
        prompt = info.data.get("prompt")
        if (prompt is None) == (messages is None):
            raise PydanticCustomError("value_error", "Send exactly one of 'prompt' and 'messages'.")
        if messages is not None and not messages:
            raise PydanticCustomError("too_short", "'messages' must not be empty.")
        return messages


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
