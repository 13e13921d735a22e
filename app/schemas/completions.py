"""/v1/completions (legacy): the request and the response, which is also the stream chunk's shape."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import Usage
from app.schemas.generation import COMMON_NOT_YET, GenerationRequest, NotYet, unsupported
from app.schemas.logprobs import CompletionLogprobs
from model_runtime import SamplingParams

# OpenAI's documented default for the legacy endpoint (chat has none).
DEFAULT_MAX_TOKENS = 16

Prompt = str | list[str] | list[int] | list[list[int]]

COMPLETION_NOT_YET: dict[str, NotYet] = {
    **COMMON_NOT_YET,
    # This server's models are not trained to fill in the middle.
    "suffix": NotYet('null or ""', lambda v: v in (None, "")),
}


class CompletionRequest(GenerationRequest):
    NOT_YET: ClassVar[dict[str, NotYet]] = COMPLETION_NOT_YET

    prompt: Prompt
    # null means "until the context window is full"; absent means OpenAI's default of 16.
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=1)

    # A count: the sampled token's logprob plus that many alternatives (0 still asks for logprobs).
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None

    # Not yet: see COMPLETION_NOT_YET.
    best_of: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        # best_of equal to n ranks nothing away: it is the same request. Larger values are refused.
        if best_of is not None and best_of != (info.data.get("n") or 1):
            raise unsupported("best_of", "null or the value of 'n'")
        return best_of

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
        # With echo, the prompt's tokens get logprobs too (all but the first, which nothing predicts).
        prompt_logprobs = self.logprobs if self.echo else None
        return self.sampling_params(self.max_tokens, logprobs=self.logprobs, prompt_logprobs=prompt_logprobs)


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
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
