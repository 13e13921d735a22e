"""Shapes shared by the endpoint families: usage, the error envelope, stream options, the request base."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """Base of every request body.

    `extra="forbid"`: a field we do not know is an error ("Unrecognized request argument"), never
    silently dropped. `strict=True`: JSON types are taken as sent, as OpenAI does ("0.5" is not a
    number, 1.0 is not an integer), except that an integer is a valid number.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's one error envelope: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorDetail


class StreamOptions(RequestModel):
    include_usage: bool | None = None
    # We never add an `obfuscation` field, so either value is honoured trivially.
    include_obfuscation: bool | None = None


# OpenAPI documentation shared by the generation routes.
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "JSON, or SSE chunks when `stream` is true",
    },
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
}


class HealthStatus(BaseModel):
    """Liveness plus the engine's load, so an operator (or a test) can see work drain away."""

    status: Literal["ok"] = "ok"
    waiting: int
    running: int
    kv_blocks_total: int
    kv_blocks_free: int
    steps: int


class ReadyStatus(BaseModel):
    """Readiness: the model is loaded and requests are accepted."""

    status: Literal["ready"] = "ready"
