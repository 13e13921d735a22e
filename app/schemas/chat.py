"""/v1/chat/completions: the request, the response and the stream chunk."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import RequestModel, Usage
from app.schemas.generation import COMMON_NOT_YET, GenerationRequest, NotYet, unsupported
from model_runtime import ChatMessage, SamplingParams

# Content part types OpenAI defines that we cannot take yet (text-only models).
UNSUPPORTED_PART_TYPES = ("image_url", "input_audio", "file", "refusal")

# Multiple text parts of one message become one string, joined as vLLM joins them.
PART_SEPARATOR = "\n"

FinishReasonLiteral = Literal["stop", "length"]


class TextContentPart(RequestModel):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None  # informational

    @model_validator(mode="before")
    @classmethod
    def _check_type(cls, data: Any) -> Any:
        part_type = data.get("type") if isinstance(data, dict) else None
        if part_type in UNSUPPORTED_PART_TYPES:
            raise PydanticCustomError(
                "unsupported_parameter",
                f"Content parts of type '{part_type}' are not supported yet by this server; "
                "only 'text' parts are.",
            )
        return data


class ChatMessageParam(RequestModel):
    """One input message. One model for every role keeps error locations flat ("messages.0.role")."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # validate_default: a user message without content must fail, an assistant one may not.
    content: str | list[TextContentPart] | None = Field(None, validate_default=True)
    name: str | None = None
    # Assistant/tool fields for function calling, which is not implemented yet: neutral values only.
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @field_validator("role")
    @classmethod
    def _check_role(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise PydanticCustomError(
                "unsupported_parameter",
                f"Messages with role '{role}' are not supported yet by this server "
                "(tool calling is not implemented).",
            )
        return role

    @field_validator("content")
    @classmethod
    def _check_content(cls, content: str | list[TextContentPart] | None, info: ValidationInfo) -> Any:
        if content is None and info.data.get("role") not in (None, "assistant"):
            raise PydanticCustomError("missing", "Field required")
        if isinstance(content, list) and not content:
            raise PydanticCustomError("too_short", "Content must contain at least one part.")
        return content

    @field_validator("refusal", "tool_call_id", "function_call", "audio")
    @classmethod
    def _check_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise unsupported(str(info.field_name), "null")
        return value

    @field_validator("tool_calls")
    @classmethod
    def _check_tool_calls(cls, value: list[dict[str, Any]] | None) -> Any:
        if value:
            raise unsupported("tool_calls", "null or []")
        return value

    def to_chat_message(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = PART_SEPARATOR.join(part.text for part in self.content)
        else:
            text = self.content or ""
        # `developer` is the newer name of `system`; chat templates only know the latter.
        role = "system" if self.role == "developer" else self.role
        extra: dict[str, object] = {"name": self.name} if self.name is not None else {}
        return ChatMessage(role=role, content=text, extra=extra)


CHAT_NOT_YET: dict[str, NotYet] = {
    **COMMON_NOT_YET,
    "logprobs": NotYet("false", lambda v: v in (None, False)),
    "top_logprobs": NotYet("null or 0", lambda v: v in (None, 0)),
    "response_format": NotYet('{"type": "text"}', lambda v: v is None or v == {"type": "text"}),
    "tools": NotYet("null or []", lambda v: not v),
    # Without tools, "auto" cannot call anything: it means the same as "none".
    "tool_choice": NotYet('"none"', lambda v: v in (None, "none", "auto")),
    "functions": NotYet("null", lambda v: not v),
    "function_call": NotYet('"none"', lambda v: v in (None, "none", "auto")),
    "audio": NotYet("null", lambda v: v is None),
    "modalities": NotYet('["text"]', lambda v: v in (None, ["text"])),
    "prediction": NotYet("null", lambda v: v is None),
    "reasoning_effort": NotYet('null or "none"', lambda v: v in (None, "none")),
    "verbosity": NotYet('null or "medium"', lambda v: v in (None, "medium")),
    "web_search_options": NotYet("null", lambda v: v is None),
    "moderation": NotYet("null", lambda v: v is None),
}


class ChatCompletionRequest(GenerationRequest):
    NOT_YET: ClassVar[dict[str, NotYet]] = CHAT_NOT_YET

    messages: list[ChatMessageParam] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # deprecated by OpenAI, still widely sent
    max_completion_tokens: int | None = Field(None, ge=1)

    # Informational: accepted whatever the value.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None

    # Not yet: see CHAT_NOT_YET.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    def to_sampling_params(self) -> SamplingParams:
        # max_completion_tokens is the newer name and wins; neither means "until the context ends".
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self.sampling_params(max_tokens)

    def chat_messages(self) -> list[ChatMessage]:
        return [message.to_chat_message() for message in self.messages]


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: FinishReasonLiteral


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


def _is_none(value: object) -> bool:
    return value is None


class ChatCompletionDelta(BaseModel):
    # OpenAI leaves unset delta fields out: the role only on the first chunk, `{}` on the last.
    role: Literal["assistant"] | None = Field(None, exclude_if=_is_none)
    content: str | None = Field(None, exclude_if=_is_none)


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChatCompletionDelta
    logprobs: None = None
    finish_reason: FinishReasonLiteral | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event. `usage` is serialised only when the client asked for it."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None
