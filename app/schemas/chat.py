"""/v1/chat/completions: the request, the response and the stream chunk."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import RequestModel, Usage
from app.schemas.generation import COMMON_NOT_YET, GenerationRequest, NotYet, unsupported
from app.schemas.logprobs import ChoiceLogprobs
from app.schemas.tools import (
    AssistantToolCall,
    ChatTool,
    ChatToolChoice,
    ResponseFormat,
    ToolCallDelta,
    ToolCallOut,
    constraint_of,
)
from model_runtime import ChatMessage, Constraint, SamplingParams, ToolChoice

# Content part types OpenAI defines that we cannot take yet (text-only models).
UNSUPPORTED_PART_TYPES = ("image_url", "input_audio", "file", "refusal")

# Multiple text parts of one message become one string, joined as vLLM joins them.
PART_SEPARATOR = "\n"

FinishReasonLiteral = Literal["stop", "length", "tool_calls"]


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
    refusal: str | None = None
    tool_calls: list[AssistantToolCall] | None = None  # assistant: the calls it made
    tool_call_id: str | None = None  # tool: which call this answers
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    @field_validator("role")
    @classmethod
    def _check_role(cls, role: str) -> str:
        if role == "function":
            raise PydanticCustomError(
                "unsupported_parameter",
                "Messages with role 'function' (deprecated) are not supported by this server; "
                "use 'tools' and messages with role 'tool'.",
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

    @field_validator("refusal", "function_call", "audio")
    @classmethod
    def _check_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise unsupported(str(info.field_name), "null")
        return value

    @model_validator(mode="after")
    def _check_tool_fields(self) -> ChatMessageParam:
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError("missing", "Messages with role 'tool' need a 'tool_call_id'.")
        if self.tool_calls and self.role != "assistant":
            raise PydanticCustomError("value_error", "Only assistant messages may carry 'tool_calls'.")
        return self

    def to_chat_message(self) -> ChatMessage:
        if isinstance(self.content, list):
            text = PART_SEPARATOR.join(part.text for part in self.content)
        else:
            text = self.content or ""
        # `developer` is the newer name of `system`; chat templates only know the latter.
        role = "system" if self.role == "developer" else self.role
        extra: dict[str, object] = {"name": self.name} if self.name is not None else {}
        if self.tool_calls:
            extra["tool_calls"] = [call.for_template() for call in self.tool_calls]
        if self.tool_call_id is not None:
            extra["tool_call_id"] = self.tool_call_id
        return ChatMessage(role=role, content=text, extra=extra)


CHAT_NOT_YET: dict[str, NotYet] = {
    **COMMON_NOT_YET,
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

    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None

    # Not yet: see CHAT_NOT_YET.
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _check_top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise PydanticCustomError("value_error", "'top_logprobs' needs 'logprobs' set to true.")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, choice: ChatToolChoice | None, info: ValidationInfo) -> ChatToolChoice | None:
        tools: list[ChatTool] | None = info.data.get("tools")
        if choice is None or choice == "none" or (choice == "auto" and not tools):
            return choice  # "auto" with nothing to call means "none", as clients that always send it expect
        if not tools:
            raise PydanticCustomError("value_error", "'tool_choice' is only allowed when 'tools' are given.")
        if not isinstance(choice, str) and choice.function.name not in {t.function.name for t in tools}:
            raise PydanticCustomError(
                "value_error",
                f"'tool_choice' names a function that is not in 'tools': {choice.function.name!r}.",
            )
        response_format: ResponseFormat | None = info.data.get("response_format")
        if choice != "auto" and response_format is not None and response_format.type != "text":
            raise PydanticCustomError(
                "value_error", "A required tool call cannot be combined with a JSON 'response_format'."
            )
        return choice

    def tool_mode(self) -> ToolChoice:
        """What the tools allow: none without tools; otherwise OpenAI's default, "auto"."""
        choice = self.tool_choice
        if not self.tools or choice == "none":
            return ToolChoice.NONE
        if choice is None or choice == "auto":
            return ToolChoice.AUTO
        if choice == "required":
            return ToolChoice.REQUIRED
        return ToolChoice.NAMED

    def forced_function(self) -> str | None:
        choice = self.tool_choice
        return None if isinstance(choice, str) or choice is None else choice.function.name

    def to_sampling_params(self) -> SamplingParams:
        # max_completion_tokens is the newer name and wins; neither means "until the context ends".
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        constraint: Constraint | None = None
        if self.response_format is not None:
            constraint = constraint_of(self.response_format)
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.sampling_params(max_tokens, logprobs=logprobs, constraint=constraint)

    def chat_messages(self) -> list[ChatMessage]:
        return [message.to_chat_message() for message in self.messages]


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    # Left out unless the model called a tool, as OpenAI leaves it out.
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=lambda v: v is None)


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None
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
    tool_calls: list[ToolCallDelta] | None = Field(None, exclude_if=_is_none)


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChatCompletionDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonLiteral | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event. `usage` is serialised only when the client asked for it."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None
