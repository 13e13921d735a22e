"""/v1/completions (legacy): the request and the response, which is also the stream chunk's shape."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import Usage
from app.schemas.generation import COMMON_NOT_YET, GenerationRequest, NotYet
from model_runtime import SamplingParams

# OpenAI's documented default for the legacy endpoint (chat has none).
DEFAULT_MAX_TOKENS = 16

Prompt = str | list[str] | list[int] | list[list[int]]

COMPLETION_NOT_YET: dict[str, NotYet] = {
    **COMMON_NOT_YET,
    # Legacy `logprobs` is a count: even 0 asks for the sampled token's logprob.
    "logprobs": NotYet("null", lambda v: v is None),
    "best_of": NotYet("1", lambda v: v in (None, 1)),
    "echo": NotYet("false", lambda v: v in (None, False)),
    "suffix": NotYet('null or ""', lambda v: v in (None, "")),
}


class CompletionRequest(GenerationRequest):
    NOT_YET: ClassVar[dict[str, NotYet]] = COMPLETION_NOT_YET

    prompt: Prompt
    # null means "until the context window is full"; absent means OpenAI's default of 16.
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)

    # Not yet: see COMPLETION_NOT_YET.
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Prompt) -> Prompt:
        if isinstance(prompt, list):
            if not prompt:
                raise PydanticCustomError("too_short", "The prompt list must not be empty.")
            if any(isinstance(p, list) and not p for p in prompt):
                raise PydanticCustomError("too_short", "A token-id prompt must not be empty.")
            ids = [t for p in prompt for t in (p if isinstance(p, list) else [p]) if isinstance(t, int)]
            if any(t < 0 for t in ids):
                raise PydanticCustomError("value_error", "Token ids must be non-negative.")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """Each element is one prompt and becomes one choice, in order."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]  # a single token-id prompt
        return list(prompt)  # type: ignore[arg-type]  # list[str] or list[list[int]]

    def to_sampling_params(self) -> SamplingParams:
        return self.sampling_params(self.max_tokens)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    # null only inside a stream, before the choice ends.
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    """A whole response, or one stream chunk: OpenAI uses one shape for both."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
